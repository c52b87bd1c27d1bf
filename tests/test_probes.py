"""collect.TetrisProbe reads a game off its RGB frames alone; here it is checked against the real game's RAM.

Two short real episodes are recorded once with collect.py's own functions: the placement bot from level 7 (a dark
palette; it clears lines) and random buttons from level 9 (they top out in about 20 s)."""
import json
import os

import numpy as np
import pytest

import collect

EPISODES = {  # name -> collect.py arguments
    "bot": ["--policy", "bot", "--max-steps", "600", "--min-level", "7", "--max-level", "7"],
    "random": ["--policy", "random", "--max-steps", "900", "--min-level", "9", "--max-level", "9",
               "--tail-steps", "45"],  # the curtain falls 33-35 steps after the game over
}


def frames_of(path: str):
    import datasets
    ds = datasets.load_from_disk(path)
    return (np.asarray(im.convert("RGB")) for im in ds["observations"]), list(ds["ram"]), np.array(ds["episode_id"])


def probe_with_ram(frames, rams) -> dict:
    """Feed the probe frame by frame, keeping what it read each frame, beside the RAM."""
    probe, occ, board = collect.TetrisProbe(), [], []
    for f in frames:
        probe(f)
        occ.append(probe.occ.copy())
        board.append(probe.board.copy())
    ram = np.frombuffer(b"".join(rams), dtype=np.uint8).reshape(len(rams), -1)
    return {"probe": probe, "occ": np.array(occ), "board": np.array(board), "ram": ram}


@pytest.fixture(scope="session")
def episodes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("probe")
    out = {}
    for name, args in EPISODES.items():
        path = str(root / name)
        collect.main(["--episodes", "1", "--seed", "0", "--power-on-frac", "0", "--workers", "1", "--out", path] + args)
        frames, rams, _ = frames_of(path)
        out[name] = probe_with_ram(frames, rams) | {"path": path}
    return out


def ram_screen(ram: np.ndarray) -> np.ndarray:
    """What the well shows according to the RAM: the locked board plus the falling piece where it is."""
    board = collect.board_from_ram(ram).copy()
    if ram[collect.PLAY_STATE] == collect.FALLING and ram[collect.ORIENTATION] in collect.ORIENTATIONS:
        for dr, dc in collect.ORIENTATIONS[int(ram[collect.ORIENTATION])]:
            y, x = int(ram[collect.PIECE_Y]) + dr, int(ram[collect.PIECE_X]) + dc
            if 0 <= y < 20 and 0 <= x < 10:
                board[y, x] = True
    return board


def steady_falling(ram: np.ndarray, end: int) -> np.ndarray:
    """Frames (before `end`) whose neighbours also show a falling piece: no lock, clear or spawn under way (the screen
    lags the RAM by up to one frame at those)."""
    falling = (ram[:, collect.GAME_MODE] == collect.PLAYING) & (ram[:, collect.PLAY_STATE] == collect.FALLING)
    steady = np.zeros(len(ram), bool)
    steady[1:-1] = falling[:-2] & falling[1:-1] & falling[2:]
    steady[end:] = False
    return steady


@pytest.mark.parametrize("name", sorted(EPISODES))
def test_board_read_off_frames_matches_the_ram(episodes, name):
    e = episodes[name]
    ram, probe = e["ram"], e["probe"]
    end = probe.froze_at() or len(ram)  # at a top-out the last piece spawns hidden behind the stack
    steady = steady_falling(ram, end)
    assert steady.sum() > 200
    ram_board = np.array([collect.board_from_ram(r) for r in ram])
    # the stack (occupancy minus the piece the probe follows) is RAM 0x400..: on every steady frame here, >= 98% asked
    board_ok = (e["board"] == ram_board).all(axis=(1, 2))[steady].mean()
    assert board_ok >= 0.98, board_ok
    # the occupancy is the RAM board plus the falling piece; the screen lags the RAM by a frame on a few steps
    shown_ok = (e["occ"] == np.array([ram_screen(r) for r in ram])).all(axis=(1, 2))[steady].mean()
    assert shown_ok >= 0.9, shown_ok


def test_locks_rows_and_top_out_match_the_ram(episodes):
    bot, rand = (episodes[n]["probe"].summary() for n in ("bot", "random"))
    bot_ram, rand_ram = (collect.tetris_ram_reference(list(episodes[n]["ram"])) for n in ("bot", "random"))
    assert bot_ram["rows_cleared"] >= 2 and bot_ram["top_out_s"] is None  # the bot clears lines, never tops out
    assert rand_ram["top_out_s"] is not None  # random buttons top out
    for got, want in ((bot, bot_ram), (rand, rand_ram)):
        assert abs(got["pieces_locked"] - want["pieces_locked"]) <= 1, (got, want)
        assert got["rows_cleared"] == want["rows_cleared"], (got, want)
    assert bot["top_out_s"] is None
    assert rand["top_out_s"] == pytest.approx(rand_ram["top_out_s"], abs=0.2)
    assert rand["curtain_s"] > rand["top_out_s"]
    assert 0 < bot["longest_still_s"] < 1.5 and 0 < rand["longest_still_s"] < 1.5


