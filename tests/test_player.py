"""Issue #22, the player: the game menu's discovery and keys, the real game in lockstep beside the dream (exactly what
collect.py records for the same inputs), re-sync, the controls' effects on the session, --record and the benchmark."""
import os

import datasets
import numpy as np
import pytest
import torch

import collect
import main
from train import load_world

GAMES3 = ["tetris", "smb", "mspacman"]


@pytest.fixture(scope="module")
def tetris_env():
    torch.manual_seed(0)
    return main.NeuralGame(load_world("checkpoints/tetris"), temperature=0.0)


def test_the_menu_finds_the_games_that_ship_a_model(tmp_path):
    assert main.shipped_games() == GAMES3  # what the repository ships, in the registry's order
    for game, files in (("smb", ["autoencoder.pt", "dynamics.pt"]), ("tetris", ["autoencoder.pt"]),
                        ("not_a_game", ["autoencoder.pt", "dynamics.pt"])):
        os.makedirs(tmp_path / game)
        for f in files:
            (tmp_path / game / f).write_bytes(b"")
    assert main.shipped_games(str(tmp_path)) == ["smb"]  # tetris lacks its dynamics; not_a_game is not registered
    assert main.shipped_games(str(tmp_path / "nothing")) == []


def test_the_menu_picks_a_game_with_the_keys(tmp_path):
    window = main.Game(headless=True, fps=0, shots=str(tmp_path / "shots"))
    pg = window.pg
    thumbs = {g: np.full((240, 256, 3), 40 * i, np.uint8) for i, g in enumerate(GAMES3)}
    try:
        assert window.menu(GAMES3, thumbs, keys=[pg.K_RETURN]) == "tetris"
        assert window.menu(GAMES3, thumbs, keys=[pg.K_RIGHT, pg.K_RIGHT, pg.K_RETURN]) == "mspacman"
        assert window.menu(GAMES3, thumbs, keys=[pg.K_LEFT, pg.K_RETURN]) == "mspacman"  # wraps around
        assert window.menu(GAMES3, thumbs, keys=[pg.K_2]) == "smb"
        assert window.menu(GAMES3, thumbs, keys=[pg.K_ESCAPE]) is None
        assert window.menu(GAMES3, thumbs, keys=[pg.K_s]) is None and len(os.listdir(window.shots)) == 1
        assert window.screen.get_width() >= 3 * 256  # a card per game
    finally:
        window.close()


@pytest.mark.parametrize("game", GAMES3)
def test_the_real_side_is_what_collect_py_records_for_the_same_buttons(game, tmp_path):
    """Lockstep is exact: the real game beside the dream, started by --seed and driven by the recorded buttons, gives
    byte for byte the frames that collect.py recorded (its PNGs are lossless) and the RAM."""
    out = str(tmp_path / game)
    argv = ["--game", game, "--episodes", "2", "--max-steps", "30", "--seed", "7", "--power-on-frac", "0",
            "--policy", "random", "--workers", "1", "--out", out]
    if game == "tetris":  # RealGame starts Tetris at level 0, as into_play does
        argv += ["--min-level", "0", "--max-level", "0"]
    collect.main(argv)
    args = collect.parse_args(argv)
    args.frame_skip = args.frame_skip or collect.GAMES[game].frame_skip
    specs = collect.episode_specs(args, collect.find_rom(game))
    ds = datasets.load_from_disk(out)
    for spec in specs:
        rows = ds.filter(lambda e: e == spec.episode_id, input_columns="episode_id")
        frames = [np.asarray(o.convert("RGB")) for o in rows["observations"]]
        real = main.RealGame(game, seed=spec.seed, history=4)
        assert np.array_equal(real.reset(), frames[0])
        assert real.context()[2] == bytes(rows["ram"][0])
        for t, action in enumerate(rows["actions"][:-1]):
            assert np.array_equal(real.step(np.array(action)), frames[t + 1]), f"{game} episode {spec.episode_id} step {t + 1}"
        assert real.context()[2] == bytes(rows["ram"][-1])


