"""Play a retro game inside the neural network: NES Tetris, Super Mario Bros. or Ms. Pac-Man.

    python main.py                                   # window, 30 FPS, Tetris's tile world (checkpoints/tetris)
    python main.py --game smb                         # Super Mario Bros. (checkpoints/smb); --game mspacman
    python main.py --checkpoint checkpoints/tetris_latent   # Tetris's 80×80 latent model of phases 2 and 3
    python main.py --headless --frames 300 --actions random --record results/play.gif
    python main.py --benchmark                        # model-only and full-loop FPS on this machine
    python main.py --headless --frames 18000 --actions random --stats results/stability   # 10 minutes

Keys: arrows = D-pad, X = A, Z = B, Enter = START, Right Shift = SELECT, R = reset, Esc = quit.
Each frame: z_{t+1} = z_t + dynamics(last latents, buttons) -> decode -> upscale -> display. Where no
display is available it says so and runs headless.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from collect import ACTION_NAMES, GAMES, PROBES, FrameBot, RandomPolicy, bounded, keys_to_action
from train import CheckpointError, World, load_frames, load_world, save_figure, to_gray80

HELP = "arrows  X=A  Z=B  Enter=START  RShift=SELECT  R=reset  -/= temperature  Esc=quit"
BAR = 44  # the status bar under the game


def window_size(frame: np.ndarray) -> tuple[int, int]:
    """The game's pixels scaled by a whole number, at least 480 wide (the NES's 256×240 doubled: 512×480; an Atari
    frame, 160×210, tripled: 480×630); an 80×80 grayscale model's frames at the NES's aspect, 512×480."""
    if frame.ndim == 2:
        return 512, 480
    scale = max(2, -(-480 // frame.shape[1]))
    return frame.shape[1] * scale, frame.shape[0] * scale

# ----------------------------------------------------------------------------- the network as a game
class NeuralGame:
    """The world model behind a game-like interface: reset() and step(buttons) return uint8 frames."""

    def __init__(self, world: World, start: str = "play", compile_model: bool = False,
                 temperature: float | None = None, title: str = "game"):
        self.world, self.start_name, self.title = world, start, title
        # how far a stochastic model strays from its central future: 0 = deterministic, 1 = a full sample
        self.temperature = world.default_temperature if temperature is None else temperature
        if compile_model:
            world.dynamics = torch.compile(world.dynamics)
            if hasattr(world.autoencoder, "decoder"):  # a tile world decodes by lookup
                world.autoencoder.decoder = torch.compile(world.autoencoder.decoder)
        self.state = None
        self.frame = None  # the frame shown last: all that a player (or --actions bot) sees

    def reset(self) -> np.ndarray:
        self.state = self.world.start(self.start_name)
        return self._show(self.state[0][:, -1])

    @torch.no_grad()
    def step(self, action: np.ndarray) -> np.ndarray:
        self.state, z = self.world.step(self.state, torch.as_tensor(action, dtype=torch.float32)[None],
                                        self.temperature)
        return self._show(z)

    def _show(self, z) -> np.ndarray:
        self.frame = self.world.show(z)  # (H, W) grayscale or, for a tile world, (240, 256, 3) RGB; uint8
        return self.frame


# ----------------------------------------------------------------------------- action sources
def action_source(spec: str | None, seed: int, env: NeuralGame | None = None, game: str = "tetris"):
    """None (keyboard), 'random' (seeded random buttons), 'bot' (collect.py's placement bot, FrameBot: it reads the
    board and the falling piece off the frames the dream shows, never the model's state, so it plays any model that
    shows native 240×256 RGB frames, as a tile world does; it clears lines) or a file of 8-int rows (.npy, .json,
    .txt)."""
    if spec is None:
        return None
    if spec == "random":
        policy = RandomPolicy(np.random.default_rng(seed))
        return lambda t: policy(None)
    if spec == "bot":
        if game != "tetris":
            raise SystemExit(f"error: --actions bot: the frame-reading bot plays Tetris only, not {game} "
                             f"(use random, the keyboard or a file of buttons)")
        if env is None:
            raise SystemExit("error: --actions bot: the bot reads the frames a model shows, native 240×256 RGB frames "
                             "as a tile world's (try --checkpoint checkpoints/tetris)")
        frame = env.frame if env.frame is not None else env.reset()
        if frame.shape != (240, 256, 3):
            raise SystemExit(f"error: --actions bot: the bot reads the board off native 240×256 RGB frames, and this "
                             f"model shows {'x'.join(map(str, frame.shape))} "
                             f"{'grayscale ' if frame.ndim == 2 else ''}frames (try --checkpoint checkpoints/tetris)")
        bot = FrameBot(np.random.default_rng(seed))
        return lambda t: bot(env.frame)  # the frame on screen when the buttons are chosen
    actions = read_actions(spec)
    return lambda t: actions[t % len(actions)]


def read_actions(path: str) -> np.ndarray:
    """A file of button rows -> (T, 8) uint8: a .npy array, a .json list of lists, or text with one row of
    8 values per line (spaces or commas between them, # comments and blank lines skipped). Each value is 0 or 1,
    in the order A, B, SELECT, START, UP, DOWN, LEFT, RIGHT. Anything else is a one-line SystemExit naming the
    file and the row (or line) at fault."""
    want = f"8 values of 0 or 1 ({' '.join(ACTION_NAMES)})"
    fail = lambda msg: SystemExit(f"error: --actions {path}: {msg}")
    if not os.path.isfile(path):
        raise fail("no such file (use 'random', 'bot' or a .npy/.json/.txt of rows of 8 values of 0 or 1)")
    try:
        if path.endswith(".npy"):
            try:
                rows = np.load(path, allow_pickle=False)
            except (ValueError, EOFError) as e:  # not .npy data, an object array, an empty file
                raise fail(f"cannot be loaded as a numpy .npy array ({str(e).splitlines()[0] if str(e) else 'empty'})"
                           ) from None
            if rows.ndim != 2 or rows.shape[1] != 8:
                raise fail(f"need an array of shape (rows, 8) holding {want}, got shape {rows.shape}")
            where = "row"
        elif path.endswith(".json"):
            with open(path) as f:
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise fail(f"not valid JSON ({e})") from None
            if not isinstance(rows, list):
                raise fail(f"need a JSON list of rows, each a list of {want}")
            where = "row"
        else:
            with open(path) as f:
                lines = [(n, line.split("#", 1)[0].replace(",", " ").split()) for n, line in enumerate(f, 1)]
            rows = [tokens for _, tokens in lines if tokens]
            numbers = [n for n, tokens in lines if tokens]
            where = "line"
    except UnicodeDecodeError:
        raise fail(f"not a text file of {want} per line (binary data; use .npy for a numpy array)") from None
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    if len(rows) == 0:
        raise fail(f"no rows of buttons (need at least one row of {want})")
    try:  # the common case at numpy speed; the loop below only runs to say what is wrong
        arr = np.array(rows, dtype=np.float64)
        if arr.shape == (len(rows), 8) and np.isin(arr, (0, 1)).all():
            return arr.astype(np.uint8)
    except (TypeError, ValueError):
        pass
    show = lambda x: (repr(x) if len(repr(x)) <= 60 else repr(x)[:57] + "...")
    for i, row in enumerate(rows):
        at = f"line {numbers[i]}" if where == "line" else f"row {i}"
        got = " ".join(row) if where == "line" else show(row.tolist() if isinstance(row, np.ndarray) else row)
        if not isinstance(row, (list, tuple, np.ndarray)) or len(row) != 8:
            raise fail(f"{at}: need {want}, got {got}")
        for j, v in enumerate(row):
            try:
                ok = float(v) in (0.0, 1.0)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                v = v.item() if isinstance(v, np.generic) else v
                raise fail(f"{at}: need {want}, got {v if where == 'line' else show(v)} for {ACTION_NAMES[j]}")
    raise fail(f"need rows of {want}")  # not reached: the loop names the bad row


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("win32", "darwin")


# ----------------------------------------------------------------------------- the pygame loop
class Game:
    """A plain pygame loop: knows frames, keys and clocks, nothing about how the model was trained."""

    def __init__(self, env: NeuralGame, headless: bool, fps: int):
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame
        self.pg = pygame
        pygame.init()
        self.size = window_size(env.frame if env.frame is not None else env.reset())
        self.screen = pygame.display.set_mode((self.size[0], self.size[1] + BAR))
        pygame.display.set_caption(f"Neural {env.title}")
        self.font = pygame.font.Font(None, 20)
        self.env, self.fps, self.headless = env, fps, headless
        self.clock = pygame.time.Clock()

    def draw(self, frame: np.ndarray, status: str):
        pg = self.pg
        rgb = frame.swapaxes(0, 1) if frame.ndim == 3 else np.repeat(frame.T[:, :, None], 3, axis=2)  # (W, H, 3)
        width, height = self.size
        surf = pg.transform.scale(pg.surfarray.make_surface(rgb), (width, height))
        self.screen.blit(surf, (0, 0))
        self.screen.fill((20, 20, 20), (0, height, width, BAR))
        self.screen.blit(self.font.render(status, True, (230, 230, 120)), (6, height + 4))
        self.screen.blit(self.font.render(HELP, True, (200, 200, 200)), (6, height + 24))
        pg.display.flip()

    def run(self, frames: int | None, actions=None, record=None, on_frame=None) -> dict:
        pg = self.pg
        frame = self.env.reset()
        t, fps, shown, t0 = 0, 0.0, [], time.perf_counter()
        while frames is None or t < frames:
            reset = False
            for event in pg.event.get():
                if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                    frames = t
                elif event.type == pg.KEYDOWN and event.key == pg.K_r:
                    reset = True
                elif event.type == pg.KEYDOWN and event.key in (pg.K_MINUS, pg.K_EQUALS):
                    step = 0.1 if event.key == pg.K_EQUALS else -0.1
                    self.env.temperature = round(min(1.0, max(0.0, self.env.temperature + step)), 2)
            if frames is not None and t >= frames:
                break
            action = actions(t) if actions else keys_to_action(pg.key.get_pressed(), pg)
            frame = self.env.reset() if reset else self.env.step(action)
            pressed = " ".join(n for n, b in zip(ACTION_NAMES, action) if b) or "-"
            temp = f"   temperature {self.env.temperature:.1f}" if self.env.world.stochastic else ""
            self.draw(frame, f"{fps:5.1f} FPS   frame {t}{temp}   buttons: {pressed}")
            if record is not None:
                record.append(pg.surfarray.array3d(self.screen).swapaxes(0, 1)[::2, ::2].copy())
            if on_frame:
                on_frame(t, frame)
            if self.fps:
                self.clock.tick(self.fps)
            else:
                self.clock.tick()
            fps = self.clock.get_fps()
            t += 1
        elapsed = time.perf_counter() - t0
        pg.quit()
        return {"frames": t, "seconds": elapsed, "fps": t / max(elapsed, 1e-9)}


def write_gif(frames: list, path: str, fps: int = 30):
    from PIL import Image
    if not path.lower().endswith(".gif"):
        raise SystemExit(f"error: --record {path}: only .gif is supported")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=64) for f in frames]
    tmp = f"{path}.tmp-{os.getpid()}.gif"
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- stability and speed
class FrameStats:
    """Per-frame brightness, contrast and NaNs over a long headless run, with sampled frames."""

    def __init__(self, frames: int, sample_seconds=(0, 60, 600), steps_per_second: int = 30):
        self.mean, self.std, self.change, self.samples, self.last = [], [], [], {}, None
        self.steps_per_second, self.each_second = steps_per_second, []  # one frame a second, for realism
        # the last sample lands on the last frame played (frame 18000 of a 10-minute run is t = 17999)
        self.sample_at = {min(int(s * steps_per_second), frames - 1): s for s in sample_seconds
                          if s * steps_per_second <= frames}

    def __call__(self, t: int, frame: np.ndarray):
        f = frame.astype(np.float64) / 255
        self.mean.append(float(f.mean()))
        self.std.append(float(f.std()))
        # mean |pixel change| since the previous frame: a dream that froze (mode collapse) goes to 0
        self.change.append(float(np.abs(f - self.last).mean()) if self.last is not None else 0.0)
        self.last = f
        if t in self.sample_at:
            self.samples[self.sample_at[t]] = frame.copy()
        if t % self.steps_per_second == 0:
            self.each_second.append(frame.copy())

    def summary(self, reference: dict | None) -> dict:
        """The numbers behind report(): ranges, NaNs, frame-to-frame change per minute, and the share of
        frames inside the real frames' ranges (whole run and first minute)."""
        m, s = np.array(self.mean), np.array(self.std)
        out = {"frames": len(m), "nan_frames": int(np.isnan(m).sum()),
               "brightness": [float(m.min()), float(m.max())], "contrast": [float(s.min()), float(s.max())],
               "reference": {k: v for k, v in reference.items() if k != "bank"} if reference else None}
        change = np.array(self.change)
        minute, ten = 60 * self.steps_per_second, 10 * self.steps_per_second
        minutes = [change[i:i + minute] for i in range(0, len(change), minute)]
        out["frame_change_per_minute"] = [float(c.mean()) for c in minutes]  # mean |pixel change| per step
        out["frames_changing_per_minute"] = [float((c > 1e-3).mean()) for c in minutes]
        windows = [change[i:i + ten] for i in range(0, len(change) - ten + 1, ten)]  # whole 10 s windows
        out["frames_changing_per_10_seconds"] = [float((c > 1e-3).mean()) for c in windows]
        if reference and "frames_changing_10s_stillest" in reference:
            # a dream that stalls (nothing falls, nothing moves) looks real frame by frame: this catches it
            still = [i for i, c in enumerate(out["frames_changing_per_10_seconds"])
                     if c < reference["frames_changing_10s_stillest"]]
            out["first_stalled_10_seconds"] = 10 * still[0] if still else None
        if reference:
            inside = lambda x, r: float(((x >= r[0]) & (x <= r[1])).mean())
            for key, series in (("brightness", m), ("contrast", s)):
                out[f"{key}_inside_real_range"] = inside(series, reference[key])
                out[f"{key}_inside_real_range_first_minute"] = inside(series[:minute], reference[key])
            d = self.realism(reference)
            if d is not None:
                limit = reference["nearest_real_l1"][1]
                out["nearest_real_l1_per_minute"] = [float(d[i:i + 60].mean()) for i in range(0, len(d), 60)]
                out["seconds_as_real_as_real_frames"] = float((d <= limit).mean())
                out["seconds_as_real_as_real_frames_first_minute"] = float((d[:60] <= limit).mean())
                over = np.flatnonzero(d > limit)
                out["first_second_less_real_than_real_frames"] = int(over[0]) if len(over) else None
        return out

    def realism(self, reference: dict | None) -> np.ndarray | None:
        """Per second of play: L1 to the nearest real frame of the reference dataset (a second or two for 10 min)."""
        if not reference or "bank" not in reference or not self.each_second:
            return None
        return nearest_real_l1(np.stack(self.each_second), reference["bank"])

    def report(self, prefix: str, reference: dict | None) -> dict:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        secs = np.arange(len(self.mean)) / self.steps_per_second
        realism = self.realism(reference)
        fig, ax = plt.subplots(1, 3 if realism is not None else 2, figsize=(16 if realism is not None else 11, 3.4))
        for a, series, name in ((ax[0], self.mean, "brightness (frame mean)"), (ax[1], self.std, "contrast (frame std)")):
            a.plot(secs, series, lw=0.6, label="neural play")
            if reference:
                lo, hi = reference[name.split()[0]]
                a.axhspan(lo, hi, color="g", alpha=0.15, label="real frames (0.5-99.5 percentile)")
            a.set_xlabel(f"seconds of play ({self.steps_per_second} frames/s)")
            a.set_title(name, fontsize=10)
            a.legend(fontsize=7)
        if realism is not None:
            lo, hi = reference["nearest_real_l1"]
            ax[2].plot(np.arange(len(realism)), realism, lw=0.8, label="neural play, one frame a second")
            ax[2].axhspan(0, hi, color="g", alpha=0.15, label=f"real frames of other episodes (median {lo:.3f}, 99th pct)")
            ax[2].set_xlabel(f"seconds of play ({self.steps_per_second} frames/s)")
            ax[2].set_title("L1 to the nearest real frame (lower = more like the real game)", fontsize=10)
            ax[2].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, prefix + "_stats.png")
        plt.close(fig)
        if self.samples:
            fig, axes = plt.subplots(1, len(self.samples), figsize=(3 * len(self.samples), 3.2))
            for a, (s, frame) in zip(np.atleast_1d(axes), sorted(self.samples.items())):
                a.imshow(frame, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                a.set_title(f"{s} s", fontsize=10)
                a.axis("off")
            fig.tight_layout()
            save_figure(fig, prefix + "_frames.png")
            plt.close(fig)
        return self.summary(reference)


class ShownProbe:
    """The game's frame probe (collect.PROBES) over the frames shown, timed: what the dream's game did, read off its
    pixels alone (never the model's state). A model whose frames it cannot read (the 80×80 grayscale models) leaves
    it off, with the reason."""

    def __init__(self, game: str = "tetris"):
        self.probe, self.reason, self.seconds = PROBES[game](), None, 0.0
        self.shape = tuple(GAMES[game].frame_shape)

    def __call__(self, frame: np.ndarray):
        if self.reason is not None:
            return
        if frame.shape != self.shape:
            self.reason = (f"the probe reads native {self.shape[0]}×{self.shape[1]} RGB frames; this model shows "
                           f"{'x'.join(map(str, frame.shape))} {'grayscale' if frame.ndim == 2 else 'frames'}")
            return
        t0 = time.perf_counter()
        self.probe(frame)
        self.seconds += time.perf_counter() - t0

    def summary(self, real_seconds_share: float | None) -> dict | None:
        if self.reason is not None or self.probe.t == 0:
            return None
        return self.probe.summary() | {"real_seconds_share": real_seconds_share,
                                       "probe_ms_per_frame": round(1000 * self.seconds / self.probe.t, 3)}


class ContactSheet:
    """Every `every`-th frame as shown (a tile world's native colour frames), written as one grid of numbered
    thumbnails: a whole run at a glance, for flaws that no summary statistic names (a counter that stops, a
    border tile gone)."""

    def __init__(self, every: int, steps_per_second: int = 30, columns: int = 6):
        self.every, self.steps_per_second, self.columns, self.frames = every, steps_per_second, columns, []

    def __call__(self, t: int, frame: np.ndarray):
        if t % self.every == 0:
            self.frames.append((t, frame.copy()))

    def write(self, path: str):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = -(-len(self.frames) // self.columns)
        fig, axes = plt.subplots(rows, self.columns, figsize=(2.6 * self.columns, 2.6 * rows), squeeze=False)
        for a in axes.flat:
            a.axis("off")
        for a, (t, frame) in zip(axes.flat, self.frames):
            a.imshow(frame, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            a.set_title(f"{t / self.steps_per_second:.0f} s (frame {t})", fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)


def nearest_real_l1(frames: np.ndarray, bank: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, H, W) and (M, H, W) uint8 -> (N,) mean |pixel difference| in [0, 1] to the closest frame of bank."""
    ref = torch.from_numpy(bank.reshape(len(bank), -1)).float().div_(255)
    out = [torch.cdist(torch.from_numpy(frames[s:s + chunk].reshape(-1, ref.shape[1])).float().div_(255), ref, p=1)
           .min(1).values for s in range(0, len(frames), chunk)]
    return (torch.cat(out) / ref.shape[1]).numpy()


def reference_ranges(dataset: str, image_size: int, cache_dir: str = ".cache", steps_per_second: int = 30
                     ) -> dict | None:
    """What real frames look like, from a recorded dataset if there is one: brightness and contrast ranges
    (0.5-99.5 percentiles), a bank of real frames (every 5th frame of the even episodes) and how close real
    frames of the odd episodes come to that bank (median and 99th percentile of their nearest-frame L1):
    a played frame farther from every real frame than that no longer looks like the game."""
    if not dataset or not os.path.exists(dataset):
        return None
    cache = load_frames(dataset, image_size, cache_dir)
    frames = cache.frames[::10].astype(np.float64) / 255
    m, s = frames.mean(axis=(1, 2)), frames.std(axis=(1, 2))
    out = {"brightness": [float(np.percentile(m, 0.5)), float(np.percentile(m, 99.5))],
           "contrast": [float(np.percentile(s, 0.5)), float(np.percentile(s, 99.5))]}
    episodes = np.unique(cache.episodes)
    if len(episodes) > 1:
        even = np.isin(cache.episodes, episodes[::2])
        bank = cache.frames[np.flatnonzero(even)[::5]]
        odd = np.flatnonzero(~even)
        probe = cache.frames[np.sort(np.random.default_rng(0).choice(odd, min(300, len(odd)), replace=False))]
        d = nearest_real_l1(probe, bank)
        out |= {"bank": bank, "nearest_real_l1": [float(np.median(d)), float(np.percentile(d, 99))]}
    # how lively the real game is: mean |pixel change| per step, and the share of steps that change (> 1e-3),
    # beside which frame_change_per_minute tells a dream that froze from one that plays
    same = np.flatnonzero(cache.episodes[1:] == cache.episodes[:-1])[::10]
    change = np.abs(cache.frames[same + 1].astype(np.float32) - cache.frames[same]).mean(axis=(1, 2)) / 255
    out |= {"frame_change": float(change.mean()), "frames_changing": float((change > 1e-3).mean())}
    # how still the real game ever gets: the share of changing steps in every 10 s window (every 30th start)
    # inside an episode; a dream's 10 s window stiller than the stillest 1% of them has stalled
    steps = np.flatnonzero(cache.episodes[1:] == cache.episodes[:-1])
    moving = np.zeros(len(cache.episodes), dtype=bool)
    for s in range(0, len(steps), 4096):
        i = steps[s:s + 4096]
        moving[i + 1] = np.abs(cache.frames[i + 1].astype(np.int16) - cache.frames[i]).mean(axis=(1, 2)) > 255e-3
    ten = 10 * steps_per_second
    shares = [moving[i:i + ten].mean() for i in range(0, len(moving) - ten + 1, steps_per_second)
              if cache.episodes[i] == cache.episodes[i + ten - 1]]
    if shares:
        out["frames_changing_10s_stillest"] = float(np.percentile(shares, 1))
    return out


def model_fps(env: NeuralGame, frames: int) -> tuple[float, np.ndarray]:
    """Model-only FPS (dynamics step + decode) over seeded random buttons, after 20 warm-up steps
    (and compilation, if on). -> (FPS, the buttons pressed after warm-up)."""
    env.reset()
    actions = (np.random.default_rng(0).random((frames + 20, 8)) < 0.1).astype(np.uint8)
    for a in actions[:20]:
        env.step(a)
    t0 = time.perf_counter()
    for a in actions[20:]:
        env.step(a)
    return frames / (time.perf_counter() - t0), actions[20:]


def benchmark(env: NeuralGame, args) -> dict:
    """Model-only FPS (dynamics step + decode) and full-loop FPS (plus upscale and blit), uncapped."""
    fps, actions = model_fps(env, args.frames)
    loop = Game(env, headless=True, fps=0).run(args.frames, actions=lambda t: actions[t])
    return {"model_only_fps": fps, "full_loop_fps": loop["fps"], "frames": args.frames,
            "torch_threads": torch.get_num_threads(), "device": str(env.world.device)}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="tetris", choices=sorted(GAMES),
                   help="which game's shipped model to play: checkpoints/GAME, with that game's frame probe for --stats")
    p.add_argument("--checkpoint", default=None,
                   help="directory with autoencoder.pt and dynamics.pt (default: checkpoints/GAME, the game's tile "
                        "world in native colour; checkpoints/tetris_latent is Tetris's 80×80 latent model)")
    p.add_argument("--start", default="play", help="start context shipped with the checkpoint")
    p.add_argument("--headless", action="store_true", help="no window (SDL dummy driver)")
    p.add_argument("--frames", type=bounded(int, 1), default=None, help="stop after this many frames (default: until Esc; 300 headless)")
    p.add_argument("--actions", default=None, help="'random', 'bot' (a placement bot that reads the board off the frames "
                        "shown, never the model's state, and clears lines; it needs native RGB frames, as a tile world's) "
                        "or a .npy/.json/.txt of 8-int rows (default: keyboard; random headless)")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="seed for --actions random and for sampling")
    p.add_argument("--temperature", type=float, default=None,
                   help="stochastic dynamics: 0 = deterministic .. 1 = full samples (default: the checkpoint's; "
                        "keys - and = change it while playing)")
    p.add_argument("--flow-steps", type=int, default=None,
                   help="flow dynamics: Euler steps per frame (default: the checkpoint's); fewer play faster")
    p.add_argument("--fps", type=bounded(int, 0), default=None,
                   help="frame cap; 0 = as fast as possible (default: the real game's steps per second in a window "
                        "(30 for the NES games, 20 for Ms. Pac-Man), 0 headless)")
    p.add_argument("--record", default=None, help="write what was shown to this .gif")
    p.add_argument("--stats", default=None, metavar="PREFIX",
                   help="write frame statistics over time (PREFIX_stats.png/.json: brightness, contrast, NaNs, and each "
                        "second's L1 to the nearest real frame), frames at 0/60/600 s, PREFIX_sheet.png (see "
                        "--sheet-seconds) and the game's frame probe (what the frames shown did)")
    p.add_argument("--sheet-seconds", type=float, default=5.0,
                   help="with --stats, also write PREFIX_sheet.png: the frame shown every this many seconds, as a grid")
    p.add_argument("--reference", default=None,
                   help="dataset whose real frames give the --stats ranges and the bank of real frames "
                        "(default: data/GAME_train, where it was recorded)")
    p.add_argument("--priors", default="on", choices=["on", "off"],
                   help="the checkpoint's data-derived, game-agnostic priors (a tile world's value vocabulary: the "
                        "values each state byte took in training); off = play without them, to measure them")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile: auto = on CUDA only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--benchmark", action="store_true", help="print model-only and full-loop FPS and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.checkpoint = args.checkpoint or os.path.join("checkpoints", args.game)
    args.reference = f"data/{args.game}_train" if args.reference is None else args.reference  # "": none
    torch.set_flush_denormal(True)  # subnormal numbers as zero: see train.main
    if not args.headless and not args.benchmark and not display_available():
        print("main.py: no display found (DISPLAY is not set): running headless instead; "
              "pass --record out.gif to see what was played")
        args.headless = True
    if args.headless or args.benchmark:
        args.frames = args.frames or 300
        args.actions = args.actions or "random"
    if args.fps is None:
        args.fps = 0 if args.headless else round(GAMES[args.game].steps_per_second)
    if args.flow_steps is not None and args.flow_steps < 1:
        raise SystemExit(f"error: --flow-steps {args.flow_steps}: must be >= 1")
    if args.temperature is not None and not 0 <= args.temperature <= 1:
        raise SystemExit(f"error: --temperature {args.temperature}: must be between 0 and 1")
    if args.stats and not args.sheet_seconds > 0:
        raise SystemExit(f"error: --sheet-seconds {args.sheet_seconds}: must be > 0")
    if args.record and not args.record.lower().endswith(".gif"):
        raise SystemExit(f"error: --record {args.record}: only .gif is supported")
    if args.actions not in (None, "random", "bot"):
        read_actions(args.actions)  # a bad file stops here, before the model loads or a window opens
    try:
        world = load_world(args.checkpoint, device=args.device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if args.priors == "off" and not world.drop_priors():
        raise SystemExit(f"error: --priors off: {args.checkpoint} has no priors to drop")
    if args.flow_steps is not None:
        if not hasattr(world.dynamics, "steps"):
            raise SystemExit(f"error: --flow-steps: {args.checkpoint} has {type(world.dynamics).__name__}, "
                             f"not flow dynamics")
        world.dynamics.steps = args.flow_steps
    compile_model = args.compile == "on" or (args.compile == "auto" and args.device.startswith("cuda"))
    try:
        torch.manual_seed(args.seed)
        env = NeuralGame(world, args.start, compile_model, args.temperature, GAMES[args.game].title)
    except KeyError as e:
        raise SystemExit(f"error: --start: {e.args[0]}")
    if args.benchmark:
        result = benchmark(env, args)
        print(json.dumps(result, indent=1))
        return result
    per_second = round(GAMES[args.game].steps_per_second)  # steps of the real game per second
    stats = FrameStats(args.frames or 10**9, steps_per_second=per_second) if args.stats else None
    sheet = ContactSheet(max(1, round(args.sheet_seconds * per_second)), per_second) if stats else None
    probe = ShownProbe(args.game) if stats else None
    recorded = [] if args.record else None
    on_frame = None
    if stats:
        def on_frame(t, frame):  # a colour frame is scored as the 80×80 grayscale pipeline sees it
            stats(t, to_gray80(frame[None])[0] if frame.ndim == 3 else frame)
            sheet(t, frame)
            probe(frame)  # the game read off the frame shown
    actions = action_source(args.actions, args.seed, env, args.game)  # a bot that cannot read the frames stops here
    result = Game(env, args.headless, args.fps).run(args.frames, actions, recorded, on_frame)
    temp = f", temperature {env.temperature:g}" if world.stochastic else ""
    print(f"played {result['frames']} frames in {result['seconds']:.1f} s ({result['fps']:.1f} FPS, "
          f"{'headless' if args.headless else 'window'}{temp})")
    if recorded:
        write_gif(recorded, args.record)
        print(f"wrote {args.record}")
    if stats:
        reference = reference_ranges(args.reference, world.image_size, steps_per_second=per_second)
        report = stats.report(args.stats, reference)
        sheet.write(args.stats + "_sheet.png")
        given = sys.argv[1:] if argv is None else argv
        report |= {"fps": result["fps"], "command": "python main.py " + " ".join(given)}
        # and read off its frames alone (collect.TetrisProbe): pieces locked, rows cleared, top-out, stalls
        report["probe"] = probe.summary(report.get("seconds_as_real_as_real_frames"))
        if report["probe"] is None:
            report["probe_skipped"] = probe.reason or "no frames played"
        with open(args.stats + "_stats.json", "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report, indent=1))
    return result


if __name__ == "__main__":
    main()
