import pytest

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