def test_lockstep_play_is_deterministic(tetris_env):
    """At temperature 0 the dream beside the real game replays the same frames whatever torch's seed; at 1 the
    seed changes the dream (so the first claim is not the seed's doing)."""
    actions = (np.random.default_rng(1).random((40, 8)) < 0.2).astype(np.uint8)

    def run(seed: int):
        torch.manual_seed(seed)
        s = main.Session(tetris_env, "tetris", real=True, seed=3)
        out = []
        for a in actions:
            s.advance(a)
            out.append((s.dream.copy(), s.real.frame.copy(), s.meter.l1))
        return out

    assert tetris_env.temperature == 0.0
    a, b = run(0), run(1)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))
    assert not np.array_equal(a[0][1], a[-1][1])  # the real game moved
    try:
        tetris_env.temperature = 1.0
        c, d = run(0), run(1)
    finally:
        tetris_env.temperature = 0.0
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(c, d))


def test_resync_puts_the_real_frames_and_ram_into_the_dream(tetris_env):
    s = main.Session(tetris_env, "tetris", real=True, seed=0)
    assert np.array_equal(s.dream, s.real.frame)  # the same start: Tetris's tokenizer draws its frames exactly
    rng = np.random.default_rng(0)
    for _ in range(120):  # no START: a paused game's PAUSE shows in a colour the tokenizer never saw
        s.advance((rng.random(8) < 0.3).astype(np.uint8) * np.array([1, 1, 0, 0, 1, 1, 1, 1], np.uint8))
    assert s.meter.steps == 120 and s.meter.l1 > 0  # the dream has drifted from the real game
    s.control("sync")
    assert np.array_equal(s.dream, s.real.frame) and s.meter.steps == 0
    tokens, state, actions = tetris_env.state
    frames, real_actions, ram = s.real.context()
    want = tetris_env.world.encode_context(frames, real_actions, ram)
    assert torch.equal(tokens, want[0]) and torch.equal(state, want[1]) and torch.equal(actions, want[2])
    assert state[0].tolist() == [ram[a] for a in tetris_env.world.dynamics.addresses]  # the real state bytes
    s.advance(np.zeros(8, np.uint8))
    assert s.meter.l1 < 0.02  # one step after the sync the dream is close again


def test_the_controls_change_the_session(tetris_env):
    s = main.Session(tetris_env, "tetris")
    start = s.dream.copy()
    noop = np.zeros(8, np.uint8)
    assert s.advance(noop) and s.t == 1
    assert s.control("pause") is None and s.paused
    assert not s.advance(noop) and s.t == 1  # paused: nothing plays
    s.control("step")
    assert s.advance(noop) and s.t == 2 and not s.advance(noop) and s.t == 2  # one step, then paused again
    s.control("pause")
    assert not s.paused and s.advance(noop) and s.t == 3
    s.control("step")  # not paused: no pending step
    assert not s.pending_step
    tetris_env.temperature = 1.95
    s.control("warmer")
    assert tetris_env.temperature == 2.0  # clipped at 2
    for _ in range(22):
        s.control("colder")
    assert tetris_env.temperature == 0.0
    s.control("warmer")
    assert tetris_env.temperature == 0.1
    tetris_env.temperature = 0.0
    s.control("help")
    assert s.help and "help" in main.HELP.lower()
    s.control("sync")  # no real game shown: a message, nothing else
    assert "Tab" in s.message and s.real is None
    s.control("real")
    assert s.real is not None and s.t == 0 and np.array_equal(s.dream, s.real.frame)
    assert len(s.frames) == 2
    s.control("real")
    assert s.real is None and s.t == 0 and np.array_equal(s.dream, start)  # the checkpoint's start again
    for name in ("screenshot", "menu", "quit"):
        assert s.control(name) == name  # the window's business


