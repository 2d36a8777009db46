"""The bench scripts still run against the current API (their figures are not asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

from gankit.errors import GankitError

BENCH = Path(__file__).parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_counts_the_flops_of_a_step():
    throughput = load("throughput")
    assert throughput.gankit_flops_per_image(8, "cpu") > 1e6


def test_zoo_trains_scores_and_tabulates_a_shortened_preset(tmp_path):
    zoo = load("zoo")
    row = zoo.run_preset("cgan-mnist", tmp_path, steps=3, n=200)
    assert row["steps"] == 3 and "label_accuracy_min" in row["metrics"]
    table = zoo.table([row])
    assert "cgan-mnist" in table and table.count("\n") == 2


def test_zoo_plot_puts_the_label_of_the_lower_of_two_close_points_below_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zoo = load("zoo")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_yscale("log")
    ax.set_xlim(0, 10)
    ax.set_ylim(1, 100)
    rows = [{"preset": n} for n in ("lower-mnist", "upper-mnist", "far-mnist")]
    points = [(3.0, 16.0), (3.0, 17.0), (8.0, 16.0)]  # the lower of the close two first
    (_, lower_dy), (_, upper_dy), (_, far_dy) = zoo.label_offsets(ax, rows, points)
    plt.close(fig)
    assert upper_dy > 0 and far_dy > 0 and lower_dy < 0


def test_mode_collapse_runs_a_shortened_remedy_and_tabulates_worst_seeds(tmp_path):
    mc = load("mode_collapse")
    rows = [mc.one_run("r1", "ring", seed, 4, str(tmp_path)) for seed in (0, 1)]
    assert [r["steps"] for r in rows] == [4, 4]
    line = mc.table(rows).splitlines()[-1].split("|")[1:-1]  # one row: r1 on the ring, 2 seeds
    cells = [c.strip() for c in line]
    assert cells[:3] == ["r1", "ring", "2"]
    assert float(cells[6]) == round(min(r["high_quality"] for r in rows), 1)
    assert float(cells[8]) == round(max(r["mode_kl"] for r in rows), 3)


def test_zoo_covers_every_mnist_preset_and_plots_fd_against_time(tmp_path):
    zoo = load("zoo")
    names = zoo.mnist_presets()
    assert {"r3gan-mnist", "dcgan-mnist", "lapgan-mnist", "vae-mnist"} <= set(names)
    assert "r3gan-stacked-mnist" not in names and "dcgan-cifar10" not in names
    rows = [  # two presets' rows as run_preset returns them, figures made up
        {"preset": "a-mnist", "wall_s": 60.0, "metrics": {"fd_mnistnet": 30.0}},
        {
            "preset": "b-mnist",
            "wall_s": 300.0,
            "metrics": {"fd_mnistnet": 5.0, "label_accuracy": 0.9},
        },
    ]
    zoo.plot(rows, tmp_path / "zoo.png")
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "zoo.png").convert("L"))
    assert pixels.shape[1] > 400 and len(np.unique(pixels)) > 10


def test_stacked_scores_a_shortened_preset_and_times_its_dcgan_baseline(tmp_path):
    stacked = load("stacked")
    from gankit.evaluate import Evaluator

    evaluator = Evaluator("stacked-mnist", log=lambda *a: None)
    from gankit.config import load_config

    cfg = load_config("r3gan-stacked-mnist", {"steps": "2", "device": "cpu"})
    row = stacked.train_and_score("s0", cfg, tmp_path, evaluator, 300)
    assert row["steps"] == 2 and row["family"] == "r3gan"
    assert 1 <= row["stacked_modes"] <= 300 and row["stacked_kl"] >= 0
    base = stacked.baseline_config(64, 5, "cpu")
    assert (base.model.family, base.train.loss, base.data.dataset) == (
        "dcgan",
        "non-saturating",
        "stacked-mnist",
    )
    assert base.train.r1 == base.train.r2 == base.train.ema == 0
    assert stacked.baseline_steps(64, 1e6, tmp_path, "cpu") > 100  # a long budget: many steps
    line = stacked.table([row]).splitlines()[-1]
    assert f"| {row['stacked_modes']:.0f} |" in line
    with pytest.raises(GankitError, match="3-channel images, not single digits"):
        stacked.single_digit_sampler(str(tmp_path / "s0"), "cpu")


def test_stacked_runs_the_seeds_from_first_seed(tmp_path, monkeypatch):
    """Seeds can be split between processes: --seeds 1 --first-seed 2 trains seed 2 alone."""
    stacked, log = load("stacked"), tmp_path / "stacked.jsonl"
    argv = ["--seeds", "1", "--first-seed", "2", "--steps", "2", "--n", "300", "--no-baseline"]
    monkeypatch.setattr("sys.argv", ["stacked.py", *argv, "--log", str(log)])
    assert stacked.main() == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["run"], r["seed"], r["steps"]) for r in rows] == [("r3gan-stacked-mnist-2", 2, 2)]


def test_stacked_stacks_a_single_digit_run_as_three_independent_channels(
    tmp_path, capsys, monkeypatch
):
    """Independent channels with one marginal: the stacks' KL is three times the digits' KL
    (plus a finite-sample bias), and they hit more modes than one channel's ten."""
    stacked = load("stacked")
    from gankit.config import load_config
    from gankit.evaluate import Evaluator
    from gankit.train import train

    run = tmp_path / "mlp"
    cfg = load_config("mlp-mnist", {"steps": "200", "device": "cpu"})
    train(cfg, run, progress=False, log=lambda *a: None)
    sampler = stacked.single_digit_sampler(str(run), "cpu")
    evaluator = Evaluator("stacked-mnist", log=lambda *a: None)
    row = stacked.stack_single(str(run), sampler, evaluator, 300)
    assert 0.5 < row["digit_kl"] < 2.2  # neither collapsed onto one class nor uniform
    assert abs(row["stacked_kl"] - 3 * row["digit_kl"]) < 0.2
    assert row["stacked_modes"] > 10
    assert f"| {row['stacked_kl']:.3f} |" in stacked.stack_table([row])

    missing = tmp_path / "missing"  # every run is checked before any is scored
    monkeypatch.setattr("sys.argv", ["stacked.py", "--stack-runs", str(run), str(missing)])
    assert stacked.main() == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(missing) in captured.err and not captured.out
