"""Export a run's sampling network to ONNX or TorchScript, checked against PyTorch.

    gankit export RUN --format onnx --out g.onnx

Inference only, like gankit.sample, whose `Sampler` loads the run (G's moving average in
G's place when the run keeps one); nothing here imports the training code. What is
exported is the family's own `generate(nets, latent, labels)`, traced as one graph, so a
family needs no export code of its own: LAPGAN's whole coarse-to-fine sampler, SRGAN's
generator and the VAE's decoder come out the same way as a DCGAN's or R3GAN's G. ONNX is
written by torch's TorchScript-based exporter, or its torch.export-based one for a model
the first cannot express (`write_onnx`); TorchScript by tracing (`write_torchscript`).

    inputs   `Sampler.inputs()`: the latent's named parts, float32 (z (N, nz); LAPGAN adds
             noise1, noise2, ...; SRGAN takes lr (N, C, h, w)), then labels (N,) int64
             for a conditional run
    output   images (N, C, H, W) float32 in [-1, 1]

Every named axis is dynamic: the batch, and an SR model's height and width. Before the
file is renamed into place it is loaded back (onnxruntime, torch.jit.load), run on fixed
inputs at two batch sizes (and two image sizes for SR) and compared with the eager
model; beyond TOLERANCE it is refused and nothing is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gankit import files
from gankit.errors import GankitError, first_line
from gankit.game import sampling_nets
from gankit.sample import Sampler

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17  # read by onnxruntime >= 1.13 and most other runtimes
# Opset 11 is the first whose Resize matches PyTorch's interpolation: exported at 9 or 10,
# LAPGAN's bilinear upsampling differs by 0.34 (refused by the check), SRGAN's bicubic
# cannot be expressed at all. 20 is the last the TorchScript-based exporter writes.
OPSETS = range(11, 21)
TOLERANCE = 1e-4  # max abs difference from eager PyTorch, on images in [-1, 1]
ONNX_PACKAGES = ("onnx", "onnxruntime")  # torch's exporters write with onnx; the check runs
# onnxruntime; onnxscript (the torch.export-based exporter) is asked for only when needed
# The traced inputs, then those the file is checked on: (batch, base), the i-th named axis
# other than the batch (an image's height, width) base + 3 i long, so no axis is square.
TRACE_CASE = (2, 8)  # not 1: a batch of one would let broadcasting hide a fixed batch axis
CHECK_CASES = ((1, 8), (3, 6))


class SamplingGraph(nn.Module):
    """The family's `generate` as one module: forward(*latent_parts[, labels]) -> images.

    Holds only the generator's networks (G, or G0, G1, ...), with G's moving average in
    G's place when the run keeps one, as `gankit sample` draws from them."""

    def __init__(self, sampler: Sampler):
        super().__init__()
        nets = sampling_nets(sampler.nets)
        self.nets = nn.ModuleDict({k: v for k, v in nets.items() if re.fullmatch(r"G\d*", k)})
        self.family = sampler.family  # a Python module, not a network: traced through
        self.conditional = bool(sampler.classes)

    def forward(self, *inputs: Tensor) -> Tensor:
        parts, labels = (inputs[:-1], inputs[-1]) if self.conditional else (inputs, None)
        latent = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # as family.noise
        return self.family.generate(dict(self.nets), latent, labels)  # (N, C, H, W)


@dataclass
class Report:
    """What `export` wrote and how closely the file matches PyTorch."""

    path: Path
    fmt: str
    opset: int | None
    inputs: dict[str, tuple]
    output: tuple
    exporter: str  # what wrote it: torch's "TorchScript-based" or "torch.export-based" one
    runtime: str  # what ran the file: "onnxruntime 1.x" or "torch.jit"
    checked_on: str  # the inputs it ran on, in words
    max_diff: float

    def summary(self) -> str:
        kind = "TorchScript, traced"
        if self.fmt == "onnx":
            kind = f"ONNX opset {self.opset}, torch's {self.exporter} exporter"
        ins = ", ".join(
            f"{name} {_shape(shape)} {'int64' if name == 'labels' else 'float32'}"
            for name, shape in self.inputs.items()
        )
        return (
            f"wrote {self.path} ({kind}): {ins} -> images {_shape(self.output)} float32 "
            f"in [-1, 1]\nchecked with {self.runtime} on {self.checked_on}: max abs "
            f"difference from PyTorch {self.max_diff:.3g} (tolerance {TOLERANCE:.0e})"
        )


