"""SRResNet / SRGAN: shapes, both stages train, the SR protocol's metrics, tiled upscaling."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error, quiet
from gankit.cli import main
from gankit.config import load_config
from gankit.data import PHOTOS, load_photos, make_dataset
from gankit.game import GameSettings
from gankit.models import srgan
from gankit.train import train

TINY = {"family": "srgan", "model.n_blocks": "2", "model.nf": "8", "model.ndf": "8"}


@pytest.mark.parametrize("scale", [2, 4])
def test_shapes_and_both_stages_move_their_players(scale):
    torch.manual_seed(0)
    cfg = srgan.Config(scale=scale, n_blocks=2, nf=8, ndf=8, content="pixel")
    nets = srgan.build(cfg, (3, 32, 32))
    lr = torch.rand(2, 3, 32 // scale, 32 // scale) * 2 - 1
    assert srgan.generate(nets, lr).shape == (2, 3, 32, 32)
    assert nets["D"](torch.zeros(2, 3, 32, 32)).shape == (2,)
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    hr = torch.rand(4, 3, 32, 32) * 2 - 1
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}
    out = srgan.step(nets, opts, [(hr, None)], None, GameSettings())
    assert {"loss/D", "loss/G", "loss/content", "psnr/train"} <= set(out)
    for name, net in nets.items():
        assert any(
            not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)
        )
    assert all(math.isfinite(float(v)) for v in out.values())


def test_pretraining_steps_leave_d_alone_then_the_game_starts():
    torch.manual_seed(0)
    cfg = srgan.Config(n_blocks=1, nf=8, ndf=8, content="pixel", pretrain_steps=2)
    nets = srgan.build(cfg, (3, 32, 32))
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    d0 = [p.detach().clone() for p in nets["D"].parameters()]
    hr = torch.rand(4, 3, 32, 32) * 2 - 1
    for _ in range(2):
        assert "loss/D" not in srgan.step(nets, opts, [(hr, None)], None, GameSettings())
    assert all(torch.equal(a, b) for a, b in zip(d0, nets["D"].parameters(), strict=True))
    assert "loss/D" in srgan.step(nets, opts, [(hr, None)], None, GameSettings())


@pytest.mark.parametrize("norm, pixel_loss", [("batch", "mse"), ("none", "l1")])
def test_srresnet_learns_to_beat_nothing_on_a_smooth_image(norm, pixel_loss):
    torch.manual_seed(0)
    cfg = srgan.Config(stage="srresnet", n_blocks=1, nf=16, norm=norm, pixel_loss=pixel_loss)
    nets = srgan.build(cfg, (3, 32, 32))
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in nets["G"].modules())
    assert has_bn == (norm == "batch")
    opts = {"G": torch.optim.Adam(nets["G"].parameters(), lr=2e-3)}
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    hr = torch.stack([xx, yy, xx * yy]).expand(8, 3, 32, 32) * 0.8
    first = srgan.step(nets, opts, [(hr, None)], None, GameSettings())
    for _ in range(60):
        last = srgan.step(nets, opts, [(hr, None)], None, GameSettings())
    assert float(last["loss/pixel"]) < 0.2 * float(first["loss/pixel"])
    assert float(last["psnr/train"]) > float(first["psnr/train"]) + 5


def test_psnr_and_ssim_match_known_cases():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
    psnr, ssim = srgan.psnr_ssim(hr, hr, border=4)
    assert psnr == math.inf and ssim == pytest.approx(1.0)
    shifted = hr + np.uint8(5)  # every RGB value + 5: Y moves by 5 * 219 / 255 exactly
    psnr, _ = srgan.psnr_ssim(hr, shifted, border=4)
    assert psnr == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)), abs=1e-9)
    noisy = np.clip(hr + rng.normal(0, 10, hr.shape), 0, 255).astype(np.uint8)
    assert srgan.psnr_ssim(hr, noisy, 4)[1] < srgan.psnr_ssim(hr, shifted, 4)[1]


def test_tiled_upscaling_equals_the_whole_image():
    torch.manual_seed(0)
    G = srgan.build(srgan.Config(n_blocks=2, nf=8), (3, 32, 32))["G"].eval()
    lr = torch.rand(1, 3, 40, 52) * 2 - 1
    whole = srgan.upscale(G, lr, 4, tile=1000)
    tiled = srgan.upscale(G, lr, 4, tile=16, overlap=24)
    assert tiled.shape == (1, 3, 160, 208)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_the_bundled_photographs_split_by_whole_image():
    assert not set(PHOTOS["train"]) & set(PHOTOS["test"])
    test = load_photos("photos", "test")
    assert len(test) == len(PHOTOS["test"]) and all(p.ndim == 3 and p.shape[2] == 3 for p in test)
    patches = make_dataset("photos", img_size=32, split="test")
    assert patches.images.shape[1:] == (3, 32, 32) and patches.labels is None


def test_train_eval_and_upscale_end_to_end(tmp_path, capsys):
    over = TINY | {"model.stage": "srresnet", "dataset": "photos", "img_size": "32", "steps": "3"}
    over |= {"batch_size": "4", "device": "cpu", "n_fixed": "4"}
    train(load_config(None, over), tmp_path / "sr", progress=False, log=quiet)
    assert main(["eval", str(tmp_path / "sr"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert {"psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"} <= set(metrics)
    assert metrics["bicubic_psnr_y"] > 20
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in.png")
    argv = ["upscale", str(tmp_path / "in.png"), "--run", str(tmp_path / "sr")]
    assert main([*argv, "--out", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (120, 80)
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "out.png")], "exists")
    one_line_error(
        capsys,
        ["upscale", "nope.png", "--run", str(tmp_path / "sr"), "--out", "o.png"],
        "does not exist",
    )
    one_line_error(capsys, ["sample", str(tmp_path / "sr"), "--grid", "g.png"], "gankit upscale")


def test_stage_two_starts_from_an_srresnet_run(tmp_path):
    base = TINY | {"dataset": "photos", "img_size": "32", "batch_size": "4", "device": "cpu"}
    train(
        load_config(None, base | {"model.stage": "srresnet", "steps": "2"}),
        tmp_path / "s1",
        progress=False,
        log=quiet,
    )
    from gankit import checkpoint as ckpt

    over = base | {"model.init": str(tmp_path / "s1"), "model.content": "pixel", "steps": "1"}
    logs = []
    cfg = load_config(None, over | {"ckpt_every": "1"})
    nets = srgan.build(cfg.model, (3, 32, 32))
    srgan.initialize(cfg.model, nets, log=logs.append)
    s1, _ = ckpt.read(tmp_path / "s1" / "checkpoints" / "last.safetensors")
    assert torch.equal(nets["G"].state_dict()["head.0.weight"], s1["G.head.0.weight"])
    assert "SRResNet" in logs[0]


@pytest.mark.parametrize(
    "over, message",
    [
        ({"model.scale": "3"}, "scale must be 2 or 4"),
        ({"model.norm": "layer"}, "unknown norm 'layer'"),
        ({"model.pixel_loss": "l2"}, "unknown pixel_loss 'l2'"),
        ({"model.stage": "srresnet", "model.init": "runs/x"}, "belong to stage srgan"),
        ({"eval_every": "100"}, "gankit eval RUN"),
        ({"model.vgg19_weights": "/nonexistent.pth"}, None),
    ],
)
def test_bad_sr_options_are_refused(over, message, tmp_path):
    from gankit.errors import GankitError

    if message is None:  # a missing VGG19 file is refused when the run starts
        cfg = load_config(
            None, TINY | over | {"dataset": "photos", "img_size": "32", "device": "cpu"}
        )
        with pytest.raises(GankitError, match="VGG19 weights file"):
            train(cfg, tmp_path / "run", progress=False, log=quiet)
        return
    with pytest.raises(GankitError, match=message):
        load_config(None, TINY | over)


def test_dihedral_augmentation_draws_the_eight_symmetries_of_a_patch():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    seen = {tuple(srgan.random_dihedral(x).flatten().tolist()) for _ in range(200)}
    assert len(seen) == 8  # 4 rotations x flipped or not, all distinct for this patch
    assert all(sorted(s) == list(range(16)) for s in seen)  # pixels moved, none changed


def test_resume_is_exact_with_dihedral_augmentation(tmp_path):
    over = TINY | {"model.stage": "srresnet", "model.dihedral": "true", "dataset": "photos"}
    over |= {"img_size": "32", "batch_size": "4", "device": "cpu", "n_fixed": "4"}
    train(load_config(None, over | {"steps": "6"}), tmp_path / "full", progress=False, log=quiet)
    train(load_config(None, over | {"steps": "3"}), tmp_path / "part", progress=False, log=quiet)
    cfg = load_config(None, over | {"steps": "6"})
    train(cfg, tmp_path / "part", resume=True, progress=False, log=quiet)
    from gankit import checkpoint as ckpt

    a = ckpt.read(tmp_path / "full" / "checkpoints" / "last.safetensors", ("G",))[0]
    b = ckpt.read(tmp_path / "part" / "checkpoints" / "last.safetensors", ("G",))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
