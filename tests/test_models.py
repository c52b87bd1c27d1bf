"""Models, checkpoints, rollouts, and the scripts end to end on a tiny real dataset."""
import json
import os

import numpy as np
import pytest
import torch

import train


@pytest.mark.parametrize("arch,shape", [("seed", (32,)), ("spatial", (4, 20, 20))])
def test_autoencoder_shapes_and_range(arch, shape):
    cfg = train.Config(ae_arch=arch, latent_dim=32, latent_channels=4, ae_width=8)
    ae = train.build_autoencoder(cfg)
    x = torch.rand(3, 1, 80, 80)
    z = ae.encode(x)
    assert z.shape == (3, *shape) and ae.latent_shape == shape
    y = ae.decode(z)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


def test_change_weight_raises_the_loss_only_where_content_is():
    frames = torch.zeros(2, 1, 8, 8)
    frames[:, :, 2:4, 2:4] = 1.0  # a "block" that the static screen does not have
    static = torch.zeros(1, 1, 8, 8)
    blurred = torch.full_like(frames, 0.1)
    plain = train.reconstruction_loss(blurred, frames)
    weighted = train.reconstruction_loss(blurred, frames, None, static, change_weight=10)
    assert weighted > plain
    perfect_block = frames + 0.1 * (frames == 0)  # error only on static pixels: weighting changes nothing
    assert torch.isclose(train.reconstruction_loss(perfect_block, frames, None, static, 10),
                         train.reconstruction_loss(perfect_block, frames))


def test_dynamics_starts_near_copy_and_keeps_latents_in_range():
    dyn = train.DynamicsModel(latent_dim=6, history=3, hidden=16)
    z = torch.randn(100, 6)
    dyn.set_latent_stats(z)
    z_hist, a_hist = z[:4, None].repeat(1, 3, 1), torch.zeros(4, 3, 8)
    delta = dyn(z_hist, a_hist)
    assert delta.shape == (4, 6)
    assert delta.abs().max() < 0.3 * z.std()  # near copy: the first step moves the latent by a tenth of its usual step
    big = dyn.step(z_hist * 100, a_hist)
    assert (big <= dyn.z_max).all() and (big >= dyn.z_min).all()


def test_unrolled_loss_equals_one_step_loss_for_one_step():
    torch.manual_seed(0)
    dyn = train.DynamicsModel(latent_dim=5, history=2, hidden=8)
    z_hist, a_hist = torch.randn(4, 2, 5), torch.zeros(4, 2, 8)
    future, targets = torch.ones(4, 1, 8), torch.randn(4, 1, 5)
    loss = train.dynamics_loss(dyn, z_hist, a_hist, future, targets)
    a_in = torch.cat([a_hist[:, 1:], future], 1)
    expected, _ = dyn.loss(z_hist, a_in, targets[:, 0])
    assert torch.isclose(loss, expected)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dyn.parameters())


def test_save_load_gives_identical_outputs(tmp_path):
    cfg = train.Config(ae_arch="spatial", ae_width=8, latent_channels=2, history=2, hidden=16)
    torch.manual_seed(0)
    ae = train.build_autoencoder(cfg).eval()
    for p in ae.parameters():  # untrained, its last layer is zero and it draws flat grey whatever the rest holds
        p.data.add_(torch.randn_like(p) * 0.5)
    path = str(tmp_path / "ae.pt")
    train.save_checkpoint(path, "autoencoder", cfg, ae, hash="h")
    loaded, ckpt = train.load_model(path, "autoencoder")
    x = torch.rand(2, 1, 80, 80)
    assert ae(x).std() > 1e-3  # it draws something, so a weight lost on the way would show
    assert torch.equal(ae(x), loaded(x)) and torch.equal(ae.encode(x), loaded.encode(x))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ae.state_dict().items())
    assert train.config_from(ckpt) == cfg  # the config round-trips through the checkpoint
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == train.CHECKPOINT_FORMAT and not os.path.exists(path + ".tmp")


def test_checkpoint_errors(tmp_path, tiny_run):
    with pytest.raises(train.CheckpointError, match="not found"):
        train.WorldModel.load(str(tmp_path / "nowhere"))
    with pytest.raises(train.CheckpointError, match="expected autoencoder"):
        train.read_checkpoint(os.path.join(tiny_run, "dynamics.pt"), "autoencoder")
    # a dynamics model paired with an autoencoder it was not trained on
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    ckpt = torch.load(os.path.join(tiny_run, "autoencoder.pt"), weights_only=True)
    ckpt["hash"] = "something-else"
    torch.save(ckpt, mixed / "autoencoder.pt")
    os.link(os.path.join(tiny_run, "dynamics.pt"), mixed / "dynamics.pt")
    with pytest.raises(train.CheckpointError, match="another autoencoder"):
        train.WorldModel.load(str(mixed))


def test_training_run_writes_checkpoints_logs_and_fp16_export(tiny_run):
    for name in ("autoencoder.pt", "dynamics.pt", "autoencoder_log.jsonl", "dynamics_log.jsonl",
                 "autoencoder_loss.png", "dynamics_loss.png", "export/autoencoder.pt", "export/dynamics.pt"):
        assert os.path.exists(os.path.join(tiny_run, name)), name
    exported = torch.load(os.path.join(tiny_run, "export/dynamics.pt"), weights_only=True)
    assert exported["state_dict"]["net.1.weight"].dtype == torch.float16
    rows = [json.loads(l) for l in open(os.path.join(tiny_run, "autoencoder_log.jsonl"))]
    assert len(rows) == 1 and np.isfinite(rows[0]["val_loss"])


