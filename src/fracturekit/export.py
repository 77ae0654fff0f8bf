"""ONNX export with a parity check: ``export_onnx(ckpt, out)``.

The exported graph maps a preprocessed batch ``[N, C, H, W]`` (float32, the checkpoint's own
size and normalisation) to logits ``[N, num_classes]``; the batch axis is dynamic. Temperature,
threshold and the class names stay outside the graph, in the file's metadata, so
``Predictor.from_checkpoint("model.onnx")`` applies them exactly as the PyTorch backend does.

Metadata (``metadata_props``):

* ``fracturekit_meta``: JSON of the whole checkpoint meta (backbone, classes, img_size, mean,
  std, interpolation, in_chans, threshold, temperature, positive, config, metrics, versions);
  non-finite numbers become ``null`` so any JSON reader accepts it.
* readable twins for other tools: ``classes``, ``img_size``, ``mean``, ``std``, ``in_chans``,
  ``interpolation``, ``threshold``, ``temperature``, ``positive``, ``backbone``.

Before the file appears at ``out``, onnxruntime runs it on real inputs (the images given, or
synthetic crack and no-crack images) at batch size N and 1 and its class probabilities are
compared with PyTorch's; a model off by more than ``atol`` is refused and nothing is written.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit._files import atomic_write
from fracturekit.contracts import ONNX_META_KEY

if TYPE_CHECKING:
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
READABLE_KEYS = (
    "backbone",
    "classes",
    "img_size",
    "in_chans",
    "mean",
    "std",
    "interpolation",
    "threshold",
    "temperature",
    "positive",
)
N_SYNTHETIC = 8  # check images rendered when none are given (half with a crack)


class ExportError(ValueError):
    """The export failed or the exported model disagrees with PyTorch; nothing was written."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely it matches PyTorch.

    Attributes:
        path: the ONNX file.
        opset: ONNX opset version of the graph.
        input_name: name of the graph input (``[N, C, H, W]`` float32).
        output_name: name of the graph output (logits ``[N, num_classes]``).
        input_shape: ``(C, H, W)`` of one preprocessed image.
        batch_sizes: the batch sizes the parity check ran at.
        n_images: how many check images were used.
        check_source: ``"images"`` (given files) or ``"synthetic"``.
        max_abs_diff: largest absolute difference of class probabilities, ONNX vs PyTorch.
        max_abs_diff_logits: the same for raw logits (for information).
        atol: the tolerance the check applied to probabilities.
        size_bytes: size of the written file.
        seconds: wall time of export plus check.
        metadata: the readable metadata keys written (``fracturekit_meta`` excluded).
    """

    path: Path
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    batch_sizes: list[int]
    n_images: int
    check_source: str
    max_abs_diff: float
    max_abs_diff_logits: float
    atol: float
    size_bytes: int = 0
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol


def _json_safe(value: Any) -> Any:
    """Plain JSON values; NaN/inf become None (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _json_safe(value.item())
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file for a checkpoint's ``meta``."""
    safe = _json_safe(meta)
    props = {ONNX_META_KEY: json.dumps(safe, sort_keys=True, allow_nan=False)}
    for key in READABLE_KEYS:
        if key in safe:
            value = safe[key]
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def _check_batch(
    meta: dict[str, Any], check_images: Sequence[str | Path] | None
) -> tuple[torch.Tensor, str]:
    """Preprocessed check inputs ``[N, C, H, W]``: the given images or synthetic ones."""
    import torch

    from fracturekit.data import build_transforms
    from fracturekit.io import read_image

    in_chans = int(meta.get("in_chans", 3))
    transform = build_transforms(
        int(meta["img_size"]),
        meta["mean"],
        meta["std"],
        augment="none",
        channels=in_chans,
        interpolation=meta.get("interpolation", "bilinear"),
    )
    if check_images:
        images = [read_image(p, channels=in_chans) for p in check_images]
        source = "images"
    else:
        from PIL import Image

        from fracturekit.synthetic import render_sample

        rng = np.random.default_rng(0)
        size = max(int(meta["img_size"]), 32)
        images = []
        for i in range(N_SYNTHETIC):
            sample = render_sample(rng, size, "concrete", i % 2 == 0)
            img = Image.fromarray(sample.image)
            images.append(img.convert("L") if in_chans == 1 else img)
        source = "synthetic"
    return torch.stack([transform(im, None)[0] for im in images]), source


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Write the graph with the TorchScript exporter (dynamic batch axis).

    torch 2.9+ defaults to the torch.export-based exporter, which needs the ``onnxscript``
    package; the TorchScript exporter needs nothing more and handles every backbone of the table
    at a fixed input size, so it is used first, and the newer exporter only when torch no longer
    offers the old one.
    """
    import torch

    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "do_constant_folding": True,
    }
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation and traces shape arithmetic (TF
        # "same" padding) as constants; the input size is fixed, so both are expected.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                dynamo=False,
                **kwargs,
            )
        except TypeError:  # pragma: no cover - a torch without the TorchScript exporter
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes=({0: batch},),
                dynamo=True,
                **kwargs,
            )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(
    ckpt: str | Path,
    out: str | Path,
    *,
    opset: int = 17,
    check_images: Sequence[str | Path] | None = None,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> ExportReport:
    """Export a checkpoint to ONNX and prove the file computes the same probabilities.

    Args:
        ckpt: a fracturekit checkpoint (``model.pt``).
        out: where to write the ``.onnx`` file. It appears only after the parity check passed
            (written under a temporary name, then renamed).
        opset: ONNX opset version.
        check_images: image files for the parity check; default: synthetic crack and no-crack
            images rendered at the model's input size.
        atol: largest allowed absolute difference of class probabilities (after the
            checkpoint's temperature), ONNX Runtime vs PyTorch, at batch size N and 1.
        overwrite: replace an existing ``out``; otherwise an existing file is an error.

    Returns:
        An :class:`ExportReport`.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt``.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ExportError: the exporter failed, or the parity check failed (nothing is written).
    """
    import onnx
    import torch

    from fracturekit.models import load_checkpoint, logits_to_proba

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name such as model.onnx")
    if atol <= 0:
        raise ValueError(f"atol={atol}: must be positive")
    start = time.perf_counter()
    model, meta = load_checkpoint(ckpt, map_location="cpu")
    model = model.float().eval()
    temperature = float(meta.get("temperature") or 1.0)
    batch, source = _check_batch(meta, check_images)
    with torch.inference_mode():
        ref_logits = model(batch).float()
    ref_proba = logits_to_proba(ref_logits, temperature).numpy()
    props = onnx_metadata(meta)
    report = ExportReport(
        path=out,
        opset=opset,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=tuple(int(v) for v in batch.shape[1:]),
        batch_sizes=sorted({len(batch), 1}, reverse=True),
        n_images=len(batch),
        check_source=source,
        max_abs_diff=float("inf"),
        max_abs_diff_logits=float("inf"),
        atol=atol,
        metadata={k: v for k, v in props.items() if k != ONNX_META_KEY},
    )

    def write(tmp: Path) -> None:
        try:
            _torch_export(model, batch[:1].clone(), tmp, opset)
            graph = onnx.load(str(tmp))
            del graph.metadata_props[:]
            for key, value in props.items():
                entry = graph.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(graph)
            onnx.save(graph, str(tmp))
            session = _session(tmp)
        except Exception as exc:  # exporters and onnx raise many types; report them as one
            raise ExportError(f"{ckpt}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
        diffs, logit_diffs = [], []
        # The full batch, then one image alone: proves the batch axis really is dynamic.
        for n in report.batch_sizes:
            x = batch[:n].numpy().astype(np.float32)
            logits = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
            proba = logits_to_proba(logits, temperature).numpy()
            diffs.append(float(np.abs(proba - ref_proba[:n]).max()))
            logit_diffs.append(float((logits - ref_logits[:n]).abs().max()))
        report.max_abs_diff = max(diffs)
        report.max_abs_diff_logits = max(logit_diffs)
        if not report.passed:
            raise ExportError(
                f"{ckpt}: the ONNX model's probabilities differ from PyTorch's by up to "
                f"{report.max_abs_diff:.3g} (allowed {atol:g}) on {report.n_images} "
                f"{'given' if source == 'images' else source} image(s); {out} was not written"
            )

    atomic_write(out, write)
    report.size_bytes = out.stat().st_size
    report.seconds = time.perf_counter() - start
    return report
