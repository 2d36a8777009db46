"""`gankit report`: one self-contained HTML page about one run or several.

It only reads what a run folder holds (see gankit.train): config.yaml, the TensorBoard
event files, metrics.jsonl and the grids of the fixed noise batch (samples/step-N.png;
a lab's frames/step-N.png). Everything the page shows is inside the file: the plots
are PNG data URIs drawn by matplotlib (Agg, no pyplot state), the grids are PNG data
URIs, the slider is a few lines of inline JS, and there is no link to any server, so
the page opens offline, anywhere, years later.

One run: its config, curves grouped by kind (losses, D's outputs, metrics, health),
the evaluations, the grids over time and the final values. Several runs: the same
curves overlaid (a panel per tag, a line per run), the config keys that differ, and
the final values and last grids side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from gankit import files
from gankit.errors import GankitError

MAX_FRAMES = 20  # grids per run in the slider, evenly spaced from the first to the last
MAX_SIDE = 512  # px: larger grids (and lab frames) are downscaled to this
PLOT_DPI = 80
PANEL = (3.8, 2.6)  # inches per plot panel

# (section title, which tags, one panel with every tag of a run), in page order; a tag
# goes to the first group that takes it.
GROUPS = (
    ("Losses", lambda tag: tag.startswith("loss/"), True),
    ("Discriminator outputs", lambda tag: tag.startswith("D("), True),
    ("Evaluation metrics", lambda tag: tag.startswith("metrics/"), False),
    ("Training health", lambda tag: tag.startswith(("samples/", "guard/")), False),
    ("Other scalars", lambda tag: True, False),
)


@dataclass
class RunData:
    """What the page shows of one run folder."""

    path: Path
    label: str  # its name in legends and table heads
    config_text: str  # config.yaml as written
    config: dict  # parsed; {} when it does not parse
    scalars: dict[str, tuple[list[int], list[float]]]  # tag -> (steps, values)
    evals: list[dict]  # metrics.jsonl's records, in order
    grids: list[tuple[int, Path]]  # (step, PNG) of the fixed noise batch, by step
    real: Path | None  # samples/real.png
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (step, kind, line)


# ----------------------------------------------------------------------------- reading


def check_run(path: Path) -> None:
    """Refuse a folder that is missing or not a run, before any work."""
    path = Path(path)
    if not path.exists():
        raise GankitError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise GankitError(f"{path} is a file, not a run folder")
    if not (path / "config.yaml").is_file():
        raise GankitError(f"{path} is not a run folder: it has no config.yaml")


def load_run(path: Path) -> RunData:
    """Read one run folder."""
    path = Path(path)
    check_run(path)
    try:
        config_text = (path / "config.yaml").read_text(errors="replace")
    except OSError as e:
        raise GankitError(files.describe(e, "read")) from None
    scalars, events = read_events(path)
    grids = sorted(
        (int(m.group(1)), p)
        for folder in ("samples", "frames")
        for p in (path / folder).glob("step-*.png")
        if (m := re.fullmatch(r"step-(\d+)\.png", p.name))
    )
    real = path / "samples" / "real.png"
    return RunData(
        path,
        path.resolve().name or str(path),
        config_text,
        _parse_yaml(config_text),
        scalars,
        read_jsonl(path / "metrics.jsonl"),
        grids,
        real if real.is_file() else None,
        events,
    )


def _parse_yaml(text: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_events(path: Path) -> tuple[dict, list]:
    """Every scalar (all points, no reservoir sampling) and the text events (rollbacks,
    the collapse alarm) of the run's TensorBoard files."""
    if not any(path.glob("events.out.tfevents.*")):
        return {}, []
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    keep = {ea.SCALARS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.HISTOGRAMS: 1}
    acc = ea.EventAccumulator(str(path), size_guidance=keep)
    try:
        acc.Reload()
    except Exception as e:  # a corrupt file: the library's own exception types vary
        raise GankitError(
            f"cannot read the TensorBoard logs of {path}: {type(e).__name__}: {e}"
        ) from None
    tags = acc.Tags()
    scalars = {}
    for tag in tags.get("scalars", []):
        points = sorted({e.step: e.value for e in acc.Scalars(tag)}.items())  # last write wins
        scalars[tag] = ([s for s, _ in points], [v for _, v in points])
    events = []
    for tag in tags.get("tensors", []):
        if not tag.startswith("events/"):
            continue
        kind = tag.removeprefix("events/").removesuffix("/text_summary")
        for e in acc.Tensors(tag):
            for text in tensor_util.make_ndarray(e.tensor_proto).reshape(-1):
                line = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
                events.append((e.step, kind, line))
    return scalars, sorted(events)


