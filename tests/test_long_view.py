"""The dynamics' long view (--long-history): a summary of the last N steps beside the recent latents."""
import os

import numpy as np
import pytest
import torch

import train


def models(long_history=6, history=2, latent_dim=5):
    """(a VAE dynamics without the long view, the same with it, built from the first's weights)."""
    torch.manual_seed(0)
    old = train.VAEDynamicsModel(latent_dim, history, hidden=16, noise_dim=3, mean_weight=1.0)
    old.set_latent_stats(torch.randn(100, latent_dim))
    new = train.VAEDynamicsModel(latent_dim, history, hidden=16, noise_dim=3, mean_weight=1.0,
                                 long_history=long_history, summary_dim=4)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("long_") for k in missing)
    return old.eval(), new.eval()


def test_the_long_view_starts_as_the_model_it_is_fine_tuned_from():
    old, new = models()
    assert (old.history, new.history, new.recent) == (2, 6, 2)
    z, a, e = torch.randn(3, 6, 5), (torch.rand(3, 6, 8) < 0.3).float(), torch.randn(3, 3)
    with torch.no_grad():
        assert torch.equal(old(z[:, -2:], a[:, -2:]), new(z, a))
        assert torch.equal(old(z[:, -2:], a[:, -2:], e), new(z, a, e))


def test_the_long_view_learns_from_what_the_recent_latents_do_not_show():
    torch.manual_seed(0)
    z, a, z_new = torch.randn(512, 6, 5), torch.zeros(512, 6, 8), torch.randn(128, 6, 5)
    future = lambda zz: zz[:, -1] + 3 * (zz[:, 1] - zz[:, 0]).abs()  # only the oldest change decides it
    errors = {}
    for long_history in (0, 6):
        torch.manual_seed(0)
        model = train.DynamicsModel(5, history=2, hidden=32, long_history=long_history, summary_dim=4)
        model.set_latent_stats(torch.randn(100, 5))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(200):
            loss, _ = model.loss(z[:, -model.history:], a[:, -model.history:], future(z))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # on contexts it has not seen
            pred = z_new[:, -1] + model(z_new[:, -model.history:], a[:128, -model.history:])
            errors[long_history] = torch.nn.functional.mse_loss(pred, future(z_new)).item()
    assert model.long_proj.weight.grad.abs().sum() > 0
    assert errors[6] < 0.3 * errors[0], errors


def test_long_history_must_exceed_history():
    with pytest.raises(SystemExit, match="long_history"):
        train.parse_args(["--dataset", "x", "--history", "4", "--long-history", "3"])
    cfg, _ = train.parse_args(["--dataset", "x", "--history", "4", "--long-history", "32"])
    assert cfg.context_length == 32 and train.Config(history=4).context_length == 4
    help_text = train._field_comments()  # --help gets the whole comment, and only its own
    assert help_text["long_history"].endswith("(gravity, auto-repeat); 0 = off")
    assert "dynamics" not in help_text["ae_samples_per_epoch"]


def test_a_run_with_the_long_view_trains_fine_tunes_and_plays(tiny_run, tiny_dataset, tmp_path):
    """Fine-tune tiny_run's dynamics (history 3) with a long view of 6 steps; the world plays from 6 latents."""
    out = str(tmp_path / "long")
    os.makedirs(out)
    import shutil
    shutil.copy(os.path.join(tiny_run, "autoencoder.pt"), out)
    train.main(["--dataset", tiny_dataset, "--out", out, "--stage", "dynamics", "--ae-arch", "spatial",
                "--ae-width", "8", "--latent-channels", "2", "--history", "3", "--hidden", "32",
                "--long-history", "6", "--summary-dim", "4", "--init-dynamics", os.path.join(tiny_run, "dynamics.pt"),
                "--unroll", "2", "--epochs", "1", "--batch-size", "32", "--cache-dir", os.path.join(tiny_run, "cache"),
                "--spot-check", ""])
    world = train.WorldModel.load(out)
    assert world.history == 6 and world.starts["play"]["frames"].shape[0] == 6
    state = world.start("play")
    assert state[0].shape[1] == 6
    for _ in range(3):
        state, z = world.step(state, torch.zeros(1, 8))
    assert torch.isfinite(z).all() and np.prod(world.latent_shape) == z.shape[1]
