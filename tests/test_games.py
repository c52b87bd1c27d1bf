"""collect.py's other games: Super Mario Bros. (NES, cynes) and Ms. Pac-Man (Atari 2600, ale-py), through GAMES.

Every episode here is short and recorded with one worker (unless the test is about workers), so the file runs in well
under a minute on a 2-core box."""
import os

import datasets
import numpy as np
import pytest

import collect
from conftest import ROOT

GAMES = ("smb", "mspacman")
SHAPES = {"smb": ((240, 256, 3), 2048), "mspacman": ((210, 160, 3), 128)}
TINY = ["--episodes", "2", "--max-steps", "30", "--seed", "11", "--power-on-frac", "0"]


def record(game: str, out, *extra: str) -> datasets.Dataset:
    collect.main(["--game", game, *TINY, "--workers", "1", "--out", str(out), *extra])
    return datasets.load_from_disk(str(out))


def raw(ds: datasets.Dataset) -> dict:
    """Every column as stored: PNG bytes, action lists, RAM bytes."""
    ds = ds.cast_column("observations", datasets.Image(decode=False))
    return {"png": [o["bytes"] for o in ds["observations"]], "actions": list(ds["actions"]), "ram": list(ds["ram"]),
            "ids": list(ds["episode_id"]), "steps": list(ds["step"])}


def play(game: str, policy: str, steps: int, seed: int = 0, tail: int = 0) -> dict:
    rom = collect.find_rom(game)
    cols = collect.run_episode(collect.EpisodeSpec(0, rom, policy, False, 0, steps, collect.GAMES[game].frame_skip,
                                                   tail, seed, game), encode=False)
    return cols | {"rows": collect._ram_rows(cols["ram"])}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("games")
    for game in GAMES:
        record(game, root / game)
    return {game: str(root / game) for game in GAMES}


@pytest.fixture(scope="module")
def smb_runs() -> dict:
    return {"runner": play("smb", "runner", 250), "random": play("smb", "random", 250)}


@pytest.fixture(scope="module")
def mspacman_runs() -> dict:
    return {"bot": play("mspacman", "bot", 400, seed=1), "random": play("mspacman", "random", 400, seed=1)}


class LastLife(collect.NesEmulator):
    """SMB with its lives counter set to 0 once play begins: the first death is the game over."""

    def step(self, action, frames=1):
        if self.nes[collect.SMB_MODE] == 1 and self.nes[collect.SMB_LIVES] == 2:
            self.nes[collect.SMB_LIVES] = 0
        return super().step(action, frames)


