"""Train and evaluate every setting of a sweep, then write one table and its plots to results/.

    python sweep.py configs/sweeps/perceptual.yaml
    python sweep.py configs/sweeps/capacity.yaml
    python sweep.py configs/sweeps/latent_noise.yaml

A sweep file names a base config, a training budget shared by every setting (same data, seed and
number of frames seen) and the settings, each a few Config overrides. Each setting trains the
autoencoder and the dynamics with train.py into runs/sweeps/<setting>/ (--runs) (resumable; a finished
setting with the same config is reused, so settings shared between sweeps train once), then is
scored on the held-out episodes:

- reconstruction: L1, SSIM and LPIPS of decode(encode(frame)) over the real frames of the rollouts,
  and the autoencoder oracle's L1 on the changed pixels at 10 steps;
- rollouts driven by the recorded buttons: whole-frame SSIM/L1 and changed-pixel L1/SSIM at each
  horizon, with copy-last-frame beside them;
- parameters, model-only play FPS on this machine and, where the sweep asks, frame statistics over
  a long headless run (the same as `main.py --stats`).

Writes results/sweep_<name>.md, .json and _*.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import yaml

import evaluate
import main as play
import train

SWEEP_KEYS = {"title", "base", "budget", "settings", "notes", "stability_frames", "stability_actions", "x",
              "autoencoder", "samples", "temperature"}


def load_sweep(path: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such sweep file (see configs/sweeps/)")
    with open(path) as f:
        sweep = yaml.safe_load(f) or {}
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise SystemExit(f"error: {path}: unknown key(s) {unknown}; known: {sorted(SWEEP_KEYS)}")
    if not sweep.get("settings"):
        raise SystemExit(f"error: {path}: no settings")
    names = [s.get("name") for s in sweep["settings"]]
    if None in names or len(set(names)) != len(names):
        raise SystemExit(f"error: {path}: every setting needs a unique name, got {names}")
    return sweep


def setting_config(sweep: dict, setting: dict, dataset: str, runs: str) -> train.Config:
    overrides = dict(sweep.get("budget", {}))
    overrides |= {k: v for k, v in setting.items() if k not in ("name", "label", "x")}
    overrides |= {"dataset": dataset, "name": setting["name"], "out": os.path.join(runs, setting["name"]),
                  "export": "", "stage": "dynamics" if sweep.get("autoencoder") else "all"}
    return train.load_config(sweep["base"], overrides)


def train_setting(cfg: train.Config, autoencoder: str | None = None) -> None:
    """Train unless a finished run of exactly this config is there. With `autoencoder` (a trained
    autoencoder.pt), every setting shares that frozen autoencoder and trains only its dynamics."""
    marker = os.path.join(cfg.out, "setting.json")
    want = dataclasses.asdict(cfg) | ({"autoencoder": autoencoder} if autoencoder else {})
    want = json.loads(json.dumps(want))  # as setting.json stores it (a tuple comes back as a list)
    if os.path.exists(marker) and os.path.exists(os.path.join(cfg.out, "dynamics.pt")):
        with open(marker) as f:
            if json.load(f) == want:
                print(f"{cfg.name}: trained already ({cfg.out})")
                return
    args = []
    for k, v in dataclasses.asdict(cfg).items():
        args += ["--" + k.replace("_", "-"), str(v)]
    if autoencoder:
        if not os.path.isfile(autoencoder):
            raise SystemExit(f"error: sweep autoencoder {autoencoder}: no such file")
        os.makedirs(cfg.out, exist_ok=True)
        shutil.copyfile(autoencoder, os.path.join(cfg.out, "autoencoder.pt"))
    t0 = time.time()
    train.main(args + ["--spot-check", ""])
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "train_seconds.json"), "w") as f:
        json.dump({"seconds": time.time() - t0}, f)
    with open(marker + ".tmp", "w") as f:
        json.dump(want, f, indent=1)
    os.replace(marker + ".tmp", marker)


def stability(world: train.WorldModel, frames: int, actions_path: str, reference: dict | None) -> dict:
    """Frame statistics over a long headless run with the given buttons, as main.py --stats measures them."""
    env = play.NeuralGame(world)
    source = play.action_source(actions_path, 0)
    stats = play.FrameStats(frames)
    frame = env.reset()
    for t in range(frames):
        frame = env.step(source(t))
        stats(t, frame)
    # main.py's numbers, with the brightness and contrast series (one value per second) for the plots
    return stats.summary(reference) | {"contrast": stats.std[::30], "brightness": stats.mean[::30],
                                       "samples": {str(k): v.tolist() for k, v in stats.samples.items()}}


def score_setting(cfg: train.Config, args, cache, starts, real, start, lpips_model, reference) -> dict:
    path = os.path.join(cfg.out, "sweep_eval.json")
    key = {"config": dataclasses.asdict(cfg), "dataset": cache.fingerprint, "starts": len(starts), "seed": args.seed,
           "horizons": args.horizons, "threshold": args.change_threshold,
           "stability_frames": args.stability_frames, "stability_actions": args.stability_actions,
           "samples": args.samples, "temperature": args.temperature}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("key") == key:
            return old["scores"]
    world = train.WorldModel.load(cfg.out)
    preds = evaluate.evaluate_world(world, cache, starts, args.horizons)
    scores = {"horizons": {}}
    for i, h in enumerate(args.horizons):
        scores["horizons"][str(h)] = {
            m: evaluate.summarize(evaluate.frame_metrics(preds[m][i], real[i], start, args.change_threshold,
                                                         lpips_model))
            for m in ("model", "copy-last-latent", "autoencoder oracle")}
    oracle = preds["autoencoder oracle"].reshape(-1, *real.shape[-2:])
    recon = evaluate.summarize(evaluate.frame_metrics(oracle, real.reshape(oracle.shape), np.repeat(
        start[None], len(args.horizons), 0).reshape(oracle.shape), args.change_threshold, lpips_model))
    scores["reconstruction"] = {k: recon[k] for k in ("l1", "ssim", "lpips")}
    scores["autoencoder_parameters"] = sum(p.numel() for p in world.autoencoder.parameters())
    scores["dynamics_parameters"] = sum(p.numel() for p in world.dynamics.parameters())
    scores["latent_size"] = int(np.prod(world.latent_shape))
    scores["play_fps"] = play.model_fps(play.NeuralGame(world), 300)[0]
    scores["val_l1"] = train.read_checkpoint(os.path.join(cfg.out, "autoencoder.pt"), "autoencoder").get("val_l1")
    if world.stochastic and args.samples:
        samples = evaluate.sample_world(world, cache, starts, args.horizons, args.samples, args.temperature, args.seed)
        scores["diversity"] = {}
        for i, h in enumerate(args.horizons):
            m = evaluate.sample_metrics(samples[:, i], real[i], start, args.change_threshold, lpips_model)
            scores["horizons"][str(h)] |= {"mean of k": m["mean of k"], "best of k": m["best of k"]}
            scores["diversity"][str(h)] = m["diversity"]
        with open(os.path.join(cfg.out, "dynamics_log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        best = train.read_checkpoint(os.path.join(cfg.out, "dynamics.pt"), "dynamics").get("best_epoch") or len(log)
        scores["kl"] = log[best - 1].get("kl")
    seconds = os.path.join(cfg.out, "train_seconds.json")
    scores["train_seconds"] = json.load(open(seconds))["seconds"] if os.path.exists(seconds) else None
    if args.stability_frames:
        scores["stability"] = stability(world, args.stability_frames, args.stability_actions, reference)
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "scores": scores}, f)
    os.replace(path + ".tmp", path)
    return scores


# ----------------------------------------------------------------------------- reports
def fmt(summary: dict, key: str, digits: int = 4) -> str:
    v = summary.get(key)
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def markdown(sweep: dict, scores: dict, copy_frame: dict, horizons: list[int], threshold: float) -> str:
    labels = {s["name"]: s.get("label", s["name"]) for s in sweep["settings"]}
    lines = ["| setting | latent | AE params | val L1 | recon L1 | recon SSIM | recon LPIPS | oracle changed L1 @10 | "
             + " | ".join(f"SSIM @{h}" for h in horizons) + " | "
             + " | ".join(f"changed L1 @{h}" for h in horizons) + " | play FPS |",
             "|---" * (9 + 2 * len(horizons)) + "|"]
    for name, sc in scores.items():
        hz = sc["horizons"]
        lines.append(f"| {labels[name]} | {sc['latent_size']} | {sc['autoencoder_parameters']:,} | {sc['val_l1']:.4f} | "
                     f"{fmt(sc['reconstruction'], 'l1')} | {fmt(sc['reconstruction'], 'ssim')} | "
                     f"{fmt(sc['reconstruction'], 'lpips')} | {fmt(hz.get('10', {}).get('autoencoder oracle', {}), 'changed_l1', 3)} | "
                     + " | ".join(fmt(hz[str(h)]["model"], "ssim") for h in horizons) + " | "
                     + " | ".join(fmt(hz[str(h)]["model"], "changed_l1", 3) for h in horizons)
                     + f" | {sc['play_fps']:.0f} |")
        for kind in ("mean of k", "best of k"):
            if kind in hz[str(horizons[0])]:
                tag = f"{labels[name]}, T={sweep.get('temperature', 1.0):g} {kind.replace('k', str(sweep.get('samples', 5)))}"
                lines.append(f"| {tag} | | | | | | | | " + " | ".join(fmt(hz[str(h)][kind], "ssim") for h in horizons)
                             + " | " + " | ".join(fmt(hz[str(h)][kind], "changed_l1", 3) for h in horizons) + " | |")
    lines.append(f"| copy-last-frame (baseline) | | | | | | | | "
                 + " | ".join(fmt(copy_frame[str(h)], "ssim") for h in horizons) + " | "
                 + " | ".join(fmt(copy_frame[str(h)], "changed_l1", 3) for h in horizons) + " | |")
    text = "\n".join(lines)
    text += (f"\n\nChanged pixels: where the real future frame differs from the start frame by more than {threshold}. "
             "Rollout columns are the model driven by the recorded buttons. 'val L1' is the autoencoder's whole-frame "
             "validation L1 on the training split; 'recon' columns score decode(encode(x)) on the held-out frames.")
    if any("diversity" in sc for sc in scores.values()):
        text += ("\n\n### Stochastic settings: KL and diversity\n\nKL: the training KL (nats, summed over the noise "
                 "code) at the kept epoch. Diversity: mean L1 between pairs of samples from the same start and buttons "
                 "/ fraction of pixels on which some pair differs by more than the threshold.\n\n| setting | KL | "
                 + " | ".join(f"diversity @{h}" for h in horizons) + " |\n" + "|---" * (2 + len(horizons)) + "|\n")
        for name, sc in scores.items():
            if "diversity" in sc:
                text += (f"| {labels[name]} | {sc['kl']:.3g} | " + " | ".join(
                    f"{sc['diversity'][str(h)]['pairwise_l1']:.4f} / {sc['diversity'][str(h)]['differing_pixel_frac']:.3f}"
                    for h in horizons) + " |\n")
    if any("stability" in sc for sc in scores.values()):
        text += ("\n\n### Stability in headless play\n\n| setting | NaN frames | contrast in real range, first minute | "
                 "contrast in real range, whole run | brightness in real range, whole run |\n|---|---|---|---|---|\n")
        for name, sc in scores.items():
            st = sc.get("stability")
            if st:
                text += (f"| {labels[name]} | {st['nan_frames']} | {st.get('contrast_inside_real_range_first_minute', 0):.0%} | "
                         f"{st.get('contrast_inside_real_range', 0):.0%} | {st.get('brightness_inside_real_range', 0):.0%} |\n")
    return text


def plot(sweep: dict, scores: dict, horizons: list[int], prefix: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = {s["name"]: s.get("label", s["name"]) for s in sweep["settings"]}
    xs = {s["name"]: s.get("x") for s in sweep["settings"]}
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, sc in scores.items():
        label = labels[name] + (f" ({xs[name]})" if xs.get(name) is not None else "")
        ax[0].plot(horizons, [sc["horizons"][str(h)]["model"]["changed_l1"] for h in horizons], "o-", label=label)
        ax[1].plot(horizons, [sc["horizons"][str(h)]["model"]["ssim"] for h in horizons], "o-", label=label)
    for a, title in ((ax[0], "rollout L1 on changed pixels (lower is better)"), (ax[1], "rollout whole-frame SSIM")):
        a.set_xlabel("steps ahead")
        a.set_title(title, fontsize=10)
        a.legend(fontsize=7)
    names = list(scores)
    if all(xs[n] is not None for n in names) and sweep.get("x"):
        groups = {}
        for n in names:
            groups.setdefault(labels[n], []).append(n)
        for group, members in groups.items():
            members = sorted(members, key=lambda n: xs[n])
            ax[2].plot([xs[n] for n in members], [scores[n]["reconstruction"]["ssim"] for n in members], "o-",
                       label=f"{group}: recon SSIM")
            ax[2].plot([xs[n] for n in members], [1 - scores[n]["horizons"]["10"]["autoencoder oracle"]["changed_l1"]
                                                  for n in members], "s--", label=f"{group}: 1 - oracle changed L1 @10")
        ax[2].set_xscale("log", base=2)
        ax[2].set_xlabel(sweep["x"])
        ax[2].legend(fontsize=7)
        ax[2].set_title("reconstruction against capacity", fontsize=10)
    else:
        recon = [scores[n]["reconstruction"]["ssim"] for n in names]
        ax[2].bar(range(len(names)), recon)
        ax[2].set_xticks(range(len(names)), [labels[n] for n in names], rotation=20, fontsize=7)
        ax[2].set_ylim(min(recon) - 0.01, 1)
        ax[2].set_title("reconstruction SSIM (held-out frames)", fontsize=10)
    fig.tight_layout()
    train.save_figure(fig, prefix + "_plot.png")
    plt.close(fig)
    if any("stability" in sc for sc in scores.values()):
        fig, ax = plt.subplots(1, 1, figsize=(9, 3.4))
        for name, sc in scores.items():
            st = sc["stability"]
            ax.plot(np.arange(len(st["contrast"])), st["contrast"], lw=0.8, label=labels[name])
        ref = next(iter(scores.values()))["stability"].get("reference")
        if ref:
            ax.axhspan(*ref["contrast"], color="g", alpha=0.15, label="real frames (0.5-99.5 percentile)")
        ax.set_xlabel("seconds of headless play (recorded buttons)")
        ax.set_title("contrast (frame std) over time", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        train.save_figure(fig, prefix + "_stability.png")
        plt.close(fig)
        samples = [(labels[n], s, np.array(f)) for n, sc in scores.items() for s, f in sc["stability"]["samples"].items()]
        times = sorted({s for _, s, _ in samples}, key=float)
        fig, axes = plt.subplots(len(scores), len(times), figsize=(2.4 * len(times), 2.5 * len(scores)), squeeze=False)
        for r, name in enumerate(scores):
            for c, s in enumerate(times):
                frame = np.array(scores[name]["stability"]["samples"].get(s, np.zeros((2, 2))))
                axes[r, c].imshow(frame, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                axes[r, c].set_title(f"{labels[name]}: {s} s", fontsize=8)
                axes[r, c].axis("off")
        fig.tight_layout()
        train.save_figure(fig, prefix + "_stability_frames.png")
        plt.close(fig)


def reconstruction_grid(sweep: dict, configs: dict, cache, rows: np.ndarray, prefix: str):
    """The same held-out frames reconstructed by every setting, side by side, at display scale, with a
    zoom on the well and the score box."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = {s["name"]: s.get("label", s["name"]) for s in sweep["settings"]}
    real = torch.from_numpy(cache.frames[rows]).float().div(255)[:, None]
    columns = [("real frame", real)]
    for s in sweep["settings"]:
        ae, _ = train.load_model(os.path.join(configs[s["name"]].out, "autoencoder.pt"), "autoencoder")
        with torch.no_grad():
            columns.append((labels[s["name"]], ae(real)))
    fig, axes = plt.subplots(2 * len(rows), len(columns), figsize=(3 * len(columns), 3 * 2 * len(rows)), squeeze=False)
    for c, (title, frames) in enumerate(columns):
        for r in range(len(rows)):
            img = frames[r, 0].clamp(0, 1).numpy()
            axes[2 * r, c].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[2 * r + 1, c].imshow(img[8:72, 28:80], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[2 * r, c].set_title(title, fontsize=9)
            axes[2 * r + 1, c].set_title("zoom: well and score", fontsize=7)
            for a in (axes[2 * r, c], axes[2 * r + 1, c]):
                a.axis("off")
    fig.tight_layout()
    train.save_figure(fig, prefix + "_reconstructions.png")
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a sweep file (configs/sweeps/*.yaml)")
    p.add_argument("--dataset", default="data/tetris_train", help="training dataset, the same for every setting")
    p.add_argument("--test", default="data/tetris_test", help="held-out dataset for the scores")
    p.add_argument("--starts", type=int, default=100, help="seeded rollout starts")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 10, 30, 60])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--change-threshold", type=float, default=0.1)
    p.add_argument("--out", default=None, help="output prefix (default results/sweep_<file name>)")
    p.add_argument("--runs", default=os.path.join("runs", "sweeps"), help="where each setting trains (RUNS/<setting>)")
    p.add_argument("--only", nargs="+", default=None, help="train and score only these settings (no report)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    sweep = load_sweep(args.sweep)
    name = os.path.splitext(os.path.basename(args.sweep))[0]
    prefix = args.out or os.path.join("results", f"sweep_{name}")
    args.stability_frames = int(sweep.get("stability_frames", 0))
    args.stability_actions = sweep.get("stability_actions", "configs/actions_heldout_episode.npy")
    configs = {s["name"]: setting_config(sweep, s, args.dataset, args.runs) for s in sweep["settings"]}
    selected = [n for n in configs if args.only is None or n in args.only]
    args.samples = int(sweep.get("samples", 5))
    args.temperature = float(sweep.get("temperature", 1.0))
    for n in selected:
        train_setting(configs[n], sweep.get("autoencoder"))
    try:
        cache = train.load_frames(args.test, configs[selected[0]].image_size, configs[selected[0]].cache_dir)
    except train.DatasetError as e:
        raise SystemExit(f"error: {e}")
    starts = evaluate.pick_starts(cache.episodes, max(args.horizons), args.starts, args.seed)
    real, start = evaluate.real_frames(cache, starts, args.horizons)
    lpips_model = train.load_lpips("alex")
    reference = play.reference_ranges(args.dataset, configs[selected[0]].image_size) if args.stability_frames else None
    scores = {}
    for n in selected:
        print(f"scoring {n} ...")
        scores[n] = score_setting(configs[n], args, cache, starts, real, start, lpips_model, reference)
    if args.only:
        return scores
    copy_frame = {str(h): evaluate.summarize(evaluate.frame_metrics(start, real[i], start, args.change_threshold,
                                                                    lpips_model))
                  for i, h in enumerate(args.horizons)}
    table = markdown(sweep, scores, copy_frame, args.horizons, args.change_threshold)
    command = "python sweep.py " + " ".join(argv)
    budget = ", ".join(f"{k} {v}" for k, v in sweep.get("budget", {}).items())
    header = (f"# {sweep.get('title', name)}\n\n`{command}`\n\nBase config `{sweep['base']}`; every setting trained on "
              f"`{args.dataset}` with seed {configs[selected[0]].seed} and the same budget ({budget}); scored on "
              f"{len(starts)} seeded starts of `{args.test}` (fingerprint {cache.fingerprint}).\n\n")
    notes = f"\n\n{sweep['notes'].strip()}\n" if sweep.get("notes") else "\n"
    print(table)
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    payload = {"command": command, "sweep": sweep, "dataset": args.dataset, "test": args.test,
               "test_fingerprint": cache.fingerprint, "starts": len(starts), "horizons": args.horizons,
               "change_threshold": args.change_threshold, "copy_last_frame": copy_frame,
               "settings": {n: {"config": dataclasses.asdict(configs[n]),
                                "scores": {k: v for k, v in sc.items() if k != "stability"}
                                | ({"stability": {k: v for k, v in sc["stability"].items() if k != "samples"}}
                                   if "stability" in sc else {})} for n, sc in scores.items()}}
    for path, text in ((prefix + ".md", header + table + notes), (prefix + ".json", json.dumps(payload, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    plot(sweep, scores, args.horizons, prefix)
    if not sweep.get("autoencoder"):  # settings that share one autoencoder reconstruct alike
        rows = evaluate.pick_starts(cache.episodes, 1, 3, args.seed + 1)
        reconstruction_grid(sweep, configs, cache, rows, prefix)
    print(f"wrote {prefix}.md, {prefix}.json and {prefix}_*.png")


if __name__ == "__main__":
    main()
