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
    torch.manual_seed(0)
    state = world.start("play")
    for t in range(10):
        state, z = world.step(state, torch.zeros(1, 8), world.default_temperature)
        assert world.dynamics.support[torch.arange(world.dynamics.state_size), state[1][0]].all()
        assert dyn.allowed_tiles(state[1]).gather(1, z[:, None]).all()
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
