"""Convolutional dynamics (--dynamics conv) on the spatial latent map."""
import pytest
import torch

import train


def blob_moves(rows, side=8, n=256, seed=0):
    """A one-cell blob at (row, col) on a (1, side, side) map that moves one cell down: (z_hist, a_hist, z_next)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(rows)[torch.randint(len(rows), (n,), generator=g)]
    c = torch.randint(side, (n,), generator=g)
    z = torch.zeros(n, 2, side, side)
    z[torch.arange(n), 0, r - 1, c] = 1  # came from the row above
    z[torch.arange(n), 1, r, c] = 1
    z_next = torch.zeros(n, side, side)
    z_next[torch.arange(n), r + 1, c] = 1
    return z.flatten(2), torch.zeros(n, 2, 8), z_next.flatten(1)


def test_conv_dynamics_start_as_copy_last_latent_and_reject_a_flat_latent():
    model = train.ConvDynamicsModel(4 * 5 * 5, history=3, width=8, channels=4, blocks=2)
    z, a = torch.randn(2, 3, 100), torch.zeros(2, 3, 8)
    assert torch.equal(model.step(z, a), z[:, -1])
    with pytest.raises(ValueError, match="square spatial latent"):
        train.ConvDynamicsModel(32, history=1, channels=4)


def test_a_move_learned_on_the_top_half_of_the_board_plays_on_the_bottom_half():
    """The same move everywhere: convolutions learn it once; the MLP only where it saw it."""
    train_set, unseen = blob_moves([1, 2, 3]), blob_moves([4, 5, 6], seed=1)
    errors = {}
    for name, model in (("conv", train.ConvDynamicsModel(64, history=2, width=16, channels=1, blocks=4)),
                        ("mlp", train.DynamicsModel(64, history=2, hidden=64))):
        torch.manual_seed(0)
        model.set_latent_stats(train_set[0].flatten(0, 1))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(300):
            loss, _ = model.loss(*train_set)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = unseen[0][:, -1] + model.eval()(*unseen[:2])  # not step(): it clamps to the rows seen in training
            errors[name] = (pred - unseen[2]).abs().mean().item()
    assert errors["conv"] < 0.3 * errors["mlp"], errors


def test_dyn_change_weight_weights_the_numbers_that_change_in_every_loss():
    torch.manual_seed(0)
    z_hist, a_hist = torch.randn(4, 2, 2 * 3 * 3), torch.zeros(4, 2, 8)
    z_next = z_hist[:, -1].clone()
    z_next[:, :2] += 1.0  # two numbers change, sixteen stay
    for model in (train.DynamicsModel(18, history=2, hidden=16),
                  train.ConvDynamicsModel(18, history=2, width=8, channels=2, blocks=2)):
        model.set_latent_stats(torch.randn(100, 18))
        with torch.no_grad():
            plain, pred = model.loss(z_hist, a_hist, z_next)
            err = ((pred - z_next) / model.z_scale).pow(2)
            model.change_weight = 10.0
            weighted, _ = model.loss(z_hist, a_hist, z_next)
        assert torch.isclose(plain, err.mean())
        assert torch.isclose(weighted, (err[:, :2] * 11).sum(1).add(err[:, 2:].sum(1)).div(18).mean())
