"""The tile world: native 8x8 tiles as codes, and rule-free dynamics whose recurrent state is the RAM bytes a
game-agnostic rule picks (issue #19)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import train


@pytest.fixture(scope="session")
def tiny_tile_run(tiny_dataset, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tile_run"))
    train.main(["--dataset", tiny_dataset, "--out", out, "--export", os.path.join(out, "export"),
                "--ae-arch", "tiles", "--dynamics", "tiles", "--history", "2", "--hidden", "16",
                "--conv-blocks", "2", "--state-width", "32", "--epochs", "1", "--batch-size", "16",
                "--dyn-change-weight", "10", "--unroll", "2", "--cache-dir", os.path.join(out, "cache")])
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
    assert torch.equal(model.codebook[codes], torch.from_numpy(table))
    near = table[7].astype(np.int16) + 3
    assert int(model.encode_tiles(np.clip(near, 0, 255).astype(np.uint8)[None])[0]) == int(codes[7])
    small = train.TileAutoencoder(codes=10)  # fewer codes than tiles: k-means, every code in use
    fit = train.fit_tiles(small, table, np.ones(50, dtype=np.int64))
    assert fit["codes_in_use"] == 10 and fit["exact_tiles"] < 1.0


def test_state_bytes_are_the_ones_that_change_often_enough():
    """choose_state_bytes knows no game: a byte is in the state when it changes on at least min_change of the
    training steps (rows whose next row is the same episode's)."""
    n = 1000
    ram = np.zeros((n, 2048), dtype=np.uint8)
    ram[:, 7] = np.arange(n) % 256          # changes every step
    ram[:, 300] = (np.arange(n) // 50) % 2  # every 50 steps: 2% of them
    ram[:, 301] = (np.arange(n) // 500) % 2  # once
    ram[:, 5] = 42                          # never
    rows = np.arange(n - 1)
    assert train.choose_state_bytes(ram, rows, 0.01).tolist() == [7, 300]
    assert train.choose_state_bytes(ram, rows, 0.0).tolist() == [7, 300, 301]
    assert train.choose_state_bytes(ram, rows, 0.5).tolist() == [7]
    assert train.choose_state_bytes(ram, rows[:40], 0.01).tolist() == [7]  # only the rows given count


def test_rare_steps_are_drawn_more_often():
    """rare_weights knows no game: a step on which a byte that seldom changes does change is drawn more often; a byte
    that changes at random on every step makes no step rare."""
    rng = np.random.default_rng(0)
    before = np.zeros((1000, 3), dtype=np.uint8)
    before[:, 0] = rng.integers(0, 256, 1000)  # byte 0: random every step
    after = before.copy()
    after[:, 0] = rng.integers(0, 256, 1000)
    after[:, 1] = 1            # byte 1 changes by +1 on every step
    after[:10, 2] = 5          # byte 2 changes on 10 steps: rare
    surprise = train.step_surprise(before, after)
    assert surprise[:10].min() > surprise[10:].max() + 3  # -log(0.01) - entropy, against byte 0's noise
    w = train.rare_weights(before, after, power=0.5, max_weight=100.0)
    assert np.median(w) == 1.0 and (w[10:] < 3).all() and (w[:10] > 5).all()
    assert train.rare_weights(before, after, power=0.5, max_weight=4.0).max() == 4.0
    assert (train.rare_weights(before, after, power=0.0) == 1.0).all()  # power 0: uniform


def tiny_batch(b=4, codes=20, history=2, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, codes, (b, history, 30, 32), generator=g)
    state = torch.randint(0, 256, (b, s), generator=g)
    nxt = tokens[:, -1].clone()
    nxt[:, 5, 5] = (nxt[:, 5, 5] + 1) % codes
    return {"tokens": tokens, "state": state, "actions": torch.zeros(b, history, 8), "next_tokens": nxt,
            "next_state": (state + 1) % 256}


def test_tile_dynamics_loss_scores_changed_tiles_and_step_returns_codes():
    torch.manual_seed(0)
    model = train.TileDynamics(codes=20, addresses=[0x10, 0x20, 0x30], history=2, width=16, blocks=2)
    batch = tiny_batch()
    loss, logs = model.loss(batch, change_weight=10.0)
    assert torch.isfinite(loss) and set(logs) >= {"tile_ce", "state_ce", "changed_tile_acc", "state_acc",
                                                  "changed_byte_acc"}
    loss.backward()
    assert model.out.weight.grad.abs().sum() > 0 and model.state_head[-1].weight.grad.abs().sum() > 0
    z, s = model.step(batch["tokens"], batch["state"], batch["actions"], temperature=0.0)
    assert z.shape == (4, 30, 32) and s.shape == batch["state"].shape and z.dtype == torch.int64
    # untrained, the copy bonus makes copying the last frame the likeliest next frame
    assert torch.equal(z, batch["tokens"][:, -1])
    z2, s2 = model.step(batch["tokens"], batch["state"], batch["actions"], temperature=0.0)
    assert torch.equal(z, z2) and torch.equal(s, s2)
    _, _, fed_codes, fed_state = model.loss(batch, feed=True)  # what a self-fed training step feeds forward
    assert torch.equal(fed_codes, z) and torch.equal(fed_state, s)


def test_tile_dynamics_learn_a_timer_that_the_screen_does_not_show():
    """A block that drops one row whenever a hidden timer wraps: the state head learns the timer, and given it
    the tile head moves the whole block at the wrap and keeps it still otherwise, with no fading."""
    torch.manual_seed(0)
    period, n = 4, 256
    timer = torch.arange(n) % period
    row = (torch.arange(n) // period) % 20
    tokens = torch.zeros(n, 30, 32, dtype=torch.long)
    tokens[torch.arange(n), row + 2, 10] = 1
    model = train.TileDynamics(codes=2, addresses=[0], history=1, width=16, blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.arange(n - 1)
    t = t[row[t + 1] >= row[t]]  # no wrap from the bottom row back to the top
    for _ in range(250):
        b = t[torch.randint(len(t), (32,))]
        loss, _ = model.loss({"tokens": tokens[b][:, None], "state": timer[b][:, None], "actions": torch.zeros(32, 1, 8),
                              "next_tokens": tokens[b + 1], "next_state": timer[b + 1][:, None]}, change_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, s = tokens[t[:1]][:, None], timer[t[:1]][:, None]
    for i in range(1, 3 * period):  # self-fed: the block falls a whole row every `period` steps
        nz, s = model.step(z, s, torch.zeros(1, 1, 8), temperature=0.0)
        z = nz[:, None]
        assert int(s[0, 0]) == (int(timer[t[0]]) + i) % period
        assert int(nz.sum()) == 1 and int(nz[0, int(row[t[0] + i]) + 2, 10]) == 1


def test_min_p_sampling_keeps_sure_bytes_and_samples_unsure_ones():
    model = train.TileDynamics(codes=2, addresses=[0, 1], history=1, width=8, blocks=1, min_p=0.2)
    logits = torch.full((2000, 2, 256), -30.0)
    logits[:, 0, 3] = 10.0                     # byte 0: sure of +3
    logits[:, 0, 4] = 7.0                      # (a change e^-3 = 5% as likely: below min-p, never drawn)
    logits[:, 1, 10:17] = 0.0                  # byte 1: one of 7 changes, evenly
    torch.manual_seed(0)
    drawn = model.sample_changes(logits, temperature=1.0)
    assert (drawn[:, 0] == 3).all()
    counts = torch.bincount(drawn[:, 1], minlength=256)
    assert counts[10:17].min() > 200 and counts.sum() == counts[10:17].sum()
    assert (model.sample_changes(logits, temperature=0.0) == logits.argmax(-1)).all()


def test_start_row_is_the_typical_screen_not_a_title_screen():
    """The shipped start context: the medoid of the frames 10 steps into each episode."""
    ids = np.zeros((4 * 40, 30, 32), dtype=np.int32)
    ids[40:80] = 7  # episode 1 sits on another screen (a title screen, say)
    ids[np.arange(0, 160, 3), 3, 3] = 1  # something moves in each

    class Cache:
        tile_ids, episodes = ids, np.repeat(np.arange(4), 40)
    row = train.start_row(Cache, np.arange(160))
    assert row == 10  # episode 0's, as typical as 2's and 3's, and first


def test_tile_run_trains_exports_evaluates_and_plays(tiny_tile_run, tiny_dataset, tmp_path):
    import evaluate
    import main as play
    export = os.path.join(tiny_tile_run, "export")
    world = train.load_world(export)
    assert isinstance(world, train.TileWorld)
    dyn = world.dynamics
    run = train.load_tiles(tiny_dataset, os.path.join(tiny_tile_run, "cache"))
    want = train.choose_state_bytes(run.ram, np.flatnonzero(np.r_[run.episodes[1:] == run.episodes[:-1], False]),
                                    0.01)  # every byte that changes often enough (the tiny run's split aside)
    assert set(dyn.addresses.tolist()) <= set(want.tolist()) and dyn.state_size > 10
    state = world.start("play")
    assert state[0].shape == (1, 2, 30, 32) and state[1].shape == (1, dyn.state_size)
    assert dyn.state_head[0].out_features == 32
    state, z = world.step(state, torch.zeros(1, 8), 1.0)
    accuracy = json.load(open(os.path.join(tiny_tile_run, "state_accuracy.json")))  # per byte, printed by training
    assert sorted(accuracy["bytes"]) == [f"{a:04x}" for a in dyn.addresses] and 0 <= accuracy["all_bytes_right"] <= 1
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
    prefix = str(tmp_path / "tile_play")
    play.main(["--checkpoint", export, "--headless", "--frames", "5", "--stats", prefix, "--reference", ""])
    assert os.path.getsize(prefix + "_sheet.png") > 0  # the contact sheet of the run
    assert json.load(open(prefix + "_stats.json"))["probe"]["frames"] == 5  # the frame probe read what was shown


def test_a_run_of_no_epochs_reexports_a_model_with_new_play_settings(tiny_tile_run, tiny_dataset, tmp_path):
    """--dyn-epochs 0 from --init-dynamics: the same weights, exported with the config's play settings (here the
    state head's logit adjustment); an identical autoencoder already in the export directory is left as it is."""
    export = os.path.join(tiny_tile_run, "export")
    out, again = str(tmp_path / "run"), str(tmp_path / "export")
    os.makedirs(out)
    shutil.copy(os.path.join(export, "autoencoder.pt"), out)
    shutil.copytree(export, again)
    ae_stamp = os.stat(os.path.join(again, "autoencoder.pt")).st_mtime_ns
    train.main(["--dataset", tiny_dataset, "--out", out, "--export", again, "--stage", "dynamics",
                "--ae-arch", "tiles", "--dynamics", "tiles", "--history", "2", "--hidden", "16",
                "--conv-blocks", "2", "--state-width", "32", "--dyn-epochs", "0", "--batch-size", "16",
                "--dyn-change-weight", "10", "--unroll", "2", "--cache-dir", os.path.join(tiny_tile_run, "cache"),
                "--init-dynamics", os.path.join(export, "dynamics.pt"), "--adjust-state", "1"])
    before, after = train.load_world(export), train.load_world(again)
    assert os.stat(os.path.join(again, "autoencoder.pt")).st_mtime_ns == ae_stamp
    for (k, v), w in zip(before.dynamics.state_dict().items(), after.dynamics.state_dict().values()):
        assert torch.equal(v, w), k
    assert before.dynamics.keep_logits == (0.0, 0.0)
    assert after.dynamics.keep_logits == (pytest.approx(np.log(11)), 0.0)


def test_the_one_step_table_scores_each_way_of_giving_the_next_state(tiny_tile_run, tiny_run, tiny_dataset, tmp_path):
    import evaluate
    export = os.path.join(tiny_tile_run, "export")
    out = str(tmp_path / "one_step")
    evaluate.main(["--one-step", "40", "--dataset", tiny_dataset, "--checkpoint", export, "--out", out,
                   "--cache-dir", os.path.join(tiny_tile_run, "cache")])
    rows = json.load(open(out + ".json"))["rows"][export]
    assert set(rows) == {"own next state", "own next state, adjusted (adjust_state 1)", "the real next state",
                         "told nothing changed", "state head: own next state",
                         "state head: own next state, adjusted (adjust_state 1)"}
    as_trained, adjusted = rows["state head: own next state"], rows["state head: own next state, adjusted (adjust_state 1)"]
    assert adjusted["stayed_bytes_right"] >= as_trained["stayed_bytes_right"]  # the adjustment only favours "stay"
    assert adjusted["changed_bytes_right"] <= as_trained["changed_bytes_right"]
    for label in ("own next state", "the real next state"):
        r = rows[label]
        assert r["steps"] == 40 and 0 <= r["frame_exact"] <= r["step_exact"] <= 1 and r["spurious_per_step"] >= 0
    assert rows["told nothing changed"]["steps"] <= 40
    assert "| told nothing changed" not in open(out + ".md").read()  # a table of its own, by steps
    with pytest.raises(SystemExit, match="keeps no state bytes"):
        evaluate.main(["--one-step", "5", "--dataset", tiny_dataset, "--checkpoint", os.path.join(tiny_run, "export"),
                       "--out", out])


def test_tile_checkpoint_errors(tiny_tile_run, tiny_run, tiny_dataset, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.symlink(os.path.join(tiny_tile_run, "export", "autoencoder.pt"), mixed / "autoencoder.pt")
    os.symlink(os.path.join(tiny_run, "export", "dynamics.pt"), mixed / "dynamics.pt")
    with pytest.raises(train.CheckpointError, match="another autoencoder"):
        train.load_world(str(mixed))
    with pytest.raises(ValueError, match="ae_arch tiles or vqvae goes with dynamics tiles or transformer"):
        train.Config(ae_arch="tiles", dynamics="conv")
    with pytest.raises(ValueError, match="tf_dim a multiple of tf_heads"):
        train.Config(ae_arch="tiles", dynamics="transformer", tf_dim=30, tf_heads=4)
    with pytest.raises(ValueError, match="0 <= state_min_change < 1"):
        train.Config(ae_arch="tiles", dynamics="tiles", state_min_change=1.5)
    with pytest.raises(ValueError, match="state's RAM addresses"):
        train.TileDynamics.from_config(train.Config(ae_arch="tiles", dynamics="tiles"))
    import main as play
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
    byte's weight where the tile head's convolutions reach that tile (within 3 tiles of it)."""
    torch.manual_seed(0)
    model = train.TileDynamics(codes=11, addresses=[0], history=1, width=16, blocks=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def sample(n):
        st = torch.randint(0, 10, (n, 1))
        tok = torch.zeros(n, 30, 32, dtype=torch.long)
        tok[:, 4, 7] = 1 + st[:, 0]
        return tok, st

    for _ in range(250):
        (tok, st), (nxt_tok, nxt_st) = sample(16), sample(16)
        loss, _ = model.loss({"tokens": tok[:, None], "state": st, "actions": torch.zeros(16, 1, 8),
                              "next_tokens": nxt_tok, "next_state": nxt_st}, change_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (tok, st), (nxt_tok, nxt_st) = sample(64), sample(64)
    with torch.no_grad():
        h, _ = model.trunk(tok[:, None], st, torch.zeros(64, 1, 8))
        drawn = model.tile_logits(h, tok[:, None], nxt_st).argmax(-1).view(64, 30, 32)
    assert (drawn[:, 4, 7] == nxt_tok[:, 4, 7]).float().mean() > 0.9
    row, col = divmod(int(model.byte_map_next.where[0].abs().argmax()), 32)
    assert abs(row - 4) <= 3 and abs(col - 7) <= 3


def test_the_model_path_names_no_game(capsys):
    """Issue #19: train.py and main.py hold no RAM address and no rule, and train.py imports nothing from collect.py;
    main.py --help offers no rule switch."""
    import re
    root = os.path.join(os.path.dirname(__file__), "..")
    # an integer index into an array named for the RAM (ram[64], cache.ram[:, 65], dream_ram[..., 3]); not row 0 of
    # a column (ram[0]) or a computed row (ram[r + 1])
    ram_index = re.compile(r"\b(?:\w*_)?ram\w*\[\s*(?:\.\.\.\s*,\s*|:\s*,\s*)?[1-9]\d*\s*[\],:]", re.I)
    for planted in ("x = ram[64]", "cache.ram[:, 65]", "dream_ram[..., 3]"):
        assert ram_index.search(planted), planted
    for name in ("train.py", "main.py"):
        src = open(os.path.join(root, name)).read()
        assert not re.search(r"0x[0-9A-Fa-f]+", src), name
        lines = [line for line in src.splitlines() if ram_index.search(line)]
        assert not lines, (name, lines[:3])
    assert not re.search(r"^\s*(from collect|import collect)", open(os.path.join(root, "train.py")).read(), re.M)
    import main as play
    with pytest.raises(SystemExit):
        play.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--priors" in text  # (the help was printed)
    for flag in ("--tile-support", "--piece-rule", "--gravity", "--phase-steps", "--byte-tiles", "--numbers",
                 "--state-transitions"):
        assert flag not in text, flag


def test_the_same_tile_world_trains_and_plays_on_an_atari_frame(tmp_path):
    """Issue #21: a new game costs no model code. Ms. Pac-Man's 210×160 frames (a 27×20 grid, padded with black) and
    128 bytes of RAM go through the code Tetris uses, and play gives back native 210×160 frames."""
    import collect
    import main
    data = str(tmp_path / "mspacman")
    collect.main(["--game", "mspacman", "--episodes", "2", "--max-steps", "40", "--workers", "1", "--out", data])
    cache = train.load_tiles(data, str(tmp_path / "cache"))
    assert cache.frame_hw == (210, 160) and cache.tile_ids.shape[1:] == (27, 20) and cache.ram.shape[1] == 128
    import datasets
    ds = datasets.load_from_disk(data)
    order = np.lexsort((np.asarray(ds["step"]), np.asarray(ds["episode_id"])))
    assert np.array_equal(cache.frames([5])[0], np.asarray(ds[int(order[5])]["observations"].convert("RGB")))
    out = str(tmp_path / "run")
    train.main(["--dataset", data, "--out", out, "--export", os.path.join(out, "export"), "--ae-arch", "tiles",
                "--dynamics", "tiles", "--history", "2", "--hidden", "16", "--conv-blocks", "2", "--state-width", "16",
                "--epochs", "1", "--dyn-samples-per-epoch", "32", "--batch-size", "16", "--tile-codes", "256",
                "--cache-dir", str(tmp_path / "cache"), "--spot-check", ""])
    world = train.World.load(os.path.join(out, "export"))
    assert world.dynamics.grid == (27, 20) and world.autoencoder.frame_hw == (210, 160)
    state = world.start()
    state, z = world.step(state, torch.zeros(1, 8), temperature=1.0)
    assert z.shape == (1, 27, 20) and world.show(z).shape == (210, 160, 3)
    result = main.main(["--game", "mspacman", "--checkpoint", os.path.join(out, "export"), "--headless",
                        "--frames", "3"])
    assert result["frames"] == 3
    # issue #23: the transformer family trains on the same tokenizer from the same code (27 rows: a padded patch)
    tf_out = str(tmp_path / "transformer")
    os.makedirs(tf_out)
    shutil.copy(os.path.join(out, "autoencoder.pt"), tf_out)
    train.main(["--dataset", data, "--out", tf_out, "--export", os.path.join(tf_out, "export"), "--stage", "dynamics",
                "--ae-arch", "tiles", "--dynamics", "transformer", "--history", "2", "--hidden", "16", "--tf-dim",
                "32", "--tf-layers", "1", "--state-width", "16", "--dyn-epochs", "1", "--dyn-samples-per-epoch", "32",
                "--batch-size", "16", "--tile-codes", "256", "--cache-dir", str(tmp_path / "cache"), "--spot-check", ""])
    world = train.World.load(os.path.join(tf_out, "export"))
    assert isinstance(world.dynamics, train.TileTransformer) and world.dynamics.padded == (28, 20)
    state, z = world.step(world.start(), torch.zeros(1, 8), temperature=0.0)
    assert z.shape == (1, 27, 20) and world.show(z).shape == (210, 160, 3)


def test_the_transformer_trunk_reads_the_whole_frame_in_one_layer():
    """One attention layer carries a change at one corner of the frame to the opposite corner (its LayerNorms are per
    token, so nothing else could carry it there); a tile outside the changed token's patch moves too."""
    torch.manual_seed(0)
    model = train.TileTransformer(codes=8, addresses=[0], history=1, width=8, dim=16, layers=1, heads=2).eval()
    tokens = torch.zeros(1, 1, 30, 32, dtype=torch.long)
    moved = tokens.clone()
    moved[0, 0, 0, 0] = 5
    state, actions = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 8)
    with torch.no_grad():
        diff = (model.features(moved, state, actions)[0] - model.features(tokens, state, actions)[0]).abs()[0]
    assert diff[:, 29, 31].max() > 1e-4 and diff[:, 2:, 2:].amax(0).min() > 0
    model.encoder.layers[0].self_attn.out_proj.weight.data.zero_()  # attention cut: only the changed patch moves
    with torch.no_grad():
        diff = (model.features(moved, state, actions)[0] - model.features(tokens, state, actions)[0]).abs()[0]
    assert diff[:, :2, :2].max() > 1e-4 and diff[:, 2:, 2:].max() == 0
