"""Issue #23: the VQ-VAE tokenizer at native colour beside the patch codebook, and the tile dynamics on its tokens."""
import json
import os

import numpy as np
import pytest
import torch

import train


def frames(n=4, seed=0):
    """Native NES-sized frames of flat 8×8 tiles in a few colours, as a tile game draws them."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 4, (n, 30, 32)) * 60
    return np.repeat(np.repeat(tiles, 8, 1), 8, 2)[..., None].repeat(3, -1).astype(np.uint8)


def test_the_straight_through_gradient_reaches_the_encoder_and_the_ema_moves_the_codebook():
    torch.manual_seed(0)
    vq = train.VQVAE(codes=16, dim=4, stride=8, width=8).train()
    x = torch.from_numpy(frames())
    vq.loss(x)  # the first batch initialises the codebook from the encoder's outputs
    assert bool(vq.initialised)
    before = vq.codebook.clone()
    loss, logs = vq.loss(x)
    assert not torch.equal(before, vq.codebook)  # the EMA update, without any optimiser step
    loss.backward()
    grads = [p.grad for p in vq.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert vq.codebook.grad is None and logs["commit"] >= 0
    vq.eval()
    frozen = vq.codebook.clone()
    vq(x.permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(frozen, vq.codebook)  # eval mode leaves the codebook alone


def test_dead_codes_restart_at_encoder_outputs():
    torch.manual_seed(0)
    vq = train.VQVAE(codes=64, dim=4, stride=8, width=8, dead=0.5).train()
    x = torch.from_numpy(frames(2))
    vq.loss(x)
    vq.ema_count[:32] = 0.0  # half the codes unused for a long time
    vq.loss(x)
    z = vq.encode(x.permute(0, 3, 1, 2).float() / 255).permute(0, 2, 3, 1).reshape(-1, 4)
    restarted = vq.ema_count[:32] == 1.0  # (a code this batch chose a lot is alive again, and kept)
    assert restarted.sum() >= 16 and (vq.ema_count[32:] != 1.0).all()
    d = torch.cdist(vq.codebook[:32][restarted], z, compute_mode="donot_use_mm_for_euclid_dist")
    assert (d.min(1).values < 1e-5).all()  # each is an encoder output


def test_save_load_gives_identical_tokens_and_frames(tmp_path):
    torch.manual_seed(0)
    cfg = train.Config(ae_arch="vqvae", dynamics="tiles", vq_codes=32, vq_dim=4, vq_width=8, frame_size=(240, 256))
    vq = train.build_autoencoder(cfg).train()
    f = frames(3)
    vq.loss(torch.from_numpy(f))
    vq.loss(torch.from_numpy(f))
    vq.eval()
    path = str(tmp_path / "autoencoder.pt")
    train.save_checkpoint(path, "autoencoder", cfg, vq)
    again, _ = train.load_model(path, "autoencoder")
    assert isinstance(again, train.VQVAE) and torch.equal(vq.tokenize(f), again.tokenize(f))
    assert np.array_equal(vq.render(vq.tokenize(f)), again.render(again.tokenize(f)))
    assert vq.tokenize(f).shape == (3, 30, 32) and vq.render(vq.tokenize(f)).shape == f.shape


def test_a_coarser_token_grid_and_an_atari_frame():
    vq = train.VQVAE(codes=8, dim=4, stride=16, width=8, frame_hw=(210, 160)).eval()
    f = np.zeros((2, 210, 160, 3), np.uint8)
    assert vq.tokenize(f).shape == (2, 14, 10) and vq.render(vq.tokenize(f)).shape == f.shape
    with pytest.raises(ValueError):
        train.VQVAE(stride=12)
    cfg = train.Config(ae_arch="vqvae", dynamics="tiles", vq_codes=8, vq_stride=16, frame_size=(210, 160), hidden=8,
                       conv_blocks=1, state_width=8, history=2)
    dyn = train.build_dynamics(cfg, 0, [1, 2]).eval()  # the dynamics take the tokenizer's grid and vocabulary
    assert dyn.grid == (14, 10) and dyn.codes == 8
    codes, _ = dyn.step(vq.tokenize(f)[None], torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 8), 0.0)
    assert codes.shape == (1, 14, 10) and int(codes.max()) < 8


def test_the_tokenizer_report_scores_the_patch_codebook_exact_on_its_own_tiles():
    f = frames(3)
    tiles = train.frames_to_tiles(f).reshape(-1, 8, 8, 3)
    table, counts = np.unique(tiles, axis=0, return_counts=True)
    tok = train.TileAutoencoder(codes=16)
    train.fit_tiles(tok, table, counts)
    report = train.tokenizer_report(tok, f)
    assert report["exact_tiles"] == 1.0 and report["l1"] == 0.0 and report["tokens_per_frame"] == 960
    assert report["codes_used"] == len(table) and np.isclose(report["codebook_use"], len(table) / 16)
    vq = train.VQVAE(codes=16, dim=4, width=8).eval()
    worse = train.tokenizer_report(vq, f)
    assert worse["exact_tiles"] < 1.0 and worse["psnr_db"] < report["psnr_db"]


def test_train_py_trains_a_vqvae_tokenizer_and_evaluate_py_compares_it(tiny_dataset, tmp_path, capsys):
    import evaluate
    out = str(tmp_path / "vq")
    common = ["--dataset", tiny_dataset, "--cache-dir", str(tmp_path / "cache")]
    vq = ["--ae-arch", "vqvae", "--stage", "ae", "--ae-samples-per-epoch", "16", "--batch-size", "8", "--vq-codes", "32",
          "--vq-width", "8", "--out", out]
    train.main(common + vq + ["--epochs", "1"])
    train.main(common + vq + ["--epochs", "2"])  # a second epoch: the run resumes after the first
    assert "resuming the VQ-VAE from epoch 1" in capsys.readouterr().out
    results = evaluate.main(["--tokenizers", out, "checkpoints/tetris", "--dataset", tiny_dataset, "--frames", "6",
                             "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "tok")])
    assert os.path.exists(tmp_path / "tok.md") and len(results) == 2
    assert results["checkpoints/tetris/autoencoder.pt"]["exact_tiles"] > 0.99
    # the tile dynamics on the VQ-VAE's tokens: trained, exported, loaded as a TileWorld and scored by evaluate.py
    train.main(common + vq + ["--stage", "dynamics", "--dynamics", "tiles", "--history", "2", "--hidden", "8",
                              "--conv-blocks", "1", "--state-width", "16", "--dyn-epochs", "1",
                              "--dyn-samples-per-epoch", "16", "--export", str(tmp_path / "export"), "--spot-check", ""])
    cached = [f for f in os.listdir(tmp_path / "cache") if f.startswith("tokens-")]
    assert len(cached) == 1  # every frame tokenised once, kept for later runs
    world = train.World.load(str(tmp_path / "export"))
    assert isinstance(world, train.TileWorld) and isinstance(world.autoencoder, train.VQVAE)
    assert world.dynamics.codes == 32 and world.dynamics.grid == (30, 32)
    state, z = world.step(world.start(), torch.zeros(1, 8), temperature=0.0)
    assert z.shape == (1, 30, 32) and world.show(z).shape == (240, 256, 3)
    evaluate.main(["--checkpoint", str(tmp_path / "export"), "--dataset", tiny_dataset, "--starts", "2", "--horizons",
                   "1", "2", "--samples", "0", "--no-plots", "--cache-dir", str(tmp_path / "cache"), "--out",
                   str(tmp_path / "eval")])
    with open(tmp_path / "eval.json") as f:
        scored = json.load(f)["results"]
    assert {"model", "copy-last-frame", "autoencoder oracle"} <= set(scored)
    assert all(np.isfinite(v) for v in scored["model"]["1"].values())
    world.attach(tiny_dataset, str(tmp_path / "cache"))  # evaluate.py's tokens: the cached ones, the tokenizer's own
    real = train.load_tiles(tiny_dataset, str(tmp_path / "cache")).frames([0, 1])
    assert torch.equal(world.tokens[:2], world.autoencoder.tokenize(real))
    with pytest.raises(SystemExit) as e:  # a VQ-VAE with dynamics that do not predict tokens: a one-line error
        train.main(common + ["--ae-arch", "vqvae", "--out", str(tmp_path / "all")])
    assert "goes with dynamics tiles or transformer" in str(e.value) and "\n" not in str(e.value)
