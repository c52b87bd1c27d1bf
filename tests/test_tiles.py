"""The tile world: native 8x8 tiles as codes, and dynamics with a recurrent RAM state (issue #3, rounds 5 to 7)."""
import json
import os

import numpy as np
import pytest
import torch

import train


@pytest.fixture(scope="session")
def tiny_tile_run(tiny_dataset, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tile_run"))
    train.main(["--dataset", tiny_dataset, "--out", out, "--export", os.path.join(out, "export"),
                "--ae-arch", "tiles", "--dynamics", "tiles", "--history", "2", "--hidden", "16",
                "--conv-blocks", "2", "--tile-state", "screen", "--tile-head", "local", "--tile-byte-map", "1", "--state-width", "32",
                "--state-buttons", "1", "--epochs", "1",
                "--batch-size", "16", "--dyn-change-weight", "10", "--unroll", "2",
                "--cache-dir", os.path.join(out, "cache")])
    return out


def test_tiles_rebuild_the_native_frames_exactly(tiny_dataset, tmp_path):
    import datasets
    cache = train.load_tiles(tiny_dataset, str(tmp_path))
    ds = datasets.load_from_disk(tiny_dataset)
    order = np.lexsort((np.asarray(ds["step"]), np.asarray(ds["episode_id"])))
    for row in (0, 17, len(ds) - 1):
        real = np.asarray(ds[int(order[row])]["observations"].convert("RGB"))
        assert np.array_equal(cache.frames([row])[0], real)
    assert cache.tile_ids.shape == (len(ds), 30, 32)
    assert cache.counts.sum() == len(ds) * 30 * 32
    again = train.load_tiles(tiny_dataset, str(tmp_path))  # from the cache file
    assert np.array_equal(again.tile_ids, cache.tile_ids) and np.array_equal(again.ram, cache.ram)


def test_codebook_gives_each_distinct_tile_its_code_and_maps_unseen_tiles_to_the_nearest():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    model = train.TileAutoencoder(codes=64)
    fit = train.fit_tiles(model, table, np.arange(1, 51))
    assert fit["exact_tiles"] == 1.0 and fit["codes_in_use"] == 50
    codes = model.encode_tiles(table)
    assert len(codes.unique()) == 50
    assert torch.equal(model.palette()[codes], torch.from_numpy(table))
    near = table[7].astype(np.int16) + 3
    assert int(model.encode_tiles(np.clip(near, 0, 255).astype(np.uint8)[None])[0]) == int(codes[7])
    small = train.TileAutoencoder(codes=10)  # fewer codes than tiles: k-means, every code in use
    fit = train.fit_tiles(small, table, np.ones(50, dtype=np.int64))
    assert fit["codes_in_use"] == 10 and fit["exact_tiles"] < 1.0


def test_tile_dynamics_loss_scores_changed_tiles_and_step_returns_codes():
    torch.manual_seed(0)
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="hidden")
    tokens = torch.randint(0, 20, (4, 2, 30, 32))
    state = torch.randint(0, 256, (4, len(train.TILE_STATES["hidden"])))
    actions = torch.zeros(4, 2, 8)
    nxt = tokens[:, -1].clone()
    nxt[:, 5, 5] = (nxt[:, 5, 5] + 1) % 20
    loss, logs = model.loss(tokens, state, actions, nxt, state, change_weight=10.0)
    assert torch.isfinite(loss) and set(logs) >= {"tile_ce", "state_ce", "changed_tile_acc", "state_acc"}
    loss.backward()
    assert model.out.weight.grad.abs().sum() > 0 and model.state_head[-1].weight.grad.abs().sum() > 0
    z, s = model.step(tokens, state, actions, temperature=0.0)
    assert z.shape == (4, 30, 32) and s.shape == state.shape and z.dtype == torch.int64
    # untrained, the copy bonus makes copying the last frame the likeliest next frame
    assert torch.equal(z, tokens[:, -1])
    z2, s2 = model.step(tokens, state, actions, temperature=0.0)
    assert torch.equal(z, z2) and torch.equal(s, s2)


