"""Checkpoints: one safetensors file per checkpoint, its JSON metadata in the header.

    tensors:  G.<param>, D.<param>              network weights and buffers
              opt.G.<param index>.<key>         optimiser state (Adam's moments, step)
              <name> from `extra`               fixed noise, RNG states, sampler permutation
    metadata: {"gankit": JSON}                  format version, the gankit and torch versions
                                                that wrote it, step, config, image shape,
                                                optimiser hyper-parameters, scalars

A checkpoint is written to a temporary file, flushed to disk and renamed over the
old one (gankit.files), so a crash or a full disk mid-write leaves the previous
checkpoint intact. The header holds a digest of each group of tensors, checked on
loading, so a flipped bit is refused rather than trained on. Loading parses
safetensors and JSON only: nothing is ever unpickled. A checkpoint of a newer format
than this gankit reads is refused in one line that names the gankit that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from gankit import __version__, files, versions
from gankit.errors import GankitError, first_line

FORMAT = "gankit-checkpoint"
VERSION = 1


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON metadata to `path` through a temporary file and an atomic rename
    (gankit.files): a failed write (disk full, no permission) raises OSError and leaves
    `path` as it was."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = meta | {"digests": digests(tensors)}
    files.write_bytes(path, save(tensors, metadata={"gankit": json.dumps(meta)}))


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """A BLAKE2b digest of each group's tensors (G, D, opt, extra...): names, dtypes, shapes
    and bytes. safetensors keeps no checksum, and a flipped bit in a weight still reads as
    a valid float; `read` recomputes the digests of the groups it loads."""
    hashes: dict[str, hashlib.blake2b] = {}
    for k in sorted(tensors):
        t = tensors[k]
        h = hashes.setdefault(k.split(".", 1)[0], hashlib.blake2b(digest_size=16))
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return {group: h.hexdigest() for group, h in hashes.items()}


def read(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint; `names` = prefixes to load (None = all)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise GankitError(f"checkpoint {path} {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("gankit", "null"))
            _check_header(path, meta)  # before any tensor: a newer format may not parse
            keys = [k for k in f.keys() if names is None or k.split(".", 1)[0] in names]
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        _refuse_pickle(path)
        raise GankitError(f"checkpoint {path} is corrupt or truncated ({first_line(e)})") from None
    if "step" in meta:
        _whole(meta["step"], "step", path)
    saved = meta.get("digests")
    if isinstance(saved, dict):  # checkpoints of gankit before digests have none
        for group, digest in digests(tensors).items():
            if saved.get(group, digest) != digest:
                raise GankitError(
                    f"checkpoint {path} is corrupt: its {group} tensors do not match their "
                    "digest (a flipped bit, or an edited file)"
                )
    return tensors, meta


def _check_header(path: Path, meta) -> None:
    """A gankit checkpoint of a format this gankit reads, or one line saying why not."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GankitError(f"{path} is not a gankit checkpoint (no gankit metadata in its header)")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise GankitError(f"checkpoint {path} is corrupt: format version {version!r}")
    if version > VERSION:
        by = meta.get("written_by")
        by = f" (written by gankit {by.get('gankit')})" if isinstance(by, dict) else ""
        raise GankitError(
            f"checkpoint {path} has format version {version}{by}; gankit {__version__} reads "
            f"format <= {VERSION}: upgrade gankit to load it"
        )


