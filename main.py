"""Play a retro game inside the neural network: NES Tetris, Super Mario Bros. or Ms. Pac-Man.

    python main.py                                   # a window: pick a game in the menu (checkpoints/GAME)
    python main.py --game tetris --real              # Tetris, the real game (cynes) beside the dream, with a meter
    python main.py --game smb                         # Super Mario Bros. (checkpoints/smb); --game mspacman
    python main.py --checkpoint checkpoints/tetris_latent   # Tetris's 80×80 latent model of phases 2 and 3
    python main.py --headless --frames 300 --actions random --record results/play.gif   # or .mp4
    python main.py --game smb --benchmark             # FPS with the box idle and with one core kept busy
    python main.py --headless --frames 18000 --actions random --stats results/stability   # 10 minutes

Keys: arrows = D-pad, X = A, Z = B, Enter = START, Right Shift = SELECT; P pause, N one step while paused, R reset,
- and = temperature, Tab the real game beside the dream, Y re-sync the dream to the real game, S screenshot, H help,
M the game menu, Esc quit. Each frame: the dynamics predict the next frame's codes from the last frames and the
buttons -> decode -> upscale -> display. Where no display is available it says so and runs headless (Tetris unless
--game says otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from collect import (ACTION_NAMES, GAMES, PROBES, FrameBot, RandomPolicy, bounded, find_rom, into_play,
                     keys_to_action, make_emulator)
from train import (CheckpointError, World, changed_mean, load_frames, load_world, save_figure, to_gray80, writable,
                   MAX_TEMPERATURE)

# the keys beside the game's buttons (collect.keymap): pygame's K_ name -> (control, key as shown, what it does)
CONTROLS = {"p": ("pause", "P", "pause / play"), "n": ("step", "N", "one step while paused"),
            "r": ("reset", "R", "reset"), "MINUS": ("colder", "-", "temperature down"),
            "EQUALS": ("warmer", "=", "temperature up"), "TAB": ("real", "Tab", "the real game beside the dream"),
            "y": ("sync", "Y", "re-sync: the real frames and RAM into the dream"), "s": ("screenshot", "S", "screenshot"),
            "h": ("help", "H", "this help"), "m": ("menu", "M", "back to the game menu"), "ESCAPE": ("quit", "Esc", "quit")}
PAD_HELP = [("arrows", "D-pad"), ("X  Z", "A  B"), ("Enter", "START"), ("Right Shift", "SELECT")]
HELP = "H help   P pause   R reset   -/= temperature   Tab real game   M menu   Esc quit"
BAR = 44  # the status bar under the game
SHOTS = "screenshots"  # where the screenshot key writes (--shots)


def window_size(frame: np.ndarray) -> tuple[int, int]:
    """The game's pixels scaled by a whole number, at least 480 wide (the NES's 256×240 doubled: 512×480; an Atari
    frame, 160×210, tripled: 480×630); an 80×80 grayscale model's frames at the NES's aspect, 512×480."""
    if frame.ndim == 2:
        return 512, 480
    scale = max(2, -(-480 // frame.shape[1]))
    return frame.shape[1] * scale, frame.shape[0] * scale


def shipped_games(root: str = "checkpoints") -> list[str]:
    """The games of collect.py's registry that ship a model: root/GAME holding autoencoder.pt and dynamics.pt, in
    the registry's order. What the menu lists."""
    return [g for g in GAMES if all(os.path.isfile(os.path.join(root, g, f)) for f in ("autoencoder.pt", "dynamics.pt"))]


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

    def sync(self, frames: np.ndarray, actions: np.ndarray, ram: bytes | None) -> np.ndarray:
        """Start the dream from real frames (K, H, W, 3), the buttons that led into them and the RAM at the last
        (World.encode_context): the frame shown is the last real frame as the model encodes it."""
        self.state = self.world.encode_context(frames, actions, ram)
        return self._show(self.state[0][:, -1])

    @torch.no_grad()
    def step(self, action: np.ndarray) -> np.ndarray:
        self.state, z = self.world.step(self.state, torch.as_tensor(action, dtype=torch.float32)[None],
                                        self.temperature)
        return self._show(z)

    def _show(self, z) -> np.ndarray:
        self.frame = self.world.show(z)  # (H, W) grayscale or, for a tile world, (H, W, 3) native RGB; uint8
        return self.frame


