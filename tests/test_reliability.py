"""Nothing lost, nothing crashes: divergence rollback, the collapse alarm, continuous
schedules on extension, the run folder's lock, the data fingerprint, and failed writes
(a real read-only folder and a real full disk)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import interrupt_after, one_line_error, quiet
from gankit import checkpoint as ckpt
from gankit.models import mlp
from gankit.schedule import Ramp
from gankit.train import Diverged, better, last_checkpoint, train

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
TINY_FLAGS = ["--g-widths", "32,64", "--d-widths", "64,32", "--device", "cpu"]


def finite(path: Path) -> bool:
    tensors, _ = ckpt.read(path)
    return all(v.isfinite().all() for v in tensors.values() if v.is_floating_point())


def poison(monkeypatch, calls: set[int] | None = None, after: int | None = None):
    """From now on, mlp's step sees NaN in its real batch at these call numbers (1-based)."""
    real_step, n = mlp.step, {"calls": 0}

    def step(nets, opts, batches, *args, **kwargs):
        n["calls"] += 1
        if (calls and n["calls"] in calls) or (after is not None and n["calls"] > after):
            batches = [(x * float("nan"), y) for x, y in batches]
        return real_step(nets, opts, batches, *args, **kwargs)

    monkeypatch.setattr(mlp, "step", step)


def texts(run_dir: Path, tag: str) -> list[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tag += "/text_summary"  # where SummaryWriter.add_text puts it
    if tag not in acc.Tags()["tensors"]:
        return []
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


# ----------------------------------------------------------------------------- divergence


def test_a_poisoned_batch_rolls_back_halves_the_rates_and_goes_on(
    tiny_cfg, tmp_path, monkeypatch, capsys
):
    poison(monkeypatch, calls={7})
    cfg = tiny_cfg(steps=30, log_every=5, ckpt_every=10, keep=10)
    s = train(cfg, tmp_path / "run", progress=False, log=quiet)
    out = capsys.readouterr().out
    assert s.step == 30
    assert "step 10: non-finite" in out and "rolled back to step 5" in out, out
    assert "batches 6-10 skipped" in out
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        assert finite(path), path.name
    meta = ckpt.read_meta(last_checkpoint(tmp_path / "run"))
    assert meta["guard"]["lr_factor"] == 0.5
    for name, rate in (("G", cfg.train.lr_g), ("D", cfg.train.lr_d)):
        assert meta["optim"][name]["param_groups"][0]["lr"] == rate * 0.5
    assert any("rolled back to step 5" in t for t in texts(tmp_path / "run", "events/rollback"))
    # The steps after the rollback were trained: the run got past step 10 to 30 from 5,
    # so the G of step 20 differs from that of step 30.
    g20 = ckpt.read(tmp_path / "run" / "checkpoints" / "step-00000020.safetensors", ("G",))[0]
    g30 = ckpt.read(last_checkpoint(tmp_path / "run"), ("G",))[0]
    assert any(not torch.equal(g20[k], g30[k]) for k in g20)


def test_an_exploding_learning_rate_gives_up_after_k_rollbacks_and_keeps_the_last_good_state(
    tiny_cfg, tmp_path, capsys
):
    # Adam moves each weight by about lr a step: 1e30 makes D's logits overflow at once.
    cfg = tiny_cfg(steps=40, log_every=5, ckpt_every=10, lr_d=1e30, lr_g=1e30, max_rollbacks=2)
    with pytest.raises(Diverged, match=r"diverged at step 5: non-finite .* after 2 rollbacks"):
        train(cfg, tmp_path / "run", progress=False, log=quiet)
    out = capsys.readouterr().out
    assert out.count("rolled back to step 0") == 2
    last = last_checkpoint(tmp_path / "run")
    assert finite(last)
    meta = ckpt.read_meta(last)
    assert meta["step"] == 0 and meta["guard"]["lr_factor"] == 0.25
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] != []


def test_rollbacks_count_again_once_the_run_gets_past_the_failure(tiny_cfg, tmp_path, monkeypatch):
    # Poisoned at steps 3 and 13: two separate failures, each got past, so max_rollbacks 1
    # is never exceeded, and the rates end at 1/4.
    poison(monkeypatch, calls={3, 14})
    cfg = tiny_cfg(steps=25, log_every=5, ckpt_every=25, max_rollbacks=1)
    s = train(cfg, tmp_path / "run", progress=False, log=quiet)
    meta = ckpt.read_meta(last_checkpoint(tmp_path / "run"))
    assert s.step == 25 and meta["guard"]["lr_factor"] == 0.25


def test_a_nan_metric_is_never_best_and_never_freezes_best():
    nan = float("nan")
    assert not better(nan, None, "fd")
    assert better(3.0, {"value": nan}, "fd")
    assert better(3.0, {"value": 4.0}, "fd") and not better(5.0, {"value": 4.0}, "fd")
    assert better(0.9, {"value": 0.5}, "precision") and not better(0.4, {"value": 0.5}, "precision")
    # Density is ~1 when the samples match the data: 0.9 beats 1.3 and 0.5, and 1.3 beats 0.5.
    assert better(0.9, {"value": 1.3}, "density") and better(0.9, {"value": 0.5}, "density")
    assert better(1.3, {"value": 0.5}, "density") and not better(0.5, {"value": 0.9}, "density")


