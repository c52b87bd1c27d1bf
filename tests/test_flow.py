"""Flow-matching dynamics (--dynamics flow): samples of one future, not the mean of the futures."""
import os
import shutil

import numpy as np
import pytest
import torch

import main as play
import train


def coin_toss(n, side=6, seed=0):
    """A one-cell blob on a (1, side, side) map that moves one row down or stays, each half the time, whatever
    the context says: (z_hist, a_hist, z_next, row, col)."""
    g = torch.Generator().manual_seed(seed)
    r, c = torch.randint(1, side - 2, (n,), generator=g), torch.randint(side, (n,), generator=g)
    move = (torch.rand(n, generator=g) < 0.5).long()
    z, z_next = torch.zeros(n, side, side), torch.zeros(n, side, side)
    z[torch.arange(n), r, c] = 1
    z_next[torch.arange(n), r + move, c] = 1
    return z.flatten(1)[:, None], torch.zeros(n, 1, 8), z_next.flatten(1), r, c


@pytest.mark.parametrize("target", ["delta", "latent"])
def test_an_untrained_flow_copies_the_last_latent_whatever_the_noise(target):
    model = train.FlowDynamicsModel(4 * 5 * 5, history=3, width=8, channels=4, blocks=2, steps=3, target=target)
    z, a = torch.randn(2, 3, 100), torch.zeros(2, 3, 8)
    with torch.no_grad():
        assert torch.allclose(model.step(z, a, 1.0), z[:, -1], atol=1e-5)
        assert torch.allclose(model.step(z, a, 0.0), z[:, -1], atol=1e-5)


@pytest.mark.parametrize("target", ["delta", "latent"])
def test_a_flow_started_from_conv_dynamics_first_plays_as_they_do(target):
    torch.manual_seed(0)
    conv = train.ConvDynamicsModel(2 * 6 * 6, history=2, width=8, channels=2, blocks=3)
    torch.nn.init.normal_(conv.out.weight, std=0.1)  # a trained model's prediction, not copy-last
    conv.set_latent_stats(torch.randn(50, 72))
    flow = train.FlowDynamicsModel(72, history=2, width=8, channels=2, blocks=3, steps=4, target=target)
    assert sorted({k.split(".")[0] for k in train.load_init_dynamics(flow, conv)}) == ["freqs", "gate", "time"]
    z, a = torch.randn(3, 2, 72), (torch.rand(3, 2, 8) < 0.3).float()
    with torch.no_grad():
        expected = conv.step(z, a)
        assert not torch.allclose(expected, z[:, -1], atol=1e-3)
        for temperature in (0.0, 1.0):
            assert torch.allclose(flow.step(z, a, temperature), expected, atol=1e-5)
    other = train.FlowDynamicsModel(72, history=2, width=16, channels=2, blocks=3)
    with pytest.raises(ValueError, match="size mismatch"):
        train.load_init_dynamics(other, conv)


def test_where_the_future_is_a_coin_toss_samples_draw_one_whole_outcome_and_the_mean_draws_both_faintly():
    """The gravity timer the screen does not show: half the time the blob drops a row. A regression draws it at
    half strength in both rows (the fading piece); flow samples draw it whole in one row or the other."""
    data = coin_toss(4096)
    test = coin_toss(400, seed=1)
    rows = torch.arange(400)
    whole, split = {}, {}
    for name, model in (("flow", train.FlowDynamicsModel(36, history=1, width=16, channels=1, blocks=2, steps=8)),
                        ("conv", train.ConvDynamicsModel(36, history=1, width=16, channels=1, blocks=2))):
        torch.manual_seed(0)
        model.set_latent_stats(data[0][:, 0])
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(800):
            idx = torch.randint(len(data[0]), (256,))
            loss, _ = model.loss(data[0][idx], data[1][idx], data[2][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = model.eval().step(test[0], test[1], 1.0).view(-1, 6, 6)
        stay, drop = out[rows, test[3], test[4]], out[rows, test[3] + 1, test[4]]
        stayed, dropped = (stay > 0.75) & (drop < 0.25), (drop > 0.75) & (stay < 0.25)
        whole[name] = (stayed | dropped).float().mean().item()
        split[name] = dropped.float().mean().item() / max(whole[name], 1e-6)
    assert whole["flow"] > 0.7 and 0.2 < split["flow"] < 0.8, (whole, split)
    assert whole["conv"] < 0.1, whole


def test_flow_settings_are_checked():
    with pytest.raises(ValueError, match="flow dynamics need ae_arch spatial"):
        train.Config(dynamics="flow", ae_arch="seed")
    with pytest.raises(ValueError, match="flow dynamics need"):
        train.Config(dynamics="flow", ae_arch="spatial", flow_steps=0)
    with pytest.raises(ValueError, match="flow_target delta or latent"):
        train.Config(dynamics="flow", ae_arch="spatial", flow_target="frame")
    with pytest.raises(ValueError, match="flow_noise > 0"):
        train.Config(dynamics="flow", ae_arch="spatial", flow_noise=0)


def test_a_flow_run_trains_exports_and_plays(tiny_run, tiny_dataset, tmp_path, monkeypatch):
    out = str(tmp_path / "flow")
    args = ["--dataset", tiny_dataset, "--out", out, "--stage", "dynamics", "--ae-arch", "spatial", "--ae-width", "8",
            "--latent-channels", "2", "--history", "2", "--hidden", "8", "--conv-blocks", "2", "--dynamics", "flow",
            "--flow-steps", "3", "--epochs", "1", "--batch-size", "32", "--temperature", "0.9",
            "--cache-dir", os.path.join(tiny_run, "cache"), "--spot-check", "", "--export", os.path.join(out, "export")]
    with pytest.raises(SystemExit, match="autoencoder.pt: checkpoint not found.*run --stage ae first"):
        train.main(args)
    assert not os.path.exists(out)  # nothing half-written
    os.makedirs(out)
    shutil.copy(os.path.join(tiny_run, "autoencoder.pt"), out)
    train.main(args)
    world = train.WorldModel.load(os.path.join(out, "export"))
    assert world.stochastic and world.default_temperature == 0.9 and world.dynamics.steps == 3
    torch.manual_seed(0)
    state, zs = world.start("play"), []
    for _ in range(3):
        state, z = world.step(state, torch.zeros(1, 8), 0.9)
        zs.append(z)
    assert all(torch.isfinite(z).all() for z in zs) and zs[0].shape[1] == np.prod(world.latent_shape)
    calls = []
    denoise = train.FlowDynamicsModel.denoise
    monkeypatch.setattr(train.FlowDynamicsModel, "denoise", lambda self, *a: calls.append(1) or denoise(self, *a))
    assert play.main(["--checkpoint", os.path.join(out, "export"), "--headless", "--frames", "2",
                      "--flow-steps", "5"])["frames"] == 2
    assert len(calls) == 2 * 5  # 5 Euler steps a frame, not the checkpoint's 3
    with pytest.raises(SystemExit, match="--flow-steps 0: must be >= 1"):
        play.main(["--checkpoint", os.path.join(out, "export"), "--headless", "--flow-steps", "0"])
    with pytest.raises(SystemExit, match="not flow dynamics"):
        play.main(["--checkpoint", os.path.join(tiny_run, "export"), "--headless", "--flow-steps", "2"])
