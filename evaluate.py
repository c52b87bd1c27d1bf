"""Seeded N-step rollout tables: how faithful is the dream, step after step?

    python evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris_latent --out results/eval_tetris
    python evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris_latent --checkpoint runs/seed/export \
        --out results/eval_compare

From seeded start frames of the held-out episodes, each model dreams forward driven by the real
recorded buttons and is compared with the real frames at each horizon. Beside every model the table
shows copy-last-latent (its own autoencoder, zero delta), copy-last-frame (nothing moves) and the
autoencoder oracle (the true future frame encoded and decoded: the ceiling of latent dynamics).

Whole-frame scores on Tetris are nearly saturated (little of the screen moves), so every metric is
also reported on the changed pixels: where the real future frame differs from the start frame by
more than --change-threshold. Metrics: L1, SSIM (scikit-image), LPIPS (AlexNet, real ImageNet weights).
With the dataset's RAM column, one-step errors are also broken down by what the game did (--events):
gravity, soft drop, shift, rotate, and lock/line clear/spawn; and how much of a still falling piece each model
keeps one step ahead, where no pixel changes and so no changed-pixel score can see a fade.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

from collect import GAMES, bounded
from train import (CheckpointError, DatasetError, World, changed_mean, context_indices, load_frames, load_lpips,
                   load_world, pair_indices, past_actions, ram_state, rollout_from, save_figure, to_gray80, writable, MAX_TEMPERATURE)

BASELINES = ("copy-last-latent", "copy-last-frame", "autoencoder oracle")


# ----------------------------------------------------------------------------- metrics
def ssim_maps(pred: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) float in [0, 1] -> per-image SSIM (N,) and SSIM maps (N, H, W), scikit-image's."""
    from skimage.metrics import structural_similarity
    scores, maps = np.empty(len(pred)), np.empty(pred.shape)
    for i in range(len(pred)):
        scores[i], maps[i] = structural_similarity(pred[i], real[i], data_range=1.0, full=True)
    return scores, maps


@torch.no_grad()
def lpips_distance(model, pred: np.ndarray, real: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, H, W) grayscale in [0, 1] -> (N,) LPIPS; gray is repeated to RGB and scaled to [-1, 1]."""
    out = []
    for s in range(0, len(pred), batch):
        p = torch.from_numpy(pred[s:s + batch]).float()[:, None].repeat(1, 3, 1, 1) * 2 - 1
        r = torch.from_numpy(real[s:s + batch]).float()[:, None].repeat(1, 3, 1, 1) * 2 - 1
        out.append(model(p, r).flatten())
    return torch.cat(out).numpy()


def frame_metrics(pred: np.ndarray, real: np.ndarray, start: np.ndarray, threshold: float, lpips_model) -> dict:
    """Per-sample metrics (N,) of predictions against real frames; changed pixels are those where the
    real frame differs from the start frame by more than threshold (NaN where none changed)."""
    err = np.abs(pred - real)
    ssim, maps = ssim_maps(pred, real)
    return {"l1": err.mean(axis=(1, 2)), "ssim": ssim, "lpips": lpips_distance(lpips_model, pred, real),
            "changed_l1": changed_mean(err, real, start, threshold),
            "changed_ssim": changed_mean(maps, real, start, threshold),
            "changed_frac": (np.abs(real - start) > threshold).mean(axis=(1, 2))}


def summarize(per_sample: dict) -> dict:
    out = {}
    for k, v in per_sample.items():
        v = v[~np.isnan(v)]
        out[k] = float(v.mean()) if len(v) else float("nan")
        out[k + "_std"] = float(v.std()) if len(v) else float("nan")
    out["n_with_change"] = int((~np.isnan(per_sample["changed_l1"])).sum())
    return out


# ----------------------------------------------------------------------------- rollouts
def pick_starts(episodes: np.ndarray, horizon: int, n: int, seed: int) -> np.ndarray:
    rows = pair_indices(episodes, horizon)
    if len(rows) == 0:
        raise DatasetError(f"no episode is longer than {horizon} steps")
    return np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))


def to_numpy(frames: torch.Tensor) -> np.ndarray:
    return frames.squeeze(1).clamp(0, 1).double().numpy()


def rollout_batches(world: World, cache, starts: np.ndarray, steps: int, batch: int = 100):
    """Yields (rows, the world's state at them (from context rows t-K+1..t and the actions that led into them),
    the recorded actions a_t .. a_{t+steps-1} (B, steps, 8)) for the starts, batch by batch."""
    ep_start = cache.episode_start
    for s in range(0, len(starts), batch):
        rows = starts[s:s + batch]
        ctx = context_indices(rows, world.history, ep_start)
        a_past = torch.from_numpy(past_actions(cache.actions, ctx, ep_start)).float()
        future = torch.from_numpy(cache.actions[rows[:, None] + np.arange(steps)]).float()
        yield rows, world.context_rows(cache, ctx, a_past), future


@torch.no_grad()
def evaluate_world(world: World, cache, starts: np.ndarray, horizons: list[int], batch: int = 100,
                   progress=None):
    """-> {method: (len(horizons), N, H, W) predicted frames}, real (len(horizons), N, H, W), start (N, H, W).
    progress: a tqdm bar (or None), advanced by the starts of each batch rolled out."""
    hi = np.array(horizons) - 1
    preds = {"model": [], "copy-last-latent": [], "autoencoder oracle": []}
    size = cache.frames.shape[-2:]
    for rows, state, future in rollout_batches(world, cache, starts, max(horizons), batch):
        z = rollout_from(world, state, future)[:, hi]  # (B, len(h), ...)
        b, nh = z.shape[:2]
        preds["model"].append(to_numpy(world.decode(z.flatten(0, 1))).reshape(b, nh, *size))
        z0 = world.encode_rows(cache, rows)
        preds["copy-last-latent"].append(np.repeat(to_numpy(world.decode(z0))[:, None], nh, axis=1))
        oracle = world.decode(world.encode_rows(cache, (rows[:, None] + np.array(horizons)).ravel()))
        preds["autoencoder oracle"].append(to_numpy(oracle).reshape(b, nh, *size))
        if progress is not None:
            progress.update(len(rows))
    return {k: np.concatenate(v).transpose(1, 0, 2, 3) for k, v in preds.items()}


@torch.no_grad()
def sample_world(world: World, cache, starts: np.ndarray, horizons: list[int], k: int, temperature: float,
                 seed: int, batch: int = 100, progress=None) -> np.ndarray:
    """k seeded rollouts of a stochastic model at this temperature -> (k, len(horizons), N, H, W) frames.
    progress: a tqdm bar (or None), advanced by the starts of each batch rolled out."""
    hi = np.array(horizons) - 1
    out = []
    for i in range(k):
        torch.manual_seed(seed * 1000 + i)
        frames_i = []
        for rows, state, future in rollout_batches(world, cache, starts, max(horizons), batch):
            z = rollout_from(world, state, future, temperature)[:, hi]
            b, nh = z.shape[:2]
            frames_i.append(to_numpy(world.decode(z.flatten(0, 1))).reshape(b, nh, *cache.frames.shape[-2:]))
            if progress is not None:
                progress.update(len(rows))
        out.append(np.concatenate(frames_i).transpose(1, 0, 2, 3))
    return np.stack(out)


def sample_metrics(samples: np.ndarray, real: np.ndarray, start: np.ndarray, threshold: float, lpips_model) -> dict:
    """samples (k, N, H, W) of one horizon -> {'mean of k': summary, 'best of k': summary, 'diversity': summary}.
    Best of k takes, per start and per metric, the sample closest to the real future; diversity is the
    mean L1 between pairs of samples and the fraction of pixels on which some pair differs by > threshold."""
    per = [frame_metrics(x, real, start, threshold, lpips_model) for x in samples]
    keys = per[0].keys()
    stacked = {key: np.stack([p[key] for p in per]) for key in keys}  # (k, N)
    higher_better = {"ssim", "changed_ssim"}
    with np.errstate(invalid="ignore"):
        import warnings
        with warnings.catch_warnings():  # all-NaN columns (no changed pixel) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_k = {key: np.nanmean(v, axis=0) for key, v in stacked.items()}
            best_k = {key: (np.nanmax(v, axis=0) if key in higher_better else np.nanmin(v, axis=0))
                      for key, v in stacked.items()}
    pairs = [(i, j) for i in range(len(samples)) for j in range(i + 1, len(samples))]
    pair_l1 = np.mean([np.abs(samples[i] - samples[j]).mean(axis=(1, 2)) for i, j in pairs], axis=0) \
        if pairs else np.zeros(len(real))
    differ = (samples.max(axis=0) - samples.min(axis=0)) > threshold
    diversity = {"pairwise_l1": pair_l1, "differing_pixel_frac": differ.mean(axis=(1, 2))}
    return {"mean of k": summarize(mean_k), "best of k": summarize(best_k),
            "diversity": {k: float(v.mean()) for k, v in diversity.items()}}


def plot_samples(world: World, cache, starts: np.ndarray, horizons: list[int], k: int, temperature: float,
                 seed: int, path: str):
    """For a few starts: the real future, the temperature-0 prediction and k samples at each horizon, with
    the per-pixel spread of the samples (how much they differ, and where)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = sample_world(world, cache, starts, horizons, k, temperature, seed)  # (k, nh, N, H, W)
    mean_pred = evaluate_world(world, cache, starts, horizons)["model"]
    real, start = real_frames(cache, starts, horizons)
    n_rows = len(starts) * len(horizons)
    fig, axes = plt.subplots(n_rows, k + 4, figsize=(1.6 * (k + 4), 1.8 * n_rows), squeeze=False)
    for i in range(len(starts)):
        for j, h in enumerate(horizons):
            r = i * len(horizons) + j
            spread = samples[:, j, i].std(axis=0)
            panels = [("start", start[i]), (f"real +{h}", real[j, i]), ("T=0", mean_pred[j, i])] + \
                     [(f"T={temperature:g} #{s + 1}", samples[s, j, i]) for s in range(k)]
            for c, (title, img) in enumerate(panels):
                axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axes[r, c].set_title(title, fontsize=7)
            axes[r, -1].imshow(spread, cmap="magma", vmin=0, vmax=0.3, interpolation="nearest")
            axes[r, -1].set_title(f"spread (std) mean {spread.mean():.3f}", fontsize=7)
            for a in axes[r]:
                a.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def real_frames(cache, starts: np.ndarray, horizons: list[int]):
    real = cache.frames[starts[:, None] + np.array(horizons)].astype(np.float64) / 255
    return real.transpose(1, 0, 2, 3), cache.frames[starts].astype(np.float64) / 255