def read_jsonl(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line that does not parse (a killed write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
            records.append(record)
    return records


# ----------------------------------------------------------------------------- drawing


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_uri(path: Path) -> str | None:
    """A grid as a small PNG data URI: at most MAX_SIDE px, grey when it is grey, other
    colours quantised to 256; None when the file is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, UnidentifiedImageError):
        return None
    im = im.convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    r, g, b = im.split()
    if r.tobytes() == g.tobytes() == b.tobytes():  # a grey image, whatever its PNG mode
        im = r
    else:
        im = im.quantize(256, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return png_uri(buf.getvalue())


def plot_uri(panels: list[tuple[str, list[tuple[str, list, list, int]]]], legend: bool) -> str:
    """One figure of small panels, each (title, [(label, steps, values, colour index)]),
    three to a row, as a PNG data URI; `legend`: even on panels of one line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, height = PANEL[0] * cols, PANEL[1] * rows
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # Fixed margins in inches (tick labels left, title above, "step" below): a layout
    # engine would draw every figure twice, the report's slowest part.
    grid = fig.add_gridspec(
        rows,
        cols,
        left=0.65 / width,
        right=1 - 0.15 / width,
        bottom=0.45 / height,
        top=1 - 0.3 / height,
        wspace=0.75 / (PANEL[0] - 0.75),
        hspace=0.75 / (PANEL[1] - 0.75),
    )
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        for label, steps, values, colour in lines:
            marker = "o" if len(steps) <= 25 else None  # a few points: show where they are
            ax.plot(steps, values, f"C{colour % 10}", marker=marker, ms=3, lw=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if legend or len(lines) > 1:
            ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI)
    return png_uri(buf.getvalue())


def curve_figures(runs: list[RunData]) -> list[tuple[str, str]]:
    """(group title, plot URI) for each group of tags any run logged. One run: a group
    that overlays its tags gets one panel; otherwise a panel per tag, a line per run."""
    tags = list(dict.fromkeys(t for r in runs for t in r.scalars))
    taken, figures = set(), []
    for title, takes, overlay in GROUPS:
        mine = [t for t in tags if t not in taken and takes(t)]
        taken.update(mine)
        if not mine:
            continue
        if len(runs) == 1 and overlay:
            s = runs[0].scalars
            panels = [(title, [(t, *s[t], i) for i, t in enumerate(mine)])]
        else:
            panels = [
                (
                    tag,
                    [(r.label, *r.scalars[tag], i) for i, r in enumerate(runs) if tag in r.scalars],
                )
                for tag in mine
            ]
        figures.append((title, plot_uri(panels, legend=len(runs) > 1)))
    return figures


# ----------------------------------------------------------------------------- the page


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_section(runs: list[RunData]) -> str:
    parts = []
    if len(runs) > 1:
        flat = [flatten(r.config) for r in runs]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
        if differ:
            rows = [[k, *(f.get(k, "") for f in flat)] for k in differ]
            parts.append("<h3>Differences</h3>" + table(["key", *(r.label for r in runs)], rows))
        else:
            parts.append("<p>The configs are identical.</p>")
    for r in runs:
        parts.append(
            f"<details{' open' if len(runs) == 1 else ''}><summary>{esc(r.path / 'config.yaml')}"
            f"</summary><pre>{esc(r.config_text)}</pre></details>"
        )
    return section("config", "Config", "".join(parts))


def evals_section(runs: list[RunData]) -> str:
    records = [(r, e) for r in runs for e in r.evals]
    if not records:
        return ""
    names = list(dict.fromkeys(k for _, e in records for k in e["metrics"]))
    head = (["run"] if len(runs) > 1 else []) + ["step", "by", "n", *names]
    rows = []
    for r, e in records:
        by = (
            "training"
            if e.get("source") == "train"
            else f"gankit eval ({e.get('checkpoint', '?')})"
        )
        row = [e.get("step", ""), by, e.get("n", ""), *(e["metrics"].get(k, "") for k in names)]
        rows.append(([r.label] if len(runs) > 1 else []) + row)
    return section(
        "evaluations", "Evaluations (metrics.jsonl)", table(head, rows, "wide"), "evaluations"
    )


def final_section(runs: list[RunData]) -> str:
    """Each tag's last value, a column per run; then the last grids side by side."""
    tags = list(dict.fromkeys(t for r in runs for t in r.scalars))
    rows = [["step", *(max((s[-1] for s, _ in r.scalars.values()), default="") for r in runs)]]
    for tag in tags:
        rows.append([tag, *(r.scalars[tag][1][-1] if tag in r.scalars else "" for r in runs)])
    body = table(["", *(r.label for r in runs)], rows, "final")
    if len(runs) > 1:
        cells = []
        for r in runs:
            uri = image_uri(r.grids[-1][1]) if r.grids else None
            img = f'<img class="grid" src="{uri}" alt="">' if uri else "<p>no grid</p>"
            step = f", step {r.grids[-1][0]}" if r.grids else ""
            cells.append(f"<figure>{img}<figcaption>{esc(r.label)}{step}</figcaption></figure>")
        body += f'<div class="side">{"".join(cells)}</div>'
    return section("final", "Final values", body)


def grids_section(runs: list[RunData]) -> str:
    parts = []
    for i, r in enumerate(runs):
        head = f"<h3>{esc(r.label)}</h3>" if len(runs) > 1 else ""
        frames = [(s, u) for s, p in spaced(r.grids, MAX_FRAMES) if (u := image_uri(p))]
        if not frames:
            parts.append(f"{head}<p>No grids in {esc(r.path)}.</p>")
            continue
        imgs = "".join(
            f'<img class="frame" data-step="{s}" src="{u}" alt="step {s}"'
            f"{'' if j == len(frames) - 1 else ' hidden'}>"
            for j, (s, u) in enumerate(frames)
        )
        real = image_uri(r.real) if r.real else None
        real_fig = (
            f'<figure><img class="grid" src="{real}" alt=""><figcaption>real data</figcaption></figure>'
            if real
            else ""
        )
        what = (
            "snapshot" if r.grids[0][1].parent.name == "frames" else "fixed noise"
        )  # lab: frames/
        of = f"{len(frames)} of {len(r.grids)}" if len(frames) < len(r.grids) else len(frames)
        parts.append(
            f'{head}<div class="grids" id="grids-{i}"><div class="controls">'
            f'<button type="button" class="play">play</button> '
            f'<input type="range" class="slider" min="0" max="{len(frames) - 1}" '
            f'value="{len(frames) - 1}" aria-label="grid">'
            f' <span class="frame-label">step {frames[-1][0]}</span> <small>({of} grids)</small></div>'
            f'<div class="side"><figure>{imgs}<figcaption>{what}</figcaption></figure>'
            f"{real_fig}</div></div>"
        )
    return section("grids", "Samples over time", "".join(parts))


def events_section(runs: list[RunData]) -> str:
    rows = [
        ([r.label] if len(runs) > 1 else []) + [s, k, line] for r in runs for s, k, line in r.events
    ]
    if not rows:
        return ""
    head = (["run"] if len(runs) > 1 else []) + ["step", "event", ""]
    return section("events", "Events", table(head, rows))


def spaced(items: list, k: int) -> list:
    """At most k items, evenly spaced, the first and the last always among them."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def section(ident: str, title: str, body: str, cls: str = "") -> str:
    return f'<section id="{ident}" class="{cls}"><h2>{esc(title)}</h2>{body}</section>'


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
th { background: #f4f4f4; }
.wide { display: block; overflow-x: auto; }
pre { background: #f8f8f8; padding: .6em; overflow-x: auto; font-size: 12px; }
img.plot { max-width: 100%; display: block; margin: .4em 0; }
img.frame, img.grid { image-rendering: pixelated; min-width: 256px; max-width: 100%; }
.side { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
.controls { margin: .4em 0; } .controls input { width: 320px; vertical-align: middle; }
"""

# The grid slider: show the chosen frame; play steps through them. No library, no network.
JS = """
document.querySelectorAll('.grids').forEach(function (box) {
  var frames = box.querySelectorAll('img.frame');
  var slider = box.querySelector('.slider'), label = box.querySelector('.frame-label');
  var play = box.querySelector('.play'), timer = null;
  function show(i) {
    frames.forEach(function (f, j) { f.hidden = j !== i; });
    label.textContent = 'step ' + frames[i].dataset.step;
  }
  slider.addEventListener('input', function () { show(Number(slider.value)); });
  play.addEventListener('click', function () {
    if (timer) { clearInterval(timer); timer = null; play.textContent = 'play'; return; }
    play.textContent = 'stop';
    timer = setInterval(function () {
      slider.value = (Number(slider.value) + 1) % frames.length;
      show(Number(slider.value));
    }, 400);
  });
  show(Number(slider.value));
});
"""


def render(runs: list[RunData]) -> str:
    labels = ", ".join(r.label for r in runs)
    when = time.strftime("%Y-%m-%d %H:%M")
    where = "".join(f"<li><code>{esc(r.path.resolve())}</code></li>" for r in runs)
    curves = "".join(
        f'<figure><img class="plot" src="{uri}" alt="{esc(title)}">'
        f"<figcaption>{esc(title)}</figcaption></figure>"
        for title, uri in curve_figures(runs)
    )
    if curves:
        curves = f'<div class="side">{curves}</div>'
    else:
        curves = "<p>No TensorBoard scalars in these run folders.</p>"
    body = "".join(
        [
            f"<h1>gankit report: {esc(labels)}</h1><p>Written {when} from</p><ul>{where}</ul>",
            final_section(runs),
            section("curves", "Curves", curves),
            grids_section(runs),
            evals_section(runs),
            events_section(runs),
            config_section(runs),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>gankit report: {esc(labels)}</title><style>{CSS}</style></head>"
        f"<body>{body}<script>{JS}</script></body></html>\n"
    )


def write_report(paths: list[Path], out: Path) -> int:
    """Read the run folders, write the page to `out` atomically; returns its size in bytes."""
    runs = [load_run(Path(p)) for p in paths]
    names = [r.label for r in runs]
    for r in runs:  # two folders of one name (runs/a and other/a): tell them apart
        if names.count(r.label) > 1:
            r.label = str(r.path)
    data = render(runs).encode()
    try:
        files.write_bytes(Path(out), data)
    except OSError as e:
        raise GankitError(files.describe(e, "write")) from None
    return len(data)