def export(
    run: str | Path,
    fmt: str,
    out: str | Path,
    checkpoint: str | None = None,
    opset: int | None = None,
    force: bool = False,
) -> Report:
    """Write the sampling network of `run` to `out` as `fmt`, checked before it is renamed
    into place; refused (nothing written) when it differs from PyTorch beyond TOLERANCE."""
    if fmt not in FORMATS:
        raise GankitError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise GankitError("--opset is for --format onnx")
    if opset is not None and opset not in OPSETS:
        raise GankitError(
            f"--opset must be in {OPSETS[0]}..{OPSETS[-1]} (older opsets resample images "
            f"unlike PyTorch), got {opset}"
        )
    out = Path(out).expanduser()
    check_out(out, force)
    if fmt == "onnx":
        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise GankitError(
                f"export to ONNX needs the export extra ({' and '.join(missing)} not "
                f"installed): pip install 'gankit[export]'"
            )
        opset = DEFAULT_OPSET if opset is None else opset

    sampler = Sampler.load(run, checkpoint, "cpu")
    model = SamplingGraph(sampler).eval().requires_grad_(False)
    spec, k = sampler.inputs(), len(sampler.classes)
    example = example_inputs(spec, k, *TRACE_CASE)
    result = {}

    def write_and_check(tmp: Path) -> None:
        try:
            with torch.no_grad():
                if fmt == "onnx":
                    result["exporter"] = write_onnx(model, example, spec, tmp, opset)
                else:
                    write_torchscript(model, example, tmp)
                    result["exporter"] = "torch.jit.trace"
        except (GankitError, OSError):
            raise
        except Exception as e:  # the exporter cannot express an op (an --opset too old, say)
            how = f"ONNX opset {opset}" if fmt == "onnx" else "TorchScript"
            raise GankitError(
                f"torch cannot export this {sampler.model_cfg.family} model to {how}: "
                f"{first_line(e)}"
            ) from None
        exported = load_onnx(tmp) if fmt == "onnx" else load_torchscript(tmp)
        result["diff"], result["output"] = check(exported, model, spec, k, fmt)

    files.write_with(out, write_and_check)  # renamed into place only once checked
    runtime = "torch.jit"
    if fmt == "onnx":
        import onnxruntime

        runtime = f"onnxruntime {onnxruntime.__version__}"
    return Report(
        out,
        fmt,
        opset,
        spec,
        result["output"],
        result["exporter"],
        runtime,
        _cases_in_words(spec),
        result["diff"],
    )


def check_out(out: Path, force: bool) -> None:
    """Refuse an --out that cannot be written before any work: a folder, a missing folder,
    an existing file without --force."""
    if out.is_dir():
        raise GankitError(f"--out {out} is a folder: give a file name")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise GankitError(f"--out {out}: folder {out.parent} {what}")
    if out.exists() and not force:
        raise GankitError(f"{out} exists: pick another --out or pass --force")


