"""Discrete dynamics (--dynamics discrete): learned codes, winner-takes-all training and a prior that commits."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import train


def test_code_zero_starts_as_the_vae_it_is_fine_tuned_from():
    torch.manual_seed(0)
    vae = train.VAEDynamicsModel(5, history=2, hidden=16, noise_dim=3, mean_weight=1.0)
    vae.set_latent_stats(torch.randn(100, 5))
    model = train.DiscreteDynamicsModel(5, history=2, hidden=16, codes=4, slot=3)
    missing, unexpected = model.load_state_dict(vae.state_dict(), strict=False)
    assert sorted({k.split(".")[0] for k in missing}) == ["codes", "prior"]
    assert all(k.startswith("posterior.") for k in unexpected)
    z, a = torch.randn(3, 2, 5), (torch.rand(3, 2, 8) < 0.3).float()
    with torch.no_grad():
        assert torch.allclose(model(z, a, torch.zeros(3, dtype=torch.long)), vae.eval()(z, a), atol=1e-6)
        assert not torch.allclose(model(z, a, torch.ones(3, dtype=torch.long)), vae(z, a), atol=1e-3)


def test_winner_takes_all_feeds_the_closest_code_and_weights_the_rest_by_spread():
    torch.manual_seed(0)
    model = train.DiscreteDynamicsModel(5, history=2, hidden=16, codes=3, spread=0.1, prior_weight=0.5)
    model.set_latent_stats(torch.randn(100, 5))
    z_hist, a_hist, z_next = torch.randn(6, 2, 5), torch.zeros(6, 2, 8), torch.randn(6, 5)
    loss, pred = model.loss(z_hist, a_hist, z_next)
    with torch.no_grad():
        h = model.features(z_hist, a_hist)
        deltas = model.all_deltas(h)  # (6, 3, 5), normalised
        err = (deltas - ((z_next - z_hist[:, -1]) / model.z_scale)[:, None]).pow(2).mean(-1)
        winner = err.argmin(1)
        weight = torch.full_like(err, 0.05).scatter_(1, winner[:, None], 0.9)
        ce = torch.nn.functional.cross_entropy(model.prior_from(h), winner)
    assert torch.allclose(pred, z_hist[:, -1] + deltas[torch.arange(6), winner] * model.z_scale)
    assert torch.isclose(loss, (err * weight).sum(1).mean() + 0.5 * ce)
    assert model.last_aux["codes_used"] == torch.exp(-sum(
        p * p.log() for p in torch.bincount(winner, minlength=3).float().div(6) if p > 0))


def test_code_from_change_keeps_still_steps_still_and_plays_whole_changes():
    """Half the steps change nothing, half move by +1, by a coin the context does not show: code 0 learns "nothing",
    code 1 the whole move, the prior how often each comes. A plain model would move everything by 0.5 each step."""
    g = torch.Generator().manual_seed(0)
    z, a = torch.randn(1024, 2, 4, generator=g), torch.zeros(1024, 2, 8)
    changed = torch.rand(1024, generator=g) < 0.5
    z_next = z[:, -1] + changed[:, None].float()
    torch.manual_seed(0)
    model = train.DiscreteDynamicsModel(4, history=2, hidden=32, codes=2, prior_weight=1.0, code_from="change")
    model.set_latent_stats(z.flatten(0, 1))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        loss, pred = model.loss(z, a, z_next, changed)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(pred, z_next, atol=0.2)  # fed forward: the labelled code's prediction
    with torch.no_grad():
        torch.manual_seed(2)
        step = model.eval().step(z, a, 1.0) - z[:, -1]
    moved = step.mean(1)
    assert ((moved.abs() < 0.2) | ((moved - 1).abs() < 0.2)).float().mean() > 0.95  # whole steps or none
    assert 0.35 < (moved > 0.5).float().mean() < 0.65
    with pytest.raises(ValueError, match="pass changes"):
        train.dynamics_loss(model, z[:4], a[:4], torch.zeros(4, 1, 8), z_next[:4, None])
    with pytest.raises(SystemExit, match="code_from must be"):
        train.parse_args(["--dataset", "x", "--dynamics", "discrete", "--code-from", "change", "--codes", "3"])


def test_screen_changes_marks_the_steps_whose_next_frame_differs(tiny_dataset, tmp_path):
    cache = train.load_frames(tiny_dataset, 80, str(tmp_path / "cache"))
    changes = train.screen_changes(cache)
    f = cache.frames.astype(int)
    for t in range(len(f) - 1):
        if cache.episodes[t + 1] != cache.episodes[t]:
            assert not changes[t]  # no next frame in this episode
        else:
            assert changes[t] == bool((np.abs(f[t + 1] - f[t]) > 25.5).any()), t
    assert not changes[-1] and 0 < changes.mean() < 1


def test_temperature_zero_is_deterministic_and_sampling_replays_with_its_seed():
    torch.manual_seed(0)
    model = train.DiscreteDynamicsModel(6, history=2, hidden=16, codes=5)
    model.set_latent_stats(torch.randn(100, 6))
    model.eval()
    z_hist, a_hist = torch.randn(64, 2, 6), torch.zeros(64, 2, 8)
    with torch.no_grad():
        assert torch.equal(model.step(z_hist, a_hist, 0.0), model.step(z_hist, a_hist, 0.0))
        torch.manual_seed(5)
        c = model.step(z_hist, a_hist, 1.0)
        torch.manual_seed(5)
        assert torch.equal(c, model.step(z_hist, a_hist, 1.0))
        assert not torch.equal(c, model.step(z_hist, a_hist, 1.0))
        assert not torch.equal(c, model.step(z_hist, a_hist, 0.0))


def test_bad_discrete_settings_are_clear_errors():
    with pytest.raises(SystemExit, match="codes must be >= 1"):
        train.parse_args(["--dataset", "x", "--dynamics", "discrete", "--codes", "0"])
    with pytest.raises(SystemExit, match="spread in"):
        train.parse_args(["--dataset", "x", "--dynamics", "discrete", "--spread", "1"])
    cfg, _ = train.parse_args(["--dataset", "x", "--dynamics", "discrete", "--noise-dim", "0"])
    assert train.build_dynamics(cfg, 6).slot == 0  # from scratch, no VAE inputs to hold at zero


def test_a_vae_run_fine_tunes_into_discrete_dynamics_that_play(tiny_vae_run, tiny_dataset, tmp_path):
    out = str(tmp_path / "discrete")
    os.makedirs(out)
    shutil.copy(os.path.join(tiny_vae_run, "autoencoder.pt"), out)
    args = ["--dataset", tiny_dataset, "--out", out, "--stage", "dynamics", "--ae-arch", "spatial", "--ae-width", "8",
            "--latent-channels", "2", "--history", "2", "--hidden", "32", "--dynamics", "discrete", "--codes", "3",
            "--init-dynamics", os.path.join(tiny_vae_run, "dynamics.pt"), "--unroll", "2", "--epochs", "1",
            "--batch-size", "32", "--cache-dir", os.path.join(tiny_vae_run, "cache"), "--spot-check", ""]
    with pytest.raises(SystemExit, match="does not fit this config's dynamics"):  # the VAE had 4 noise inputs
        train.main(args + ["--noise-dim", "2"])
    train.main(args + ["--noise-dim", "4", "--temperature", "0.8", "--export", os.path.join(out, "export")])
    log = [json.loads(line) for line in open(os.path.join(out, "dynamics_log.jsonl"))]
    assert 1 <= log[-1]["codes_used"] <= 3 and log[-1]["prior_ce"] > 0
    world = train.WorldModel.load(os.path.join(out, "export"))
    assert world.stochastic and world.default_temperature == 0.8
    state = world.start("play")
    for _ in range(3):
        state, z = world.step(state, torch.zeros(1, 8), 1.0)
    assert torch.isfinite(z).all() and z.shape[1] == np.prod(world.latent_shape)


def test_dyn_change_weight_weights_the_numbers_that_change_in_every_loss():
    torch.manual_seed(0)
    z_hist, a_hist = torch.randn(4, 2, 6), torch.zeros(4, 2, 8)
    z_next = z_hist[:, -1].clone()
    z_next[:, :2] += 1.0  # two numbers change, four stay
    for model in (train.DynamicsModel(6, history=2, hidden=16),
                  train.DiscreteDynamicsModel(6, history=2, hidden=16, codes=1, prior_weight=0.0)):
        model.set_latent_stats(torch.randn(100, 6))
        with torch.no_grad():
            plain, pred = model.loss(z_hist, a_hist, z_next)
            err = ((pred - z_next) / model.z_scale).pow(2)
            model.change_weight = 10.0
            weighted, _ = model.loss(z_hist, a_hist, z_next)
        assert torch.isclose(plain, err.mean())
        assert torch.isclose(weighted, (err[:, :2] * 11).sum(1).add(err[:, 2:].sum(1)).div(6).mean())
