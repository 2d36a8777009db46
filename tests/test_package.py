"""gankit as a user installs it: the wheel `python -m build` makes, in a fresh venv
outside the checkout, run from a folder of the user's own.

Reinstalling torch (5.5 GB) per test run is out of reach, so the fresh venv sees this
environment's installed packages through a .pth file pointing at a folder of links
to them. The links leave out gankit itself (the checkout's editable install) and the
packages of the optional extras, so the installed wheel is the only gankit there and
the base commands are shown to need no extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
PRESETS = sorted(p.stem for p in (ROOT / "src" / "gankit" / "presets").glob("*.yaml"))
# Top-level names in site-packages hidden from the fresh venv: gankit's editable
# install, and what the extras (inception, export, dev) bring.
HIDDEN = (
    "gankit", "__editable__", "torch_fidelity", "prdc", "onnx", "playwright",
    "pytest", "_pytest", "ruff", "build",
)  # fmt: skip


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out, tree = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("tree")
    # The checkout's files as a fresh clone has them (tests/ and bench/ too): an egg-info
    # left by an editable install would feed its old file list into the sdist, hiding a
    # missing package-data entry.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "tests/test_package.py" in listed and "bench/zoo.py" in listed
    for name in listed:
        if (ROOT / name).is_file():  # a file deleted but not yet committed is listed too
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, tree / name)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def user(dist, tmp_path_factory):
    """Runs a command in the fresh venv, from an empty folder of the user's."""
    root = tmp_path_factory.mktemp("user")
    venv, deps, home = root / "venv", root / "deps", root / "project"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.lower().startswith(HIDDEN):
            (deps / entry.name).symlink_to(entry)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "borrowed.pth").write_text(f"{deps}\n")
    wheel = next(dist.glob("*.whl"))
    installed = subprocess.run(  # with its dependencies checked: all are found in deps/
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        done = subprocess.run(args, cwd=home, env=env, capture_output=True, text=True)
        assert done.returncode == code, f"{args}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        return done

    run.venv, run.home = venv, home
    return run


def test_the_wheel_holds_the_presets_and_no_tests(dist):
    names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    assert sorted(Path(n).stem for n in names if n.startswith("gankit/presets/")) == PRESETS
    assert not [n for n in names if n.startswith(("tests/", "bench/", "configs/"))]
    sdist = tarfile.open(next(dist.glob("*.tar.gz"))).getnames()
    assert f"gankit-{VERSION}/src/gankit/presets/mlp-mnist.yaml" in sdist


def test_the_installed_wheel_runs_outside_the_checkout(user):
    where = user("python", "-c", "import gankit; print(gankit.__file__)").stdout.strip()
    assert Path(where).is_relative_to(user.venv), where  # the wheel, not the checkout
    assert user("gankit", "--version").stdout.strip() == f"gankit {VERSION}"
    listed = user("gankit", "list").stdout
    assert all(f"  {name} " in listed for name in PRESETS), listed
    resolved = user("gankit", "train", "--config", "dcgan-mnist", "--dry-run").stdout
    assert "family: dcgan" in resolved

    user(
        "gankit", "train", "--config", "mlp-mnist", "--steps", "20", "--name", "w", "--no-progress"
    )
    run = user.home / "runs" / "w"
    header = (run / "config.yaml").read_text().splitlines()[0]
    assert f"gankit {VERSION}" in header and "torch " in header
    user("gankit", "sample", "runs/w", "--n", "16", "--grid", "grid.png", "--nrow", "4")
    assert (user.home / "grid.png").stat().st_size > 0
    scored = json.loads(user("gankit", "eval", "runs/w", "--n", "200", "--json").stdout)
    assert scored["step"] == 20 and scored["n"] == 200
    assert scored["metrics"]["fd_mnistnet"] > 0 and 0 <= scored["metrics"]["recall"] <= 1


def test_a_missing_extra_is_named_in_one_line(user):
    (user.home / "w.pth").write_bytes(b"")
    refused = user("gankit", "eval", "runs/none", "--inception-weights", "w.pth", code=2)
    assert refused.stderr.strip() == (
        "gankit: error: --inception-weights needs torch_fidelity, from gankit's inception "
        "extra: pip install 'gankit[inception]'"
    )
    refused = user("gankit", "export", "runs/none", "--format", "onnx", "--out", "g.onnx", code=2)
    assert refused.stderr.startswith("gankit: error: export to ONNX needs the export extra")
    assert refused.stderr.strip().endswith("pip install 'gankit[export]'")
    assert len(refused.stderr.splitlines()) == 1
