import math

import pytest
import torch
from torch import nn

from gankit.errors import GankitError
from gankit.models import MODELS, dcgan, mlp, r3gan
from gankit.models.layers import layout

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
CONDS = ["none", "concat", "projection", "acgan"]


@pytest.mark.parametrize("family", ["mlp", "dcgan", "r3gan"])
@pytest.mark.parametrize("img_shape", SHAPES)
@pytest.mark.parametrize("cond", CONDS)
def test_shapes_and_ranges(family, img_shape, cond):
    mod = MODELS[family]
    cfg = mod.Config(cond=cond)
    nets = mod.build(cfg, img_shape, num_classes=10)
    z = mod.noise(cfg, 8, torch.Generator().manual_seed(0))
    labels = torch.arange(8) if cond != "none" else None
    x = mod.generate(nets, z, labels)
    assert x.shape == (8, *img_shape)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output, like the data
    out = nets["D"](x, labels)
    logits, classes = out if cond == "acgan" else (out, None)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    if cond == "acgan":
        assert classes.shape == (8, 10)


@pytest.mark.parametrize("family", ["mlp", "dcgan", "r3gan"])
@pytest.mark.parametrize("cond", ["concat", "projection", "acgan"])
def test_the_label_changes_the_image_and_the_score(family, cond):
    mod = MODELS[family]
    cfg = mod.Config(cond=cond)
    torch.manual_seed(0)
    nets = mod.build(cfg, (1, 28, 28), num_classes=10)
    for net in nets.values():
        net.eval()
    z = mod.noise(cfg, 1, torch.Generator().manual_seed(0)).repeat(2, 1)
    x = mod.generate(nets, z, torch.tensor([3, 7]))
    assert not torch.equal(x[0], x[1])  # same z, other digit
    if cond != "acgan":  # ACGAN's D scores realness without the label, and classifies
        same = x[:1].repeat(2, 1, 1, 1)
        logits = nets["D"](same, torch.tensor([3, 7]))
        assert logits[0] != logits[1]


def test_dcgan_follows_the_paper():
    nets = dcgan.build(dcgan.Config(), (1, 28, 28))
    G, D = nets["G"], nets["D"]
    convs_g = [m for m in G.net if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in convs_g] == [128, 64, 1]  # 7x7 -> 14x14 -> 28x28
    assert [m.stride for m in convs_g[1:]] == [(2, 2), (2, 2)]
    assert isinstance(G.net[-1], nn.Tanh) and not isinstance(G.net[-2], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == 2
    assert sum(isinstance(m, nn.ReLU) for m in G.modules()) == 2
    convs_d = [m for m in D.net if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs_d] == [(2, 2), (2, 2)]  # strided convolutions, no pooling
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in D.modules())
    assert isinstance(D.net[1], nn.LeakyReLU)  # no BatchNorm on D's input layer
    assert D.net[1].negative_slope == 0.2
    assert isinstance(D.net[3], nn.BatchNorm2d)
    weights = torch.cat([m.weight.flatten() for m in convs_g + convs_d])
    assert abs(weights.std().item() - 0.02) < 0.002  # N(0, 0.02) initialisation


@pytest.mark.parametrize("size, depth", [(28, 2), (32, 3), (48, 3), (64, 4)])
def test_dcgan_depth_follows_the_image_size(size, depth):
    assert layout(size, "DCGAN")[1] == depth
    G = dcgan.build(dcgan.Config(), (3, size, size))["G"]
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules()) == depth + 1


@pytest.mark.parametrize("size", [30, 9, 4, 100])
def test_dcgan_refuses_image_sizes_it_cannot_build(size):
    with pytest.raises(GankitError, match="DCGAN needs an image size"):
        dcgan.build(dcgan.Config(), (1, size, size))


@pytest.mark.parametrize("norm", ["layer", "instance", "none"])
def test_dcgan_critic_without_batchnorm(norm):
    D = dcgan.build(dcgan.Config(d_norm=norm), (1, 28, 28))["D"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())


def test_spectral_norm_bounds_every_d_layer():
    D = dcgan.build(dcgan.Config(spectral_norm=True, d_norm="none"), (1, 28, 28))["D"]
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    x = torch.randn(4, 1, 28, 28)
    for _ in range(30):  # power iteration converges while D runs in training mode
        D(x)
    w = layers[-1].weight  # (1, F): its spectral norm is its Euclidean norm
    assert w.norm().item() == pytest.approx(1.0, rel=1e-3)


def test_minibatch_std_sees_each_group_of_samples_alone():
    from gankit.models.layers import MinibatchStd

    x = torch.randn(8, 3, 5, 5)
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 4, 5, 5) and torch.equal(out[:, :3], x)
    expected = x[:4].std(0, unbiased=False).mean()  # the first group's spread, everywhere
    torch.testing.assert_close(out[:4, 3], expected.expand(4, 5, 5), rtol=1e-5, atol=1e-5)
    same = x.clone()
    same[4:] = x[4]  # the second group: four copies of one sample
    out2 = MinibatchStd(4)(same)
    assert torch.equal(out2[:4, 3], out[:4, 3])  # the groups do not mix (reals, fakes)
    assert out2[4:, 3].max() < 1e-3 < out[4:, 3].min()  # copies: no spread
    with pytest.raises(GankitError, match="does not split into groups"):
        MinibatchStd(4)(torch.randn(6, 3, 5, 5))


