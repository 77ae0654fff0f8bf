"""Decisions at 3 % cracks, cross-validated: the false alarms, looked at.

At ``--prior 0.03`` a false alarm among the ~1,000 held-out ``no_crack`` tiles costs as much
precision as a third of a missed crack costs recall, so the few ``no_crack`` tiles a model calls
crack decide the F1 of ``benchmarks/prior_cv.py``. CRACK500's masks are not complete: a
``no_crack`` tile is one with no *marked* crack pixel near it. This script lists the held-out
``no_crack`` tiles each set of folds (``--cv DIR``, from ``prior_cv.py --out DIR``) calls crack
at its fold's ``--prior`` threshold, with the verdict of a by-eye review (``--review FILE``,
default ``benchmarks/crack500_review.txt``: crack / unsure / no, or "not reviewed"), writes them
as a contact sheet (``--sheet PNG``), and scores the view again with the tiles judged ``crack``
(then ``crack`` or ``unsure``) left out of the held-out tiles, then also out of each fold's
stored validation scores, its ``--prior`` threshold read again without them (unmarked cracks
among the validation ``no_crack`` tiles push the threshold up, past real cracks).

Read those rows as an upper bound of what the missing marks cost, not as the tool's F1: only
tiles a model scored high were reviewed (a crack-bearing ``no_crack`` tile the model scores low
stays a negative, where relabelling it would cost recall), by one reviewer, and the models
were still trained on the tiles as labelled. No model runs: the held-out scores are the folds'
``scores.csv``, the validation scores those the checkpoints store; the view and its draws are
``prior_cv.py``'s.

Run:
    .venv/bin/python benchmarks/prior_cv_audit.py --cv DIR [--cv DIR ...]
        [--review FILE] [--sheet PNG] [--prior 0.03] [--draws 200] [--seed 0]
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from _common import start_clock
from prior_cv import (
    best_prior_line,
    cv_parser,
    decided_rows,
    prior_cells,
    prior_columns,
    score_summary,
    stored_validation,
    validation_paths,
)

REVIEW = Path(__file__).with_name("crack500_review.txt")
VERDICTS = ("crack", "unsure", "no")
# name -> (verdicts left out, also out of each fold's validation: its threshold read again)
LEFT_OUT = {
    "as labelled": ((), False),
    "crack: out of held-out": (("crack",), False),
    "crack, unsure: out of held-out": (("crack", "unsure"), False),
    "crack: out of both": (("crack",), True),
    "crack, unsure: out of both": (("crack", "unsure"), True),
}


def read_review(path: Path) -> dict[str, tuple[str, str]]:
    """``patch -> (verdict, what is seen)`` of a review file (``#`` starts a comment)."""
    review: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[1] not in VERDICTS:
            raise SystemExit(f"{path}:{n}: want 'PATCH VERDICT [note]', VERDICT one of {VERDICTS}")
        review[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return review


def flagged(rows: list[dict]) -> list[dict]:
    """The ``no_crack`` rows decided crack at their fold's ``--prior`` threshold, most
    confident first."""
    hits = [r for r in rows if r["label"] == "no_crack" and r["p_crack"] >= r["prior_threshold"]]
    return sorted(hits, key=lambda r: -r["p_crack"])


def without(
    cv: Path, rows: list[dict], out: set[str], validation_too: bool, prior: float
) -> tuple[list[dict], int]:
    """``rows`` less the tiles named in ``out`` and, with ``validation_too``, each fold decided
    again at the ``prior`` threshold read from its stored validation scores less those tiles
    (as ``prior_cv.decided_rows`` reads it); also how many validation tiles were left out."""
    kept = [r for r in rows if Path(r["path"]).stem not in out]
    if not validation_too:
        return kept, 0
    decided: list[dict] = []
    n_val = 0
    for fold in sorted({r["fold"] for r in kept}):
        run = cv / fold / "run"
        y, v = stored_validation(run)
        keep = np.array([Path(p).stem not in out for p in validation_paths(run)])
        n_val += int((~keep).sum())
        test = [r for r in kept if r["fold"] == fold]
        decided += decided_rows(
            fold, y[keep], v[keep], [(r["path"], r["label"]) for r in test],
            [r["p_crack"] for r in test], prior,
        )  # fmt: skip
    return decided, n_val


def write_sheet(items: list[tuple[str, str, str]], out: Path, columns: int = 6) -> None:
    """A contact sheet of tiles (path, caption line 1, caption line 2) at 224 px: line 1 says
    which folds flagged the tile (``CV/fold score``), line 2 the verdict and the tile."""
    from PIL import Image, ImageDraw

    size, caption = 224, 30
    rows = -(-len(items) // columns)
    sheet = Image.new("RGB", (columns * (size + 4), rows * (size + caption + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, first, second) in enumerate(items):
        x, y = (i % columns) * (size + 4), (i // columns) * (size + caption + 4)
        with Image.open(path) as im:
            sheet.paste(im.convert("RGB").resize((size, size)), (x, y))
        draw.text((x + 2, y + size + 2), first, fill="black")
        draw.text((x + 2, y + size + 15), second, fill="black")
    sheet.save(out)


def main() -> None:
    parser = cv_parser(__doc__, None)
    parser.add_argument("--cv", type=Path, action="append", required=True,
                        help="prior_cv.py --out DIR (repeat for several sets of folds)")  # fmt: skip
    parser.add_argument("--review", type=Path, default=REVIEW)
    parser.add_argument("--sheet", type=Path, help="write the flagged tiles here (PNG)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    clock = start_clock()
    con = Console(width=180)
    review = read_review(args.review)
    report: dict = {"review": str(args.review)}
    sheet: dict[str, list[str]] = {}
    for cv in args.cv:
        if not (cv / "scores.csv").is_file():
            raise SystemExit(f"{cv}: no scores.csv (run prior_cv.py --out {cv} first)")
        with (cv / "scores.csv").open(newline="") as fh:
            numbers = ("p_crack", "stored_threshold", "prior_threshold")
            rows = [{k: float(v) if k in numbers else v for k, v in r.items()}
                    for r in csv.DictReader(fh)]  # fmt: skip
        hits = flagged(rows)
        listing = Table(title=f"{cv}: {len(hits)} held-out no_crack tiles decided crack "
                        f"at --prior {args.prior:g}")  # fmt: skip
        for col in ("tile", "fold", "score", "threshold", "verdict", "what is seen"):
            listing.add_column(col, justify="left" if col in ("tile", "what is seen") else "right")
        for r in hits:
            patch = Path(r["path"]).stem
            verdict, seen = review.get(patch, ("not reviewed", ""))
            listing.add_row(patch, r["fold"], f"{r['p_crack']:.4f}",
                            f"{r['prior_threshold']:.4f}", verdict, seen)  # fmt: skip
            sheet.setdefault(r["path"], []).append(f"{cv.name}/{r['fold'][4:]} {r['p_crack']:.3f}")
        con.print(listing)
        table = Table(title=f"{cv}: every no_crack tile + {args.prior:.0%} cracks, "
                      f"{args.draws} draws, the review's tiles left out or not")  # fmt: skip
        for col in ("judged tiles", "out: held", "val", *prior_columns(args.prior),
                    "thresholds of the folds"):  # fmt: skip
            table.add_column(col, justify="right")
        summary: dict = {}
        for name, (verdicts, validation_too) in LEFT_OUT.items():
            out = {p for p, (v, _) in review.items() if v in verdicts}
            kept, n_val = without(cv, rows, out, validation_too, args.prior)
            sv = summary[name] = score_summary(kept, args.prior, args.draws, args.seed)
            sv["left_out"] = {"held_out": len(rows) - len(kept), "validation": n_val}
            sv["thresholds"] = list({r["fold"]: r["prior_threshold"] for r in kept}.values())
            table.add_row(name, str(len(rows) - len(kept)), str(n_val), *prior_cells(sv),
                          " ".join(f"{t:.3f}" for t in sv["thresholds"]))  # fmt: skip
        con.print(table)
        con.print(best_prior_line({"as labelled": summary["as labelled"]}, args.prior))
        summary["flagged"] = [
            {"tile": Path(r["path"]).stem, "fold": r["fold"], "score": r["p_crack"],
             "verdict": review.get(Path(r["path"]).stem, ("not reviewed", ""))[0]}
            for r in hits
        ]  # fmt: skip
        report[str(cv)] = summary
    if args.sheet:
        items = [
            (path, " ".join(where), f"{review.get(Path(path).stem, ('not reviewed', ''))[0]}: "
             f"{Path(path).stem.removeprefix('CRACK500_2016')}")
            for path, where in sorted(sheet.items())
        ]  # fmt: skip
        write_sheet(items, args.sheet)
        con.print(f"written {args.sheet} ({len(items)} tiles)")
    report["machine"] = clock.line()
    out = args.cv[0] / "audit.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    con.print(f"written {out}")


if __name__ == "__main__":
    main()
