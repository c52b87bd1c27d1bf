"""Bad inputs end in a one-line error naming what is wrong (and write nothing), or work: issue #20, item 5.

String episode ids, malformed --actions files, a --rom that is not a NES ROM, out-of-range numeric flags,
and evaluate.py's progress bar."""
import io
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

import collect
import evaluate
import main as play
import train
from conftest import ROOT


def run_script(script, args, cwd):
    """Run a script as a user would; -> (exit code, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    return proc.returncode, proc.stderr


def assert_one_line(message, *parts):
    assert "\n" not in message and message.startswith("error: ")
    for part in parts:
        assert part in message, (part, message)


# ----------------------------------------------------------------------------- 1. string episode ids
LENGTHS = {"run-b": 4, "run-a": 3, "run-c": 5}  # sorted ids: run-a -> 0, run-b -> 1, run-c -> 2


def code(ep: str, step: int) -> int:
    """Each row's frame is one flat grey and its RAM byte 0 the same number: where the row went, after sorting."""
    return 40 * sorted(LENGTHS).index(ep) + 5 * step + 10


def rows_in(order_seed: int):
    rows = [(ep, s) for ep, n in LENGTHS.items() for s in range(n)]
    return [rows[i] for i in np.random.default_rng(order_seed).permutation(len(rows))]  # episodes interleaved


