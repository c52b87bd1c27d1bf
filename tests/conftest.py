"""Shared fixtures: a tiny dataset recorded from the real emulator, once per test session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import collect  # noqa: E402

TINY_ARGS = ["--episodes", "4", "--max-steps", "40", "--seed", "3", "--power-on-frac", "0",
             "--min-level", "0", "--max-level", "9", "--workers", "2"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """4 episodes x 40 steps of real NES Tetris (bot, noisy and random players)."""
    out = str(tmp_path_factory.mktemp("data") / "tiny")
    collect.main(TINY_ARGS + ["--out", out])
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> str:
    """A spatial autoencoder + history dynamics trained for one short epoch on the tiny dataset."""
    import train
    out = str(tmp_path_factory.mktemp("run"))
    train.main(["--dataset", tiny_dataset, "--out", out, "--export", os.path.join(out, "export"),
                "--ae-arch", "spatial", "--ae-width", "8", "--latent-channels", "2", "--change-weight", "5",
                "--history", "3", "--hidden", "32", "--unroll", "2", "--epochs", "1", "--batch-size", "32",
                "--cache-dir", os.path.join(out, "cache"), "--spot-check", os.path.join(out, "spot.png")])
    return out


@pytest.fixture(scope="session")
def tiny_vae_run(tiny_dataset, tmp_path_factory) -> str:
    """The same tiny set-up with VAE (stochastic) dynamics and scheduled sampling."""
    import train
    out = str(tmp_path_factory.mktemp("vae_run"))
    train.main(["--dataset", tiny_dataset, "--out", out, "--ae-arch", "spatial", "--ae-width", "8",
                "--latent-channels", "2", "--history", "2", "--hidden", "32", "--unroll", "3", "--epochs", "2",
                "--batch-size", "32", "--dynamics", "vae", "--noise-dim", "4", "--beta", "0.01",
                "--sched-sampling", "0.5", "--temperature", "0.7", "--cache-dir", os.path.join(out, "cache"),
                "--spot-check", ""])
    return out