@pytest.fixture(scope="module")
def smb_game_over():
    """Mario walks right into the first Goomba on his last life (about 8 s of play), then 45 steps of tail."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(collect.EMULATORS, "nes", LastLife)
        mp.setitem(collect.GAMES["smb"].policies, "walker", lambda rng, fs: (lambda ram: collect.press(collect.RIGHT)))
        return play("smb", "walker", 600, tail=45)


@pytest.fixture(scope="module")
def mspacman_game_over():
    """Random joystick until the game is over (three lives take about 700 steps), then 30 steps of tail."""
    return play("mspacman", "random", 3000, seed=1, tail=30)


# ----------------------------------------------------------------------------- the registry and the buttons
def test_registry_and_command_line():
    assert {"tetris", "smb", "mspacman"} <= set(collect.GAMES)
    assert collect.PROBES == {n: g.probe for n, g in collect.GAMES.items()}
    for name, game in collect.GAMES.items():
        assert abs(sum(game.mix.values()) - 1) < 1e-9 and set(game.mix) <= set(game.policies)
        args = collect.parse_args(["--game", name])
        assert args.frame_skip == game.frame_skip and args.out == f"data/{name}"
    assert collect.GAMES["mspacman"].frame_skip == 3 and collect.GAMES["smb"].frame_skip == 2


def test_buttons_to_ale_actions():
    p, ale = collect.press, collect.buttons_to_ale
    A, B, UP, DOWN, LEFT, RIGHT = collect.A, collect.B, collect.UP, collect.DOWN, collect.LEFT, collect.RIGHT
    assert ale(collect.NOOP) == 0 and ale(p(A)) == 1 and ale(p(B)) == 1 and ale(p(A, B)) == 1  # FIRE
    assert [ale(p(d)) for d in (UP, RIGHT, LEFT, DOWN)] == [2, 3, 4, 5]
    assert [ale(p(UP, RIGHT)), ale(p(UP, LEFT)), ale(p(DOWN, RIGHT)), ale(p(DOWN, LEFT))] == [6, 7, 8, 9]  # diagonals
    assert ale(p(UP, A)) == 10 and ale(p(DOWN, LEFT, B)) == 17  # a direction with FIRE: +8
    assert ale(p(LEFT, RIGHT)) == 0 and ale(p(UP, DOWN)) == 0 and ale(p(UP, DOWN, LEFT, RIGHT, A)) == 1  # cancel
    assert ale(p(LEFT, RIGHT, UP)) == 2 and ale(p(UP, DOWN, RIGHT)) == 3
    assert ale(p(collect.START)) == 0 and ale(p(collect.SELECT)) == 0  # not on a joystick
    for a in range(18):  # the table back is the inverse, with FIRE as A
        assert ale(collect.ALE_TO_BUTTONS[a]) == a
    for mask in range(256):
        assert collect.MASK_TO_ALE[mask] == ale(collect.MASK_TO_BUTTONS[mask])


def test_the_joystick_moves_ms_pacman():
    """The 8 buttons reach the game: RIGHT moves her right (without input she heads left), and a chord with opposite
    directions plays exactly as the same chord without them."""
    P, L, R, U, D = collect.press, collect.LEFT, collect.RIGHT, collect.UP, collect.DOWN
    after = {}
    for name, action in (("right", P(R)), ("noop", collect.NOOP), ("left+right", P(L, R)), ("up+down+right", P(U, D, R))):
        emu = collect.make_emulator("mspacman")
        emu.step(collect.NOOP, 280)  # the start music
        x0 = emu.ram()[collect.MSP_PLAYER_X]
        emu.step(action, 20)
        after[name] = (emu.ram()[collect.MSP_PLAYER_X] - x0, emu.ram())
    assert after["right"][0] > 5 and after["noop"][0] < -5, after
    assert after["left+right"] == after["noop"] and after["up+down+right"] == after["right"]


@pytest.mark.parametrize("game", GAMES)
def test_emulator_interface(game):
    emu = collect.make_emulator(game)
    shape, ram_size = SHAPES[game]
    frame = emu.step(collect.NOOP, 30)
    assert frame.shape == shape == collect.GAMES[game].frame_shape and frame.dtype == np.uint8
    assert len(emu.ram()) == ram_size == collect.GAMES[game].ram_size
    state = emu.save()
    after = [emu.step(collect.press(collect.START if game == "smb" else collect.UP), 20) for _ in range(3)]
    ram = emu.ram()
    emu.load(state)
    again = [emu.step(collect.press(collect.START if game == "smb" else collect.UP), 20) for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(after, again)) and emu.ram() == ram
    kept = again[-1].copy()  # each frame is a copy, not a view that the next step overwrites
    assert not np.array_equal(emu.step(collect.NOOP, 600), kept) and np.array_equal(again[-1], kept)  # (SMB: demo)


@pytest.mark.parametrize("game", ("tetris", *GAMES))
def test_into_play_on_its_own(game):
    """make_emulator + into_play: the real game in play, as an episode that skips the menus starts."""
    emu = collect.make_emulator(game)
    frame = collect.into_play(emu, game, seed=3)
    assert collect.GAMES[game].in_play(emu.ram()) and frame.std() > 10


# ----------------------------------------------------------------------------- recording
@pytest.mark.parametrize("game", GAMES)
def test_records_the_schema(tiny, game):
    ds = datasets.load_from_disk(tiny[game])
    shape, ram_size = SHAPES[game]
    assert set(ds.column_names) == {"episode_id", "step", "observations", "actions", "ram"}
    assert isinstance(ds.features["observations"], datasets.Image)
    assert len(ds) == 60 and sorted(set(ds["episode_id"])) == [0, 1]
    for row in (ds[0], ds[59]):
        frame = np.asarray(row["observations"])
        assert frame.shape == shape and frame.dtype == np.uint8 and frame.std() > 10
        assert len(row["ram"]) == ram_size
        assert len(row["actions"]) == 8 and set(row["actions"]) <= {0, 1}
    first = ds.filter(lambda s: s == 0, input_columns="step")
    assert all(collect.GAMES[game].in_play(r) for r in first["ram"])  # --power-on-frac 0: from play on
    assert list(ds["step"]) == list(range(30)) * 2


def test_actions_are_in_a_b_select_start_up_down_left_right_order(smb_runs, tiny):
    """The runner holds B (index 1) and RIGHT (index 7) and taps A (index 0), and Mario goes right."""
    actions = np.array(smb_runs["runner"]["actions"])
    assert actions[:, 7].mean() > 0.9 and actions[:, 1].mean() > 0.9  # (LEFT alone brakes short of a gap, rarely)
    assert actions[:, 6].mean() < 0.05 and not (actions[:, 6] & actions[:, 7]).any()
    assert 0.05 < actions[:, 0].mean() < 0.7 and actions[:, 3].sum() == 0  # jumps, never START
    ds = datasets.load_from_disk(tiny["mspacman"])  # Ms. Pac-Man's players press one direction at a time
    acts = np.array(ds["actions"])
    assert (acts[:, 4:].sum(1) <= 1).all() and acts[:, 4:].any() and not acts[:, 2:4].any()


@pytest.mark.parametrize("game", GAMES)
def test_deterministic_whatever_the_workers(tiny, tmp_path, game):
    two = record(game, tmp_path / "two", "--workers", "2")  # (record's own --workers 1 comes first; this wins)
    assert raw(two) == raw(datasets.load_from_disk(tiny[game]))


@pytest.mark.parametrize("game", GAMES)
def test_interrupted_run_resumes(tiny, tmp_path, monkeypatch, game):
    out = str(tmp_path / "resume")
    real_run, calls = collect.run_episode, []

    def crash_on_second(spec, encode=True):
        calls.append(spec.episode_id)
        if spec.episode_id == 1:
            raise KeyboardInterrupt
        return real_run(spec, encode)

    monkeypatch.setattr(collect, "run_episode", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        record(game, out)
    assert not os.path.exists(out) and os.path.isdir(os.path.join(out + ".parts", "episode_000000"))
    calls.clear()
    monkeypatch.setattr(collect, "run_episode", lambda spec, encode=True: calls.append(spec.episode_id)
                        or real_run(spec, encode))
    resumed = record(game, out)
    assert calls == [1] and not os.path.exists(out + ".parts")
    assert raw(resumed) == raw(datasets.load_from_disk(tiny[game]))  # the same arguments: the same bytes


# ----------------------------------------------------------------------------- the players
def level_x(rows: np.ndarray) -> np.ndarray:
    return rows[:, collect.SMB_PAGE] * 256 + rows[:, collect.SMB_X]


def test_smb_runner_gets_well_into_the_level(smb_runs):
    """In 250 steps (8 s of play) the runner is past the fourth pipe (x 1000+; here it reached 1300-1600 by step 300
    over 6 seeds); random buttons stay near the start (x < 600)."""
    runner, rand = (level_x(smb_runs[p]["rows"]) for p in ("runner", "random"))
    assert runner.max() >= 1000 and rand.max() < 600, (runner.max(), rand.max())
    assert (smb_runs["runner"]["rows"][:, collect.SMB_LIVES] == 2).all()  # and did not die


def test_mspacman_bot_eats_more_than_random(mspacman_runs):
    """In 400 steps (20 s) the bot ate 55-75 pellets over seeds, random joystick stretches 20-40."""
    bot, rand = (collect.mspacman_ram_reference(mspacman_runs[p]["ram"])["pellets_eaten"] for p in ("bot", "random"))
    assert bot >= 50 and bot >= 1.5 * rand, (bot, rand)


def test_smb_game_over_ends_the_episode(smb_game_over):
    rows = smb_game_over["rows"]
    over = [t for t, r in enumerate(smb_game_over["ram"]) if collect.smb_game_over(r)]
    assert over and len(rows) == over[0] + 46 < 600  # the game over, then 45 steps of tail
    assert collect.SmbProbe.shows_game_over(smb_game_over["observations"][-1])  # the last rows show GAME OVER
    assert not np.array(smb_game_over["actions"])[over[0]:].any()  # the tail holds no buttons


def test_mspacman_game_over_ends_the_episode(mspacman_game_over):
    ram = mspacman_game_over["ram"]
    over = [t for t, r in enumerate(ram) if collect.mspacman_game_over(r)]
    assert over and len(ram) == over[0] + 31 < 3000
    frames = mspacman_game_over["observations"]
    assert all(np.array_equal(frames[-1], f) for f in frames[over[0] + 1:])  # the frozen last screen


# ----------------------------------------------------------------------------- probes: frames vs RAM
def test_smb_probe_scroll_matches_the_ram(smb_runs):
    """The frame-read scroll of a running episode: its total within 2% of the RAM's, and per step within 1 pixel on
    at least 95% of steps (the screen shows a scroll update a frame early or late at times)."""
    for policy in ("runner", "random"):
        run = smb_runs[policy]
        probe = collect.SmbProbe(30)
        for f in run["observations"]:
            probe(f)
        ram_scroll = collect.smb_ram_scroll(run["rows"])
        ref = collect.smb_ram_reference(run["ram"])
        got = probe.summary()
        assert abs(got["scroll_px"] - ref["scroll_px"]) <= max(8, 0.02 * ref["scroll_px"]), (got, ref)
        assert np.mean(np.abs(np.array(probe.shifts) - ram_scroll) <= 1) >= 0.95
        assert got["black_screens"] == ref["black_screens"] == 0 and got["game_over_s"] is None
    assert ref["scroll_px"] < 600 < collect.smb_ram_reference(smb_runs["runner"]["ram"])["scroll_px"]


def test_smb_probe_sees_the_black_screens_and_the_game_over(smb_game_over):
    probe = collect.SmbProbe.run(smb_game_over["observations"])
    ref = collect.smb_ram_reference(smb_game_over["ram"])
    assert probe["black_screens"] == ref["black_screens"] == 1  # the GAME OVER screen
    assert ref["game_over_s"] <= probe["game_over_s"] <= ref["game_over_s"] + 1.5, (probe, ref)
    assert abs(probe["scroll_px"] - ref["scroll_px"]) <= max(8, 0.02 * ref["scroll_px"])


def test_mspacman_probe_matches_the_ram(mspacman_runs, mspacman_game_over):
    """Pellets eaten read off the frames within 2 of the RAM's counter; the lives icons equal the RAM's
    lives in reserve on every frame."""
    for run in (mspacman_runs["bot"], mspacman_runs["random"], mspacman_game_over):
        got = collect.MsPacmanProbe.run(run["observations"])
        ref = collect.mspacman_ram_reference(run["ram"])
        assert abs(got["pellets_eaten"] - ref["pellets_eaten"]) <= 2, (got, ref)
        assert got["pellets_first"] >= 148  # 150 pellets and 4 blinking power pellets, the odd one hidden by a sprite
        lives = [collect.MsPacmanProbe.lives(f) for f in run["observations"]]
        assert lives == [int(r & 7) for r in run["rows"][:, collect.MSP_LIVES]]
    assert got["lives"] == 0 and ref["game_over_s"] is not None


def test_probes_reject_other_frames():
    with pytest.raises(ValueError, match="240, 256, 3"):
        collect.SmbProbe()(np.zeros((210, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="210, 160, 3"):
        collect.MsPacmanProbe()(np.zeros((240, 256, 3), np.uint8))
    blank = collect.MsPacmanProbe.run([np.zeros((210, 160, 3), np.uint8)] * 5)
    assert blank["pellets_eaten"] == 0 and blank["lives"] == 0


@pytest.mark.parametrize("game", GAMES)
def test_probe_a_dataset_from_the_command_line(tiny, capsys, game):
    results = collect.main(["--probe", tiny[game], "--game", game])
    out = capsys.readouterr().out
    assert len(results) == 2 and all(k in out for k in collect.GAMES[game].probe.KEYS) and "(frames / RAM)" in out
    assert results[0]["probe"]["frames"] == results[0]["ram"]["frames"] == 30
    with pytest.raises(SystemExit, match="pass --game"):
        collect.main(["--probe", tiny[game], "--game", "tetris"])


# ----------------------------------------------------------------------------- errors
def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        collect.parse_args(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_policy_of_another_game_is_a_one_line_error(capsys):
    line = one_line_error(["--game", "smb", "--policy", "bot"], capsys)
    assert "'bot' is not a player of smb" in line and "runner" in line and "noisy" in line
    line = one_line_error(["--game", "mspacman", "--policy", "runner"], capsys)
    assert "mspacman" in line and "bot" in line
    assert "framebot" in one_line_error(["--policy", "runner"], capsys)  # tetris's players
    assert "Tetris" in one_line_error(["--game", "smb", "--min-level", "3"], capsys)
    assert collect.parse_args(["--game", "smb", "--policy", "human"]).policy == "human"


@pytest.mark.parametrize("game,package,pip", [("smb", "gym_super_mario_bros", "pip install --no-deps gym-super-mario-bros"),
                                              ("mspacman", "ale_py", "pip install ale-py==0.12.1")])
def test_a_missing_rom_package_says_what_to_install(monkeypatch, game, package, pip):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(SystemExit) as err:
        collect.find_rom(game)
    assert "\n" not in str(err.value) and str(err.value).startswith("error: ") and pip in str(err.value)


def test_an_atari_rom_that_ale_does_not_know_is_refused(tmp_path):
    bad = tmp_path / "ms_pacman.bin"
    bad.write_bytes(b"\0" * 8192)
    with pytest.raises(SystemExit, match="not the mspacman ROM that ale-py knows"):
        collect.main(["--game", "mspacman", "--rom", str(bad), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert not (tmp_path / "o.parts").exists()


def test_human_play_gets_the_game_frame_size():
    human = collect.make_policy("human", np.random.default_rng(0), "mspacman")
    assert human.screen.get_size() == (160 * 3, 210 * 3) and human.steps_per_second == 20


# ----------------------------------------------------------------------------- the model side, per game
@pytest.mark.parametrize("game", GAMES)
def test_the_tile_cache_rebuilds_each_games_frames_exactly(tiny, tmp_path, game):
    """The tokenizer's input: every frame, cut into 8×8 tiles (padded with black to a multiple of 8) and put back,
    is the recorded frame, byte for byte; the shipped codebook draws most of these tiles exactly."""
    import datasets
    import train
    cache = train.load_tiles(tiny[game], str(tmp_path))
    ds = datasets.load_from_disk(tiny[game])
    order = np.lexsort((np.asarray(ds["step"]), np.asarray(ds["episode_id"])))
    h, w, _ = collect.GAMES[game].frame_shape
    assert cache.frame_hw == (h, w) and cache.ram.shape[1] == collect.GAMES[game].ram_size
    for row in (0, len(ds) // 2, len(ds) - 1):
        assert np.array_equal(cache.frames([row])[0], np.asarray(ds[int(order[row])]["observations"].convert("RGB")))
    world = train.World.load(os.path.join(ROOT, "checkpoints", game))
    world.attach(tiny[game], str(tmp_path))
    assert world.tokenizer_report["exact_tile_occurrences"] > 0.9


@pytest.mark.parametrize("game", GAMES)
def test_the_shipped_checkpoint_plays_headless(game, tmp_path):
    import main
    result = main.main(["--game", game, "--headless", "--frames", "5", "--record", str(tmp_path / "play.gif")])
    assert result["frames"] == 5
    from PIL import Image
    h, w, _ = collect.GAMES[game].frame_shape
    width, height = main.window_size(np.zeros((h, w, 3), np.uint8))
    assert Image.open(tmp_path / "play.gif").size == (width // 2, (height + main.BAR) // 2)