# ----------------------------------------------------------------------------- reports
def step_rate(world: World, steps: int = 60, warmup: int = 5) -> float:
    """Frames per second of one player's play on one thread: world.step from the shipped start on no buttons, at the
    play temperature, and show() of each frame (the model and its render, without the window)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state, action = world.start("play"), torch.zeros(1, 8)
        for i in range(warmup + steps):
            if i == warmup:
                t = time.perf_counter()
            state, z = world.step(state, action, world.default_temperature)
            world.show(z)
        return steps / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def family_table(results: dict, horizons: list[int], fps: dict, params: dict) -> str:
    """One row per method: changed-pixel L1, whole-frame L1 and LPIPS at each horizon, and each model's speed."""
    hs = "/".join(f"@{h}" for h in horizons)
    lines = [f"| method | changed-pixel L1 {hs} | whole-frame L1 {hs} | LPIPS {hs} | FPS, one thread | parameters |",
             "|---|---|---|---|---|---|"]
    for method, per_h in results.items():
        name = method[method.index("(") + 1:-1] if method.endswith(")") else next(iter(fps), "")
        speed = f"{fps[name]:.1f}" if method.startswith("model (") or method == "model" else ""
        size = f"{params[name] / 1e6:.1f} M" if speed else ""
        cells = ["/".join(f"{per_h[str(h)][k]:.{d}f}" for h in horizons)
                 for k, d in (("changed_l1", 3), ("l1", 4), ("lpips", 3))]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {speed} | {size} |")
    return "\n".join(lines)


def markdown_table(results: dict, horizons: list[int], threshold: float) -> str:
    lines = [f"| method | horizon | L1 | SSIM | LPIPS | changed-pixel L1 | changed-pixel SSIM |",
             "|---|---|---|---|---|---|---|"]
    for method, per_h in results.items():
        for h in horizons:
            r = per_h[str(h)]
            lines.append(f"| {method} | {h} | {r['l1']:.4f} | {r['ssim']:.3f} | {r['lpips']:.3f} | "
                         f"{r['changed_l1']:.3f} | {r['changed_ssim']:.3f} |")
    lines.append(f"\nChanged pixels: |real(t+h) - real(t)| > {threshold} on [0, 1] grayscale; "
                 f"changed-pixel scores average over the starts where any pixel changed.")
    return "\n".join(lines)


