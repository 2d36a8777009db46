"""`gankit report`: one self-contained HTML page, checked in a real browser.

The browser is Debian's headless Chromium driven by Playwright (never a downloaded
browser: `make test` installs the system package). Without a chromium on the PATH
the browser tests skip, except in CI (the variable CI set), where they fail.
"""

import base64
import contextlib
import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error
from gankit.cli import main
from gankit.report import GROUPS, MAX_FRAMES

TINY = ["--g-widths", "32,64", "--d-widths", "64,32", "--device", "cpu", "--no-progress"]
FAST = ["--batch-size", "32", "--log-every", "4", "--sample-every", "4", "--ckpt-every", "100"]
CHROMIUM = os.environ.get("GANKIT_CHROMIUM") or shutil.which("chromium")


def run_cli(argv) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two tiny runs (`a` evaluated every 10 steps), the one-run report of `a` and the
    two-run report, with what train and report printed."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["--runs-dir", str(runs), *TINY, *FAST]
    trained = run_cli(
        ["train", "--steps", "20", "--name", "a", "--eval-every", "10", "--eval-n", "200", *common]
    )
    run_cli(["train", "--steps", "12", "--name", "b", "--lr-d", "0.001", *common])
    one, two = runs / "a" / "report.html", runs / "both.html"
    said = run_cli(["report", str(runs / "a")])  # the default --out: RUN/report.html
    said += run_cli(["report", str(runs / "a"), str(runs / "b"), "--out", str(two)])
    return {"runs": runs, "one": one, "two": two, "trained": trained, "said": said}


def data_uris(page: str, cls: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(rf'<img class="{cls}"[^>]*src="data:image/png;base64,([^"]+)"', page)
    ]


