import contextlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import one_line_error
from gankit.cli import main
from gankit.config import PRESETS, load_config

TINY = ["--g-widths", "32,64", "--d-widths", "64,32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short trained run shared by the sampling tests (checkpoints at steps 10, 20, 30),
    and what `gankit train` printed. Tests that change a run work on a copy."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--steps", "30", "--ckpt-every", "10", "--name", "r", "--runs-dir", str(runs)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, *TINY]) == 0
    return runs / "r", printed.getvalue()


@pytest.fixture
def run(trained):
    return trained[0]


def test_train_prints_where_everything_is(trained):
    run, out = trained
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert "trained to step 30" in out
    assert str(run / "checkpoints" / "last.safetensors") in out
    assert f"gankit sample {run}" in out and f"tensorboard --logdir {run.parent}" in out


def test_sample_npz_and_grid(run, tmp_path, capsys):
    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    assert (
        main(
            ["sample", str(run), "--n", "25", "--out", str(out), "--grid", str(grid), "--nrow", "5"]
        )
        == 0
    )
    with np.load(out) as f:
        images = f["images"]
    assert images.shape == (25, 1, 28, 28) and images.dtype == np.uint8
    assert images.std() > 0 and grid.stat().st_size > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"wrote {out}: images (25, 1, 28, 28) uint8 (step 30)", f"wrote {grid}"]


def test_sampling_is_reproducible_by_seed(run, tmp_path):
    def draw(seed, name):
        main(["sample", str(run), "--n", "8", "--seed", str(seed), "--out", str(tmp_path / name)])
        with np.load(tmp_path / name) as f:
            return f["images"]

    assert np.array_equal(draw(1, "a.npz"), draw(1, "b.npz"))
    assert not np.array_equal(draw(1, "a.npz"), draw(2, "c.npz"))


def test_sample_from_a_numbered_checkpoint(run, tmp_path, capsys):
    def draw(which):
        out = tmp_path / f"{which}.npz"
        assert main(["sample", str(run), "--checkpoint", which, "--n", "4", "--out", str(out)]) == 0
        with np.load(out) as f:
            return f["images"], capsys.readouterr().out

    (at_20, said_20), (last, said_last) = draw("20"), draw("last")
    assert "(step 20)" in said_20 and "(step 30)" in said_last
    assert not np.array_equal(at_20, last)  # same noise, other weights
    named, said_named = draw("step-00000020")  # a name as the list of checkpoints prints it
    assert "(step 20)" in said_named and np.array_equal(named, at_20)


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--dry-run", "--lr-d", "1e-4", "--model.nz", "100"]) == 0
    out = capsys.readouterr().out
    assert "lr_d: 0.0001" in out and "nz: 100" in out


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "--bogus", "1"], "unknown option --bogus"),
        (["train", "--lr-d", "abc"], "train.lr_d"),
        (["train", "--steps"], "expected one argument"),
        (["train", "--lr-d"], "needs a value"),
        (["train", "--config", "/nonexistent.yaml"], "does not exist (presets go by name: "),
        (["train", "--resume", "/nonexistent/run"], "does not exist"),
        (["train", "--data.dataset", "cifar10", "--data.root", "/nonexistent"], "never downloads"),
        (
            ["sample", "/nonexistent/run", "--grid", "g.png"],
            "run folder /nonexistent/run does not exist",
        ),
        (["sample"], "required"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expect, tmp_path):
    one_line_error(capsys, argv, expect)


def test_existing_run_is_never_overwritten(run, capsys):
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    one_line_error(
        capsys, ["train", "--name", "r", "--runs-dir", str(run.parent), *TINY], "already exists"
    )
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before


