"""The bench scripts still run against the current API (their figures are not asserted)."""

import importlib.util
from pathlib import Path

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


def test_mode_collapse_runs_a_shortened_remedy_and_tabulates_worst_seeds(tmp_path):
    mc = load("mode_collapse")
    rows = [mc.one_run("r1", "ring", seed, 4, str(tmp_path)) for seed in (0, 1)]
    assert [r["steps"] for r in rows] == [4, 4]
    line = mc.table(rows).splitlines()[-1].split("|")[1:-1]  # one row: r1 on the ring, 2 seeds
    cells = [c.strip() for c in line]
    assert cells[:3] == ["r1", "ring", "2"]
    assert float(cells[6]) == round(min(r["high_quality"] for r in rows), 1)
    assert float(cells[8]) == round(max(r["mode_kl"] for r in rows), 3)
