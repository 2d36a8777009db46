import dataclasses
from dataclasses import replace

import pytest
import torch
import yaml

from conftest import one_line_error
from gankit.config import (
    PRESETS,
    SECTIONS,
    Config,
    from_dict,
    load_config,
    preset_names,
    save_config,
)
from gankit.data import NATIVE_SHAPES
from gankit.errors import GankitError
from gankit.models import MODELS, is_conditional


def test_overrides_are_coerced_by_type():
    cfg = load_config(
        None, {"lr-d": "1e-4", "model.nz": "100", "g_widths": "64,128", "steps": "10"}
    )
    assert cfg.train.lr_d == 1e-4 and isinstance(cfg.train.lr_d, float)
    assert cfg.model.nz == 100
    assert cfg.model.g_widths == (64, 128)
    assert cfg.train.steps == 10


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, {"lr-g": "3e-4", "d_widths": "[256, 128]", "loss": "minimax"})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert from_dict(cfg.to_dict()) == cfg


def test_defaults_are_the_classic_tutorial():
    cfg = Config()
    assert (cfg.train.lr_g, cfg.train.lr_d, cfg.train.beta1, cfg.train.beta2) == (
        2e-4,
        2e-4,
        0.5,
        0.999,
    )
    assert cfg.train.loss == "non-saturating" and cfg.model.nz == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr-d": "abc"}, "train.lr_d"),
        ({"lr-d": "-1"}, "learning rates"),
        ({"bogus": "1"}, "unknown option --bogus"),
        ({"steps": "0"}, "steps must be >= 1"),
        ({"batch-size": "1.5"}, "expected int"),
        ({"loss": "nope"}, "choose one of"),
        ({"family": "nope"}, "unknown model family"),
        ({"label-smoothing": "0.7"}, "label_smoothing"),
        ({"device": "tpu"}, "device"),
        ({"model.nope": "1"}, "unknown option"),
        ({"d-dropout": "1.5"}, "d_dropout"),
        (
            {"family": "dcgan", "loss": "wgan-gp"},
            "gradient penalty needs a critic without BatchNorm",
        ),
        ({"family": "dcgan", "r1": "10"}, "R1 penalty needs a critic without BatchNorm"),
        ({"family": "dcgan", "r2": "1"}, "the R2 penalty needs a critic without BatchNorm"),
        ({"r2": "-1"}, "r2, aux_weight and instance_noise must be >= 0"),
        ({"gamma-final": "1.5"}, "gamma_final must be in .0, 1., got 1.5"),
        ({"reg-every": "0"}, "reg_every must be >= 1 .1 = every step., got 0"),
        ({"ema-kimg": "-1"}, "ema_kimg must be >= 0"),
        ({"loss": "hinge", "label-smoothing": "0.1"}, "no meaning for the hinge loss"),
        ({"family": "dcgan", "d-norm": "group"}, "unknown d_norm"),
        ({"cond": "labels"}, "unknown cond"),
        ({"augment": "color,flip"}, "unknown augmentation 'flip'"),
        ({"ema": "1"}, "ema must be in"),
        ({"aux-weight": "2"}, "set --model.cond acgan"),
        ({"gp-weight": "-1"}, "must be >= 0"),
        ({"amp": "fp8"}, "amp must be one of none, bf16"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(GankitError, match=message):
        load_config(None, overrides)


def test_bad_yaml_files_are_refused(tmp_path):
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(GankitError, match="cannot parse"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "section.yaml").write_text("trian:\n  steps: 3\n")
    with pytest.raises(GankitError, match="unknown config section 'trian'"):
        load_config(tmp_path / "section.yaml")
    with pytest.raises(GankitError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_a_valid_config_that_builds(name):
    cfg = load_config(name)
    assert from_dict(cfg.to_dict()) == cfg
    shape = NATIVE_SHAPES.get(cfg.data.dataset, (1, 28, 28))
    family = MODELS[cfg.model.family]
    if hasattr(family, "upscale"):  # super-resolution: HR patches from LR ones
        shape = (3, cfg.data.img_size, cfg.data.img_size)
        lr = torch.zeros(2, 3, shape[1] // cfg.model.scale, shape[2] // cfg.model.scale)
        assert family.generate(family.build(cfg.model, shape), lr).shape == (2, *shape)
        return
    nets = family.build(cfg.model, shape, num_classes=10)
    z = family.noise(cfg.model, 2, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1]) if is_conditional(cfg.model) else None
    assert family.generate(nets, z, labels).shape == (2, *shape)
    first = (PRESETS / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20  # `gankit list` shows it


BASED = [n for n in preset_names() if "\nbase: " in (PRESETS / f"{n}.yaml").read_text()]


@pytest.mark.parametrize("name", BASED)
def test_a_preset_on_a_base_is_the_base_with_its_own_options_over_it(name):
    own = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    cfg, base = load_config(name), load_config(own.pop("base"))
    named = 0
    for section in SECTIONS:
        mine, theirs, options = getattr(cfg, section), getattr(base, section), own.get(section, {})
        for f in dataclasses.fields(mine):
            expect = options[f.name] if f.name in options else getattr(theirs, f.name)
            assert getattr(mine, f.name) == expect, f"{section}.{f.name}"
        named += len(options)
    assert named and cfg != base


def test_the_based_presets_are_the_variants_they_say():
    assert {"r3gan-stacked-mnist", "r3gan-cifar10-cond", "acgan-mnist"} <= set(BASED)
    stacked, mnist = load_config("r3gan-stacked-mnist"), load_config("r3gan-mnist")
    assert stacked.data.dataset == "stacked-mnist" and stacked.train.lr_g == mnist.train.lr_g
    assert load_config("r3gan-cifar10-cond").model.cond == "projection"


def test_a_config_file_starts_from_a_preset_or_a_file_beside_it(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text("base: dcgan-mnist\ntrain:\n  steps: 7\n")
    (tmp_path / "conf" / "b.yaml").write_text("base: a.yaml\ntrain:\n  lr_d: 1.0e-4\n")
    monkeypatch.chdir(tmp_path)  # a file's base is beside it, not in the working folder
    cfg, dcgan = load_config("conf/b.yaml"), load_config("dcgan-mnist")
    assert (cfg.train.steps, cfg.train.lr_d, cfg.train.lr_g) == (7, 1e-4, dcgan.train.lr_g)
    assert cfg.model == dcgan.model and cfg.data == dcgan.data
    (tmp_path / "mlp.yaml").write_text("base: dcgan-mnist\nmodel:\n  family: mlp\n")
    cfg = load_config(tmp_path / "mlp.yaml")  # another family: none of dcgan's model fields
    assert cfg.model == Config().model and cfg.train.steps == dcgan.train.steps


@pytest.mark.parametrize(
    "text, expect",
    [
        ("base: 3\n", "base must name a preset or a YAML file"),
        ("base: dcgan-mnits\n", "base 'dcgan-mnits' is neither a preset"),
        ("base: gone.yaml\n", "gone.yaml does not exist"),
        ("base: me.yaml\n", "base 'me.yaml' leads back to me.yaml"),
        ("base: other.yaml\n", "base 'me.yaml' leads back to other.yaml"),
        ("base: dcgan-mnist\ntrian:\n  steps: 3\n", "unknown config section 'trian'"),
        ("base: dcgan-mnist\nmodel:\n  g_widths: [8]\n", "unknown option model.g_widths"),
        ("base: list.yaml\n", "config section 'model' must be a mapping"),
    ],
)
def test_a_bad_base_is_refused_in_one_line(capsys, tmp_path, text, expect):
    (tmp_path / "me.yaml").write_text(text)
    (tmp_path / "other.yaml").write_text("base: me.yaml\n")
    (tmp_path / "list.yaml").write_text("model: [1]\n")
    one_line_error(capsys, ["train", "--config", str(tmp_path / "me.yaml"), "--dry-run"], expect)


def test_the_mnist_presets_cover_the_issue():
    names = set(preset_names())
    assert {"mlp-mnist", "dcgan-mnist", "cgan-mnist", "acgan-mnist", "wgan-gp-mnist"} <= names
    assert {"lsgan-mnist", "hinge-sn-mnist", "dcgan-cifar10"} <= names
    assert {"lapgan-mnist", "vae-mnist", "srresnet-x4", "srgan-x4"} <= names
    assert {"r3gan-mnist", "r3gan-stacked-mnist", "r3gan-cifar10", "r3gan-cifar10-cond"} <= names


def test_default_preset_is_the_default_config_sampled_from_a_g_average():
    """`make train` trains what a bare `gankit train` trains (the defaults, which every
    family accepts) and samples, like every GAN preset, from G's moving average."""
    preset, defaults = load_config("mlp-mnist"), Config()
    assert defaults.train.ema == 0 and preset.train.ema == 0.999
    assert preset == replace(defaults, train=replace(defaults.train, ema=0.999))
