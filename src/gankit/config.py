"""Typed run configuration: dataclasses, YAML load/save, dotted overrides.

A run is described by three sections:

    model:  the family's own Config (see gankit.models), chosen by `model.family`
    data:   which images, where they live, their size
    train:  the game's hyper-parameters, the schedule of logs and checkpoints

Overrides name a field as `section.field` or, when the name is unique across
sections, just `field`; dashes and underscores are the same (`--lr-d 1e-4`).
Values are parsed as YAML and coerced to the field's declared type, and every
config is validated when built, so a bad value is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gankit import versions
from gankit.augment import parse_policy
from gankit.data import check_spec
from gankit.errors import GankitError
from gankit.losses import GAN_LOSSES
from gankit.models import MODELS, is_adversarial

AMP_MODES = ("none", "bf16", "auto")  # not "off": YAML reads that as false
MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 4096  # data.img_size: no family makes sense outside these


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | cifar10 | folder:PATH | npz:PATH
    root: str = "data"  # folder holding torchvision dataset folders (MNIST/, cifar-10-batches-py/)
    img_size: int = 0  # resize to img_size x img_size; 0 = native size (folders: 64)
    channels: int = 0  # 1 or 3; 0 = native (folders: 3)

    def __post_init__(self):
        if self.img_size != 0 and not MIN_IMG_SIZE <= self.img_size <= MAX_IMG_SIZE:
            raise ValueError(
                f"img_size must be 0 (native) or {MIN_IMG_SIZE}..{MAX_IMG_SIZE} pixels, "
                f"got {self.img_size}"
            )
        if self.channels not in (0, 1, 3):
            raise ValueError(f"channels must be 0 (native), 1 or 3, got {self.channels}")
        check_spec(self.dataset)


@dataclass
class TrainConfig:
    steps: int = 12000  # generator updates; each consumes n_critic real batches
    batch_size: int = 64  # images per batch
    loss: str = "non-saturating"  # non-saturating | minimax | lsgan | hinge | wgan-gp | rpgan
    lr_g: float = 2e-4  # Adam learning rate of G
    lr_d: float = 2e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam beta1 (0.5 as in DCGAN; 0.9 is Adam's default)
    beta2: float = 0.999  # Adam beta2
    lr_decay: float = 0.0  # final fraction of steps with both LRs falling linearly to 0
    n_critic: int = 1  # D updates per G update (WGAN-GP: 5)
    d_warmup: int = 0  # steps at the start in which only D trains
    label_smoothing: float = 0.0  # one-sided: D's target for reals is 1 - label_smoothing
    gp_weight: float = 10.0  # lambda of WGAN-GP's gradient penalty (loss wgan-gp only)
    r1: float = 0.0  # gamma of the R1 penalty gamma/2 * E|grad D(x)|^2 on reals; 0 = off
    r2: float = 0.0  # gamma of the R2 penalty gamma/2 * E|grad D(G(z))|^2 on fakes; 0 = off
    gamma_final: float = 1.0  # r1 and r2 fall linearly to this fraction of them by the end
    # lazy regularisation (StyleGAN2, Karras et al. 2020): R1 and R2 only every reg_every-th
    # step, weighted x reg_every, so the penalties cost 1/reg_every of their double backward
    reg_every: int = 1
    aux_weight: float = 1.0  # weight of ACGAN's class loss (model.cond acgan only)
    aux_fakes: bool = True  # ACGAN: D's class loss also on fakes (the paper); false = reals only
    ema: float = 0.0  # decay of a moving average of G's weights used to sample; 0 = off
    ema_kimg: float = 0.0  # the EMA's half-life in thousands of images; > 0 sets ema (0 = off)
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout"; "" = off
    instance_noise: float = 0.0  # std of noise added to D's inputs, annealed to 0; 0 = off
    amp: str = "none"  # none | bf16 | auto (bf16 where in hardware); weights stay float32
    channels_last: bool = False  # convolutions in NHWC memory layout (faster on CPU and GPU)
    sync_bn: bool = False  # several processes: BatchNorm over the global batch (SyncBatchNorm)
    dist_timeout: float = 60.0  # seconds a rank waits for the others before the run stops
    seed: int = 0  # seeds weights, batches, noise and dropout
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    log_every: int = 50  # steps between scalar logs (TensorBoard, progress bar)
    sample_every: int = 500  # steps between PNG grids of the fixed noise batch
    ckpt_every: int = 1000  # steps between checkpoints
    keep: int = 3  # numbered checkpoints kept besides `last`; 0 = only `last`
    n_fixed: int = 64  # size of the fixed noise batch shown in grids
    eval_every: int = (
        0  # steps between evaluations (TensorBoard metrics/..., best checkpoint); 0 = off
    )
    eval_n: int = 2000  # samples drawn per evaluation during training
    best_metric: str = (
        "fd"  # metric that picks checkpoints/best: a key of `gankit eval`; "fd" = its FD
    )
    rollback_lr: float = 0.5  # divergence: factor on both learning rates at each rollback
    max_rollbacks: int = 3  # rollbacks in a row (none getting past the failure) before giving up
    collapse_alarm: float = 0.5  # warn when the fixed batch's diversity < this x its peak; 0 = off

    def __post_init__(self):
        if self.ema_kimg > 0:  # a half-life in images (StyleGAN's, R3GAN's): sets the decay,
            # whatever ema held (a saved config holds the decay of its own batch size)
            self.ema = 0.5 ** (self.batch_size / (1000 * self.ema_kimg))  # per G step
        if self.loss not in GAN_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: choose one of {', '.join(GAN_LOSSES)}")
        positive = (
            "steps",
            "batch_size",
            "n_critic",
            "log_every",
            "sample_every",
            "ckpt_every",
            "n_fixed",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ValueError("learning rates must be > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("Adam betas must be in [0, 1)")
        if self.d_warmup < 0 or self.keep < 0 or self.eval_every < 0:
            raise ValueError("d_warmup, keep and eval_every must be >= 0")
        if not 0 < self.rollback_lr <= 1:
            raise ValueError(f"rollback_lr must be in (0, 1], got {self.rollback_lr}")
        if self.max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if not 0 <= self.collapse_alarm < 1:
            raise ValueError(f"collapse_alarm must be in [0, 1), got {self.collapse_alarm}")
        if self.eval_n < 2:
            raise ValueError(f"eval_n must be >= 2, got {self.eval_n}")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in [0, 1], got {self.lr_decay}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if min(self.gp_weight, self.r1, self.r2, self.aux_weight, self.instance_noise) < 0:
            raise ValueError("gp_weight, r1, r2, aux_weight and instance_noise must be >= 0")
        if self.reg_every < 1:
            raise ValueError(f"reg_every must be >= 1 (1 = every step), got {self.reg_every}")
        if not 0 <= self.gamma_final <= 1:
            raise ValueError(f"gamma_final must be in [0, 1], got {self.gamma_final}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (e.g. 0.999), got {self.ema}")
        if self.ema_kimg < 0:
            raise ValueError(f"ema_kimg must be >= 0 (thousands of images), got {self.ema_kimg}")
        parse_policy(self.augment)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if not 0 <= self.seed < 2**32:  # numpy's seeding takes no more
            raise ValueError(f"seed must be in 0..{2**32 - 1}, got {self.seed}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class Config:
    model: Any = field(default_factory=lambda: MODELS["mlp"].Config())  # a family's Config
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {name: _plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}


SECTIONS = ("model", "data", "train")


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def section_class(section: str, family: str) -> type:
    return {"model": MODELS[family].Config, "data": DataConfig, "train": TrainConfig}[section]


def from_dict(d: dict | None) -> Config:
    """Build and validate a Config from nested dicts; unknown keys are refused."""
    d = d or {}
    check_sections(d)
    family = _family(d)
    sections = {}
    for name in SECTIONS:
        cls, values = section_class(name, family), d.get(name) or {}
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise GankitError(
                    f"unknown option {name}.{key if isinstance(key, str) else _short(key)}: "
                    f"valid ones are {', '.join(sorted(fields))}"
                )
            kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
        try:
            sections[name] = cls(**kwargs)
        except ValueError as e:
            raise GankitError(f"bad config value in {name}: {e}") from None
    cfg = Config(**sections)
    check_combination(cfg)
    return cfg


def check_sections(d: Any) -> None:
    """Refuse a config that is not {section: mapping}, before any of it is read."""
    if not isinstance(d, dict):
        raise GankitError(
            f"a config must be a mapping with sections model, data, train; got {_short(d)}"
        )
    unknown = [k for k in d if k not in SECTIONS]
    if unknown:
        raise GankitError(
            f"unknown config section {_short(unknown[0])}: choose from {', '.join(SECTIONS)}"
        )
    for name in SECTIONS:
        if not isinstance(d.get(name) or {}, dict):
            raise GankitError(
                f"config section {name!r} must be a mapping of options (indented "
                f"'key: value' lines under '{name}:'), got {_short(d[name])}"
            )


def _family(d: dict) -> str:
    family = (d.get("model") or {}).get("family", "mlp")
    if not isinstance(family, str) or family not in MODELS:
        raise GankitError(
            f"unknown model family {_short(family)}: choose one of {', '.join(MODELS)}"
        )
    return family


def check_combination(cfg: Config) -> None:
    """Refuse settings that are each valid but make no sense together."""
    t, m = cfg.train, cfg.model
    family = MODELS[m.family]
    family_check = getattr(family, "check", None)  # a family's own refusals
    if family_check:
        family_check(m, t)
    if not is_adversarial(family):
        return
    loss = GAN_LOSSES[t.loss]
    # how this family's D sheds BatchNorm, if it has one (a family's hook; none: no BatchNorm)
    batchnorm_fix = getattr(family, "batchnorm_d", lambda m: None)(m)
    if t.reg_every > 1 and not (t.r1 or t.r2):
        raise GankitError(
            f"train.reg_every {t.reg_every} spaces out the R1 and R2 penalties, and neither is "
            f"on: set --r1 or --r2, or drop --reg-every"
        )
    if batchnorm_fix and (loss.gradient_penalty or t.r1 or t.r2):
        named = " and ".join(n for n, gamma in (("R1", t.r1), ("R2", t.r2)) if gamma)
        what = "wgan-gp's gradient penalty" if loss.gradient_penalty else f"the {named} penalty"
        raise GankitError(
            f"{what} needs a critic without BatchNorm (it mixes the samples whose gradients "
            f"are penalised): {batchnorm_fix}"
        )
    if t.label_smoothing and not loss.smoothing:
        raise GankitError(
            f"label_smoothing has no meaning for the {t.loss} loss: use it with "
            f"non-saturating, minimax or lsgan"
        )
    if (t.aux_weight != 1.0 or not t.aux_fakes) and getattr(m, "cond", "none") != "acgan":
        raise GankitError(
            "aux_weight and aux_fakes shape ACGAN's class loss: set --model.cond acgan"
        )


def check_size(cfg: Config) -> None:
    """Refuse a run that cannot fit in the training device's memory, before anything is
    allocated: the networks are built on torch's meta device (shapes, no storage) to count
    their parameters. Counted: weights, gradients, Adam's two moments, G's moving average,
    and the batches of real and fake images; activations come on top, so this only stops
    sizes that are impossible here (`--model.ngf 1000000`), not every run that will not fit."""
    import torch

    from gankit.data import expected_img_shape, format_bytes, memory_bytes

    d, t = cfg.data, cfg.train
    shape = expected_img_shape(d.dataset, d.img_size, d.channels)
    if shape is None:  # only the data can tell (an npz file's native size, 2D points)
        return
    family = MODELS[cfg.model.family]
    try:
        with torch.device("meta"):
            nets = family.build(cfg.model, shape, 10)
    except GankitError:
        raise  # a size this family cannot build (DCGAN at 30 x 30): refused now, not later
    except Exception:  # a family the meta device cannot build: no estimate, no refusal
        return
    params = sum(p.numel() for net in nets.values() for p in net.parameters())
    per_param = 4 * (4 + (t.ema > 0))  # float32: weight, gradient, Adam's m and v, EMA copy
    image = math.prod(shape) * 4  # bytes of one float32 image
    parts = {  # what takes memory -> (bytes, what to make smaller)
        f"the {cfg.model.family} model's {params:,} parameters with their gradients and "
        "Adam's state": (params * per_param, "the model (model.ngf, model.g_widths, ...)"),
        f"batches of {t.batch_size} real and fake images of {shape}": (
            2 * t.batch_size * t.n_critic * image,
            "train.batch_size",
        ),
        f"the fixed batch of {t.n_fixed} images": (t.n_fixed * image, "train.n_fixed"),
        f"evaluations of {t.eval_n} samples": (
            (t.eval_n if t.eval_every else 0) * image,
            "train.eval_n",
        ),
    }
    need = sum(size for size, _ in parts.values())
    device = t.device if t.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise GankitError(
                f"train.device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
        have, where = torch.cuda.get_device_properties(index).total_memory, device
    else:
        have, where = memory_bytes(), "this machine"
    if have and need > have:
        what, (size, knob) = max(parts.items(), key=lambda kv: kv[1][0])
        raise GankitError(
            f"this run needs at least {format_bytes(need)} of memory, more than the "
            f"{format_bytes(have)} of {where} (of it, {what}: {format_bytes(size)}); "
            f"make {knob} smaller"
        )


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Coerce a YAML-parsed value to a field's declared type, or refuse it."""
    origin = typing.get_origin(hint)
    expected = getattr(hint, "__name__", str(hint))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif hint is float:
            if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
                value = float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    return float(value)
                expected = "a finite float"  # nan and inf make no sense for any field
        elif hint is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
        elif origin is tuple:
            item = typing.get_args(hint)[0]
            if isinstance(value, str):
                value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]  # --g-widths 8: one layer
            expected = f"comma-separated {item.__name__}s"
            if isinstance(value, (list, tuple)):
                return tuple(_coerce(v, item, where) for v in value)
        elif origin in (typing.Union, types.UnionType):
            return value
    except (GankitError, ValueError):
        pass
    raise GankitError(f"bad value for {where}: expected {expected}, got {_short(value)}")