ROGUE_RANK = """
import sys, torch
from gankit.config import load_config
from gankit.models import mlp
from gankit.train import train
from gankit import distributed

real_step, calls = mlp.step, [0]
def step(nets, opts, batches, *a, **k):  # rank 1 alone sees a NaN batch, at its 7th step
    calls[0] += 1
    if calls[0] == 7 and int(__import__("os").environ["RANK"]) == 1:
        batches = [(x * float("nan"), y) for x, y in batches]
    return real_step(nets, opts, batches, *a, **k)
mlp.step = step
cfg = load_config(None, {"g_widths": "32,64", "d_widths": "64,32", "device": "cpu", "steps": "20",
    "batch_size": "32", "log_every": "5", "sample_every": "20", "ckpt_every": "10"})
train(cfg, sys.argv[1], progress=False)
"""


def test_a_nan_on_one_rank_rolls_back_every_rank(tmp_path):
    script = tmp_path / "rogue.py"
    script.write_text(ROGUE_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    p = subprocess.run(
        [*cmd, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "step 10: non-finite" in p.stdout and "rolled back to step 5" in p.stdout
    last = last_checkpoint(tmp_path / "run")
    meta = ckpt.read_meta(last)
    # Saving checks that every rank holds the same weights: the ranks rolled back together.
    assert meta["step"] == 20 and meta["guard"]["lr_factor"] == 0.5 and finite(last)


# ----------------------------------------------------------------------------- collapse alarm


def collapse_after(monkeypatch, calls: int):
    """After `calls` steps, G's last layer keeps weight 0: every z gives the same image."""
    real_step, n = mlp.step, {"calls": 0}

    def step(nets, *args, **kwargs):
        out = real_step(nets, *args, **kwargs)
        n["calls"] += 1
        if n["calls"] > calls:
            last = [m for m in nets["G"].modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
        return out

    monkeypatch.setattr(mlp, "step", step)


@pytest.mark.parametrize("collapse", [False, True])
def test_the_collapse_alarm_warns_once_when_diversity_falls(
    collapse, tiny_cfg, tmp_path, monkeypatch, capsys
):
    if collapse:
        collapse_after(monkeypatch, 30)
    cfg = tiny_cfg(steps=60, sample_every=10, ckpt_every=60)
    train(cfg, tmp_path / "run", progress=False, log=quiet)
    out = capsys.readouterr().out
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("samples/diversity")]
    assert len(values) == 6 and min(values[:3]) > 0.05
    if collapse:
        assert out.count("warning: the fixed noise batch's diversity fell") == 1, out
        assert "step 40: warning" in out and values[-1] < 1e-6
        assert len(texts(tmp_path / "run", "events/collapse")) == 1
    else:
        assert "warning" not in out


# ----------------------------------------------------------------------------- schedules


def test_extending_a_run_continues_its_schedules(tiny_cfg, tmp_path, monkeypatch):
    restore = interrupt_after(monkeypatch, mlp, 30)  # Ctrl-C after step 30 of 40
    over = {"lr_decay": 0.5, "instance_noise": 0.1, "ckpt_every": 10, "keep": 20}
    train(tiny_cfg(steps=40, **over), tmp_path / "run", progress=False, log=quiet)
    restore()
    before = ckpt.read_meta(last_checkpoint(tmp_path / "run"))
    assert before["step"] == 30
    cfg = tiny_cfg(steps=80, **over)
    train(cfg, tmp_path / "run", resume=True, progress=False, log=quiet)
    base = cfg.train.lr_g
    # At step 30 of 40 the rates had fallen to half; extended to 80 they hold there until
    # the final half (40 steps) of the new run, then fall to 0: never back up.
    rates = [
        ckpt.read_meta(tmp_path / "run" / "checkpoints" / f"step-{s:08d}.safetensors")["optim"][
            "G"
        ]["param_groups"][0]["lr"]
        for s in (30, 40, 50, 60, 70, 80)
    ]
    assert rates[0] == pytest.approx(base * 11 / 20)  # set before update 29 (0-based)
    assert rates[1] == pytest.approx(base / 2)  # held: updates 30..40
    assert rates[2:] == pytest.approx([base / 2 * r for r in (31 / 40, 21 / 40, 11 / 40, 1 / 40)])
    noise_before = Ramp.from_list(before["schedules"]["noise"])
    noise_after = Ramp.from_list(
        ckpt.read_meta(last_checkpoint(tmp_path / "run"))["schedules"]["noise"]
    )
    assert noise_after(30) == pytest.approx(noise_before(30)) == pytest.approx(0.25)
    assert noise_after(55) == pytest.approx(0.25 / 2) and noise_after(80) == 0


# ----------------------------------------------------------------------------- the run folder


def test_a_run_folder_is_locked_while_a_process_trains_in_it(tmp_path, capsys):
    run = tmp_path / "runs" / "busy"
    cmd = [sys.executable, "-m", "gankit", "train", *TINY_FLAGS, "--steps", "100000"]
    cmd += ["--runs-dir", str(tmp_path / "runs"), "--name", "busy", "--no-progress"]
    cmd += ["--ckpt-every", "10"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not last_checkpoint(run).is_file():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        # (--steps 1: were the folder not locked, this would end at once, not train on)
        one_line_error(
            capsys, ["train", "--resume", str(run), "--steps", "1"], f"pid {first.pid} on"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The lock died with its process; what the killed writer left behind is cleared.
    stray = run / "checkpoints" / ".last.safetensors.tmp-99999.safetensors"
    stray.write_bytes(b"half a checkpoint")
    from gankit.config import load_config

    target = ckpt.read_meta(last_checkpoint(run))["step"] + 5
    s = train(
        load_config(run / "config.yaml", {"steps": str(target)}),
        run,
        resume=True,
        progress=False,
        log=quiet,
    )
    assert s.step == target and not stray.exists()


def image_folder(folder: Path, n: int = 16, shade: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 10 * i + shade, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_resuming_on_other_data_is_refused_unless_asked(tmp_path, capsys):
    from gankit.cli import main

    data = image_folder(tmp_path / "imgs")
    flags = [*TINY_FLAGS, "--data.dataset", f"folder:{data}", "--data.channels", "1"]
    flags += ["--data.img-size", "8", "--batch-size", "4", "--no-progress"]
    runs = ["--runs-dir", str(tmp_path / "runs"), "--name", "r"]
    assert main(["train", *flags, *runs, "--steps", "4"]) == 0
    run = tmp_path / "runs" / "r"
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 0  # same data
    image_folder(data, n=1, shade=3)  # one image changed
    capsys.readouterr()
    before = last_checkpoint(run).read_bytes()
    one_line_error(capsys, ["train", "--resume", str(run), "--steps", "8"], "trained on other data")
    assert last_checkpoint(run).read_bytes() == before
    assert main(["train", "--resume", str(run), "--steps", "8", "--new-data", "--no-progress"]) == 0
    assert "warning: resuming on other data" in capsys.readouterr().out
    assert ckpt.read_meta(last_checkpoint(run))["step"] == 8


# ----------------------------------------------------------------------------- failed writes


def can_mount() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return shutil.which("unshare") is not None and probe.returncode == 0


def in_namespace(setup: str, argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m gankit argv` in a mount namespace of its own, after the shell `setup`
    (mounts vanish with the namespace)."""
    import shlex

    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "gankit", *argv])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{setup} && exec {cmd}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


needs_mounts = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not can_mount(),
    reason="needs mount namespaces (unshare -m) for a real read-only folder and a full disk",
)


def assert_one_line(p: subprocess.CompletedProcess, expect: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("gankit: error:"), p.stderr
    assert expect in lines[0], lines[0]


@needs_mounts
def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # A checkpoint of this net is about 1.3 MB; the second one needs room for its temporary
    # file beside the first, which 2.5 MB of disk does not have.
    argv = ["train", *TINY_FLAGS, "--steps", "200", "--ckpt-every", "10", "--keep", "0"]
    argv += ["--sample-every", "1000", "--runs-dir", str(runs), "--name", "full", "--no-progress"]
    p = in_namespace(f"mount -t tmpfs -o size=2500k tmpfs {runs}", argv)
    assert_one_line(p, "No space left on device")
    assert "last.safetensors is intact" in p.stderr
    # The namespace's disk is gone with it; what the run saw is in its own lines.
    assert "Traceback" not in p.stderr


@needs_mounts
def test_a_read_only_folder_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    argv = ["train", *TINY_FLAGS, "--steps", "20", "--ckpt-every", "10", "--sample-every", "20"]
    argv += ["--runs-dir", str(runs), "--name", "ro", "--no-progress"]
    from gankit.cli import main

    assert main(argv) == 0
    run = runs / "ro"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    samples = run / "samples"
    ro = f"mount --bind {samples} {samples} && mount -o remount,ro,bind {samples}"
    p = in_namespace(ro, ["train", "--resume", str(run), "--steps", "40", "--no-progress"])
    assert_one_line(p, f"cannot write {samples}")
    assert "Read-only file system" in p.stderr and "last.safetensors is intact" in p.stderr
    assert finite(last_checkpoint(run))
    assert ckpt.read_meta(last_checkpoint(run))["step"] == 30  # saved before the grid at 40
    assert not [p for p in run.rglob(".*.tmp-*")]
    for path, data in before.items():  # the checkpoints of steps 10, 20 untouched
        if "step-" in path.name:
            assert path.read_bytes() == data
    # A sample file into a read-only folder: one line, nothing left there.
    out = tmp_path / "out"
    out.mkdir()
    ro = f"mount --bind {out} {out} && mount -o remount,ro,bind {out}"
    p = in_namespace(ro, ["sample", str(run), "--n", "4", "--out", str(out / "s.npz")])
    assert_one_line(p, "Read-only file system")
    assert not list(out.iterdir())
