"""Training on several processes (gloo on the CPU): world-size invariance, who writes what,
resume at another world size, gathered evaluation, faults, and every family under it.

Each test starts real processes: `gankit train --nproc 2` (torch's elastic launcher) or
torchrun itself, as a user would."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, quiet
from gankit import checkpoint as ckpt
from gankit.config import load_config
from gankit.train import last_checkpoint, train

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
# A tiny DCGAN: BatchNorm in G and D, so --sync-bn matters; no dropout anywhere.
DCGAN = {
    "family": "dcgan",
    "model.ngf": "8",
    "model.ndf": "8",
    "device": "cpu",
    "batch_size": "32",
    "log_every": "5",
    "sample_every": "10",
    "ckpt_every": "1",
    "keep": "100",
    "sync_bn": "true",
}


def flags(options: dict) -> list[str]:
    return [tok for k, v in options.items() for tok in (f"--{k}", str(v))]


def gankit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gankit", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def torchrun(*args: str, timeout: float = 120, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensors_at(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    path = (
        last_checkpoint(run)
        if step is None
        else run / "checkpoints" / f"step-{step:08d}.safetensors"
    )
    return ckpt.read(path, ("G", "D"))[0]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def drift(a: dict, b: dict, start: dict) -> float:
    """Mean |a - b| over every weight, as a share of how far run a moved from `start`.
    After many steps float rounding is amplified by the game (Adam turns a near-zero gradient's
    rounding into a step of lr), so the max differs by a few lr on some CPUs even when both runs
    are right (AMD EPYC: 20 steps left a drift of 0.005); one step out of line drifts 0.07."""
    assert a.keys() == b.keys() == start.keys()
    flat = [torch.cat([d[k].double().flatten() for k in sorted(d)]) for d in (a, b, start)]
    return ((flat[0] - flat[1]).abs().mean() / (flat[0] - flat[2]).abs().mean()).item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 20-step tiny DCGAN run with --sync-bn in 1 process and in 2 (gankit train --nproc 2)."""
    root = tmp_path_factory.mktemp("dist")
    train(load_config(None, DCGAN | {"steps": "20"}), root / "one", progress=False, log=quiet)
    p = gankit(
        "train",
        "--nproc",
        "2",
        *flags(DCGAN | {"steps": "20"}),
        "--runs-dir",
        str(root),
        "--name",
        "two",
    )
    assert p.returncode == 0, p.stderr
    return root, p


def test_two_processes_train_the_model_of_one(runs):
    root, p = runs
    one, two = root / "one", root / "two"
    assert max_diff(tensors_at(one, 1), tensors_at(two, 1)) < 1e-5  # float rounding only
    assert drift(tensors_at(one, 20), tensors_at(two, 20), tensors_at(one, 1)) < 0.02
    # the first lines say how the run is split
    assert "processes: 2 (gloo on cpu), 16 images per rank of the global batch 32" in p.stdout


def test_rank_zero_alone_writes(runs):
    root, p = runs
    two = root / "two"
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    names = sorted(x.name for x in (two / "checkpoints").iterdir())
    assert names == ["last.safetensors"] + [f"step-{s:08d}.safetensors" for s in range(1, 21)]
    assert p.stdout.count("run folder:") == 2  # the first line and the summary, once each
    assert p.stdout.count("trained to step 20") == 1
    assert sorted(x.name for x in root.iterdir()) == ["one", "two"]  # no folder of rank 1


def cut_back(run: Path, to: Path, step: int) -> None:
    """A copy of `run` as it stood at `step`: its step checkpoint as last, none after it."""
    shutil.copytree(run, to)
    for path in (to / "checkpoints").glob("step-*.safetensors"):
        if int(path.stem.split("-")[1]) > step:
            path.unlink()
    shutil.copy(to / "checkpoints" / f"step-{step:08d}.safetensors", last_checkpoint(to))