def colours(png: bytes) -> set[str]:
    """Which of matplotlib's first two line colours (C0 blue, C1 orange) a plot shows."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    named = {"C0": (31, 119, 180), "C1": (255, 127, 14)}
    return {k for k, c in named.items() if (np.abs(rgb - c).sum(1) < 40).sum() > 20}


def test_train_prints_the_report_command(reports):
    run = reports["runs"] / "a"
    assert f"gankit report {run} --out {run / 'report.html'}" in reports["trained"]


def test_report_prints_path_and_size_and_stays_small(reports):
    for key in ("one", "two"):
        size = reports[key].stat().st_size
        said = re.search(
            rf"wrote {re.escape(str(reports[key]))} \(([\d.]+) (kB|MB)\)", reports["said"]
        )
        assert said and abs(float(said[1]) * {"kB": 1e3, "MB": 1e6}[said[2]] - size) < 0.05e6
        assert size < 3_000_000


def test_one_run_page_holds_config_curves_evaluations_and_grids(reports):
    page = reports["one"].read_text()
    for ident in ("final", "curves", "grids", "evaluations", "config"):
        assert f'<section id="{ident}"' in page
    assert "family: mlp" in page  # config.yaml
    plots = data_uris(page, "plot")
    # losses, D's outputs, evaluation metrics, health (diversity), other (images/s)
    assert len(plots) == len(GROUPS)
    for png in plots:  # every plot draws its lines, not empty axes
        assert "C0" in colours(png)
    frames = data_uris(page, "frame")  # grids at steps 4, 8, ..., 20
    assert len(frames) == 5 and len(set(frames)) == 5
    assert "metrics/fd_mnistnet" in page


def test_several_runs_are_overlaid_and_side_by_side(reports):
    page = reports["two"].read_text()
    plots = data_uris(page, "plot")
    assert all(colours(png) == {"C0", "C1"} for png in plots[:2])  # losses, D: a line per run
    assert page.count('class="grids"') == 2
    assert len(data_uris(page, "grid")) == 2 + 2  # real data of each run; last grids side by side
    assert re.search(r"<td>train\.lr_d</td><td>0\.0002</td><td>0\.001</td>", page)


def test_grids_are_limited_and_evenly_spaced(reports, tmp_path):
    run = tmp_path / "many"  # a config and 100 grids; no TensorBoard logs (nothing to plot)
    (run / "samples").mkdir(parents=True)
    shutil.copy(reports["runs"] / "a" / "config.yaml", run)
    grid = (reports["runs"] / "a" / "samples" / "step-00000004.png").read_bytes()
    for step in range(4, 404, 4):
        (run / "samples" / f"step-{step:08d}.png").write_bytes(grid)
    run_cli(["report", str(run)])
    page = (run / "report.html").read_text()
    steps = [int(s) for s in re.findall(r'class="frame" data-step="(\d+)"', page)]
    assert len(steps) == MAX_FRAMES and steps[0] == 4 and steps[-1] == 400
    gaps = np.diff(steps)
    assert gaps.max() - gaps.min() <= 4  # even, to one grid
    assert "No TensorBoard scalars" in page


def test_an_evaluation_line_cut_short_by_a_kill_is_skipped(reports, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(reports["runs"] / "a", run, ignore=shutil.ignore_patterns("report.html"))
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole + whole.splitlines()[-1][:40])  # no newline
    run_cli(["report", str(run)])
    page = (run / "report.html").read_text()
    rows = page.split('<section id="evaluations"')[1].split("</section>")[0].count("<tr")
    assert len(whole.splitlines()) == 2 and rows == 1 + 2  # header and the two whole records


def test_page_asks_for_nothing_outside_itself(reports):
    for key in ("one", "two"):
        page = reports[key].read_text()
        assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//|@import", page, re.I)


# ----------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        why = "no chromium on the PATH: `make test` installs Debian's (apt-get install chromium)"
        if os.environ.get("CI"):  # .ci/run: the browser test must run, not skip
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)  # the system's: nothing downloaded
        yield b
        b.close()


def open_page(browser, path):
    """The page, and its console errors, page errors and every request it made."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    log = {"errors": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and log["errors"].append(m.text))
    page.on("pageerror", lambda e: log["errors"].append(str(e)))
    page.on("request", lambda r: log["requests"].append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    return page, log


@pytest.mark.parametrize("key", ["one", "two"])
def test_page_renders_without_errors_or_requests(browser, reports, key):
    page, log = open_page(browser, reports[key])
    try:
        others = [u for u in log["requests"] if u != reports[key].as_uri()]
        assert all(u.startswith("data:") for u in others), others
        assert log["errors"] == []
        images = page.locator("img")
        assert images.count() > 0
        assert page.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        n_plots = page.locator("#curves img.plot").count()
        assert n_plots == len(GROUPS)  # a figure per group of tags (two runs: a panel per tag)
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"))
        assert shot.std() > 20, "the page looks blank"
    finally:
        page.close()


def test_grid_slider_shows_another_frame(browser, reports):
    page, log = open_page(browser, reports["one"])
    try:
        box = page.locator(".grids").first
        shown = box.locator("img.frame:visible")
        assert shown.count() == 1 and shown.get_attribute("data-step") == "20"
        before = shown.screenshot()
        box.locator(".slider").fill("0")
        assert shown.count() == 1 and shown.get_attribute("data-step") == "4"
        assert box.locator(".frame-label").inner_text() == "step 4"
        assert shown.screenshot() != before
        assert log["errors"] == []
    finally:
        page.close()


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(reports, tmp_path, capsys):
    run = str(reports["runs"] / "a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dir.html").mkdir()
    (tmp_path / "file").write_text("")
    cases = [
        (["report"], "required"),
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["report", str(tmp_path / "empty")], "not a run folder: it has no config.yaml"),
        (["report", str(tmp_path / "file")], "is a file, not a run folder"),
        (["report", run, str(reports["runs"] / "b")], "--out"),
        (["report", run, "--out", str(tmp_path / "r.pdf")], "must end in .html"),
        (["report", run, "--out", str(tmp_path / "file" / "r.html")], "is a file, not a folder"),
        (["report", run, "--out", str(tmp_path / "dir.html")], "is a folder"),
    ]
    for argv, expect in cases:
        one_line_error(capsys, argv, expect)


def test_a_refused_write_is_one_line_and_leaves_no_file(reports, tmp_path, capsys, monkeypatch):
    import errno

    from gankit import files

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(files.temp_path(path)))

    out = tmp_path / "r.html"
    monkeypatch.setattr(files, "write_with", full)
    monkeypatch.setattr("gankit.report.render", lambda runs: "")  # only the write matters
    one_line_error(
        capsys, ["report", str(reports["runs"] / "a"), "--out", str(out)], f"cannot write {out}"
    )
    assert not out.exists()
