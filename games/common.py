"""What every game's module shares: the 8 buttons and their orders (the NES controller's, ALE's joystick), the
players every game uses (random buttons, held stretches), small helpers of the probes, and the Game record a
module fills in for collect.py's registry (collect.GAMES)."""
from __future__ import annotations

import numpy as np
from dataclasses import dataclass
from typing import Callable


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

# The Atari joystick: ALE's 18 actions are NOOP 0, FIRE 1, the 8 directions UP 2, RIGHT 3, LEFT 4, DOWN 5, UPRIGHT 6,
# UPLEFT 7, DOWNRIGHT 8, DOWNLEFT 9, and each direction with FIRE (+8: UPFIRE 10 ... DOWNLEFTFIRE 17).
ALE_DIRECTIONS = {(0, 0): 0, (-1, 0): 2, (0, 1): 3, (0, -1): 4, (1, 0): 5, (-1, 1): 6, (-1, -1): 7, (1, 1): 8, (1, -1): 9}


def buttons_to_ale(buttons) -> int:
    """8 ints in ACTION_NAMES order -> ALE action number: A or B is FIRE, opposite directions pressed together cancel,
    SELECT and START are not on the joystick."""
    held = [int(b) != 0 for b in buttons]
    direction = ALE_DIRECTIONS[(held[DOWN] - held[UP], held[RIGHT] - held[LEFT])]
    if held[A] or held[B]:
        return 1 if direction == 0 else direction + 8
    return direction


MASK_TO_ALE = np.array([buttons_to_ale(MASK_TO_BUTTONS[m]) for m in range(256)], dtype=np.uint8)


def _ale_to_buttons() -> np.ndarray:
    table = np.zeros((18, 8), dtype=np.uint8)
    for (dy, dx), direction in ALE_DIRECTIONS.items():
        for fire in (0, 1):
            row = table[(1 if direction == 0 else direction + 8) if fire else direction]
            row[A], row[UP], row[DOWN], row[LEFT], row[RIGHT] = fire, dy < 0, dy > 0, dx < 0, dx > 0
    return table


ALE_TO_BUTTONS = _ale_to_buttons()  # ALE action -> the buttons that give it (FIRE as A)


# ----------------------------------------------------------------------------- shared by players and probes
def still_frames(a: np.ndarray, b: np.ndarray, values: int = 48, tolerance: int = 24) -> bool:
    """Game-agnostic: two frames are near-identical when fewer than `values` of their bytes (48: 16 RGB pixels, a
    quarter of an 8x8 tile) differ by more than `tolerance` (of 255)."""
    if a.shape != b.shape:
        return False
    if np.array_equal(a, b):
        return True
    d = np.maximum(a, b)
    d -= np.minimum(a, b)  # |a - b| in uint8, without a wider copy
    return int(np.count_nonzero(d > tolerance)) < values


def bcd(*values) -> int:
    """Binary-coded decimal bytes, least significant first -> the number they print."""
    return sum(((int(v) >> 4) * 10 + (int(v) & 15)) * 100 ** i for i, v in enumerate(values))


def _runs(flags, min_len: int = 1, max_gap: int = 0) -> list[tuple[int, int]]:
    """(start, end) of the stretches of True at least min_len long, joining stretches max_gap or fewer apart."""
    runs = []
    for t, f in enumerate(flags):
        if not f:
            continue
        if runs and t - runs[-1][1] <= max_gap + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [(a, b + 1) for a, b in runs if b + 1 - a >= min_len]


def _ram_rows(rams) -> np.ndarray:
    return np.frombuffer(b"".join(bytes(r) for r in rams), dtype=np.uint8).reshape(len(rams), -1).astype(np.int64)


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


class Holds:
    """What the noisy players share: an action held for some steps in place of the player's own (an idle stretch,
    a held direction). held() gives it while steps are left, else None."""
    override, left = None, 0

    def held(self) -> np.ndarray | None:
        if self.left > 0:
            self.left -= 1
            return self.override
        return None


def probe_frame(frame, probe: str, native: str, fits) -> np.ndarray:
    """What a frame probe reads: the frame as uint8 RGB (a model's float frame clipped), or a ValueError naming the
    probe and the native frame it wants when `fits(frame)` says the shape is not one it can read."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3 or not fits(frame):
        raise ValueError(f"{probe} reads {native}, got shape {frame.shape}")
    return frame


# ----------------------------------------------------------------------------- the record of a game
@dataclass(frozen=True)
class Game:
    """Everything collect.py knows about one game. Adding a game: a module of games/ that fills one in (GAME), with its
    players and probe, and its line in collect.GAMES."""
    name: str
    title: str
    system: str                           # "nes" (cynes) or "atari" (ale-py): EMULATORS
    rom: tuple[str, str, str]             # (pip package, its ROM file or ale-py ROM id, pip pin)
    frame_shape: tuple[int, int, int]     # native RGB frame, (height, width, 3)
    ram_size: int                         # bytes of the ram column
    frame_skip: int                       # default emulated frames per step
    start: Callable                       # (rng, spec) -> driver(ram) -> buttons: power-on into play, and whenever
                                          # the game is not in play (menus, between lives, the game-over screen)
    in_play: Callable[[bytes], bool]      # the players act (else the start driver does)
    game_over: Callable[[bytes], bool]    # the episode ends --tail-steps later
    policies: dict[str, Callable]         # name -> (rng, frame_skip) -> player (besides "human")
    mix: dict[str, float]                 # --policy mix: each episode's player drawn with these odds
    probe: type                           # the frame probe: reads the frames only (PROBES)
    ram_reference: Callable               # (rams, steps_per_second) -> the probe's numbers from the RAM
    bot: str                              # the player --benchmark times
    ram_sprite: Callable = lambda ram: None  # the steered sprite's centre (y, x) in frame pixels from the RAM, or
                                          # None: the truth the probe's `sprite` is checked against (sprite_agreement)
    counters: tuple[str, ...] = ()        # the probe's summary keys that count the game's progress (the lockstep
                                          # table's dream / real ratios)
    sprite_name: str = "sprite"           # what the player steers, as the tables name it
    heldout_buttons: str = ""             # a held-out episode's recorded buttons (configs/), a lockstep button source
    levels: bool = False                  # --min-level/--max-level apply (Tetris's level menu)
    fps: int = 60                         # emulated frames per second

    @property
    def steps_per_second(self) -> float:
        return self.fps / self.frame_skip