def test_tile_dynamics_learn_a_timer_that_the_screen_does_not_show():
    """A block that drops one row whenever a hidden timer wraps: the state head learns the timer, and given it
    the tile head moves the whole block at the wrap and keeps it still otherwise, with no fading."""
    torch.manual_seed(0)
    period, n = 4, 256
    timer = torch.arange(n) % period
    row = (torch.arange(n) // period) % 20
    tokens = torch.zeros(n, 30, 32, dtype=torch.long)
    tokens[torch.arange(n), row + 2, 10] = 1
    model = train.TileDynamics(codes=2, history=1, width=16, blocks=2, state=(("timer", 0),))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.arange(n - 1)
    t = t[row[t + 1] >= row[t]]  # no wrap from the bottom row back to the top
    for _ in range(250):
        b = t[torch.randint(len(t), (32,))]
        loss, _ = model.loss(tokens[b][:, None], timer[b][:, None], torch.zeros(32, 1, 8), tokens[b + 1],
                             timer[b + 1][:, None], change_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, s = tokens[t[:1]][:, None], timer[t[:1]][:, None]
    for i in range(1, 3 * period):  # self-fed: the block falls a whole row every `period` steps
        nz, s = model.step(z, s, torch.zeros(1, 1, 8), temperature=0.0)
        z = nz[:, None]
        assert int(s[0, 0]) == (int(timer[t[0]]) + i) % period
        assert int(nz.sum()) == 1 and int(nz[0, int(row[t[0] + i]) + 2, 10]) == 1


def test_local_head_predicts_each_bytes_change_mod_256():
    model = train.TileDynamics(codes=8, history=1, width=16, blocks=1, state="piece", head="local")
    state = torch.tensor([[255, 3, 0] + [7] * 13])
    nxt = torch.tensor([[1, 3, 255] + [7] * 13])
    target = model.state_target(state, nxt)
    assert target[0, :3].tolist() == [2, 0, 255] and torch.equal(model.next_state(state, target), nxt)
    pooled = train.TileDynamics(codes=8, history=1, width=16, blocks=1, state="piece")
    assert torch.equal(pooled.state_target(state, nxt), nxt) and pooled.piece is None
    with pytest.raises(ValueError, match="tile_head must be"):
        train.Config(tile_head="global")


def test_local_head_draws_the_next_piece_only_where_it_predicts_a_draw():
    torch.manual_seed(0)
    model = train.TileDynamics(codes=8, history=1, width=16, blocks=1, state="piece", head="local")
    k = model.random_state[0]
    tokens, actions = torch.zeros(64, 1, 30, 32, dtype=torch.long), torch.zeros(64, 1, 8)
    state = torch.full((64, model.state_size), 3)
    with torch.no_grad():
        bias = model.state_head[-1].bias.view(model.state_size, 256)
        model.state_head[-1].weight.zero_()
        bias.zero_()
        bias[k] = -30.0
        bias[k, 0] = 10.0  # "no change" likeliest: at temperature 1 plain sampling would change it on some rows
        _, s = model.step(tokens, state, actions, temperature=1.0)
        assert (s[:, k] == 3).all()
        bias[k, 0], bias[k, 4], bias[k, 5] = 9.9, 10.0, 9.9  # a change likeliest: one of the changes is drawn
        _, s = model.step(tokens, state, actions, temperature=1.0)
        assert set(s[:, k].tolist()) == {7, 8}


def _byte_0_prefers_plus_2_then_plus_4():
    """A local-head model whose state head, whatever it sees, gives byte 0 the change +2, else +4 (the rest 0),
    and a state of 3s to play it from."""
    model = train.TileDynamics(codes=8, history=1, width=16, blocks=1, state="piece", head="local")
    with torch.no_grad():
        model.state_head[-1].weight.zero_()
        bias = model.state_head[-1].bias.view(model.state_size, 256)
        bias.zero_()
        bias[0, 0], bias[0, 2], bias[0, 4] = 1.0, 10.0, 5.0
    play = lambda: int(model.step(torch.zeros(1, 1, 30, 32, dtype=torch.long), torch.full((1, model.state_size), 3),
                                  torch.zeros(1, 1, 8), temperature=0.0)[1][0, 0])
    return model, play


def test_play_keeps_each_byte_to_the_values_the_game_held():
    model, play = _byte_0_prefers_plus_2_then_plus_4()
    assert play() == 5
    model.support[0] = False
    model.support[0, [3, 7]] = True  # the game held only 3 and 7: +2 is masked, +4 wins
    assert play() == 7


def test_play_never_makes_a_step_the_game_never_made():
    model, play = _byte_0_prefers_plus_2_then_plus_4()
    assert play() == 5
    model.transitions[0, 3] = False
    model.transitions[0, 3, 7] = True  # in the game, byte 0 only ever went from 3 to 7
    assert play() == 7
    assert torch.equal(train.unpack_bits(train.pack_bits(model.transitions)), model.transitions)  # as stored


def test_piece_map_moves_with_the_piece():
    torch.manual_seed(0)
    pm = train.PieceMap(width=8)
    x, y, o = torch.tensor([3, 4, 3]), torch.tensor([5, 5, 6]), torch.tensor([2, 2, 2])
    m = pm(x, y, o)
    assert m.shape == (3, 8, 30, 32)
    assert torch.allclose(m[1, :, :, 1:], m[0, :, :, :-1])  # one column right: the whole map one tile right
    assert torch.allclose(m[2, :, 1:], m[0, :, :-1])  # one row down: the map one tile down
    assert not torch.allclose(m[0], pm(x[:1], y[:1], torch.tensor([3]))[0])  # another orientation, another map


def test_local_tile_head_draws_the_piece_where_the_next_state_puts_it():
    """Blocks that jump to a random place each step: the screen cannot tell where the next one is, only the next
    state's piece bytes can, so the tile head must read them off the piece map."""
    torch.manual_seed(0)
    names = (("piece x", 0x40), ("piece y", 0x41), ("piece orientation", 0x42))
    model = train.TileDynamics(codes=2, history=1, width=16, blocks=1, state=names, head="local")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def sample(n):
        st = torch.stack([torch.randint(0, 10, (n,)), torch.randint(0, 18, (n,)), torch.zeros(n, dtype=torch.long)], 1)
        tok = torch.zeros(n, 30, 32, dtype=torch.long)
        tok[torch.arange(n), st[:, 1] + 5, st[:, 0] + 12] = 1  # where a board at tile (12, 5) would draw it
        return tok, st

    for _ in range(150):
        tok, st = sample(16)
        nxt_tok, nxt_st = sample(16)
        loss, _ = model.loss(tok[:, None], st, torch.zeros(16, 1, 8), nxt_tok, nxt_st, change_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok, st = sample(64)
    nxt_tok, nxt_st = sample(64)
    with torch.no_grad():
        h, _ = model.trunk(tok[:, None], st, torch.zeros(64, 1, 8))
        drawn = model.tile_logits(h, tok[:, None], nxt_st).argmax(1)
    assert (drawn == nxt_tok).all(-1).all(-1).float().mean() > 0.95


def test_tile_run_trains_exports_evaluates_and_plays(tiny_tile_run, tiny_dataset, tmp_path):
    import evaluate
    import main as play
    export = os.path.join(tiny_tile_run, "export")
    world = train.load_world(export)
    assert isinstance(world, train.TileWorld)
    state = world.start("play")
    assert state[0].shape == (1, 2, 30, 32) and state[1].shape == (1, len(train.TILE_STATES["screen"]))
    dyn = world.dynamics  # round 7's parts came back with the checkpoint
    assert dyn.byte_map and dyn.state_buttons and dyn.state_head[0].out_features == 32
    assert len(dyn.tile_support_modes) and not dyn.tile_support.all() and not dyn.transitions.all()
    state, z = world.step(state, torch.zeros(1, 8), 1.0)
    support = world.dynamics.support  # the values each byte held in training, from the checkpoint
    assert support.any(1).all() and not support.all() and support[:, state[1][0]].diagonal().all()
    accuracy = json.load(open(os.path.join(tiny_tile_run, "state_accuracy.json")))  # per byte, printed by training
    assert list(accuracy["bytes"]) == world.dynamics.state_names and 0 <= accuracy["all_bytes_right"] <= 1
    assert world.rgb(z).shape == (1, 240, 256, 3) and world.decode(z).shape == (1, 1, 80, 80)
    # the autoencoder oracle is exact: the codes decode to the real frame, as the 80x80 pipeline sees it
    cache = train.load_frames(tiny_dataset, 80, os.path.join(tiny_tile_run, "cache"))
    world.attach(tiny_dataset, os.path.join(tiny_tile_run, "cache"), cache.episodes)
    rows = np.array([0, 5, 30])
    assert np.array_equal((world.decode(world.encode_rows(cache, rows))[:, 0] * 255).round().byte().numpy(),
                          cache.frames[rows])
    out = str(tmp_path / "eval")
    args = ["--dataset", tiny_dataset, "--checkpoint", export, "--out", out, "--horizons", "1", "3",
            "--starts", "6", "--samples", "2", "--events", "0", "--no-plots", "--cache-dir",
            os.path.join(tiny_tile_run, "cache")]
    evaluate.main(args)
    first = open(out + ".json").read()
    evaluate.main(args)
    assert open(out + ".json").read().split('"seconds"')[0] == first.split('"seconds"')[0]
    gif = str(tmp_path / "tiles.gif")
    result = play.main(["--checkpoint", export, "--headless", "--frames", "5", "--record", gif])
    assert result["frames"] == 5 and os.path.getsize(gif) > 0
    prefix = str(tmp_path / "tile_play")  # --stats also logs a tile world's state bytes, frame by frame
    play.main(["--checkpoint", export, "--headless", "--frames", "5", "--stats", prefix, "--reference", ""])
    with open(prefix + "_state.csv") as f:
        assert f.readline().strip() == "frame," + ",".join(n.replace(" ", "_") for n in world.dynamics.state_names)
    rows = np.loadtxt(prefix + "_state.csv", delimiter=",", skiprows=1, dtype=int)
    assert rows.shape == (5, 1 + world.dynamics.state_size) and rows[:, 0].tolist() == list(range(5))
    assert ((rows[:, 1:] >= 0) & (rows[:, 1:] < 256)).all()
    assert os.path.getsize(prefix + "_sheet.png") > 0  # the contact sheet of the run
    # every tile played stays inside the codes its position showed in training, in the played game mode
    dyn, state = world.dynamics, world.start("play")
    for _ in range(3):
        state, z = world.step(state, torch.zeros(1, 8), 1.0)
        assert dyn.allowed_tiles(state[1]).gather(1, z[:, None]).all()


def test_tile_checkpoint_errors(tiny_tile_run, tiny_run, tiny_dataset, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.symlink(os.path.join(tiny_tile_run, "export", "autoencoder.pt"), mixed / "autoencoder.pt")
    os.symlink(os.path.join(tiny_run, "export", "dynamics.pt"), mixed / "dynamics.pt")
    with pytest.raises(train.CheckpointError, match="another autoencoder"):
        train.load_world(str(mixed))
    with pytest.raises(ValueError, match="go together"):
        train.Config(ae_arch="tiles", dynamics="conv")
    with pytest.raises(ValueError, match="tile_byte_map must be 0 or 1, and 1 needs tile_head local"):
        train.Config(ae_arch="tiles", dynamics="tiles", tile_byte_map=1, tile_head="pooled")
    import main as play
    with pytest.raises(SystemExit, match="--tile-support off: .* is not a tile world"):
        play.main(["--checkpoint", os.path.join(tiny_run, "export"), "--headless", "--tile-support", "off"])
    import evaluate
    with pytest.raises(SystemExit, match="--no-tile-support: .* is not a tile world"):
        evaluate.main(["--dataset", tiny_dataset, "--checkpoint", os.path.join(tiny_run, "export"),
                       "--no-tile-support", "--no-plots", "--out", str(tmp_path / "e"),
                       "--cache-dir", os.path.join(tiny_run, "cache")])
    with pytest.raises(SystemExit, match="--sheet-seconds 0.0: must be > 0"):
        play.main(["--checkpoint", os.path.join(tiny_tile_run, "export"), "--headless", "--frames", "2",
                   "--stats", str(tmp_path / "s"), "--sheet-seconds", "0"])


def test_tile_data_without_ram_is_a_clear_error(tiny_dataset, tmp_path):
    import datasets
    ds = datasets.load_from_disk(tiny_dataset).remove_columns(["ram"])
    path = str(tmp_path / "noram")
    ds.save_to_disk(path)
    with pytest.raises(train.DatasetError, match="missing column 'ram'"):
        train.load_tiles(path, str(tmp_path / "cache"))


def test_shipped_tile_world_plays_in_colour_inside_its_support():
    world = train.load_world(os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tiles"))
    dyn = world.dynamics
    assert isinstance(world, train.TileWorld) and dyn.head == "local" and dyn.piece and dyn.byte_map
    assert dyn.state_names == [n for n, _ in train.TILE_STATES["screen"]]  # round 7: the counters in the state
    # the values each byte held in training, the steps it took and each tile's codes came with the checkpoint
    assert not dyn.support.all() and not dyn.transitions.all() and not dyn.tile_support.all()
    assert 4 in dyn.tile_support_modes.tolist()  # the playing screen's tile support is there
    # round 8: the state head reads the board around the piece, and the play rules came with the checkpoint
    assert dyn.local_board and dyn.state_head[0].out_features == 512
    assert dyn.piece_rule["origin"].tolist() == [6, 12] and len(dyn.byte_tiles["positions"]) > 40
    assert dyn.phase_steps is not None and dyn.piece_support is not None
    # round 9: gravity, the bytes each phase step keeps still, and the (play state, orientation) pairs
    assert int(dyn.gravity["limit"][0]) < 255 and dyn.phase_still.any() and len(dyn.piece_support) == 3
    assert (dyn.phase_full == 1).any() and not dyn.phase_parity.all() and len(dyn.monotone) == 9
    # round 10: the bytes of play come from a head that reads no number the screen prints, and every number (seven
    # piece counts, the lines, the score) counts in decimal with its digits drawn from its units digit's codes
    assert dyn.play_head is not None and "piece x" in [dyn.state_names[i] for i in dyn.play_bytes]
    assert sorted(len(n["positions"]) for n in dyn.numbers) == [2] * 7 + [3, 6]
    torch.manual_seed(0)
    state = world.start("play")
    ps = dyn.state_names.index("play state")
    for t in range(40):
        before = state
        state, z = world.step(state, torch.zeros(1, 8), world.default_temperature)
        assert world.dynamics.support[torch.arange(world.dynamics.state_size), state[1][0]].all()
        assert dyn.allowed_tiles(state[1]).gather(1, z[:, None]).all()
        if int(state[1][0, ps]) == train.FALLING_STATE:  # the piece is drawn whole, in the codes pieces showed
            cells = dyn.piece_tiles(state[1])[0]
            assert dyn.piece_rule["codes"][z[0][cells]].all()
        if int(before[1][0, ps]) == int(state[1][0, ps]) == train.FALLING_STATE:  # the rest of the board stood still
            moved = (z[0] != before[0][0, -1]) & ~dyn.piece_tiles(state[1])[0] & ~dyn.piece_tiles(before[1])[0]
            assert not moved[6:26, 12:22].any()
    frame = world.rgb(z)[0]
    assert frame.shape == (240, 256, 3) and len(np.unique(frame.reshape(-1, 3), axis=0)) > 3


def test_screen_state_counts_each_piece_as_the_real_game_spawns_it(tiny_dataset, tmp_path):
    """The addresses behind tile_state screen, checked on the real emulator's RAM: while playing, the seven piece
    counts (BCD) go up by one piece at a time, and they do go up."""
    cache = train.load_tiles(tiny_dataset, str(tmp_path))
    names = [n for n, _ in train.TILE_STATES["screen"]]
    assert len(set(names)) == len(names) == 28
    counts = [a for n, a in train.TILE_STATES["screen"] if n.startswith("count ")]
    bcd = cache.ram[:, counts].astype(int)
    total = ((bcd >> 4) * 10 + (bcd & 15)).sum(1)
    same = (cache.episodes[1:] == cache.episodes[:-1]) & (cache.ram[1:, 0xC0] == 4) & (cache.ram[:-1, 0xC0] == 4)
    steps = np.diff(total)[same]
    assert set(steps.tolist()) <= {0, 1} and steps.sum() >= 4


def test_byte_map_starts_empty_and_draws_a_byte_only_where_its_weights_put_it():
    torch.manual_seed(0)
    bm = train.ByteMap(state_size=3, width=4)
    state = torch.tensor([[1, 2, 3], [9, 2, 3], [1, 7, 3]])
    assert bm(state).shape == (3, 4, 30, 32) and not bm(state).any()  # adds nothing until trained
    with torch.no_grad():
        bm.where[1, 5 * 32 + 6] = 1.0  # byte 1 is shown at tile (5, 6)
    m = bm(state)
    assert torch.equal(m[0], m[1])  # byte 0 is shown nowhere: changing it changes nothing
    diff = (m[0] - m[2]).abs().sum(0)  # byte 1 changed: only its tile changes
    assert diff[5, 6] > 0 and diff.sum() == diff[5, 6]


def test_byte_map_learns_where_a_counter_is_drawn():
    """A byte whose value is drawn as a digit at one tile, and shown nowhere else: the trained byte map puts that
    byte's weight where the tile head's convolutions reach that tile (within 3 tiles of it). Without the byte map,
    the same model draws it right on about 80% of maps after 300 steps; with it, on all of them after 250."""
    torch.manual_seed(0)
    model = train.TileDynamics(codes=11, history=1, width=16, blocks=1, state=(("count T", 0x3F0),), head="local",
                               byte_map=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def sample(n):
        st = torch.randint(0, 10, (n, 1))
        tok = torch.zeros(n, 30, 32, dtype=torch.long)
        tok[:, 4, 7] = 1 + st[:, 0]
        return tok, st

    for _ in range(250):
        (tok, st), (nxt_tok, nxt_st) = sample(16), sample(16)
        loss, _ = model.loss(tok[:, None], st, torch.zeros(16, 1, 8), nxt_tok, nxt_st, change_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (tok, st), (nxt_tok, nxt_st) = sample(64), sample(64)
    with torch.no_grad():
        h, _ = model.trunk(tok[:, None], st, torch.zeros(64, 1, 8))
        drawn = model.tile_logits(h, tok[:, None], nxt_st).argmax(1)
    assert (drawn[:, 4, 7] == nxt_tok[:, 4, 7]).float().mean() > 0.9
    row, col = divmod(int(model.byte_map_next.where[0].abs().argmax()), 32)
    assert abs(row - 4) <= 3 and abs(col - 7) <= 3


def test_play_keeps_each_tile_to_the_codes_its_position_showed():
    model = train.TileDynamics(codes=8, history=1, width=16, blocks=1, state="piece", head="local")
    mode = model.state_names.index("game mode")
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
        model.out.bias[5] = 20.0  # every tile's likeliest code is 5, far above copying the last frame
        model.state_head[-1].weight.zero_()
        model.state_head[-1].bias.view(model.state_size, 256).zero_()[:, 0] = 10.0  # no byte changes
    seen = torch.full((3, 30, 32), 5, dtype=torch.long)
    seen[:, 0, 0] = torch.tensor([2, 3, 2])  # while playing (mode 4), tile (0, 0) only ever showed 2 or 3
    model.set_tile_support(seen, torch.tensor([4, 4, 4]))
    tokens, actions = torch.zeros(1, 1, 30, 32, dtype=torch.long), torch.zeros(1, 1, 8)
    state = torch.zeros(1, model.state_size, dtype=torch.long)
    state[0, mode] = 4
    codes, _ = model.step(tokens, state, actions, temperature=0.0)
    assert int(codes[0, 0, 0]) in (2, 3) and (codes[0].flatten()[1:] == 5).all()
    many = torch.full((200, 30, 32), 5, dtype=torch.long)
    many[:, 0, 0] = torch.arange(200) % 2 + 2  # a tile that shows 2 or 3, half the time each
    many[0, 0, 1] = 3  # and a static tile that shows another code once in 200 frames (a screen being redrawn)
    model.set_tile_support(many, torch.full((200,), 4))
    assert model.tile_support[0, 0, [2, 3]].all() and model.tile_support[0, 1].nonzero().flatten().tolist() == [5]
    state[0, mode] = 1  # a mode the support never saw: nothing is masked
    assert int(model.step(tokens, state, actions, temperature=0.0)[0][0, 0, 0]) == 5
    state[0, mode] = 4
    model.tile_support_modes = model.tile_support_modes[:0]  # what TileWorld.drop_tile_support does
    assert int(model.step(tokens, state, actions, temperature=0.0)[0][0, 0, 0]) == 5


def test_state_head_fit_trains_only_the_state_head_on_the_frozen_trunk(tiny_tile_run, tiny_dataset, tmp_path):
    import shutil
    import main as play
    out = tmp_path / "head"
    out.mkdir()
    shutil.copy(os.path.join(tiny_tile_run, "autoencoder.pt"), out / "autoencoder.pt")
    init = os.path.join(tiny_tile_run, "dynamics.pt")
    args = ["--dataset", tiny_dataset, "--out", str(out), "--stage", "dynamics", "--ae-arch", "tiles",
            "--dynamics", "tiles", "--history", "2", "--hidden", "16", "--conv-blocks", "2", "--tile-state", "screen",
            "--tile-head", "local", "--tile-byte-map", "1", "--state-width", "24", "--state-buttons", "1",
            "--tile-fit", "state_head", "--epochs", "2", "--batch-size", "16", "--dyn-change-weight", "4",
            "--cache-dir", os.path.join(tiny_tile_run, "cache")]
    with pytest.raises(SystemExit, match="--init-dynamics"):
        train.main(args)
    assert not os.path.exists(out / "dynamics.pt")
    train.main(args + ["--init-dynamics", init])
    before, _ = train.load_model(init, "dynamics")
    after, _ = train.load_model(str(out / "dynamics.pt"), "dynamics")
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in new if not k.startswith(("state_head.", "byte_embed."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)  # the trunk and the tile head are init's
    assert after.state_head[0].out_features == 24 and before.state_head[0].out_features == 32
    assert not torch.equal(old["byte_embed.weight"], new["byte_embed.weight"])  # the head's embeddings trained
    log = [json.loads(line) for line in open(out / "dynamics_log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2] and all(0 <= r["val_all_bytes_right"] <= 1 for r in log)
    assert len(after.tile_support_modes) and not after.transitions.all()  # the play masks, as a full run has them
    train.main(args + ["--init-dynamics", init])  # done: resumes at epoch 2 and trains nothing more
    assert len(open(out / "dynamics_log.jsonl").readlines()) == 2
    assert torch.equal(train.load_model(str(out / "dynamics.pt"), "dynamics")[0].state_head[0].weight,
                       after.state_head[0].weight)
    with pytest.raises(SystemExit, match="tile-head local"):
        pooled = {"local": "pooled", "1": "0"}  # a pooled head, so no byte map (and no raw buttons)
        train.main([pooled.get(a, a) for a in args] + ["--init-dynamics", init, "--out", str(out)])
    result = play.main(["--checkpoint", str(out), "--headless", "--frames", "3"])
    assert result["frames"] == 3
    # round 10: with a play head beside it (which reads the board window), both heads train and the rest stays init's
    both = tmp_path / "play_head"
    both.mkdir()
    shutil.copy(os.path.join(tiny_tile_run, "autoencoder.pt"), both / "autoencoder.pt")
    train.main(args + ["--init-dynamics", init, "--out", str(both), "--state-local-board", "1",
                       "--state-play-head", "8"])
    fitted, _ = train.load_model(str(both / "dynamics.pt"), "dynamics")
    assert fitted.play_head[0].out_features == 8 and fitted.local_board and fitted.piece_rule
    weights = fitted.state_dict()
    assert all(torch.equal(old[k], weights[k]) for k in frozen)
    assert [json.loads(line)["epoch"] for line in open(both / "dynamics_log.jsonl")] == [1, 2]
    assert play.main(["--checkpoint", str(both), "--headless", "--frames", "3"])["frames"] == 3


def test_piece_rule_draws_the_piece_whole_clears_its_trail_and_keeps_the_rest():
    torch.manual_seed(0)
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    cells = torch.full((256, 4, 2), -100, dtype=torch.long)
    cells[3] = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])  # orientation 3: a 2x2 square
    n = train.TILE_ROWS * train.TILE_COLS
    empty = torch.full((n,), -1, dtype=torch.long)
    board = torch.tensor([(r + 6) * train.TILE_COLS + c + 12 for r in range(20) for c in range(10)])
    empty[board] = 0
    codes = torch.zeros(20, dtype=torch.bool)
    codes[[5, 6]] = True
    model.piece_rule = {"cells": cells, "origin": torch.tensor([6, 12]), "board": torch.tensor([20, 10]),
                        "codes": codes, "empty": empty,  # the phase bytes all 0 but the play state: falling, or a spawn
                        "copy_pairs": torch.tensor([[[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
                                                    [[8, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]]),
                        "copy_masks": torch.stack([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])}
    state = torch.zeros(1, len(names), dtype=torch.long)
    state[0, names.index("play state")], state[0, names.index("piece orientation")] = 1, 3
    state[0, names.index("piece x")], state[0, names.index("piece y")] = 4, 5
    nxt = state.clone()
    nxt[0, names.index("piece y")] = 6  # it falls a row
    last = torch.randint(7, 20, (1, 30, 32))
    logits = torch.randn(1, 20, 30, 32)
    logits[:, 9] = 50.0  # the tile head's favourite everywhere: code 9, which no piece shows
    z = model.apply_piece_rule(logits, last, state, nxt)[0]
    new = {(6 + 6, 16), (6 + 6, 17), (6 + 7, 16), (6 + 7, 17)}
    left = {(6 + 5, 16), (6 + 5, 17)}
    for r in range(30):
        for c in range(32):
            want = 9 if (r, c) in new else 0 if (r, c) in left else int(last[0, r, c])
            if (r, c) in new:
                assert int(z[r, c]) in (5, 6)  # a piece code, though the head liked 9 better
            else:
                assert int(z[r, c]) == want, (r, c)
    assert model.piece_tiles(nxt)[0].sum() == 4
    # at a spawn (the piece was not falling before), only the new piece's tiles are ruled; the rest is the head's
    spawn = state.clone()
    spawn[0, names.index("play state")] = 8
    z = model.apply_piece_rule(logits, last, spawn, nxt)[0]
    assert all(int(z[r, c]) in (5, 6) for r, c in new) and int((z == 9).sum()) == 960 - 4
    # a piece with its cells off the board (row -5) draws nothing, and no orientation byte breaks it
    off = nxt.clone()
    off[0, names.index("piece y")], off[0, names.index("piece orientation")] = 251, 19
    assert not model.piece_tiles(off).any()


@pytest.fixture(scope="session")
def long_episode(tmp_path_factory) -> str:
    """One 500-step game of real NES Tetris at level 9 played by the bot: enough pieces lock to learn the piece rule."""
    import collect
    out = str(tmp_path_factory.mktemp("long") / "one")
    collect.main(["--episodes", "1", "--max-steps", "500", "--seed", "5", "--power-on-frac", "0", "--policy", "bot",
                  "--min-level", "9", "--max-level", "9", "--workers", "1", "--out", out])
    return out


def test_piece_rule_learnt_from_the_real_game_matches_its_screen(long_episode, tmp_path):
    cache = train.load_tiles(long_episode, str(tmp_path))
    codes = torch.from_numpy(cache.tile_ids.astype(np.int64))  # distinct tiles as codes: exact
    next_ok = np.zeros(len(cache.ram), dtype=bool)
    next_ok[:-1] = cache.episodes[1:] == cache.episodes[:-1]
    rows = np.flatnonzero(next_ok)
    rule = train.fit_piece_rule(codes, cache.ram, rows, next_ok, int(codes.max()) + 1)
    seen = (rule["cells"][:, 0, 0] > -100).nonzero().flatten().tolist()
    assert len(seen) >= 4 and all(o < 19 for o in seen)
    for o in seen:  # four different cells, next to each other, around the piece's own cell
        c = rule["cells"][o]
        assert len({tuple(x) for x in c.tolist()}) == 4 and c.abs().max() <= 2
    assert rule["origin"].tolist() == [6, 12]  # the well: 20 x 10 tiles from screen tile (6, 12)
    # the piece's cells there match the tiles that change as it moves (0.97 on the training set; this short game's
    # fast level-9 drops, where the screen lags the RAM a frame, give about 0.76)
    assert float(rule["origin_iou"]) > 0.6
    assert 0 < int(rule["codes"].sum()) < 20 and int((rule["empty"] >= 0).sum()) > 150
    pairs = [(a[0], b[0]) for a, b in rule["copy_pairs"].tolist()]  # the play state before and after
    assert (1, 1) in pairs and (1, 2) in pairs  # falling, and locking
    masks = [m for pair, m in zip(pairs, rule["copy_masks"]) if pair == (1, 1)]
    falling = max(masks, key=lambda m: int(m.sum())).view(30, 32).clone()  # the falling step this game made most
    falling[6:26, 12:22] = True  # (this game's board moves on more than 5% of its falling steps: the lag above)
    assert falling.float().mean() > 0.95  # while a piece falls, the screen around the board stands still


def test_phase_bytes_move_together_only_along_steps_the_game_took():
    torch.manual_seed(0)
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    ps, clear = names.index("play state"), names.index("clear animation")
    before = torch.zeros(3, len(names), dtype=torch.long)
    after = before.clone()
    before[:, ps], after[:, ps] = torch.tensor([1, 1, 4]), torch.tensor([1, 2, 4])  # 1 -> 1, 1 -> 2, 4 -> 4
    before[2, clear] = after[2, clear] = 4  # while lines clear, the clear animation byte is 4
    model.fit_phase_steps(before, after)
    assert model.phase_steps.shape == (3, 2, len(train.PHASE_BYTES))
    state = before[:1].clone()  # falling
    logits = torch.full((1, len(names), 256), -10.0)
    logits[:, :, 0] = 0.0  # every byte: likeliest stays
    logits[0, ps, 3] = 5.0  # but the head wants play state 1 -> 4, which the game never did from 1
    classes = logits.argmax(-1)
    out = model.phase_step(state, logits, classes)
    assert int(out[0, ps]) in (0, 1)  # stays (1) or locks (+1 = 2): not +3
    logits[0, ps, 1] = 6.0  # now it prefers the lock, a step the game took
    assert int(model.phase_step(state, logits, logits.argmax(-1))[0, ps]) == 1
    unseen = state.clone()
    unseen[0, ps] = 7  # the game never had this phase: the head's own choice stands
    assert torch.equal(model.phase_step(unseen, logits, logits.argmax(-1)), logits.argmax(-1))


def test_byte_tiles_draw_the_tiles_a_byte_decides():
    rng = np.random.default_rng(0)
    n, names = 300, train.TILE_STATES["screen"]
    addresses = [a for _, a in names]
    ram = np.zeros((n, 2048), dtype=np.uint8)
    ram[:, 0xC0] = 4  # playing
    ram[:, 0x44] = rng.integers(0, 3, n)  # the level
    codes = torch.zeros(n, 30, 32, dtype=torch.long)
    codes[:, 2, 3] = torch.from_numpy(ram[:, 0x44].astype(np.int64)) + 7  # a digit: code 7 + the level
    codes[:, 5, 5] = torch.from_numpy(rng.integers(0, 5, n))  # noise no byte decides
    bt = train.fit_byte_tiles(codes, ram, np.arange(n), addresses, exclude=None)
    level = [name for name, _ in names].index("level")
    assert bt["positions"].tolist() == [2 * 32 + 3] and bt["bytes"].tolist() == [[level, -1]]
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    model.byte_tiles = bt
    state = torch.zeros(2, len(names), dtype=torch.long)
    state[:, model.mode] = 4
    state[:, level] = torch.tensor([2, 9])  # 9: a level never seen, so the tile head's code stays
    z = model.apply_byte_tiles(torch.ones(2, 30, 32, dtype=torch.long), state)
    assert int(z[0, 2, 3]) == 9 and int(z[1, 2, 3]) == 1 and int((z != 1).sum()) == 1
    state[:, model.mode] = 3  # another game mode: not ruled
    assert (model.apply_byte_tiles(torch.ones(2, 30, 32, dtype=torch.long), state) == 1).all()


def test_a_piece_step_the_game_never_showed_is_blocked():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    x, o = names.index("piece x"), names.index("piece orientation")
    seen = torch.zeros(4, len(names), dtype=torch.long)
    seen[:, x], seen[:, o] = torch.tensor([1, 2, 3, 4]), 10  # orientation 10 stood in columns 1-4 only
    model.fit_piece_support(seen)
    state = seen[:1].clone()  # column 1
    left, right = torch.zeros(1, len(names), dtype=torch.long), torch.zeros(1, len(names), dtype=torch.long)
    left[0, x], right[0, x] = 255, 1  # the head's classes: -1 (into the wall) or +1
    last = torch.zeros(1, 30, 32, dtype=torch.long)
    assert int(model.next_state(state, model.keep_piece_in_play(last, state, left)[0])[0, x]) == 1  # blocked: stays
    assert int(model.next_state(state, model.keep_piece_in_play(last, state, right)[0])[0, x]) == 2


def test_a_falling_piece_keeps_an_orientation_and_the_floor_locks_it():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    ps, y, o = names.index("play state"), names.index("piece y"), names.index("piece orientation")
    seen = torch.zeros(6, len(names), dtype=torch.long)
    seen[:, ps], seen[:, o], seen[:, y] = torch.tensor([1, 1, 1, 1, 4, 4]), torch.tensor([10, 10, 11, 11, 19, 19]), \
        torch.tensor([0, 1, 0, 1, 0, 1])  # falling pieces have orientation 10 or 11 and rows 0-1; 19 only in state 4
    model.fit_piece_support(seen)
    last = torch.zeros(1, 30, 32, dtype=torch.long)
    state = seen[:1].clone()  # falling, orientation 10, row 0
    turn = torch.zeros(1, len(names), dtype=torch.long)
    turn[0, o] = 9  # 10 -> 19: no piece, while it falls
    classes, landed = model.keep_piece_in_play(last, state, turn)
    assert int(model.next_state(state, classes)[0, o]) == 10 and not landed.any()
    turn[0, o] = 1  # 10 -> 11: seen
    assert int(model.next_state(state, model.keep_piece_in_play(last, state, turn)[0])[0, o]) == 11
    both = turn.clone()
    both[0, y] = 1  # a rotation the data never showed at row 1 and a fall: the fall alone is made
    both[0, o] = 2  # 10 -> 12
    classes, landed = model.keep_piece_in_play(last, state, both)
    assert model.next_state(state, classes)[0, [y, o]].tolist() == [1, 10] and not landed.any()
    floor = seen[1:2].clone()  # row 1 is the lowest the data showed: a fall is refused, and the piece has landed
    down = torch.zeros(1, len(names), dtype=torch.long)
    down[0, y] = 1
    classes, landed = model.keep_piece_in_play(last, floor, down)
    assert int(model.next_state(floor, classes)[0, y]) == 1 and landed.all()


def test_gravity_makes_a_resting_piece_fall():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    ps, t, lv, y = (names.index(n) for n in ("play state", "fall timer", "level", "piece y"))
    before = torch.zeros(4, len(names), dtype=torch.long)
    before[:, ps], before[:, lv] = 1, 5
    before[:, t], before[:, y] = torch.tensor([10, 12, 20, 22]), 3
    after = before.clone()
    after[:, t] = torch.tensor([12, 14, 22, 1])
    after[3, y] = 4  # at level 5 the timer ran to 22, then the piece fell a row and the timer went to 1
    model.fit_gravity(before, after)
    assert int(model.gravity["limit"][5]) == 22 and int(model.gravity["limit"][6]) == 255
    assert int(model.gravity["reset"]) == 1
    state = before[:1].clone()
    state[0, t] = 22
    stay = torch.zeros(1, len(names), dtype=torch.long)
    stay[0, t] = 2  # the head: the timer runs on to 24, the piece stays
    nxt = model.next_state(state, model.apply_gravity(state, stay))
    assert int(nxt[0, y]) == 4 and int(nxt[0, t]) == 1
    reset = torch.zeros(1, len(names), dtype=torch.long)
    reset[0, t] = 256 - 20  # the head: the timer resets to 2, but the piece stays: it falls
    nxt = model.next_state(state, model.apply_gravity(state, reset))
    assert int(nxt[0, y]) == 4 and int(nxt[0, t]) == 2
    state[0, t] = 10  # early in the wait: the head's choice stands
    assert torch.equal(model.apply_gravity(state, stay), stay)
    state[0, lv] = 6  # a level the data never showed: no rule
    state[0, t] = 22
    assert torch.equal(model.apply_gravity(state, stay), stay)
    # the soft drop: with DOWN held, the soft-drop counter's step 2 -> 2 came with a fall on every one of 20 steps
    ary = names.index("auto-repeat y")
    before = torch.zeros(40, len(names), dtype=torch.long)
    before[:, ps], before[:, lv], before[:, ary], before[:, y] = 1, 5, 2, 3
    after = before.clone()
    after[:20, y] = 4  # held down: it fell; not held: it stayed
    buttons = torch.zeros(40, 8, dtype=torch.long)
    buttons[:20, train.DOWN_BUTTON] = 1
    model.fit_gravity(before, after, buttons)
    assert model.gravity["soft"].nonzero().tolist() == [[2, 2, 1]]
    state = before[:1].clone()
    still = torch.zeros(1, len(names), dtype=torch.long)  # the head keeps every byte, the piece too
    down = torch.zeros(1, 8)
    down[0, train.DOWN_BUTTON] = 1
    assert int(model.next_state(state, model.apply_gravity(state, still, down))[0, y]) == 4
    assert torch.equal(model.apply_gravity(state, still, torch.zeros(1, 8)), still)


def test_bytes_that_never_change_over_a_phase_step_keep_their_value():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    ps, count, t = names.index("play state"), names.index("count T"), names.index("fall timer")
    before = torch.zeros(40, len(names), dtype=torch.long)
    before[:, ps] = torch.tensor([1] * 20 + [8] * 20)  # 20 falling steps, 20 spawns
    after = before.clone()
    after[20:, ps] = 1
    after[:, t] = 1  # the timer changes on every step; the count only at a spawn
    after[20:, count] = 1
    model.fit_phase_steps(before, after)
    state = before[[0, 20]].clone()
    up = torch.zeros(2, len(names), dtype=torch.long)
    up[:, count], up[:, t], up[1, ps] = 1, 1, 1  # the head counts a piece in both rows; row 1 spawns (8 -> 1)
    nxt = model.next_state(state, model.keep_still_bytes(state, up))
    assert nxt[:, count].tolist() == [0, 1] and nxt[:, t].tolist() == [1, 1]
    few = model.phase_still.clone()
    model.fit_phase_steps(before[:19], after[:19])  # 19 steps: too few to say what stands still
    assert not model.phase_still.any() and few.any()


def test_a_falling_piece_never_steps_onto_a_stacked_block_and_locks_on_it():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    n = train.TILE_ROWS * train.TILE_COLS
    cells = torch.full((256, 4, 2), -100, dtype=torch.long)
    cells[3] = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    empty = torch.full((n,), -1, dtype=torch.long)
    empty[[(r + 6) * 32 + c + 12 for r in range(20) for c in range(10)]] = 0
    model.piece_rule = {"cells": cells, "origin": torch.tensor([6, 12]), "board": torch.tensor([20, 10]),
                        "codes": torch.ones(20, dtype=torch.bool), "empty": empty,
                        "copy_pairs": torch.zeros(0, 2, 6, dtype=torch.long), "copy_masks": torch.zeros(0, n).bool()}
    y = names.index("piece y")
    state = torch.zeros(1, len(names), dtype=torch.long)
    state[0, names.index("play state")], state[0, names.index("piece orientation")] = 1, 3
    state[0, names.index("piece x")], state[0, y] = 4, 5
    last = torch.zeros(1, 30, 32, dtype=torch.long)
    last[0, 6 + 5:6 + 7, 12 + 4:12 + 6] = 5  # the piece itself, on board rows 5-6
    down = torch.zeros(1, len(names), dtype=torch.long)
    down[0, y] = 1  # the head's classes: fall a row
    classes, landed = model.keep_piece_in_play(last, state, down)
    assert int(model.next_state(state, classes)[0, y]) == 6 and not landed.any()  # free: it falls
    last[0, 6 + 7, 12 + 5] = 7  # a stacked block under its right column
    classes, landed = model.keep_piece_in_play(last, state, down)
    assert int(model.next_state(state, classes)[0, y]) == 5 and landed.all()  # it stays, and has landed
    # a piece that has landed locks: of the steps the game took, one out of the falling state
    ps = names.index("play state")
    before, after = state.repeat(2, 1), state.repeat(2, 1)
    after[1, ps] = 2  # falling -> falling, and falling -> locking
    model.fit_phase_steps(before, after)
    logits = torch.zeros(1, len(names), 256)
    logits[0, :, 0] = 5.0  # the head wants every byte to stay: the piece to keep falling
    out = model.phase_step(state, logits, logits.argmax(-1), leave_falling=landed)
    assert int(model.next_state(state, out)[0, ps]) == 2
    assert int(model.next_state(state, model.phase_step(state, logits, logits.argmax(-1)))[0, ps]) == 1


def test_a_bot_reads_the_dreams_board_and_piece_off_its_tiles_and_state():
    world = train.load_world(os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tiles"))
    dyn = world.dynamics
    state = world.start("play")
    ram = world.dream_ram(state)
    for i, a in enumerate(dyn.addresses):  # the state's bytes sit at their RAM addresses
        assert ram[int(a)] == int(state[1][0, i])
    board = torch.from_numpy(ram[0x400:0x400 + 200].reshape(20, 10) != 0xEF)
    empty = dyn.piece_rule["empty"].view(30, 32)[6:26, 12:22]
    tokens = state[0].clone()
    cell = torch.nonzero(~board & ~dyn.piece_tiles(state[1])[0, 6:26, 12:22])[0]  # a free cell, not the piece's
    tokens[0, -1, 6 + cell[0], 12 + cell[1]] = int(empty[cell[0], cell[1]]) + 1  # a block drawn there
    board2 = torch.from_numpy(world.dream_ram((tokens,) + state[1:])[0x400:0x400 + 200].reshape(20, 10) != 0xEF)
    assert board2[cell[0], cell[1]] and int((board2 != board).sum()) == 1
    world.drop_piece_rule()
    with pytest.raises(train.CheckpointError, match="piece rule"):
        world.dream_ram(state)


def test_bot_plays_the_dream_and_the_stats_say_what_its_game_did(tmp_path):
    import main
    ckpt = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tiles")
    out = str(tmp_path / "bot")
    main.main(["--checkpoint", ckpt, "--headless", "--frames", "60", "--actions", "bot", "--stats", out,
               "--reference", ""])
    with open(out + "_stats.json") as f:
        game = json.load(f)["game"]
    assert set(game) == {"pieces_spawned", "longest_rest_of_a_falling_piece", "lines", "score", "game_over_at_s"}
    states = np.loadtxt(out + "_state.csv", delimiter=",", skiprows=1)
    assert len(states) == 60
    names = ["play state", "piece y", "lines", "lines hi", "score lo", "score mid", "score hi"]
    fake = np.zeros((6, len(names)), dtype=int)
    fake[:, 0] = [8, 1, 1, 1, 2, 1]  # a spawn, two steps at rest, a fall, a lock, a spawn
    fake[:, 1] = [0, 0, 0, 1, 1, 0]
    fake[5, 2], fake[5, 4], fake[5, 5] = 0x12, 0x99, 0x01  # lines 12, score 199
    assert main.dream_game(fake, names) == {"pieces_spawned": 2, "longest_rest_of_a_falling_piece": 1,
                                            "lines": [0, 12], "score": [0, 199], "game_over_at_s": None}
    fake[4:, 0] = train.GAME_OVER_STATE  # the game ends at frame 4: 0.133 s at 30 frames a second
    assert main.dream_game(fake, names)["game_over_at_s"] == 0.1
    with pytest.raises(SystemExit, match="tile world"):
        main.action_source("bot", 0, None)
    env = main.NeuralTetris(train.load_world(ckpt), temperature=0.0)
    env.reset()
    bot, pressed = main.action_source("bot", 0, env), []
    for t in range(30):  # the bot steers the piece it reads off the dream: it presses buttons
        pressed.append(bot(t))
        env.step(pressed[-1])
    assert np.array(pressed).any()


def _board_model():
    """A screen-state tile dynamics with a piece rule whose board is 20x10 at tile (6, 12), code 0 empty."""
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    n = train.TILE_ROWS * train.TILE_COLS
    empty = torch.full((n,), -1, dtype=torch.long)
    empty[[(r + 6) * 32 + c + 12 for r in range(20) for c in range(10)]] = 0
    cells = torch.full((256, 4, 2), -100, dtype=torch.long)
    cells[3] = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    model.piece_rule = {"cells": cells, "origin": torch.tensor([6, 12]), "board": torch.tensor([20, 10]),
                        "codes": torch.ones(20, dtype=torch.bool), "empty": empty,
                        "copy_pairs": torch.zeros(0, 2, 6, dtype=torch.long), "copy_masks": torch.zeros(0, n).bool()}
    return model


def test_full_rows_clear_as_play_leaves_the_line_clear_and_the_rows_above_drop():
    model = _board_model()
    frame = torch.zeros(30, 32, dtype=torch.long)
    frame[6 + 19, 12:22] = 5  # the bottom row full
    frame[6 + 18, 12:14] = 7  # two blocks on the row above it
    frame[6 + 17, 12 + 9] = 8
    frame[6 + 18, 12 + 9] = 5
    out = model.clear_full_rows(frame)
    assert out[6 + 19, 12:14].tolist() == [7, 7] and int(out[6 + 19, 12 + 9]) == 5 and int(out[6 + 18, 12 + 9]) == 8
    assert int((out[6:26, 12:22] != 0).sum()) == 4 and torch.equal(out[:6], frame[:6])  # 4 blocks left, rest kept
    assert model.board_full(frame[None]).all() and not model.board_full(out[None]).any()
    # fitted from frames: the step from play state 3 into 4 comes only with a full row, the one into 5 never
    names = model.state_names
    ps = names.index("play state")
    before = torch.zeros(80, len(names), dtype=torch.long)
    before[:, ps] = 3
    after = before.clone()
    after[:40, ps], after[40:, ps] = 4, 5
    last = torch.stack([frame] * 40 + [out] * 40)
    model.fit_phase_steps(before, after)
    model.fit_phase_full(last, before, after)
    assert sorted(model.phase_full.tolist()) == [0, 1]
    logits = torch.zeros(1, len(names), 256)
    logits[0, ps, 2] = 5.0  # the head wants 3 -> 5 (no line), but a row is full: the clear (4) is taken
    state = before[:1].clone()
    assert int(model.next_state(state, model.phase_step(state, logits, logits.argmax(-1), last=frame[None]))[0, ps]) == 4
    logits[0, ps, 2], logits[0, ps, 1] = 0.0, 5.0  # the head wants the clear, but no row is full
    assert int(model.next_state(state, model.phase_step(state, logits, logits.argmax(-1), last=out[None]))[0, ps]) == 5
    # in play: through the clear (4) the board stands still with its full row; as play leaves 4, the row clears
    tiles = torch.full((1, 20, 30, 32), -5.0)
    tiles[:, 3] = 5.0  # the tile head wants code 3 everywhere
    now, leave = before[:1].clone(), before[:1].clone()
    now[0, ps], leave[0, ps] = 4, 7
    z = model.apply_piece_rule(tiles, frame[None], now, now)
    assert torch.equal(z[0, 6:26, 12:22], frame[6:26, 12:22])
    z = model.apply_piece_rule(tiles, frame[None], now, leave)
    assert torch.equal(z[0, 6:26, 12:22], out[6:26, 12:22])


def test_the_frame_counter_times_a_fork_that_it_decides():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    ps, fc, c52 = names.index("play state"), names.index("frame counter"), names.index("0x52")
    before = torch.zeros(80, len(names), dtype=torch.long)
    before[:, ps], before[:, fc] = 4, torch.arange(80) * 2  # the frame counter runs 0, 2, 4, ...
    after = before.clone()
    after[:, c52] = (before[:, fc] % 4 == 0).long()  # the clear's counter moves on at frame counts 0 mod 4 only
    model.fit_phase_steps(before, after)
    model.fit_phase_parity(before, after)
    stay, move = (model.phase_steps[:, 1, model.phase.index(c52)] == v for v in (0, 1))
    assert model.phase_parity[move].tolist() == [[True, False, False, False]]
    assert model.phase_parity[stay].tolist() == [[False, False, True, False]]
    logits = torch.zeros(2, len(names), 256)
    logits[:, c52, 0] = 5.0  # the head wants the counter to stay
    state = before[:2].clone()
    state[:, fc] = torch.tensor([8, 10])
    out = model.next_state(state, model.phase_step(state, logits, logits.argmax(-1)))
    assert out[:, c52].tolist() == [1, 0]


def test_the_score_and_the_lines_never_go_down_within_a_game():
    model = train.TileDynamics(codes=20, history=2, width=16, blocks=2, state="screen", head="local")
    names = model.state_names
    lo, mid, mode = names.index("score lo"), names.index("score mid"), names.index("game mode")
    before = torch.zeros(3, len(names), dtype=torch.long)
    before[:, mode] = 4
    before[:, lo] = torch.tensor([0x99, 0x10, 0x20])
    after = before.clone()
    after[:, lo] = torch.tensor([0x10, 0x20, 0x00])
    after[0, mid] = 1  # 99 -> 110
    after[2, mode] = 3  # 20 -> 0 at a new game (the mode changes)
    model.fit_monotone(before, after)
    counts = [[f"count {p}"] for p in "TJZOSLI"]  # (since round 10; they never changed here, so never went down)
    assert [[names[i] for i in g] for g in model.monotone] == counts + [["lines", "lines hi"],
                                                                        ["score lo", "score mid", "score hi"]]
    state = before[:2].clone()
    state[0, lo], state[0, mid] = 0x99, 0x04  # 499
    classes = torch.zeros(2, len(names), dtype=torch.long)
    classes[0, lo] = (0x10 - 0x99) % 256  # the head: 499 -> 410
    classes[1, lo] = 0x10  # 10 -> 20
    out = model.next_state(state, model.keep_numbers_up(state, classes))
    assert out[:, lo].tolist() == [0x99, 0x20] and out[:, mid].tolist() == [0x04, 0]
    after[1, lo] = 0x05  # the data lowered the score once within a game: no rule for it
    model.fit_monotone(before, after)
    assert [[names[i] for i in g] for g in model.monotone] == counts + [["lines", "lines hi"]]


def test_play_head_reads_no_number_the_screen_prints():
    """Round 10: the bytes of play come from a head that reads neither the counters, the lines and the score, nor the
    frame counter beyond its value mod 4; the numbers still come from the state head, which reads them all."""
    torch.manual_seed(0)
    model = train.TileDynamics(codes=20, history=2, width=8, blocks=1, state="screen", head="local", state_width=16,
                               state_buttons=True, local_board=True, play_width=8)
    names = model.state_names
    assert [names[i] for i in model.play_bytes if names[i] in train.NUMBER_BYTES + ("level",)] == []
    assert "frame counter" in [names[i] for i in model.play_bytes] and "level" in [names[i] for i in model.play_reads]
    tokens, actions = torch.randint(0, 20, (3, 2, 30, 32)), torch.randint(0, 2, (3, 2, 8)).float()
    state = torch.randint(0, 10, (3, model.state_size))
    with torch.no_grad():
        logits = model.trunk(tokens, state, actions)[1]
        numbers = state.clone()
        numbers[:, [names.index(n) for n in train.NUMBER_BYTES]] += 5
        numbers[:, names.index("frame counter")] += 4
        moved = model.trunk(tokens, numbers, actions)[1]
        assert torch.equal(moved[:, model.play_bytes], logits[:, model.play_bytes])
        counters = [names.index(n) for n in train.NUMBER_BYTES]
        assert not torch.equal(moved[:, counters], logits[:, counters])  # the state head reads them
        shifted = state.clone()
        shifted[:, names.index("piece x")] += 1
        assert not torch.equal(model.trunk(tokens, shifted, actions)[1][:, model.play_bytes],
                               logits[:, model.play_bytes])
        timed = state.clone()
        timed[:, names.index("frame counter")] += 1  # mod 4 is the line clear's pace: the play head reads it
        assert not torch.equal(model.trunk(tokens, timed, actions)[1][:, model.play_bytes],
                               logits[:, model.play_bytes])
    with pytest.raises(ValueError, match="state_play_head"):
        train.Config(state_play_head=8)  # it reads the board window, so it needs state_local_board 1


def test_numbers_count_in_decimal_past_the_data_and_draw_each_digit():
    """Round 10: a number's tiles and digit codes are found from frames where its units digit took all ten values;
    play carries a nibble past 9 as decimal does and draws every digit, including one the data never showed there."""
    model = train.TileDynamics(codes=120, history=1, width=8, blocks=1, state="screen", head="local")
    names, t = model.state_names, model.state_names.index("count T")
    values = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11] * 3)  # count T; its tens digit shows 0 or 1
    states = torch.zeros(len(values), model.state_size, dtype=torch.long)
    states[:, t] = values
    codes = torch.zeros(len(values), 30, 32, dtype=torch.long)
    codes[:, 12, 8] = 100 + (values & 15)  # the units digit
    codes[:, 12, 7] = 100 + (values >> 4)  # the tens digit, left of it
    codes[:, 12, 6] = 7  # a frame that no byte decides ends the number
    j = names.index("count J")  # J counted to 7 only: its tile is found by the digit codes T showed
    states[:, j] = torch.arange(len(values)) % 8
    codes[:, 14, 8], codes[:, 14, 7] = 100 + states[:, j], 100  # its tens digit: always 0
    model.fit_numbers(codes, states)
    (number,) = [n for n in model.numbers if n["bytes"].tolist() == [t]]
    assert number["positions"].tolist() == [12 * 32 + 8, 12 * 32 + 7]
    assert number["digits"].tolist() == list(range(100, 110))
    (counted_j,) = [n for n in model.numbers if n["bytes"].tolist() == [j]]
    assert counted_j["positions"].tolist() == [14 * 32 + 8, 14 * 32 + 7] and torch.equal(counted_j["digits"],
                                                                                           number["digits"])
    assert all(n["bytes"].tolist() != [names.index("count O")] for n in model.numbers)  # O never counted: no tiles
    state = torch.zeros(1, model.state_size, dtype=torch.long)
    state[0, t] = 0x29
    classes = torch.zeros(1, model.state_size, dtype=torch.long)
    classes[0, t] = 1  # the head's +1 on 0x29 is 0x2A
    nxt = model.next_state(state, model.count_in_decimal(state, classes))
    assert int(nxt[0, t]) == 0x30
    state[0, t] = 0x99
    assert int(model.next_state(state, model.count_in_decimal(state, classes))[0, t]) == 0x99  # the top stays
    nxt[0, model.mode] = 4
    drawn = model.apply_numbers(torch.zeros(1, 30, 32, dtype=torch.long), nxt)
    assert drawn[0, 12, 8] == 100 and drawn[0, 12, 7] == 103 and drawn[0, 12, 6] == 0  # "30": a 3 never shown there
    nxt[0, model.mode] = 3
    assert not model.apply_numbers(torch.zeros(1, 30, 32, dtype=torch.long), nxt).any()  # only in play


def test_the_lines_go_up_by_the_full_rows_a_clear_started_with():
    """Round 10: fitted where the data's lines went up by the full rows on screen as the clear began, play counts
    the full rows still standing on the dream's screen as it leaves the clear (a double is 2 lines, past 9 in BCD)."""
    model = train.TileDynamics(codes=20, history=1, width=8, blocks=1, state="screen", head="local")
    names, ps, lines = model.state_names, model.play_state, model.state_names.index("lines")
    steps = torch.zeros(2, 2, len(model.phase), dtype=torch.long)
    steps[:, 0, model.phase.index(ps)] = 3
    steps[:, 1, model.phase.index(ps)] = torch.tensor([4, 5])  # with a full row play goes to 4, without to 5
    model.phase_steps, model.phase_counts, model.phase_full = steps, torch.tensor([20, 20]), torch.tensor([1, 0])
    empty = torch.full((30, 32), -1)
    empty[6:26, 12:22] = 0
    model.piece_rule = {"origin": torch.tensor([6, 12]), "board": torch.tensor([20, 10]), "empty": empty.flatten()}
    assert model.clear_states().tolist() == [4]
    states = torch.zeros(5, model.state_size, dtype=torch.long)
    states[:, ps] = torch.tensor([3, 4, 4, 7, 7])
    states[:, lines] = torch.tensor([5, 5, 5, 7, 7])
    full, same = torch.tensor([2, 2, 2, 0, 0]), torch.ones(5, dtype=torch.bool)
    assert model.fit_clear_lines(full, states, same) == (1, 1) and model.clear_lines
    states[3:, lines] = 6  # one line for two rows: not the rule
    assert model.fit_clear_lines(full, states, same) == (0, 1) and not model.clear_lines
    state = torch.zeros(1, model.state_size, dtype=torch.long)
    state[0, ps], state[0, lines] = 4, 0x09
    classes = torch.zeros(1, model.state_size, dtype=torch.long)
    classes[0, ps] = 3  # play leaves the clear (4 -> 7); the head adds no line
    last = torch.ones(1, 30, 32, dtype=torch.long)  # every board cell full ...
    last[0, 6:24, 12] = 0  # ... but on the bottom two rows
    nxt = model.next_state(state, model.count_cleared_lines(last, state, classes))
    assert int(nxt[0, lines]) == 0x11 and int(nxt[0, ps]) == 7
    classes[0, ps] = 0  # still clearing: nothing counted yet
    assert int(model.next_state(state, model.count_cleared_lines(last, state, classes))[0, lines]) == 0x09
    with pytest.raises(ValueError, match="clear_lines"):
        train.Config(clear_lines=2)