class RealGame:
    """The real game beside the dream: collect.py's emulator for the game (cynes or ale-py), taken into play by
    collect.into_play with this seed (the start collect.py records from, seeded the same way), then stepped with the
    same buttons at the game's frame skip. Keeps the last `history` frames, the buttons that led into them and the RAM,
    for re-syncing the dream. No ROM: a one-line SystemExit naming what to install."""

    def __init__(self, game: str, seed: int = 0, history: int = 4, rom: str | None = None):
        self.game, self.seed, self.history = game, seed, history
        self.rom = find_rom(game, rom)
        self.frame_skip = GAMES[game].frame_skip
        self.emu = self.frame = None

    def reset(self) -> np.ndarray:
        self.emu = make_emulator(self.game, self.rom)
        self.frame = into_play(self.emu, self.game, self.seed)
        self.frames, self.actions = [self.frame], [np.zeros(8, np.uint8)]
        return self.frame

    def step(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, np.uint8)
        self.frame = self.emu.step(action, self.frame_skip)
        self.frames, self.actions = (self.frames + [self.frame])[-self.history:], (self.actions + [action])[-self.history:]
        return self.frame

    def context(self) -> tuple[np.ndarray, np.ndarray, bytes]:
        """The last frames (K, H, W, 3), the buttons that led into each (K, 8) and the RAM now."""
        return np.stack(self.frames), np.stack(self.actions), self.emu.ram()


class Meter:
    """How far the dream is from the real game, frame by frame: whole-frame L1 (native RGB, 0-1; the 80×80 grayscale
    frames when the model shows those) and changed-pixel L1 (80×80 grayscale, over the pixels where the real frame
    differs from the real frame at the last sync by more than 0.1: evaluate.py's measure of rollouts)."""
    threshold = 0.1

    def __init__(self):
        self.start, self.l1, self.changed_l1, self.steps = None, float("nan"), float("nan"), 0
        self.history = []  # (steps since sync, L1, changed-pixel L1) of every step

    def sync(self, real: np.ndarray):
        self.start = self.gray(real)
        self.l1 = self.changed_l1 = float("nan")
        self.steps = 0

    @staticmethod
    def gray(frame: np.ndarray) -> np.ndarray:
        return (to_gray80(frame[None])[0] if frame.ndim == 3 else frame).astype(np.float32) / 255

    def __call__(self, dream: np.ndarray, real: np.ndarray) -> tuple[float, float]:
        g_dream, g_real = self.gray(dream), self.gray(real)
        if dream.shape == real.shape:
            self.l1 = float(np.abs(dream.astype(np.float32) - real).mean() / 255)
        else:
            self.l1 = float(np.abs(g_dream - g_real).mean())
        if self.start is None:
            self.start = g_real
        self.changed_l1 = float(changed_mean(np.abs(g_dream - g_real)[None], g_real[None], self.start[None],
                                             self.threshold)[0])
        self.steps += 1
        self.history.append((self.steps, self.l1, self.changed_l1))
        return self.l1, self.changed_l1

    def summary(self, at=(1, 10, 30, 100, 300, 1000)) -> str:
        """L1 and changed-pixel L1 at these steps after the start, until the first re-sync or reset."""
        run = []
        for k, l1, changed in self.history:
            if k == 1 and run:  # a re-sync or a reset started another run
                break
            run.append((l1, changed))
        return "   ".join(f"@{k}: {run[k - 1][0]:.4f} / {run[k - 1][1]:.3f}" for k in at if k <= len(run))

    def text(self) -> str:
        changed = "-" if np.isnan(self.changed_l1) else f"{self.changed_l1:.3f}"
        whole = "-" if np.isnan(self.l1) else f"{self.l1:.4f}"
        return f"dream vs real: L1 {whole}   changed-pixel L1 {changed}   ({self.steps} steps since sync)"