def test_palettes_of_other_levels(tiny_dataset):
    """The tiny dataset's 4 episodes start at other levels (other palettes): the occupancy is the RAM's well."""
    frames, rams, episode = frames_of(tiny_dataset)
    e = probe_with_ram(frames, rams)
    levels = set(e["ram"][:, collect.LEVEL].tolist())
    steady = steady_falling(e["ram"], len(rams)) & np.r_[episode[1:] == episode[:-1], False]
    shown_ok = (e["occ"] == np.array([ram_screen(r) for r in e["ram"]])).all(axis=(1, 2))[steady].mean()
    assert len(levels) >= 3 and shown_ok >= 0.9, (levels, shown_ok)


def test_a_frozen_or_garbage_sequence(episodes):
    frames, _, _ = frames_of(episodes["bot"]["path"])
    frames = [f for _, f in zip(range(200), frames)]
    frozen = frames[:100] + [frames[100]] * 90 + frames[101:]  # 89 repeats: about 3 s without a change
    assert collect.TetrisProbe.run(frozen)["longest_still_s"] == pytest.approx(89 / 30, abs=0.05)
    assert collect.TetrisProbe.run(frames)["longest_still_s"] < 1
    assert collect.TetrisProbe.run(frozen)["frozen_from_s"] is None  # it moved again
    ending = frames[:100] + [frames[100]] * 90  # frozen from frame 100 to the end, without a curtain
    s = collect.TetrisProbe.run(ending)
    assert s["frozen_from_s"] == pytest.approx(100 / 30, abs=0.05) and s["top_out_s"] is None
    assert collect.TetrisProbe.run(frames[:100] + [frames[100]] * 50)["frozen_from_s"] is None  # under 2 s
    rng = np.random.default_rng(0)
    for junk in (np.zeros((40, 240, 256, 3), np.uint8), rng.integers(0, 256, (40, 240, 256, 3), dtype=np.uint8),
                 (rng.random((40, 240, 256, 3)) < 0.3).astype(np.uint8) * 255, rng.random((40, 240, 256, 3)) * 300):
        s = collect.TetrisProbe.run(junk)
        assert s["pieces_locked"] == 0 and s["rows_cleared"] == 0 and s["top_out_s"] is None, s
    assert collect.TetrisProbe.run(np.zeros((40, 240, 256, 3), np.uint8))["longest_still_s"] == pytest.approx(39 / 30)
    with pytest.raises(ValueError, match="240, 256, 3"):
        collect.TetrisProbe()(np.zeros((80, 80), np.uint8))
    assert collect.PROBES["tetris"] is collect.TetrisProbe


def test_probe_a_dataset_from_the_command_line(episodes, capsys):
    results = collect.main(["--probe", episodes["random"]["path"]])
    assert len(results) == 1 and results[0]["probe"] == episodes["random"]["probe"].summary()
    assert "pieces_locked (frames / RAM)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such dataset"):
        collect.main(["--probe", os.path.join(episodes["random"]["path"], "nothing")])


def test_play_stats_carry_the_probe(tmp_path):
    import main
    ckpt = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tetris")
    prefix = str(tmp_path / "play")
    main.main(["--checkpoint", ckpt, "--headless", "--frames", "60", "--stats", prefix, "--reference", ""])
    with open(prefix + "_stats.json") as f:
        probe = json.load(f)["probe"]
    assert {"pieces_locked", "rows_cleared", "top_out_s", "longest_still_s", "real_seconds_share"} <= set(probe)
    assert probe["frames"] == 60 and probe["real_seconds_share"] is None  # no reference dataset: no realism score
    assert probe["probe_ms_per_frame"] > 0  # reported; how fast is a benchmark's question, not a test's
    gray = main.ShownProbe()  # an 80x80 grayscale model's frames: no probe, and why
    gray(np.zeros((80, 80), np.uint8))
    assert gray.summary(0.5) is None and "80x80 grayscale" in gray.reason
    rgb = main.ShownProbe()
    rgb(np.zeros((240, 256, 3), np.uint8))
    assert rgb.summary(0.5)["real_seconds_share"] == 0.5
