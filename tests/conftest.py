import pytest

from gankit.cli import main
from gankit.config import load_config

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
