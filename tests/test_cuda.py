"""The CUDA path, where torch sees a GPU (skipped elsewhere, so in CI): every preset trains,
resumes and samples there, a resumed run equals an uninterrupted one, a GPU checkpoint
samples alike on the CPU, and `--amp auto` takes bfloat16 on a GPU that has it.

    python -m pytest tests/test_cuda.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import interrupt_after, quiet
from gankit import checkpoint as ckpt
from gankit.config import load_config, preset_names
from gankit.device import native_bf16, resolve_amp
from gankit.models import MODELS
from gankit.sample import Sampler
from gankit.train import last_checkpoint, train
from test_train import assert_same_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = {"device": "cuda", "batch_size": "16", "n_fixed": "8", "sample_every": "2"}
SMALL |= {"ckpt_every": "2", "log_every": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A few 32 x 32 colour images in two class subfolders: CIFAR-10's stand-in."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def preset_config(name: str, folder, steps: int):
    over = SMALL | {"steps": str(steps)}
    if "cifar10" in name:
        over |= {"dataset": f"folder:{folder}"}
    return load_config(name, over)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_trains_resumes_and_samples_on_cuda(name, folder, tmp_path):
    run = tmp_path / "run"
    train(preset_config(name, folder, 2), run, progress=False, log=quiet)
    train(preset_config(name, folder, 3), run, resume=True, progress=False, log=quiet)
    tensors, meta = ckpt.read(last_checkpoint(run))
    assert meta["step"] == 3
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    if hasattr(MODELS[load_config(name).model.family], "upscale"):
        return  # super-resolution: no sampler from noise
    on_gpu = Sampler.load(run, device="cuda")
    labels = on_gpu.labels(10)
    images = on_gpu.images(10, seed=0, labels=labels)
    assert all(p.is_cuda for net in on_gpu.nets.values() for p in net.parameters())
    # the same checkpoint on the CPU draws the same images, to TF32's rounding on the GPU
    on_cpu = Sampler.load(run, device="cpu").images(10, seed=0, labels=labels)
    gap = (images.int() - on_cpu.int()).abs()  # uint8 levels
    assert gap.float().mean() < 1 and gap.max() <= 32, (gap.float().mean(), gap.max())


@pytest.mark.parametrize("preset", ["dcgan-mnist", "r3gan-mnist"])
def test_a_resumed_cuda_run_equals_an_uninterrupted_one(preset, tmp_path, monkeypatch):
    """Stopped by Ctrl-C at step 4 of 7 and resumed: R1 and R2's double backward, EMA,
    bfloat16 where the GPU has it, NHWC, and the schedules over the run's length."""
    cfg = load_config(
        preset, SMALL | {"steps": "7", "amp": "auto", "channels_last": "true", "reg_every": "3"}
    )
    train(cfg, tmp_path / "full", progress=False, log=quiet)
    restore = interrupt_after(monkeypatch, MODELS[cfg.model.family], 4)
    assert train(cfg, tmp_path / "part", progress=False, log=quiet).step == 4
    restore()
    torch.manual_seed(1234)  # as a fresh process would be: the checkpoint must set the RNGs
    train(cfg, tmp_path / "part", resume=True, progress=False, log=quiet)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_amp_auto_takes_bfloat16_on_a_gpu_that_has_it():
    gpu = torch.device("cuda")
    has = torch.cuda.get_device_capability(gpu) >= (8, 0)  # Ampere on: bfloat16 tensor cores
    assert native_bf16(gpu) == has
    assert resolve_amp(gpu, "auto") == ("bf16" if has else "none")
