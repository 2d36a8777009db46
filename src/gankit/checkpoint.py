"""Checkpoints: one safetensors file per checkpoint, its JSON metadata in the header.

    tensors:  G.<param>, D.<param>              network weights and buffers
              opt.G.<param index>.<key>         optimiser state (Adam's moments, step)
              <name> from `extra`               fixed noise, RNG states, sampler permutation
    metadata: {"gankit": JSON}                  format version, step, config, image shape,
                                                optimiser hyper-parameters, scalars

A checkpoint is written to a temporary file, flushed to disk and renamed over the
old one, so a crash mid-write leaves the previous checkpoint intact. Loading
parses safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from gankit.errors import GankitError

FORMAT = "gankit-checkpoint"
VERSION = 1


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON metadata to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(tensors, tmp, metadata={"gankit": json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint; `names` = prefixes to load (None = all)."""
    path = Path(path)
    if not path.is_file():
        raise GankitError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("gankit", "null"))
            keys = [k for k in f.keys() if names is None or k.split(".", 1)[0] in names]
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise GankitError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GankitError(f"{path} is not a gankit checkpoint")
    if meta.get("version", 0) > VERSION:
        raise GankitError(
            f"checkpoint {path} has format version {meta['version']}; this gankit reads <= {VERSION}"
        )
    return tensors, meta


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def pack_nets(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def unpack_nets(nets: dict[str, nn.Module], tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, net in nets.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise GankitError(
                f"checkpoint {path} does not match network {name}: {_first_line(e)}"
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
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[key] = v
        for k, v in meta[name]["scalars"].items():
            idx, key = k.split(".", 1)
            state.setdefault(int(idx), {})[key] = v
        try:
            opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})
        except (ValueError, KeyError) as e:
            raise GankitError(
                f"checkpoint {path} does not match optimiser {name}: {_first_line(e)}"
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
    write_atomic(path, tensors, {"format": FORMAT, "version": VERSION, **meta, "optim": opt_meta})


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
        unpack_optimizers(opts, tensors, meta["optim"], path)
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


def read_meta(path: Path) -> dict:
    """Only the JSON metadata (config, image shape, step): cheap, loads no tensors."""
    return read(path, names=())[1]


def find_checkpoint(run: str | Path, which: str | None = None) -> Path:
    """A checkpoint path from a run folder and `which`: None/"last", "best", a step number, or a file path."""
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
    else:
        path = Path(which)
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        raise GankitError(
            f"checkpoint {path} does not exist (available: {', '.join(have) or 'none'})"
        )
    return path
