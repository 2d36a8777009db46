"""Evaluate a run, or a file of samples, against the real data it imitates.

Images are scored in the feature space of a classifier gankit trains itself on
the dataset's labelled training split (cached; see gankit.metrics.features),
against the held-out split. Stacked MNIST samples are scored by their modes, and
2D points (ring, grid) by the mixture metrics. Nothing here downloads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from gankit import metrics
from gankit.data import Dataset, make_dataset, read_array_file, to_unit_range
from gankit.errors import GankitError
from gankit.toy import MIXTURES

HIGHER_IS_BETTER = {
    "precision",
    "recall",
    "coverage",
    "confidence",
    "stacked_modes",
    "modes",
    "high_quality",
    "is_inception",
    "label_accuracy",
    "label_accuracy_min",
    "test_elbo",
}


IMAGE_KEYS = [
    "precision",
    "recall",
    "density",
    "coverage",
    "class_kl",
    "classes_missing",
    "confidence",
]


BEST_AT_ONE = {"density"}  # ~1 when matched: below strays from the data, above crowds its modes


def badness(key: str, value: float) -> float:
    """How far `value` of metric `key` is from ideal: the lower, the better."""
    if key in BEST_AT_ONE:
        return abs(value - 1)
    return -value if key in HIGHER_IS_BETTER else value


def load_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(samples, labels or None) from .npz (keys `images`, optional `labels`, as `gankit
    sample --out` writes) or .npy.

    Images are read as uint8 in [0, 255] or floats in [0, 1] or [-1, 1] (anything else,
    object arrays, NaN or mismatched labels are refused: see gankit.data.read_array_file)
    and come back (N, C, H, W) in [-1, 1]; (N, 2) points come back unscaled.
    """
    x, labels = read_array_file(Path(path), "samples file")
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    if x.ndim == 2:
        return torch.as_tensor(x, dtype=torch.float32), labels
    return to_unit_range(x), labels


class Evaluator:
    """Holds the real side of the comparison (classifier, held-out features) for repeated use.

    Built once per dataset; `score(fake)` then costs one pass of the classifier
    over the fakes, which is what a training loop evaluating every N steps needs.
    """

    def __init__(
        self,
        dataset: str,
        root: str | Path = "data",
        img_size: int = 0,
        channels: int = 0,
        device="cpu",
        log=print,
        train: Dataset | None = None,  # the training split, when the caller has it loaded already
    ):
        self.dataset = dataset
        self.target = self.classifier = self.real = self.real_images = None
        if dataset in MIXTURES:
            self.target = MIXTURES[dataset]()
            return
        base = "mnist" if dataset == "stacked-mnist" else dataset
        kw = dict(root=root, img_size=img_size, channels=0 if base != dataset else channels)
        if train is None or base != dataset:  # stacked-mnist's classifier learns plain digits
            train = make_dataset(base, split="train", **kw)
        test = make_dataset(base, split="test", **kw)
        self.classifier = metrics.classifier_for(train, test, device=device, log=log)
        self.real_images = test.images  # (N, C, H, W) in [-1, 1], the held-out split
        self.real = (
            None if dataset == "stacked-mnist" else metrics.extract(test.images, self.classifier)
        )
        self.real_shape = test.img_shape

    @property
    def keys(self) -> list[str]:
        """The metric keys `score` returns."""
        if self.target is not None:
            return ["modes", "high_quality", "mode_kl"]
        if self.dataset == "stacked-mnist":
            return ["stacked_modes", "stacked_kl"]
        net = self.classifier.name
        return [f"fd_{net}", f"kid_{net}", f"kid_{net}_std", *IMAGE_KEYS]

    def resolve_key(self, name: str) -> str:
        """A metric key from a name or prefix: "fd" -> "fd_mnistnet". Unknown names are refused."""
        keys = self.keys
        if name in keys:
            return name
        matches = [k for k in keys if k.startswith(name + "_") and not k.endswith("_std")]
        if len(matches) == 1:
            return matches[0]
        raise GankitError(
            f"unknown best_metric {name!r} for {self.dataset}: choose one of {', '.join(keys)}"
        )

    @property
    def info(self) -> dict:
        if self.classifier is None:
            return {"dataset": self.dataset}
        return {
            "dataset": self.dataset,
            "classifier": self.classifier.name,
            "classifier_accuracy": self.classifier.accuracy,
        }

    def score(
        self, fake: torch.Tensor, seed: int = 0, labels: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Metrics of fake samples: images (N, C, H, W) in [-1, 1], or (N, 2) points for 2D targets.
        `labels`: the classes a conditional generator drew the images for."""
        return self.score_seen(self.see(fake), seed, labels)

    def see(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the metrics read of each sample, row by row: features and class probabilities,
        predicted Stacked MNIST modes, or the 2D points themselves. Ranks each see their share
        of the samples and gather these rows; `score_seen` then scores them."""
        if self.target is not None:
            if fake.ndim != 2 or fake.shape[1] != 2:
                raise GankitError(
                    f"{self.dataset} samples must be (N, 2) points, got {tuple(fake.shape)}"
                )
            return {"points": fake}
        if fake.ndim != 4:
            raise GankitError(
                f"{self.dataset} samples must be images (N, C, H, W), got {tuple(fake.shape)}"
            )
        if self.dataset == "stacked-mnist":
            if fake.shape[1] != 3:
                raise GankitError(
                    f"stacked-mnist samples must have 3 channels, got {fake.shape[1]}"
                )
            return {"modes": metrics.stacked_modes(fake, self.classifier)}
        if tuple(fake.shape[1:]) != tuple(self.real_shape):
            raise GankitError(
                f"samples are {tuple(fake.shape[1:])} but {self.dataset} images are {tuple(self.real_shape)}"
            )
        f = metrics.extract(fake, self.classifier)
        return {"feats": f.feats, "probs": f.probs}

    def score_seen(
        self, seen: dict[str, torch.Tensor], seed: int = 0, labels: torch.Tensor | None = None
    ) -> dict[str, float]:
        """The metrics of samples as `see` returned them (possibly gathered from several ranks)."""
        if self.target is not None:
            return metrics.mixture_metrics(seen["points"], self.target)
        if self.dataset == "stacked-mnist":
            return metrics.mode_histogram_scores(seen["modes"])
        fake = metrics.Features(seen["feats"], seen["probs"], self.classifier.name)
        if labels is not None and len(labels) != len(fake):
            raise GankitError(f"{len(labels)} labels for {len(fake)} samples")
        return metrics.evaluate_features(fake, self.real, seed=seed, labels=labels)


def likelihood_metrics(
    family, nets, dataset: str, root, img_size: int, channels: int, k: int, seed: int = 0
) -> dict[str, float]:
    """A likelihood model's held-out ELBO and importance-weighted NLL, nats per image."""
    test = make_dataset(dataset, root, img_size, channels, split="test")
    device = next(nets["G"].parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    elbo, iw = family.log_likelihood(nets, test.images.to(device), k=k, generator=gen)
    return {"test_elbo": elbo.mean().item(), "nll_iw": -iw.mean().item()}


def format_table(results: dict[str, float]) -> str:
    lines = []
    for key, value in results.items():
        text = f"{value:.0f}" if float(value).is_integer() and abs(value) < 1e6 else f"{value:.4g}"
        lines.append(f"{key:<22} {text:>10}  {metrics.describe(key)}")
    return "\n".join(lines)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
