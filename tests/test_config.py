from pathlib import Path

import pytest

from gankit.config import Config, from_dict, load_config, save_config
from gankit.errors import GankitError


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


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_preset_is_a_valid_config(path):
    cfg = load_config(path)
    assert from_dict(cfg.to_dict()) == cfg


def test_default_preset_is_the_default_config():
    preset = load_config(Path(__file__).parents[1] / "configs" / "mlp-mnist.yaml")
    assert preset == Config()  # `make train` and a bare `gankit train` train the same model