class Session:
    """One game's play apart from the window: the dream (NeuralGame), the real game when it is shown (RealGame) and
    the player's controls (CONTROLS). control(name) changes the state; advance(buttons) plays one frame unless paused.
    Driven by Game in a window, and by the tests without one."""

    def __init__(self, env: NeuralGame, game: str, real: bool = False, seed: int = 0, rom: str | None = None,
                 governor: "ThreadGovernor | None" = None):
        self.env, self.game, self.seed, self.rom, self.governor = env, game, seed, rom, governor
        self.paused = self.help = self.pending_step = False
        self.real, self.meter, self.message = None, Meter(), ""
        if real:
            self.real = RealGame(game, seed, env.world.history, rom)
        self.reset()

    def reset(self):
        """Back to the start: the checkpoint's start context, or with the real game on, the real game's first frame
        of play (collect.into_play) for both."""
        self.t = 0
        if self.real is None:
            self.dream = self.env.reset()
            return
        self.real.reset()
        self.sync()

    def sync(self):
        """Encode the real game's last frames and RAM into the dream, as DIAMOND switches to the real game."""
        self.dream = self.env.sync(*self.real.context())
        self.meter.sync(self.real.frame)

    @property
    def frames(self) -> list[tuple[str, np.ndarray]]:
        """What is shown, left to right."""
        return [("dream", self.dream)] + ([("real", self.real.frame)] if self.real is not None else [])

    def control(self, name: str) -> str | None:
        """Apply a control (CONTROLS' names); -> the ones the window handles (screenshot, menu, quit), else None."""
        if name == "pause":
            self.paused = not self.paused
        elif name == "step":
            self.pending_step = self.paused
        elif name == "reset":
            self.reset()
        elif name in ("colder", "warmer"):
            step = 0.1 if name == "warmer" else -0.1
            self.env.temperature = round(min(MAX_TEMPERATURE, max(0.0, self.env.temperature + step)), 2)
        elif name == "real":
            self.real = None if self.real is not None else RealGame(self.game, self.seed, self.env.world.history,
                                                                    self.rom)
            self.reset()
        elif name == "sync":
            if self.real is None:
                self.message = "re-sync needs the real game: Tab shows it"
            else:
                self.sync()
        elif name == "help":
            self.help = not self.help
        return name if name in ("screenshot", "menu", "quit") else None

    def advance(self, action: np.ndarray) -> bool:
        """Play one frame with these buttons, in the dream and in the real game, unless paused (a pending single step
        goes through). -> whether it played."""
        if self.paused and not self.pending_step:
            return False
        self.pending_step = False
        t0 = time.perf_counter()
        self.dream = self.env.step(action)
        if self.governor is not None:
            self.governor(time.perf_counter() - t0)
        if self.real is not None:
            self.meter(self.dream, self.real.step(action))
        self.t += 1
        return True

    def status(self, fps: float, action: np.ndarray) -> list[str]:
        pressed = " ".join(n for n, b in zip(ACTION_NAMES, action) if b) or "-"
        temp = f"   temperature {self.env.temperature:.1f}" if self.env.world.stochastic else ""
        state = "   PAUSED (N steps)" if self.paused else ""
        lines = [f"{fps:5.1f} FPS   frame {self.t}{temp}   buttons: {pressed}{state}"]
        if self.real is not None:
            lines.append(self.meter.text())
        fresh = self.message and time.monotonic() - self.message_at.get(self.message, 0) < 4
        lines.append(self.message if fresh else HELP)  # a message shows for 4 s
        return lines

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, text: str):
        self._message, self.message_at = text, {text: time.monotonic()}


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