def write_dataset(path, rows, ids=None, id_type="string"):
    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((240, 256, 3), v, np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    feats = collect.features()  # the schema collect.py writes, with another episode_id type
    feats["episode_id"] = datasets.Value(id_type)
    cols = {"episode_id": ids if ids is not None else [ep for ep, _ in rows], "step": [s for _, s in rows],
            "observations": [png(code(ep, s)) for ep, s in rows], "actions": [[0] * 8 for _ in rows],
            "ram": [bytes([code(ep, s)]) + bytes(2047) for ep, s in rows]}
    datasets.Dataset.from_dict(cols, features=feats).save_to_disk(str(path))
    return str(path)


def expected_order():
    return [(ep, s) for ep in sorted(LENGTHS) for s in range(LENGTHS[ep])]


def test_string_episode_ids_map_to_sorted_integers_and_pairs_stay_inside_episodes(tmp_path):
    path = write_dataset(tmp_path / "str", rows_in(0))
    cache = train.load_frames(path, 80, str(tmp_path / "c"))
    want = expected_order()
    assert cache.episodes.dtype == np.int64
    assert cache.episodes.tolist() == [sorted(LENGTHS).index(ep) for ep, _ in want]
    assert cache.frames[:, 0, 0].tolist() == [code(ep, s) for ep, s in want]  # rows sorted by (episode, step)
    rows = train.pair_indices(cache.episodes)
    assert len(rows) == sum(n - 1 for n in LENGTHS.values())
    assert (cache.frames[rows + 1, 0, 0].astype(int) - cache.frames[rows, 0, 0] == 5).all()  # next step, same episode
    # stable: the same dataset, or the same rows in another order, always gives the same mapping
    again = train.load_frames(path, 80, str(tmp_path / "c2"))
    shuffled = train.load_frames(write_dataset(tmp_path / "str2", rows_in(1)), 80, str(tmp_path / "c3"))
    for other in (again, shuffled):
        assert np.array_equal(other.episodes, cache.episodes) and np.array_equal(other.frames, cache.frames)
    # the native tiles and evaluate.py's RAM come in the very same row order
    tiles = train.load_tiles(path, str(tmp_path / "c"))
    assert np.array_equal(tiles.episodes, cache.episodes)
    assert tiles.ram[:, 0].tolist() == [code(ep, s) for ep, s in want]
    assert evaluate.load_ram(path)[:, 0].tolist() == [code(ep, s) for ep, s in want]


def test_integer_episode_ids_are_used_as_they_are(tmp_path):
    ids = {"run-a": 11, "run-b": 5, "run-c": 42}
    rows = rows_in(0)
    path = write_dataset(tmp_path / "int", rows, ids=[ids[ep] for ep, _ in rows], id_type="int32")
    cache = train.load_frames(path, 80, str(tmp_path / "c"))
    assert cache.episodes.tolist() == sorted(ids[ep] for ep, _ in rows)
    # the cache key of an integer dataset is what it always was (the dataset's own fingerprint and length, hashed,
    # then the preprocessing), so existing caches stay valid; spelled out here, not asked of the code under test
    import hashlib
    ds = train.open_dataset(path)
    key = hashlib.sha1(f"{ds._fingerprint}:{len(rows)}".encode()).hexdigest()[:16]
    assert cache.fingerprint == key + "-gray80-bilinear-v1"


@pytest.mark.parametrize("bad_row,value,id_type", [(3, None, "string"), (5, 1.5, "float64")])
def test_unusable_episode_id_names_its_row(tmp_path, bad_row, value, id_type):
    rows = rows_in(0)
    ids = [ep for ep, _ in rows] if id_type == "string" else [float(sorted(LENGTHS).index(ep)) for ep, _ in rows]
    ids[bad_row] = value
    path = write_dataset(tmp_path / "bad", rows, ids=ids, id_type=id_type)
    with pytest.raises(train.DatasetError, match=f"row {bad_row}: episode_id must be an integer or a string"):
        train.load_frames(path, 80, str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # nothing cached


# ----------------------------------------------------------------------------- 2. main.py --actions FILE
BAD_ACTION_FILES = [  # name, content, what the message must say
    ("words.txt", "0 0 0 0 0 0 0 0\n# a comment\n\n0 0 0 0 up 0 0 0\n", ["line 4", "got up for UP"]),
    ("short.txt", "0 0 0 0 0 0 0 0\n1 0 0 0 0 0 0\n", ["line 2", "8 values of 0 or 1"]),
    ("two.txt", "0 0 2 0 0 0 0 0\n", ["line 1", "got 2 for SELECT"]),
    ("empty.txt", "# only a comment\n", ["no rows of buttons"]),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\xff\xfe", ["not a text file"]),
    ("shape.npy", np.ones((3, 7)), ["shape (3, 7)", "8 values of 0 or 1"]),
    ("flat.npy", np.ones(8), ["shape (8,)"]),
    ("values.npy", np.eye(8) * 3, ["row 0", "got 3.0 for A"]),
    ("text.npy", b"0 0 0 0 0 0 0 0\n", ["cannot be loaded as a numpy .npy array"]),
    ("rows.json", "[[0, 0, 0, 0, 0, 0, 0, 0], [0, 1]]", ["row 1", "got [0, 1]"]),
    ("broken.json", "[[0, 0,", ["not valid JSON"]),
]


def write_file(path, content):
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("name,content,says", BAD_ACTION_FILES, ids=[c[0] for c in BAD_ACTION_FILES])
def test_malformed_actions_file_is_a_one_line_error(tmp_path, name, content, says):
    path = write_file(tmp_path / name, content)
    gif = tmp_path / "play.gif"
    # checked before the model loads: the missing checkpoint is never reached
    with pytest.raises(SystemExit) as err:
        play.main(["--checkpoint", str(tmp_path / "no_model"), "--headless", "--actions", path, "--record", str(gif)])
    assert_one_line(str(err.value), f"--actions {path}: ", *says)
    assert not gif.exists()


def test_shipped_actions_files_still_read_as_before():
    txt, npy = os.path.join(ROOT, "configs/actions_left_right.txt"), os.path.join(ROOT, "configs/actions_heldout_episode.npy")
    assert np.array_equal(play.read_actions(txt), np.loadtxt(txt, ndmin=2).astype(np.uint8))
    assert np.array_equal(play.read_actions(npy), np.load(npy).astype(np.uint8))
    assert play.read_actions(txt).dtype == np.uint8 and play.read_actions(txt).shape[1] == 8


def test_main_cli_malformed_actions_file_exits_non_zero_without_traceback(tmp_path):
    path = write_file(tmp_path / "words.txt", BAD_ACTION_FILES[0][1])
    rc, err = run_script("main.py", ["--checkpoint", str(tmp_path / "no_model"), "--headless", "--actions", path,
                                     "--record", str(tmp_path / "play.gif")], tmp_path)
    assert rc != 0 and "Traceback" not in err
    assert_one_line(err.strip(), f"error: --actions {path}: line 4")
    assert os.listdir(tmp_path) == ["words.txt"]


# ----------------------------------------------------------------------------- 3. collect.py --rom FILE
def rom_bytes():
    with open(collect.find_rom("tetris"), "rb") as f:
        return f.read()


BAD_ROMS = [  # name, content (None: a directory), what the message must say
    ("notes.nes", b"this is a text file, not a cartridge\n", "not a NES ROM"),
    ("empty.nes", b"", "not a NES ROM"),
    ("cut.nes", None, "truncated or corrupt NES ROM"),  # the real header, half the bytes
    ("folder.nes", "dir", "not a file"),
    ("missing.nes", "missing", "no such file"),
    ("mapper.nes", "mapper", "the emulator cannot run this ROM"),  # a whole iNES file with a mapper cynes lacks
]


@pytest.mark.parametrize("name,content,says", BAD_ROMS, ids=[c[0] for c in BAD_ROMS])
def test_bad_rom_is_a_one_line_error_and_writes_nothing(tmp_path, name, content, says):
    path = tmp_path / name
    if content is None:
        path.write_bytes(rom_bytes()[:len(rom_bytes()) // 2])
    elif content == "dir":
        path.mkdir()
    elif content == "mapper":
        rom = bytearray(rom_bytes())
        rom[6], rom[7] = rom[6] | 0xF0, 0xF0  # mapper 255
        path.write_bytes(bytes(rom))
    elif content != "missing":
        path.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        collect.main(["--rom", str(path), "--episodes", "1", "--max-steps", "5", "--workers", "1", "--out", str(out)])
    assert_one_line(str(err.value), str(path), says)
    assert not out.exists() and not (tmp_path / "out.parts").exists()


def test_collect_cli_bad_rom_exits_non_zero_without_traceback(tmp_path):
    (tmp_path / "notes.nes").write_text("not a ROM")
    rc, err = run_script("collect.py", ["--rom", "notes.nes", "--episodes", "1", "--out", "out"], tmp_path)
    assert rc != 0 and "Traceback" not in err
    assert_one_line(err.strip(), "error: --rom notes.nes: not a NES ROM")
    assert os.listdir(tmp_path) == ["notes.nes"]


# ----------------------------------------------------------------------------- 4. numeric flags
BAD_FLAGS = [  # script module, argv, the flag argparse must name
    (play, ["--frames", "-3"], "--frames"), (play, ["--frames", "0"], "--frames"), (play, ["--fps", "-1"], "--fps"),
    (play, ["--seed", "-1"], "--seed"), (play, ["--frames", "ten"], "--frames"),
    (evaluate, ["--starts", "0"], "--starts"), (evaluate, ["--horizons", "1", "-5"], "--horizons"),
    (evaluate, ["--samples", "-1"], "--samples"), (evaluate, ["--events", "-2"], "--events"),
    (evaluate, ["--change-threshold", "1.5"], "--change-threshold"), (evaluate, ["--seed", "-4"], "--seed"),
    (evaluate, ["--temperature", "nan"], "--temperature"),
    (collect, ["--workers", "0"], "--workers"), (collect, ["--episodes", "0"], "--episodes"),
    (collect, ["--max-steps", "1"], "--max-steps"), (collect, ["--frame-skip", "0"], "--frame-skip"),
    (collect, ["--tail-steps", "-1"], "--tail-steps"), (collect, ["--power-on-frac", "2"], "--power-on-frac"),
    (collect, ["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("module,argv,flag", BAD_FLAGS, ids=[f"{m.__name__} {' '.join(a)}" for m, a, _ in BAD_FLAGS])
def test_out_of_range_number_is_an_argparse_error(module, argv, flag, capsys):
    with pytest.raises(SystemExit) as err:
        module.parse_args(argv)
    assert err.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: " in last and ("must be" in last or "need an integer" in last)


def test_in_range_numbers_still_parse():
    assert play.parse_args(["--frames", "1", "--fps", "0", "--seed", "0"]).frames == 1
    args = evaluate.parse_args(["--starts", "1", "--horizons", "5", "1", "5", "--samples", "0", "--events", "0",
                                "--change-threshold", "0"])
    assert args.horizons == [1, 5] and args.samples == 0
    args = collect.parse_args(["--workers", "1", "--tail-steps", "0", "--power-on-frac", "1", "--max-steps", "2"])
    assert args.workers == 1 and args.power_on_frac == 1.0


# ----------------------------------------------------------------------------- 5. evaluate.py progress
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_on_for_a_terminal_only(monkeypatch, capsys):
    bar = evaluate.progress_bar(5, "rollouts")
    assert bar.disable  # stderr is captured, not a terminal: no bar in logs
    bar.close()
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = evaluate.progress_bar(5, "rollouts")
    assert not bar.disable and bar.fp is not None
    bar.close()


def test_evaluate_counts_every_rollout_on_its_bar(tiny_dataset, tiny_run, tmp_path, monkeypatch):
    bars, shown, make = [], [], evaluate.progress_bar

    def progress_bar(total, desc):
        bars.append(make(total, desc))
        shown.append(not bars[-1].disable)  # (closing a bar disables it)
        return bars[-1]
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(evaluate, "progress_bar", progress_bar)
    evaluate.main(["--dataset", tiny_dataset, "--checkpoint", os.path.join(tiny_run, "export"), "--starts", "6",
                   "--horizons", "1", "3", "--events", "0", "--no-plots", "--cache-dir", os.path.join(tiny_run, "cache"),
                   "--out", str(tmp_path / "e")])
    assert len(bars) == 1 and shown == [True]  # one bar, shown on a terminal
    assert bars[0].total == 6 and bars[0].n == 6  # every start rolled out counted


# ----------------------------------------------------------------------------- 6. issue #30: configs, paths, temperatures
@pytest.mark.parametrize("content,says", [("not a yaml: [", "line 1"), ("name: x\n  bad: indent: here\n", "line 2"),
                                          ("- a list\n- of things\n", "not a mapping")])
def test_a_malformed_config_is_a_one_line_error_naming_the_file(tmp_path, content, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(SystemExit) as err:
        train.load_config(str(bad), {})
    assert_one_line(str(err.value), str(bad), says)
    code, stderr = run_script("train.py", ["--config", str(bad), "--dataset", "nowhere"], tmp_path)
    assert code != 0 and "Traceback" not in stderr
    assert_one_line(stderr.strip().splitlines()[-1], str(bad), says)


UNWRITABLE = "/proc/nope"  # /proc takes no new files or folders, even as root


@pytest.mark.parametrize("flag,path", [("--record", UNWRITABLE + "/play.gif"), ("--stats", UNWRITABLE + "/run"),
                                       ("--shots", UNWRITABLE + "/shots"), ("--record", "/proc/nope.gif")])
def test_an_unwritable_output_stops_main_before_play(tmp_path, flag, path):
    code, stderr = run_script("main.py", ["--headless", "--frames", "10", flag, path], tmp_path)
    assert code != 0 and "Traceback" not in stderr
    assert_one_line(stderr.strip().splitlines()[-1], flag, path)
    assert not os.listdir(tmp_path)  # nothing half-written where it ran


@pytest.mark.parametrize("script,argv,flag", [
    ("train.py", ["--config", os.path.join(ROOT, "configs", "tetris_tiles.yaml"), "--dataset", "nowhere",
                  "--out", UNWRITABLE + "/run"], "--out"),
    ("train.py", ["--config", os.path.join(ROOT, "configs", "tetris_tiles.yaml"), "--dataset", "nowhere",
                  "--export", UNWRITABLE + "/ckpt"], "--export"),
    ("evaluate.py", ["--out", UNWRITABLE + "/eval"], "--out")])
def test_an_unwritable_out_or_export_is_a_one_line_error(tmp_path, script, argv, flag):
    code, stderr = run_script(script, argv, tmp_path)
    assert code != 0 and "Traceback" not in stderr
    assert_one_line(stderr.strip().splitlines()[-1], flag, UNWRITABLE)


def test_a_gif_recording_is_written_once_through_one_temporary_name(tmp_path, monkeypatch):
    moves, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: moves.append((os.path.basename(a), os.path.basename(b)))
                        or real_replace(a, b))
    rec = play.Recorder(str(tmp_path / "clip.gif"), 30)
    for i in range(3):
        rec(np.full((8, 8, 3), 60 * i, np.uint8))
    assert rec.close() == str(tmp_path / "clip.gif")
    assert sorted(os.listdir(tmp_path)) == ["clip.gif"]
    assert len(moves) == 1 and moves[0][1] == "clip.gif" and moves[0][0].count(".tmp-") == 1, moves
    assert Image.open(tmp_path / "clip.gif").n_frames == 3


def test_temperatures_above_one_play_and_above_two_are_refused(tmp_path):
    assert play.parse_args(["--temperature", "1.5"]).temperature == 1.5
    assert evaluate.parse_args(["--temperature", "1.15"]).temperature == 1.15
    with pytest.raises(SystemExit, match="between 0 and 2"):
        play.main(["--headless", "--frames", "1", "--temperature", "2.5"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--temperature", "2.5"])
    help_text = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--help"], capture_output=True,
                               text=True, cwd=tmp_path, timeout=60).stdout
    assert "above 1" in help_text and "0 = always the likeliest" in help_text


def test_the_temperature_keys_reach_the_same_range():
    world = train.load_world("checkpoints/tetris")
    env = play.NeuralGame(world, temperature=1.9)
    session = play.Session(env, "tetris")
    for _ in range(5):
        session.control("warmer")
    assert env.temperature == 2.0
    for _ in range(25):
        session.control("colder")
    assert env.temperature == 0.0
    env.temperature = 1.15
    session.control("warmer")
    assert env.temperature == 1.25
    frames = [env.step(np.zeros(8, np.uint8)) for _ in range(3)]  # plays above 1
    assert all(f.shape == (240, 256, 3) for f in frames)
