"""Make the README's three pictures from finished runs, with gankit's own API.

    python docs/pictures.py --mnist RUN --sr RUN [--lab RUN] [--out docs]

--mnist  a run of `gankit train --config acgan-mnist` (any conditional MNIST run):
         samples.png, one row of 10 samples per digit, seed 0, enlarged 2x.
--sr     a run of `gankit train --config srresnet-x4` (or srgan-x4): sr.png, a crop of a
         held-out photograph (--photo, default coffee) as bicubic x4, the run's x4 and the
         original side by side; each title gives the PSNR of the whole photograph
         (Y channel, border cropped, as `gankit eval` scores it).
--lab    a run of `gankit lab 2d`: lab2d.png is its last frame. Without --lab the script
         runs the lab itself, cut short: the r1 remedy on the grid for --lab-steps (3,000,
         about 30 s on one core; the full run takes 20,000), and keeps its last frame.

Each picture is written only when its run is given (the lab's always is).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gankit.data import PHOTOS, load_photos
from gankit.grids import grid
from gankit.labs.lab2d import resolve, run_lab2d
from gankit.sample import Sampler

LIMIT = 150_000  # bytes a picture may take in the repository


def mnist_grid(run: str, out: Path, per_row: int = 10) -> None:
    sampler = Sampler.load(run, device="cpu")
    rows = len(sampler.classes) or per_row  # a conditional run: one row per class
    images = sampler.images(rows * per_row, seed=0)  # classes in equal blocks, in order
    picture = Image.fromarray(grid(images, per_row))
    picture.resize((2 * picture.width, 2 * picture.height), Image.NEAREST).save(out)


def lab_frame(run: str | None, steps: int, out: Path) -> None:
    if run is None:
        cfg = resolve("r1", mixture="grid", steps=steps, every=steps, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            run_lab2d(cfg, Path(tmp) / "lab")
            Image.open(last_frame(Path(tmp) / "lab")).save(out)
    else:
        Image.open(last_frame(Path(run))).save(out)


def last_frame(run: Path) -> Path:
    frames = sorted((run / "frames").glob("step-*.png"))
    if not frames:
        raise SystemExit(f"{run} holds no frames/step-*.png: is it a `gankit lab 2d` run?")
    return frames[-1]


def sr_crop(run: str, photo: str, crop: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sampler = Sampler.load(run, device="cpu")
    sr, scale = sampler.family, sampler.model_cfg.scale
    if not hasattr(sr, "upscale"):
        raise SystemExit(f"{run} is a {sampler.model_cfg.family} run, not super-resolution")
    dataset = sampler.meta["config"]["data"]["dataset"]
    names = list(PHOTOS["test"]) if dataset == "photos" else []
    photos = load_photos(dataset, "test")
    if photo not in names and not (photo.isdigit() and int(photo) < len(photos)):
        raise SystemExit(f"--photo {photo}: one of {names} or an index below {len(photos)}")
    rgb = photos[names.index(photo) if photo in names else int(photo)]
    with torch.no_grad():  # as `gankit eval` scores it
        hr, bicubic, model = sr.upscale_photo(sampler.nets["G"], rgb, scale)
    y, x = busiest_window(hr, bicubic, crop)
    name = "SRResNet" if sampler.model_cfg.stage == "srresnet" else "SRGAN"
    panels = [
        (bicubic, f"bicubic ×{scale}: {sr.psnr_ssim(hr, bicubic, scale)[0]:.2f} dB"),
        (model, f"{name} ×{scale}: {sr.psnr_ssim(hr, model, scale)[0]:.2f} dB"),
        (hr, "original"),
    ]
    size = 2 * crop / 100  # inches at 100 dpi: each crop shown at twice its size
    fig, axes = plt.subplots(1, 3, figsize=(3 * size + 0.3, size + 0.5), dpi=100)
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image[y : y + crop, x : x + crop], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    fig.savefig(out, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def busiest_window(hr: np.ndarray, bicubic: np.ndarray, crop: int) -> tuple[int, int]:
    """The top-left corner of the crop x crop window where bicubic misses the most detail."""
    error = np.abs(hr.astype(np.float32) - bicubic.astype(np.float32)).mean(axis=2)  # (H, W)
    step, best = max(crop // 4, 1), (-1.0, 0, 0)
    for y in range(0, hr.shape[0] - crop + 1, step):
        for x in range(0, hr.shape[1] - crop + 1, step):
            best = max(best, (float(error[y : y + crop, x : x + crop].mean()), y, x))
    return best[1], best[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", help="an acgan-mnist run folder: samples.png")
    p.add_argument("--sr", help="an srresnet-x4 run folder: sr.png")
    p.add_argument("--lab", help="a `gankit lab 2d` run folder (default: run a short lab)")
    p.add_argument("--lab-steps", type=int, default=3000, help="steps of the short lab")
    p.add_argument("--photo", default="coffee", help="held-out photograph: name or index")
    p.add_argument("--crop", type=int, default=96, help="crop size in HR pixels")
    p.add_argument("--out", default="docs", help="folder for the PNGs (default: docs)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.mnist:
        mnist_grid(args.mnist, out / "samples.png")
        written.append(out / "samples.png")
    lab_frame(args.lab, args.lab_steps, out / "lab2d.png")
    written.append(out / "lab2d.png")
    if args.sr:
        sr_crop(args.sr, args.photo, args.crop, out / "sr.png")
        written.append(out / "sr.png")
    for path in written:
        size = path.stat().st_size
        print(f"wrote {path} ({size / 1e3:.0f} kB)" + (" over 150 kB!" if size > LIMIT else ""))


if __name__ == "__main__":
    main()
