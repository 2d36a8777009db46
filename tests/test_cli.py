import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import one_line_error
from gankit.cli import main

TINY = ["--g-widths", "32,64", "--d-widths", "64,32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short trained run shared by the sampling tests."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "--steps", "30", "--name", "r", "--runs-dir", str(runs), *TINY]) == 0
    return runs / "r"


def test_train_prints_where_everything_is(run, capsys):
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())


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


def test_sampling_is_reproducible_by_seed(run, tmp_path):
    def draw(seed, name):
        main(["sample", str(run), "--n", "8", "--seed", str(seed), "--out", str(tmp_path / name)])
        with np.load(tmp_path / name) as f:
            return f["images"]

    assert np.array_equal(draw(1, "a.npz"), draw(1, "b.npz"))
    assert not np.array_equal(draw(1, "a.npz"), draw(2, "c.npz"))


def test_sample_from_a_numbered_checkpoint(run, tmp_path):
    assert (
        main(
            ["sample", str(run), "--checkpoint", "30", "--n", "4", "--out", str(tmp_path / "s.npz")]
        )
        == 0
    )


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
        (["train", "--config", "/nonexistent.yaml"], "does not exist"),
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


def test_resume_continues_to_a_new_total(run, capsys):
    assert main(["train", "--resume", str(run), "--steps", "40", "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    from gankit.checkpoint import read_meta

    assert read_meta(run / "checkpoints" / "last.safetensors")["step"] == 40


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
