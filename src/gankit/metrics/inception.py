"""Optional Inception-v3 metrics (FID, IS, KID) through torch-fidelity, from local weights only.

gankit never downloads. These numbers need torch-fidelity (`pip install -e '.[inception]'`)
and the Inception weights file it would otherwise fetch
(`weights-inception-2015-12-05-6726825d.pth`), given by path. The file is first
read with torch's safe `weights_only` loader (or as .safetensors), so a file that
holds anything but tensors is refused; torch-fidelity then reads a clean copy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from gankit.data import to_uint8
from gankit.errors import GankitError, require


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
        raise GankitError(f"cannot read {what} {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise GankitError(f"{what} {path} are not a state dict of tensors")
    return state


def inception_metrics(
    fake: torch.Tensor, real: torch.Tensor, weights_path: str | Path, device: str = "cpu"
) -> dict[str, float]:
    """FID, Inception Score and KID of fake vs real images (N, C, H, W) in [-1, 1].

    Keys: fid_inception, is_inception, is_inception_std, kid_inception, kid_inception_std.
    Comparable with published numbers only when the weights are the standard ones
    and N is as large as the papers use (typically 50,000 fakes).
    """
    state = load_weights(weights_path)
    torch_fidelity = require("torch_fidelity", "inception", "Inception metrics")
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "inception.pt"
        torch.save(state, clean)  # tensors only: safe for torch-fidelity's own loader
        try:
            out = torch_fidelity.calculate_metrics(
                input1=_UInt8Images(fake),
                input2=_UInt8Images(real),
                fid=True,
                isc=True,
                kid=True,
                kid_subset_size=min(1000, len(fake), len(real)),
                feature_extractor_weights_path=str(clean),
                cuda=str(device).startswith("cuda"),
                cache=False,
                save_cpu_ram=True,  # no DataLoader workers: the images are already in memory
                verbose=False,
            )
        except RuntimeError as e:  # e.g. a state dict that does not fit Inception-v3
            raise GankitError(f"Inception metrics failed: {str(e).splitlines()[0]}") from None
    return {
        "fid_inception": out["frechet_inception_distance"],
        "is_inception": out["inception_score_mean"],
        "is_inception_std": out["inception_score_std"],
        "kid_inception": out["kernel_inception_distance_mean"],
        "kid_inception_std": out["kernel_inception_distance_std"],
    }