def test_training_resumes_after_the_last_finished_epoch(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A run stopped after its first epoch and started again ends with the same weights, bit for bit on the CPU, as
    a run that was never stopped: the epoch's state (weights, optimiser, schedule) and the per-epoch seeds resume."""
    args = ["--dataset", tiny_dataset, "--stage", "ae", "--ae-arch", "spatial", "--ae-width", "8",
            "--latent-channels", "2", "--change-weight", "5", "--ae-epochs", "2", "--batch-size", "32",
            "--cache-dir", str(tmp_path / "cache"), "--spot-check", ""]
    train.main(args + ["--out", str(tmp_path / "whole")])
    real_save = train.save_run_state

    def save_then_stop(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # the first epoch's state is written, then the run dies
    monkeypatch.setattr(train, "save_run_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--out", str(tmp_path / "stopped")])
    monkeypatch.setattr(train, "save_run_state", real_save)
    capsys.readouterr()
    train.main(args + ["--out", str(tmp_path / "stopped")])
    assert "resuming the autoencoder from epoch 1" in capsys.readouterr().out
    assert len(open(tmp_path / "stopped" / "autoencoder_log.jsonl").readlines()) == 2
    whole = torch.load(tmp_path / "whole" / "autoencoder.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "stopped" / "autoencoder.pt", weights_only=True)["state_dict"]
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_rollout_is_deterministic_and_stays_in_its_episode(tiny_run, tiny_dataset):
    """A rollout's start, its context and its future buttons all come from one episode, also for starts right
    at an episode's end or start; and the same start and buttons replay the same frames."""
    import evaluate
    episodes = np.repeat([0, 1, 2], [10, 5, 30])  # episode 1 is too short for a horizon of 8
    starts = evaluate.pick_starts(episodes, 8, 1000, seed=0)
    assert len(starts) == (10 - 8) + (30 - 8)  # every start that fits, the last 8 steps before each end left out
    assert (episodes[starts + 8] == episodes[starts]).all() and 1 not in episodes[starts]
    assert 9 - 8 in starts and 44 - 8 in starts  # the latest starts: their horizon ends on the episode's last step
    episode_start = np.searchsorted(episodes, episodes)
    ctx = train.context_indices(starts, 4, episode_start)
    assert (episodes[ctx] == episodes[starts][:, None]).all()  # near an episode's start the first frame repeats
    assert ctx[starts.tolist().index(15)].tolist() == [15, 15, 15, 15]
    cache = train.load_frames(tiny_dataset, 80, cache_dir=os.path.join(tiny_run, "cache"))
    real = evaluate.pick_starts(cache.episodes, 30, 1000, seed=0)
    assert (cache.episodes[real + 30] == cache.episodes[real]).all()
    world = train.WorldModel.load(os.path.join(tiny_run, "export"))
    state = world.start("play")
    frames = []
    for _ in range(2):
        s, zs = state, []
        for t in range(5):
            s, z = world.step(s, torch.eye(8)[t % 8][None])
            zs.append(z)
        frames.append(world.decode(torch.cat(zs)))
    assert torch.equal(frames[0], frames[1])
    assert frames[0].shape == (5, 1, 80, 80) and torch.isfinite(frames[0]).all()


def test_init_dynamics_starts_from_the_given_checkpoint(tiny_dataset, tiny_run, tmp_path):
    import shutil
    shutil.copy(os.path.join(tiny_run, "autoencoder.pt"), tmp_path / "autoencoder.pt")
    args = ["--dataset", tiny_dataset, "--out", str(tmp_path), "--stage", "dynamics", "--ae-arch", "spatial",
            "--ae-width", "8", "--latent-channels", "2", "--change-weight", "5", "--history", "3",
            "--hidden", "32", "--unroll", "2", "--dyn-epochs", "0", "--batch-size", "32",
            "--cache-dir", os.path.join(tiny_run, "cache"), "--spot-check", "",
            "--init-dynamics", os.path.join(tiny_run, "dynamics.pt")]
    train.main(args)
    start = torch.load(os.path.join(tiny_run, "dynamics.pt"), weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "dynamics.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(start[k], got[k]) for k in start)
    # a dynamics model trained on another autoencoder is refused
    ckpt = torch.load(os.path.join(tiny_run, "dynamics.pt"), weights_only=True)
    ckpt["autoencoder_hash"] = "other"
    torch.save(ckpt, tmp_path / "other.pt")
    (tmp_path / "dynamics_train_state.pt").unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="another autoencoder"):
        train.main(args[:-1] + [str(tmp_path / "other.pt")])
    # an export for play (training-only weights left out) is refused too: fine-tuning needs the run's file
    ckpt = torch.load(os.path.join(tiny_run, "dynamics.pt"), weights_only=True)
    ckpt["dropped"] = ["posterior."]
    torch.save(ckpt, tmp_path / "export.pt")
    (tmp_path / "dynamics_train_state.pt").unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="export for play"):
        train.main(args[:-1] + [str(tmp_path / "export.pt")])