def test_dcgan_mbstd_feeds_the_head_and_must_divide_the_batch():
    from gankit.config import load_config

    D = dcgan.build(dcgan.Config(mbstd=4, d_norm="layer"), (1, 28, 28))["D"]
    x = torch.randn(8, 1, 28, 28)
    y = x.clone()
    y[1:4] = x[0]  # sample 0 unchanged, its group-mates now copies of it
    with torch.no_grad():
        a, b = D(x), D(y)
    assert a.shape == (8,)
    assert (a[0] - b[0]).abs() > 1e-6  # its score reads its group's spread
    assert torch.equal(a[4:], b[4:])  # the other group's scores do not
    with pytest.raises(GankitError, match="model.mbstd 3 must divide train.batch_size 64"):
        load_config(None, {"family": "dcgan", "model.mbstd": "3"})
    with pytest.raises(GankitError, match="mbstd must be 0"):
        load_config(None, {"family": "dcgan", "model.mbstd": "1"})


def test_a_conditional_model_needs_labels():
    with pytest.raises(GankitError, match="needs a labelled dataset"):
        dcgan.build(dcgan.Config(cond="projection"), (1, 28, 28), num_classes=0)


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
    assert nets["D"].head.linear.out_features == 1  # one logit, no Sigmoid
    assert not any(isinstance(m, nn.Sigmoid) for m in nets["D"].modules())


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


def test_r3gan_follows_the_paper():
    cfg = r3gan.Config(ngf=16, ndf=16, blocks=2)
    nets = r3gan.build(cfg, (1, 28, 28))
    G, D = nets["G"], nets["D"]
    assert G.basis.shape == (64, 7, 7)  # a learned 7 x 7 basis for 28 pixels
    blocks = [m for net in (G, D) for m in net.modules() if isinstance(m, r3gan.Block)]
    assert len(blocks) == 2 * 2 * 3  # G and D, 2 blocks at each of 7, 14, 28
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norms) for net in (G, D) for m in net.modules())
    for block in blocks:  # starts as the identity; the grouped 3 x 3 mixes 16-channel groups
        assert not block.narrow.weight.any() and not block.narrow.bias.any()
        assert block.mix.groups == block.mix.in_channels // 16
        x = torch.randn(2, block.widen.in_channels, 7, 7)
        assert torch.equal(block(x), x)
    # Fix-up: He's std for the first two layers, times L^(-1/4) for the L blocks of G (6)
    widen = next(m for m in G.modules() if isinstance(m, r3gan.Block)).widen  # 64 -> 128, 1 x 1
    he = math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(64)
    assert widen.weight.std().item() == pytest.approx(he * 6**-0.25, rel=0.05)


def test_r3gan_image_blocks_set_the_full_resolution_stage_alone():
    def input_sizes(net):  # filled, as net runs, with the side of each block's input
        sizes = []
        for m in net.modules():
            if isinstance(m, r3gan.Block):
                m.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[-1]))
        return sizes

    torch.manual_seed(0)
    cfg = r3gan.Config(ngf=8, ndf=8, blocks=2, g_image_blocks=1, d_image_blocks=0)
    nets = r3gan.build(cfg, (1, 28, 28))
    G, D = nets["G"], nets["D"]
    g_sizes, d_sizes = input_sizes(G), input_sizes(D)
    x = G(torch.randn(3, cfg.nz))
    assert x.shape == (3, 1, 28, 28) and D(x).shape == (3,)
    assert sorted(g_sizes) == [7, 7, 14, 14, 28]
    assert sorted(d_sizes) == [7, 7, 14, 14]  # none at 28 x 28
    # Fix-up counts the blocks each network has: 5 in G, 4 in D
    for net, count in ((G, 5), (D, 4)):
        widen = next(m for m in net.modules() if isinstance(m, r3gan.Block)).widen
        fan_in = widen.in_channels  # a 1 x 1 convolution
        he = math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(fan_in)
        assert widen.weight.std().item() == pytest.approx(he * count**-0.25, rel=0.05)
    with pytest.raises(ValueError, match="d_image_blocks"):
        r3gan.Config(d_image_blocks=-2)


