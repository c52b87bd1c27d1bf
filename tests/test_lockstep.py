"""Issue #31: the lockstep table (evaluate.py --lockstep), the sprite probes it reads, and the model pieces it ablates.

The probes are checked against the real game's RAM on short real episodes; the table runs on the shipped Tetris
checkpoint for a few steps; PlaceAttention and the corrupted inputs are checked on their own."""
import json
import os

import numpy as np
import pytest
import torch

import collect
import evaluate
import train

SPRITE_EPISODES = {  # game -> the player recorded (from play, not power-on)
    "tetris": ["--policy", "bot", "--max-steps", "300"],
    "smb": ["--policy", "runner", "--max-steps", "300"],
    "mspacman": ["--policy", "bot", "--max-steps", "300"],
}


@pytest.fixture(scope="module")
def sprite_sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sprites")
    for game, args in SPRITE_EPISODES.items():
        collect.main(["--game", game, "--episodes", "1", "--seed", "5", "--power-on-frac", "0", "--workers", "1",
                      "--out", str(root / game)] + args)
    return {game: str(root / game) for game in SPRITE_EPISODES}


@pytest.mark.parametrize("game", sorted(SPRITE_EPISODES))
def test_the_sprite_probes_agree_with_the_ram(sprite_sets, game):
    """Where the RAM shows the steered sprite the frame probe sees it too, within 8 px, and rarely sees it where the
    RAM does not (Tetris: the locked piece is still followed until the next spawn, a few steps)."""
    a = collect.sprite_agreement(sprite_sets[game], game)
    assert a["frames"] == 300
    assert a["recall"] >= 0.8, a
    assert a["precision"] >= 0.8, a
    assert a["within_8px"] >= 0.95, a


def test_the_sprite_probe_command_line_prints_the_agreement(sprite_sets, capsys):
    out = collect.main(["--game", "smb", "--probe-sprite", sprite_sets["smb"]])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    with pytest.raises(SystemExit, match="no such dataset directory"):
        collect.main(["--game", "smb", "--probe-sprite", sprite_sets["smb"] + "_missing"])


def test_evaluate_writes_the_probe_agreement_table(sprite_sets, tmp_path):
    out = str(tmp_path / "probes")
    rows = evaluate.main(["--probe-sprites", sprite_sets["tetris"], sprite_sets["mspacman"], "--out", out])["rows"]
    assert [r["game"] for r in rows] == ["tetris", "mspacman"]
    text = open(out + ".md").read()
    assert "| NES Tetris |" in text and "| Ms. Pac-Man (Atari 2600) |" in text
    with pytest.raises(SystemExit, match="no collect.json"):
        evaluate.main(["--probe-sprites", str(tmp_path), "--out", out])


def test_tetris_probe_counts_the_cells_each_lock_adds(sprite_sets):
    """The bot's pieces each add 4 cells to the board (less the rows it clears): what the table's 4-cell bar reads."""
    import datasets
    ds = datasets.load_from_disk(sprite_sets["tetris"])
    probe = collect.TetrisProbe()
    for im in ds["observations"]:
        probe(np.asarray(im.convert("RGB")))
    s = probe.summary()
    assert s["locks_measured"] >= 5
    assert s["locks_of_4_cells"] >= 0.9 * s["locks_measured"], probe.lock_cells


def test_tile_hashes_tell_exact_tiles_apart():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 9, 17, 2] ^= 1  # one byte of tile (1, 2) of the second frame
    same = evaluate.tile_hashes(a) == evaluate.tile_hashes(b)
    assert same.shape == (2, 3, 4)
    assert not same[1, 1, 2] and same.sum() == same.size - 1


def test_parting_and_the_summary_on_known_series():
    real = np.zeros((1, 40, 2))
    dream = np.zeros((1, 40, 2))
    dream[0, 20:, 1] = 20.0  # 20 px off from step 21 on
    dream[0, 5:8] = np.nan  # missing for 3 steps: shorter than PARTED_STEPS
    assert evaluate.parted_step(dream[0], real[0]) == 21
    assert evaluate.parted_step(real[0], real[0]) is None
    row = {"sprite_dream": dream, "sprite_real": real, "changed_l1": np.full((1, 40), 0.5),
           "exact_tiles": np.ones((1, 40)), "ghosts_dream": np.zeros((1, 40)), "ghosts_real": np.zeros((1, 40)),
           "counters": {"10": [{"pieces_locked": (1, 2)}], "40": [{"pieces_locked": (3, 3)}]},
           "end": [({}, {})]}
    s = evaluate.lockstep_summary(row, [10, 40])
    assert s["10"]["sprite_visible"] == pytest.approx(7 / 10)
    assert s["10"]["position_error_median"] == 0.0 and s["10"]["position_error_p90"] == np.inf  # 3 of 10 missing
    assert s["40"]["position_error_median"] == 20.0  # steps 11-40: 20 of 30 are 20 px off
    assert s["10"]["counters"]["pieces_locked"] == {"dream": 1, "real": 2, "ratio": 0.5}
    assert s["parted_median"] == 21


