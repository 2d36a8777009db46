"""Class coverage: does the generator produce every class, as often as the data does?

A classifier labels each sample; the histogram of those labels is compared with
the data's class frequencies. This catches mode collapse onto a few digits that
image-quality numbers miss.
"""

from __future__ import annotations

import math

import torch


def label_distribution(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) integer labels -> (K,) float64 frequencies summing to 1."""
    counts = torch.bincount(labels.detach().cpu().long(), minlength=num_classes).double()
    return counts / counts.sum()


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) = sum p log(p / q) for (K,) distributions, with 0 log 0 = 0.

    Infinite when q is 0 somewhere p is not.
    """
    p, q = p.double(), q.double()
    support = p > 0
    if (q[support] <= 0).any():
        return math.inf
    return (p[support] * (p[support] / q[support]).log()).sum().item()


def class_coverage(fake_probs: torch.Tensor, data_freq: torch.Tensor) -> dict[str, float]:
    """Class statistics of samples from their (N, K) classifier probabilities.

    `data_freq` (K,) is the class distribution to match (the real split's
    labels, or the classifier's predictions on real images).

    - class_kl: KL(p_sample || p_data), sample label distribution first. In this
      direction a sample set that piles onto a few classes scores high (all
      samples in one of 10 balanced classes gives log 10 = 2.30), while one that
      merely misses a class scores only mildly; `classes_missing` counts those.
      Infinite only if samples land in a class the data never has.
    - classes_missing: classes with sample frequency below half the data frequency.
    - confidence: mean over samples of the top class probability; low values
      mean the samples do not look like any class.
    """
    num_classes = fake_probs.shape[1]
    p_sample = label_distribution(fake_probs.argmax(1), num_classes)  # (K,)
    p_data = data_freq.detach().cpu().double()
    return {
        "class_kl": kl_divergence(p_sample, p_data),
        "classes_missing": float((p_sample < 0.5 * p_data).sum().item()),
        "confidence": fake_probs.max(1).values.float().mean().item(),
    }


def label_accuracy(fake_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How often a conditional generator makes the class it was asked for.

    - label_accuracy: share of samples the classifier assigns to their conditioning label.
    - label_accuracy_min: the same share in the worst class.
    """
    hits = (fake_probs.argmax(1) == labels.cpu()).double()  # (N,)
    per_class = [hits[labels.cpu() == k].mean().item() for k in labels.unique().tolist()]
    return {"label_accuracy": hits.mean().item(), "label_accuracy_min": min(per_class)}
