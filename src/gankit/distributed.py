"""Many processes: the whole torch.distributed story of a training run, in one place.

A run is world-size invariant. `train.batch_size` is the global batch: every
rank draws the same batch indices and latents a 1-process run draws, and rank r
keeps the r-th contiguous slice. After each backward pass the players' gradients
are averaged across ranks with one all-reduce of the flat gradient (as StyleGAN3
and R3GAN do, instead of wrapping two alternating players in DDP), so every rank
takes the same optimiser step and holds the same weights.

    setup(device, timeout)   reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT as
                             torchrun sets them; NCCL on CUDA (one GPU per local rank),
                             gloo on the CPU; a single process needs none of it
    Dist                     who this process is; `is_main` guards every write
    launch(nproc, argv)      `gankit train --nproc N`: torch's elastic launcher starts
                             N local workers, each running `gankit train argv`

The loop calls the collectives below; each is a no-op in a single process.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gankit.device import resolve_device
from gankit.errors import GankitError, first_line

SETUP_TIMEOUT = timedelta(hours=2)  # rank 0 alone may train an evaluator's classifier first


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ctrl: object = None  # a gloo group for host-side agreement (stop votes, set-up order)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and draws the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, x: Tensor) -> Tensor:
        """Rank r's contiguous slice r of a global batch (B, ...) -> (B / N, ...)."""
        n = x.shape[0] // self.world_size
        return x[self.rank * n : (self.rank + 1) * n]


def cores() -> int:
    """The CPU cores this process may run on: a job pinned to some (SLURM, taskset, a
    container's cpuset) gets those, not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def world_from_env() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables."""
    env = os.environ

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            raise GankitError(f"{name}={env[name]!r} is not an integer") from None

    world = number("WORLD_SIZE", 1)
    rank, local_rank = number("RANK", 0), number("LOCAL_RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise GankitError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world, local_rank, local_world


def setup(device_name: str, timeout_s: float) -> Dist:
    """Join the process group that torchrun's variables describe (a single process: none)."""
    rank, world, local_rank, local_world = world_from_env()
    if world == 1:
        return Dist(device=resolve_device(device_name))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not use_cuda:
        raise GankitError(f"device {device_name!r} asked for, but torch sees no CUDA device")
    if use_cuda:  # one GPU per local rank, whatever cuda:N said
        if local_rank >= torch.cuda.device_count():
            raise GankitError(
                f"local rank {local_rank} needs GPU {local_rank}, but torch sees "
                f"{torch.cuda.device_count()}: start at most that many processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, cores() // local_world))
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        timeout = timedelta(seconds=timeout_s)
        store = None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts of the group, and a restarted
            # group then read the dead group's gloo addresses (seen with torch 2.14): each
            # attempt gets keys of its own.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            client = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
            store = dist.PrefixStore(f"gankit/attempt-{attempt}", client)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            store=store,
            rank=rank if store else -1,
            world_size=world if store else -1,
            timeout=timeout,
            device_id=device if use_cuda else None,
        )
        ctrl = dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT)
    except (RuntimeError, ValueError, TimeoutError) as e:
        raise GankitError(
            f"rank {rank} could not join the other {world - 1} process(es) at {where} "
            f"within {timeout_s:g} s ({_first_line(e)})"
        ) from None
    d = Dist(rank, world, local_rank, local_world, device, ctrl)
    # A gloo group still alive when the interpreter exits can abort the process ("terminate
    # called without an active exception", seen with torch 2.14): leave it at exit at the
    # latest, for scripts that use the API and never call teardown.
    atexit.register(teardown, d)
    return d


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    return first_line(e)[:300]  # gloo's messages can run long


def is_collective_failure(d: Dist, e: RuntimeError) -> bool:
    """A collective that failed because a peer is gone or hung (gloo and NCCL raise plain
    RuntimeErrors for those, torch's own checks a DistError)."""
    text = str(e)
    return d.enabled and (
        isinstance(e, dist.DistError) or "gloo" in text or "NCCL" in text or "timed out" in text
    )


class LostPeer(GankitError):
    """A collective failed: another rank died or hung."""


def lost_peer(d: Dist, e: BaseException) -> GankitError:
    """The one line a rank ends with when a collective fails (a rank died or hung)."""
    return LostPeer(
        f"rank {d.rank}: lost contact with the other ranks ({_first_line(e)}); "
        "the last checkpoint is intact"
    )


def silent(*args, **kwargs) -> None:
    """The log function of ranks other than 0."""


def agree(d: Dist, fn: Callable[[], object]) -> object:
    """fn() on rank 0, its result (or its GankitError) on every rank."""
    if not d.enabled:
        return fn()
    box: list = [None]
    if d.is_main:
        try:
            box[0] = ("ok", fn())
        except GankitError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0, group=d.ctrl)
    kind, value = box[0]
    if kind == "error":
        raise GankitError(value)
    return value


