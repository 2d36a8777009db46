import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import interrupt_after, quiet
from gankit import checkpoint as ckpt
from gankit.models import mlp
from gankit.train import last_checkpoint, train


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc.Tags()[
        "images"
    ]


def weights(run_dir):
    tensors, _ = ckpt.read(last_checkpoint(run_dir))
    return tensors


def assert_same_weights(run_a, run_b) -> dict:
    """Two runs' last checkpoints hold the same tensors, bit for bit; returns run_a's."""
    a, b = weights(run_a), weights(run_b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return a


def test_short_run_on_real_digits_moves_the_game(tiny_cfg, tmp_path):
    s = train(tiny_cfg(steps=200, log_every=20), tmp_path / "run", progress=False, log=quiet)
    assert s.step == 200 and s.epochs == pytest.approx(200 * 32 / 4000, abs=0.01)
    logs, images = scalars(tmp_path / "run")
    assert {"loss/D", "loss/G", "D(x)", "D(G(z))", "perf/images_per_s"} <= set(logs)
    assert {"samples/fixed_noise", "data/real"} <= set(images)
    for tag in ("loss/D", "loss/G", "D(x)", "D(G(z))"):
        assert all(math.isfinite(v) for v in logs[tag]) and len(logs[tag]) == 10
    d_fake = logs["D(G(z))"]
    assert max(d_fake) - min(d_fake) > 0.05  # the players actually play
    assert (tmp_path / "run" / "samples" / "step-00000200.png").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_d_loss_falls_when_d_trains_alone(tiny_cfg, tmp_path):
    # d_warmup >= steps: G stays fixed and D learns to separate real from fake.
    train(
        tiny_cfg(steps=100, d_warmup=100, log_every=20), tmp_path / "run", progress=False, log=quiet
    )
    logs, _ = scalars(tmp_path / "run")
    assert logs["loss/D"][-1] < 0.5 * logs["loss/D"][0]
    assert "loss/G" not in logs
    assert logs["D(x)"][-1] > 0.8 and logs["D(G(z))"][-1] < 0.2


def test_warmup_leaves_g_untouched(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=20, d_warmup=20)
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    torch.manual_seed(cfg.train.seed)
    fresh = mlp.build(cfg.model, (1, 28, 28))
    saved = weights(tmp_path / "run")
    for k, v in fresh["G"].state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(saved[f"G.{k}"], v), k
    assert not torch.equal(saved["D.net.0.0.weight"], fresh["D"].state_dict()["net.0.0.weight"])


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_cfg, tmp_path):
    train(tiny_cfg(steps=50), tmp_path / "full", progress=False, log=quiet)
    train(tiny_cfg(steps=30), tmp_path / "part", progress=False, log=quiet)
    train(tiny_cfg(steps=50), tmp_path / "part", resume=True, progress=False, log=quiet)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_how_often_grids_and_checkpoints_are_written_leaves_the_training_as_it_is(
    tiny_cfg, tmp_path
):
    # the grids are drawn by G in eval mode from their own fixed noise: neither the training's
    # random numbers nor G's BatchNorm statistics see them (r3gan-stacked-mnist writes both
    # every 2,000 steps, and its seeds were trained with every 500)
    for every in (2, 12):
        cfg = tiny_cfg(steps=12, sample_every=every, ckpt_every=every, ema=0.9)
        train(cfg, tmp_path / str(every), progress=False, log=quiet)
    tensors = assert_same_weights(tmp_path / "2", tmp_path / "12")
    assert any(k.startswith("G_ema") for k in tensors)


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg(steps=40, n_critic=2), tmp_path / "full", progress=False, log=quiet)

    restore = interrupt_after(monkeypatch, mlp, 13)
    s = train(tiny_cfg(steps=40, n_critic=2), tmp_path / "part", progress=False, log=quiet)
    assert s.step == 13 and ckpt.read_meta(last_checkpoint(tmp_path / "part"))["step"] == 13
    restore()
    train(tiny_cfg(steps=40, n_critic=2), tmp_path / "part", resume=True, progress=False, log=quiet)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_numbered_checkpoints_are_pruned_to_keep(tiny_cfg, tmp_path):
    train(tiny_cfg(steps=100, ckpt_every=20, keep=2), tmp_path / "run", progress=False, log=quiet)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["last.safetensors", "step-00000080.safetensors", "step-00000100.safetensors"]


