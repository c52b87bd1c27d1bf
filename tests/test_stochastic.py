"""Phase 3: VAE dynamics, temperature, scheduled sampling, and evaluation of stochastic models."""
import json
import math
import os

import numpy as np
import pytest
import torch

import train


def vae_model(latent_dim=6, history=2):
    torch.manual_seed(0)
    model = train.VAEDynamicsModel(latent_dim, history, hidden=16, noise_dim=3, beta=0.01)
    model.set_latent_stats(torch.randn(200, latent_dim))
    return model


def test_vae_loss_and_kl_are_finite_and_the_kl_is_used():
    model = vae_model()
    z_hist, a_hist, z_next = torch.randn(8, 2, 6), torch.zeros(8, 2, 8), torch.randn(8, 6)
    loss, pred = model.loss(z_hist, a_hist, z_next)
    assert pred.shape == (8, 6) and torch.isfinite(loss)
    assert model.last_aux["kl"].item() == 0  # the posterior starts as the prior
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):  # fitting random futures needs the noise code: the KL grows, stays finite
        loss, _ = model.loss(z_hist, a_hist, z_next)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 0 < model.last_aux["kl"].item() < 1e3 and math.isfinite(loss.item())


def test_temperature_zero_is_deterministic_and_one_samples():
    model = vae_model().eval()
    z_hist, a_hist = torch.randn(4, 2, 6), torch.zeros(4, 2, 8)
    with torch.no_grad():
        a, b = model.step(z_hist, a_hist, 0.0), model.step(z_hist, a_hist, 0.0)
        assert torch.equal(a, b)
        c, d = model.step(z_hist, a_hist, 1.0), model.step(z_hist, a_hist, 1.0)
        assert not torch.equal(c, d) and not torch.equal(c, a)
        torch.manual_seed(5)
        e = model.step(z_hist, a_hist, 1.0)
        torch.manual_seed(5)
        assert torch.equal(e, model.step(z_hist, a_hist, 1.0))  # seeded sampling replays


def test_mean_weight_fits_and_feeds_forward_the_temperature_zero_prediction():
    model = vae_model()
    z_hist, a_hist, z_next = torch.randn(8, 2, 6), torch.zeros(8, 2, 8), torch.randn(8, 6)
    torch.manual_seed(1)
    plain_loss, plain_pred = model.loss(z_hist, a_hist, z_next)
    model.mean_weight = 0.5
    torch.manual_seed(1)
    loss, pred = model.loss(z_hist, a_hist, z_next)
    central = z_hist[:, -1] + model(z_hist, a_hist)  # e = 0: what temperature 0 plays
    assert torch.allclose(pred, central) and not torch.allclose(plain_pred, central)
    extra = torch.nn.functional.mse_loss(central / model.z_scale, z_next / model.z_scale)
    assert torch.isclose(loss, plain_loss + 0.5 * extra)
    loss.backward()  # the e = 0 term trains the transition
    assert model.net[-1].weight.grad.abs().sum() > 0
    cfg = train.Config(dynamics="vae", mean_weight=0.5, history=2, hidden=16, noise_dim=3)
    assert train.build_dynamics(cfg, 6).mean_weight == 0.5
    with pytest.raises(SystemExit, match="mean_weight"):
        train.parse_args(["--dataset", "x", "--mean-weight", "-1"])


def test_export_leaves_out_the_posterior_and_plays_the_same(tmp_path):
    model = vae_model().eval()
    cfg = train.Config(dynamics="vae", history=2, hidden=16, noise_dim=3, beta=0.01)
    full, export = str(tmp_path / "full.pt"), str(tmp_path / "export.pt")
    train.save_checkpoint(full, "dynamics", cfg, model)
    train.save_checkpoint(export, "dynamics", cfg, model, half=True)
    state = torch.load(export, weights_only=True)["state_dict"]
    assert not any(k.startswith("posterior.") for k in state) and any(k.startswith("net.") for k in state)
    full_state = torch.load(full, weights_only=True)["state_dict"]
    assert set(full_state) - set(state) == {k for k in full_state if k.startswith("posterior.")}
    loaded, ckpt = train.load_model(export, "dynamics", 6)
    assert ckpt["dropped"] == ["posterior."]
    z_hist, a_hist = torch.randn(4, 2, 6), torch.zeros(4, 2, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.step(z_hist, a_hist, 0.0), model.step(z_hist, a_hist, 0.0), atol=1e-2)


def test_shipped_checkpoint_is_stochastic_and_plays_at_its_default_temperature(capsys):
    import main
    world = train.WorldModel.load(os.path.join(os.path.dirname(__file__), "..", "checkpoints", "tetris_latent"))
    assert world.stochastic and world.default_temperature == 0.5
    main.main(["--checkpoint", "checkpoints/tetris_latent", "--headless", "--frames", "3"])
    assert "temperature 0.5" in capsys.readouterr().out
    main.main(["--headless", "--frames", "3"])  # what make play runs, without a display: Tetris's tile world
    assert "temperature 1" in capsys.readouterr().out
    assert main.parse_args([]).game is None  # in a window: the menu (tests/test_player.py)


