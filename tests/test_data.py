"""train.py data pipeline: pairing, splits, batches, and clear errors for bad input."""
import io
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import ROOT


@pytest.fixture(scope="module")
def cache(tiny_dataset, tmp_path_factory):
    return train.load_frames(tiny_dataset, 80, str(tmp_path_factory.mktemp("cache")))


def test_cache_is_uint8_grayscale_sorted_and_reused(tiny_dataset, tmp_path, monkeypatch):
    c1 = train.load_frames(tiny_dataset, 80, str(tmp_path))
    assert c1.frames.dtype == np.uint8 and c1.frames.shape[1:] == (80, 80)
    assert c1.actions.shape == (len(c1.frames), 8)
    assert (np.diff(c1.episodes) >= 0).all()
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    def no_decoding(*args):
        raise AssertionError("decoded the images again instead of reading the cache")
    with monkeypatch.context() as m:
        m.setattr(train, "_decode_chunk", no_decoding)
        c2 = train.load_frames(tiny_dataset, 80, str(tmp_path))
    assert np.array_equal(c1.frames, c2.frames) and c1.fingerprint == c2.fingerprint
    c3 = train.load_frames(tiny_dataset, 40, str(tmp_path))  # other preprocessing, other cache entry
    assert c3.frames.shape[1:] == (40, 40) and len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("horizon", [1, 3, 10])
def test_pairs_never_cross_episodes(cache, horizon):
    rows = train.pair_indices(cache.episodes, horizon)
    assert len(rows) > 0
    assert (cache.episodes[rows] == cache.episodes[rows + horizon]).all()
    last_rows = np.flatnonzero(np.r_[cache.episodes[1:] != cache.episodes[:-1], True])
    assert not np.isin(last_rows, rows).any()  # the last frame of an episode has no successor


def test_split_is_by_episode_disjoint_and_seeded(cache):
    train_eps, val_eps = train.split_episodes(cache.episodes, 0.2, seed=0)
    assert set(train_eps).isdisjoint(val_eps)
    assert set(train_eps) | set(val_eps) == set(np.unique(cache.episodes))
    assert len(val_eps) == 1  # 20% of 4 episodes, at least one
    again = train.split_episodes(cache.episodes, 0.2, seed=0)
    assert np.array_equal(again[1], val_eps)
    many = np.repeat(np.arange(50), 3)
    tr, va = train.split_episodes(many, 0.2, seed=1)
    assert len(va) == 10 and len(tr) == 40


def test_loader_yields_float_batches_of_the_right_shape(cache):
    rows = np.resize(train.pair_indices(cache.episodes), 300)
    loader = train.make_loader(train.PairDataset(cache, rows), 128, shuffle=True, seed=0)
    frames, actions, next_frames = next(iter(loader))
    assert frames.shape == (128, 1, 80, 80) and next_frames.shape == (128, 1, 80, 80)
    assert actions.shape == (128, 8)
    assert frames.dtype == torch.float32 and 0 <= frames.min() and frames.max() <= 1
    assert set(actions.unique().tolist()) <= {0.0, 1.0}


def test_context_and_past_actions_respect_episode_starts():
    episodes = np.array([0, 0, 0, 1, 1, 1, 1])
    actions = np.arange(7)[:, None].repeat(8, 1).astype(np.uint8)
    start = train.FrameCache(np.zeros((7, 2, 2), np.uint8), actions, episodes, "x").episode_start
    ctx = train.context_indices(np.array([1, 3, 5]), 3, start)
    assert ctx.tolist() == [[0, 0, 1], [3, 3, 3], [3, 4, 5]]
    past = train.past_actions(actions, ctx, start)[..., 0]
    # the action that led into each frame; none at an episode's first frame
    assert past.tolist() == [[0, 0, 0], [0, 0, 0], [0, 3, 4]]


def test_spot_check_png_is_written(cache, tmp_path):
    path = str(tmp_path / "spot.png")
    train.spot_check(cache, train.pair_indices(cache.episodes), path)
    assert Image.open(path).size[0] > 100


# ----------------------------------------------------------------------------- bad input
def png(value=0):
    buf = io.BytesIO()
    Image.fromarray(np.full((240, 256, 3), value, np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write(tmp_path, columns, name="bad"):
    feats = {"episode_id": datasets.Value("int32"), "observations": datasets.Image(),
             "actions": datasets.Sequence(datasets.Value("int32"))}
    feats = datasets.Features({k: v for k, v in feats.items() if k in columns})
    path = str(tmp_path / name)
    datasets.Dataset.from_dict(columns, features=feats).save_to_disk(path)
    return path


def good_columns(n=6):
    return {"episode_id": [0] * (n // 2) + [1] * (n - n // 2), "observations": [png(i * 10) for i in range(n)],
            "actions": [[0] * 8 for _ in range(n)]}


def run_train(path, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        train.main(["--dataset", path, "--epochs", "1", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                    "--spot-check", str(tmp_path / "spot.png")])
    assert not list((tmp_path / "c").glob("*.npz")) if (tmp_path / "c").exists() else True  # no cache written
    assert not (out / "autoencoder.pt").exists() and not (tmp_path / "spot.png").exists()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("error: ")
    return msg


def test_good_columns_are_accepted(tmp_path):
    cache = train.load_frames(write(tmp_path, good_columns()), 80, str(tmp_path / "c"))
    assert len(cache.frames) == 6


def test_missing_column(tmp_path):
    cols = good_columns()
    del cols["actions"]
    assert "missing column 'actions'" in run_train(write(tmp_path, cols), tmp_path)


@pytest.mark.parametrize("bad", [[0] * 7, [0, 0, 2, 0, 0, 0, 0, 0]])
def test_bad_action(tmp_path, bad):
    cols = good_columns()
    cols["actions"][4] = bad
    msg = run_train(write(tmp_path, cols), tmp_path)
    assert "row 4 (episode 1)" in msg and "8 values of 0 or 1" in msg


def test_undecodable_image(tmp_path):
    cols = good_columns()
    cols["observations"][2] = {"bytes": b"this is not a PNG", "path": None}
    msg = run_train(write(tmp_path, cols), tmp_path)
    assert "row 2 (episode 0)" in msg and "cannot be decoded" in msg


def test_no_usable_pair(tmp_path):
    cols = good_columns(3)
    cols["episode_id"] = [0, 1, 2]  # every episode is a single frame
    assert "no usable (frame, action, next frame) pair" in run_train(write(tmp_path, cols), tmp_path)


def test_dataset_that_does_not_exist(tmp_path):
    assert "no such dataset directory" in run_train(str(tmp_path / "nope"), tmp_path)


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "not a saved Hugging Face dataset" in run_train(str(tmp_path / "empty"), tmp_path)


def test_cli_exits_non_zero_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--dataset", str(tmp_path / "nope"),
                           "--epochs", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "o" / "autoencoder.pt").exists()


def test_unknown_config_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nlatent_dimm: 64\n")
    with pytest.raises(SystemExit, match="unknown config key"):
        train.load_config(str(cfg), {})