def test_the_window_keys_screenshot_menu_and_a_side_by_side_frame(tetris_env, tmp_path):
    window = main.Game(headless=True, fps=0, shots=str(tmp_path / "shots"))
    pg = window.pg
    try:
        s = main.Session(tetris_env, "tetris", real=True, seed=0)
        for key in (pg.K_h, pg.K_s):
            pg.event.post(pg.event.Event(pg.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
        result = window.run(s, 3, actions=lambda t: np.zeros(8, np.uint8))
        assert result["next"] == "quit" and result["frames"] == 3 and s.help
        shots = os.listdir(tmp_path / "shots")
        assert len(shots) == 1 and "wrote" in s.message
        from PIL import Image
        w, h = Image.open(tmp_path / "shots" / shots[0]).size
        assert w == 2 * 512 and h > 480  # the dream and the real game side by side, the bar under them
        pg.event.post(pg.event.Event(pg.KEYDOWN, key=pg.K_m, mod=0, unicode="", scancode=0))
        assert window.run(s, 50)["next"] == "menu"
    finally:
        window.close()


@pytest.mark.parametrize("ext", ["gif", "mp4"])
def test_real_play_records_both_sides(ext, tmp_path, capsys):
    path = str(tmp_path / f"play.{ext}")
    result = main.main(["--game", "tetris", "--real", "--headless", "--frames", "12", "--record", path,
                        "--temperature", "0"])
    assert result["frames"] == 12 and os.path.getsize(path) > 1000
    # the meter at steps 1 and 10; the dream starts on the real frame, and its likeliest first step (temperature 0;
    # at 1, a sampled byte may differ) is the real one, exactly
    printed = capsys.readouterr().out
    assert "@1: 0.0000 / 0.000   @10: " in printed and "@30" not in printed
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    if ext == "gif":
        from PIL import Image
        assert Image.open(path).size[0] == 512  # two 512-wide panels at half size


def test_real_without_a_rom_says_what_to_install(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["--game", "tetris", "--real", "--headless", "--frames", "2", "--rom", str(tmp_path / "none.nes")])
    assert "none.nes" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        main.main(["--headless", "--frames", "2", "--record", str(tmp_path / "x.avi")])
    assert ".gif or .mp4" in str(e.value)


def test_the_benchmark_measures_idle_and_one_core_busy(monkeypatch):
    """The busy process runs (it has used CPU time when the benchmark stops it) and is stopped."""
    busy_ticks, procs, real_busy = [], [], main.busy_core

    def spied_busy():
        proc = real_busy()
        real_kill = proc.kill

        def kill():  # its CPU time so far: utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            busy_ticks.append(int(fields[11]) + int(fields[12]))
            real_kill()
        proc.kill = kill
        procs.append(proc)
        return proc
    monkeypatch.setattr(main, "busy_core", spied_busy)
    result = main.main(["--game", "tetris", "--benchmark", "--frames", "20", "--threads", "1"])
    assert len(procs) == 1 and procs[0].poll() is not None  # started once, and stopped
    assert busy_ticks[0] >= 0.25 * os.sysconf("SC_CLK_TCK")  # it spun for at least a quarter of a second
    for key in ("model_only_fps", "full_loop_fps", "one_core_busy_model_only_fps", "one_core_busy_full_loop_fps"):
        assert result[key] > 0
    assert result["torch_threads"] == result["one_core_busy_torch_threads"] == 1 == torch.get_num_threads()


def test_the_thread_governor_keeps_the_faster_count_and_tries_again(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert main.ThreadGovernor.most_threads() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert main.ThreadGovernor.most_threads() == 4
    before = torch.get_num_threads()
    try:
        g = main.ThreadGovernor(2, window=4, every=10, warmup=1)
        speed = {2: 0.05, 1: 0.02}  # another process on one of two cores: two threads collapse
        seen = []
        for _ in range(5 + 2):  # 1 warm-up + 4 frames with 1 thread; 2 threads give up at their first measured step
            seen.append(g.threads)
            g(speed[g.threads])
        assert seen == [1] * 5 + [2] * 2 and g.threads == 1 == torch.get_num_threads()
        assert g.median == {1: 0.02, 2: 0.05} and not g.todo
        for _ in range(9):
            g(speed[g.threads])
        assert g.threads == 1 and not g.todo
        speed = {2: 0.01, 1: 0.02}  # the other process ended
        for _ in range(1 + 5 + 5):  # the 10th frame starts a new round: 1 thread again, then 2 (faster: no give-up)
            g(speed[g.threads])
        assert g.threads == 2 == torch.get_num_threads() and g.median == {1: 0.02, 2: 0.01}
        speed = {2: 0.08, 1: 0.02}  # busy again: the next round's first trial (2 threads) gives up
        for _ in range(10 + 2):
            g(speed[g.threads])
        assert g.threads == 1 and g.todo == [1]  # 2 threads gave up after one measured step
        for _ in range(5):
            g(speed[g.threads])
        assert g.threads == 1 and g.median == {1: 0.02, 2: 0.08}
        one = main.ThreadGovernor(1)
        one(1.0)
        assert one.threads == 1 and one.options == [1]
    finally:
        torch.set_num_threads(before)
