"""collect.FrameBot: TetrisBot's planner and hands with only the frames shown for eyes (issue #19, item 6: "a policy
may know the game; the model may not"). Checked on the real game against its RAM, and in main.py --actions bot, which
plays a dream through it without reading the model's state."""
import os

import numpy as np
import pytest

import collect
from test_probes import steady_falling

CKPT = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tetris")


def real_episode(policy: str, level: int, steps: int, seed: int) -> dict:
    spec = collect.EpisodeSpec(0, collect.find_rom("tetris"), policy, False, level, steps, 2, 0, seed)
    c = collect.run_episode(spec, encode=False)
    return c | {"ram": np.frombuffer(b"".join(c["ram"]), np.uint8).reshape(len(c["ram"]), -1), "rams": c["ram"]}


@pytest.fixture(scope="session")
def ram_bot_game() -> dict:
    """600 steps of the RAM bot at level 9: it rotates pieces at the top, where some show only 2-3 of their cells."""
    return real_episode("bot", 9, 600, 4)


@pytest.fixture(scope="session")
def frame_bot_game() -> dict:
    """600 steps of the frame bot at level 0, fed the emulator's frames only (run_episode gives a FrameBot the frame
    shown, every other player the RAM)."""
    return real_episode("framebot", 0, 600, 1)


def read_pieces(frames) -> list:
    """What a fresh frame bot's eyes make of each frame: (orientation id, x, y) of the falling piece, or None."""
    bot = collect.FrameBot(np.random.default_rng(0))
    return [bot.where if bot.read(f) is not None else None for f in frames]


def identified(game: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> steady frames (a piece falls, no lock or spawn under way), frames read right, frames showing 1-3 cells."""
    ram = game["ram"]
    want = [(int(r[collect.ORIENTATION]), int(r[collect.PIECE_X]), int(r[collect.PIECE_Y])) for r in ram]
    ok = np.array([g == w for g, w in zip(read_pieces(game["observations"]), want)])
    above = np.array([any(y + dr < 0 for dr, _ in collect.ORIENTATIONS.get(o, [])) for o, _, y in want])
    return steady_falling(ram, len(ram)), ok, above


def test_the_frames_give_the_rams_piece_on_the_ram_bots_game(ram_bot_game):
    """Orientation id (0x42), x (0x40) and y (0x41) read off the frames of a game the frame bot did not play. The misses:
    a piece rotated before its first frame showed it, whose 2-3 visible cells fit several pieces (the frame bot's own
    game never shows one: it sees a piece before it rotates it), and gravity steps that the screen shows a frame late."""
    steady, ok, above = identified(ram_bot_game)
    assert steady.sum() > 300 and (steady & above).sum() >= 20
    assert ok[steady].mean() >= 0.95, ok[steady].mean()


def test_the_frames_give_the_rams_piece_on_the_frame_bots_game(frame_bot_game):
    steady, ok, above = identified(frame_bot_game)
    assert steady.sum() > 300 and (steady & above).sum() >= 20  # pieces rotated at the top, partly above the well
    assert ok[steady].mean() >= 0.97, ok[steady].mean()
    assert ok[steady & above].mean() >= 0.95, ok[steady & above].mean()


def test_the_frame_bot_clears_lines_on_the_real_game(frame_bot_game, monkeypatch):
    ref = collect.tetris_ram_reference(frame_bot_game["rams"])
    assert ref["rows_cleared"] >= 1 and ref["pieces_locked"] >= 10 and ref["top_out_s"] is None, ref
    seen = []  # what a frame bot is given in run_episode: frames only
    real_call = collect.FrameBot.__call__
    monkeypatch.setattr(collect.FrameBot, "__call__", lambda self, x: seen.append(np.shape(x)) or real_call(self, x))
    collect.run_episode(collect.EpisodeSpec(0, collect.find_rom("tetris"), "framebot", False, 0, 20, 2, 0, 1),
                        encode=False)
    assert seen and set(seen) == {(240, 256, 3)}


def test_one_planner_for_both_bots_and_no_piece_means_no_buttons():
    assert collect.FrameBot.act is collect.TetrisBot.act  # the RAM path and the frame path share plan and hands
    bot = collect.FrameBot(np.random.default_rng(0))
    for _ in range(5):  # a black well: no piece, no buttons
        assert not bot(np.zeros((240, 256, 3), np.uint8)).any()
    with pytest.raises(ValueError, match="240, 256, 3"):
        bot(np.zeros((80, 80), np.uint8))
    for o, cells in collect.ORIENTATIONS.items():  # every placement's cells give back that placement, and only it
        y, x = 10, 5
        board = np.zeros((20, 10), bool)
        for dr, dc in cells:
            board[y + dr, x + dc] = True
        assert collect.match_piece(board) == [(o, x, y)]
    top = np.zeros((20, 10), bool)
    top[0:2, 4] = True  # a vertical pair in rows 0-1: an I standing up, or a J or an L rotated at the top
    assert {(17, 4, 0), (6, 4, 0), (15, 4, 0)} <= set(collect.match_piece(top))
    assert collect.match_piece(top, collect.GROUP_OF[18]) == [(17, 4, 0)]
    gap = np.zeros((20, 10), bool)
    gap[[5, 6, 7], 3] = True  # 3 of an I's 4 cells, mid-well: no tetromino, but part of one
    assert collect.match_piece(gap) == [] and (17, 3, 7) in collect.match_piece(gap, [17], partial=True)


def test_main_bot_plays_the_dream_off_its_frames(monkeypatch):
    import main

    seen, pressed = [], []
    real_call = collect.FrameBot.__call__

    def spy(self, frame):
        seen.append(frame.shape)
        pressed.append(real_call(self, frame))
        return pressed[-1]

    monkeypatch.setattr(collect.FrameBot, "__call__", spy)
    result = main.main(["--checkpoint", CKPT, "--headless", "--frames", "150", "--actions", "bot", "--temperature", "0"])
    assert result["frames"] == 150 and len(seen) == 150 and set(seen) == {(240, 256, 3)}
    assert np.array(pressed).any()  # it steers the pieces it reads off the dream (at temperature 0, within 5 s)
    with pytest.raises(SystemExit, match="native 240×256 RGB frames.*80x80 grayscale"):
        main.main(["--checkpoint", os.path.join(os.path.dirname(CKPT), "tetris_latent"), "--headless", "--frames", "3",
                   "--actions", "bot"])
