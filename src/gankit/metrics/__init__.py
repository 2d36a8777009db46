"""Evaluation metrics: image metrics in a classifier's feature space, plus toy-data scores.

    features.py   MnistNet, the feature classifier, trained once per dataset and cached
    frechet.py    Fréchet distance of Gaussian fits (FID's formula, on MnistNet features)
    kid.py        kernel distance: unbiased MMD^2 with a cubic kernel
    prdc.py       precision / recall / density / coverage from k-NN balls
    classes.py    class coverage: label histogram KL, missing classes, confidence
    stacked.py    Stacked MNIST, 1,000 modes
    mixture.py    modes captured and high-quality share for the 2D ring and grid
    inception.py  optional Inception FID / IS / KID from a local weights file (torch-fidelity)

`evaluate_images(fake, real, classifier)` runs every metric in METRICS and returns
one flat dict of floats; DESCRIPTIONS says what each key means and which way is
better. The classifier is anything with `name`, `features(x)` and
`predict_proba(x)` (see `FeatureExtractor`), so tests can pass a tiny one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gankit.data import stack_digits
from gankit.errors import GankitError
from gankit.metrics.classes import class_coverage, label_accuracy, label_distribution
from gankit.metrics.features import Classifier, FeatureExtractor, classifier_for
from gankit.metrics.frechet import fd_features, frechet_distance, gaussian_stats
from gankit.metrics.inception import inception_metrics
from gankit.metrics.kid import kid
from gankit.metrics.mixture import mixture_metrics
from gankit.metrics.prdc import prdc
from gankit.metrics.stacked import mode_histogram_scores, stacked_mnist_modes, stacked_modes


@dataclass
class Features:
    """A set of images seen through a classifier: computed once, scored by every metric."""

    feats: torch.Tensor  # (N, D) penultimate activations
    probs: torch.Tensor  # (N, K) class probabilities
    net: str  # the classifier's name, e.g. "mnistnet"

    def __len__(self) -> int:
        return self.feats.shape[0]

    def subset(self, n: int, generator: torch.Generator) -> Features:
        """n rows drawn without replacement (all of them, in order, when n >= len)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=generator)[:n]
        return Features(self.feats[idx], self.probs[idx], self.net)


def extract(images: torch.Tensor, classifier: FeatureExtractor) -> Features:
    """(N, C, H, W) images in [-1, 1] -> their Features (one pass when the classifier allows)."""
    if hasattr(classifier, "features_and_proba"):
        feats, probs = classifier.features_and_proba(images)
    else:
        feats, probs = classifier.features(images), classifier.predict_proba(images)
    return Features(feats.float().cpu(), probs.float().cpu(), classifier.name)


# Each metric family: (fake, real, generator) -> flat dict of floats.


def _fd(fake: Features, real: Features, gen: torch.Generator) -> dict[str, float]:
    return {f"fd_{fake.net}": fd_features(fake.feats, real.feats)}


def _kid(fake: Features, real: Features, gen: torch.Generator) -> dict[str, float]:
    mean, std = kid(fake.feats, real.feats, generator=gen)
    return {f"kid_{fake.net}": mean, f"kid_{fake.net}_std": std}


def _prdc(fake: Features, real: Features, gen: torch.Generator) -> dict[str, float]:
    n = min(len(fake), len(real))  # k-NN radii depend on set size: compare equal counts
    return prdc(fake.subset(n, gen).feats, real.subset(n, gen).feats)


def _classes(fake: Features, real: Features, gen: torch.Generator) -> dict[str, float]:
    # The data distribution is the classifier's labelling of real images, so its
    # own errors affect both histograms alike.
    data_freq = label_distribution(real.probs.argmax(1), real.probs.shape[1])
    return class_coverage(fake.probs, data_freq)


METRICS: dict[str, Callable[[Features, Features, torch.Generator], dict[str, float]]] = {
    "fd": _fd,
    "kid": _kid,
    "prdc": _prdc,
    "classes": _classes,
}