def test_the_lockstep_table_on_a_small_case(tmp_path):
    """The shipped Tetris world beside the real game for a few steps: every row, the oracles and step exactness,
    written atomically; the same seed gives the same table."""
    out = str(tmp_path / "ls")
    args = ["--lockstep", "--game", "tetris", "--starts", "1", "--lockstep-steps", "12", "--sources", "player",
            "recorded", "--oracles", "--step-exactness", "4", "--no-plots", "--out", out]
    first = evaluate.main(args)
    rows = first["rows"]
    names = list(rows)
    assert names[0] == "copy-last-frame" and len(names) == 7
    copy, shipped = rows["copy-last-frame"], rows["checkpoints/tetris T=1"]
    assert copy["1"]["exact_tiles"] > 0.9  # one step in, little of a Tetris screen has changed
    assert shipped["1"]["sprite_visible"] > 0 and copy["12"]["sprite_visible_real"] > 0
    assert set(shipped["12"]["counters"]) == {"pieces_locked", "rows_cleared"}
    exact = rows["checkpoints/tetris: one step, real next state given"]
    assert 0 <= exact["step_exact"] <= 1 and exact["frame_exact"] <= exact["step_exact"]
    assert "step_exact" not in shipped
    with open(out + ".json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(rows))
    assert "### Step exactness" in open(out + ".md").read()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    assert evaluate.main(args)["rows"] == rows


def test_place_attention_learns_a_value_as_a_place():
    """One byte's value v (0-7) says which of 8 columns lights up: each tile's column asks, the value answers."""
    torch.manual_seed(0)
    place = train.PlaceAttention(1, 8, (1, 8), heads=1, dim=8)
    head = torch.nn.Conv2d(8, 1, 1)
    assert torch.equal(place(torch.zeros(2, 8, 1, 8), torch.tensor([[1], [5]])), torch.zeros(2, 8, 1, 8))  # starts at 0
    opt = torch.optim.Adam(list(place.parameters()) + list(head.parameters()), lr=0.03)
    values = torch.arange(8)[:, None]
    target = torch.eye(8)[:, None]  # (8 values, 1 row, 8 columns)
    for _ in range(300):
        logits = head(torch.nn.functional.gelu(place(torch.zeros(8, 8, 1, 8), values)))[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(logits.argmax(-1).flatten(), torch.arange(8))


def test_corrupt_inputs_replaces_a_share_with_codes_from_the_batch():
    torch.manual_seed(0)
    batch = {"tokens": torch.randint(0, 5, (4, 2, 30, 32)) * 10, "state": torch.randint(0, 3, (4, 6)) * 7,
             "next_tokens": torch.zeros(4, 30, 32, dtype=torch.long)}
    assert train.corrupt_inputs(batch, 0.0) is batch
    out = train.corrupt_inputs(batch, 0.3)
    assert out["next_tokens"] is batch["next_tokens"]  # the targets stay real
    changed = (out["tokens"] != batch["tokens"]).float().mean()
    assert 0.15 < changed < 0.3  # 30% drawn, a fifth of them the same code again
    assert set(out["tokens"].unique().tolist()) <= set(batch["tokens"].unique().tolist())
    for s in range(6):  # a byte only takes values that byte took in the batch
        assert set(out["state"][:, s].tolist()) <= set(batch["state"][:, s].tolist())


def test_a_given_next_state_is_what_the_tile_world_carries_on():
    world = train.load_world("checkpoints/tetris")
    state = world.start()
    given = torch.randint(0, 2, state[1].shape)
    nxt, z = world.step(state, torch.zeros(1, 8), 1.0, next_state=given)
    assert torch.equal(nxt[1], given.to(nxt[1].dtype))
    assert z.shape == state[0].shape[:1] + state[0].shape[2:]


def test_the_product_read_puts_a_sprite_where_its_row_and_column_bytes_meet():
    """Two sprites, each a (row byte, column byte) pair on a 4x4 grid: a tile is lit where one sprite's row and the
    same sprite's column meet, not where sprite 0's row meets sprite 1's column. Read by a linear head, a sum of
    reads cannot tell these apart (the lit tiles' reads average to the crossings'); the product read can."""
    torch.manual_seed(0)
    place = train.PlaceAttention(4, 8, (4, 4), heads=1, dim=8, product=True)
    head = torch.nn.Conv2d(8, 1, 1)
    assert torch.equal(place(torch.zeros(1, 8, 4, 4), torch.tensor([[0, 1, 2, 3]])), torch.zeros(1, 8, 4, 4))
    opt = torch.optim.Adam(list(place.parameters()) + list(head.parameters()), lr=0.03)
    pos = torch.tensor([(a, b, c, d) for a in range(4) for b in range(4) for c in range(4) for d in range(4)
                        if a != c and b != d])  # sprite 0 at (row a, col b), sprite 1 at (row c, col d)
    target = torch.zeros(len(pos), 4, 4)
    target[torch.arange(len(pos)), pos[:, 0], pos[:, 1]] = 1
    target[torch.arange(len(pos)), pos[:, 2], pos[:, 3]] = 1
    for _ in range(400):
        logits = head(place(torch.zeros(len(pos), 8, 4, 4), pos))[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(logits > 0, target > 0)


def tiny_tile_dynamics(**kw):
    return train.TileDynamics(16, np.arange(3), history=2, width=16, blocks=1, grid=(4, 5), **kw)


def test_a_state_delta_head_starts_as_the_model_without_it_and_reads_the_change():
    torch.manual_seed(0)
    plain = tiny_tile_dynamics()
    with_delta = tiny_tile_dynamics(state_delta=True)
    missing = train.load_init_dynamics(with_delta, plain)
    assert missing and all(k.startswith("delta_") for k in missing)
    tokens, state = torch.randint(0, 16, (2, 2, 4, 5)), torch.randint(0, 256, (2, 3))
    actions, nxt = torch.zeros(2, 2, 8), torch.randint(0, 256, (2, 3))
    h, _ = plain.trunk(tokens, state, actions)
    assert torch.equal(plain.tile_logits(h, tokens, nxt, state), with_delta.tile_logits(h, tokens, nxt, state))
    with torch.no_grad():
        with_delta.delta_embed.weight.normal_()
    assert not torch.equal(with_delta.tile_logits(h, tokens, nxt, state), plain.tile_logits(h, tokens, nxt, state))
    # what it adds is a read of the change alone: zero the next state's own embeddings, and two pairs of values
    # with the same change draw the same
    with torch.no_grad():
        with_delta.next_state_embed.weight.zero_()
        with_delta.byte_map_next.where.zero_()
    assert torch.allclose(with_delta.tile_logits(h, tokens, nxt, state),
                          with_delta.tile_logits(h, tokens, (nxt + 7) % 256, (state + 7) % 256))


def test_train_only_the_tile_head_leaves_the_trunk_and_the_state_head_as_they_were():
    torch.manual_seed(0)
    model = tiny_tile_dynamics(place_heads=1, state_delta=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = model.freeze_all_but_tile_head()
    assert 0 < trained < sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = {"tokens": torch.randint(0, 16, (4, 2, 4, 5)), "state": torch.randint(0, 256, (4, 3)),
             "actions": torch.zeros(4, 2, 8), "next_tokens": torch.randint(0, 16, (4, 4, 5)),
             "next_state": torch.randint(0, 256, (4, 3))}
    loss, _ = model.loss(batch, change_weight=10.0)
    loss.backward()
    opt.step()
    after = model.state_dict()
    moved = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert moved and moved <= set(train.TileDynamics.TILE_HEAD)
    for k in ("embed.weight", "blocks.0.conv.weight", "state_head.0.weight"):
        assert torch.equal(after[k], before[k])
    with pytest.raises(ValueError, match="init-dynamics"):
        train.Config(dynamics="tiles", ae_arch="tiles", train_only="tile_head")


def test_the_logit_adjustment_keeps_what_training_made_too_ready_to_change():
    """adjust 0 plays as trained; a large adjustment makes every byte and tile keep its value at temperature 0."""
    torch.manual_seed(0)
    model = tiny_tile_dynamics()
    with torch.no_grad():
        model.copy_bonus.fill_(-5.0)  # a head that redraws every tile
    tokens, state, actions = torch.randint(0, 16, (2, 2, 4, 5)), torch.randint(0, 256, (2, 3)), torch.zeros(2, 2, 8)
    codes, nxt = model.step(tokens, state, actions, temperature=0.0)
    assert model.keep_logits == (0.0, 0.0) and not torch.equal(codes, tokens[:, -1])
    model.set_adjust(2.0, 2.0, change_weight=1e6)  # 2 x log(1 + 1e6): 27.6 added to "keep"
    assert model.keep_logits[0] == pytest.approx(2 * np.log1p(1e6))
    codes, nxt = model.step(tokens, state, actions, temperature=0.0)
    assert torch.equal(codes, tokens[:, -1]) and torch.equal(nxt, state)
    cfg = train.Config(dynamics="tiles", ae_arch="tiles", adjust_state=1.0)
    assert cfg.adjust_state == 1.0
    with pytest.raises(ValueError, match="adjust_state"):
        train.Config(adjust_state=3.0)
