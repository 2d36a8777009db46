"""LAPGAN: the pyramid is exact, each level is its own game, sampling walks coarse to fine."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import quiet
from gankit.cli import main
from gankit.config import load_config
from gankit.errors import GankitError
from gankit.game import GameSettings, adversarial_step
from gankit.models import lapgan
from gankit.train import train


@pytest.mark.parametrize("shape, levels", [((1, 28, 28), 3), ((3, 32, 32), 3), ((3, 64, 64), 4)])
def test_laplacian_pyramid_reconstructs_its_input_exactly(shape, levels):
    x = torch.rand(4, *shape, dtype=torch.float64) * 2 - 1
    coarse, residuals = lapgan.laplacian_pyramid(x, levels)
    assert coarse.shape[-1] == shape[-1] // 2 ** (levels - 1)
    assert [h.shape[-1] for h in residuals] == [
        shape[-1] // 2 ** (levels - 1 - k) for k in range(1, levels)
    ]
    torch.testing.assert_close(lapgan.reconstruct(coarse, residuals), x, rtol=0, atol=1e-12)
    smooth = torch.ones(1, *shape, dtype=torch.float64)  # a flat image has no band-pass detail
    assert all(h.abs().max() < 1e-12 for h in lapgan.laplacian_pyramid(smooth, levels)[1])


def test_levels_and_sampling_shapes():
    cfg = lapgan.Config(ngf=8, ndf=8, coarse_widths=(16, 32), nz=8)
    nets = lapgan.build(cfg, (1, 28, 28))
    assert sorted(nets) == ["D0", "D1", "D2", "G0", "G1", "G2"]
    z = lapgan.noise(cfg, 5, torch.Generator().manual_seed(0))
    assert z.shape == (5, 3 * 8)
    levels = lapgan.pyramid_samples(nets, z)
    assert [g.shape[-1] for g in levels] == [7, 14, 28]
    assert torch.equal(lapgan.generate(nets, z), levels[-1])
    # untrained, each finer level adds no detail: it is the upsampled coarser level itself
    for k in (1, 2):
        assert torch.equal(levels[k], lapgan.up(levels[k - 1]).clamp(-1, 1))


def test_each_level_trains_on_real_pyramids_and_only_its_own_players_move(monkeypatch):
    torch.manual_seed(0)
    cfg = load_config(None, {"family": "lapgan", "model.ngf": "8", "model.ndf": "8", "nz": "8"})
    nets = lapgan.build(cfg.model, (1, 28, 28))
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    real = torch.rand(8, 1, 28, 28) * 2 - 1

    def state() -> dict[str, dict[str, torch.Tensor]]:  # weights and BatchNorm statistics
        return {k: {n: t.clone() for n, t in net.state_dict().items()} for k, net in nets.items()}

    def changed(a, b) -> set[str]:
        return {k for k in nets if any(not torch.equal(a[k][n], b[k][n]) for n in a[k])}

    calls, states = [], [state()]  # per level: its batches; the state before and after each

    def spy(pair, level_opts, batches, *args):
        assert not changed(states[-1], state()), "a network changed between two levels' games"
        out = adversarial_step(pair, level_opts, batches, *args)
        calls.append(batches)
        states.append(state())
        return out

    monkeypatch.setattr(lapgan, "adversarial_step", spy)
    out = lapgan.step(nets, opts, [(real, None)], lambda n: torch.randn(n, 24), GameSettings())
    for k in range(3):
        assert f"loss/D/level{k}" in out and f"loss/G/level{k}" in out
    assert not changed(states[-1], state())
    moved = [changed(a, b) for a, b in itertools.pairwise(states)]
    assert moved == [{f"G{k}", f"D{k}"} for k in range(3)]  # each level's game: its own pair
    # the real pyramid, written out: g2 = x, g1 = pool(g2), g0 = pool(g1); h_k = g_k - up(g_k-1)
    g1 = F.avg_pool2d(real, 2)
    g0 = F.avg_pool2d(g1, 2)
    up1, up0 = (F.interpolate(g, scale_factor=2, mode="bilinear") for g in (g1, g0))
    expected = [(g0, None), (g1 - up0, up0), (real - up1, up1)]
    for batches, (target, coarse) in zip(calls, expected, strict=True):
        ((level_real, cond),) = batches  # one batch per level: (target, conditioning)
        torch.testing.assert_close(level_real, target)
        if coarse is not None:  # a finer level sees (the real coarser level upsampled, labels)
            torch.testing.assert_close(cond[0], coarse)
    # after one step each finer level refines the upsampled coarser one
    levels = lapgan.pyramid_samples(nets, torch.randn(4, 24))
    for k in (1, 2):
        assert (levels[k] - lapgan.up(levels[k - 1])).abs().max() > 0


def test_bad_pyramid_sizes_and_options_are_refused():
    with pytest.raises(GankitError, match="divisible by 4"):
        lapgan.build(lapgan.Config(), (1, 30, 30))
    with pytest.raises(GankitError, match="augment"):
        load_config(None, {"family": "lapgan", "augment": "translation"})


def test_conditional_lapgan_and_the_pyramid_picture(tmp_path, capsys):
    over = {"family": "lapgan", "model.ngf": "8", "model.ndf": "8", "nz": "8", "cond": "concat"}
    over |= {"steps": "4", "device": "cpu", "batch_size": "16", "n_fixed": "100"}
    train(load_config(None, over), tmp_path / "run", progress=False, log=quiet)
    pyramid, out = tmp_path / "pyramid.png", tmp_path / "s.npz"
    argv = ["sample", str(tmp_path / "run"), "--pyramid", str(pyramid), "--class", "2"]
    assert main([*argv, "--n", "10", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(pyramid).size == (2 + 3 * 30, 2 + 8 * 30)  # 8 rows, 3 levels
    assert f"wrote {pyramid}: 8 samples" in capsys.readouterr().out


def test_every_level_samples_from_its_own_moving_average(tmp_path):
    from safetensors import safe_open

    from gankit.data import to_uint8
    from gankit.sample import Sampler

    over = {"family": "lapgan", "model.ngf": "8", "model.ndf": "8", "nz": "8", "ema": "0.9"}
    over |= {"steps": "4", "device": "cpu", "batch_size": "16", "sample_every": "4"}
    train(load_config(None, over), tmp_path / "run", progress=False, log=quiet)
    sampler = Sampler.load(tmp_path / "run", device="cpu")
    nets = sampler.nets
    levels = [f"G{k}" for k in range(3)]
    with safe_open(next((tmp_path / "run").rglob("last*.safetensors")), "pt") as f:
        saved = {key.split(".")[0] for key in f.keys()}
    assert {f"{g}_ema" for g in levels} <= saved  # each level's average is checkpointed
    z = lapgan.noise(sampler.model_cfg, 8, torch.Generator().manual_seed(0))
    averaged = nets | {g: nets[f"{g}_ema"].module for g in levels}
    drawn = sampler.images(8, latents=z)
    assert torch.equal(drawn, to_uint8(lapgan.generate(averaged, z)))
    assert not torch.equal(drawn, to_uint8(lapgan.generate(nets, z)))  # not the raw players