@pytest.mark.parametrize("opening", ["basis", "linear"])
def test_r3gan_openings(opening):
    """The basis: each channel of G's 7 x 7 opening is one fixed pattern that z only scales;
    linear: z changes each channel's pattern too."""
    torch.manual_seed(0)
    cfg = r3gan.Config(ngf=8, ndf=8, g_opening=opening, cond="projection")
    G = r3gan.build(cfg, (1, 28, 28), num_classes=10)["G"]
    seen = []
    G.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = G(torch.randn(2, cfg.nz), torch.tensor([3, 5]))
    assert x.shape == (2, 1, 28, 28)
    (opened,) = seen  # (2, 32, 7, 7)
    assert opened.shape == (2, 32, 7, 7)
    a, b = opened[0].flatten(1), opened[1].flatten(1)  # (32, 49) each
    cosine = (a * b).sum(1).abs() / (a.norm(dim=1) * b.norm(dim=1))  # per channel
    fixed_patterns = bool(torch.allclose(cosine, torch.ones(32), atol=1e-5))
    assert fixed_patterns == (opening == "basis")
    assert (G.basis is None) == (opening == "linear")
    with pytest.raises(ValueError, match="g_opening must be one of basis, linear"):
        r3gan.Config(g_opening="dense")


def test_r3gan_resamples_centred_with_r3gans_filter():
    x = torch.randn(1, 2, 8, 8)
    down, up = r3gan.Resample(2, up=False), r3gan.Resample(2, up=True)
    assert down(x).shape == (1, 2, 4, 4) and up(x).shape == (1, 2, 16, 16)
    for resample in (down, up):  # centred: mirroring the image mirrors the result, borders too
        for dims in ((-1,), (-2,)):
            torch.testing.assert_close(resample(x.flip(dims)), resample(x).flip(dims))
    flat = torch.ones(1, 2, 8, 8)
    assert torch.allclose(down(flat)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))  # mean kept
    assert torch.allclose(up(flat)[..., 1:-1, 1:-1], torch.ones(1, 2, 14, 14))
    impulse = torch.zeros(1, 2, 8, 8)
    impulse[0, 0, 4, 4] = 16.0
    # down: output 2 reads inputs 3..6 ([1, 3, 3, 1] / 8: 3/8 on 4), output 1 reads 1..4 (1/8)
    assert down(impulse)[0, 0, 1:3, 1:3].tolist() == [[0.25, 0.75], [0.75, 2.25]]
    # up: input 4 lands on outputs 7..10 with 2 x [1, 3, 3, 1] / 8 along each axis (x4 in all)
    assert up(impulse)[0, 0, 8, 6:12].tolist() == [0.0, 3.0, 9.0, 9.0, 3.0, 0.0]


@pytest.mark.parametrize("g_k, d_k", [(1, 3), (3, 1), (5, 5)])
def test_r3gan_image_kernels_set_the_reach_of_the_convolutions_to_and_from_the_image(g_k, d_k):
    """G's last and D's first convolution see a k x k patch: one changed pixel changes k x k
    pixels of G's image, and k x k pixels of D's first features."""
    torch.manual_seed(0)
    cfg = r3gan.Config(ngf=8, ndf=8, g_image_kernel=g_k, d_image_kernel=d_k)
    nets = r3gan.build(cfg, (3, 28, 28))
    to_image, from_image = nets["G"].net[-1], nets["D"].net[0]
    for layer, channels, k in ((to_image, 8, g_k), (from_image, 3, d_k)):
        x = torch.randn(1, channels, 28, 28)
        poked = x.clone()
        poked[0, :, 10, 20] += 1.0
        changed = (layer(poked) - layer(x)).abs().sum(1)[0] > 0  # (28, 28)
        assert changed.sum() == k * k
        rows, cols = changed.nonzero().unbind(1)  # a k x k square centred on (10, 20)
        assert set(rows.tolist()) == set(range(10 - k // 2, 11 + k // 2))
        assert set(cols.tolist()) == set(range(20 - k // 2, 21 + k // 2))
    x = nets["G"](torch.randn(2, cfg.nz))
    assert x.shape == (2, 3, 28, 28) and nets["D"](x).shape == (2,)
    for name in ("g_image_kernel", "d_image_kernel"):
        with pytest.raises(ValueError, match=f"{name} must be odd and >= 1, got 2"):
            r3gan.Config(**{name: 2})


def test_r3gan_d_image_act_makes_ds_view_of_the_full_size_image_nonlinear():
    """With no block at full size, D's front end (convolution, low-pass down, 1 x 1) is affine
    in the image: f(a + b) = f(a) + f(b) - f(0). The leaky ReLU after the first convolution
    breaks that; R3GAN's default keeps it."""
    torch.manual_seed(0)
    a, b, zero = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)
    for act in (False, True):
        cfg = r3gan.Config(ndf=8, d_image_blocks=0, d_image_kernel=3, d_image_act=act)
        d = r3gan.build(cfg, (1, 28, 28))["D"]
        down = next(i for i, m in enumerate(d.net) if isinstance(m, r3gan.Resample))
        front = d.net[: down + 2]  # up to the 1 x 1 after the first downsampling: (B, 16, 14, 14)
        with torch.no_grad():
            assert front(a).shape == (2, 16, 14, 14)
            gap = (front(a + b) - front(a) - front(b) + front(zero)).abs().max()
        assert (gap > 0.1) if act else (gap < 1e-5), (act, gap)
    assert not r3gan.Config().d_image_act  # R3GAN's network by default