def example_inputs(spec: dict[str, tuple], num_classes: int, batch: int, base: int, seed=0):
    """Fixed inputs for `spec` ({name: shape}, axes named or sized): `batch` for the axis
    "batch", base + 3 i for the i-th other named axis. Latents ~ N(0, I); an image input
    (one with a "height" axis) in [-1, 1] like every image in gankit; labels in range."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in spec.items():
        named = [a for a in shape if isinstance(a, str) and a != "batch"]
        dims = [
            batch if a == "batch" else base + 3 * named.index(a) if isinstance(a, str) else a
            for a in shape
        ]
        if name == "labels":
            out.append(torch.randint(num_classes, dims, generator=gen))
        elif "height" in shape:
            out.append(torch.rand(dims, generator=gen) * 2 - 1)
        else:
            out.append(torch.randn(dims, generator=gen))
    return tuple(out)


# Two ONNX exporters, tried in turn. First torch's TorchScript-based one (dynamo=False),
# though torch >= 2.9 defaults to the torch.export-based one (dynamo=True) and calls it
# deprecated: on torch 2.14 both export mlp, dcgan, lapgan, srgan and the VAE with the same
# outputs (max abs difference < 3e-7), but the torch.export-based one took 1.3-6 s a
# model against 0.1-0.7 s, needs onnxscript on top of onnx, and names its dynamic axes
# itself. Then, for a model the first cannot express (none of gankit's families today; a
# convolution whose kernel is shaped at run time, say), the torch.export-based one. Either way the
# file is checked against PyTorch before it is kept, so a change in either exporter shows
# as a refused export, not a wrong model. torch < 2.5 has no `dynamo` argument: the
# TorchScript-based exporter alone.
def write_onnx(
    model: nn.Module, example: tuple, spec: dict[str, tuple], path: Path, opset: int
) -> str:
    """Export to `path`; returns which exporter did."""
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    try:
        with _stdout_silenced():
            _export_torchscript_based(model, example, spec, path, opset, has_dynamo)
        return "TorchScript-based"
    except Exception as e:
        if not has_dynamo:
            raise
        if importlib.util.find_spec("onnxscript") is None:
            raise GankitError(
                f"torch's TorchScript-based ONNX exporter cannot export this model "
                f"({first_line(e)}); its torch.export-based exporter needs onnxscript: "
                f"pip install 'gankit[export]'"
            ) from None
        first = e
    try:
        _export_torch_export_based(model, example, spec, path, opset)
    except Exception:
        raise first from None  # its message names the operation; the other's is generic
    return "torch.export-based"


def _export_torchscript_based(model, example, spec, path, opset, has_dynamo: bool) -> None:
    axes = {
        n: {i: a for i, a in enumerate(shape) if isinstance(a, str)} for n, shape in spec.items()
    }
    spatial = any(set(a.values()) - {"batch"} for a in axes.values())  # an SR model's h, w
    axes["images"] = {0: "batch"} | ({2: "out_height", 3: "out_width"} if spatial else {})
    with warnings.catch_warnings():  # its deprecation notices, this exporter's and its parts'
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=list(spec),
            output_names=["images"],
            dynamic_axes=axes,
            opset_version=opset,
            **({"dynamo": False} if has_dynamo else {}),
        )


def _export_torch_export_based(model, example, spec, path, opset) -> None:
    dims = {}  # one torch.export.Dim per axis name, shared by the inputs that have it
    shapes = tuple(
        {
            i: dims.setdefault(a, torch.export.Dim(a))
            for i, a in enumerate(shape)
            if isinstance(a, str)
        }
        for shape in spec.values()
    )
    quiet = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:  # its progress and its opset conversion, line by line
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=list(spec),
                output_names=["images"],
                dynamic_shapes=(shapes,),  # forward(*inputs): one argument, a tuple
                opset_version=opset,
                dynamo=True,
                external_data=False,  # one file, renamed into place
                verbose=False,
            )
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 to /dev/null: torch 2.14's TorchScript-based exporter prints the
    whole graph to C++'s std::cout when it fails (its log switch is always on), and the
    failure is reported in one line instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# TorchScript by tracing, not torch.jit.script: `generate` is each family's plain Python
# (dicts of networks, optional labels), which scripting would require to be TorchScript. A
# trace records the tensor operations of one call; what it cannot see (a size frozen into
# the graph, a Python branch) is what the check at other batch and image sizes catches.
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"  # torch 2.14: it points to torch.export


def write_torchscript(model: nn.Module, example: tuple, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATED)
        traced = torch.jit.trace(model, example, check_trace=False)  # checked by `check`
        torch.jit.save(traced, str(path))


def load_onnx(path: Path) -> Callable[[tuple], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda inputs: session.run(
        None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    )[0]


def load_torchscript(path: Path) -> Callable[[tuple], np.ndarray]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATED)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(inputs: tuple) -> np.ndarray:
        with torch.no_grad():
            return module(*inputs).numpy()

    return run


def check(
    run: Callable[[tuple], np.ndarray], model: nn.Module, spec: dict, num_classes: int, fmt: str
) -> tuple[float, tuple]:
    """(max abs difference, output shape with named axes) of the exported file `run` against
    the eager `model` on CHECK_CASES; a failed run, another shape or a difference beyond
    TOLERANCE (or NaN) is refused."""
    worst, shapes = 0.0, []
    for batch, base in CHECK_CASES:
        inputs = example_inputs(spec, num_classes, batch, base, seed=1)
        with torch.no_grad():
            want = model(*inputs).numpy()
        where = _case_in_words(spec, inputs)
        try:
            got = np.asarray(run(inputs))
        except Exception as e:  # the runtime refuses the inputs: an axis that is not dynamic
            raise GankitError(
                f"the exported {fmt} model fails on {where}: {first_line(e)}: not written"
            ) from None
        if got.shape != want.shape:
            raise GankitError(
                f"the exported {fmt} model gives shape {got.shape} on {where}, PyTorch "
                f"{want.shape}: not written"
            )
        diff = float(np.abs(got.astype(np.float64) - want).max())
        if not diff <= TOLERANCE:  # NaN too
            raise GankitError(
                f"the exported {fmt} model differs from PyTorch by {diff:.3g} (max abs) on "
                f"{where}, more than {TOLERANCE:.0e}: not written"
            )
        worst, shapes = max(worst, diff), [*shapes, want.shape]
    names = {0: "batch", 2: "out_height", 3: "out_width"}
    output = tuple(
        a if a == b else names.get(i, "?") for i, (a, b) in enumerate(zip(*shapes, strict=True))
    )
    return worst, output


def _case_in_words(spec: dict, inputs: tuple) -> str:
    return "a batch of " + _case(spec, inputs)


def _cases_in_words(spec: dict) -> str:
    cases = [_case(spec, example_inputs(spec, 1, b, base)) for b, base in CHECK_CASES]
    return "batches of " + " and ".join(cases)


def _case(spec: dict, inputs: tuple) -> str:
    """ "3", or "3 at 6 x 9" for image inputs."""
    first = inputs[0]
    if "height" in next(iter(spec.values())):
        return f"{first.shape[0]} at {first.shape[2]} x {first.shape[3]}"
    return f"{first.shape[0]}"


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
