"""Super Mario Bros. (NES): its RAM map, the start driver, the players (the runner, random, noisy), the frame probe
(SmbProbe) and the RAM's reference numbers."""
from __future__ import annotations

import numpy as np

from games.common import *  # noqa: F401,F403
from games.common import _ram_rows, _runs  # noqa: F401


# ----------------------------------------------------------------------------- Super Mario Bros.
# RAM (gym-super-mario-bros 7.4.0's smb_env.py, and the SMB disassembly's names)
SMB_MODE, SMB_TASK = 0x770, 0x772   # OperMode: 0 title (and demo), 1 playing, 2 end of a world, 3 game over;
                                    # its task in mode 1: 0-2 the black screens before a life or an area, 3 playing
SMB_STATE = 0x0E                    # player state: 8 normal, 0x0B dying, 6 dead, 0-7 busy (pipes, vines, flagpole)
SMB_LIVES = 0x75A                   # lives left after this one; 0xFF at the game over
SMB_PAGE, SMB_X, SMB_Y = 0x6D, 0x86, 0xCE  # Mario's x in the level = page * 256 + x; y on screen (176 on the ground)
SMB_Y_SCREEN = 0x3B8                # Mario's sprite's y on screen, less 16
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


# ----------------------------------------------------------------------------- the probe
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
    MARIO = ((152, 34, 32), (84, 90, 0))  # his red and olive (small and big Mario): no other sprite or block of 1-1 shows
    MARIO_MIN_PIXELS = 12                 # them, and a lone tile of one colour is not Mario (he shows 60 red + 68 olive)

    def __init__(self, steps_per_second: float = 30):
        self.steps_per_second = steps_per_second
        self.max_shift = int(np.ceil(self.MAX_SHIFT_PER_FRAME * 60 / steps_per_second))
        self.t = 0
        self.prev = None
        self.shifts: list[int] = []  # per step (0 for the first frame)
        self.black: list[bool] = []
        self.game_over_at = None
        self.cuts = 0
        self.sprite = None  # Mario's centre (y, x) on the latest frame (mario), None when he is not seen

    @classmethod
    def mario(cls, frame: np.ndarray) -> tuple[float, float] | None:
        """Mario's centre (y, x) in frame pixels, from his red and olive under the score line (rows 32 on), or None."""
        play = frame[32:]
        mask = np.zeros(play.shape[:2], bool)
        for colour in cls.MARIO:
            mask |= (play == colour).all(axis=-1)
        ys, xs = np.nonzero(mask)
        if len(ys) < cls.MARIO_MIN_PIXELS:
            return None
        return 32 + float(np.median(ys)), float(np.median(xs))

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
        frame = probe_frame(frame, "SmbProbe", "native NES RGB frames (240, 256, 3)",
                            lambda f: f.shape[0] >= 240 and f.shape[1] >= 64)
        black = self.is_black(frame)
        self.sprite = None if black else self.mario(frame)
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


def smb_ram_scroll(ram: np.ndarray, steps_per_second: float = 30) -> np.ndarray:
    """Per step (rows of RAM, _ram_rows), the rise of the screen's left edge in the level, while playing; 0 where it
    rose by more than SmbProbe's largest shift or fell (a new life or area)."""
    left = ram[:, SMB_SCREEN_PAGE] * 256 + ram[:, SMB_SCREEN_X]
    rise = np.diff(left, prepend=left[:1])
    playing = (ram[:, SMB_MODE] == 1) & (ram[:, SMB_TASK] == 3)
    ok = (rise >= 0) & (rise <= SmbProbe(steps_per_second).max_shift) & playing & np.r_[False, playing[:-1]]
    return np.where(ok, rise, 0)


def smb_ram_sprite(ram) -> tuple[float, float] | None:
    """Mario's centre (y, x) in frame pixels from the RAM: his sprite's top-left on screen is (0x3B8 + 16, level x
    less the screen's left edge); small Mario is 16x16, big 16x32. None unless playing with Mario on screen."""
    if ram[SMB_MODE] != 1 or ram[SMB_TASK] != 3 or ram[SMB_Y_VIEWPORT] != 1:
        return None
    x = (int(ram[SMB_X]) - int(ram[SMB_SCREEN_X])) % 256
    height = 16 if ram[SMB_BIG] else 32
    return int(ram[SMB_Y_SCREEN]) + 16 + height / 2, x + 8.0


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


# ----------------------------------------------------------------------------- the record
GAME = Game(
    "smb", "Super Mario Bros. (NES)", "nes", ("gym_super_mario_bros", "_roms/super-mario-bros.nes",
                                              "gym-super-mario-bros==7.4.0"), (240, 256, 3), 2048, 2,
    start=SmbStart, in_play=smb_in_play, game_over=smb_game_over,
    policies={"runner": SmbRunner, "noisy": SmbNoisy, "random": SmbRandom},
    mix={"runner": 0.35, "noisy": 0.45, "random": 0.2}, probe=SmbProbe, ram_reference=smb_ram_reference,
    bot="runner", ram_sprite=smb_ram_sprite, counters=("scroll_px",), sprite_name="Mario",
    heldout_buttons="configs/actions_smb_heldout_episode4.npy")
