"""Phase 2 options: perceptual loss, autoencoder depth, latent noise, and the sweep driver."""
import json
import os

import pytest
import torch

import train


@pytest.mark.parametrize("name", ["alex", "vgg"])
def test_perceptual_loss_is_zero_on_equal_images_finite_and_differentiable(name):
    from skimage import data, transform
    loss_fn = train.PerceptualLoss(name)
    torch.manual_seed(0)
    gray = lambda img: torch.from_numpy(transform.resize(img, (80, 80))).float()[None, None]
    target, other = gray(data.camera()), gray(data.coins())
    recon = (target + 0.2 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    assert loss_fn(target, target).item() == 0
    loss = loss_fn(recon, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert recon.grad is not None and torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0
    blur = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    assert 0 < loss_fn(blur, target) < loss_fn(other, target)  # a blur is closer than another picture


@pytest.mark.parametrize("name,backbone", [("alex", "alex"), ("vgg", "vgg")])
def test_perceptual_features_are_the_real_frozen_imagenet_weights(name, backbone):
    loss_fn = train.PerceptualLoss(name)
    real = train.load_backbone_weights(backbone)
    assert torch.equal(loss_fn.features[0].weight, real["features.0.weight"])
    assert not any(p.requires_grad for p in loss_fn.parameters())
    loss_fn.train()
    assert not loss_fn.training  # stays in eval mode inside a training model


def test_perceptual_flag_adds_its_weighted_term_and_perceptual_batch_limits_it():
    torch.manual_seed(0)
    ae = train.build_autoencoder(train.Config(ae_arch="spatial", ae_width=8))
    frames = torch.rand(4, 1, 80, 80)
    static = torch.zeros(1, 1, 80, 80)
    plain_cfg = train.Config(ae_arch="spatial", ae_width=8)
    perc_cfg = train.Config(ae_arch="spatial", ae_width=8, perceptual="alex", perceptual_weight=0.5)
    perc = train.PerceptualLoss("alex")
    plain, recon = train.autoencoder_loss(ae, frames, frames, static, plain_cfg)
    with_perc, _ = train.autoencoder_loss(ae, frames, frames, static, perc_cfg, perc)
    assert torch.isclose(with_perc, plain + 0.5 * perc(recon, frames))
    two = train.Config(ae_arch="spatial", ae_width=8, perceptual="alex", perceptual_weight=0.5, perceptual_batch=2)
    first_two, _ = train.autoencoder_loss(ae, frames, frames, static, two, perc)
    assert torch.isclose(first_two, plain + 0.5 * perc(recon[:2], frames[:2]))


def test_latent_noise_perturbs_training_reconstructions_only():
    torch.manual_seed(0)
    cfg = train.Config(ae_arch="spatial", ae_width=8, latent_noise=0.1)
    ae = train.build_autoencoder(cfg)
    torch.nn.init.normal_(ae.decoder[-1].weight, std=0.1)  # the zero-initialised head would hide the noise
    frames, static = torch.rand(2, 1, 80, 80), torch.zeros(1, 1, 80, 80)
    ae.train()
    _, a = train.autoencoder_loss(ae, frames, frames, static, cfg)
    _, b = train.autoencoder_loss(ae, frames, frames, static, cfg)
    assert not torch.equal(a, b)
    quiet = train.Config(ae_arch="spatial", ae_width=8)
    _, c = train.autoencoder_loss(ae, frames, frames, static, quiet)
    _, d = train.autoencoder_loss(ae, frames, frames, static, quiet)
    assert torch.equal(c, d) and torch.equal(c, ae(frames))
    ae.eval()
    _, e = train.autoencoder_loss(ae, frames, frames, static, cfg)
    assert torch.equal(e, ae(frames))


@pytest.mark.parametrize("arch", ["seed", "spatial"])
def test_depth_4_adds_layers_and_keeps_the_shapes(arch):
    shallow = train.build_autoencoder(train.Config(ae_arch=arch, ae_width=8, latent_dim=64))
    deep = train.build_autoencoder(train.Config(ae_arch=arch, ae_width=8, latent_dim=64, ae_depth=4))
    count = lambda m: sum(isinstance(x, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for x in m.modules())
    assert count(deep) == count(shallow) + 2
    x = torch.rand(2, 1, 80, 80)
    assert deep.encode(x).shape == shallow.encode(x).shape and deep(x).shape == x.shape


def test_phase2_config_round_trips_through_a_checkpoint(tmp_path):
    cfg = train.Config(ae_arch="spatial", ae_width=8, ae_depth=4, latent_channels=2, perceptual="vgg",
                       perceptual_weight=0.3, perceptual_batch=16, latent_noise=0.05)
    torch.manual_seed(0)
    ae = train.build_autoencoder(cfg)
    for p in ae.parameters():  # untrained, its last layer is zero and it draws flat grey whatever the rest holds
        p.data.add_(torch.randn_like(p) * 0.5)
    path = str(tmp_path / "autoencoder.pt")
    train.save_checkpoint(path, "autoencoder", cfg, ae, hash="x", static_frame=torch.zeros(80, 80, dtype=torch.uint8))
    loaded, ckpt = train.load_model(path, "autoencoder")
    assert train.config_from(ckpt) == cfg
    x = torch.rand(2, 1, 80, 80)
    assert ae.eval()(x).std() > 1e-3  # it draws something, so a weight lost on the way would show
    assert torch.equal(loaded(x), ae(x)) and torch.equal(loaded.encode(x), ae.encode(x))


@pytest.mark.parametrize("flag,value,message", [("--ae-depth", "5", "ae_depth must be 3 or 4"),
                                                ("--perceptual", "resnet", "perceptual must be"),
                                                ("--latent-noise", "-1", "latent_noise")])
def test_bad_phase2_flags_are_clear_errors(flag, value, message):
    with pytest.raises(SystemExit, match=message):
        train.parse_args(["--dataset", "x", flag, value])


def test_sweep_trains_scores_and_reports_every_setting_once(tiny_dataset, tmp_path, capsys):
    import sweep
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "title: tiny\nbase: configs/tetris.yaml\nstability_frames: 40\n"
        "budget: {ae_epochs: 1, ae_samples_per_epoch: 64, dyn_epochs: 1, dyn_samples_per_epoch: 64, ae_width: 8, "
        f"hidden: 16, batch_size: 32, unroll: 2, cache_dir: {tmp_path / 'cache'}}}\n"
        "settings:\n  - {name: plain, label: plain}\n  - {name: noisy, label: noisy, latent_noise: 0.1}\n")
    args = [str(spec), "--dataset", tiny_dataset, "--test", tiny_dataset, "--starts", "4", "--horizons", "1", "5",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "tiny")]
    sweep.main(args)
    report = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert set(report["settings"]) == {"plain", "noisy"}
    assert report["settings"]["noisy"]["config"]["latent_noise"] == 0.1
    assert report["settings"]["plain"]["scores"]["stability"]["frames"] == 40
    for suffix in (".md", "_plot.png", "_reconstructions.png", "_stability.png"):
        assert os.path.getsize(tmp_path / "out" / f"tiny{suffix}") > 0
    capsys.readouterr()
    sweep.main(args)  # a finished setting with the same config is reused, not retrained
    assert capsys.readouterr().out.count("trained already") == 2


def test_sweep_file_errors_name_the_problem(tmp_path):
    import sweep
    with pytest.raises(SystemExit, match="no such sweep file"):
        sweep.load_sweep(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: configs/tetris.yaml\nsetings: []\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['setings'\]"):
        sweep.load_sweep(str(bad))
    dup = tmp_path / "dup.yaml"
    dup.write_text("base: configs/tetris.yaml\nsettings:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(SystemExit, match="unique name"):
        sweep.load_sweep(str(dup))


def test_init_autoencoder_starts_from_the_given_weights_and_refuses_another_arch(tiny_dataset, tiny_run, tmp_path):
    base = ["--dataset", tiny_dataset, "--ae-arch", "spatial", "--ae-width", "8", "--latent-channels", "2",
            "--change-weight", "5", "--batch-size", "32", "--stage", "ae", "--ae-epochs", "0", "--spot-check", "",
            "--cache-dir", os.path.join(tiny_run, "cache"), "--init-autoencoder", os.path.join(tiny_run, "autoencoder.pt")]
    train.main(base + ["--out", str(tmp_path / "ft")])
    start, _ = train.load_model(os.path.join(tiny_run, "autoencoder.pt"), "autoencoder")
    copy, _ = train.load_model(str(tmp_path / "ft" / "autoencoder.pt"), "autoencoder")
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), copy.state_dict().values()))
    with pytest.raises(SystemExit, match="another architecture"):
        train.main(base + ["--out", str(tmp_path / "deep"), "--ae-depth", "4"])
