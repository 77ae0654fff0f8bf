"""Segmentation inference speed: the U-Net against the classifier of the same backbone.

Images per second of the one inference path, ``Predictor``: ``predict_proba_maps`` (pixel
probabilities at 224 x 224, no resize to an image size) for an EfficientNet-Lite0 U-Net and
``predict_proba`` (class probabilities) for the EfficientNet-Lite0 classifier (and, for comparison,
the FPN decoder: quarter resolution, upsampled 4x; and the three-member mean of ``survey_segment``,
once with members whose frozen first two encoder stages are equal, as ``train --members`` leaves
them, which ``SegmenterMean`` runs once for all members, and once with members that share nothing),
each on PyTorch (channels-last, as ``Predictor`` runs it) and on ONNX Runtime (the file
``export_onnx`` writes, parity-checked), all fed the same preprocessed batch. Random initialisation
(speed does not depend on the weights), 224 px, batch 16, 2 threads for both runtimes. The set-ups
are timed in interleaved rounds (each once a round, the first round warm-up), so a shared machine's
load hits them alike; a cell is the median round. The fifth column is the segmenter's time per
image over the classifier's on the same runtime (target: within 2x), the sixth a mean's over one
U-Net small's (3x when nothing is shared).

Run:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/segment_infer_speed.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

BATCH = 16
THREADS = 2
IMG_SIZE = 224
MEMBERS = 3  # survey_segment: train --members 3
FROZEN = 2  # encoder stages default_segment leaves frozen (freeze: train-last, train_last: 3)


def _predictors(root: Path) -> dict:
    """The four set-ups: ``{(model, runtime): (predictor, method name)}``."""
    import onnxruntime as ort

    from fracturekit.export import export_onnx
    from fracturekit.models import SegmenterMean, build_model, build_segmenter, save_checkpoint
    from fracturekit.predict import OrtGraph, Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "segmenter (U-Net)": build_segmenter("efficientnet_lite0", pretrained=False),
            "segmenter (U-Net small)": build_segmenter(
                "efficientnet_lite0", decoder="unet_small", pretrained=False
            ),
            "segmenter (FPN)": build_segmenter(
                "efficientnet_lite0", decoder="fpn", pretrained=False
            ),
            "classifier": build_model("efficientnet_lite0", 2, pretrained=False),
        }
        for shared in (False, True):
            members = [
                build_segmenter("efficientnet_lite0", decoder="unet_small", pretrained=False)
                for _ in range(MEMBERS)
            ]
            if shared:  # what train --members leaves: the frozen first stages equal
                for member in members[1:]:
                    for i in range(FROZEN):
                        stage = members[0].encoder_stages()[i]
                        member.encoder_stages()[i].load_state_dict(stage.state_dict())
            mean = SegmenterMean(members).eval()
            assert mean.shared_stages() == (FROZEN if shared else 0)
            how = f"first {FROZEN} stages run once" if shared else "each member whole"
            models[f"segmenter mean ({MEMBERS} x U-Net small, {how})"] = mean
    setups = {}
    for name, model in models.items():
        stem = "".join(c if c.isalnum() else "_" for c in name)
        ckpt = save_checkpoint(root / f"{stem}.pt", model, {"img_size": IMG_SIZE})
        onnx_path = export_onnx(ckpt, ckpt.with_suffix(".onnx")).path
        method = "predict_proba_maps" if name.startswith("segmenter") else "predict_proba"
        setups[(name, "PyTorch")] = (Predictor.from_checkpoint(ckpt), method)
        onnx_p = Predictor.from_checkpoint(onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.log_severity_level = 3
        onnx_p.session = OrtGraph(
            ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        )
        setups[(name, "ONNX Runtime")] = (onnx_p, method)
    return setups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after the warm-up")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE)
    with tempfile.TemporaryDirectory(prefix="segment-infer-") as tmp:
        setups = _predictors(Path(tmp))
        load = os.getloadavg()[0]
        times: dict[tuple[str, str], list[float]] = {key: [] for key in setups}
        for r in range(args.rounds + 1):
            for key, (predictor, method) in setups.items():
                t = time.perf_counter()
                getattr(predictor, method)(x)
                if r:  # round 0 is warm-up: lazy initialisation, kernel selection
                    times[key].append(time.perf_counter() - t)
    per_image = {key: statistics.median(v) / BATCH for key, v in times.items()}

    print(
        f"\nEfficientNet-Lite0, {IMG_SIZE} px, batch {BATCH}, {THREADS} threads, float32, "
        f"median of {args.rounds} interleaved rounds; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; load average {load:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after\n"
    )
    print(
        "| model | runtime | img/s | ms / image | segmenter / classifier time per image "
        "| mean / one U-Net small |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (name, runtime), seconds in per_image.items():
        ratio = seconds / per_image[("classifier", runtime)]
        cell = f"{ratio:.2f}x" if name.startswith("segmenter") else ""
        one = per_image[("segmenter (U-Net small)", runtime)]
        mean = f"{seconds / one:.2f}x" if name.startswith("segmenter mean") else ""
        print(
            f"| {name} | {runtime} | {1 / seconds:.1f} | {1000 * seconds:.1f} | {cell} | {mean} |"
        )


if __name__ == "__main__":
    main()