# What each key means; "{net}" stands for the classifier name (e.g. fd_mnistnet).
DESCRIPTIONS: dict[str, str] = {
    "fd_{net}": "Fréchet distance of {net} feature Gaussians; not FID (lower is better)",
    "kid_{net}": "unbiased MMD^2 of {net} features, ~0 when matched (lower is better)",
    "kid_{net}_std": "spread of the KID estimate over random subsets (smaller = more certain)",
    "precision": "share of fakes inside the real k-NN support: fidelity (higher is better)",
    "recall": "share of real images inside the fakes' k-NN support: diversity (higher is better)",
    "density": "real k-NN balls holding each fake, / k: ~1 when matched, >1 crowds dense regions",
    "coverage": "share of real images with a fake inside their k-NN ball (higher is better)",
    "class_kl": "KL(sample label dist || data label dist): piling on few classes (lower is better)",
    "classes_missing": "classes generated at under half their data frequency (lower is better)",
    "confidence": "mean top class probability: how recognisable the samples are (higher is better)",
    "label_accuracy": "conditional runs: share of samples classified as the asked-for label",
    "label_accuracy_min": "conditional runs: label_accuracy of the worst class (higher is better)",
    "psnr_y": "super-resolution: PSNR in dB on the Y channel, border cropped (higher is better)",
    "ssim_y": "super-resolution: SSIM on the Y channel, border cropped (higher is better)",
    "bicubic_psnr_y": "the bicubic baseline's PSNR on the same images (dB)",
    "bicubic_ssim_y": "the bicubic baseline's SSIM on the same images",
    "test_elbo": "likelihood models: held-out ELBO, nats per image (higher is better)",
    "nll_iw": "likelihood models: importance-weighted -log p(x), nats per image (lower is better)",
    "stacked_modes": "Stacked MNIST modes hit, of 1,000 (higher is better)",
    "stacked_kl": "KL(mode histogram || uniform over 1,000), in nats (lower is better)",
    "modes": "2D mixture modes with at least one sample within 3 std (higher is better)",
    "high_quality": "% of 2D samples within 3 std of a mode, 98.9 for true data (higher is better)",
    "mode_kl": "KL(high-quality samples' mode histogram || uniform), nats (lower is better)",
    "fid_inception": "FID in Inception-v3 pool features, from local weights (lower is better)",
    "is_inception": "Inception Score, from local weights (higher is better)",
    "is_inception_std": "spread of the Inception Score over splits",
    "kid_inception": "KID in Inception-v3 features, from local weights (lower is better)",
    "kid_inception_std": "spread of the Inception KID over subsets",
}


def describe(key: str) -> str:
    """The description of a metric key, e.g. describe("fd_mnistnet"); "" for unknown keys."""
    if key in DESCRIPTIONS:
        return DESCRIPTIONS[key]
    m = re.fullmatch(r"(fd|kid)_([a-z0-9]+net)(_std)?", key)
    if m is None:
        return ""
    template = f"{m[1]}_{{net}}{m[3] or ''}"
    return DESCRIPTIONS[template].format(net=m[2])


def evaluate_features(
    fake: Features,
    real: Features,
    metrics: tuple[str, ...] = tuple(METRICS),
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Run the named metric families on precomputed features; one flat dict. `labels` (N,),
    the classes a conditional generator drew the fakes for, adds label_accuracy(_min)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise GankitError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    results: dict[str, float] = {}
    for name in metrics:  # a fresh generator each, so a family's result never depends on the others
        results.update(METRICS[name](fake, real, torch.Generator().manual_seed(seed)))
    if labels is not None:
        results |= label_accuracy(fake.probs, labels)
    return results


def evaluate_images(
    fake: torch.Tensor,
    real: torch.Tensor | Features,
    classifier: FeatureExtractor,
    n: int | None = None,
    metrics: tuple[str, ...] = tuple(METRICS),
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Score fake images (N, C, H, W) in [-1, 1] against real ones (the held-out split).

    `labels` (N,), for samples of a conditional generator: the classes they were
    drawn for, which adds label_accuracy and label_accuracy_min.

    `n` uses a seeded random n of the fakes (None = all). `real` may be the
    images or their precomputed `extract(real, classifier)`, which a training loop
    evaluating often should keep. Precision/recall/density/coverage compare equal
    counts, min(N_fake, N_real), drawn with the same seed. Keys: see DESCRIPTIONS.
    """
    if isinstance(real, torch.Tensor) and fake.shape[1:] != real.shape[1:]:
        raise GankitError(
            f"fake images are {tuple(fake.shape[1:])} but real ones are {tuple(real.shape[1:])}"
        )
    if n is not None and n < len(fake):
        idx = torch.randperm(len(fake), generator=torch.Generator().manual_seed(seed))[:n]
        fake = fake[idx]
        labels = labels[idx] if labels is not None else None
    real_features = real if isinstance(real, Features) else extract(real, classifier)
    fake_features = extract(fake, classifier)
    return evaluate_features(fake_features, real_features, metrics, seed, labels)


__all__ = [
    "DESCRIPTIONS",
    "METRICS",
    "Classifier",
    "FeatureExtractor",
    "Features",
    "class_coverage",
    "classifier_for",
    "describe",
    "evaluate_features",
    "evaluate_images",
    "extract",
    "fd_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_metrics",
    "kid",
    "label_accuracy",
    "mixture_metrics",
    "prdc",
    "mode_histogram_scores",
    "stack_digits",
    "stacked_modes",
    "stacked_mnist_modes",
]
