"""Ms. Pac-Man (Atari 2600, ale-py): its RAM map, the start driver, the players (the maze bot, random, noisy), the
frame probe (MsPacmanProbe) and the RAM's reference numbers."""
from __future__ import annotations

import numpy as np

from games.common import *  # noqa: F401,F403
from games.common import _ram_rows, _runs  # noqa: F401


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


# ----------------------------------------------------------------------------- the probe
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
    GHOSTS = ((200, 72, 72), (198, 89, 179), (84, 184, 153), (180, 122, 48))  # Blinky, Pinky, Inky, Sue
    BLUE_GHOST = (66, 114, 194)  # a frightened ghost (after a power pellet)
    GHOST_MIN_PIXELS = 10

    def __init__(self, steps_per_second: float = 20):
        self.steps_per_second = steps_per_second
        self.t = 0
        self.seen: dict[tuple[int, int], list] = {}  # place -> [last step seen, power?, (y, x), Ms. Pac-Man came?]
        self.eaten_places: set = set()
        self.eaten = 0
        self.counts: list[int] = []
        self.last_frame = None
        self.sprite = None  # her centre (y, x) on the latest frame (player_box), None when she is not seen
        self.ghosts = 0     # ghosts seen on the latest frame (ghosts_seen)

    @classmethod
    def lives(cls, frame: np.ndarray) -> int:
        icons = (np.abs(frame[172:186, :80].astype(np.int16) - cls.ICON) < 40).all(axis=-1).any(axis=0)
        return len(_runs(icons, 2, 2))

    @classmethod
    def player_box(cls, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) of Ms. Pac-Man's yellow on the maze, or None."""
        ys, xs = np.nonzero((np.abs(frame[:MSP_MAZE_ROWS].astype(np.int16) - cls.PLAYER) <= 20).all(axis=-1))
        return (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) if len(ys) else None

    @classmethod
    def ghosts_seen(cls, frame: np.ndarray) -> int:
        """Ghosts on the maze in this frame: each ghost colour shown by at least GHOST_MIN_PIXELS pixels, plus the
        frightened (blue) ones, counted by how many 8-pixel-wide columns of blue they fill (the 2600 flickers them:
        a single frame shows some of the four)."""
        maze = frame[:MSP_MAZE_ROWS]
        n = sum(int((maze == c).all(axis=-1).sum() >= cls.GHOST_MIN_PIXELS) for c in cls.GHOSTS)
        blue = (maze == cls.BLUE_GHOST).all(axis=-1)
        if blue.sum() >= cls.GHOST_MIN_PIXELS:
            n += min(4, len(_runs(blue.any(axis=0), 3, 1)))
        return n

    def __call__(self, frame: np.ndarray):
        frame = probe_frame(frame, "MsPacmanProbe", "native Atari RGB frames (210, 160, 3)",
                            lambda f: f.shape[:2] == (210, 160))
        box = self.player_box(frame)
        self.sprite = None if box is None else ((box[0] + box[1]) / 2, (box[2] + box[3]) / 2)
        self.ghosts = self.ghosts_seen(frame)
        pellets, power = mspacman_pellets(frame)
        self.counts.append(len(pellets) + len(power))
        cell = lambda y, x: (int(y // 12), int(x // 8))  # a power pellet's shape, and so its centre, varies
        places = [(cell(y, x), False, (y, x)) for y, x in pellets] + [(cell(y, x), True, (y, x)) for y, x in power]
        if len(places) > 20 and sum(p in self.eaten_places for p, _, _ in places) > 10:  # a fresh maze
            self.seen, self.eaten_places = {}, set()
        for place, is_power, centre in places:
            self.seen[place] = [self.t, is_power, centre, False]
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


def mspacman_ram_sprite(ram) -> tuple[float, float] | None:
    """Ms. Pac-Man's centre (y, x) in frame pixels from the RAM: her sprite's top-left is (y + 1, x - 12), 10x8;
    None outside play."""
    if not mspacman_in_play(ram):
        return None
    return int(ram[MSP_PLAYER_Y]) + 1 + MSP_SPRITE[0] / 2 - 0.5, int(ram[MSP_PLAYER_X]) - 12 + MSP_SPRITE[1] / 2 - 0.5


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


# ----------------------------------------------------------------------------- the record
GAME = Game(
    "mspacman", "Ms. Pac-Man (Atari 2600)", "atari", ("ale_py", "ms_pacman", "ale-py==0.12.1"), (210, 160, 3), 128,
    MSPACMAN_FRAME_SKIP, start=MsPacmanStart, in_play=mspacman_in_play, game_over=mspacman_game_over,
    policies={"bot": MsPacmanBot, "noisy": MsPacmanNoisy, "random": MsPacmanRandom},
    mix={"bot": 0.35, "noisy": 0.45, "random": 0.2}, probe=MsPacmanProbe, ram_reference=mspacman_ram_reference,
    bot="bot", ram_sprite=mspacman_ram_sprite, counters=("pellets_eaten",), sprite_name="Ms. Pac-Man",
    heldout_buttons="configs/actions_mspacman_heldout_episode4.npy")
