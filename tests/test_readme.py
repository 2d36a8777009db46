"""The README's usage examples run, so they never rot."""

import re
import shlex
from pathlib import Path

import numpy as np

from gankit.cli import main

README = (Path(__file__).parents[1] / "README.md").read_text()


def block_after(marker: str, lang: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```" + lang + r"\n(.*?)```", README, re.S)
    assert match, f"README block after {marker!r} not found"
    return match.group(1)


def test_quick_tour_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = block_after("run by tests/test_readme.py. -->", "sh").strip().splitlines()
    assert len(commands) >= 4
    for line in commands:
        argv = shlex.split(line.split(" #")[0])
        assert argv[0] == "gankit"
        assert main(argv[1:]) == 0, line
    with np.load(tmp_path / "samples.npz") as f:
        assert f["images"].shape == (1000, 1, 28, 28)
    assert (tmp_path / "grid.png").is_file()
    with np.load(tmp_path / "threes.npz") as f:
        assert f["images"].shape == (100, 1, 28, 28) and (f["labels"] == 3).all()
    from gankit.checkpoint import read_meta

    assert read_meta(tmp_path / "runs/quick/checkpoints/last.safetensors")["step"] == 400


def test_python_api_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(block_after("run by tests/test_readme.py too. -->", "python"), scope)
    assert scope["images"].shape == (16, 1, 28, 28)
    assert scope["summary"].step == 200
