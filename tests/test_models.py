import pytest
import torch
from torch import nn

from gankit.models import MODELS, mlp

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("img_shape", SHAPES)
def test_shapes_and_ranges(family, img_shape):
    mod = MODELS[family]
    cfg = mod.Config()
    nets = mod.build(cfg, img_shape, num_classes=10)
    z = mod.noise(cfg, 8, torch.Generator().manual_seed(0))
    x = mod.generate(nets, z)
    assert x.shape == (8, *img_shape)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output, like the data
    logits = nets["D"](x)
    assert logits.shape == (8,)
    assert torch.isfinite(logits).all()


def test_mlp_follows_the_classic_tutorial_architecture():
    nets = mlp.build(mlp.Config(), (1, 28, 28))
    g_blocks = [m for m in nets["G"].net if isinstance(m, nn.Sequential)]
    assert [b[0].out_features for b in g_blocks] == [128, 256, 512, 1024]
    for b in g_blocks:
        assert [type(m) for m in b] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert isinstance(nets["G"].net[-1], nn.Tanh) and nets["G"].net[-2].out_features == 784
    assert nets["G"].net[0][0].in_features == 64  # z is 64-dimensional
    d_blocks = [m for m in nets["D"].net if isinstance(m, nn.Sequential)]
    assert [b[0].out_features for b in d_blocks] == [512, 256, 128]
    for b in d_blocks:
        assert isinstance(b[1], nn.LeakyReLU) and b[1].negative_slope == 0.2
    assert nets["D"].net[-1].out_features == 1  # one logit, no Sigmoid


def test_mlp_dropout_is_optional():
    d = mlp.build(mlp.Config(d_dropout=0.0), (1, 28, 28))["D"]
    assert not any(isinstance(m, nn.Dropout) for m in d.modules())
    d = mlp.build(mlp.Config(d_dropout=0.5), (1, 28, 28))["D"]
    assert sum(isinstance(m, nn.Dropout) for m in d.modules()) == 3


@pytest.mark.parametrize(
    "bad", [dict(nz=0), dict(g_widths=()), dict(d_dropout=1.0), dict(d_widths=(0,))]
)
def test_bad_model_config_is_refused(bad):
    with pytest.raises(ValueError):
        mlp.Config(**bad)
