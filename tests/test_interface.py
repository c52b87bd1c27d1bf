"""The one world interface (issue #19): every dynamics family, saved and loaded through train.World, plays the same
frames as the model it was saved from; main.py and evaluate.py drive them all without a family branch."""
import os

import numpy as np
import pytest
import torch

import train

FAMILIES = {  # family -> Config overrides: tiny models of each
    "deterministic": dict(ae_arch="spatial", dynamics="deterministic", hidden=16),
    "vae": dict(ae_arch="spatial", dynamics="vae", hidden=16, noise_dim=4, temperature=1.0),
    "conv": dict(ae_arch="spatial", dynamics="conv", hidden=8, conv_blocks=2),
    "flow": dict(ae_arch="spatial", dynamics="flow", hidden=8, conv_blocks=2, flow_steps=2, temperature=1.0),
    "tiles": dict(ae_arch="tiles", dynamics="tiles", hidden=8, conv_blocks=1, state_width=16, tile_codes=16),
    "tiles-place": dict(ae_arch="tiles", dynamics="tiles", hidden=8, conv_blocks=1, state_width=16, tile_codes=16,
                        place_heads=2),  # the tile head's read of the next state by place (issue #31)
    "transformer": dict(ae_arch="tiles", dynamics="transformer", hidden=8, tf_dim=16, tf_layers=1, tf_heads=2,
                        tf_conv_blocks=1, state_width=16, tile_codes=16),  # (the hybrid: a conv block, then attention)
    "vq-tiles": dict(ae_arch="vqvae", dynamics="tiles", hidden=8, conv_blocks=1, state_width=16, vq_codes=16, vq_dim=4,
                     vq_width=8),  # the tile dynamics on a VQ-VAE's tokens
}
ADDRESSES = [3, 9, 17]  # a tile world's state bytes (any addresses will do here)


def tokens(family: str) -> bool:
    """Whether the family's dynamics predict a tokenizer's codes (a TileWorld)."""
    return FAMILIES[family]["dynamics"] in train.TOKEN_DYNAMICS


def build(family: str, directory: str):
    """A freshly initialised world of `family`, its checkpoint written to `directory` -> (the in-memory world)."""
    torch.manual_seed(0)
    cfg = train.Config(history=2, latent_channels=2, ae_width=8, **FAMILIES[family])
    ae = train.build_autoencoder(cfg)
    tiles = tokens(family)
    if tiles:
        if cfg.ae_arch == "tiles":
            rng = np.random.default_rng(0)
            train.fit_tiles(ae, rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), np.ones(16, dtype=np.int64))
        start = {"tokens": torch.randint(0, 16, (2, 30, 32)).short(), "state": torch.tensor([1, 2, 3]).short(),
                 "actions": torch.zeros(2, 8)}
    else:
        start = {"frames": torch.randint(0, 256, (2, 80, 80), dtype=torch.uint8), "actions": torch.zeros(2, 8)}
    for p in ae.parameters():  # an untrained 80x80 autoencoder draws flat grey (its last layer starts at zero):
        p.data.add_(torch.randn_like(p) * 0.5)  # nudged, every weight shows in the frames it draws
    latent_dim = int(np.prod(ae.latent_shape))
    dyn = train.build_dynamics(cfg, latent_dim, ADDRESSES if tiles else None)
    for p in dyn.parameters():  # away from the initial values, so that a lost weight would show
        p.data.add_(torch.randn_like(p) * 0.05)
    ae_hash = train.state_hash(ae.state_dict())
    train.save_checkpoint(os.path.join(directory, "autoencoder.pt"), "autoencoder", cfg, ae, hash=ae_hash)
    extra = {"state_addresses": ADDRESSES} if tiles else {}
    train.save_checkpoint(os.path.join(directory, "dynamics.pt"), "dynamics", cfg, dyn, autoencoder_hash=ae_hash,
                          starts={"play": start}, **extra)
    kind = train.TileWorld if tiles else train.WorldModel
    world = kind(ae.eval(), dyn.eval(), {"play": start})
    world.default_temperature = cfg.temperature if world.stochastic else 0.0
    return world


def play(world, steps: int = 4, seed: int = 0) -> list[np.ndarray]:
    torch.manual_seed(seed)
    state = world.start("play")
    shown = []
    for t in range(steps):
        state, z = world.step(state, torch.tensor([[t % 2, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.float32),
                              world.default_temperature)
        shown.append(world.show(z))
    return shown


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_load_and_step_give_identical_frames(family, tmp_path):
    world = build(family, str(tmp_path))
    loaded = train.load_world(str(tmp_path))
    assert isinstance(loaded, train.World) and type(loaded) is type(world)
    assert type(loaded.dynamics) is type(world.dynamics) and loaded.stochastic == world.stochastic
    assert loaded.default_temperature == world.default_temperature
    mine, theirs = play(world), play(loaded)
    for a, b in zip(mine, theirs):
        assert a.dtype == np.uint8 and a.shape == ((240, 256, 3) if tokens(family) else (80, 80))
        assert len(np.unique(a)) > 8  # a frame that shows something: a constant one would match whatever the weights
        assert np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(play(loaded), theirs))  # the same seed plays the same frames
    z = loaded.step(loaded.start("play"), torch.zeros(1, 8), 0.0)[1]
    assert loaded.decode(z).shape == (1, 1, 80, 80)  # what evaluate.py scores, for every family
    with pytest.raises(KeyError, match="no start context 'menu'"):
        loaded.start("menu")
    if world.stochastic:  # temperature 0 plays the same frames whatever the random seed
        loaded.default_temperature = 0.0
        assert all(np.array_equal(a, b) for a, b in zip(play(loaded, seed=1), play(loaded, seed=2)))
    if tokens(family):  # the state bytes' addresses came back with the checkpoint
        assert loaded.dynamics.addresses.tolist() == ADDRESSES


def test_main_plays_every_family_through_the_interface(tmp_path):
    import main as play_main
    for family in ("conv", "tiles", "transformer", "vq-tiles"):
        directory = str(tmp_path / family)
        build(family, directory)
        result = play_main.main(["--checkpoint", directory, "--headless", "--frames", "3"])
        assert result["frames"] == 3


def test_a_tile_checkpoint_from_before_round_11_is_a_one_line_error(tmp_path):
    """Round 10's rule-assisted tile worlds (their config names a tile_state) play only with the code at 3e595d2;
    a tile checkpoint without its state addresses cannot be built."""
    build("tiles", str(tmp_path))
    path = os.path.join(str(tmp_path), "dynamics.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_addresses"]
    torch.save(ckpt, path)
    with pytest.raises(train.CheckpointError, match="state's RAM addresses"):
        train.load_world(str(tmp_path))
    ckpt["config"]["tile_state"] = "screen"
    ckpt["state_addresses"] = [1, 2]  # round 10's 28 named bytes: the weights do not fit
    torch.save(ckpt, path)
    with pytest.raises(train.CheckpointError, match="weights do not fit.*git 3e595d2"):
        train.load_world(str(tmp_path))