def main_first(d: Dist, fn: Callable[[], object]) -> object:
    """fn() on rank 0, then on the others: whatever rank 0 caches (a parsed dataset, a
    trained classifier) the others then load instead of making it again at the same time."""
    if d.enabled and not d.is_main:
        dist.barrier(group=d.ctrl)
    result = fn()
    if d.enabled and d.is_main:
        dist.barrier(group=d.ctrl)
    return result


# ----------------------------------------------------------------------------- gradients


def average_gradients(d: Dist, opts: dict[str, torch.optim.Optimizer]) -> None:
    """Before every optimiser step, average its parameters' gradients across ranks: one
    all-reduce of their concatenation. The step functions of the families stay unaware."""
    if not d.enabled:
        return

    def average(flat: Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(d.world_size)

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        _flat_in_place(grads, average)

    for opt in opts.values():
        opt.register_step_pre_hook(hook)


def broadcast_buffers(d: Dist, nets: dict[str, nn.Module]) -> None:
    """Rank 0's floating buffers (BatchNorm's running statistics) to every rank, as DDP does
    at each forward: without SyncBatchNorm each rank's statistics follow its own slice."""
    if not d.enabled:
        return
    bufs = [b for net in nets.values() for b in net.buffers() if b.is_floating_point()]
    _flat_in_place(bufs, lambda flat: dist.broadcast(flat, src=0))


def _flat_in_place(tensors: list[Tensor], collective: Callable[[Tensor], object]) -> None:
    """One collective over the tensors' concatenation, its result copied back into each
    (copy_ keeps each tensor's memory layout, channels_last included)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    collective(flat)
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(chunk.view(t.shape))


# ----------------------------------------------------------------------------- SyncBatchNorm


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that gradients flow through: the gradient of each rank's input is
    the sum of every rank's output gradient. (torch.distributed.nn's copy is deprecated.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, which runs only on GPUs, plus a CPU path: the statistics of the
    global batch from two differentiable all-reduces (sum, then squared deviations), so a
    gloo run normalises exactly as one process over the whole batch does. Written here
    because torch has no CPU implementation; on CUDA torch's own kernel runs."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.device.type == "cpu" and dist.is_initialized()):
            return super().forward(x)
        dims = [i for i in range(x.dim()) if i != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)  # (1, C, 1, ...) broadcasts over (B, C, ...)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(dims)) / count  # (C,)
        var = _AllReduceSum.apply((x - mean.view(shape)).square().sum(dims)) / count  # biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * count / max(count - 1, 1), m)  # unbiased
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer becomes a SyncBatchNorm (same parameters, buffers and keys)."""
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if device.type == "cpu":
        for m in net.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = CPUSyncBatchNorm  # same fields; only forward differs
    return net


# ----------------------------------------------------------------------------- agreement


class StopVote:
    """Ranks agree on when to stop (Ctrl-C, SIGTERM) without a device sync per step: each
    step starts an asynchronous all-reduce (max) of the ranks' flags on the gloo group and
    reads the previous step's result, so every rank stops after the same step."""

    def __init__(self, d: Dist):
        self.d, self.work, self.buf = d, None, None

    def __call__(self, local: bool) -> bool:
        if not self.d.enabled:
            return local
        agreed = False
        if self.work is not None:
            self.work.wait()
            agreed = bool(self.buf.item())
        self.buf = torch.tensor([int(local)], dtype=torch.int32)
        self.work = dist.all_reduce(
            self.buf, op=dist.ReduceOp.MAX, group=self.d.ctrl, async_op=True
        )
        return agreed

    def close(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None


def mean_scalars(d: Dist, scalars: dict[str, float | Tensor]) -> dict[str, float]:
    """Each key's mean over the ranks (one all-reduce), as plain floats."""
    keys = sorted(scalars)
    values = torch.stack([torch.as_tensor(scalars[k], dtype=torch.float32) for k in keys])
    if d.enabled:
        values = values.to(d.device)
        dist.all_reduce(values)
        values /= d.world_size
    return dict(zip(keys, values.tolist(), strict=True))


def any_rank(d: Dist, flag: Tensor) -> bool:
    """Whether `flag` (a tensor on this rank's device, nonzero = true) holds on any rank:
    one all-reduce."""
    flag = flag.detach().float().reshape(1)
    if d.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def gather_rows(d: Dist, x: Tensor, total: int) -> Tensor:
    """Every rank's rows (its share of `total`, in rank order) on every rank: (total, ...)."""
    if not d.enabled:
        return x
    share = math.ceil(total / d.world_size)
    pad = torch.zeros(share, *x.shape[1:], dtype=x.dtype, device=d.device)
    pad[: x.shape[0]] = x
    out = [torch.empty_like(pad) for _ in range(d.world_size)]
    dist.all_gather(out, pad)
    return torch.cat(out)[:total].to(x.device)


def share_of(d: Dist, total: int) -> slice:
    """Rank r's rows of `total`: contiguous blocks of ceil(total / N) (the last may be short)."""
    share = math.ceil(total / d.world_size)
    return slice(min(d.rank * share, total), min((d.rank + 1) * share, total))


def gather_cpu(d: Dist, x: Tensor) -> list[Tensor]:
    """Every rank's copy of a CPU tensor of the same shape on every rank (over gloo)."""
    if not d.enabled:
        return [x]
    out = [torch.empty_like(x) for _ in range(d.world_size)]
    dist.all_gather(out, x.contiguous(), group=d.ctrl)
    return out


def check_consistency(d: Dist, nets: dict[str, nn.Module]) -> None:
    """Every rank holds rank 0's weights and buffers, bit for bit (StyleGAN2-ADA's
    check_ddp_consistency); a rank that drifted stops the run with one line."""
    if not d.enabled:
        return
    named = [
        (f"{k}.{n}", t)
        for k, net in nets.items()
        for n, t in (*net.named_parameters(), *net.named_buffers())
    ]
    flat = torch.cat([t.detach().reshape(-1).double() for _, t in named])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    differs = torch.tensor([0], dtype=torch.int64)
    if not torch.equal(flat, ref):
        sizes = [t.numel() for _, t in named]
        for (name, _), a, b in zip(named, flat.split(sizes), ref.split(sizes), strict=True):
            if not torch.equal(a, b):
                differs[0] = 1
                first = f"{name} (max |diff| {float((a - b).abs().max()):.3g})"
                break
    bad = gather_cpu(d, differs)
    if any(int(b) for b in bad):
        rank = next(r for r, b in enumerate(bad) if int(b))
        where = first if d.rank == rank else "its weights"
        raise GankitError(
            f"rank {rank} holds different weights from rank 0 ({where}): the replicas drifted "
            "apart, so the run stopped; the last checkpoint is intact"
        )


# ----------------------------------------------------------------------------- launching


def launch(nproc: int, argv: list[str], port: int, max_restarts: int, timeout_s: float) -> int:
    """`gankit train --nproc N ...`: N workers on this machine through torch's elastic
    launcher (what torchrun runs), each `python -m gankit train argv`."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if port:  # a port another program holds would leave the rendezvous waiting on it
        import socket

        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise GankitError(f"--master-port {port} is not free: {e.strerror}") from None
    cfg = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_configs={"timeout": int(timeout_s), "join_timeout": int(timeout_s)},
        max_restarts=max_restarts,
        monitor_interval=0.1,
    )
    # The agent's own log lines (which signal it sent, which rank failed) would stand
    # beside the one line that says what happened.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    os.environ["GANKIT_LAUNCHED"] = "1"  # workers leave their one-line errors to the launcher
    try:
        elastic_launch(cfg, sys.executable)("-m", "gankit", "train", *argv)
    except ChildFailedError as e:
        raise GankitError(_root_cause(e.failures)) from None
    except SignalException:  # Ctrl-C / SIGTERM: the workers got it too, saved and stopped
        return 0
    except Exception as e:  # the rendezvous itself: port in use, no address
        raise GankitError(
            f"could not start {nproc} workers on port {port}: {_first_line(e)}"
        ) from None
    finally:
        os.environ.pop("GANKIT_LAUNCHED", None)
    return 0


def _root_cause(failures: dict) -> str:
    """The one line for a failed group: a rank killed by a signal, else the first rank's own
    error that is not about losing the others, else the first failure."""
    stops = (signal.SIGTERM, signal.SIGINT)

    def killed(f) -> bool:
        return f.exitcode < 0 and -f.exitcode not in stops

    def own_error(f) -> bool:
        data = f.error_file_data if isinstance(f.error_file_data, dict) else {}
        return isinstance(f.message, str) and data.get("gankit") not in (None, "LostPeer")

    for wanted in (killed, own_error, lambda f: True):
        found = sorted((r, f) for r, f in failures.items() if wanted(f))
        if found:
            rank, f = found[0]
            break
    if f.exitcode < 0:
        return (
            f"rank {rank} (pid {f.pid}) was killed by {signal.Signals(-f.exitcode).name}; "
            "every rank was stopped; the last checkpoint is intact"
        )
    if own_error(f):
        return f.message.removeprefix("gankit: error: ")
    return f"rank {rank} (pid {f.pid}) exited with code {f.exitcode}; every rank was stopped"
