"""Does the network's attention follow the crack's width? (seed 1's figure 13, on synthetic data)

A classifier is trained with ``fracturekit.train.train`` on a synthetic set from
``fracturekit.synthetic.generate_dataset`` (or ``--checkpoint`` is used). New synthetic crack
images, whose width profiles are known exactly, are then explained: the heat map of the crack
class is sampled (bilinear) along the skeleton of the exact mask (``fracturekit.width
.measure_mask``) and compared with the width there, both the measured width (what
``fracturekit width --model`` reports) and the true width of the generator (points where it is
well defined, ``synthetic.match_truth``). Per crack: Pearson and Spearman correlation
(``scipy.stats``); the table gives their median over cracks, the share of cracks with a positive
correlation, and the correlation over all points pooled (each crack's series normalised to
[0, 1] first). ``attention_width.png`` plots a few cracks and the pooled scatter.

Run (trains on 600 images of 224 px; ~3 min on 2 idle CPU cores):
    .venv/bin/python benchmarks/attention_width.py --out runs/bench_attention
Reduced check:
    .venv/bin/python benchmarks/attention_width.py --out runs/bench_att_small --n-train 120 \\
        --n-test 10
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_parser, start_clock  # noqa: E402 - after the path it is found on


def main() -> None:
    parser = bench_parser(__doc__, Path("runs/bench_attention"), data=None)
    parser.add_argument("--checkpoint", type=Path, help="skip training: use this checkpoint")
    parser.add_argument("--kind", default="mixed", help="synthetic surface kind")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=60, help="crack images explained")
    parser.add_argument("--config", default="default")
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config overrides (default: fine-tune the last four blocks on four cached views, "
        "as benchmarks/localisation.py)",
    )
    parser.add_argument("--methods", default="hirescam,gradcam,layercam")
    parser.add_argument("--layers", default="fine,cam")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.set is None:
        from localisation import FINE_TUNE_RECIPE

        args.set = list(FINE_TUNE_RECIPE)

    import numpy as np
    from PIL import Image
    from rich.console import Console
    from rich.table import Table
    from scipy import ndimage as ndi
    from scipy import stats

    from fracturekit.config import resolve_config
    from fracturekit.explain import (
        attention_along_crack,
        attention_width_figure,
        compute_cams,
        overlay,
        resize_map,
    )
    from fracturekit.predict import Predictor
    from fracturekit.synthetic import generate_dataset, match_truth, render_sample
    from fracturekit.train import train
    from fracturekit.width import measure_mask

    clock = start_clock()
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = args.out / "run" / "model.pt"
        if not ckpt.exists():
            data = generate_dataset(
                args.out / "train_data", args.n_train, args.size, args.seed, kind=args.kind,
                overwrite=True,
            )  # fmt: skip
            overrides = dict(kv.split("=", 1) for kv in args.set)
            cfg = resolve_config({"data": str(data), "val_fraction": 0.2, **overrides}, args.config)
            t0 = time.perf_counter()
            result = train(cfg, args.out / "run", progress=False, overwrite=True)
            print(f"trained in {time.perf_counter() - t0:.0f} s ({result.mode}); validation "
                  f"F1 {result.metrics.get('f1')}", flush=True)  # fmt: skip
            ckpt = result.checkpoint
    predictor = Predictor.from_checkpoint(ckpt)

    rng = np.random.default_rng(args.seed + 1000)  # images never seen in training
    samples = [render_sample(rng, args.size, args.kind, True) for _ in range(args.n_test)]
    measured = [measure_mask(s.mask) for s in samples]
    images = [Image.fromarray(s.image) for s in samples]

    import torch

    batch = torch.stack([predictor.preprocess(im) for im in images])
    table = Table(title=f"Heat map vs crack width along the skeleton, {args.n_test} images")
    for col in ("method", "layer", "cracks", "median Pearson", "median Spearman", "share > 0",
                "pooled Pearson", "pooled Spearman", "vs true width: Pearson", "Spearman"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("method", "layer") else "right")
    figure_done = False
    for method in [m for m in args.methods.split(",") if m]:
        for layer in [x for x in args.layers.split(",") if x]:
            cams = np.concatenate(
                [
                    compute_cams(
                        predictor.model,
                        batch[i : i + 16],
                        method=method,
                        layer=None if layer == "cam" else layer.split("+"),
                        classes=predictor.classes,
                        positive=predictor.positive,
                    )
                    for i in range(0, len(batch), 16)
                ]
            )
            rows, true_a, true_w, by_image = [], [], [], []
            for sample, cracks, cam in zip(samples, measured, cams, strict=True):
                heat = resize_map(cam, (args.size, args.size))
                by_image.append([])
                for m in cracks:
                    row = attention_along_crack(heat, m)
                    rows.append(row)
                    by_image[-1].append(row)
                    truth = match_truth(sample.cracks, m.skeleton_rc[:, ::-1], args.size)
                    ok = truth.well_defined & np.isfinite(truth.width)
                    if ok.sum() >= 3:
                        a = ndi.map_coordinates(heat, m.skeleton_rc[ok].T, order=1)
                        true_a.append((a - a.min()) / max(np.ptp(a), 1e-9))
                        w = truth.width[ok]
                        true_w.append((w - w.min()) / max(np.ptp(w), 1e-9))
            pear = [r["pearson"] for r in rows if r["pearson"] is not None]
            spear = [r["spearman"] for r in rows if r["spearman"] is not None]
            a_all = np.concatenate([r["attention"] for r in rows])
            w_all = np.concatenate([r["width"] for r in rows])
            ta, tw = np.concatenate(true_a), np.concatenate(true_w)
            table.add_row(
                method,
                layer,
                str(len(pear)),
                f"{np.median(pear):.3f}",
                f"{np.median(spear):.3f}",
                f"{np.mean(np.array(pear) > 0):.2f}",
                f"{stats.pearsonr(a_all, w_all)[0]:.3f}",
                f"{stats.spearmanr(a_all, w_all)[0]:.3f}",
                f"{stats.pearsonr(ta, tw)[0]:.3f}",
                f"{stats.spearmanr(ta, tw)[0]:.3f}",
            )
            if not figure_done:  # the image with the most crack points, first combination
                best = max(range(len(samples)), key=lambda i: sum(r["n"] for r in by_image[i]))
                args.out.mkdir(parents=True, exist_ok=True)
                attention_width_figure(
                    by_image[best],
                    args.out / "attention_width.png",
                    f"synthetic crack, {method} at {layer}: heat map vs width",
                    image=Image.fromarray(np.asarray(overlay(images[best], cams[best], alpha=0.4))),
                )
                figure_done = True
    con = Console(width=170)
    con.print(table)
    con.print(f"checkpoint {ckpt}; {clock.line()}")


if __name__ == "__main__":
    main()
