import math

import pytest
import torch
import torch.nn.functional as F

from gankit.losses import GAN_LOSSES, d_loss_bce, g_loss_minimax, g_loss_non_saturating


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_equilibrium_values():
    zeros = torch.zeros(8)  # D(x) = 1/2 everywhere
    assert d_loss_bce(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert g_loss_non_saturating(zeros).item() == pytest.approx(math.log(2))
    assert g_loss_minimax(zeros).item() == pytest.approx(-math.log(2))


def test_hand_computed_values():
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([-1.0, 3.0])
    expected_d = (-math.log(sig(2.0)) - math.log(sig(-0.5))) / 2 + (
        -math.log(1 - sig(-1.0)) - math.log(1 - sig(3.0))
    ) / 2
    assert d_loss_bce(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    expected_ns = (-math.log(sig(-1.0)) - math.log(sig(3.0))) / 2
    assert g_loss_non_saturating(fake).item() == pytest.approx(expected_ns, rel=1e-6)
    expected_mm = (math.log(1 - sig(-1.0)) + math.log(1 - sig(3.0))) / 2
    assert g_loss_minimax(fake).item() == pytest.approx(expected_mm, rel=1e-6)


def test_one_sided_label_smoothing_matches_bce_with_soft_targets():
    real, fake = torch.randn(16), torch.randn(16)
    t = 0.9
    expected = F.binary_cross_entropy(
        torch.sigmoid(real), torch.full((16,), t)
    ) + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros(16))
    torch.testing.assert_close(d_loss_bce(real, fake, real_target=t), expected)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# D's scores of reals r and fakes f, both sides of the hinge's margins; b = real target
# (below 1 = one-sided label smoothing, which only LSGAN of these losses takes)
REAL, FAKE = [2.0, -0.5, 0.25], [-1.5, 0.75, 3.0]
SCORE_LOSSES = {  # name: (D loss, G loss), written out on plain floats
    "lsgan": (
        lambda r, f, b: 0.5 * _mean([(x - b) ** 2 for x in r]) + 0.5 * _mean([x**2 for x in f]),
        lambda f: 0.5 * _mean([(x - 1) ** 2 for x in f]),
    ),
    "hinge": (
        lambda r, f, b: _mean([max(0.0, 1 - x) for x in r]) + _mean([max(0.0, 1 + x) for x in f]),
        lambda f: -_mean(f),
    ),
    "wgan-gp": (lambda r, f, b: _mean(f) - _mean(r), lambda f: -_mean(f)),
}


@pytest.mark.parametrize("name, b", [(n, 1.0) for n in SCORE_LOSSES] + [("lsgan", 0.9)])
def test_score_losses_match_their_formulas(name, b):
    loss, (d_formula, g_formula) = GAN_LOSSES[name], SCORE_LOSSES[name]
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    assert loss.d(real, fake, b).item() == pytest.approx(d_formula(REAL, FAKE, b), rel=1e-6)
    assert loss.g(fake).item() == pytest.approx(g_formula(FAKE), rel=1e-6)


@pytest.mark.parametrize("name", list(GAN_LOSSES))
def test_losses_are_finite_and_have_gradients_for_extreme_logits(name):
    loss = GAN_LOSSES[name]
    logits = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0], requires_grad=True)
    g = loss.g(logits, logits.flip(0)) if loss.relativistic else loss.g(logits)
    for value in (loss.d(logits, logits.flip(0)), g):
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_minimax_saturates_where_non_saturating_does_not():
    # When D confidently rejects fakes (logit -10), log(1 - D(G(z))) has a vanishing
    # gradient while -log D(G(z)) keeps a strong one: why the non-saturating loss exists.
    x = torch.tensor([-10.0], requires_grad=True)
    g_loss_minimax(x).backward()
    g_mm = x.grad.abs().item()
    x.grad = None
    g_loss_non_saturating(x).backward()
    assert g_mm < 1e-3 < x.grad.abs().item()


def test_rpgan_losses_are_the_softplus_of_paired_differences():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    rp = GAN_LOSSES["rpgan"]
    by_hand_d = _mean([math.log(1 + math.exp(-(r - f))) for r, f in zip(REAL, FAKE, strict=True)])
    by_hand_g = _mean([math.log(1 + math.exp(-(f - r))) for r, f in zip(REAL, FAKE, strict=True)])
    assert rp.d(real, fake).item() == pytest.approx(by_hand_d, rel=1e-6)
    assert rp.g(fake, real).item() == pytest.approx(by_hand_g, rel=1e-6)
    # only differences count: the same shift of every score changes nothing
    assert rp.d(real + 5, fake + 5).item() == pytest.approx(by_hand_d, rel=1e-6)
    # pairs, not batches: re-pairing the same scores changes D's loss
    assert rp.d(real, fake.flip(0)).item() != pytest.approx(by_hand_d, rel=1e-3)