@pytest.mark.parametrize("loss", ["non-saturating", "minimax"])
def test_both_g_objectives_train(tiny_cfg, tmp_path, loss):
    s = train(
        tiny_cfg(steps=30, loss=loss, label_smoothing=0.1),
        tmp_path / "run",
        progress=False,
        log=quiet,
    )
    assert all(math.isfinite(v) for v in s.scalars.values())


DCGAN_TINY = {"family": "dcgan", "model.ngf": "8", "model.ndf": "8"}


def test_lr_decay_falls_linearly_to_zero_over_the_final_fraction(tiny_cfg, tmp_path):
    from gankit.schedule import lr_ramp

    assert [lr_ramp(100, 0.5)(s) for s in (0, 50, 75, 99)] == [1.0, 1.0, 0.5, 0.02]
    assert lr_ramp(100, 0.0)(99) == 1.0
    # Trained with the decay, the last update ran at 1/25 of the base rate, and the moves of
    # the weights shrink with it: the last 5 updates move G less than the 5 before the decay.
    cfg = tiny_cfg(steps=50, lr_decay=0.5, ckpt_every=5, keep=20)
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    meta = ckpt.read_meta(last_checkpoint(tmp_path / "run"))
    for name, rate in (("G", cfg.train.lr_g), ("D", cfg.train.lr_d)):
        assert meta["optim"][name]["param_groups"][0]["lr"] == pytest.approx(rate / 25)

    def g_at(step: int) -> torch.Tensor:
        path = tmp_path / "run" / "checkpoints" / f"step-{step:08d}.safetensors"
        tensors, _ = ckpt.read(path, ("G",))
        return torch.cat([v.flatten().float() for k, v in sorted(tensors.items()) if "weight" in k])

    early = (g_at(25) - g_at(20)).norm()
    late = (g_at(50) - g_at(45)).norm()
    assert late < 0.5 * early


def test_resume_is_exact_with_labels_ema_augment_and_instance_noise(tmp_path, monkeypatch):
    from gankit.config import load_config
    from gankit.models import dcgan

    over = DCGAN_TINY | {"cond": "acgan", "ema": "0.9", "augment": "color,translation"}
    over |= {"instance_noise": "0.1", "steps": "12", "device": "cpu", "batch_size": "16"}
    over |= {"lr_decay": "0.5"}
    cfg = load_config(None, over | {"ckpt_every": "5", "sample_every": "5"})
    train(cfg, tmp_path / "full", progress=False, log=quiet)
    # Interrupted at step 7 of the same 12 (instance noise anneals over the planned total).
    restore = interrupt_after(monkeypatch, dcgan, 7)
    assert train(cfg, tmp_path / "part", progress=False, log=quiet).step == 7
    restore()
    train(cfg, tmp_path / "part", resume=True, progress=False, log=quiet)
    a = assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert any(k.startswith("G_ema.") for k in a)


def test_bf16_autocast_trains_in_bfloat16_and_keeps_float32_weights(tmp_path, monkeypatch):
    from gankit.config import load_config

    seen = []
    real_forward = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real_forward(self, x)
        seen.append(out.dtype)
        return out

    over = DCGAN_TINY | {"steps": "20", "device": "cpu", "batch_size": "16", "log_every": "5"}
    train(load_config(None, over), tmp_path / "off", progress=False, log=quiet)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    on = train(
        load_config(None, over | {"amp": "bf16"}), tmp_path / "on", progress=False, log=quiet
    )
    assert torch.bfloat16 in seen  # the step's convolutions ran in bfloat16 ...
    a, b = weights(tmp_path / "off"), weights(tmp_path / "on")
    assert all(v.dtype != torch.bfloat16 for v in b.values())  # ... the weights stay float32
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("G."))
    assert all(math.isfinite(v) for v in on.scalars.values())


