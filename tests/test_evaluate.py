"""`gankit eval` and evaluation during training, end to end on the bundled digits."""

import json

import numpy as np
import pytest
import torch

from conftest import quiet
from gankit import checkpoint as ckpt
from gankit.cli import main
from gankit.data import make_dataset, to_uint8
from gankit.errors import GankitError
from gankit.toy import MIXTURES
from gankit.train import last_checkpoint, train

TINY = ["--g-widths", "32,64", "--d-widths", "64,32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--steps", "60", "--eval-every", "30", "--eval-n", "500", *TINY]
    assert main([*argv, "--name", "r", "--runs-dir", str(runs)]) == 0
    return runs / "r"


def save_npz(path, images):
    np.savez(path, images=to_uint8(images).numpy())
    return str(path)


def test_eval_run_prints_table_and_appends_jsonl(run, capsys):
    lines_before = (run / "metrics.jsonl").read_text().count("\n")
    assert main(["eval", str(run), "--n", "500", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "fd_mnistnet" in out and "not FID" in out
    assert "Inception FID/IS/KID skipped" in out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == lines_before + 1
    last = records[-1]
    assert last["step"] == 60 and last["n"] == 500 and last["classifier_accuracy"] > 0.95
    assert {
        "fd_mnistnet",
        "kid_mnistnet",
        "precision",
        "recall",
        "density",
        "coverage",
        "class_kl",
    } <= set(last["metrics"])


def test_eval_json_prints_only_json(run, capsys):
    assert main(["eval", str(run), "--n", "300", "--json", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 300 and np.isfinite(record["metrics"]["fd_mnistnet"])


def test_eval_samples_ranks_real_digits_above_noise(tmp_path, capsys):
    test = make_dataset("mnist", split="test")
    real = save_npz(tmp_path / "real.npz", test.images)
    noise = save_npz(tmp_path / "noise.npz", torch.rand(1000, 1, 28, 28) * 2 - 1)
    scores = {}
    for name, path in (("real", real), ("noise", noise)):
        assert main(["eval", "--samples", path, "--data", "mnist", "--json"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)["metrics"]
    assert scores["real"]["fd_mnistnet"] < 0.01 * scores["noise"]["fd_mnistnet"]
    assert scores["real"]["coverage"] > 0.9 > scores["noise"]["coverage"]


def test_eval_2d_samples(tmp_path, capsys):
    for name, modes in (("ring", 8), ("grid", 25)):
        points = MIXTURES[name]().sample(2500, torch.Generator().manual_seed(0)).numpy()
        np.save(tmp_path / f"{name}.npy", points)
        assert (
            main(["eval", "--samples", str(tmp_path / f"{name}.npy"), "--data", name, "--json"])
            == 0
        )
        m = json.loads(capsys.readouterr().out)["metrics"]
        assert m["modes"] == modes and m["high_quality"] > 97 and m["mode_kl"] < 0.02


def test_eval_stacked_mnist_real_stacks_hit_nearly_all_modes(tmp_path, capsys):
    stacks = make_dataset("stacked-mnist", split="test")
    path = save_npz(tmp_path / "stacked.npz", stacks.images)
    assert main(["eval", "--samples", path, "--data", "stacked-mnist", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["stacked_modes"] >= 990 and m["stacked_kl"] < 0.2
    collapsed = save_npz(tmp_path / "one.npz", stacks.images[:1].expand(500, -1, -1, -1))
    assert main(["eval", "--samples", collapsed, "--data", "stacked-mnist", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["stacked_modes"] == 1 and m["stacked_kl"] == pytest.approx(np.log(1000))


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["eval"], "either a run folder or --samples"),
        (["eval", "--samples", "x.npz"], "needs --data"),
        (["eval", "--samples", "/nonexistent.npz", "--data", "mnist"], "does not exist"),
        (["eval", "/nonexistent/run"], "does not exist"),
    ],
)
def test_eval_bad_input(argv, expect, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]


def test_eval_wrong_image_size_and_missing_inception_weights(run, tmp_path, capsys):
    path = save_npz(tmp_path / "big.npz", torch.zeros(10, 1, 32, 32))
    assert main(["eval", "--samples", path, "--data", "mnist"]) == 2
    assert "(1, 32, 32)" in capsys.readouterr().err
    assert main(["eval", str(run), "--n", "100", "--inception-weights", "/nonexistent.pth"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_training_evaluations_log_and_keep_the_best(run):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("source") == "train"]
    assert [r["step"] for r in train_records] == [30, 60]
    best = ckpt.read_meta(run / "checkpoints" / "best.safetensors")["best"]
    fds = {r["step"]: r["metrics"]["fd_mnistnet"] for r in train_records}
    assert best["metric"] == "fd_mnistnet" and best["value"] == min(fds.values())
    assert best["step"] == min(fds, key=fds.get)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert "metrics/fd_mnistnet" in acc.Tags()["scalars"]


def test_evaluating_never_changes_training(tiny_cfg, tmp_path):
    train(tiny_cfg(steps=40), tmp_path / "plain", progress=False, log=quiet)
    train(
        tiny_cfg(steps=40, eval_every=15, eval_n=200), tmp_path / "eval", progress=False, log=quiet
    )
    a, _ = ckpt.read(last_checkpoint(tmp_path / "plain"), ("G", "D"))
    b, _ = ckpt.read(last_checkpoint(tmp_path / "eval"), ("G", "D"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unknown_best_metric_is_refused_before_training(tiny_cfg, tmp_path):
    with pytest.raises(GankitError, match="unknown best_metric 'sharpness'"):
        train(
            tiny_cfg(steps=5, eval_every=5, best_metric="sharpness"),
            tmp_path / "r",
            progress=False,
            log=quiet,
        )
    assert not (tmp_path / "r").exists()


def test_2d_dataset_is_refused_by_image_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=5)
    cfg.data.dataset = "grid"
    with pytest.raises(GankitError, match="2D points"):
        train(cfg, tmp_path / "r", progress=False, log=quiet)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A randomly initialised Inception-v3 saved as torch-fidelity's weights file: exercises the
    whole offline path (safe loading, torch-fidelity, FID/IS/KID) without the real weights."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from unittest import mock

    with (
        mock.patch.object(fe.torch, "load", return_value={}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", return_value=None),
    ):
        net = fe.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], "unused"
        )
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_metrics_from_local_weights(inception_weights):
    from gankit.metrics import inception_metrics

    digits = make_dataset("mnist", split="test").images
    # Random weights make near-constant features, so only the plumbing is checked here, not
    # that FID separates sets; identical sets must still give FID ~0.
    m = inception_metrics(digits[:16], digits[:16], inception_weights)
    assert set(m) == {
        "fid_inception",
        "is_inception",
        "is_inception_std",
        "kid_inception",
        "kid_inception_std",
    }
    assert all(np.isfinite(v) for v in m.values())
    assert m["is_inception"] >= 1  # exp(KL) >= 1 by construction
    assert abs(m["fid_inception"]) < 1e-3


def test_inception_weights_holding_arbitrary_objects_are_refused(run, tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "note": object()}, evil)  # needs full unpickling
    assert main(["eval", str(run), "--n", "10", "--inception-weights", str(evil)]) == 2
    assert "cannot read Inception weights" in capsys.readouterr().err
