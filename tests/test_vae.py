"""The VAE baseline: its bound, its likelihood estimate, and its place in train/sample/eval."""

import json
import math

import pytest
import torch

from conftest import one_line_error, quiet
from gankit.cli import main
from gankit.config import load_config
from gankit.data import make_dataset
from gankit.models import vae
from gankit.train import train

SHAPE = (1, 28, 28)


@pytest.mark.parametrize("arch", vae.ARCHS)
@pytest.mark.parametrize("likelihood", vae.LIKELIHOODS)
def test_shapes_and_one_step_lowers_the_loss_on_a_batch(arch, likelihood):
    torch.manual_seed(0)
    cfg = vae.Config(arch=arch, likelihood=likelihood, widths=(64, 32), nf=8)
    nets = vae.build(cfg, SHAPE)
    x = torch.rand(32, *SHAPE) * 2 - 1
    z = vae.noise(cfg, 4, torch.Generator().manual_seed(0))
    img = vae.generate(nets, z)
    assert img.shape == (4, *SHAPE) and img.min() >= -1 and img.max() <= 1
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    before = [p.detach().clone() for p in nets["E"].parameters()]
    losses = [float(vae.step(nets, opts, [(x, None)], None)["loss/vae"]) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["E"].parameters(), strict=True))


def test_kl_term_is_zero_when_the_posterior_is_the_prior():
    cfg = vae.Config(widths=(16,), nz=4)
    nets = vae.build(cfg, SHAPE)
    out = nets["E"].out
    torch.nn.init.zeros_(out.weight)
    torch.nn.init.zeros_(out.bias)  # mu = 0, log sigma^2 = 0 for every x
    _, _, kl = vae.elbo_terms(nets, torch.zeros(8, *SHAPE))
    assert kl.item() == pytest.approx(0.0, abs=1e-7)


def test_gaussian_log_likelihood_is_the_normal_density():
    nets = vae.build(vae.Config(likelihood="gaussian", widths=(8,)), (1, 2, 2))
    nets["G"].log_sigma.data.fill_(math.log(0.5))
    x, mean = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    expected = torch.distributions.Normal(mean, 0.5).log_prob(x).sum()
    torch.testing.assert_close(vae.log_px_given_z(nets, mean, x)[0], expected)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "vae"
    over = {"family": "vae", "model.widths": "128,64", "steps": "300", "batch_size": "64"}
    over |= {"device": "cpu", "lr_g": "1e-3", "beta1": "0.9", "sample_every": "300"}
    train(load_config(None, over), run, progress=False, log=quiet)
    return run


def test_importance_weighted_bound_is_above_the_elbo_and_grows_with_k(trained):
    from gankit.sample import Sampler

    nets = Sampler.load(trained, device="cpu").nets
    x = make_dataset("mnist", split="test").images[:200]
    results = {}
    for k in (1, 10, 100):
        elbo, iw = vae.log_likelihood(nets, x, k=k, generator=torch.Generator().manual_seed(0))
        assert (iw >= elbo - 1e-4).all()  # Jensen, for the same draws
        results[k] = (elbo.mean().item(), iw.mean().item())
    assert results[1][1] == pytest.approx(results[1][0], abs=1e-4)  # k = 1: the ELBO itself
    assert results[1][1] < results[10][1] < results[100][1]  # tighter with more samples
    assert abs(results[100][0] - results[1][0]) < 3  # the ELBO estimate does not move with k


def test_vae_trains_samples_and_evaluates_like_a_gan(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(trained), "--n", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(trained), "--n", "500", "--iw-k", "5", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["nll_iw"] <= -metrics["test_elbo"] + 1e-3  # IW bound is tighter than ELBO
    assert 0 < metrics["nll_iw"] < 544  # below the 784 log 2 nats of coin-flip pixels
    assert "fd_mnistnet" in metrics


def test_game_options_are_refused_for_the_vae(capsys):
    one_line_error(capsys, ["train", "--family", "vae", "--loss", "hinge"], "adversarial game")
    one_line_error(capsys, ["train", "--family", "vae", "--model.beta", "0"], "beta must be")
