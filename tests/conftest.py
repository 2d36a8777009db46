import os
import signal

import pytest
import torch

from gankit.cli import main
from gankit.config import load_config
from gankit.distributed import cores


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # a pytest-xdist worker (make test): share the cores, not each take all of them
        torch.set_num_threads(max(1, cores() // int(workers)))


# A small MLP GAN: fast enough for many short runs in the test suite.
TINY = {
    "g_widths": "32,64",
    "d_widths": "64,32",
    "device": "cpu",
    "log_every": "10",
    "sample_every": "20",
    "ckpt_every": "20",
    "batch_size": "32",
}


@pytest.fixture
def tiny_cfg():
    def make(**overrides):
        return load_config(None, TINY | {k: str(v) for k, v in overrides.items()})

    return make


def quiet(*args, **kwargs):
    pass


def one_line_error(capsys, argv, expect):
    """The CLI refuses `argv` with exit 2 and exactly one stderr line containing `expect`."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gankit: error:"), err
    assert expect in lines[0]
    assert "Traceback" not in err


def interrupt_after(monkeypatch, family, n: int):
    """The family's step raises SIGINT after its n-th call, as a user's Ctrl-C mid-run
    would; returns a function that puts the real step back."""
    calls, real_step = {"n": 0}, family.step

    def interrupted_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(family, "step", interrupted_step)
    return lambda: monkeypatch.setattr(family, "step", real_step)