def test_resume_keeps_the_stream_at_any_world_size(runs, tmp_path):
    root, _ = runs
    for name in ("a", "b"):  # the 2-process 20-step run as it stood at step 10
        cut_back(root / "two", tmp_path / name, 10)
    assert ckpt.read_meta(last_checkpoint(tmp_path / "a"))["step"] == 10
    # At the same world size, resume is bit-identical to the uninterrupted run.
    p = gankit("train", "--nproc", "2", "--resume", str(tmp_path / "a"), "--steps", "20")
    assert p.returncode == 0, p.stderr
    a, full = tensors_at(tmp_path / "a"), tensors_at(root / "two")
    assert all(torch.equal(a[k], full[k]) for k in a)
    # At one process it continues the same batches and latents: the 1-process model.
    p = gankit("train", "--resume", str(tmp_path / "b"), "--steps", "20")
    assert p.returncode == 0, p.stderr
    assert max_diff(tensors_at(tmp_path / "b"), tensors_at(root / "one")) < 1e-5
    assert (
        ckpt.read_meta(last_checkpoint(tmp_path / "b"))["sampler"]
        == ckpt.read_meta(last_checkpoint(root / "one"))["sampler"]
    )


SCRIPT = """
import json, sys, torch
from gankit import distributed
from gankit.config import load_config
from gankit.evaluate import Evaluator
from gankit.models import MODELS
from gankit.train import evaluate_samples

cfg = load_config(None, {"family": "dcgan", "model.ngf": "8", "model.ndf": "8", "eval_n": "600"})
d = distributed.setup("cpu", 60)
torch.manual_seed(0)
nets = MODELS["dcgan"].build(cfg.model, (1, 28, 28))
ev = Evaluator("mnist", device="cpu", log=lambda *a: None)
results = evaluate_samples(MODELS["dcgan"], cfg, nets, ev, 10, d)
if d.is_main:
    open(sys.argv[1], "w").write(json.dumps(results))
distributed.teardown(d)
"""


def test_evaluation_gathers_the_ranks_shares(tmp_path):
    from gankit.evaluate import Evaluator

    Evaluator("mnist", device="cpu", log=quiet)  # the classifier, trained and cached once
    script = tmp_path / "eval.py"
    script.write_text(SCRIPT)
    scores = {}
    out = tmp_path / "eval2.json"
    p = torchrun("--standalone", "--nproc-per-node", "2", str(script), str(out))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    scores[2] = json.loads(out.read_text())
    out = tmp_path / "eval1.json"  # one process: no torchrun variables, no group
    subprocess.run([sys.executable, str(script), str(out)], env=ENV, check=True, timeout=120)
    scores[1] = json.loads(out.read_text())
    assert scores[1].keys() == scores[2].keys()
    fd = [k for k in scores[1] if k.startswith("fd_")][0]
    assert abs(scores[2][fd] - scores[1][fd]) <= 1e-6 * abs(scores[1][fd])
    for k in scores[1]:
        assert scores[2][k] == pytest.approx(scores[1][k], rel=1e-5, abs=1e-7), k


DRIFT = """
import json, sys, torch
from gankit import distributed
from gankit.errors import GankitError
from gankit.models import MODELS
from gankit.config import load_config

d = distributed.setup("cpu", 60)
torch.manual_seed(0)
nets = MODELS["mlp"].build(load_config().model, (1, 28, 28))
said = {}
for case in ("same", "drift"):
    if case == "drift" and d.rank == 1:
        with torch.no_grad():
            nets["D"].head.linear.bias.add_(1e-3)
    try:
        distributed.check_consistency(d, nets)
        said[case] = "consistent"
    except GankitError as e:
        said[case] = f"refused: {e}"
open(f"{sys.argv[1]}/rank{d.rank}.json", "w").write(json.dumps(said))
distributed.teardown(d)
"""