def _short(value: Any) -> str:
    """repr(value), cut to one readable line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def resolve_key(key: str, family: str) -> tuple[str, str]:
    """'lr-d' -> ('train', 'lr_d'); 'model.nz' -> ('model', 'nz'). Refuses unknown or ambiguous keys."""
    key = key.replace("-", "_")
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _field_names(section, family):
            return section, name
        candidates = []
    else:
        candidates = [s for s in SECTIONS if key in _field_names(s, family)]
        if len(candidates) == 1:
            return candidates[0], key
    if len(candidates) > 1:
        options = " or ".join(f"--{s}.{key}" for s in candidates)
        raise GankitError(f"option --{key} is ambiguous: say {options}")
    valid = sorted(f"{s}.{n}" for s in SECTIONS for n in _field_names(s, family))
    raise GankitError(
        f"unknown option --{key.replace('_', '-')}: valid ones are {', '.join(valid)}"
    )


def _field_names(section: str, family: str) -> list[str]:
    return [f.name for f in dataclasses.fields(section_class(section, family))]


def apply_overrides(d: dict, overrides: dict[str, str]) -> dict:
    """Apply {"lr-d": "1e-4", "model.nz": "100"} to a nested config dict (values parsed as YAML)."""
    check_sections(d)
    d = {s: dict(d.get(s) or {}) for s in SECTIONS} | {
        k: v for k, v in d.items() if k not in SECTIONS
    }
    items = sorted(
        overrides.items(), key=lambda kv: kv[0].replace("-", "_") not in ("family", "model.family")
    )
    for key, raw in items:  # model.family first: it decides which model fields exist
        family = _family(d)
        section, name = resolve_key(key, family)
        hint = typing.get_type_hints(section_class(section, family))[name]
        try:  # a str field takes the text as it is: `folder:x` and `[a]` are names, not YAML
            value = yaml.safe_load(raw) if isinstance(raw, str) and hint is not str else raw
        except yaml.YAMLError:
            value = raw
        d[section][name] = raw if value is None else value
    return d


# The presets ship inside the package (package data), so `--config dcgan-mnist` works
# wherever gankit is installed, not only in its checkout.
PRESETS = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_summary(name: str) -> str:
    """The preset's first comment line: what it trains and how long it takes."""
    for line in (PRESETS / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_config(spec: str | Path) -> Path:
    """`--config`'s argument: a YAML file, else the name of a preset (`dcgan-mnist`)."""
    if not str(spec).strip():
        raise GankitError("--config is empty: give a preset's name or a YAML file")
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = str(spec).removesuffix(".yaml").removesuffix(".yml")
    if name in preset_names():  # also when a folder (a run, say) bears the preset's name
        return PRESETS / f"{name}.yaml"
    if path.is_dir():
        raise GankitError(f"config file {path} is a folder, not a file")
    presets = ", ".join(preset_names())
    if path.parent != Path(".") or path.suffix:  # meant as a file
        raise GankitError(f"config file {path} does not exist (presets go by name: {presets})")
    raise GankitError(f"config {str(spec)!r} is neither a file nor a preset; presets: {presets}")


def load_yaml(path: str | Path, _seen: frozenset = frozenset()) -> dict:
    """A config file's sections, with the config it names as `base:` (if any) beneath them."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise GankitError(f"config file {path} {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise GankitError(
            f"config {path} is not UTF-8 text (byte {e.start}): save it as UTF-8 YAML"
        ) from None
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise GankitError(f"cannot parse config {path}{line}: {first}") from None
    if not isinstance(d, dict):
        raise GankitError(
            f"config {path} must be a mapping with sections model, data, train; "
            f"got {type(d).__name__} {_short(d)}"
        )
    return _on_base(d, path, _seen | {path.resolve()}) if "base" in d else d


def _on_base(d: dict, path: Path, seen: frozenset) -> dict:
    """`base: r3gan-mnist` (a preset's name, or a YAML file's path relative to this file):
    that config, section by section, with this file's options over it (its model section
    only when this file keeps its family). A preset that is a variant of another says so in
    one line instead of repeating its blocks."""
    d = dict(d)
    spec = d.pop("base")
    if not isinstance(spec, str) or not spec.strip():
        raise GankitError(
            f"config {path}: base must name a preset or a YAML file, got {_short(spec)}"
        )
    check_sections(d)
    if Path(spec).suffix in (".yaml", ".yml"):
        base_path = path.parent / Path(spec).expanduser()
        if not base_path.is_file():
            raise GankitError(f"config {path}: its base {base_path} does not exist")
    elif spec in preset_names():
        base_path = PRESETS / f"{spec}.yaml"
    else:
        raise GankitError(
            f"config {path}: base {spec!r} is neither a preset ({', '.join(preset_names())}) "
            "nor a .yaml file"
        )
    if base_path.resolve() in seen:
        raise GankitError(f"config {path}: base {spec!r} leads back to {path.name}")
    base = load_yaml(base_path, seen)
    check_sections(base)
    merged = {s: (base.get(s) or {}) | (d.get(s) or {}) for s in SECTIONS}
    if _family(merged) != _family(base):  # another family: the base's model fields do not apply
        merged["model"] = d["model"]
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None) -> Config:
    """A config from a YAML file or preset name (None: the defaults) and overrides."""
    d = load_yaml(find_config(path)) if path else {}
    return from_dict(apply_overrides(d, overrides or {}))


def save_config(cfg: Config, path: str | Path) -> None:
    header = "# written by " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n"
    Path(path).write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
