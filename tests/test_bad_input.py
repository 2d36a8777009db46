"""Bad input of every kind gets one line on stderr, exit code 2, and changes no file.

Each case builds its input in a fresh folder (the test's tmp_path, also the working
directory), snapshots every file and folder there (names, sizes, mtimes, bytes), runs
`gankit.cli.main(argv)` in this process, and checks: return code 2, exactly one stderr
line starting `gankit: error:`, no traceback, the same snapshot afterwards. The
checkpoint cases copy and mutate one tiny run trained once for the module; a few cases
run again as real subprocesses (`python -m gankit`) to show the same holds end to end.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from gankit import checkpoint as ckpt
from gankit.cli import main
from gankit.models import MODELS

COMMON = ["--device", "cpu", "--no-progress"]  # what every training case adds
TINY = ["--g-widths", "8", "--d-widths", "8", "--batch-size", "8", "--n-fixed", "4", *COMMON]
CLASSES = [str(c) for c in range(10)]


# ----------------------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict:
    """Every file and folder below root: names, sizes, mtimes and bytes. A run folder's
    `.lock` is left out: a resume that is refused after taking the lock rewrites its
    holder (pid, time), which is lock state, not the run's data."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.name == ".lock":
            continue
        if p.is_dir():
            out[key] = "folder"
        else:
            st = p.lstat()
            out[key] = (st.st_size, st.st_mtime_ns, p.read_bytes())
    return out


def refuse(capfd, argv, folder: Path, expect: str | None = None) -> str:
    """main(argv) exits 2 with one stderr line `gankit: error: ...` and changes nothing."""
    before = snapshot(folder)
    capfd.readouterr()
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("gankit: error: "), err
    assert err == lines[0] + "\n" and "Traceback" not in err
    if expect:
        assert expect in lines[0], lines[0]
    assert snapshot(folder) == before, "a refused command changed files"
    return lines[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (runs/, grids) land in the snapshot


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny MLP run (2 steps) and, beside it, checkpoints crafted from it without
    training: a 10-class conditional MLP and a DCGAN (ngf = ndf = 4)."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "--steps", "2", "--name", "r", "--runs-dir", str(runs), *TINY]) == 0
    last = runs / "r" / "checkpoints" / "last.safetensors"
    meta = ckpt.read_meta(last)
    for name, model, classes in (
        ("cond", {"family": "mlp", "g_widths": [8], "d_widths": [8], "cond": "concat"}, CLASSES),
        ("dcgan", {"family": "dcgan", "ngf": 4, "ndf": 4}, []),
    ):
        family = MODELS[model["family"]]
        cfg = family.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
        nets = family.build(cfg, (1, 28, 28), len(classes))
        config = meta["config"] | {"model": model}
        path = runs / f"{name}.safetensors"
        ckpt.save_checkpoint(path, nets, None, meta | {"config": config, "classes": classes})
    return runs


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run inside this test's folder."""
    return Path(shutil.copytree(trained / "r", tmp_path / "r"))


def last(run: Path) -> Path:
    return run / "checkpoints" / "last.safetensors"


def rewrite(path: Path, meta=None, tensors=None) -> None:
    """Rewrite a checkpoint through functions of its metadata and its tensors."""
    with safe_open(str(path), framework="pt") as f:
        old_meta = json.loads(f.metadata()["gankit"])
        old = {k: f.get_tensor(k) for k in f.keys()}
    new_meta = meta(old_meta) if meta else old_meta
    if tensors:  # as a writer of such a file would: with the digests of what it holds
        old = tensors(old)
        new_meta["digests"] = ckpt.digests(old)
    save_file(old, path, metadata={"gankit": json.dumps(new_meta)})


def flip_data(path: Path) -> None:
    """Flip the lowest bit of G's first weight (little-endian: its first byte): it still
    reads as a valid float, one ulp away."""
    data = bytearray(path.read_bytes())
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    start = min(v["data_offsets"][0] for k, v in header.items() if k.startswith("G."))
    data[8 + size + start] ^= 1
    path.write_bytes(bytes(data))


def flip(path: Path, find: bytes, offset: int = 0, bit: int = 0) -> None:
    """Flip one bit of the byte at `offset` into the first `find` of the file's header."""
    data = bytearray(path.read_bytes())
    size = struct.unpack("<Q", data[:8])[0]
    pos = data.index(find, 8, 8 + size) + offset
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))