def test_corrupt_checkpoint_is_refused(run, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((run / "checkpoints" / "last.safetensors").read_bytes()[:500])
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious")
    one_line_error(capsys, ["sample", str(bad), "--out", str(out)], "corrupt or truncated")
    assert out.read_bytes() == b"precious"


def test_unreadable_image_in_a_folder_dataset(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"garbage")
    argv = [
        "train",
        "--data.dataset",
        f"folder:{tmp_path / 'imgs'}",
        "--runs-dir",
        str(tmp_path),
        *TINY,
    ]
    one_line_error(capsys, argv, "cannot read image")


def test_resume_continues_to_a_new_total(run, tmp_path, capsys):
    copy = shutil.copytree(run, tmp_path / "r")  # the shared run stays at step 30
    assert main(["train", "--resume", str(copy), "--steps", "40", "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    from gankit.checkpoint import read_meta

    assert read_meta(copy / "checkpoints" / "last.safetensors")["step"] == 40
    assert read_meta(run / "checkpoints" / "last.safetensors")["step"] == 30


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "gankit", "train", "--lr-d", "oops"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "gankit: error: bad value for train.lr_d: expected float, got 'oops'"
    ]


COND = ["--family", "dcgan", "--model.ngf", "8", "--model.ndf", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A short conditional DCGAN run (projection D, EMA) shared by the --class tests."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--steps", "8", "--name", "c", "--runs-dir", str(runs), *COND]
    argv += ["--cond", "projection", "--ema", "0.9", "--n-fixed", "100", "--no-progress"]
    assert main(argv) == 0
    return runs / "c"


def test_sample_one_class_and_a_grid_row_per_class(cond_run, tmp_path):
    one = tmp_path / "three.npz"
    assert main(["sample", str(cond_run), "--class", "3", "--n", "20", "--out", str(one)]) == 0
    with np.load(one) as f:
        assert f["images"].shape == (20, 1, 28, 28) and (f["labels"] == 3).all()
    some, grid = tmp_path / "some.npz", tmp_path / "grid.png"
    argv = ["sample", str(cond_run), "--class", "0,1,2", "--n", "30", "--out", str(some)]
    assert main([*argv, "--grid", str(grid), "--nrow", "8"]) == 0
    with np.load(some) as f:
        assert f["labels"].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    from PIL import Image

    width, height = Image.open(grid).size
    assert (width, height) == (2 + 8 * 30, 2 + 3 * 30)  # 3 rows (one per class) of 8
    every = tmp_path / "every.npz"
    assert main(["sample", str(cond_run), "--n", "50", "--out", str(every)]) == 0
    with np.load(every) as f:
        assert np.bincount(f["labels"]).tolist() == [5] * 10


def classified_as_asked(images, labels) -> tuple[float, float]:
    """label_accuracy and label_accuracy_min worked out here: the share of images that
    MnistNet (as gankit eval trains and caches it) puts in their label's class; the worst class."""
    from gankit.data import make_dataset
    from gankit.metrics import classifier_for

    clf = classifier_for(make_dataset("mnist"), make_dataset("mnist", split="test"), log=None)
    hits = (clf.predict_proba(images).argmax(1) == labels).double()
    return hits.mean().item(), min(hits[labels == k].mean().item() for k in labels.unique())


def test_conditional_eval_reports_label_accuracy(cond_run, capsys):
    from gankit.data import to_unit_range
    from gankit.sample import Sampler

    assert main(["eval", str(cond_run), "--n", "200", "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    sampler = Sampler.load(cond_run, device="cpu")  # eval's draws: 20 per class, seed 0
    labels = sampler.labels(200)
    accuracy, worst = classified_as_asked(
        to_unit_range(sampler.images(200, seed=0, labels=labels)), labels
    )
    assert metrics["label_accuracy"] == pytest.approx(accuracy)
    assert metrics["label_accuracy_min"] == pytest.approx(worst)


def test_label_accuracy_of_labelled_samples(tmp_path, capsys):
    """Real held-out digits with their labels, but every 3 labelled 5: MnistNet finds most
    digits where their labels say, and about half of the "5"s."""
    import torch

    from gankit.data import make_dataset, to_uint8, to_unit_range

    test = make_dataset("mnist", split="test")
    pick = torch.cat([torch.nonzero(test.labels == k)[:30, 0] for k in range(10)])  # 30 a class
    images, labels = to_uint8(test.images[pick]), test.labels[pick].clone()
    labels[labels == 3] = 5
    path = tmp_path / "digits.npz"
    np.savez(path, images=images.numpy(), labels=labels.numpy())
    assert main(["eval", "--samples", str(path), "--data", "mnist", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    accuracy, worst = classified_as_asked(to_unit_range(images), labels)
    assert 0.8 < accuracy < 0.95 and 0.3 < worst < 0.7  # the relabelled 3s: not degenerate
    assert metrics["label_accuracy"] == pytest.approx(accuracy)
    assert metrics["label_accuracy_min"] == pytest.approx(worst)


def test_conditional_and_model_errors_are_one_line(cond_run, run, tmp_path, capsys):
    one_line_error(
        capsys, ["sample", str(cond_run), "--class", "12", "--grid", "g.png"], "class 12"
    )
    one_line_error(capsys, ["sample", str(cond_run), "--class", "x", "--grid", "g.png"], "--class")
    one_line_error(capsys, ["sample", str(run), "--class", "3", "--grid", "g.png"], "unconditional")
    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, images=np.zeros((8, 1, 28, 28), np.uint8))
    argv = ["train", "--data.dataset", f"npz:{unlabelled}", "--runs-dir", str(tmp_path), *COND]
    one_line_error(capsys, [*argv, "--cond", "projection"], "needs labels")
    one_line_error(capsys, [*argv, "--data.img-size", "30"], "DCGAN needs an image size")


def test_interpolation_grid_and_its_errors(run, tmp_path, capsys):
    grid = tmp_path / "interp.png"
    assert main(["sample", str(run), "--interpolate", "--grid", str(grid), "--n", "30"]) == 0
    from PIL import Image

    assert Image.open(grid).size == (2 + 10 * 30, 2 + 3 * 30)  # 3 rows of 10 steps
    one_line_error(capsys, ["sample", str(run), "--interpolate", "--out", "x.npz"], "add --grid")
    one_line_error(capsys, ["sample", str(run), "--pyramid", "p.png"], "needs a pyramid model")


def test_slerp_stays_on_the_shell_and_hits_both_ends():
    import torch

    from gankit.sample import slerp

    z0, z1 = torch.randn(4, 64), torch.randn(4, 64)
    z1 = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)  # same radius
    path = slerp(z0, z1, torch.linspace(0, 1, 7))  # (4, 7, 64)
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, -1], z1)
    norms = path.norm(dim=2)
    torch.testing.assert_close(norms, z0.norm(dim=1, keepdim=True).expand(4, 7))


def test_list_names_the_families_losses_and_presets(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the presets come from the package, not the working folder
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("dcgan", "lapgan", "vae", "hinge", "wgan-gp", "projection", "  dcgan-mnist "):
        assert word in out


def test_a_preset_by_name_is_its_file_and_its_dry_run_loads_back(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "dcgan-mnist", "--dry-run"]) == 0
    (tmp_path / "mine.yaml").write_text(capsys.readouterr().out)
    preset = load_config(PRESETS / "dcgan-mnist.yaml")
    assert load_config("dcgan-mnist") == preset == load_config(tmp_path / "mine.yaml")
    assert preset.model.family == "dcgan" and preset != load_config("mlp-mnist")
    (tmp_path / "dcgan-mnist.yaml").write_text("model:\n  family: mlp\n")
    assert load_config("dcgan-mnist.yaml").model.family == "mlp"  # a file comes first


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gankit {importlib.metadata.version('gankit')}"


@pytest.mark.parametrize("module", ["gankit.game", "gankit.labs.lab2d"])
def test_a_module_imports_first_in_a_fresh_interpreter(module):
    # What bench scripts do; an import cycle through gankit.models would fail here.
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr.splitlines()[-1:]
