"""`gankit export` (ONNX, TorchScript) and `gankit sample --latents`, for every family.

One tiny run per family, trained a step or so (from the family's preset, where it has
one) on a small .npz dataset, is shared by the module; each test checks the exported file
against eager PyTorch computed here, on inputs the export's own check never saw.
"""

import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from conftest import one_line_error
from gankit import export as export_module
from gankit.cli import main
from gankit.game import sampling_nets
from gankit.models import MODELS
from gankit.sample import Sampler

TINY_GAN = ["--model.ngf", "4", "--model.ndf", "4", "--model.nz", "8"]
RUNS = {  # key: (family, `gankit train` options, the inputs of the exported graph)
    "mlp": (
        "mlp",
        ["--config", "mlp-mnist", "--g-widths", "16", "--d-widths", "16", "--model.nz", "8"],
        ["z"],
    ),
    "dcgan": (  # keeps G's moving average, far from G after a few large steps
        "dcgan",
        ["--config", "dcgan-mnist", *TINY_GAN, "--ema", "0.9", "--steps", "4", "--lr-g", "0.01"],
        ["z"],
    ),
    "cgan": ("dcgan", ["--config", "cgan-mnist", *TINY_GAN], ["z", "labels"]),  # projection D
    "r3gan": (  # conditional, with G_ema
        "r3gan",
        [
            "--family",
            "r3gan",
            "--cond",
            "projection",
            "--ema",
            "0.9",
            *TINY_GAN,
            "--group-width",
            "8",
        ],
        ["z", "labels"],
    ),
    "r3gan-linear": (  # DCGAN's opening in place of the basis
        "r3gan",
        ["--family", "r3gan", "--g-opening", "linear", *TINY_GAN, "--group-width", "8"],
        ["z"],
    ),
    "lapgan": (
        "lapgan",
        ["--config", "lapgan-mnist", *TINY_GAN[:4], "--model.nz", "4", "--coarse-widths", "16"]
        + ["--model.levels", "3"],  # the whole pyramid 7 -> 14 -> 28: three inputs
        ["z", "noise1", "noise2"],
    ),
    "srgan": (
        "srgan",
        ["--config", "srresnet-x4", "--n-blocks", "1", "--model.nf", "4", "--dihedral", "false"],
        ["lr"],
    ),
    "vae": ("vae", ["--config", "vae-mnist", "--model.widths", "16", "--model.nz", "4"], ["z"]),
}
EXT = {"onnx": "onnx", "torchscript": "pt"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{key: run folder}: each trained one step (unless its options say otherwise) on 16 x 16
    images (grey with 10 classes; RGB for super-resolution), float32 on the CPU."""
    folder = tmp_path_factory.mktemp("export-runs")
    rng = np.random.default_rng(0)
    grey, rgb = folder / "grey.npz", folder / "rgb.npz"
    np.savez(
        grey, images=rng.integers(0, 256, (32, 1, 16, 16), np.uint8), labels=np.arange(32) % 10
    )
    np.savez(rgb, images=rng.integers(0, 256, (32, 3, 16, 16), np.uint8))
    out = {}
    for key, (_, options, _) in RUNS.items():
        data = rgb if key == "srgan" else grey
        argv = ["train", *options, "--data.dataset", f"npz:{data}", "--img-size", "16"]
        argv += ["--batch-size", "8", "--n-fixed", "8", "--amp", "none", "--channels-last", "false"]
        argv += ["--device", "cpu", "--no-progress", "--runs-dir", str(folder), "--name", key]
        argv += [] if "--steps" in options else ["--steps", "1"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0
        out[key] = folder / key
    return out


@contextlib.contextmanager
def file_descriptor_1(path: Path):
    """What C++ code writes to stdout (std::cout) goes to `path`; Python's print does not."""
    saved, fd = os.dup(1), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.close(fd)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """exported(key, fmt) -> (file, what `gankit export` printed), each exported once; what
    torch's C++ side wrote to stdout meanwhile must be nothing."""
    folder, done = tmp_path_factory.mktemp("exports"), {}

    def get(key: str, fmt: str):
        if (key, fmt) not in done:
            path, printed, leaked = folder / f"{key}.{EXT[fmt]}", io.StringIO(), folder / "fd1"
            with contextlib.redirect_stdout(printed), file_descriptor_1(leaked):
                assert main(["export", str(runs[key]), "--format", fmt, "--out", str(path)]) == 0
            assert leaked.read_text() == ""
            done[key, fmt] = path, printed.getvalue()
        return done[key, fmt]

    return get


def fresh_inputs(sampler: Sampler, key: str, batch: int = 5) -> dict[str, torch.Tensor]:
    """Inputs unlike the export's own check: batch 5, an LR image of 5 x 7."""
    gen = torch.Generator().manual_seed(123)
    if key == "srgan":
        return {"lr": torch.rand(batch, 3, 5, 7, generator=gen) * 2 - 1}
    nz = sampler.model_cfg.nz
    inputs = {name: torch.randn(batch, nz, generator=gen) for name in RUNS[key][2]}
    if "labels" in inputs:
        inputs["labels"] = torch.randint(len(sampler.classes), (batch,), generator=gen)
    return inputs


@torch.no_grad()
def eager(sampler: Sampler, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What `gankit sample` draws: the family's generate on the sampling nets (G_ema if kept),
    the latent's parts side by side as the family's noise lays them out."""
    labels = inputs.get("labels")
    latent = torch.cat([x for name, x in inputs.items() if name != "labels"], dim=1)
    return sampler.family.generate(sampling_nets(sampler.nets), latent, labels)


def run_file(path: Path, fmt: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: `torch.jit.load` is deprecated
        return torch.jit.load(str(path))(*inputs.values()).numpy()


def printed_diff(printed: str) -> float:
    return float(re.search(r"max abs difference from PyTorch (\S+) ", printed).group(1))


def test_every_family_is_exported_here():
    assert {family for family, _, _ in RUNS.values()} == set(MODELS)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("key", list(RUNS))
def test_export_matches_eager_pytorch(runs, exported, key, fmt):
    path, printed = exported(key, fmt)
    assert printed_diff(printed) <= 1e-4 and f"wrote {path}" in printed
    sampler = Sampler.load(runs[key], device="cpu")
    inputs = fresh_inputs(sampler, key)
    want = eager(sampler, inputs)
    got = run_file(path, fmt, inputs)
    shape = (5, 3, 20, 28) if key == "srgan" else (5, *sampler.meta["img_shape"])
    assert got.shape == shape and got.dtype == np.float32
    assert want.std() > 0 and -1 <= got.min() and got.max() <= 1
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=0)
    if fmt == "onnx":  # the inputs by name, every named axis dynamic
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ins = session.get_inputs()
        assert [i.name for i in ins] == RUNS[key][2]
        assert all(isinstance(i.shape[0], str) for i in ins)
        kinds = {i.name: i.type for i in ins}
        assert kinds.pop("labels", "tensor(int64)") == "tensor(int64)"
        assert set(kinds.values()) == {"tensor(float)"}


def test_export_takes_gs_moving_average(runs, exported):
    """The dcgan run keeps G_ema: the exported file is it, not the trained G."""
    path, _ = exported("dcgan", "onnx")
    sampler = Sampler.load(runs["dcgan"], device="cpu")
    inputs = fresh_inputs(sampler, "dcgan")
    got = torch.from_numpy(run_file(path, "onnx", inputs))
    with torch.no_grad():
        plain = sampler.nets["G"](inputs["z"])
    ema = eager(sampler, inputs)
    gap = (plain - ema).abs().max()
    assert gap > 1e-3 and (got - ema).abs().max() < gap / 100


def test_the_readme_example_runs_the_model_without_torch(runs, exported, tmp_path):
    """The README's onnxruntime example, as written, in a Python that never imports torch."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    marker = "<!-- Run by tests/test_export.py in a Python that never imports torch. -->"
    example = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", readme, re.S)[1]
    assert len(example.splitlines()) <= 15
    path, _ = exported("cgan", "onnx")
    shutil.copy(path, tmp_path / "digits.onnx")
    check = (
        "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'gankit')]"
        "\nnp.save('z.npy', feed['z'])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", example + check],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    sampler = Sampler.load(runs["cgan"], device="cpu")
    z = torch.from_numpy(np.load(tmp_path / "z.npy"))
    want = as_uint8(eager(sampler, {"z": z, "labels": torch.arange(10)}).numpy())
    got = np.asarray(Image.open(tmp_path / "row.png"))  # ten images side by side
    assert np.array_equal(got, np.concatenate(list(want[:, 0]), axis=1))


def as_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("key", ["cgan", "lapgan"])
def test_sample_latents_reproduces_the_onnx_model(runs, exported, tmp_path, key):
    path, _ = exported(key, "onnx")
    sampler = Sampler.load(runs[key], device="cpu")
    inputs = fresh_inputs(sampler, key, batch=6)
    onnx_images = as_uint8(run_file(path, "onnx", inputs))
    latent = np.concatenate([v.numpy() for k, v in inputs.items() if k != "labels"], axis=1)
    np.save(tmp_path / "z.npy", latent)  # LAPGAN: [z, noise1, noise2] side by side
    argv = ["sample", str(runs[key]), "--latents", str(tmp_path / "z.npy")]
    if "labels" in inputs:
        np.save(tmp_path / "y.npy", inputs["labels"].numpy())
        argv += ["--labels", str(tmp_path / "y.npy")]
    assert main([*argv, "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        images = f["images"]
        if "labels" in inputs:
            assert f["labels"].tolist() == inputs["labels"].tolist()
    assert images.shape == onnx_images.shape == (6, 1, 16, 16)
    assert np.abs(images.astype(int) - onnx_images).max() <= 1  # float rounding at .5 only
    assert (images == onnx_images).mean() > 0.99


def test_lapgan_latents_alone_take_the_finer_noise_from_the_seed(runs, tmp_path):
    run, nz = runs["lapgan"], 4
    z = np.random.default_rng(1).standard_normal((5, nz)).astype(np.float32)
    seeded = torch.randn(5, 3 * nz, generator=torch.Generator().manual_seed(7)).numpy()
    np.save(tmp_path / "coarse.npy", z)
    np.save(tmp_path / "whole.npy", np.concatenate([z, seeded[:, nz:]], axis=1))

    def draw(name, *seed):
        out = tmp_path / f"{name}.npz"
        argv = ["sample", str(run), "--latents", str(tmp_path / f"{name}.npy"), *seed]
        assert main([*argv, "--out", str(out)]) == 0
        with np.load(out) as f:
            return f["images"]

    coarse, whole = draw("coarse", "--seed", "7"), draw("whole")
    assert np.array_equal(coarse, whole)
    assert not np.array_equal(draw("coarse", "--seed", "8"), whole)


def test_the_torch_export_based_exporter_takes_over(runs, tmp_path, monkeypatch, capsys):
    """A model torch's TorchScript-based ONNX exporter cannot express goes to its
    torch.export-based one, which needs onnxscript."""

    def cannot(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of convolution for kernel of unknown shape.")

    monkeypatch.setattr(export_module, "_export_torchscript_based", cannot)
    out = tmp_path / "g.onnx"
    argv = ["export", str(runs["mlp"]), "--format", "onnx", "--out", str(out)]
    assert main(argv) == 0
    assert "torch's torch.export-based exporter" in capsys.readouterr().out
    sampler = Sampler.load(runs["mlp"], device="cpu")
    inputs = fresh_inputs(sampler, "mlp")
    got = torch.from_numpy(run_file(out, "onnx", inputs))
    torch.testing.assert_close(got, eager(sampler, inputs), atol=1e-5, rtol=0)
    real_find_spec = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a),
    )
    one_line_error(capsys, [*argv, "--force"], "kernel of unknown shape.); its torch.export-")


def test_a_refused_export_leaves_no_file(runs, exported, tmp_path, monkeypatch, capsys):
    """A file that differs from PyTorch beyond the tolerance is not written, nor kept in
    place of an existing one; no temporary file stays behind."""
    real_load = export_module.load_onnx

    def off_by_a_little(path):
        run = real_load(path)
        return lambda inputs: run(inputs) + 2e-4

    monkeypatch.setattr(export_module, "load_onnx", off_by_a_little)
    out = tmp_path / "g.onnx"
    argv = ["export", str(runs["mlp"]), "--format", "onnx", "--out", str(out)]
    one_line_error(capsys, argv, "differs from PyTorch by 0.0002")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"an older export")
    one_line_error(capsys, [*argv, "--force"], "not written")
    assert out.read_bytes() == b"an older export" and list(tmp_path.iterdir()) == [out]


def test_a_fixed_batch_axis_is_refused(runs, tmp_path, monkeypatch, capsys):
    """Exported without its dynamic axes, the file only takes the traced batch: refused."""
    real_export = torch.onnx.export

    @functools.wraps(real_export)
    def fixed_axes(*args, **kwargs):
        return real_export(*args, **(kwargs | {"dynamic_axes": None}))

    monkeypatch.setattr(torch.onnx, "export", fixed_axes)
    argv = ["export", str(runs["cgan"]), "--format", "onnx", "--out", str(tmp_path / "g.onnx")]
    one_line_error(capsys, argv, "fails on a batch of 1")
    assert list(tmp_path.iterdir()) == []


def test_export_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, monkeypatch):
    run, out = str(runs["mlp"]), str(tmp_path / "g.onnx")
    cases = [
        (["export", str(tmp_path / "nope"), "--format", "onnx", "--out", out], "does not exist"),
        (["export", run, "--format", "tflite", "--out", out], "unknown --format 'tflite'"),
        (["export", run, "--out", out], "the following arguments are required: --format"),
        (["export", run, "--format", "onnx", "--out", out, "--opset", "99"], "11..20"),
        (["export", run, "--format", "onnx", "--out", out, "--opset", "10"], "11..20"),
        (["export", run, "--format", "onnx", "--out", out, "--opset", "x"], "invalid int"),
        (["export", run, "--format", "torchscript", "--out", out, "--opset", "17"], "--opset is"),
        (["export", run, "--format", "onnx", "--out", str(tmp_path / "a" / "g.onnx")], "folder"),
        (["export", run, "--format", "onnx", "--out", str(tmp_path)], "is a folder"),
        (["export", run, "--format", "onnx", "--out", out, "--checkpoint", "7"], "step-00000007"),
    ]
    for argv, expect in cases:
        one_line_error(capsys, argv, expect)
    Path(out).write_bytes(b"x")
    one_line_error(capsys, ["export", run, "--format", "onnx", "--out", out], "--force")
    lapgan = ["export", str(runs["lapgan"]), "--format", "onnx", "--out", str(tmp_path / "l.onnx")]

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' is not supported.\nSee ...")

    with monkeypatch.context() as m:
        m.setattr(export_module, "write_onnx", unsupported)
        one_line_error(capsys, lapgan, "cannot export this lapgan model to ONNX opset 17: Exp")
    real_find_spec = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a),
    )
    one_line_error(capsys, [*lapgan, "--force"], "pip install 'gankit[export]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_sample_latents_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    def npy(name, array):
        np.save(tmp_path / name, array)
        return str(tmp_path / name)

    z8 = npy("z8.npy", np.zeros((3, 8), np.float32))
    y = npy("y.npy", np.array([0, 1, 2]))
    out = ["--out", str(tmp_path / "s.npz")]
    mlp, cgan = ["sample", str(runs["mlp"])], ["sample", str(runs["cgan"])]
    cases = [
        ([*mlp, "--latents", npy("z5.npy", np.zeros((3, 5), np.float32))], "must be (N, 8)"),
        ([*mlp, "--latents", npy("flat.npy", np.zeros(8, np.float32))], "got shape (8,)"),
        ([*mlp, "--latents", npy("none.npy", np.zeros((0, 8), np.float32))], "N >= 1"),
        ([*mlp, "--latents", npy("int.npy", np.zeros((3, 8), np.int64))], "must hold floats"),
        ([*mlp, "--latents", npy("nan.npy", np.full((3, 8), np.nan))], "NaN or infinite"),
        ([*mlp, "--latents", str(tmp_path / "missing.npy")], "does not exist"),
        ([*mlp, "--latents", npy("obj.npy", np.array([{}], dtype=object))], "never unpickles"),
        ([*mlp, "--latents", z8, "--labels", y], "unconditional: it takes no --labels"),
        ([*mlp, "--latents", z8, "--n", "5"], "--latents holds 3"),
        ([*mlp, "--latents", z8, "--interpolate", "--grid", "g.png"], "drop --interpolate"),
        ([*mlp, "--labels", y], "--labels goes with --latents"),
        ([*cgan, "--latents", z8], "needs --labels"),
        ([*cgan, "--latents", z8, "--labels", npy("y2.npy", np.array([0, 1]))], "2 labels for 3"),
        ([*cgan, "--latents", z8, "--labels", npy("y10.npy", np.array([0, 1, 10]))], "class 10"),
        ([*cgan, "--latents", z8, "--labels", npy("yf.npy", np.zeros(3))], "whole numbers"),
        (["sample", str(runs["lapgan"]), "--latents", z8], "(N, 4) (z alone) or (N, 12)"),
        (["sample", str(runs["srgan"]), "--latents", z8], "gankit upscale"),
    ]
    for argv, expect in cases:
        one_line_error(capsys, [*argv, *out], expect)
    assert not (tmp_path / "s.npz").exists()


def test_export_help_and_printed_summary(exported, capsys):
    _, printed = exported("lapgan", "onnx")
    lines = printed.strip().splitlines()
    assert len(lines) == 2
    assert "z (batch, 4) float32, noise1 (batch, 4) float32, noise2 (batch, 4) float32" in lines[0]
    assert "-> images (batch, 1, 16, 16) float32 in [-1, 1]" in lines[0]
    assert "onnxruntime" in lines[1] and "batches of 1 and 3" in lines[1]
    _, printed = exported("srgan", "torchscript")
    assert "lr (batch, 3, height, width)" in printed and "1 at 8 x 11 and 3 at 6 x 9" in printed
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "LAPGAN: the coarse z (N, nz)" in " ".join(capsys.readouterr().out.split())