def test_scheduled_sampling_zero_is_teacher_forcing():
    model = train.DynamicsModel(6, history=2, hidden=16)
    model.set_latent_stats(torch.randn(100, 6))
    z_hist, a_hist = torch.randn(5, 2, 6), torch.zeros(5, 2, 8)
    future, targets = torch.zeros(5, 3, 8), torch.randn(5, 3, 6)
    forced = train.dynamics_loss(model, z_hist, a_hist, future, targets, self_feed=0.0)
    manual, ctx = 0.0, z_hist
    for u in range(3):
        manual = manual + model.loss(ctx, torch.zeros(5, 2, 8), targets[:, u])[0]
        ctx = torch.cat([ctx[:, 1:], targets[:, u:u + 1]], dim=1)
    assert torch.isclose(forced, manual / 3)
    own = train.dynamics_loss(model, z_hist, a_hist, future, targets, self_feed=1.0)
    assert not torch.isclose(own, forced)


def test_vae_checkpoint_plays_deterministically_at_zero_and_varies_at_one(tiny_vae_run):
    import main
    world = train.WorldModel.load(tiny_vae_run)
    assert world.stochastic and world.default_temperature == 0.7
    log = [json.loads(line) for line in open(f"{tiny_vae_run}/dynamics_log.jsonl")]
    assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in log) and log[-1]["self_feed"] == 0.5
    actions = (np.random.default_rng(0).random((12, 8)) < 0.2).astype(np.uint8)

    def play(temperature, seed):
        """-> frames shown and the latents dreamed (a 2-epoch decoder can round small differences away)."""
        torch.manual_seed(seed)
        env = main.NeuralGame(world, temperature=temperature)
        env.reset()
        frames, latents = [], []
        for a in actions:
            frames.append(env.step(a))
            latents.append(env.state[0][:, -1].clone())
        return np.stack(frames), torch.cat(latents)

    (f0, z0), (f0b, z0b) = play(0.0, 1), play(0.0, 2)
    assert np.array_equal(f0, f0b) and torch.equal(z0, z0b)  # replay at temperature 0 ignores the seed
    (f1, z1), (f1b, z1b), (_, z2) = play(1.0, 1), play(1.0, 1), play(1.0, 2)
    assert np.array_equal(f1, f1b) and torch.equal(z1, z1b)  # the same seed replays a sample
    assert not torch.equal(z1, z2) and not torch.equal(z1, z0)


def test_evaluate_reports_mean_and_best_of_k_and_diversity(tiny_dataset, tiny_vae_run, tmp_path):
    import evaluate
    out = str(tmp_path / "eval")
    evaluate.main(["--dataset", tiny_dataset, "--checkpoint", tiny_vae_run, "--starts", "6", "--horizons", "1", "5",
                   "--samples", "3", "--out", out, "--cache-dir", str(tmp_path / "cache")])
    assert os.path.getsize(out + "_samples.png") > 0  # 10 samples from the same states, and their spread
    report = json.load(open(out + ".json"))
    rows = report["results"]
    mean_k, best_k = rows["model T=1 mean of 3"], rows["model T=1 best of 3"]
    for h in ("1", "5"):
        assert best_k[h]["l1"] <= mean_k[h]["l1"] + 1e-12 and best_k[h]["ssim"] >= mean_k[h]["ssim"] - 1e-12
    diversity = next(iter(report["diversity"].values()))
    assert diversity["5"]["pairwise_l1"] > 0
    assert "model" in rows and "copy-last-latent" in rows  # the deterministic row and baselines stay


def test_mean_and_best_of_k_are_the_per_sample_scores_averaged_and_picked():
    """Three samples of two starts with known errors: mean of k averages each start's three L1s, best of k takes
    each start's smallest, then both average over the starts (recomputed here from the per-sample scores)."""
    import evaluate
    real = np.zeros((2, 16, 16))
    start = np.zeros((2, 16, 16))
    start[:, :8] = 1.0  # the top half changed: real differs from the start frame there
    errors = np.array([[0.1, 0.4], [0.3, 0.2], [0.5, 0.6]])  # (k samples, N starts): each a flat error
    samples = errors[:, :, None, None] + np.zeros((3, 2, 16, 16))
    fake_lpips = lambda p, r: (p - r).abs().mean((1, 2, 3))  # noqa: E731  (LPIPS itself is tested elsewhere)
    out = evaluate.sample_metrics(samples, real, start, 0.5, fake_lpips)
    assert out["mean of k"]["l1"] == pytest.approx(errors.mean(0).mean())
    assert out["best of k"]["l1"] == pytest.approx(errors.min(0).mean())
    assert out["best of k"]["changed_l1"] == pytest.approx(errors.min(0).mean())
    assert out["best of k"]["l1"] < out["mean of k"]["l1"]
    assert out["diversity"]["pairwise_l1"] == pytest.approx(np.mean([0.2, 0.4, 0.2, 0.2, 0.2, 0.4]))


def test_main_refuses_a_temperature_out_of_range(tiny_vae_run):
    import main
    with pytest.raises(SystemExit, match="--temperature 2.5: must be between 0 and 2"):
        main.main(["--checkpoint", tiny_vae_run, "--headless", "--frames", "2", "--temperature", "2.5"])