def test_resume_is_exact_with_bf16_autocast_and_channels_last(tmp_path):
    from gankit.config import load_config

    over = DCGAN_TINY | {"amp": "bf16", "channels_last": "true", "device": "cpu"}
    over |= {"batch_size": "16", "ckpt_every": "4", "sample_every": "4"}
    train(load_config(None, over | {"steps": "10"}), tmp_path / "full", progress=False, log=quiet)
    train(load_config(None, over | {"steps": "6"}), tmp_path / "part", progress=False, log=quiet)
    cfg = load_config(None, over | {"steps": "10"})
    train(cfg, tmp_path / "part", resume=True, progress=False, log=quiet)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def cpu_flags() -> set[str]:
    """The kernel's own list of this CPU's features: an oracle apart from torch's cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no CPU flags in /proc/cpuinfo")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux's /proc/cpuinfo")
def test_amp_auto_takes_bfloat16_only_where_the_cpu_has_it(tmp_path):
    """`auto` trains exactly as `bf16` does on a CPU with bfloat16 instructions and exactly
    as float32 on one without; an explicit `bf16` there warns before its first step."""
    from gankit.config import load_config
    from gankit.device import native_bf16

    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16", "svebf16"})  # Linux's names
    assert native_bf16(torch.device("cpu")) == native
    over = DCGAN_TINY | {"steps": "3", "device": "cpu", "batch_size": "8", "sample_every": "3"}
    logs = {}
    for amp in ("none", "bf16", "auto"):
        logs[amp] = []
        cfg = load_config(None, over | {"amp": amp})
        train(cfg, tmp_path / amp, progress=False, log=lambda m, a=amp: logs[a].append(m))
    same = "bf16" if native else "none"
    assert_same_weights(tmp_path / "auto", tmp_path / same)
    other = weights(tmp_path / ("none" if native else "bf16"))
    assert any(not torch.equal(v, other[k]) for k, v in weights(tmp_path / "auto").items())
    chose = "bfloat16 autocast" if native else "float32"
    assert [m for m in logs["auto"] if m.startswith("amp auto:")] == [
        f"amp auto: {chose} (cpu {'has' if native else 'has no'} bfloat16 in hardware)"
    ]
    warned = [m for m in logs["bf16"] if m.startswith("warning: train.amp bf16")]
    assert len(warned) == (0 if native else 1)
    assert not any("amp" in m for m in logs["none"])


def test_channels_last_changes_the_layout_not_the_model(tmp_path):
    from gankit.config import load_config

    over = DCGAN_TINY | {"steps": "3", "device": "cpu", "batch_size": "16"}
    train(load_config(None, over), tmp_path / "nchw", progress=False, log=quiet)
    cfg = load_config(None, over | {"channels_last": "true"})
    train(cfg, tmp_path / "nhwc", progress=False, log=quiet)
    a, b = weights(tmp_path / "nchw"), weights(tmp_path / "nhwc")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k


def test_a_conditional_gan_trains_on_an_image_folder_labelled_by_subfolder(tmp_path):
    import numpy as np
    from PIL import Image

    from gankit.config import load_config
    from gankit.sample import Sampler

    for c, name in enumerate(("circles", "squares")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((32, 32, 3), 60 * c + 10 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    over = DCGAN_TINY | {"dataset": f"folder:{tmp_path / 'imgs'}", "img_size": "32"}
    over |= {"cond": "projection", "steps": "4", "device": "cpu", "batch_size": "4"}
    train(load_config(None, over), tmp_path / "run", progress=False, log=quiet)
    sampler = Sampler.load(tmp_path / "run", device="cpu")
    assert sampler.classes == ["circles", "squares"]
    labels = sampler.labels(6, [1])
    assert labels.tolist() == [1] * 6
    assert sampler.images(6, labels=labels).shape == (6, 3, 32, 32)


def test_r1_and_r2_fall_to_gamma_final_and_resume_on_the_same_ramp(tiny_cfg, tmp_path, monkeypatch):
    seen = []
    real_step = mlp.step

    def spy(nets, opts, batches, z_fn, game, train_g=True):
        seen.append((game.r1, game.r2))
        return real_step(nets, opts, batches, z_fn, game, train_g)

    monkeypatch.setattr(mlp, "step", spy)
    cfg = tiny_cfg(steps=5, loss="rpgan", r1=2.0, r2=1.0, gamma_final=0.1)
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    factors = [0.1 + 0.9 * (5 - s) / 5 for s in range(5)]  # 1 at step 0, then to 0.1 at step 5
    assert [r1 for r1, _ in seen] == pytest.approx([2 * f for f in factors])
    assert [r2 for _, r2 in seen] == pytest.approx([1 * f for f in factors])
    seen.clear()  # extended to 8 steps: the ramp had reached its floor and stays there
    train(tiny_cfg(steps=8, loss="rpgan", r1=2.0, r2=1.0, gamma_final=0.1), tmp_path / "run",
          resume=True, progress=False, log=quiet)  # fmt: skip
    assert [r1 for r1, _ in seen] == pytest.approx([0.2, 0.2, 0.2])


def test_reg_every_applies_r1_and_r2_lazily_and_logs_their_own_mean(
    tiny_cfg, tmp_path, monkeypatch
):
    seen, norms = [], []
    real_step = mlp.step

    def spy(nets, opts, batches, z_fn, game, train_g=True):
        seen.append((game.r1, game.r2))
        out = real_step(nets, opts, batches, z_fn, game, train_g)
        norms.append(float(out["loss/r1"]) if "loss/r1" in out else None)
        return out

    monkeypatch.setattr(mlp, "step", spy)
    cfg = tiny_cfg(steps=7, loss="rpgan", r1=2.0, r2=1.0, gamma_final=0.1, reg_every=3,
                   log_every=7)  # fmt: skip
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    f = [3 * (0.1 + 0.9 * (7 - s) / 7) if s % 3 == 0 else 0 for s in range(7)]  # steps 0, 3, 6
    assert [r1 for r1, _ in seen] == pytest.approx([2 * x for x in f])
    assert [r2 for _, r2 in seen] == pytest.approx([1 * x for x in f])
    logged, _ = scalars(tmp_path / "run")  # the mean of the 3 penalised steps, not over all 7
    penalised = [n for n in norms if n is not None]
    assert len(penalised) == 3
    assert logged["loss/r1"] == pytest.approx([sum(penalised) / 3], rel=1e-5)


def test_ema_kimg_is_a_half_life_in_images(tiny_cfg):
    cfg = tiny_cfg(batch_size=64, ema_kimg=5)
    # 5,000 images = 78.125 steps of 64: the average forgets half of an old weight
    assert cfg.train.ema ** (5000 / 64) == pytest.approx(0.5)
    assert tiny_cfg(batch_size=128, ema_kimg=5).train.ema < cfg.train.ema  # bigger steps


@pytest.mark.parametrize("preset", ["r3gan-cifar10", "r3gan-cifar10-cond"])
def test_the_r3gan_cifar10_presets_train_on_a_folder_of_32px_colour_images(preset, tmp_path):
    """No CIFAR-10 here: the presets as they are, on a few synthetic 32 x 32 x 3 images in
    class subfolders (torchvision's ImageFolder layout), for two steps."""
    import numpy as np
    from PIL import Image

    from gankit.config import load_config
    from gankit.sample import Sampler

    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    over = {"dataset": f"folder:{tmp_path / 'imgs'}", "steps": "2", "batch_size": "4"}
    over |= {"device": "cpu", "sample_every": "2", "ckpt_every": "2", "n_fixed": "4"}
    cfg = load_config(preset, over)
    assert (cfg.model.family, cfg.train.loss, cfg.train.beta1) == ("r3gan", "rpgan", 0.0)
    assert cfg.train.r1 > 0 and cfg.train.r2 > 0 and cfg.train.ema > 0
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    meta = ckpt.read_meta(last_checkpoint(tmp_path / "run"))
    assert meta["step"] == 2 and tuple(meta["img_shape"]) == (3, 32, 32)
    sampler = Sampler.load(tmp_path / "run", device="cpu")
    labels = sampler.labels(4) if preset.endswith("cond") else None
    assert sampler.images(4, labels=labels).shape == (4, 3, 32, 32)
    assert (sampler.classes == ["cats", "dogs"]) == preset.endswith("cond")
