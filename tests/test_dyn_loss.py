"""--dyn-loss l1: dynamics that predict the median of the futures, which keeps a piece whole, not their mean."""
import pytest
import torch

import train


def unseen_timer(n, side=6, p_drop=0.2, seed=0):
    """A one-cell blob on a (side, side) map that drops one row with chance p_drop, on a timer the context does
    not show: (z_hist, a_hist, z_next, row, col)."""
    g = torch.Generator().manual_seed(seed)
    r, c = torch.randint(1, side - 2, (n,), generator=g), torch.randint(side, (n,), generator=g)
    drop = (torch.rand(n, generator=g) < p_drop).long()
    z, z_next = torch.zeros(n, side, side), torch.zeros(n, side, side)
    z[torch.arange(n), r, c] = 1
    z_next[torch.arange(n), r + drop, c] = 1
    return z.flatten(1)[:, None], torch.zeros(n, 1, 8), z_next.flatten(1), r, c


def fit(model, data, loss_kind, steps=600):
    torch.manual_seed(0)
    model.loss_kind = loss_kind
    model.set_latent_stats(data[0][:, 0])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(len(data[0]), (256,))
        loss, _ = model.loss(data[0][idx], data[1][idx], data[2][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("kind", ["deterministic", "vae"])
def test_where_a_drop_is_unlikely_l1_keeps_the_blob_whole_and_mse_moves_a_fraction_of_it(kind):
    """The mean of "stays" (0.8) and "drops" (0.2) dims the blob by a fifth and ghosts it a row down; the
    median is "stays", whole. A VAE plays its L1-fitted central prediction at temperature 0."""
    data, test = unseen_timer(4096), unseen_timer(400, seed=1)
    rows = torch.arange(400)
    drawn = {}
    for loss_kind in ("mse", "l1"):
        model = (train.DynamicsModel(36, history=1, hidden=64) if kind == "deterministic" else
                 train.VAEDynamicsModel(36, history=1, hidden=64, noise_dim=4, mean_weight=1.0))
        fit(model, data, loss_kind)
        with torch.no_grad():
            out = model.step(test[0], test[1], 0.0).view(-1, 6, 6)
        drawn[loss_kind] = (out[rows, test[3], test[4]].mean().item(), out[rows, test[3] + 1, test[4]].mean().item())
    stay, ghost = drawn["l1"]
    assert stay > 0.95 and ghost < 0.05, drawn
    stay, ghost = drawn["mse"]
    assert 0.65 < stay < 0.92 and 0.08 < ghost < 0.35, drawn


def test_l1_scores_the_absolute_error_and_the_change_weight_still_applies():
    model = train.DynamicsModel(4, history=1, hidden=8)
    z_last, z_next, pred = torch.zeros(1, 4), torch.tensor([[0.0, 0.0, 1.0, -2.0]]), torch.tensor([[0.5, 0, 0, 0]])
    model.loss_kind = "l1"
    assert model.weighted_error(pred, z_last, z_next).item() == pytest.approx((0.5 + 1 + 2) / 4)
    model.change_weight = 1.0
    assert model.weighted_error(pred, z_last, z_next).item() == pytest.approx((0.5 + 2 * 1 + 2 * 2) / 4)
    model.loss_kind = "mse"
    assert model.weighted_error(pred, z_last, z_next).item() == pytest.approx((0.25 + 2 * 1 + 2 * 4) / 4)


def test_dyn_loss_settings_that_cannot_work_are_clear_errors():
    with pytest.raises(ValueError, match="dyn_loss must be mse or l1"):
        train.Config(dyn_loss="huber")
    with pytest.raises(ValueError, match="mse for flow dynamics"):
        train.Config(dynamics="flow", ae_arch="spatial", dyn_loss="l1")
    assert train.Config(dynamics="conv", ae_arch="spatial", dyn_loss="l1").dyn_loss == "l1"


def test_content_weight_lands_on_numbers_away_from_the_usual_latent_and_leaves_the_saved_weights_alone():
    model = train.DynamicsModel(3, history=1, hidden=8)
    usual = torch.tensor([[0.0, 0.0, 0.0]] * 5 + [[2.0, 0.0, -2.0]] * 2)  # the median is the empty (0, 0, 0)
    model.set_latent_stats(usual)
    assert torch.equal(model.z_median, torch.zeros(3))
    z_last, z_next = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, -2.0]])  # content at 0 and 2
    model.content_weight = 3.0
    assert model.loss_weights((z_next - z_last) / model.z_scale, z_next).tolist() == [[4.0, 1.0, 4.0]]
    model.change_weight = 1.0  # number 2 also changes
    assert model.loss_weights((z_next - z_last) / model.z_scale, z_next).tolist() == [[4.0, 1.0, 5.0]]
    assert "z_median" not in model.state_dict()  # checkpoints keep their keys: older ones still load
    with pytest.raises(ValueError, match="dyn_change_weight and dyn_content_weight must be >= 0"):
        train.Config(dyn_content_weight=-1)