def plot_curves(results: dict, horizons: list[int], path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [("changed_l1", "changed-pixel L1 (lower is better)"), ("ssim", "whole-frame SSIM"),
            ("lpips", "LPIPS (lower is better)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, keys):
        for method, per_h in results.items():
            ax.plot(horizons, [per_h[str(h)][key] for h in horizons], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xticks(horizons, [str(h) for h in horizons])
        ax.set_xlabel("steps ahead (30 steps = 1 s)")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_strips(preds: dict, real: np.ndarray, start: np.ndarray, horizons: list[int], path: str, n: int = 3):
    """For n starts: rows real / each method, columns the start then each horizon."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [("real", real)] + list(preds.items())
    pick = np.linspace(0, real.shape[1] - 1, n).astype(int)
    fig, axes = plt.subplots(n * len(rows), len(horizons) + 1, figsize=(1.6 * (len(horizons) + 1), 1.6 * n * len(rows)))
    for k, i in enumerate(pick):
        for j, (name, frames) in enumerate(rows):
            r = k * len(rows) + j
            axes[r, 0].imshow(start[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[r, 0].set_ylabel(name, fontsize=7)
            for c, h in enumerate(horizons):
                axes[r, c + 1].imshow(frames[c, i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if r == 0:
                    axes[r, c + 1].set_title(f"t+{h}", fontsize=8)
            if r == 0:
                axes[r, 0].set_title("start t", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


@torch.no_grad()
def no_action_report(world: World, cache, starts: np.ndarray) -> dict:
    """Predicted one-step pixel change with all buttons released vs with the real buttons, beside the
    real game's change over steps where no button was held and where one was."""
    ep_start = cache.episode_start
    ctx = context_indices(starts, world.history, ep_start)
    a_past = torch.from_numpy(past_actions(cache.actions, ctx, ep_start)).float()
    base = world.decode(world.encode_rows(cache, starts))
    out = {}
    for name, act in (("no buttons", torch.zeros(len(starts), 8)),
                      ("recorded buttons", torch.from_numpy(cache.actions[starts]).float())):
        torch.manual_seed(0)
        z = rollout_from(world, world.context_rows(cache, ctx, a_past), act[:, None])[:, 0]
        out[f"model, {name}: mean |pixel change|"] = float((world.decode(z) - base).abs().mean())
    pairs = pair_indices(cache.episodes)
    idle = pairs[cache.actions[pairs].sum(1) == 0]
    busy = pairs[cache.actions[pairs].sum(1) > 0]
    change = lambda r: float(np.abs(cache.frames[r + 1].astype(np.float64) - cache.frames[r]).mean() / 255)
    out["real game, no buttons: mean |pixel change|"] = change(idle)
    out["real game, buttons held: mean |pixel change|"] = change(busy)
    return out


EVENTS = ("gravity: no button for 2 steps, piece falling", "soft drop: DOWN held", "shift: LEFT or RIGHT",
          "rotate: A or B", "lock, line clear or spawn")


def event_rows(cache, ram: np.ndarray) -> dict:
    """Pairs (t, t+1) of the held-out set by what the game did, from the buttons and the RAM. The screen can
    show the RAM's state a step late, so each event is judged over t-1..t+1 (and t-1 must be in the episode;
    models with more history see the episode's first frame repeated, as everywhere). Gravity is the telling one:
    with no button held, the falling piece drops one row every 24 steps at level 0 (faster higher up), on a
    timer the screen does not show."""
    import collect as C
    rows = pair_indices(cache.episodes)
    rows = rows[rows > cache.episode_start[rows]]
    a = cache.actions
    playing = lambda r: (ram[r, C.GAME_MODE] == C.PLAYING)
    falling = playing(rows) & np.all([ram[rows + d, C.PLAY_STATE] == C.FALLING for d in (-1, 0, 1)], axis=0)
    pressed = lambda r, *bits: a[r][:, list(bits)].any(1)
    idle = (a[rows].sum(1) == 0) & (a[rows - 1].sum(1) == 0)
    return {EVENTS[0]: rows[falling & idle],
            EVENTS[1]: rows[falling & pressed(rows, 5)],
            EVENTS[2]: rows[falling & pressed(rows, 6, 7) & ~pressed(rows, 5)],
            EVENTS[3]: rows[falling & pressed(rows, 0, 1) & ~pressed(rows, 5, 6, 7)],
            EVENTS[4]: rows[playing(rows) & np.isin(ram[rows, C.PLAY_STATE], range(2, 9))]}


@torch.no_grad()
def event_report(worlds: dict, cache, ram: np.ndarray, n: int, seed: int, threshold: float) -> dict:
    """One-step changed-pixel L1 per kind of event (event_rows), on up to n pairs with changed pixels each:
    for each model, its autoencoder oracle, and copy-last-frame. -> {event: {"pairs": .., method: L1}}."""
    out = {}
    for i, (event, rows) in enumerate(event_rows(cache, ram).items()):
        moved = rows[(np.abs(cache.frames[rows + 1].astype(np.int16) - cache.frames[rows]) > threshold * 255)
                     .any(axis=(1, 2))]
        picked = np.sort(np.random.default_rng([seed, i]).choice(moved, min(n, len(moved)), replace=False))
        if len(picked) == 0:
            continue
        real, start = real_frames(cache, picked, [1])
        changed = lambda pred: float(changed_mean(np.abs(pred - real[0]), real[0], start, threshold).mean())
        row = {"pairs": len(picked), "copy-last-frame": changed(start)}
        for name, world in worlds.items():
            preds = evaluate_world(world, cache, picked, [1])
            tag = f" ({name})" if len(worlds) > 1 else ""
            row["model" + tag] = changed(preds["model"][0])
            row["autoencoder oracle" + tag] = changed(preds["autoencoder oracle"][0])
        out[event] = row
    return out


HOLD_LOOKBACK = 20  # steps: what changed on screen since then, and is still bright, is the falling piece (or a counter)


@torch.no_grad()
def hold_report(worlds: dict, cache, ram: np.ndarray, n: int, seed: int, threshold: float) -> dict:
    """Does a model keep a piece that does not move? On up to n pairs where the piece is falling and nothing on
    screen changes one step ahead, the brightness each model draws on the piece's pixels (those that changed in
    the last HOLD_LOOKBACK steps and are bright in the real next frame), over the real frame's: 1 keeps it whole.
    A model that draws it 10% dimmer at every such step fades it out within a second of play, though no
    changed-pixel score sees it (no pixel changes). -> {"pairs": .., method: ratio}, or {} where none."""
    import collect as C
    rows = pair_indices(cache.episodes)
    rows = rows[rows - HOLD_LOOKBACK >= cache.episode_start[rows]]
    falling = (ram[rows, C.GAME_MODE] == C.PLAYING) & np.all(
        [ram[rows + d, C.PLAY_STATE] == C.FALLING for d in (-1, 0, 1)], axis=0)
    rows = rows[falling]
    frame = lambda r: cache.frames[r].astype(np.int16)
    still = ~(np.abs(frame(rows + 1) - frame(rows)) > threshold * 255).any(axis=(1, 2))
    rows = rows[still]
    piece = lambda r: (np.abs(frame(r) - frame(r - HOLD_LOOKBACK)) > threshold * 255) & (frame(r + 1) > 0.3 * 255)
    rows = rows[piece(rows).sum(axis=(1, 2)) >= 4] if len(rows) else rows
    if len(rows) == 0:
        return {}
    picked = np.sort(np.random.default_rng([seed, len(EVENTS)]).choice(rows, min(n, len(rows)), replace=False))
    real, _ = real_frames(cache, picked, [1])
    mask = piece(picked)
    kept = lambda pred: float(np.mean((pred * mask).sum(axis=(1, 2)) / (real[0] * mask).sum(axis=(1, 2))))
    out = {"pairs": len(picked)}
    for name, world in worlds.items():
        preds = evaluate_world(world, cache, picked, [1])
        tag = f" ({name})" if len(worlds) > 1 else ""
        out["model" + tag] = kept(preds["model"][0])
        out["autoencoder oracle" + tag] = kept(preds["autoencoder oracle"][0])
    return out


def hold_table(hold: dict) -> str:
    methods = [m for m in hold if m != "pairs"]
    return ("Brightness drawn on a still falling piece one step ahead, over the real frame's, on "
            f"{hold['pairs']} pairs where nothing on screen changes (`--events`; 1 keeps the piece whole):\n\n"
            "| " + " | ".join(methods) + " |\n" + "|---" * len(methods) + "|\n"
            "| " + " | ".join(f"{hold[m]:.3f}" for m in methods) + " |")


def event_table(events: dict, threshold: float) -> str:
    methods = list(next(iter(events.values())))[1:]
    lines = [f"Changed-pixel L1 one step ahead (threshold {threshold}), by what the game did (`--events`):\n",
             "| event | pairs | " + " | ".join(methods) + " |", "|---" * (2 + len(methods)) + "|"]
    lines += [f"| {event} | {r['pairs']} | " + " | ".join(f"{r[m]:.3f}" for m in methods) + " |"
              for event, r in events.items()]
    return "\n".join(lines)


def load_ram(dataset: str) -> np.ndarray:
    """(N, 2048) uint8 RAM snapshots, in the cache's (episode, step) row order."""
    from train import episode_ids, open_dataset
    ds = open_dataset(dataset)
    if "ram" not in ds.column_names:
        raise DatasetError(f"{dataset}: no 'ram' column; the autoencoder edge cases need collect.py's RAM snapshots")
    cols = ds.select_columns([c for c in ("episode_id", "step", "ram") if c in ds.column_names])
    steps = np.asarray(cols["step"], dtype=np.int64) if "step" in cols.column_names else np.arange(len(cols))
    order = np.lexsort((steps, episode_ids(cols, dataset)[0]))  # load_frames' row order, string ids too
    ram = np.frombuffer(b"".join(cols["ram"]), dtype=np.uint8).reshape(len(cols), -1)
    return ram[order]


def edge_cases(cache, ram: np.ndarray) -> list[tuple[str, int]]:
    """Rows showing the situations an autoencoder must survive, found from the game's RAM."""
    import collect as C
    mode, state = ram[:, C.GAME_MODE], ram[:, C.PLAY_STATE]
    board = ram[:, C.BOARD:C.BOARD + 200] != C.EMPTY
    filled = board.sum(1)
    playing = (mode == C.PLAYING) & (state != C.GAME_OVER)
    picks = []
    add = lambda name, rows: picks.append((name, int(rows[len(rows) // 2]))) if len(rows) else None
    add("empty board", np.flatnonzero(playing & (filled == 0) & (state == C.FALLING)))
    full = np.flatnonzero(playing)
    if len(full):
        picks.append((f"fullest board ({filled[full].max()} cells)", int(full[np.argmax(filled[full])])))
    falling = np.flatnonzero(playing & (state == C.FALLING) & (ram[:, C.PIECE_Y] > 4))
    seen = set()
    for r in falling[np.random.default_rng(0).permutation(len(falling))]:
        o = ram[r, C.ORIENTATION]
        if o not in seen and len(seen) < 5:
            seen.add(o)
            picks.append((f"piece {o} at x={ram[r, C.PIECE_X]}, y={ram[r, C.PIECE_Y]}", int(r)))
    over = np.flatnonzero((mode == C.PLAYING) & (state == C.GAME_OVER))
    if len(over):
        picks.append(("game over", int(over[min(len(over) - 1, 25)])))
    add("title screen", np.flatnonzero(mode == 1))
    add("level menu", np.flatnonzero(mode == 3))
    for level in np.unique(ram[playing, C.LEVEL])[:6]:
        add(f"level {level}", np.flatnonzero(playing & (ram[:, C.LEVEL] == level) & (filled > 20)))
    return picks


@torch.no_grad()
def autoencoder_figures(world: World, cache, dataset: str, prefix: str, seed: int):
    """16 random frames beside their reconstructions, and the edge cases, as PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def recon(rows):
        return cache.frames[rows], to_numpy(world.decode(world.encode_rows(cache, rows)))

    def grid(rows, titles, path, cols=4):
        orig, rec = recon(np.array(rows))
        n = len(rows)
        r = (n + cols - 1) // cols
        fig, axes = plt.subplots(r, 2 * cols, figsize=(2.2 * 2 * cols, 2.4 * r))
        for ax in axes.flat:
            ax.axis("off")
        for i in range(n):
            a, b = axes.flat[2 * i], axes.flat[2 * i + 1]
            a.imshow(orig[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            b.imshow(rec[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            a.set_title(titles[i], fontsize=7)
            b.set_title(f"reconstruction (L1 {np.abs(orig[i] / 255 - rec[i]).mean():.4f})", fontsize=7)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)

    rows = np.sort(np.random.default_rng(seed).choice(len(cache.frames), 16, replace=False))
    grid(rows, [f"original, row {r}" for r in rows], prefix + "_reconstructions.png")
    picks = edge_cases(cache, load_ram(dataset))
    grid([r for _, r in picks], [name for name, _ in picks], prefix + "_edge_cases.png")


# ----------------------------------------------------------------------------- main
# ----------------------------------------------------------------------------- play table (--play)
# One minute of play per row, each scored by the game's frame probe (collect.PROBES: what the dream's frames show,
# never the model's state), and judged against issue #19's bars for Tetris.
PLAY_RUNS = [("bot", s) for s in (0, 1, 2)] + [("random", s) for s in range(4)] + \
    [("configs/actions_heldout_episode.npy", 0)]


def play_bar(actions: str, probe: dict | None) -> str:
    """Issue #19's bar for one minute of play, on the frame probe: 'yes', or 'no (what missed)'."""
    if probe is None:
        return "no probe"
    missed = []
    if actions == "bot":
        if probe["pieces_locked"] < 40 or probe["rows_cleared"] < 5:
            missed.append("needs >= 40 locks and >= 5 rows")
        if probe["longest_still_s"] > 2:
            missed.append("still > 2 s")
        if probe.get("real_seconds_share") is None:
            missed.append("realism not measured: no --reference dataset")
        elif probe["real_seconds_share"] < 1:
            missed.append("a second less real than real frames")
    elif actions == "random":
        if probe["pieces_locked"] < 1 or probe["top_out_s"] is None or not 25 <= probe["top_out_s"] <= 70:
            missed.append("needs locks and a top-out at 25-70 s")
    elif probe["pieces_locked"] < 12:
        missed.append("needs >= 12 locks")
    return "yes" if not missed else "no (" + "; ".join(missed) + ")"


def play_table(args) -> dict:
    """Plays every PLAY_RUNS row headless with main.py (a process each, one thread) for each checkpoint and writes
    OUT.md / OUT.json: the probe's pieces locked, rows cleared, top-out, longest still stretch and share of seconds as
    real as real frames (when main.py's --reference dataset exists), and the bar."""
    import shlex
    import subprocess
    import tempfile
    main_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")
    variants, rows = args.play_args or [""], []
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    with tempfile.TemporaryDirectory() as tmp:
        bar = progress_bar(len(args.checkpoint) * len(variants) * len(PLAY_RUNS), "minutes played")
        for checkpoint, variant in ((c, v) for c in args.checkpoint for v in variants):
            extra = shlex.split(variant)
            for actions, seed in PLAY_RUNS:
                prefix = os.path.join(tmp, f"run{len(rows)}")
                cmd = [sys.executable, main_py, "--checkpoint", checkpoint, "--headless", "--frames",
                       str(round(30 * args.play_seconds)), "--actions", actions, "--seed", str(seed), "--stats", prefix]
                proc = subprocess.run(cmd + extra, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"error: {' '.join(cmd + extra)} failed: "
                                     f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
                with open(prefix + "_stats.json") as f:
                    stats = json.load(f)
                probe = stats.get("probe")
                rows.append({"checkpoint": checkpoint, "flags": variant, "actions": actions, "seed": seed, "probe": probe,
                             "fps": stats.get("fps"), "bar": play_bar("recorded" if actions.endswith(".npy")
                                                                      else actions, probe)})
                bar.update(1)
        bar.close()
    result = {"command": "python evaluate.py " + " ".join(sys.argv[1:]), "seconds": args.play_seconds,
              "play_args": args.play_args, "rows": rows}
    fmt = lambda v, d=1: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    lines = ["# Play, scored on the dream's frames", "", f"`{result['command']}`", "",
             f"{args.play_seconds:g} s of headless play per row; the numbers are read off the frames shown "
             f"(`collect.TetrisProbe`), never the model's state. real s: the share of seconds as real as real frames "
             f"(`main.py --stats`, with `--reference`'s dataset). top-out s: the game-over curtain seen; frozen from s: a "
             f"screen that stood still from then to the end (a game over drawn without the curtain, or a stall).", "",
             "| checkpoint | main.py flags | buttons | seed | pieces locked | rows cleared | top-out s | frozen from s | "
             "longest still s | real s | FPS | bar |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["probe"] or {}
        lines.append(f"| {r['checkpoint']} | {r['flags'] or '-'} | {os.path.basename(r['actions'])} | {r['seed']} | "
                     f"{fmt(p.get('pieces_locked'))} | {fmt(p.get('rows_cleared'))} | {fmt(p.get('top_out_s'))} | "
                     f"{fmt(p.get('frozen_from_s'))} | "
                     f"{fmt(p.get('longest_still_s'))} | {fmt(p.get('real_seconds_share'), 2)} | {fmt(r['fps'], 0)} | "
                     f"{r['bar']} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for path, text in ((args.out + ".json", json.dumps(result, indent=1)), (args.out + ".md", "\n".join(lines) + "\n")):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print("\n".join(lines[6:]))
    print(f"\nwrote {args.out}.md and {args.out}.json")
    return result


# ----------------------------------------------------------------------------- lockstep: the dream beside the real game
# Issue #31's measure. From seeded held-out starts the real game (collect.py's emulator) and the dream run side by
# side on the same buttons; each game's frame probe (collect.py, per game) reads the steered sprite and the game's
# counters off both. Game knowledge lives in the probes and the button sources only: the dream is stepped through
# the World interface as main.py plays it.
LOCKSTEP_HORIZONS = [1, 10, 30, 100, 300, 1800]
LOCKSTEP_SOURCES = ("player", "random", "recorded")
PARTED_PX, PARTED_STEPS = 16, 5  # a dream has parted from the real game once its sprite is missing or more than
                                 # 16 px (two tiles) from the real one for 5 steps running, where the real one shows


class RecordedButtons:
    """A held-out episode's recorded buttons (GAMES[game].heldout_buttons), played from `offset`, round and round."""
    sees = "ram"

    def __init__(self, path: str, offset: int = 0):
        self.buttons, self.t = np.load(path).astype(np.uint8), offset

    def __call__(self, ram) -> np.ndarray:
        self.t += 1
        return self.buttons[(self.t - 1) % len(self.buttons)]


class RealRun:
    """One real game of a lockstep start: a fresh emulator taken into play by collect.into_play(seed), played
    `warm` steps by the game's own player (seeded), then by the button source. Whenever the game is out of play
    (menus, between lives) its start driver presses the buttons, as collect.py records. The probe reads the frames."""

    _warmed: dict = {}  # (game, seed, warm, history, rom) -> the emulator's snapshot and the players' state there

    def __init__(self, game: str, seed: int, warm: int, source: str, history: int, rom: str | None = None):
        from types import SimpleNamespace
        from collect import ask, into_play, make_emulator, make_policy
        self.g, self.ask = GAMES[game], ask
        self.emu = make_emulator(game, rom)
        key = (game, seed, warm, history, rom)
        if key not in self._warmed:  # each start is played into once; every row and source loads its snapshot
            frame = into_play(self.emu, game, seed)
            rng = np.random.default_rng([seed, 31])
            self.driver = self.g.start(rng, SimpleNamespace(frame_skip=self.g.frame_skip, level=0))
            player = make_policy(self.g.bot, rng, game)
            self.probe = self.g.probe(self.g.steps_per_second)  # sees the warm-up: Tetris's follows a piece from its spawn
            self.probe(frame)
            frames, actions = [frame], [np.zeros(8, np.uint8)]
            for _ in range(warm):
                action = self.buttons(player, frame)
                frame = self.emu.step(action, self.g.frame_skip)
                self.probe(frame)
                frames, actions = (frames + [frame])[-history:], (actions + [action])[-history:]
            self._warmed[key] = (self.emu.save(), copy.deepcopy((self.driver, player, self.probe, frames, actions)))
        snapshot, players = self._warmed[key]
        self.emu.load(snapshot)
        self.driver, player, self.probe, frames, actions = copy.deepcopy(players)
        frame = frames[-1]
        self.context = (np.stack(frames), np.stack(actions), self.emu.ram())
        self.start_frame = self.frame = frame
        self.start_counts = self.probe.summary()
        self.policy = {"player": player, "random": make_policy("random", np.random.default_rng([seed, 32]), game),
                       "recorded": RecordedButtons(self.g.heldout_buttons, warm)}[source]
        self.frames, self.actions = frames, actions

    def buttons(self, policy, frame) -> np.ndarray:
        ram = self.emu.ram()
        return np.asarray(self.ask(policy, ram, frame) if self.g.in_play(ram) else self.driver(ram), np.uint8)

    def step(self) -> np.ndarray:
        """-> the buttons pressed; the real frame after them is self.frame."""
        action = self.buttons(self.policy, self.frame)
        self.frame = self.emu.step(action, self.g.frame_skip)
        self.probe(self.frame)
        self.frames, self.actions = self.frames[1:] + [self.frame], self.actions[1:] + [action]
        return action


def tile_hashes(frames: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H // 8, W // 8) a hash of each whole 8x8 tile, to count exact tiles."""
    b, h, w, _ = frames.shape
    t = frames[:, :h // 8 * 8, :w // 8 * 8].reshape(b, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
    t = np.ascontiguousarray(t).reshape(b, h // 8, w // 8, 192).view(np.uint64)  # 24 words of 8 bytes a tile
    mix = np.arange(1, 25, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (t * mix).sum(-1)


def code_exactness(z, after, changed):
    """Codes drawn (B, rows, cols) against the real next codes, where `changed` marks the tiles that really changed
    -> per sample: every changed tile right (B,), every tile right (B,), and the tiles drawn changed that did not
    change (B, rows, cols)."""
    right = z == after
    return (right | ~changed).flatten(1).all(1), right.flatten(1).all(1), ~right & ~changed


def lockstep_row(world: World | None, game: str, starts: list, sources, steps: int, temperature: float,
                 oracle: str = "", rom: str | None = None, threshold: float = 0.1, keep=(), progress=None,
                 horizons=LOCKSTEP_HORIZONS) -> dict:
    """One row of the lockstep table: every (start, source) run at once, the dream batched. world None: copy-last-
    frame (the start frame shown forever). oracle "state": the real game's next state bytes given to the tile head
    each step and carried on (the model's own tiles); "tiles": the real frames tokenized as the context each step
    (the model's own state bytes). -> per-run series: sprite (dream, real), changed-pixel L1, exact tiles, the
    counters at each horizon, ghosts; `keep`: steps whose frames are kept for the strip of the first run."""
    g = GAMES[game]
    history = world.history if world is not None else 1
    runs = [RealRun(game, seed, warm, source, history, rom) for seed, warm in starts for source in sources]
    b = len(runs)
    dream_probes = [copy.deepcopy(r.probe) for r in runs]  # the dream's probe has seen what the real one has
    state = None
    if world is not None:
        parts = [world.encode_context(*r.context) for r in runs]
        state = state_before = tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        real_codes = state[0]  # the oracle rows' real context (a tile world's codes)
    start_gray = to_gray80(np.stack([r.start_frame for r in runs])).astype(np.float32) / 255
    real_h = g.frame_shape[:2]
    out = {"sprite_dream": np.full((b, steps, 2), np.nan), "sprite_real": np.full((b, steps, 2), np.nan),
           "changed_l1": np.full((b, steps), np.nan), "exact_tiles": np.zeros((b, steps)),
           "ghosts_dream": np.zeros((b, steps)), "ghosts_real": np.zeros((b, steps)),
           "counters": {str(h): [] for h in horizons if h <= steps}, "strip": {}}
    still = np.stack([r.start_frame for r in runs])
    for t in range(steps):
        actions = np.stack([r.step() for r in runs])
        real = np.stack([r.frame for r in runs])
        if world is None:
            dream = still
        else:
            real_bytes = None if not oracle else torch.from_numpy(np.stack(  # the real game's state bytes now
                [ram_state(np.frombuffer(r.emu.ram(), np.uint8), world.dynamics.addresses) for r in runs])).long()
            given = real_bytes if oracle in ("state", "one step, real next state") else None
            state, z = world.step(state, torch.from_numpy(actions).float(), temperature,
                                  **({"next_state": given} if given is not None else {}))
            dream = np.stack([np.asarray(world.show(z[i:i + 1])) for i in range(b)])[:, :real_h[0], :real_h[1]]
            if oracle in ("tiles", "one step", "one step, real next state"):
                # the real context: the last K real frames' codes (the newest tokenized now, once), the real state
                # bytes, the buttons (the same on both sides)
                real_codes = torch.cat([real_codes[:, 1:], world.autoencoder.tokenize(real)[:, None]], 1)
                real_ctx = (real_codes, real_bytes, state[2])
                if oracle != "tiles":  # step exactness: the next codes against the real next frame's tokenization
                    before, after = state_before[0][:, -1], real_ctx[0][:, -1]
                    changed = before != after
                    step_exact, frame_exact, spurious = code_exactness(z, after, changed)
                    out.setdefault("step_exact", []).append(step_exact.numpy())
                    out.setdefault("frame_exact", []).append(frame_exact.numpy())
                    out["spurious"] = out.get("spurious", 0) + spurious.sum(0).numpy()  # by tile, over the runs
                    out.setdefault("changed_right", []).append(
                        [float((z[i] == after[i])[changed[i]].float().mean()) if changed[i].any() else np.nan
                         for i in range(b)])
                state = (real_ctx[0],) + tuple(state[1:]) if oracle == "tiles" else real_ctx
            state_before = state
        for i, (p, r) in enumerate(zip(dream_probes, runs)):
            p(dream[i])
            if p.sprite is not None:
                out["sprite_dream"][i, t] = p.sprite
            if r.probe.sprite is not None:
                out["sprite_real"][i, t] = r.probe.sprite
            out["ghosts_dream"][i, t] = getattr(p, "ghosts", 0)
            out["ghosts_real"][i, t] = getattr(r.probe, "ghosts", 0)
        gd, gr = to_gray80(dream).astype(np.float32) / 255, to_gray80(real).astype(np.float32) / 255
        out["changed_l1"][:, t] = changed_mean(np.abs(gd - gr), gr, start_gray, threshold)
        out["exact_tiles"][:, t] = (tile_hashes(dream) == tile_hashes(real)).mean(axis=(1, 2))
        if str(t + 1) in out["counters"]:
            out["counters"][str(t + 1)] = [
                {k: ((p.summary().get(k) or 0) - (r.start_counts.get(k) or 0),
                     (r.probe.summary().get(k) or 0) - (r.start_counts.get(k) or 0)) for k in g.counters}
                for p, r in zip(dream_probes, runs)]
        if t + 1 in keep:
            out["strip"][t + 1] = (dream[0].copy(), real[0].copy())
        if progress is not None:
            progress.update(1)
    end = []
    for p, r in zip(dream_probes, runs):  # what happened since the start
        d, real = p.summary(), r.probe.summary()
        for key in ("locks_of_4_cells", "locks_measured"):
            if key in d:
                d[key] -= r.start_counts[key]
                real[key] -= r.start_counts[key]
        end.append((d, real))
    out["end"] = end
    return out


def parted_step(dream: np.ndarray, real: np.ndarray, px: float = PARTED_PX, run: int = PARTED_STEPS) -> int | None:
    """(T, 2) sprite centres (NaN: not seen) -> the first step (1-based) of the first stretch of `run` steps on which
    the real sprite shows and the dream's is missing or more than px away; None if it never parts."""
    d = np.hypot(*(dream - real).T)
    off = ~np.isnan(real[:, 0]) & (np.isnan(d) | (d > px))
    count = 0
    for t, o in enumerate(off):
        count = count + 1 if o else 0
        if count == run:
            return t - run + 2
    return None


def lockstep_summary(row: dict, horizons: list[int]) -> dict:
    """Per horizon h: changed-pixel L1 and exact tiles at step h (mean over runs); the share of dream (and real)
    frames up to h showing the sprite; the sprite's position error over the steps since the previous horizon where
    the real one shows (median, 90th percentile; a dream that shows none counts as infinitely far); each counter's
    dream / real ratio (sums over runs); ghosts seen on average up to h. Plus the parting steps."""
    out, prev = {}, 0
    sd, sr = row["sprite_dream"], row["sprite_real"]
    for h in horizons:
        if h > sd.shape[1]:
            continue
        window = slice(prev, h)
        err = np.hypot(*(sd[:, window] - sr[:, window]).transpose(2, 0, 1))
        shown = ~np.isnan(sr[:, window, 0])
        err = np.where(np.isnan(err), np.inf, err)[shown]
        counters = {}
        for k in (row["counters"].get(str(h)) or [{}])[0]:
            dream = sum(c[k][0] for c in row["counters"][str(h)])
            real = sum(c[k][1] for c in row["counters"][str(h)])
            counters[k] = {"dream": dream, "real": real, "ratio": dream / real if real else None}
        out[str(h)] = {
            "changed_l1": float(np.nanmean(row["changed_l1"][:, h - 1])) if not np.isnan(row["changed_l1"][:, h - 1]).all() else None,
            "exact_tiles": float(row["exact_tiles"][:, h - 1].mean()),
            "sprite_visible": float((~np.isnan(sd[:, :h, 0])).mean()),
            "sprite_visible_real": float((~np.isnan(sr[:, :h, 0])).mean()),
            # quantiles of the values themselves (no interpolation: between two infinite errors it gives NaN)
            "position_error_median": float(np.quantile(err, 0.5, method="inverted_cdf")) if len(err) else None,
            "position_error_p90": float(np.quantile(err, 0.9, method="inverted_cdf")) if len(err) else None,
            "ghosts": float(row["ghosts_dream"][:, :h].mean()), "ghosts_real": float(row["ghosts_real"][:, :h].mean()),
            "counters": counters}
        prev = h
    if "step_exact" in row:  # one-step oracle rows: teacher-forced on the real game's frames
        out["step_exact"] = float(np.mean(row["step_exact"]))
        out["frame_exact"] = float(np.mean(row["frame_exact"]))
        out["changed_tiles_right"] = float(np.nanmean(row["changed_right"]))
        spurious = row["spurious"]  # (rows, cols): over the runs' steps, how often each tile was drawn changed wrongly
        top = np.argsort(-spurious, axis=None, kind="stable")[:6]
        out["spurious_tiles"] = [(int(i // spurious.shape[1]), int(i % spurious.shape[1]), int(spurious.flat[i]))
                                 for i in top if spurious.flat[i] > 0]
    parted = [parted_step(sd[i], sr[i]) for i in range(len(sd))]
    out["parted"] = parted
    out["parted_median"] = float(np.median([p if p is not None else np.inf for p in parted]))
    locks = [(e[0].get("locks_of_4_cells"), e[0].get("locks_measured")) for e in row["end"]]
    if all(a is not None for a, _ in locks):
        n = sum(m for _, m in locks)
        out["locks_of_4_cells"] = sum(a for a, _ in locks) / n if n else None
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float) and np.isinf(v):
        return "∞"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def lockstep_markdown(summaries: dict, horizons: list[int], game: str) -> str:
    """The lockstep tables: the bars' summary at the last horizon, then one table per measure by horizon."""
    g = GAMES[game]
    last = str(max(h for h in horizons if str(h) in next(iter(summaries.values()))))
    h30 = "30" if "30" in next(iter(summaries.values())) else last
    counters = list(g.counters)
    head = (f"| row | {g.sprite_name} visible (dream / real) | position error @{h30}: median / p90 px | "
            + " | ".join(f"{k} dream / real" for k in counters)
            + " | parted at step (median) | changed-pixel L1 @100 | exact tiles @100 |"
            + (" locks adding 4 cells |" if game == "tetris" else "")
            + (" ghosts seen (dream / real) |" if game == "mspacman" else ""))
    lines = [f"### Over {last} steps\n", head, "|---" * (head.count("|") - 1) + "|"]
    exact = {n: s for n, s in summaries.items() if "step_exact" in s}
    summaries = {n: s for n, s in summaries.items() if "step_exact" not in s}
    for name, s in summaries.items():
        e, m = s[last], s[h30]
        at100 = s.get("100", e)
        cells = [name, f"{e['sprite_visible']:.1%} / {e['sprite_visible_real']:.1%}",
                 f"{_fmt(m['position_error_median'], 1)} / {_fmt(m['position_error_p90'], 1)}"]
        cells += [f"{_fmt(e['counters'][k]['ratio'], 2)} ({e['counters'][k]['dream']} / {e['counters'][k]['real']})"
                  if k in e["counters"] else "–" for k in counters]
        cells += [_fmt(s["parted_median"], 0) if not np.isinf(s["parted_median"]) else "never",
                  _fmt(at100["changed_l1"]), f"{at100['exact_tiles']:.1%}"]
        if game == "tetris":
            cells.append(_fmt(s.get("locks_of_4_cells"), 2) if s.get("locks_of_4_cells") is None
                         else f"{s['locks_of_4_cells']:.0%}")
        if game == "mspacman":
            cells.append(f"{e['ghosts']:.2f} / {e['ghosts_real']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    hs = [h for h in horizons if str(h) in next(iter(summaries.values()))]
    measures = [("changed-pixel L1", lambda x: _fmt(x["changed_l1"])),
                ("exact tiles", lambda x: f"{x['exact_tiles']:.1%}"),
                (f"{g.sprite_name} visible in the dream (share of frames so far)", lambda x: f"{x['sprite_visible']:.1%}"),
                (f"{g.sprite_name} position error, median / p90 px (steps since the last horizon)",
                 lambda x: f"{_fmt(x['position_error_median'], 1)} / {_fmt(x['position_error_p90'], 1)}")]
    measures += [(f"{k}, dream / real", lambda x, k=k: _fmt(x["counters"].get(k, {}).get("ratio"), 2)) for k in counters]
    for title, cell in measures:
        lines += ["", f"### {title}", "", "| row | " + " | ".join(f"@{h}" for h in hs) + " |",
                  "|---" * (len(hs) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(s[str(h)]) for h in hs) + " |" for name, s in summaries.items()]
    if exact:
        lines += ["", "### Step exactness: one step ahead, teacher-forced on the real game's frames and state", "",
                  "Codes against the real next frame's tokenization (the tokenizer's own misses do not count).", "",
                  "| row | steps with every changed tile right | steps with every tile right | changed tiles right | "
                  "where unchanged tiles were drawn changed (tile row, column: times) |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {s['step_exact']:.1%} | {s['frame_exact']:.1%} | {s['changed_tiles_right']:.1%} | "
                  + ", ".join(f"({r}, {c}): {k}" for r, c, k in s.get("spurious_tiles", [])) + " |"
                  for n, s in exact.items()]
    return "\n".join(lines)


def plot_lockstep(rows: dict, path: str, game: str):
    """Per row, over the steps: the sprite's position error (median over runs; a missing sprite counts as 64 px) and
    changed-pixel L1 (mean over runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, row in rows.items():
        d = np.hypot(*(row["sprite_dream"] - row["sprite_real"]).transpose(2, 0, 1))
        shown = ~np.isnan(row["sprite_real"][..., 0])
        d = np.where(np.isnan(d), 64.0, np.minimum(d, 64.0))
        d = np.where(shown, d, np.nan)
        steps = np.arange(1, d.shape[1] + 1)
        with np.errstate(all="ignore"):
            axes[0].plot(steps, np.nanmedian(d, axis=0), label=name, lw=1)
            axes[1].plot(steps, np.nanmean(row["changed_l1"], axis=0), label=name, lw=1)
    axes[0].set(xscale="log", xlabel="step", ylabel="px (64 = missing)",
                title=f"{GAMES[game].sprite_name}: position error, dream vs real")
    axes[1].set(xscale="log", xlabel="step", ylabel="changed-pixel L1", title="changed-pixel L1, dream vs real")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def plot_lockstep_strip(rows: dict, path: str):
    """Dream above real at each kept horizon, for each row's first run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hs = sorted(max((r["strip"] for r in rows.values()), key=len))
    named = [(n, r["strip"]) for n, r in rows.items() if sorted(r["strip"]) == hs]  # not the short one-step rows
    fig, axes = plt.subplots(2 * len(named), len(hs), figsize=(1.6 * len(hs), 3.4 * len(named)), squeeze=False)
    for i, (name, strip) in enumerate(named):
        for j, h in enumerate(hs):
            for k, label in enumerate(("dream", "real")):
                ax = axes[2 * i + k, j]
                ax.imshow(strip[h][k])
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{name[-24:]}\n{label}" if k == 0 else label, fontsize=6)
                if i == 0 and k == 0:
                    ax.set_title(f"@{h}", fontsize=8)
    save_figure(fig, path)


def lockstep_table(args, argv) -> dict:
    """evaluate.py --lockstep: the rows (copy-last-frame; each checkpoint at its shipped temperature and at 0; with
    --oracles, the first checkpoint given the real state, and given the real tiles), their summaries, the files."""
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = GAMES[args.game]
    rng = np.random.default_rng([args.seed, 31])
    starts = [(1000 + 100 * args.seed + i, int(rng.integers(20, 200))) for i in range(args.starts or 3)]
    sources = args.sources
    try:
        worlds = {os.path.normpath(c): load_world(c) for c in args.checkpoint}
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if args.adjust is not None:  # each tile world also played with another logit adjustment, a row of its own
        for name, w in list(worlds.items()):
            if hasattr(w.dynamics, "set_adjust"):
                other = copy.deepcopy(w)
                other.dynamics.set_adjust(*args.adjust, w.dynamics.change_weight, w.dynamics.state_weight)
                worlds[f"{name} adjust {args.adjust[0]:g}/{args.adjust[1]:g}"] = other
    specs = [("copy-last-frame", None, 0.0, "")]
    for name, w in worlds.items():
        temps = [float(w.default_temperature) if t == "shipped" else float(t) for t in args.lockstep_temperatures] \
            if w.stochastic else [0.0]
        specs += [(f"{name} T={t:g}", w, t, "") for t in dict.fromkeys(temps)]
    if args.oracles:
        name, w = next(iter(worlds.items()))
        if hasattr(w.dynamics, "addresses"):
            specs += [(f"{name} + real state (oracle)", w, 0.0, "state"),
                      (f"{name} + real tiles (oracle) T={w.default_temperature:g}", w, w.default_temperature, "tiles")]
        else:
            print(f"oracles: skipped ({name} keeps no state bytes)")
    if args.step_exactness:
        for name, w in worlds.items():
            if hasattr(w.dynamics, "addresses"):
                specs += [(f"{name}: one step (real frames and state in) T=0", w, 0.0, "one step"),
                          (f"{name}: one step, real next state given", w, 0.0, "one step, real next state")]
    steps = args.lockstep_steps
    horizons = [h for h in LOCKSTEP_HORIZONS if h <= steps] + ([steps] if steps not in LOCKSTEP_HORIZONS else [])
    keep = set(horizons)
    rows, summaries = {}, {}
    from tqdm import tqdm
    bar = tqdm(total=len(specs) * steps, desc="lockstep", unit="step", disable=None, file=sys.stderr, leave=False)
    for label, world, temperature, oracle in specs:
        bar.set_postfix_str(label[-30:])
        torch.manual_seed(args.seed)
        n = min(steps, args.step_exactness) if oracle.startswith("one step") else steps
        rows[label] = lockstep_row(world, args.game, starts, sources, n, temperature, oracle, args.rom,
                                   args.change_threshold, keep, bar, horizons)
        bar.update(steps - n)
        summaries[label] = lockstep_summary(rows[label], horizons)
        print(f"{label}: {time.time() - t0:.0f} s", file=sys.stderr)
    bar.close()
    command = "python evaluate.py " + " ".join(argv)
    text = (f"# Lockstep: the dream beside the real game ({g.title})\n\n`{command}`\n\n"
            f"{len(starts)} held-out starts (collect.into_play seed, then steps of the game's own player: "
            f"{', '.join(f'{s}+{w}' for s, w in starts)}), each driven by {len(sources)} button sources "
            f"({', '.join(sources)}): {len(starts) * len(sources)} runs of {steps} steps a row, the real game and the "
            f"dream on the same buttons; the dream starts from the real game's last {max(w.history for w in worlds.values())} "
            f"frames and RAM (World.encode_context). The {g.sprite_name} and the counters are read off both sides' "
            f"frames by {g.probe.__name__}. A dream has parted from the real game at the first of {PARTED_STEPS} "
            f"steps running on which its {g.sprite_name} is missing or more than {PARTED_PX} px from the real one. "
            f"Changed-pixel L1: 80x80 grayscale, over the pixels where the real frame differs from the start frame "
            f"by more than {args.change_threshold}.\n\n" + lockstep_markdown(summaries, horizons, args.game) + "\n")
    print(text)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    payload = {"command": command, "game": args.game, "starts": starts, "sources": list(sources), "steps": steps,
               "horizons": horizons, "parted_px": PARTED_PX, "parted_steps": PARTED_STEPS,
               "rows": summaries, "seconds": time.time() - t0}
    for path, body in ((args.out + ".md", text), (args.out + ".json", json.dumps(payload, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(body)
        os.replace(path + ".tmp", path)
    if not args.no_plots:
        plot_lockstep(rows, args.out + "_error.png", args.game)
        plot_lockstep_strip(rows, args.out + "_strip.png")
    print(f"wrote {args.out}.md, {args.out}.json" + ("" if args.no_plots else " and plots")
          + f" in {time.time() - t0:.0f} s")
    return payload


@torch.no_grad()
def one_step_report(world, dataset: str, n: int, cache_dir: str = ".cache") -> dict:
    """Teacher-forced one step on n held-out recorded steps (spread evenly over the dataset), against the real next
    frame's tokens: with the model's own next state, given the real next state, and told that nothing changed (the
    state now given as the next state, on the steps whose state did change). The last measures whether the tile head
    reads the state at all: a head that draws from the bytes keeps the frame when told nothing moved; one that draws
    from the frames' motion moves it anyway. Each head's likeliest value, as step() at temperature 0 draws it, but
    without play's value vocabulary; the state head's logit adjustment is a row of its own."""
    from train import load_tiles, tile_batch
    m = world.dynamics
    cache = load_tiles(dataset, cache_dir)
    world.attach(dataset, cache_dir, cache.episodes)
    rows = np.flatnonzero(np.r_[cache.episodes[1:] == cache.episodes[:-1], False])
    rows = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)]
    sums = {}
    for s in range(0, len(rows), 50):
        b = tile_batch(world.tokens, cache, rows[s:s + 50], m.history, cache.episode_start, m.addresses)
        h, state_logits = m.trunk(b["tokens"], b["state"], b["actions"])
        last, after = b["tokens"][:, -1], b["next_tokens"]
        changed = last != after
        adjusted = state_logits.clone()
        adjusted[:, :, 0] += math.log1p(m.state_weight)
        given = {"own next state": (b["state"] + state_logits.argmax(-1)) % 256,
                 "own next state, adjusted (adjust_state 1)": (b["state"] + adjusted.argmax(-1)) % 256,
                 "the real next state": b["next_state"], "told nothing changed": b["state"]}
        stayed = b["state"] == b["next_state"]
        for label in ("own next state", "own next state, adjusted (adjust_state 1)"):  # the state head's bytes
            right = given[label] == b["next_state"]
            acc = sums.setdefault("state head: " + label, {"bytes": 0, "right": 0.0, "stayed": 0.0,
                                                           "stayed_right": 0.0, "moved_right": 0.0})
            acc["bytes"] += right.numel()
            acc["right"] += float(right.sum())
            acc["stayed"] += float(stayed.sum())
            acc["stayed_right"] += float(right[stayed].sum())
            acc["moved_right"] += float(right[~stayed].sum())
        for label, nxt in given.items():
            z = m.tile_logits(h, b["tokens"], nxt, b["state"]).argmax(-1).view_as(after)
            if label == "told nothing changed":
                moved = (b["state"] != b["next_state"]).any(1)
                drawn = (z != last).flatten(1).sum(1).float()[moved]
                acc = sums.setdefault(label, {"steps": 0, "tiles_drawn_changed": 0.0, "real_changed": 0.0})
                acc["steps"] += int(moved.sum())
                acc["tiles_drawn_changed"] += float(drawn.sum())
                acc["real_changed"] += float(changed.flatten(1).sum(1).float()[moved].sum())
                continue
            acc = sums.setdefault(label, {"steps": 0, "step_exact": 0.0, "frame_exact": 0.0, "changed": 0.0,
                                          "changed_right": 0.0, "spurious": 0.0})
            step_exact, frame_exact, spurious = code_exactness(z, after, changed)
            acc["steps"] += len(z)
            acc["step_exact"] += float(step_exact.sum())
            acc["frame_exact"] += float(frame_exact.sum())
            acc["changed"] += float(changed.sum())
            acc["changed_right"] += float((z == after)[changed].sum())  # pooled over every changed tile
            acc["spurious"] += float(spurious.sum())
    out = {}
    for label, a in sums.items():
        if "bytes" in a:
            out[label] = {"bytes_right": a["right"] / a["bytes"],
                          "stayed_bytes_right": a["stayed_right"] / max(1.0, a["stayed"]),
                          "changed_bytes_right": a["moved_right"] / max(1.0, a["bytes"] - a["stayed"])}
        elif "step_exact" in a:
            out[label] = {"steps": a["steps"], "step_exact": a["step_exact"] / a["steps"],
                          "frame_exact": a["frame_exact"] / a["steps"],
                          "changed_tiles_right": a["changed_right"] / max(1.0, a["changed"]),
                          "spurious_per_step": a["spurious"] / a["steps"]}
        else:
            out[label] = {"steps": a["steps"], "tiles_drawn_changed_per_step": a["tiles_drawn_changed"] / max(1, a["steps"]),
                          "real_changed_per_step": a["real_changed"] / max(1, a["steps"])}
    return out


def one_step_table(args, argv) -> dict:
    """evaluate.py --one-step: one_step_report for each --checkpoint on --dataset, as OUT.md and OUT.json."""
    torch.set_num_threads(1)
    command = "python evaluate.py " + " ".join(argv)
    lines = [f"# One step ahead, teacher-forced on {args.dataset}\n", f"`{command}`\n",
             f"{args.one_step} held-out steps spread evenly over the dataset; codes against the real next frame's "
             "tokenization (the tokenizer's own misses do not count). 'Told nothing changed': the state now given as "
             "the next state, on the steps whose state did change; a tile head that reads the state keeps the frame.\n",
             "| checkpoint | next state | every changed tile right | every tile right | changed tiles right | "
             "unchanged tiles drawn changed, a step |", "|---|---|---|---|---|---|"]
    told = ["", "| checkpoint | steps | tiles drawn changed when told nothing changed, a step | tiles the real "
            "frame changed on those steps, a step |", "|---|---|---|---|"]
    state = ["", "The state head's likeliest next bytes, as trained and with its logit adjustment:", "",
             "| checkpoint | state head | bytes right | bytes that stayed, kept | bytes that changed, right |",
             "|---|---|---|---|---|"]
    payload = {"command": command, "dataset": args.dataset, "rows": {}}
    for c in args.checkpoint:
        try:
            world = load_world(c)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        if not hasattr(world.dynamics, "addresses"):
            raise SystemExit(f"error: --one-step: {c} keeps no state bytes (a tile world's dynamics do)")
        report = one_step_report(world, args.dataset, args.one_step, args.cache_dir)
        payload["rows"][c] = report
        for label, r in report.items():
            if "bytes_right" in r:
                state.append(f"| {c} | {label.split(': ', 1)[1]} | {r['bytes_right']:.1%} | "
                             f"{r['stayed_bytes_right']:.1%} | {r['changed_bytes_right']:.1%} |")
            elif "step_exact" in r:
                lines.append(f"| {c} | {label} | {r['step_exact']:.1%} | {r['frame_exact']:.1%} | "
                             f"{r['changed_tiles_right']:.1%} | {r['spurious_per_step']:.2f} |")
            else:
                told.append(f"| {c} | {r['steps']} | {r['tiles_drawn_changed_per_step']:.2f} | "
                            f"{r['real_changed_per_step']:.2f} |")
    text = "\n".join(lines + told + state) + "\n"
    print(text)
    for path, body in ((args.out + ".md", text), (args.out + ".json", json.dumps(payload, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(body)
        os.replace(path + ".tmp", path)
    return payload


def probe_sprites_table(args, argv) -> dict:
    """evaluate.py --probe-sprites: each dataset's game (its collect.json) -> collect.sprite_agreement, as a table."""
    from collect import sprite_agreement
    rows = []
    for path in args.probe_sprites:
        info = os.path.join(path, "collect.json")
        if not os.path.isfile(info):
            raise SystemExit(f"error: --probe-sprites {path}: no collect.json (record it with collect.py)")
        with open(info) as f:
            game = json.load(f).get("game", "tetris")
        rows.append(sprite_agreement(path, game))
        print(json.dumps(rows[-1]), file=sys.stderr)
    command = "python evaluate.py " + " ".join(argv)
    lines = ["# The steered sprite read off the frames, against the RAM", "", f"`{command}`", "",
             "Each game's frame probe (games/GAME.py: its `sprite` after each frame) against the sprite's place read "
             "from the RAM (`GAMES[game].ram_sprite`), frame by frame over recorded episodes. Recall: of the frames "
             "where the RAM shows the sprite, the share where the probe sees it; precision: of the frames where the "
             "probe sees it, the share where the RAM shows it; distances where both do.", "",
             "| game | dataset | frames | both see it | probe only | RAM only | recall | precision | distance median / "
             "p90 px | within 4 px | within 8 px |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {GAMES[r['game']].title} | `{r['dataset']}` | {r['frames']} | {r['both_see']} | "
                     f"{r['probe_only']} | {r['ram_only']} | {r['recall']:.1%} | {r['precision']:.1%} | "
                     f"{r['distance_median_px']:.1f} / {r['distance_p90_px']:.1f} | {r['within_4px']:.1%} | "
                     f"{r['within_8px']:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for path, body in ((args.out + ".md", text), (args.out + ".json", json.dumps({"command": command, "rows": rows},
                                                                                 indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(body)
        os.replace(path + ".tmp", path)
    return {"rows": rows}


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr, counted in starts rolled out; off where stderr is not a terminal (logs, pipes,
    tests), as train.py's bars."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="start", disable=None, file=sys.stderr, leave=False)


def temperature_or_shipped(text: str) -> str:
    """--lockstep-temperatures: 'shipped' or a number from 0 to MAX_TEMPERATURE."""
    if text != "shipped":
        bounded(float, 0, MAX_TEMPERATURE)(text)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--game", default="tetris", choices=sorted(GAMES),
                   help="sets the defaults of --dataset (data/GAME_test) and --checkpoint (checkpoints/GAME)")
    p.add_argument("--dataset", default=None, help="held-out dataset (never used in training); default data/GAME_test")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="directory holding autoencoder.pt and dynamics.pt; repeat to compare models "
                        "(default checkpoints/GAME)")
    p.add_argument("--starts", type=bounded(int, 1), default=None,
                   help="number of seeded start frames (default 200; --lockstep: 3 starts, each run with every --sources)")
    p.add_argument("--horizons", type=bounded(int, 1), nargs="+", default=[1, 5, 10, 30, 60], help="steps ahead to score")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="seed for the start frames; same seed, same numbers")
    p.add_argument("--change-threshold", type=bounded(float, 0, 1, hi_open=True), default=0.1, help="a pixel changed if it moved more than this")
    p.add_argument("--out", default="results/eval", help="writes OUT.md, OUT.json and OUT_*.png")
    p.add_argument("--cache-dir", default=".cache", help="where decoded frames are cached")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--no-priors", action="store_true",
                   help="roll out without the checkpoints' data-derived priors (a tile world's value vocabulary)")
    p.add_argument("--samples", type=bounded(int, 0), default=5,
                   help="stochastic models: seeded samples per start for the mean-of-k and best-of-k rows (0 = none)")
    p.add_argument("--temperature", type=bounded(float, 0, MAX_TEMPERATURE), default=1.0,
                   help=f"stochastic models: temperature of those samples, 0 to {MAX_TEMPERATURE:g} (0: the likeliest, "
                        "deterministic; 1: the model's own probabilities; above 1: flatter, more surprise)")
    p.add_argument("--events", type=bounded(int, 0), default=300,
                   help="score one-step predictions on up to this many pairs per kind of event (gravity, soft drop, "
                        "shift, rotate, lock/clear/spawn), found from the dataset's RAM column; 0 = skip")
    p.add_argument("--play", action="store_true",
                   help="instead of rollouts: play a minute per row of PLAY_RUNS (bot seeds 0-2, random 0-3, the recorded "
                        "held-out buttons) with main.py and table what the frame probe reads (OUT.md/.json)")
    p.add_argument("--play-seconds", type=bounded(float, 0, lo_open=True), default=60.0, help="--play: seconds per row")
    p.add_argument("--play-args", action="append", default=None,
                   help="--play: more main.py flags, e.g. \"--gravity off\"; repeat to play each set (default: none)")
    p.add_argument("--tokenizers", nargs="+", default=None, metavar="AUTOENCODER",
                   help="instead of rollouts: compare tokenizers (autoencoder.pt files or directories holding one: the "
                        "patch codebook, a VQ-VAE) on --frames seeded held-out frames at native colour: tokens a frame, "
                        "exact 8×8 tiles, L1, PSNR, LPIPS, codebook use (OUT.md/.json)")
    p.add_argument("--frames", type=bounded(int, 1), default=200, help="--tokenizers: held-out frames to score")
    p.add_argument("--lockstep", action="store_true",
                   help="the dream beside the real game on the same buttons, from held-out starts: the steered sprite "
                        "(visible, position error), the game's counters (dream / real), exact tiles and changed-pixel "
                        "L1 at 1-1800 steps; copy-last-frame and each --checkpoint at its temperature and at 0 (make "
                        "evaluate-lockstep)")
    p.add_argument("--lockstep-steps", type=bounded(int, 1), default=1800, help="--lockstep: steps a run (30 a second)")
    p.add_argument("--lockstep-temperatures", nargs="+", default=["shipped", "0"], type=temperature_or_shipped,
                   help="--lockstep: the temperatures each stochastic checkpoint plays at, a row each ('shipped': "
                        "the checkpoint's own)")
    p.add_argument("--sources", nargs="+", default=list(LOCKSTEP_SOURCES), choices=LOCKSTEP_SOURCES,
                   help="--lockstep: button sources: the game's own player, seeded random buttons, a held-out "
                        "episode's recorded buttons")
    p.add_argument("--oracles", action="store_true",
                   help="--lockstep: add the first checkpoint given the real game's state bytes each step, and given "
                        "the real tiles each step (which half loses the sprite)")
    p.add_argument("--probe-sprites", nargs="+", default=None, metavar="DATASET",
                   help="check each recorded dataset's frame probe of the steered sprite against its RAM "
                        "(collect.sprite_agreement; the game from its collect.json) and write the table to OUT.md")
    p.add_argument("--step-exactness", type=bounded(int, 0), default=0, metavar="STEPS",
                   help="--lockstep: also score each tile world one step ahead, teacher-forced on the real game's "
                        "frames and state bytes over the first STEPS steps of each run: the share of steps on which "
                        "every tile that changes is right (against the real next frame's tokenization), with its own "
                        "next state and given the real one")
    p.add_argument("--adjust", type=bounded(float, 0, 2), nargs=2, default=None, metavar=("STATE", "TILES"),
                   help="--lockstep: also play each tile world with this logit adjustment, a row each, beside its "
                        "checkpoint's own (Config.adjust_state, adjust_tiles: the fractions of log(1 + "
                        "dyn_change_weight) added to the 'no change' logits; 1 undoes training's weighting of changes, "
                        "0 plays as trained)")
    p.add_argument("--one-step", type=bounded(int, 1), default=0, metavar="STEPS",
                   help="instead of rollouts: score each tile world one step ahead, teacher-forced on STEPS held-out "
                        "recorded steps of --dataset (its own next state, adjusted, the real one, and told nothing "
                        "changed), as OUT.md/.json")
    p.add_argument("--rom", default=None, help="--lockstep: the ROM file, if not the one in the game's pip package")
    p.add_argument("--autoencoder-figures", action="store_true",
                   help="also write OUT_reconstructions.png and OUT_edge_cases.png (needs the dataset's RAM column)")
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or [f"checkpoints/{args.game}"]
    args.dataset = args.dataset or f"data/{args.game}_test"
    args.horizons = sorted(set(args.horizons))
    return args


def tokenizer_table(args, argv) -> dict:
    """--tokenizers: each autoencoder's tokenizer_report on the same seeded held-out frames, as OUT.md and OUT.json."""
    from train import load_model, load_tiles, tokenizer_report
    try:
        cache = load_tiles(args.dataset, args.cache_dir)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    rows = np.sort(np.random.default_rng(args.seed).choice(len(cache.episodes), min(args.frames, len(cache.episodes)),
                                                           replace=False))
    frames = cache.frames(rows)
    lpips_model = load_lpips()
    results = {}
    for path in args.tokenizers:
        path = os.path.join(path, "autoencoder.pt") if os.path.isdir(path) else path
        try:
            model, ckpt = load_model(path, "autoencoder")
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        if not hasattr(model, "tokenize"):
            raise SystemExit(f"error: {path}: a {type(model).__name__} has no tokens (use a tile codebook or a VQ-VAE)")
        if tuple(model.frame_hw) != tuple(cache.frame_hw):
            raise SystemExit(f"error: {path}: draws {model.frame_hw[0]}×{model.frame_hw[1]} frames, "
                             f"{args.dataset} holds {cache.frame_hw[0]}×{cache.frame_hw[1]}")
        t0 = time.perf_counter()
        results[path] = tokenizer_report(model, frames, lpips_model) | {
            "kind": type(model).__name__, "ms_per_frame": 1000 * (time.perf_counter() - t0) / len(frames)}
        print(path, json.dumps(results[path]))
    lines = [f"# Tokenizers on {args.dataset}", "", f"`python evaluate.py {' '.join(argv)}`: {len(frames)} seeded "
             f"held-out frames (seed {args.seed}) at native colour, each tokenized and drawn back. Exact tiles: the "
             "share of 8×8 tiles with every pixel right. Codebook use: distinct codes on these frames / codebook size. "
             "ms a frame: tokenize, draw back and score, on this CPU.", "",
             "| tokenizer | kind | tokens a frame | exact tiles | L1 | PSNR (dB) | LPIPS | codebook use | ms a frame |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, r in results.items():
        lines.append(f"| `{path}` | {r['kind']} | {r['tokens_per_frame']} | {r['exact_tiles']:.4f} | {r['l1']:.4f} | "
                     f"{r['psnr_db']:.1f} | {r['lpips']:.4f} | {r['codebook_use']:.3f} ({r['codes_used']} of "
                     f"{r['codebook_size']}) | {r['ms_per_frame']:.1f} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".md.tmp", args.out + ".md")
    with open(args.out + ".json.tmp", "w") as f:
        json.dump({"command": "python evaluate.py " + " ".join(argv), "frames": len(frames), "results": results}, f,
                  indent=1)
    os.replace(args.out + ".json.tmp", args.out + ".json")
    print("\n".join(lines))
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    writable(args.out, "--out")  # an unwritable place stops here, before the rollouts
    if args.tokenizers:
        return tokenizer_table(args, argv)
    if args.play:
        return play_table(args)
    if args.one_step:
        return one_step_table(args, argv)
    if args.lockstep:
        return lockstep_table(args, argv)
    if args.probe_sprites:
        return probe_sprites_table(args, argv)
    args.starts = args.starts or 200
    torch.set_flush_denormal(True)  # subnormal numbers as zero: see train.main
    torch.manual_seed(args.seed)
    t0 = time.time()
    try:
        worlds = {os.path.normpath(c): load_world(c) for c in args.checkpoint}
        first = next(iter(worlds.values()))
        cache = load_frames(args.dataset, first.image_size, args.cache_dir)
        for world in worlds.values():  # a tile world reads the dataset's native tiles and state bytes
            world.attach(args.dataset, args.cache_dir, cache.episodes)
            if args.no_priors:
                world.drop_priors()
        starts = pick_starts(cache.episodes, max(args.horizons), args.starts, args.seed)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}")
    lpips_model = load_lpips("alex")
    real, start = real_frames(cache, starts, args.horizons)
    results, strips, diversity = {}, {}, {}
    copy_frame = np.repeat(start[None], len(args.horizons), axis=0)
    sampled = lambda w: args.samples if w.stochastic and args.samples > 0 else 0  # k samples count k times
    bar = progress_bar(sum(len(starts) * (1 + sampled(w)) for w in worlds.values()), "rollouts")
    for name, world in worlds.items():
        bar.set_postfix_str(os.path.basename(name))
        preds = evaluate_world(world, cache, starts, args.horizons, progress=bar)
        tag = f" ({name})" if len(worlds) > 1 else ""
        for method in ("model", "copy-last-latent", "autoencoder oracle"):
            results[method + tag] = {str(h): summarize(frame_metrics(preds[method][i], real[i], start,
                                                                     args.change_threshold, lpips_model))
                                     for i, h in enumerate(args.horizons)}
        strips["model" + tag] = preds["model"]
        if world.stochastic and args.samples > 0:
            samples = sample_world(world, cache, starts, args.horizons, args.samples, args.temperature, args.seed,
                                   progress=bar)
            per_h = [sample_metrics(samples[:, i], real[i], start, args.change_threshold, lpips_model)
                     for i in range(len(args.horizons))]
            for kind in ("mean of k", "best of k"):
                results[f"model T={args.temperature:g} {kind.replace('k', str(args.samples))}{tag}"] = {
                    str(h): per_h[i][kind] for i, h in enumerate(args.horizons)}
            diversity[name] = {str(h): per_h[i]["diversity"] for i, h in enumerate(args.horizons)}
            strips[f"model T={args.temperature:g} sample{tag}"] = samples[0]
    bar.close()
    results["copy-last-frame"] = {str(h): summarize(frame_metrics(copy_frame[i], real[i], start,
                                                                  args.change_threshold, lpips_model))
                                  for i, h in enumerate(args.horizons)}
    order = [m for m in results if m.startswith("model")] + [m for m in results if not m.startswith("model")]
    results = {m: results[m] for m in order}
    no_action = {name: no_action_report(world, cache, starts) for name, world in worlds.items()}
    events, hold = {}, {}
    if args.events > 0 and args.game != "tetris":
        print(f"events: skipped (the event kinds are Tetris's, read from its RAM; this is {args.game})")
    elif args.events > 0:
        try:
            ram = load_ram(args.dataset)
            events = event_report(worlds, cache, ram, args.events, args.seed, args.change_threshold)
            hold = hold_report(worlds, cache, ram, args.events, args.seed, args.change_threshold)
        except DatasetError as e:
            print(f"events: skipped ({e})")

    fps = {name: step_rate(world) for name, world in worlds.items()}
    params = {name: sum(p.numel() for m in (w.autoencoder, w.dynamics) for p in m.parameters())
              for name, w in worlds.items()}
    table = (f"## Families at a glance\n\nFPS: `World.step` and its frame's render at batch 1 on one thread, "
             f"from the shipped start (evaluate.step_rate; the player's full loop with the window: `main.py "
             f"--benchmark`).\n\n" + family_table(results, args.horizons, fps, params)
             + "\n\n## Every score\n\n" + markdown_table(results, args.horizons, args.change_threshold))
    command = "python evaluate.py " + " ".join(argv)
    header = (f"# Rollout evaluation\n\n`{command}`\n\n{len(starts)} seeded starts (seed {args.seed}) from "
              f"{len(np.unique(cache.episodes[starts]))} held-out episodes of `{args.dataset}` "
              f"(fingerprint {cache.fingerprint}), driven by the recorded buttons.\n\n")
    notes = "\n\n## No-action check (one step from the same starts)\n\n" + "\n".join(
        f"- {name}: " + "; ".join(f"{k} {v:.5f}" for k, v in r.items()) for name, r in no_action.items())
    tokenizers = {n: w.tokenizer_report for n, w in worlds.items() if getattr(w, "tokenizer_report", None)}
    if tokenizers:
        notes += "\n\n## Tile tokenizer on this dataset\n\n" + "\n".join(
            f"- {n}: {r['exact_tile_occurrences']:.2%} of tile occurrences drawn exactly ({r['exact_distinct_tiles']:.2%} "
            f"of {r['distinct_tiles']:,} distinct tiles; {r['codes_in_use']} codes); the rest get the nearest code"
            for n, r in tokenizers.items())
    if events:
        notes += "\n\n## By event\n\n" + event_table(events, args.change_threshold) + "\n"
    if hold:
        notes += "\n" + hold_table(hold) + "\n"
    if diversity:
        notes += (f"\n\n## Diversity between {args.samples} samples at temperature {args.temperature:g}\n\n"
                  "Mean L1 between pairs of samples from the same start and buttons, and the fraction of pixels "
                  f"on which some pair differs by more than {args.change_threshold}.\n\n"
                  "| model | " + " | ".join(f"@{h}" for h in args.horizons) + " |\n"
                  + "|---" * (1 + len(args.horizons)) + "|\n")
        for name, per_h in diversity.items():
            notes += f"| {name} | " + " | ".join(f"{per_h[str(h)]['pairwise_l1']:.4f} / "
                                                 f"{per_h[str(h)]['differing_pixel_frac']:.3f}"
                                                 for h in args.horizons) + " |\n"
    print(table + notes)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    payload = {"command": command, "dataset": args.dataset, "dataset_fingerprint": cache.fingerprint,
               "checkpoints": {n: {"autoencoder_hash": w.autoencoder_hash} for n, w in worlds.items()},
               "seed": args.seed, "starts": len(starts), "horizons": args.horizons,
               "change_threshold": args.change_threshold, "results": results, "no_action": no_action,
               "samples": args.samples, "temperature": args.temperature, "diversity": diversity, "events": events,
               "hold": hold, "tokenizer": tokenizers, "seconds": time.time() - t0,
               "fps_one_thread": fps, "parameters": params}  # (after the seconds: what varies between runs)
    for path, text in ((args.out + ".md", header + table + notes + "\n"),
                       (args.out + ".json", json.dumps(payload, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    if not args.no_plots:
        plot_curves(results, args.horizons, args.out + "_curves.png")
        plot_strips(strips | {"copy-last-latent": preds["copy-last-latent"]}, real, start, args.horizons,
                    args.out + "_rollouts.png")
    for name, world in worlds.items():
        if world.stochastic and args.samples > 0 and not args.no_plots:
            tag = f"_{os.path.basename(name)}" if len(worlds) > 1 else ""
            plot_samples(world, cache, starts[:: max(1, len(starts) // 3)][:3], [1, 10], 10, args.temperature,
                         args.seed, f"{args.out}{tag}_samples.png")
    if args.autoencoder_figures:
        autoencoder_figures(first, cache, args.dataset, args.out, args.seed)
    print(f"\nwrote {args.out}.md, {args.out}.json" + ("" if args.no_plots else " and plots")
          + f" in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