def test_consistency_check_catches_a_drifting_rank(tmp_path):
    script = tmp_path / "drift.py"
    script.write_text(DRIFT)
    p = torchrun("--standalone", "--nproc-per-node", "2", str(script), str(tmp_path))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    said = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [x["same"] for x in said] == ["consistent", "consistent"]
    assert all(x["drift"].startswith("refused: rank 1 holds") for x in said), said
    assert any("D.head.linear.bias (max |diff| 0.001)" in x["drift"] for x in said), said


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


LONG = DCGAN | {"steps": "100000", "ckpt_every": "5", "keep": "1", "no-progress": ""}


def launch_long(tmp_path: Path, *extra: str) -> subprocess.Popen:
    args = [a for a in flags(LONG) if a] + ["--runs-dir", str(tmp_path), "--name", "run", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "gankit", "train", "--nproc", "2", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_dead_rank_stops_the_group_with_one_line(tmp_path):
    p = launch_long(tmp_path)
    wait_for(tmp_path / "run" / "checkpoints" / "step-00000005.safetensors", p)
    workers = children(p.pid)
    assert len(workers) == 2
    t0 = time.time()
    os.kill(workers[1], signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert time.time() - t0 < 60
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gankit: error: rank "), err
    assert "was killed by SIGKILL" in lines[0]
    assert not any(alive(w) for w in workers)  # no process hangs
    meta = ckpt.read_meta(last_checkpoint(tmp_path / "run"))  # the last checkpoint loads
    assert meta["step"] >= 5


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step(tmp_path):
    p = launch_long(tmp_path)
    wait_for(tmp_path / "run" / "checkpoints" / "step-00000005.safetensors", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    step = ckpt.read_meta(last_checkpoint(tmp_path / "run"))["step"]
    assert f"stopped at step {step};" in out
    assert (tmp_path / "run" / "checkpoints" / f"step-{step:08d}.safetensors").is_file()
    r = gankit("train", "--resume", str(tmp_path / "run"), "--steps", str(step + 2))  # 1 process
    assert r.returncode == 0, r.stderr
    assert ckpt.read_meta(last_checkpoint(tmp_path / "run"))["step"] == step + 2


def test_max_restarts_resumes_from_the_last_checkpoint(tmp_path):
    # the MLP GAN: fast enough for a run long enough to kill, with dropout (each rank's RNG)
    cfg = {"g_widths": "32,64", "d_widths": "64,32", "device": "cpu", "batch_size": "32"}
    cfg |= {"steps": "200", "log_every": "10", "ckpt_every": "20", "keep": "1"}
    p = gankit("train", "--nproc", "2", *flags(cfg), "--runs-dir", str(tmp_path), "--name", "full")
    assert p.returncode == 0, p.stderr
    args = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "-m", "gankit", "train"]
    p = torchrun(*args, *flags(cfg), "--no-progress", "--runs-dir", str(tmp_path), "--name", "hit")
    wait_for(tmp_path / "hit" / "checkpoints" / "step-00000040.safetensors", p)
    agent = p.pid
    os.kill(children(agent)[-1], signal.SIGKILL)  # one forced failure
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert out.count("resumed") == 1  # rank 0 of the restarted group, from the checkpoint
    a, b = tensors_at(tmp_path / "full"), tensors_at(tmp_path / "hit")
    assert all(torch.equal(a[k], b[k]) for k in a)  # and ends where the uninterrupted run ends


def test_a_rank_counts_the_cores_it_is_pinned_to():
    code = "from gankit import distributed; print(distributed.cores())"
    pinned = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )  # fmt: skip
    assert pinned.stdout.strip() == "1"  # not the machine's os.cpu_count()


def test_two_nodes_through_torchrun_train_the_model_of_one(runs, tmp_path):
    root, _ = runs
    port = free_port()
    cfg = DCGAN | {"steps": "20"}
    nodes = [
        torchrun(
            "--nnodes",
            "2",
            "--node-rank",
            str(k),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "t",
            "-m",
            "gankit",
            "train",
            *flags(cfg),
            "--no-progress",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "nodes",
            preexec_fn=lambda k=k: os.sched_setaffinity(0, {k % os.cpu_count()}),  # a core each
        )  # fmt: skip
        for k in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=120)
        assert node.returncode == 0, err
    one = root / "one"
    assert drift(tensors_at(tmp_path / "nodes"), tensors_at(one), tensors_at(one, 1)) < 0.02


FAMILIES = {
    "dcgan-projection-r1-ema-diffaugment": {
        **DCGAN, "cond": "projection", "d_norm": "none", "r1": "1", "ema": "0.9",
        "augment": "color,translation,cutout", "sync_bn": "false",
    },
    "acgan-wgan-gp-n-critic": {
        **DCGAN, "cond": "acgan", "d_norm": "layer", "loss": "wgan-gp", "n_critic": "2",
    },
    "lapgan": {"family": "lapgan", "model.ngf": "8", "model.ndf": "8", "device": "cpu"},
    "srgan": {
        "family": "srgan", "dataset": "photos", "img_size": "32", "model.n_blocks": "1",
        "model.nf": "8", "model.ndf": "8", "model.content": "pixel", "model.dihedral": "true",
        "batch_size": "4", "device": "cpu",
    },
    "vae": {"family": "vae", "device": "cpu", "batch_size": "32"},
    "r3gan-rpgan-r1-r2-projection": {
        "family": "r3gan", "model.ngf": "8", "model.ndf": "8", "cond": "projection",
        "loss": "rpgan", "r1": "0.1", "r2": "0.1", "gamma_final": "0.5", "ema_kimg": "1",
        "device": "cpu", "batch_size": "32",
    },
}  # fmt: skip


FAMILY_RUNS = """
import json, sys
from pathlib import Path
from gankit import distributed
from gankit.config import load_config
from gankit.train import train

families, out = json.loads(sys.argv[1]), Path(sys.argv[2])
d = distributed.setup("cpu", 60)
for name, options in families.items():  # one process group, a run per family
    train(load_config(None, options), out / name, progress=False, log=lambda *a: None, dist=d)
distributed.teardown(d)
"""


def test_every_family_trains_on_two_processes(tmp_path):
    runs = {
        name: cfg | {"steps": "4", "log_every": "2", "ckpt_every": "2", "eval_every": "0"}
        for name, cfg in FAMILIES.items()
    }
    script = tmp_path / "families.py"
    script.write_text(FAMILY_RUNS)
    p = torchrun(
        "--standalone", "--nproc-per-node", "2", str(script), json.dumps(runs), str(tmp_path)
    )
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    for name in FAMILIES:
        meta = ckpt.read_meta(last_checkpoint(tmp_path / name))
        assert (meta["step"], meta["world_size"]) == (4, 2), name


def test_bad_launches_are_one_line(tmp_path, capsys):
    def one_line(p, expect):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith("gankit: error:") and expect in lines[0], lines

    # refused before anything is launched
    one_line_error(capsys, ["train", "--nproc", "0"], "--nproc must be >= 1")
    one_line_error(capsys, ["train", "--nproc", "two"], "--nproc takes a whole number")
    one_line_error(
        capsys, ["train", "--nproc", "3", "--batch-size", "32"], "does not divide by --nproc 3"
    )
    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line(
            gankit(
                "train",
                "--nproc",
                "2",
                "--master-port",
                str(port),
                "--steps",
                "2",
                "--runs-dir",
                str(tmp_path),
            ),  # fmt: skip
            f"port {port}",
        )
    assert not (tmp_path).exists() or not any(tmp_path.iterdir())
    # a rank whose rendezvous never answers gives up after train.dist_timeout
    env = ENV | {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}  # fmt: skip
    t0 = time.time()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "gankit",
            "train",
            "--dist-timeout",
            "3",
            "--steps",
            "2",
            "--runs-dir",
            str(tmp_path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    one_line(p, "rank 1 could not join")
    assert time.time() - t0 < 30