def _refuse_pickle(path: Path) -> None:
    """A file safetensors cannot read that is a torch.save file renamed: say so (it is
    never unpickled)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return
    # torch.save's zip archive, or a raw pickle (protocol 2 and up: 0x80, then the protocol)
    if head == b"PK" or (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise GankitError(
            f"checkpoint {path} is a pickle (torch.save), not safetensors: gankit never "
            f"unpickles files; load it in Python you trust and save it with safetensors"
        )


def _whole(value, key: str, path: Path, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise GankitError(
            f"checkpoint {path} metadata: {key!r} must be a whole number >= {minimum}, "
            f"got {value!r}"
        )
    return value


def check_run_meta(meta: dict, path: Path) -> None:
    """Refuse metadata a sampler or a resumed run cannot use: what `read` checks, plus the
    model config, the image shape and the class names."""
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise GankitError(f"checkpoint {path} metadata has no model config")
    for section in ("data", "train"):
        if not isinstance(config.get(section, {}), dict):
            raise GankitError(f"checkpoint {path} metadata: config.{section} is not a mapping")
    shape = meta.get("img_shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3:
        raise GankitError(
            f"checkpoint {path} metadata: 'img_shape' must be [C, H, W], got {shape!r}"
        )
    for size in shape:
        _whole(size, "img_shape", path, minimum=1)
    classes = meta.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise GankitError(f"checkpoint {path} metadata: 'classes' must be a list of names")


def check_shapes(path: Path, nets: dict[str, nn.Module]) -> None:
    """Refuse a checkpoint whose tensors do not fit `nets` (built on the meta device, say),
    reading only the file's header: nothing is allocated for a checkpoint that lies."""
    try:
        with safe_open(str(path), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise GankitError(f"checkpoint {path} is corrupt or truncated ({first_line(e)})") from None
    for name, net in nets.items():
        want = {f"{name}.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        _check_fit(path, name, want, {k: v for k, v in have.items() if k.startswith(f"{name}.")})


def _check_fit(path: Path, name: str, want: dict, have: dict) -> None:
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    wrong = [k for k in want if k in have and want[k] != have[k]]
    if not (missing or unexpected or wrong):
        return
    if wrong:
        k = wrong[0]
        what = f"{k} is {list(have[k])} in the checkpoint but {list(want[k])} in the network"
    elif missing:
        what = f"it lacks {missing[0]}"
    else:
        what = f"it has {unexpected[0]}, which the network does not"
    more = len(missing) + len(unexpected) + len(wrong) - 1
    more = f" (and {more} more difference{'s' * (more > 1)})" if more else ""
    raise GankitError(
        f"checkpoint {path} does not match network {name} as its config builds it: {what}{more}"
    )


def pack_nets(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def unpack_nets(nets: dict[str, nn.Module], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load each network's weights; refuse missing, extra, misshapen or non-finite ones."""
    for name, net in nets.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        want = {f"{prefix}{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        _check_fit(path, name, want, {f"{prefix}{k}": tuple(v.shape) for k, v in state.items()})
        for k, v in state.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise GankitError(
                    f"checkpoint {path} holds NaN or infinite values in {prefix}{k} "
                    f"(a diverged run, or a corrupt file): use an earlier checkpoint"
                )
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise GankitError(
                f"checkpoint {path} does not match network {name}: {first_line(e)}"
            ) from None


def pack_optimizers(opts: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split optimiser state dicts into tensors (for safetensors) and plain JSON."""
    tensors, meta = {}, {}
    for name, opt in opts.items():
        sd = opt.state_dict()
        scalars = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{name}.{idx}.{key}"] = value
                else:
                    scalars[f"{idx}.{key}"] = value
        meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def unpack_optimizers(
    opts: dict[str, torch.optim.Optimizer], tensors: dict, meta: dict, path: Path
) -> None:
    for name, opt in opts.items():
        state: dict[int, dict] = {}
        prefix = f"opt.{name}."
        try:
            for k, v in tensors.items():
                if k.startswith(prefix):
                    idx, key = k[len(prefix) :].split(".", 1)
                    state.setdefault(int(idx), {})[key] = v
            for k, v in meta[name]["scalars"].items():
                idx, key = k.split(".", 1)
                state.setdefault(int(idx), {})[key] = v
            opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise GankitError(
                f"checkpoint {path} does not match optimiser {name}: "
                f"{type(e).__name__} {first_line(e)}"
            ) from None
        _match_layouts(opt)


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout: a checkpoint stores
    them contiguous, and a fused Adam step reads a channels_last weight and its moments as if
    they were laid out alike."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def save_checkpoint(
    path: Path,
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer] | None,
    meta: dict,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save networks, optimisers and `extra` tensors with `meta` (which must be JSON-able)."""
    tensors = pack_nets(nets)
    opt_tensors, opt_meta = pack_optimizers(opts or {})
    tensors.update(opt_tensors)
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    header = {"format": FORMAT, "version": VERSION, "written_by": versions()}
    write_atomic(path, tensors, {**header, **meta, "optim": opt_meta})


def load_checkpoint(
    path: Path,
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer] | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load weights into `nets` (and state into `opts`); returns (metadata, extra tensors)."""
    names = (*nets, "opt", "extra") if opts else tuple(nets)
    tensors, meta = read(path, names)
    unpack_nets(nets, tensors, path)
    if opts:
        if not isinstance(meta.get("optim"), dict):
            raise GankitError(f"checkpoint {path} holds no optimiser state: it cannot resume")
        unpack_optimizers(opts, tensors, meta["optim"], path)
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


def read_meta(path: Path) -> dict:
    """Only the JSON metadata (config, image shape, step): cheap, loads no tensors."""
    return read(path, names=())[1]


def find_checkpoint(run: str | Path, which: str | None = None) -> Path:
    """A checkpoint path from a run folder and `which`: None/"last", "best", a step number, a
    checkpoint's name in the run (step-00001000), or a file path."""
    run = Path(run)
    if which and Path(which).is_file():
        return Path(which)
    if run.is_file():
        return run
    if not run.is_dir():
        raise GankitError(f"run folder {run} does not exist")
    folder = run / "checkpoints"
    if which in (None, "last", "best"):
        path = folder / f"{which or 'last'}.safetensors"
    elif which.isdigit():
        path = folder / f"step-{int(which):08d}.safetensors"
    elif (named := folder / f"{which}.safetensors").is_file():  # a name as the error below lists
        path = named
    else:
        path = Path(which)
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        raise GankitError(
            f"checkpoint {path} does not exist (available: {', '.join(have) or 'none'})"
        )
    return path
