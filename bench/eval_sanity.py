"""Sanity table for the evaluation metrics on real MNIST and the true 2D mixtures.

Each row scores a set of images against the held-out MNIST split (1,000 digits):
the held-out split itself (the identity floor), 1,000 training digits (the
realistic floor for a perfect generator), and the same digits damaged in ways a
generator can fail: blurred, noisy, a single class, pure noise. A working metric
puts both real rows far ahead of every damaged one. (The identity row's KID is
negative: its random subsets of one set share images, which the unbiased
estimator does not expect.) Then Stacked MNIST built from real digits, and the 2D
metrics on true ring/grid samples, which should score every mode.

    python bench/eval_sanity.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from gankit.data import make_dataset, stack_digits
from gankit.metrics import classifier_for, evaluate_images, extract, mixture_metrics
from gankit.metrics.stacked import DEFAULT_SAMPLES, stacked_mnist_modes
from gankit.toy import MIXTURES

COLUMNS = ("fd", "kid", "precision", "recall", "density", "coverage", "class_kl", "classes_missing")


def blur(x: torch.Tensor, sigma: float = 1.5, size: int = 7) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) images, edges replicated."""
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2  # (size, size), sums to 1
    weight = k.expand(x.shape[1], 1, size, size)
    return F.conv2d(F.pad(x, [size // 2] * 4, mode="replicate"), weight, groups=x.shape[1])


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    train, test = make_dataset("mnist"), make_dataset("mnist", split="test")
    start = time.perf_counter()
    clf = classifier_for(train, test)
    print(
        f"classifier {clf.name}: held-out accuracy {clf.accuracy:.3f}"
        f" ({time.perf_counter() - start:.1f} s)"
    )

    subset = train.images[torch.randperm(len(train), generator=gen)[:1000]]  # (1000, 1, 28, 28)
    rows = {
        "held-out real (itself)": test.images,
        "training real (1,000)": subset,
        "real + blur (sigma 1.5)": blur(subset),
        "real + noise (std 0.5)": (subset + 0.5 * torch.randn(subset.shape, generator=gen)).clamp(
            -1, 1
        ),
        "single class (0s)": train.images[train.labels == 0],
        "uniform noise": torch.rand(1000, 1, 28, 28, generator=gen) * 2 - 1,
    }
    real = extract(test.images, clf)
    print(f"\nvs the {len(test)} held-out digits (fd/kid on {clf.name} features):")
    widths = [max(10, len(c) + 1) for c in COLUMNS]
    print(f"{'':26}" + "".join(f"{c:>{w}}" for c, w in zip(COLUMNS, widths, strict=True)))
    for label, fake in rows.items():
        r = evaluate_images(fake, real, clf)
        r["fd"], r["kid"] = r[f"fd_{clf.name}"], r[f"kid_{clf.name}"]
        print(
            f"{label:26}" + "".join(f"{r[c]:>{w}.4g}" for c, w in zip(COLUMNS, widths, strict=True))
        )

    stacked, _ = stack_digits(test.images, test.labels, DEFAULT_SAMPLES, gen)
    s = stacked_mnist_modes(stacked, clf)
    print(
        f"\nStacked MNIST, {DEFAULT_SAMPLES} real stacks: {s['stacked_modes']:.0f}/1000 modes, "
        f"KL to uniform {s['stacked_kl']:.4f}"
    )

    print(
        f"\n{'2D target (2,500 true samples)':32}{'modes':>8}{'high_quality %':>16}{'mode_kl':>10}"
    )
    for name, make in MIXTURES.items():
        target = make()
        m = mixture_metrics(target.sample(2500, gen), target)
        print(
            f"{name:32}{m['modes']:>5.0f}/{len(target.modes):<2}{m['high_quality']:>16.2f}{m['mode_kl']:>10.4f}"
        )


if __name__ == "__main__":
    main()
