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
    row = zoo.run_preset(zoo.CONFIGS / "cgan-mnist.yaml", tmp_path, steps=3, n=200)
    assert row["steps"] == 3 and "label_accuracy_min" in row["metrics"]
    table = zoo.table([row])
    assert "cgan-mnist" in table and table.count("\n") == 2