# ----------------------------------------------------------------------------- the pygame window
class Game:
    """A plain pygame window: knows frames, keys and clocks, nothing about how the model was trained. menu() lists the
    shipped games; run() plays a Session, the dream and (when on) the real game side by side."""

    def __init__(self, headless: bool, fps: int, title: str = "Neural emulator", shots: str = SHOTS):
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame
        self.pg = pygame
        pygame.init()
        pygame.display.set_caption(title)
        self.font, self.big = pygame.font.Font(None, 20), pygame.font.Font(None, 30)
        self.fps, self.headless, self.shots = fps, headless, shots
        self.clock = pygame.time.Clock()
        self.screen, self.size = None, None
        self.controls = {getattr(pygame, f"K_{k}"): name for k, (name, _, _) in CONTROLS.items()}

    def layout(self, frames: list[tuple[str, np.ndarray]], bar: int) -> tuple[int, int]:
        panels = [window_size(f) for _, f in frames]
        size = (sum(w for w, _ in panels), max(h for _, h in panels) + bar)
        if size != self.size:  # a new game, or the real game shown or hidden
            self.screen, self.size = self.pg.display.set_mode(size), size
        return size

    def draw(self, frames: list[tuple[str, np.ndarray]], lines: list[str], help_overlay: bool = False):
        pg = self.pg
        bar = BAR + 20 * max(0, len(lines) - 2)
        width, height = self.layout(frames, bar)
        x = 0
        for label, frame in frames:
            rgb = frame.swapaxes(0, 1) if frame.ndim == 3 else np.repeat(frame.T[:, :, None], 3, axis=2)  # (W, H, 3)
            w, h = window_size(frame)
            self.screen.blit(pg.transform.scale(pg.surfarray.make_surface(rgb), (w, h)), (x, 0))
            if len(frames) > 1:
                self.screen.blit(self.font.render(label, True, (255, 255, 0), (0, 0, 0)), (x + 4, 4))
            x += w
        self.screen.fill((20, 20, 20), (0, height - bar, width, bar))
        for i, line in enumerate(lines):
            colour = (230, 230, 120) if i == 0 else (200, 200, 200)
            self.screen.blit(self.font.render(line, True, colour), (6, height - bar + 4 + 20 * i))
        if help_overlay:
            self.help_overlay()
        pg.display.flip()

    def help_overlay(self):
        pg = self.pg
        rows = PAD_HELP + [(key, what) for _, key, what in CONTROLS.values()]
        box = pg.Surface((430, 28 + 20 * len(rows)), pg.SRCALPHA)
        box.fill((0, 0, 0, 210))
        box.blit(self.font.render("keys", True, (255, 255, 0)), (12, 8))
        for i, (key, what) in enumerate(rows):
            box.blit(self.font.render(key, True, (255, 255, 255)), (12, 28 + 20 * i))
            box.blit(self.font.render(what, True, (200, 200, 200)), (110, 28 + 20 * i))
        self.screen.blit(box, (20, 20))

    def screenshot(self, name: str) -> str:
        os.makedirs(self.shots, exist_ok=True)
        path = os.path.join(self.shots, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png")
        self.pg.image.save(self.screen, path)
        return path

    def menu(self, games: list[str], thumbnails: dict, keys=None) -> str | None:
        """The game menu: a card per shipped game with a thumbnail of its start frame; arrows and Enter (or the
        game's number) pick one, Esc quits -> the game's name or None. `keys` (a list of pygame keys) stands in for
        the keyboard in tests."""
        pg = self.pg
        card, gap, top = 256, 16, 60
        thumbs = {g: pg.transform.smoothscale(pg.surfarray.make_surface(
            t.swapaxes(0, 1) if t.ndim == 3 else np.repeat(t.T[:, :, None], 3, axis=2)), (card, card * t.shape[0] // t.shape[1]))
            for g, t in thumbnails.items()}
        height = top + max(s.get_height() for s in thumbs.values()) + 80
        self.screen = pg.display.set_mode((max(640, len(games) * (card + gap) + gap), height))
        self.size = None  # the game sizes the window again
        chosen = 0
        while True:
            self.screen.fill((12, 12, 24))
            self.screen.blit(self.big.render("Neural emulator: pick a game", True, (255, 255, 255)), (gap, 18))
            for i, g in enumerate(games):
                x = gap + i * (card + gap)
                if i == chosen:
                    pg.draw.rect(self.screen, (255, 220, 0), (x - 4, top - 4, card + 8, thumbs[g].get_height() + 8), 3)
                self.screen.blit(thumbs[g], (x, top))
                self.screen.blit(self.font.render(f"{i + 1}  {GAMES[g].title}", True, (255, 255, 255)),
                                 (x, top + thumbs[g].get_height() + 10))
            self.screen.blit(self.font.render("arrows + Enter, or the number, to play; M in a game comes back here; "
                                              "S screenshot; Esc quits", True, (180, 180, 180)),
                             (gap, self.screen.get_height() - 24))
            pg.display.flip()
            if keys is None:  # the keyboard (a window's close button reads as Esc)
                pressed = [e.key if e.type == pg.KEYDOWN else None for e in pg.event.get()
                           if e.type in (pg.KEYDOWN, pg.QUIT)]
            elif keys:
                pressed = [keys.pop(0)]
            else:
                return None  # the scripted keys ran out
            for key in pressed:
                if key is None or key == pg.K_ESCAPE:
                    return None
                if key in (pg.K_LEFT, pg.K_UP):
                    chosen = (chosen - 1) % len(games)
                elif key in (pg.K_RIGHT, pg.K_DOWN):
                    chosen = (chosen + 1) % len(games)
                elif key in (pg.K_RETURN, pg.K_SPACE):
                    return games[chosen]
                elif key == pg.K_s:
                    print(f"wrote {self.screenshot('menu')}")
                elif pg.K_1 <= key < pg.K_1 + len(games):
                    return games[key - pg.K_1]
            self.clock.tick(30)

    def run(self, session: Session, frames: int | None, actions=None, record=None, on_frame=None) -> dict:
        """Play until Esc, M (-> "next": "menu") or `frames` frames shown. on_frame(t, frame) sees each new dream
        frame; record(surface array) each frame shown."""
        pg = self.pg
        shown, fps, t0, after = 0, 0.0, time.perf_counter(), "quit"
        action = np.zeros(8, np.uint8)
        while frames is None or shown < frames:
            wanted = None
            for event in pg.event.get():
                if event.type == pg.QUIT:
                    wanted = "quit"
                elif event.type == pg.KEYDOWN and event.key in self.controls:
                    try:
                        wanted = session.control(self.controls[event.key]) or wanted
                    except SystemExit as e:  # Tab without a ROM: say so, play on
                        session.message = str(e).removeprefix("error: ")
            if wanted in ("quit", "menu"):
                after = wanted
                break
            played = False
            if not session.paused or session.pending_step:
                action = actions(session.t) if actions else keys_to_action(pg.key.get_pressed(), pg)
                played = session.advance(action)
            self.draw(session.frames, session.status(fps, action), session.help)
            if wanted == "screenshot":  # what the window shows now (the status bar says where it went next frame)
                session.message = f"wrote {self.screenshot(session.game)}"
            if record is not None:
                record(pg.surfarray.array3d(self.screen).swapaxes(0, 1))
            if played and on_frame:
                on_frame(session.t - 1, session.dream)
            self.clock.tick(self.fps) if self.fps else self.clock.tick()
            fps = self.clock.get_fps()
            shown += 1
        elapsed = time.perf_counter() - t0
        return {"frames": shown, "steps": session.t, "seconds": elapsed, "fps": shown / max(elapsed, 1e-9),
                "next": after}

    def close(self):
        self.pg.quit()


class Recorder:
    """--record: what the window shows (dream and real when both are), as a .gif (half size, written at the end) or
    an .mp4 (full size, streamed to ffmpeg from imageio-ffmpeg), written atomically."""

    def __init__(self, path: str, fps: int):
        self.path, self.fps, self.frames, self.writer, self.shape = path, max(1, fps), [], None, None
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".gif", ".mp4"):
            raise SystemExit(f"error: --record {path}: need a .gif or .mp4 path")
        self.mp4 = ext == ".mp4"
        self.tmp = f"{path}.tmp-{os.getpid()}{ext}"
        if self.mp4:
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise SystemExit(f"error: --record {path}: .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg; "
                                 f"make venv installs it), or record a .gif") from None

    def __call__(self, frame: np.ndarray):
        if self.shape is None:  # (even sizes for an .mp4, as H.264 wants)
            self.shape = (frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2) if self.mp4 else frame.shape[:2]
        if frame.shape[:2] != self.shape:  # the window changed size (the real game shown or hidden): fit the first
            from PIL import Image
            frame = np.asarray(Image.fromarray(frame).resize(self.shape[::-1], Image.BILINEAR))
        if not self.mp4:
            self.frames.append(frame[::2, ::2].copy())
            return
        if self.writer is None:
            import imageio_ffmpeg
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.writer = imageio_ffmpeg.write_frames(self.tmp, self.shape[::-1], fps=self.fps, quality=7,
                                                      macro_block_size=2, ffmpeg_log_level="error")
            self.writer.send(None)
        self.writer.send(np.ascontiguousarray(frame))

    def close(self) -> str | None:
        if self.mp4:
            if self.writer is None:
                return None
            self.writer.close()
        else:
            if not self.frames:
                return None
            write_gif(self.frames, self.path, self.fps)  # atomic itself
            return self.path
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        os.replace(self.tmp, self.path)
        return self.path


def write_gif(frames: list, path: str, fps: int = 30):
    from PIL import Image
    if not path.lower().endswith(".gif"):
        raise SystemExit(f"error: --record {path}: only .gif is supported here")
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


def model_fps(env: NeuralGame, frames: int, governor: ThreadGovernor | None = None) -> tuple[float, np.ndarray]:
    """Model-only FPS (dynamics step + decode) over seeded random buttons, after 20 warm-up steps
    (and compilation, if on), the governor choosing the threads as in play. -> (FPS, the buttons pressed)."""
    env.reset()
    actions = (np.random.default_rng(0).random((frames + 20, 8)) < 0.1).astype(np.uint8)
    for a in actions[:20]:
        env.step(a)
    t0 = time.perf_counter()
    for a in actions[20:]:
        t = time.perf_counter()
        env.step(a)
        if governor is not None:
            governor(time.perf_counter() - t)
    return frames / (time.perf_counter() - t0), actions[20:]


def busy_core() -> subprocess.Popen:
    """Another process that keeps one core busy (a Python loop), as a browser or a build would."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def benchmark(env: NeuralGame, args) -> dict:
    """Model-only FPS (dynamics step + decode) and full-loop FPS (plus upscale, blit and the status bar), uncapped,
    with the box as it is and then with one more core kept busy by another process (--benchmark-load off skips it)."""
    def measure(real: bool = False) -> dict:
        governor = make_governor(args)
        fps, actions = model_fps(env, args.frames, governor)
        game = Game(headless=True, fps=0)
        loop = game.run(Session(env, args.game, governor=make_governor(args)), args.frames,
                        actions=lambda t: actions[t])
        out = {"model_only_fps": round(fps, 1), "full_loop_fps": round(loop["fps"], 1),
               "torch_threads": torch.get_num_threads()}
        if real:  # the real emulator stepped beside the dream, and the meter
            session = Session(env, args.game, True, args.seed, args.rom, make_governor(args))
            out["full_loop_with_real_fps"] = round(game.run(session, args.frames, actions=lambda t: actions[t])["fps"], 1)
        game.close()
        return out

    result = {"game": args.game, "checkpoint": args.checkpoint or os.path.join("checkpoints", args.game),
              "frames": args.frames, "threads": args.threads or "auto", "cpus": os.cpu_count(),
              "device": str(env.world.device), "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    result |= measure(args.real)
    if args.benchmark_load == "one-core":
        busy = busy_core()
        try:
            time.sleep(0.5)
            loaded = measure()
        finally:
            busy.kill()
            busy.wait()
        result |= {f"one_core_busy_{k}": v for k, v in loaded.items()}
        print(f"{'':24s}{'idle':>10s}{'one core busy':>16s}\n"
              f"{'model only (FPS)':24s}{result['model_only_fps']:10.1f}{loaded['model_only_fps']:16.1f}\n"
              f"{'full loop (FPS)':24s}{result['full_loop_fps']:10.1f}{loaded['full_loop_fps']:16.1f}\n"
              f"{'torch threads at the end':24s}{result['torch_threads']:10d}{loaded['torch_threads']:16d}",
              file=sys.stderr)
    return result


class ThreadGovernor:
    """torch's thread count, tuned while playing (the default, --threads auto). Measured on this project's 2-core box
    (Tetris, full loop): 2 threads gave 69 FPS idle but 17 with one core kept busy by another process; 1 thread gave
    60 and 49. Another program can start or stop at any time, so it plays `window` frames with each count (1 thread
    first), keeps the one whose median step was fastest, and measures again every `every` frames (30 s at 30 FPS). A
    trial stops at its first step slower than `give_up` times the other count's median: under load, the stutter of
    trying 2 threads lasts a few frames."""

    def __init__(self, most: int, window: int = 12, every: int = 900, warmup: int = 2, give_up: float = 1.5):
        self.options = [1, most] if most > 1 else [1]
        self.window, self.every, self.warmup, self.give_up = window, every, warmup, give_up
        self.median: dict[int, float] = {}
        self.todo, self.times, self.since = list(self.options), [], 0
        self.use(self.options[0])

    def use(self, threads: int):
        self.threads = threads
        torch.set_num_threads(threads)
        self.times = []

    def __call__(self, seconds: float):
        """One step took this long (the model's work, not the display's)."""
        if len(self.options) == 1:
            return
        if not self.todo:
            self.since += 1
            if self.since >= self.every:  # measure again: the current count first, then the others
                self.todo = [self.threads] + [n for n in self.options if n != self.threads]
                self.use(self.threads)
            return
        self.times.append(seconds)
        measured = self.times[self.warmup:]
        others = [m for n, m in self.median.items() if n != self.threads]  # (maybe from the last round)
        hopeless = bool(measured) and bool(others) and seconds > self.give_up * min(others)
        if len(measured) < self.window and not hopeless:
            return
        self.median[self.threads] = float(np.median(measured))
        self.todo.remove(self.threads)
        self.since = 0
        self.use(self.todo[0] if self.todo else min(self.median, key=self.median.get))

    @staticmethod
    def most_threads() -> int:
        """What to try beside 1 thread: every core up to 4 (this box: 2)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(4, cores))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default=None, choices=sorted(GAMES),
                   help="which game's shipped model to play: checkpoints/GAME, with that game's frame probe for --stats "
                        "(default: the menu in a window; tetris headless or with --checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="directory with autoencoder.pt and dynamics.pt (default: checkpoints/GAME, the game's tile "
                        "world in native colour; checkpoints/tetris_latent is Tetris's 80×80 latent model)")
    p.add_argument("--real", action="store_true",
                   help="run the real game (collect.py's emulator, from collect.py's start, seeded by --seed) in "
                        "lockstep beside the dream, with a meter of their L1; Tab toggles it, Y re-syncs the dream")
    p.add_argument("--rom", default=None, help="the ROM for --real (default: the one the game's pip package carries)")
    p.add_argument("--start", default="play", help="start context shipped with the checkpoint")
    p.add_argument("--headless", action="store_true", help="no window (SDL dummy driver)")
    p.add_argument("--frames", type=bounded(int, 1), default=None, help="stop after this many frames (default: until Esc; 300 headless)")
    p.add_argument("--actions", default=None, help="'random', 'bot' (a placement bot that reads the board off the frames "
                        "shown, never the model's state, and clears lines; it needs native RGB frames, as a tile world's) "
                        "or a .npy/.json/.txt of 8-int rows (default: keyboard; random headless)")
    p.add_argument("--seed", type=bounded(int, 0), default=0,
                   help="seed for --actions random, for sampling and for the real game's start (--real)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"stochastic dynamics, 0 to {MAX_TEMPERATURE:g}: 0 = always the likeliest next frame "
                        "(deterministic); 1 = samples from the model's own probabilities; above 1 = flatter than the "
                        "model's, more surprise (World Models found 1.15 best for its dream) (default: the checkpoint's; "
                        "keys - and = change it by 0.1 while playing, over the same range)")
    p.add_argument("--flow-steps", type=int, default=None,
                   help="flow dynamics: Euler steps per frame (default: the checkpoint's); fewer play faster")
    p.add_argument("--fps", type=bounded(int, 0), default=None,
                   help="frame cap; 0 = as fast as possible (default: the real game's steps per second in a window "
                        "(30 for the NES games, 20 for Ms. Pac-Man), 0 headless)")
    p.add_argument("--threads", type=bounded(int, 1), default=None,
                   help="torch threads (default: auto: tried while playing, 1 against all cores up to 4, the faster "
                        "kept and tried again every 30 s; two threads on two cores collapse when anything else runs)")
    p.add_argument("--record", default=None, help="write what was shown (dream and real when both are) to this "
                                                  ".gif or .mp4")
    p.add_argument("--shots", default=SHOTS, help="where the screenshot key (S) writes PNGs")
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
    p.add_argument("--benchmark", action="store_true",
                   help="print model-only and full-loop FPS, idle and with one core kept busy, and exit")
    p.add_argument("--benchmark-load", default="one-core", choices=["one-core", "off"],
                   help="--benchmark: also measure with another process keeping one core busy (default), or not")
    p.add_argument("--benchmark-out", default=None, metavar="PATH.md",
                   help="--benchmark: also write the figures as a markdown table (without --game: every shipped game)")
    return p.parse_args(argv)


def write_fps_table(results: list[dict], path: str, argv=None):
    """--benchmark-out: the benchmark's figures per game as a markdown table, with the command, written atomically."""
    given = " ".join(sys.argv[1:] if argv is None else argv)
    real = any("full_loop_with_real_fps" in r for r in results)
    lines = [f"# Play FPS on this machine ({os.cpu_count()} CPUs, {results[0]['device']})", "",
             f"`python main.py {given}` ({time.strftime('%Y-%m-%d')}). Uncapped, headless, {results[0]['frames']} "
             f"frames of seeded random buttons after 20 warm-up steps; threads: {results[0]['threads']}. \"one core "
             f"busy\": another process spins on one core meanwhile. Full loop = model step, decode, upscale, blit "
             f"and the status bar.", "",
             "| game | model only, idle | full loop, idle | model only, one core busy | full loop, one core busy |"
             + (" full loop with the real game beside, idle |" if real else "") + " threads at the end (idle / busy) |",
             "|---|---|---|---|---|" + ("---|" if real else "") + "---|"]
    for r in results:
        lines.append(f"| {r['game']} | {r['model_only_fps']:.1f} | {r['full_loop_fps']:.1f} | "
                     f"{r.get('one_core_busy_model_only_fps', float('nan')):.1f} | "
                     f"{r.get('one_core_busy_full_loop_fps', float('nan')):.1f} | "
                     + (f"{r.get('full_loop_with_real_fps', float('nan')):.1f} | " if real else "")
                     + f"{r['torch_threads']} / {r.get('one_core_busy_torch_threads', '-')} |")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


def make_governor(args) -> ThreadGovernor | None:
    """--threads N: that many, fixed (None returned); auto: a ThreadGovernor."""
    if args.threads:
        torch.set_num_threads(args.threads)
        return None
    return ThreadGovernor(ThreadGovernor.most_threads())


def load_env(args, game: str) -> NeuralGame:
    """The checkpoint's world behind NeuralGame, with --priors, --flow-steps, --compile and --temperature applied."""
    checkpoint = args.checkpoint or os.path.join("checkpoints", game)
    try:
        world = load_world(checkpoint, device=args.device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if args.priors == "off" and not world.drop_priors():
        raise SystemExit(f"error: --priors off: {checkpoint} has no priors to drop")
    if args.flow_steps is not None:
        if not hasattr(world.dynamics, "steps"):
            raise SystemExit(f"error: --flow-steps: {checkpoint} has {type(world.dynamics).__name__}, "
                             f"not flow dynamics")
        world.dynamics.steps = args.flow_steps
    compile_model = args.compile == "on" or (args.compile == "auto" and args.device.startswith("cuda"))
    try:
        torch.manual_seed(args.seed)
        env = NeuralGame(world, args.start, compile_model, args.temperature, GAMES[game].title)
        env.reset()
    except KeyError as e:
        raise SystemExit(f"error: --start: {e.args[0]}")
    return env


def play(args, game: str, env: NeuralGame, window: Game, argv) -> dict:
    """One game in the window (or headless): the session, its action source, --record and --stats."""
    per_second = round(GAMES[game].steps_per_second)  # steps of the real game per second
    stats = FrameStats(args.frames or 10**9, steps_per_second=per_second) if args.stats else None
    sheet = ContactSheet(max(1, round(args.sheet_seconds * per_second)), per_second) if stats else None
    probe = ShownProbe(game) if stats else None
    on_frame = None
    if stats:
        def on_frame(t, frame):  # a colour frame is scored as the 80×80 grayscale pipeline sees it
            stats(t, to_gray80(frame[None])[0] if frame.ndim == 3 else frame)
            sheet(t, frame)
            probe(frame)  # the game read off the frame shown
    try:
        session = Session(env, game, args.real, args.seed, args.rom, make_governor(args))
    except SystemExit as e:  # picked in the menu with --real, and this game's ROM is missing: play the dream alone
        session = Session(env, game, False, args.seed, args.rom, make_governor(args))
        session.message = str(e).removeprefix("error: ")
    actions = action_source(args.actions, args.seed, env, game)  # a bot that cannot read the frames stops here
    recorder = Recorder(args.record, args.fps or per_second) if args.record else None
    window.fps = args.fps if args.fps is not None else (0 if args.headless else per_second)
    result = window.run(session, args.frames, actions, recorder, on_frame)
    temp = f", temperature {env.temperature:g}" if env.world.stochastic else ""
    print(f"played {result['frames']} frames in {result['seconds']:.1f} s ({result['fps']:.1f} FPS, "
          f"{'headless' if args.headless else 'window'}{temp})")
    if session.meter.history:
        print(f"dream vs real game, whole-frame L1 / changed-pixel L1, steps after the start: {session.meter.summary()}")
    if recorder and recorder.close():
        print(f"wrote {args.record}")
    if stats:
        reference = args.reference if args.reference is not None else f"data/{game}_train"  # "": none
        reference = reference_ranges(reference, env.world.image_size, steps_per_second=per_second)
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


def menu_thumbnails(args, games: list[str], envs: dict) -> dict:
    """Each shipped game's start frame, from its loaded model (kept for when it is picked)."""
    for g in games:
        if g not in envs:
            envs[g] = load_env(args, g)
    return {g: envs[g].frame for g in games}


def main(argv=None):
    args = parse_args(argv)
    torch.set_flush_denormal(True)  # subnormal numbers as zero: see train.main
    if not args.headless and not args.benchmark and not display_available():
        print("main.py: no display found (DISPLAY is not set): running headless instead; "
              "pass --record out.gif to see what was played")
        args.headless = True
    use_menu = args.game is None and args.checkpoint is None and not (args.headless or args.benchmark)
    benchmark_all = args.benchmark and args.game is None and args.checkpoint is None
    if args.game is None:
        args.game = "tetris"
    if args.headless or args.benchmark:
        args.frames = args.frames or 300
        args.actions = args.actions or "random"
    if args.flow_steps is not None and args.flow_steps < 1:
        raise SystemExit(f"error: --flow-steps {args.flow_steps}: must be >= 1")
    if args.temperature is not None and not 0 <= args.temperature <= MAX_TEMPERATURE:
        raise SystemExit(f"error: --temperature {args.temperature}: must be between 0 and {MAX_TEMPERATURE:g}")
    if args.stats and not args.sheet_seconds > 0:
        raise SystemExit(f"error: --sheet-seconds {args.sheet_seconds}: must be > 0")
    if args.record:
        Recorder(args.record, 30)  # a bad path or a missing encoder stops here, before the model loads
    for flag, path in (("--record", args.record), ("--stats", args.stats), ("--benchmark-out", args.benchmark_out)):
        if path:
            writable(path, flag)  # an unwritable place stops here, before a minute of play is lost
    if args.shots != SHOTS:
        writable(args.shots, "--shots", directory=True)
    if args.actions not in (None, "random", "bot"):
        read_actions(args.actions)  # a bad file stops here, before the model loads or a window opens
    if args.real:
        find_rom(args.game, args.rom)  # no ROM: say what to install, before the model loads
    if use_menu:
        games = shipped_games()
        if not games:
            raise SystemExit("error: no shipped game under checkpoints/ (checkpoints/GAME/autoencoder.pt and "
                             "dynamics.pt); train one with train.py --export checkpoints/GAME")
    if args.benchmark:
        results = []
        for game in (shipped_games() if benchmark_all else [args.game]):
            args.game = game
            results.append(benchmark(load_env(args, game), args))
            print(json.dumps(results[-1], indent=1))
        if args.benchmark_out:
            write_fps_table(results, args.benchmark_out, argv)
        return results[0] if len(results) == 1 else results
    window = Game(args.headless, 0, shots=args.shots)
    envs, result = {}, None
    try:
        while True:
            if use_menu:
                args.game = window.menu(games, menu_thumbnails(args, games, envs))
                if args.game is None:
                    break
            env = envs.get(args.game) or load_env(args, args.game)
            envs[args.game] = env
            result = play(args, args.game, env, window, argv)
            if not (use_menu and result["next"] == "menu"):
                break
    finally:
        window.close()
    return result


if __name__ == "__main__":
    main()
