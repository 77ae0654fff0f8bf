"""The self-contained HTML run report: one file, readable offline, built from a run directory.

``write_report(run_dir)`` writes ``run_dir/report.html``. Images are embedded as base64 data URIs,
the CSS is inline, and there is no script, web font or any other external reference, so the page
can be mailed, archived or opened on a machine without a network. Every piece of text taken
from the run (class names, config values, file names) is HTML-escaped.

A section appears when its inputs exist (``SECTIONS``, one row a section):

======================  ===============================================================
summary, metrics        ``metrics.json`` (headline figures with 95 % intervals, per-class
                        table, confusion matrix, ``at_prior``, notes)
configuration           ``config.yaml``
training                ``curves.png``, ``history.csv`` (first, best and last epochs)
plots                   ``confusion_matrix.png``, ``roc.png``, ``pr.png``, ``reliability.png``
classification report   ``classification_report.txt``
mistakes                ``mistakes.png``
segmentation            ``metrics.json``'s ``segmentation`` (pixel figures) and ``width_check``
                        (widths from predicted masks against true ones), ``iou_histogram.png``,
                        ``overlays_best.png``, ``overlays_worst.png``, ``width_check.png``
more results            any other top-level entry of ``metrics.json`` (e.g. ``localisation``)
class activation maps   ``cams/*.png`` (caption from the file name)
======================  ===============================================================

When the report is built in an evaluation folder separate from the training run,
``config.yaml``, ``history.csv`` and ``curves.png`` are taken from the folder of the checkpoint
named in ``metrics.json`` (``source.checkpoint``) if the evaluation folder has none.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracturekit import __version__
from fracturekit._files import atomic_write_text
from fracturekit.contracts import METRICS_FILE, REPORT_FILE
from fracturekit.metrics import EXTRA_KEYS, METRIC_KEYS

REPORT_NAME = REPORT_FILE
PLOTS = (
    ("confusion_matrix.png", "Confusion matrix: counts and row-normalised (recall per class)"),
    ("roc.png", "ROC curve"),
    ("pr.png", "Precision-recall curve"),
    ("reliability.png", "Reliability diagram and confidence histogram"),
)
# A segmenter's evaluation (``evaluate.SEGMENT_PLOTS``) and the demo's width check.
SEGMENT_FIGURES = (
    ("iou_histogram.png", "Per-image IoU of the crack class"),
    ("overlays_best.png", "Highest-IoU images: truth green, prediction red, both yellow"),
    ("overlays_worst.png", "Lowest-IoU images: truth green, prediction red, both yellow"),
    (
        "width_check.png",
        "Mean crack width per image, measured on the predicted mask and on the true mask "
        "(truth green, prediction red, both yellow)",
    ),
)
# metrics.json entries the segmentation section renders.
SEGMENT_KEYS = ("segmentation", "width_check")
TRAINING_FILES = ("config.yaml", "history.csv", "curves.png")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_CAMS = 120  # beyond this the page grows past what a browser opens comfortably
_HEADLINE = (
    ("f1", "F1"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "Average precision"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("macro_f1", "Macro F1"),
    ("weighted_f1", "Weighted F1"),
    ("cohen_kappa", "Cohen's kappa"),
    ("ece", "ECE (15 bins)"),
)
# metrics.json entries rendered by the metrics section itself; anything else goes to "more".
_KNOWN_METRIC_KEYS = frozenset({*METRIC_KEYS, *EXTRA_KEYS, *SEGMENT_KEYS, "source"})

CSS = """
:root { --fg: #1d232a; --muted: #5b6672; --line: #d8dee4; --bg: #ffffff; --panel: #f5f7f9;
        --accent: #1f5f9e; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e9ec; --muted: #a3adb8; --line: #39424c; --bg: #15191d; --panel: #1e242a;
          --accent: #7fb2e5; }
  img.plot { background: #ffffff; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 40px 0 12px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 22px 0 8px; }
p.meta, figcaption, .muted { color: var(--muted); font-size: 0.88rem; }
nav { margin: 14px 0 8px; font-size: 0.9rem; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.9rem; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left;
         vertical-align: top; }
th { font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; padding-left: 12px; }
table.matrix td { text-align: right; min-width: 4.5em; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 16px; min-width: 150px; }
.card .label { color: var(--muted); font-size: 0.8rem; }
.card .value { font-size: 1.45rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .ci { color: var(--muted); font-size: 0.8rem; }
figure { margin: 12px 0 20px; }
img.plot { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 14px; }
.grid figure { margin: 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 18px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
      padding: 12px; overflow-x: auto; font-size: 0.82rem; line-height: 1.4; }
ul.notes { padding-left: 20px; color: var(--muted); font-size: 0.88rem; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.8rem; }
"""


@dataclass
class _Run:
    """What a run directory holds, with the training folder as a fallback for training files."""

    root: Path
    metrics: dict[str, Any] | None = None
    training_dir: Path | None = None
    used: list[Path] = field(default_factory=list)

    def find(self, name: str) -> Path | None:
        here = self.root / name
        if here.is_file():
            return here
        if name in TRAINING_FILES and self.training_dir is not None:
            there = self.training_dir / name
            if there.is_file():
                return there
        return None


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value != 0 and not 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}"  # a learning rate of 1e-5 must not print as 0.0000
        return f"{value:.{digits}f}"
    return _esc(value)


def _percent(share: float) -> str:
    """0.03 -> ``3%``, 0.185 -> ``18.5%``."""
    return f"{100 * share:.3g}%"


def decision_text(metrics: dict[str, Any]) -> str:
    """How an evaluation decided, in words (plain text; the report escapes it).

    Binary: the positive class, the threshold and the prevalence it was chosen for ("decided for
    3% positives"); multi-class with class priors: the priors the probabilities were moved to.
    """
    prior = metrics.get("prior")
    source = metrics.get("source") if isinstance(metrics.get("source"), dict) else {}
    given = source.get("threshold_from") == "given"
    if metrics.get("positive") is not None:
        text = (
            f"Positive class {metrics['positive']}, decided when its probability is at least "
            f"{_num(metrics.get('threshold'))}"
        )
        if isinstance(prior, int | float) and not given:
            return (
                text
                + (
                    f": decided for {_percent(prior)} positives (the checkpoint's threshold rule on "
                    "its validation scores re-weighted to that prevalence)."
                )
                + support_text(metrics.get("prior_support"), prior)
            )
        if isinstance(prior, int | float):
            return text + (
                f" (threshold given; precision and F1 are also shown re-weighted to "
                f"{_percent(prior)} positives)."
            )
        if source.get("threshold_from") == "checkpoint":
            return text + " (the checkpoint's threshold, chosen at its validation prevalence)."
        return text + "."
    if isinstance(prior, dict) and prior:
        shares = ", ".join(f"{k} {_percent(float(v))}" for k, v in prior.items())
        return (
            f"Decided for class priors {shares}: probabilities moved to them "
            "(Saerens et al. 2002), then the most probable class."
        )
    return ""


def support_text(support: Any, prior: float) -> str:
    """How firmly the validation split sets a prior's threshold, in words (the
    ``prior_support`` entry of ``metrics.json``, ``calibration.prior_support``); empty without
    one. Begins with a space, to follow :func:`decision_text`'s first sentence."""
    if not isinstance(support, dict):
        return ""
    text = (
        f" On the validation split {support['negatives_at_or_above']} of "
        f"{support['validation_negatives']} negatives and {support['positives_at_or_above']} of "
        f"{support['validation_positives']} positives score at or above it"
    )
    low_high = support.get("precision_range")
    if support.get("precision") is not None and low_high:
        text += (
            f": precision {_num(support['precision'])} at {_percent(prior)} positives (read on "
            "the scores that chose the threshold, so optimistic), "
            f"{_num(low_high[0])}–{_num(low_high[1])} over the "
            f"{100 * support['level']:.0f}% interval of the false-positive rate those negatives "
            "give"
        )
    text += "."
    if support.get("few"):
        text += (
            " So few validation negatives set it that another training may put it elsewhere "
            "(a segmenter's threshold steadies when several trainings are averaged as one "
            "checkpoint: train --members 3)."
        )
    return text


def _ci(pair: Any) -> str:
    if not pair:
        return ""
    return f"{_num(pair[0])}–{_num(pair[1])}"


def _img(path: Path, alt: str, css: str = "plot") -> str:
    """An <img> with the file embedded as a base64 data URI."""
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="{css}" alt="{_esc(alt)}" src="data:{mime};base64,{data}">'


def _figure(run: _Run, name: str, caption: str) -> str:
    path = run.find(name)
    if path is None:
        return ""
    run.used.append(path)
    return f"<figure>{_img(path, caption)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1, css: str = "") -> str:
    """A table from already-escaped cells; columns from ``numeric_from`` on are right-aligned."""
    cls = f' class="{css}"' if css else ""

    def cell(tag: str, i: int, text: str) -> str:
        align = ' class="num"' if i >= numeric_from else ""
        return f"<{tag}{align}>{text}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value_html(value: Any, depth: int = 0, *, exact: bool = False) -> str:
    """Any JSON-like value as HTML: mappings as nested key/value tables, short lists inline.

    ``exact`` prints scalars as they are (configuration values) instead of rounding them.
    """
    scalar = (lambda v: "—" if v is None else _esc(v)) if exact else _num
    if isinstance(value, dict):
        if not value:
            return "—"
        if depth >= 3:
            return f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
        rows = [[_esc(k), _value_html(v, depth + 1, exact=exact)] for k, v in value.items()]
        return _table(["key", "value"], rows, numeric_from=2)
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value) and len(value) <= 20:
            return ", ".join(scalar(v) for v in value) or "—"
        return f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
    return scalar(value)


# --------------------------------------------------------------------------------------------
# Sections: each returns its HTML, or None when its inputs are absent
# --------------------------------------------------------------------------------------------


def _summary(run: _Run) -> str | None:
    m = run.metrics
    if m is None:
        return None
    cards = []
    for key, label in (("f1", "F1"), ("roc_auc", "ROC AUC"), ("accuracy", "Accuracy")):
        if key not in m:
            continue
        pair = m.get("ci95", {}).get(key)
        ci = f"95% CI {_ci(pair)}" if pair else ""
        cards.append(
            f'<div class="card"><div class="label">{_esc(label)}</div>'
            f'<div class="value">{_num(m[key], 3)}</div><div class="ci">{ci}</div></div>'
        )
    if m.get("ece") is not None:
        cards.append(
            '<div class="card"><div class="label">Calibration error (ECE)</div>'
            f'<div class="value">{_num(m["ece"], 3)}</div><div class="ci">15 bins</div></div>'
        )
    cards.append(
        f'<div class="card"><div class="label">Images</div><div class="value">{_num(m.get("n"))}'
        f'</div><div class="ci">{len(m.get("classes", []))} classes</div></div>'
    )
    lines = []
    decision = decision_text(m)
    if decision:
        lines.append(_esc(decision))
    source = m.get("source")
    if isinstance(source, dict):
        parts = [
            f"{_esc(k)}: {_esc(source[k])}" for k in ("checkpoint", "data", "split") if k in source
        ]
        if parts:
            lines.append("Evaluated " + "; ".join(parts) + ".")
    text = "".join(f"<p>{line}</p>" for line in lines)
    return f'<div class="cards">{"".join(cards)}</div>{text}'


def _config(run: _Run) -> str | None:
    path = run.find("config.yaml")
    if path is None:
        return None
    run.used.append(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    import yaml

    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError:
        values = None
    origin = "" if path.parent == run.root else f'<p class="muted">From {_esc(path)}.</p>'
    if isinstance(values, dict):
        rows = [[f"<code>{_esc(k)}</code>", _value_html(v, exact=True)] for k, v in values.items()]
        return origin + _table(["option", "value"], rows, numeric_from=2)
    return origin + f"<pre>{_esc(text)}</pre>"


def _read_history(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _as_float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _training(run: _Run) -> str | None:
    parts = []
    curves = _figure(run, "curves.png", "Loss and accuracy, training and validation")
    history = run.find("history.csv")
    if history is not None:
        run.used.append(history)
        columns, rows = _read_history(history)
        if rows:
            # First, best (lowest validation loss when recorded) and last epochs.
            picks = [("first", rows[0])]
            loss_key = next(
                (c for c in ("val_loss", "valid_loss", "val/loss") if c in columns), None
            )
            if loss_key:
                scored = [
                    (v, i)
                    for i, r in enumerate(rows)
                    if (v := _as_float(r.get(loss_key))) is not None
                ]
                if scored:
                    picks.append((f"best {loss_key}", rows[min(scored)[1]]))
            picks.append(("last", rows[-1]))
            table_rows = [[_esc(label), *[_cell(r.get(c)) for c in columns]] for label, r in picks]
            parts.append(
                f"<p>{len(rows)} epoch(s) in history.csv.</p>"
                + _table(["", *[_esc(c) for c in columns]], table_rows)
            )
    if curves:
        parts.insert(0, curves)
    return "".join(parts) or None


def _cell(text: str | None) -> str:
    value = _as_float(text)
    if value is None:
        return _esc(text or "")
    if value.is_integer() and "." not in (text or ""):
        return str(int(value))
    return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4f}"


def _metrics(run: _Run) -> str | None:
    m = run.metrics
    if m is None:
        return None
    ci95 = m.get("ci95") or {}
    rows = [
        [_esc(label), _num(m.get(key)), _esc(_ci(ci95.get(key)))]
        for key, label in _HEADLINE
        if key in m
    ]
    parts = [_table(["metric", "value", "95% interval"], rows)]
    boot = m.get("bootstrap")
    if isinstance(boot, dict) and boot.get("n_boot"):
        parts.append(
            f'<p class="muted">Intervals: {_esc(boot.get("method", "bootstrap"))} bootstrap, '
            f"{_num(boot.get('n_boot'))} resamples, seed {_num(boot.get('seed'))}.</p>"
        )

    at_prior = m.get("at_prior")
    if isinstance(at_prior, dict):
        parts.append("<h3>At another prevalence</h3>")
        parts.append(
            f"<p>With a positive-class prevalence of {_num(at_prior.get('prior'))} (here "
            f"{_num(at_prior.get('evaluated_prevalence'))}) and the same recall and specificity:</p>"
        )
        keys = [k for k in ("prior", "precision", "recall", "specificity", "f1") if k in at_prior]
        parts.append(_table([_esc(k) for k in keys], [[_num(at_prior[k]) for k in keys]], 0))

    per_class = m.get("per_class")
    if isinstance(per_class, dict) and per_class:
        parts.append("<h3>Per class</h3>")
        rows = [
            [_esc(name), *[_num(v.get(k)) for k in ("precision", "recall", "f1", "support")]]
            for name, v in per_class.items()
        ]
        parts.append(_table(["class", "precision", "recall", "F1", "support"], rows))

    cm, classes = m.get("confusion_matrix"), m.get("classes")
    if cm and classes and len(cm) == len(classes):
        parts.append(
            '<h3>Confusion matrix</h3><p class="muted">Rows: true class; columns: '
            "predicted class.</p>"
        )
        rows = [
            [f"<b>{_esc(c)}</b>", *[_num(v) for v in row]]
            for c, row in zip(classes, cm, strict=True)
        ]
        parts.append(_table(["true \\ predicted", *[_esc(c) for c in classes]], rows, css="matrix"))

    notes = m.get("notes") or []
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
    return "".join(parts)


def _plots(run: _Run) -> str | None:
    figures = [_figure(run, name, caption) for name, caption in PLOTS]
    figures = [f for f in figures if f]
    return f'<div class="plots">{"".join(figures)}</div>' if figures else None


def _classification_report(run: _Run) -> str | None:
    path = run.find("classification_report.txt")
    if path is None:
        return None
    run.used.append(path)
    return f"<pre>{_esc(path.read_text(encoding='utf-8', errors='replace'))}</pre>"


def _mistakes(run: _Run) -> str | None:
    return (
        _figure(
            run,
            "mistakes.png",
            "The most confident mistakes: true class, predicted class "
            "and the probability given to the prediction",
        )
        or None
    )


def _segmentation(run: _Run) -> str | None:
    m = run.metrics or {}
    parts = [
        f"<h3>{_esc(key)}</h3>{_value_html(m[key])}"
        for key in SEGMENT_KEYS
        if isinstance(m.get(key), dict)
    ]
    figures = [_figure(run, name, caption) for name, caption in SEGMENT_FIGURES]
    figures = [f for f in figures if f]
    if figures:
        parts.append(f'<div class="plots">{"".join(figures)}</div>')
    return "".join(parts) or None


def _more(run: _Run) -> str | None:
    if run.metrics is None:
        return None
    extra = {k: v for k, v in run.metrics.items() if k not in _KNOWN_METRIC_KEYS}
    if not extra:
        return None
    return "".join(f"<h3>{_esc(k)}</h3>{_value_html(v)}" for k, v in extra.items())


def _caption(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


def _cams(run: _Run) -> str | None:
    folder = run.root / "cams"
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_TYPES)
    if not files:
        return None
    shown = files[:MAX_CAMS]
    run.used.extend(shown)
    items = "".join(
        f"<figure>{_img(p, _caption(p))}<figcaption>{_esc(_caption(p))}</figcaption></figure>"
        for p in shown
    )
    more = ""
    if len(files) > len(shown):
        more = f'<p class="muted">{len(shown)} of {len(files)} maps shown; all are in cams/.</p>'
    return f'<div class="grid">{items}</div>{more}'


SECTIONS: list[tuple[str, str, Callable[[_Run], str | None]]] = [
    ("summary", "Summary", _summary),
    ("config", "Configuration", _config),
    ("training", "Training", _training),
    ("metrics", "Metrics", _metrics),
    ("plots", "Plots", _plots),
    ("classification-report", "Classification report", _classification_report),
    ("mistakes", "Most confident mistakes", _mistakes),
    ("segmentation", "Segmentation", _segmentation),
    ("more", "More results", _more),
    ("cams", "Class activation maps", _cams),
]


def _load_metrics(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return values


def write_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Build ``run_dir/report.html`` from whatever the run directory holds.

    Args:
        run_dir: a training run or evaluation folder.
        title: page title (default: "fracturekit report: <folder name>").

    Returns:
        The path of the written ``report.html``.

    Raises:
        FileNotFoundError: when ``run_dir`` does not exist.
        NotADirectoryError: when ``run_dir`` is a file.
        ValueError: when ``metrics.json`` is not a JSON object.
    """
    root = Path(run_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: run directory not found")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    run = _Run(root=root, metrics=_load_metrics(root / METRICS_FILE))
    if run.metrics is not None:
        run.used.append(root / METRICS_FILE)
        source = run.metrics.get("source")
        if isinstance(source, dict) and source.get("checkpoint"):
            ckpt_dir = Path(str(source["checkpoint"])).parent
            if ckpt_dir.is_dir() and ckpt_dir.resolve() != root.resolve():
                run.training_dir = ckpt_dir

    sections = []
    for anchor, heading, build in SECTIONS:
        body = build(run)
        if body:
            sections.append((anchor, heading, body))

    title = title or f"fracturekit report: {root.resolve().name}"
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{_esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{_esc(h)}</h2>{b}</section>' for a, h, b in sections)
    if not sections:
        body = '<p class="muted">This folder holds none of the files a report is built from.</p>'
    used = sorted(
        {str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in run.used}
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="meta">{_esc(root.resolve())} · generated {generated} · fracturekit '
        f"{_esc(__version__)}</p>"
        f"<nav>{nav}</nav>{body}"
        f"<footer>Built from: {_esc(', '.join(used)) or 'nothing'}.</footer>"
        "</main></body></html>\n"
    )
    return atomic_write_text(root / REPORT_NAME, page)