class Unpickled:
    """An object whose unpickling creates a file: proof that nothing was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def samples(tmp: Path, name: str = "s.npz", **arrays) -> Path:
    path = tmp / name
    if name.endswith(".npy"):
        np.save(path, arrays["images"], allow_pickle=True)
    else:
        np.savez(path, **arrays)
    return path


DIGITS = np.zeros((4, 1, 28, 28), np.uint8)


def png(path: Path, size=(16, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode in ("L", "P") else (200, 100, 50)[: len(mode)]).save(path)
    return path


# ----------------------------------------------------------------------------- configs


def yaml_file(text: str | bytes):
    def make(tmp: Path) -> list:
        path = tmp / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", "--config", path, "--dry-run"]

    return make


def train(*options: str, dry_run: bool = True):
    def make(tmp: Path) -> list:
        extra = ["--dry-run"] if dry_run else ["--runs-dir", tmp / "runs", *COMMON]
        return ["train", *options, *extra]

    return make


CONFIG_CASES = {
    "section-not-mapping": (yaml_file("model: dcgan\n"), "section 'model' must be a mapping"),
    "section-is-list": (yaml_file("train: [1, 2]\n"), "section 'train' must be a mapping"),
    "list-for-scalar": (yaml_file("train:\n  steps: [1, 2]\n"), "train.steps: expected int"),
    "mapping-for-scalar": (yaml_file("train:\n  lr_d: {a: 1}\n"), "train.lr_d"),
    "not-utf8": (yaml_file(b"train:\n  loss: \xff\xfe\n"), "not UTF-8"),
    "yaml-is-a-list": (yaml_file("- model\n- train\n"), "must be a mapping"),
    "yaml-is-a-scalar": (yaml_file("just some text\n"), "must be a mapping"),
    "invalid-yaml": (yaml_file("train: {steps: 1\n"), "cannot parse config"),
    "python-tag": (yaml_file("train: !!python/object/apply:os.getcwd []\n"), "cannot parse"),
    "unknown-section": (yaml_file("optim:\n  lr: 1\n"), "unknown config section 'optim'"),
    "unknown-key": (yaml_file("train:\n  stepz: 10\n"), "unknown option train.stepz"),
    "non-string-key": (yaml_file("1: 2\n"), "unknown config section 1"),
    "family-is-list": (yaml_file("model:\n  family: [mlp]\n"), "unknown model family"),
    "config-is-folder": (lambda tmp: ["train", "--config", tmp, "--dry-run"], "is a folder"),
    "lr-nan": (train("--lr-g", "nan"), "expected a finite float, got nan"),
    "lr-inf": (train("--lr-d", "inf"), "expected a finite float, got inf"),
    "lr-negative": (train("--lr-d", "-1e-4"), "learning rates must be > 0"),
    "ema-nan": (train("--ema", ".nan"), "train.ema: expected a finite float"),
    "batch-zero": (train("--batch-size", "0"), "batch_size must be >= 1"),
    "steps-negative": (train("--steps", "-1"), "steps must be >= 1"),
    "steps-fraction": (train("--steps", "1.5"), "train.steps: expected int"),
    "nz-zero": (train("--model.nz", "0"), "nz must be >= 1"),
    "img-size-3": (train("--data.img-size", "3"), "img_size must be 0 (native) or 8..4096"),
    "channels-2": (train("--data.channels", "2"), "channels must be 0 (native), 1 or 3"),
    "beta-above-1": (train("--beta1", "1.5"), "betas must be in [0, 1)"),
    "seed-negative": (train("--seed", "-1"), "seed must be in 0..4294967295"),
    "bool-from-word": (train("--channels-last", "maybe"), "expected bool, got 'maybe'"),
    "bool-from-int": (train("--channels-last", "1"), "expected bool, got 1"),
    "float-from-bool": (train("--lr-d", "true"), "expected float, got True"),
    "str-from-list": (yaml_file("train:\n  loss: [a, b]\n"), "train.loss: expected str"),
    "str-from-mapping": (train("--loss", "{a: 1}"), "unknown loss '{a: 1}'"),
    "choice-loss": (train("--loss", "hinge2"), "choose one of non-saturating"),
    "choice-amp": (train("--amp", "fp16"), "amp must be one of none, bf16"),
    "choice-d-norm": (train("--family", "dcgan", "--d-norm", "group"), "unknown d_norm 'group'"),
    "choice-family": (train("--family", "gan"), "unknown model family 'gan': choose one of mlp"),
    "choice-device": (train("--device", "tpu"), "device must be auto, cpu, cuda or cuda:N"),
    "choice-dataset": (train("--data.dataset", "imagenet"), "unknown dataset 'imagenet'"),
    "dataset-no-path": (train("--data.dataset", "folder:"), "names no path"),
    "tuple-of-words": (train("--g-widths", "8,x"), "expected comma-separated ints"),
    "tuple-zero-width": (train("--g-widths", "0"), "layer widths must be >= 1"),
    "unknown-option": (train("--bogus", "1"), "unknown option --bogus"),
    "unknown-preset": (
        train("--config", "dcgan-mnsit"),
        "config 'dcgan-mnsit' is neither a file nor a preset; presets: acgan-mnist, cgan-mnist",
    ),
    "preset-path-elsewhere": (train("--config", "elsewhere/mlp-mnist.yaml"), "does not exist"),
    "config-empty": (train("--config", ""), "--config is empty"),
    "r2-on-srgan": (
        train("--family", "srgan", "--r2", "1"),
        "R2 penalty needs a critic without BatchNorm",
    ),
    "rpgan-on-srgan": (train("--family", "srgan", "--loss", "rpgan"), "not rpgan"),
    "wgan-gp-on-srgan": (
        train("--family", "srgan", "--loss", "wgan-gp"),
        "the srgan family's D always has it",
    ),
    "augment-on-srgan": (train("--family", "srgan", "--augment", "color"), "drop augment"),
    "noise-on-srgan": (train("--family", "srgan", "--instance-noise", "0.1"), "drop augment"),
    "r2-on-vae": (train("--family", "vae", "--r2", "1"), "train.r2 belongs to the adversarial"),
    "reg-every-alone": (train("--reg-every", "4"), "neither is on: set --r1 or --r2"),
    "reg-every-on-vae": (
        train("--family", "vae", "--reg-every", "4"),
        "train.reg_every belongs to the adversarial",
    ),
    "r3gan-groups": (
        train("--family", "r3gan", "--model.group-width", "48"),
        "ngf 32 x expansion 2 = 64 channels do not split into groups of group_width 48",
    ),
    "resume-and-config": (
        lambda tmp: ["train", "--resume", tmp, "--config", "x.yaml"],
        "drop --config",
    ),
    # refused before anything is allocated or created (no --dry-run)
    "ngf-million": (
        train("--family", "dcgan", "--model.ngf", "1000000", dry_run=False),
        "make the model (model.ngf, model.g_widths, ...) smaller",
    ),
    "widths-hundred-million": (
        train("--g-widths", "100000000", dry_run=False),
        "85,100,567,057 parameters",
    ),
    "batch-billion": (
        train("--batch-size", "1000000000", dry_run=False),
        "train.batch_size smaller",
    ),
    "fixed-batch-billion": (
        train("--n-fixed", "1000000000", dry_run=False),
        "train.n_fixed smaller",
    ),
    "dcgan-img-size-30": (
        train("--family", "dcgan", "--data.img-size", "30", dry_run=False),
        "DCGAN needs an image size",
    ),
    "runs-dir-is-file": (
        lambda tmp: ["train", "--runs-dir", png(tmp / "f.png"), *TINY],
        "is a file, not a folder",
    ),
    "name-with-slash": (train("--name", "a/b", dry_run=False), "must be a plain folder name"),
    "nproc-zero": (train("--nproc", "0", dry_run=False), "--nproc must be >= 1"),
    "nproc-uneven-batch": (
        lambda tmp: ["train", "--nproc", "3", "--runs-dir", tmp, *TINY],
        "does not divide by --nproc 3",
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config(case, tmp_path, capfd):
    make, expect = CONFIG_CASES[case]
    refuse(capfd, make(tmp_path), tmp_path, expect)


# ----------------------------------------------------------------------------- image folders


def folder_train(tmp: Path, folder: Path) -> list:
    return ["train", "--data.dataset", f"folder:{folder}", "--runs-dir", tmp / "runs", *TINY]


def with_file(name: str, write):
    """A folder of two good images and one bad one written by `write(path)`."""

    def make(tmp: Path) -> list:
        folder = tmp / "imgs"
        png(folder / "a.png")
        png(folder / "b.jpg")
        write(folder / name)
        return folder_train(tmp, folder)

    return make


def holding(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_text("not an image")
    return folder


def truncated(fmt: str):
    def write(path: Path):
        Image.new("RGB", (64, 64), (10, 200, 30)).save(path, fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return write


def bad_crc(path: Path):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 6] ^= 0xFF  # a byte of the compressed pixels
    path.write_bytes(bytes(data))


IMAGE_CASES = {
    "truncated-png": (with_file("c.png", truncated("PNG")), "cannot read image"),
    "truncated-jpeg": (with_file("c.jpg", truncated("JPEG")), "cannot read image"),
    "zero-bytes": (with_file("c.png", lambda p: p.write_bytes(b"")), "empty (0 bytes)"),
    "text-named-jpg": (with_file("c.jpg", lambda p: p.write_text("hello")), "cannot identify"),
    "corrupt-png-data": (with_file("c.png", bad_crc), "cannot read image"),
    "folder-missing": (lambda tmp: folder_train(tmp, tmp / "nope"), "does not exist"),
    "folder-empty": (lambda tmp: folder_train(tmp, holding(tmp / "e")), "no images"),
    "folder-without-images": (
        lambda tmp: folder_train(tmp, holding(tmp / "t", "notes.txt")),
        "no images (.png, .jpg",
    ),
    "folder-is-a-file": (lambda tmp: folder_train(tmp, png(tmp / "one.png")), "is a file"),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_folder(case, tmp_path, capfd):
    make, expect = IMAGE_CASES[case]
    refuse(capfd, make(tmp_path), tmp_path, expect)


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 pixels: over 2x (error), 1x (warning)
def test_decompression_bomb_is_one_line(limit, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    png(tmp_path / "imgs" / "big.png", (64, 64))
    refuse(capfd, folder_train(tmp_path, tmp_path / "imgs"), tmp_path, "too large")


def test_grey_rgba_palette_and_16_bit_images_load_together(tmp_path):
    from gankit.data import make_dataset

    folder = tmp_path / "mixed"
    png(folder / "grey.png", mode="L")
    png(folder / "rgba.png", mode="RGBA")
    png(folder / "palette.png", mode="P")
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(folder / "deep.png")  # I;16
    assert Image.open(folder / "deep.png").mode.startswith("I")
    ds = make_dataset(f"folder:{folder}", img_size=16)
    assert ds.images.shape == (4, 3, 16, 16)
    deep = ds.images[0]  # sorted: deep, grey, palette, rgba
    torch.testing.assert_close(deep, torch.full_like(deep, 128 / 127.5 - 1))  # scaled, not clipped
    torch.testing.assert_close(ds.images[1], torch.full_like(deep, 128 / 127.5 - 1))


# ----------------------------------------------------------------------------- sample files


def eval_file(name: str = "s.npz", **arrays):
    def make(tmp: Path) -> list:
        return ["eval", "--samples", samples(tmp, name, **arrays), "--data", "mnist"]

    return make


def eval_bytes(name: str, cut):
    """A good file of `name`, then cut(bytes) -> the bytes written."""

    def make(tmp: Path) -> list:
        path = samples(tmp, name, images=DIGITS)
        path.write_bytes(cut(path.read_bytes()))
        return ["eval", "--samples", path, "--data", "mnist"]

    return make


def object_array(name: str):
    def make(tmp: Path) -> list:
        array = np.empty(4, dtype=object)
        array[:] = [Unpickled(tmp / "unpickled") for _ in range(4)]
        return ["eval", "--samples", samples(tmp, name, images=array), "--data", "mnist"]

    return make


def lying_npy(tmp: Path) -> list:
    """An .npy whose header says (10^12, 784) uint8 over 16 bytes of data."""
    path = tmp / "lie.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 784)}
        )
        f.write(b"\0" * 16)
    return ["eval", "--samples", path, "--data", "mnist"]


def npz_with(**arrays) -> dict:
    return {"images": DIGITS} | arrays


FLOATS = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
ARRAY_CASES = {
    "truncated-npy": (eval_bytes("s.npy", lambda b: b[: len(b) // 2]), "truncated"),
    "empty-npy": (eval_bytes("s.npy", lambda b: b""), "cannot read samples file"),
    "truncated-npz": (eval_bytes("s.npz", lambda b: b[: len(b) // 2]), "truncated?"),
    "empty-npz": (eval_bytes("s.npz", lambda b: b""), "cannot read samples file"),
    "object-npy": (object_array("s.npy"), "never unpickles"),
    "object-npz": (object_array("s.npz"), "never unpickles"),
    "header-lies": (lying_npy, "truncated: its header says (1000000000000, 784)"),
    "rank-1": (eval_file(images=np.zeros(10, np.uint8)), "got shape (10,)"),
    "rank-5": (eval_file(images=np.zeros((2, 1, 1, 8, 8), np.uint8)), "got shape (2, 1, 1, 8, 8)"),
    "no-samples": (eval_file(images=DIGITS[:0]), "holds no samples"),
    "five-channels": (eval_file(images=np.zeros((2, 5, 8, 8), np.uint8)), "1 or 3 channels"),
    "int64": (eval_file(images=DIGITS.astype(np.int64)), "uint8 in [0, 255], or floats in"),
    "uint16": (eval_file(images=DIGITS.astype(np.uint16)), "got uint16"),
    "bool": (eval_file(images=DIGITS.astype(bool)), "got bool"),
    "float-0-255": (eval_file(images=FLOATS * 255), "divide 0..255 values by 255"),
    "float-nan": (eval_file(images=np.where(FLOATS > 0.5, np.nan, FLOATS)), "NaN"),
    "points-complex": (eval_file(images=np.zeros((4, 2), np.complex64)), "(N, 2) real numbers"),
    "labels-length": (eval_file(**npz_with(labels=np.arange(3))), "3 labels for 4 images"),
    "labels-float": (eval_file(**npz_with(labels=np.zeros(4))), "whole numbers"),
    "labels-2d": (eval_file(**npz_with(labels=np.zeros((4, 2), int))), "got shape (4, 2)"),
    "labels-negative": (eval_file(**npz_with(labels=-np.ones(4, int))), "class indices >= 0"),
    "no-images-key": (eval_file(pixels=DIGITS), "no 'images' array (it has: pixels)"),
    "wrong-suffix": (
        lambda tmp: ["eval", "--samples", png(tmp / "s.png"), "--data", "mnist"],
        "must be a .npz",
    ),
    "file-missing": (lambda tmp: ["eval", "--samples", "x.npz", "--data", "mnist"], "not exist"),
    "no-data": (lambda tmp: ["eval", "--samples", samples(tmp, images=DIGITS)], "needs --data"),
    "unknown-data": (
        lambda tmp: ["eval", "--samples", samples(tmp, images=DIGITS), "--data", "imagenet"],
        "unknown dataset",
    ),
}


@pytest.mark.parametrize("case", ARRAY_CASES)
def test_bad_samples_file(case, tmp_path, capfd):
    make, expect = ARRAY_CASES[case]
    refuse(capfd, make(tmp_path), tmp_path, expect)
    assert not (tmp_path / "unpickled").exists()


# ----------------------------------------------------------------------------- checkpoints


def sample_it(tmp: Path, path: Path) -> list:
    return ["sample", path, "--n", "4", "--grid", tmp / "g.png"]


def mutated(change, command=sample_it):
    """The trained run copied here, its last checkpoint changed by `change(path)`."""

    def make(tmp: Path, run: Path, trained: Path) -> list:
        change(last(run))
        return command(tmp, run)

    return make


def cut(n: int):
    return lambda p: p.write_bytes(p.read_bytes()[:n])


def header_size(delta: int | None = None, value: int | None = None):
    def change(p: Path):
        data = p.read_bytes()
        size = struct.unpack("<Q", data[:8])[0]
        p.write_bytes(struct.pack("<Q", value if value is not None else size + delta) + data[8:])

    return change


def meta_change(**set_keys):
    def change(p: Path):
        rewrite(p, meta=lambda m: {k: v for k, v in (m | set_keys).items() if v is not None})

    return change


def config_model(replace: bool = False, **values):
    def change(p: Path):
        def edit(m):
            m["config"]["model"] = values if replace else m["config"]["model"] | values
            return m

        rewrite(p, meta=edit)

    return change


def drop_tensor(prefix: str):
    def change(p: Path):
        rewrite(p, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith(prefix)})

    return change


def nan_weight(p: Path):
    def poison(t):
        key = next(k for k in sorted(t) if k.startswith("G.") and t[k].is_floating_point())
        t[key].view(-1)[0] = float("nan")
        return t

    rewrite(p, tensors=poison)


def pickled(p: Path):
    torch.save({"G": torch.zeros(3), "x": Unpickled(p.parent / "unpickled")}, p)


def resume(tmp: Path, run: Path) -> list:
    return ["train", "--resume", run, "--no-progress"]


def eval_run(tmp: Path, run: Path) -> list:
    return ["eval", run, "--n", "8"]


def swap_in(name: str):
    def make(tmp: Path, run: Path, trained: Path) -> list:
        shutil.copy(trained / f"{name}.safetensors", last(run))
        return resume(tmp, run)

    return make


CHECKPOINT_CASES = {
    "truncated": (mutated(cut(5000)), "corrupt or truncated"),
    "truncated-in-header": (mutated(cut(100)), "corrupt or truncated"),
    "empty": (mutated(cut(0)), "corrupt or truncated"),
    "flip-header-json": (mutated(lambda p: flip(p, b'"dtype"', 0, 0)), "corrupt or truncated"),
    "flip-dtype": (mutated(lambda p: flip(p, b'"F32"', 2, 2)), "corrupt or truncated"),
    "flip-offset": (mutated(lambda p: flip(p, b'"data_offsets":[', 16, 3)), "corrupt"),
    "flip-tensor-name": (mutated(lambda p: flip(p, b'"G.', 1, 0)), "does not match network G as"),
    "flip-format": (mutated(lambda p: flip(p, b"gankit-checkpoint", 0, 0)), "not a gankit"),
    "header-size-lies-up": (mutated(header_size(+50)), "corrupt or truncated"),
    "header-size-lies-down": (mutated(header_size(-50)), "corrupt or truncated"),
    "header-size-huge": (mutated(header_size(value=2**62)), "corrupt or truncated"),
    "missing-tensor": (mutated(drop_tensor("G.")), "lacks G."),
    "step-is-text": (mutated(meta_change(step="ten")), "'step' must be a whole number"),
    "version-is-text": (mutated(meta_change(version="1")), "format version '1'"),
    "version-newer": (
        mutated(meta_change(version=99, written_by={"gankit": "9.0"})),
        "format version 99 (written by gankit 9.0); gankit 0",
    ),
    "img-shape-is-text": (mutated(meta_change(img_shape="28x28")), "'img_shape' must be"),
    "no-config": (mutated(meta_change(config=None)), "no model config"),
    "classes-not-names": (mutated(meta_change(classes=5)), "'classes' must be a list"),
    "config-value-wrong": (mutated(config_model(nz="many")), "model.nz: expected int"),
    "config-lies-huge": (mutated(config_model(g_widths=[10**8])), "[100000000, 64] in the net"),
    "config-says-dcgan": (
        mutated(config_model(replace=True, family="dcgan", ngf=4, ndf=4)),
        "does not match network G as its config builds it",
    ),
    "nan-weights": (mutated(nan_weight), "NaN or infinite values"),
    "flip-a-data-bit": (mutated(flip_data), "do not match their digest"),
    "resume-flip-a-data-bit": (mutated(flip_data, resume), "do not match their digest"),
    "pickle-renamed": (mutated(pickled), "is a pickle (torch.save)"),
    "eval-truncated": (mutated(cut(5000), eval_run), "corrupt or truncated"),
    "eval-step-is-text": (mutated(meta_change(step="ten"), eval_run), "whole number"),
    "resume-truncated": (mutated(cut(5000), resume), "corrupt or truncated"),
    "resume-flip-json": (mutated(lambda p: flip(p, b'"dtype"', 0, 0), resume), "corrupt"),
    "resume-pickle": (mutated(pickled, resume), "never unpickles"),
    "resume-no-optimiser": (mutated(meta_change(optim=None), resume), "no optimiser state"),
    "resume-missing-extra": (mutated(drop_tensor("extra.sampler"), resume), "lacks or garbles"),
    "resume-missing-checkpoint": (mutated(lambda p: p.unlink(), resume), "does not exist"),
    "resume-bad-config-yaml": (
        mutated(lambda p: (p.parents[1] / "config.yaml").write_text("[1, 2]"), resume),
        "must be a mapping",
    ),
    "resume-other-family": (swap_in("dcgan"), "holds a 'dcgan' model, but"),
    "checkpoint-999": (
        lambda tmp, run, _: ["sample", run, "--checkpoint", "999", "--grid", tmp / "g.png"],
        "step-00000999.safetensors does not exist (available: last, step-00000002)",
    ),
    "checkpoint-is-folder": (
        lambda tmp, run, _: ["sample", run / "checkpoints", "--grid", tmp / "g.png"],
        "does not exist",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(case, run, trained, tmp_path, capfd):
    make, expect = CHECKPOINT_CASES[case]
    refuse(capfd, make(tmp_path, run, trained), tmp_path, expect)
    assert not (tmp_path / "r" / "checkpoints" / "unpickled").exists()


# ----------------------------------------------------------------------------- options


def sample_opts(*options, ckpt_name: str | None = None):
    def make(tmp: Path, run: Path, trained: Path) -> list:
        source = trained / f"{ckpt_name}.safetensors" if ckpt_name else run
        return ["sample", source, *options]

    return make


def on_run(command: str, *options):
    return lambda tmp, run, trained: [command, run, *options]


def lab(*options):
    return lambda tmp, run, trained: ["lab", *options, "--runs-dir", tmp / "runs"]


def upscale(*options, image=True):
    def make(tmp: Path, run: Path, trained: Path) -> list:
        source = png(tmp / "in.png") if image else tmp / "missing.png"
        return ["upscale", source, "--run", run, *options]

    return make


def existing_out(tmp: Path, run: Path, trained: Path) -> list:
    keep = tmp / "keep.npz"
    np.savez(keep, images=DIGITS)
    return ["sample", run, "--n", "0", "--out", keep]


OPTION_CASES = {
    "sample-n-negative": (sample_opts("--n", "-1", "--grid", "g.png"), "--n must be >= 1"),
    "sample-nrow-zero": (sample_opts("--nrow", "0", "--grid", "g.png"), "--nrow must be >= 1"),
    "sample-batch-zero": (sample_opts("--batch-size", "0", "--out", "s.npz"), "--batch-size"),
    "sample-seed-word": (sample_opts("--seed", "abc", "--grid", "g.png"), "--seed: expected"),
    "sample-seed-negative": (sample_opts("--seed", "-1", "--grid", "g.png"), "0..4294967295"),
    "sample-n-word": (sample_opts("--n", "ten", "--grid", "g.png"), "invalid int value"),
    "sample-device-tpu": (sample_opts("--device", "tpu", "--grid", "g.png"), "unknown device"),
    "sample-device-gpu-7": (sample_opts("--device", "cuda:7", "--grid", "g.png"), "cuda:7"),
    "sample-class-99": (
        sample_opts("--class", "99", "--grid", "g.png", ckpt_name="cond"),
        "class 99 does not exist: this run has classes 0..9",
    ),
    "sample-class-on-unconditional": (
        sample_opts("--class", "3", "--grid", "g.png"),
        "unconditional",
    ),
    "sample-class-word": (sample_opts("--class", "three", "--grid", "g.png"), "--class takes"),
    "sample-out-huge-n": (
        sample_opts("--n", str(10**12), "--out", "s.npz"),
        "--n 1,000,000,000,000 images of (1, 28, 28) would take about",
    ),
    "sample-interpolate-huge-n": (
        sample_opts("--n", str(10**12), "--interpolate", "--grid", "g.png"),
        "of memory",
    ),
    "sample-failed-keeps-out": (existing_out, "--n must be >= 1"),
    "sample-out-not-npz": (sample_opts("--out", "s.png"), "--out must end in .npz"),
    "sample-grid-below-file": (sample_opts("--grid", "f.png/g.png"), "is a file, not a folder"),
    "sample-grid-is-folder": (sample_opts("--grid", "d.png"), "is a folder"),
    "sample-nowhere": (sample_opts("--n", "4"), "say where to write"),
    "sample-pyramid-mlp": (sample_opts("--pyramid", "p.png"), "needs a pyramid model"),
    "eval-n-zero": (on_run("eval", "--n", "0"), "--n must be >= 1"),
    "eval-n-huge": (on_run("eval", "--n", str(10**12)), "would take about"),
    "eval-iw-k-zero": (on_run("eval", "--iw-k", "0"), "--iw-k must be >= 1"),
    "eval-seed-huge": (on_run("eval", "--seed", str(2**40)), "0..4294967295"),
    "eval-device-tpu": (on_run("eval", "--device", "tpu"), "unknown device 'tpu'"),
    "eval-inception-missing": (
        on_run("eval", "--inception-weights", "w.pth"),
        "w.pth does not exist",
    ),
    "eval-run-and-samples": (on_run("eval", "--samples", "s.npz"), "either a run folder"),
    "upscale-tile-zero": (upscale("--out", "o.png", "--tile", "0"), "--tile must be >= 8"),
    "upscale-missing-image": (upscale("--out", "o.png", image=False), "does not exist"),
    "upscale-not-sr-run": (upscale("--out", "o.png"), "is a mlp run, not super-resolution"),
    "upscale-out-exists": (upscale("--out", "in.png"), "exists: pick another --out"),
    "upscale-out-suffix": (upscale("--out", "o.txt"), "--out must end in .png"),
    "lab1d-std-zero": (lab("1d", "--std", "0"), "--std and --g-scale must be > 0"),
    "lab1d-std-nan": (lab("1d", "--std", "nan"), "--std takes comma-separated finite numbers"),
    "lab1d-mean-word": (lab("1d", "--mean", "abc"), "--mean takes"),
    "lab1d-z-choice": (lab("1d", "--z", "cauchy"), "unknown --z 'cauchy': uniform | normal"),
    "lab1d-steps-zero": (lab("1d", "--steps", "0"), "must be >= 1"),
    "lab1d-batch-one": (lab("1d", "--batch-size", "1"), "--batch-size >= 2"),
    "lab1d-g-scale-inf": (lab("1d", "--g-scale", "inf"), "expected a finite number"),
    "lab2d-mixture-choice": (lab("2d", "--mixture", "moon"), "unknown mixture 'moon'"),
    "lab2d-remedy-choice": (lab("2d", "--remedy", "magic"), "unknown remedy 'magic'"),
    "lab2d-pack-zero": (lab("2d", "--pack", "0"), "--pack and --n-critic must be >= 1"),
    "lab2d-lr-nan": (lab("2d", "--lr-g", "nan"), "argument --lr-g: expected a finite number"),
    "lab2d-lr-zero": (lab("2d", "--lr-d", "0"), "argument --lr-d: must be > 0"),
    "lab2d-nz-zero": (lab("2d", "--nz", "0"), "--nz must be >= 1"),
    "lab2d-drs-negative": (lab("2d", "--drs", "-1"), "--drs must be >= 0"),
    "lab2d-batch-billion": (lab("2d", "--batch-size", str(10**12)), "of memory"),
    "lab2d-steps-word": (lab("2d", "--steps", "abc"), "invalid int value: 'abc'"),
    "lab2d-name-slash": (lab("2d", "--name", "a/b", "--steps", "1"), "plain folder name"),
    "list-extra": (lambda tmp, run, trained: ["list", "extra"], "unrecognized arguments"),
    "list-option": (lambda tmp, run, trained: ["list", "--all"], "unrecognized arguments"),
    "no-command": (lambda tmp, run, trained: [], "required"),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_bad_option(case, run, trained, tmp_path, capfd):
    (tmp_path / "f.png").write_text("a file")
    (tmp_path / "d.png").mkdir()
    make, expect = OPTION_CASES[case]
    refuse(capfd, make(tmp_path, run, trained), tmp_path, expect)


# ----------------------------------------------------------------------------- what must work


def test_a_grid_draws_only_what_it_shows(run, tmp_path, capfd):
    grid = tmp_path / "g.png"
    assert main(["sample", str(run), "--n", str(10**12), "--grid", str(grid), "--nrow", "3"]) == 0
    assert Image.open(grid).size == (2 + 3 * 30, 2 + 3 * 30)  # 3 x 3 of 28 x 28 images


def test_a_grid_alone_shows_the_images_of_a_full_draw(run, tmp_path):
    """--grid alone draws nrow^2 images: the first of the --n that --out would hold."""
    full = ["sample", str(run), "--n", "40", "--nrow", "4", "--grid"]
    assert main([*full, str(tmp_path / "a.png"), "--out", str(tmp_path / "s.npz")]) == 0
    assert main([*full, str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_a_conditional_grid_draws_a_row_per_class(trained, tmp_path):
    grid = tmp_path / "g.png"
    argv = ["sample", str(trained / "cond.safetensors"), "--n", str(10**9), "--grid", str(grid)]
    assert main([*argv, "--nrow", "2", "--class", "1,2,3"]) == 0
    assert Image.open(grid).size == (2 + 2 * 30, 2 + 3 * 30)


def test_a_single_width_is_a_one_layer_tuple(capfd):
    assert main(["train", "--dry-run", "--g-widths", "8"]) == 0
    assert "g_widths:\n  - 8\n" in capfd.readouterr().out


# ----------------------------------------------------------------------------- the last resort


def test_an_unexpected_exception_is_one_line_and_exit_2(monkeypatch, tmp_path, capfd):
    def boom():
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr("gankit.cli.cmd_list", boom)
    line = refuse(capfd, ["list"], tmp_path, "unexpected RuntimeError: kaboom")
    assert line.endswith("(run with GANKIT_DEBUG=1 for the traceback)")
    monkeypatch.setenv("GANKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaboom"):
        main(["list"])


@pytest.mark.parametrize(
    "code, what", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only")]
)
def test_a_failed_write_names_the_file_and_keeps_the_old_one(
    code, what, run, tmp_path, capfd, monkeypatch
):
    out = tmp_path / "s.npz"
    np.savez(out, images=DIGITS)

    def full_disk(file, **arrays):
        Path(file).write_bytes(b"half an npz")
        raise OSError(code, os.strerror(code), str(file))

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    line = refuse(capfd, ["sample", run, "--n", "4", "--out", out], tmp_path, what)
    assert line == f"gankit: error: cannot write {out}: {os.strerror(code)}"


def test_a_warning_is_one_line(monkeypatch, capfd):
    import warnings

    def warn():
        warnings.warn("first\nsecond", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr("gankit.cli.cmd_list", warn)
    assert main(["list"]) == 0
    assert capfd.readouterr().err == "gankit: warning: first (UserWarning)\n"


# ----------------------------------------------------------------------------- end to end


def test_the_same_in_a_subprocess(run, tmp_path):
    """Representative cases as `python -m gankit`, started together to share the import."""
    pickled(last(run))  # a torch.save file named .safetensors
    cases = {
        "config": ["train", "--lr-g", "nan", "--dry-run"],
        "checkpoint": ["sample", str(run), "--grid", str(tmp_path / "g.png")],
        "sample-option": ["sample", str(run), "--nrow", "0", "--grid", "g.png"],
        "lab-option": ["lab", "2d", "--steps", "abc"],
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("GANKIT_DEBUG", None)
    before = snapshot(tmp_path)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "gankit", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name, argv in cases.items()
    }
    for name, p in procs.items():
        _, err = p.communicate(timeout=120)
        lines = err.splitlines()
        assert p.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("gankit: error: "), (name, err)
    assert snapshot(tmp_path) == before
    assert not (run / "checkpoints" / "unpickled").exists()


def test_unpickled_really_touches(tmp_path):
    """The marker object the cases use would have shown an unpickle."""
    pickle.loads(pickle.dumps(Unpickled(tmp_path / "m")))
    assert (tmp_path / "m").exists()
