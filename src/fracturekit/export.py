"""ONNX export with a parity check: ``export_onnx(ckpt, out)``.

The exported graph maps a preprocessed batch ``[N, C, H, W]`` (float32, the checkpoint's own
size and normalisation) to logits: ``[N, num_classes]`` for a classifier, pixel logits
``[N, 1, H, W]`` for a segmenter (``meta["task"] == "segment"``). The batch axis is dynamic; a
segmenter's height and width are dynamic too (any multiple of its stride, 32) when the traced
graph holds at a second size, else fixed at ``img_size``. Temperature, threshold, ``min_area``
and the class names stay outside the graph, in the file's metadata, so
``Predictor.from_checkpoint("model.onnx")`` applies them exactly as the PyTorch backend does.

Metadata (``metadata_props``):

* ``fracturekit_meta``: JSON of the whole checkpoint meta (backbone, classes, img_size, mean,
  std, interpolation, in_chans, threshold, temperature, positive, config, metrics, versions);
  non-finite numbers become ``null`` so any JSON reader accepts it.
* readable twins for other tools: ``classes``, ``img_size``, ``mean``, ``std``, ``in_chans``,
  ``interpolation``, ``threshold``, ``temperature``, ``positive``, ``backbone``, and where the
  meta has them ``task``, ``decoder``, ``min_area``, ``members``.
* ``checkpoint_sha256``: the SHA-256 of the exported checkpoint file; ``serving_onnx`` (the
  service's ONNX Runtime path) uses a ``model.onnx`` beside a checkpoint only when it matches.

Before the file appears at ``out``, onnxruntime runs it on real inputs (the images given, or
synthetic crack and no-crack images) at batch size N and 1 and its class probabilities (a
segmenter: pixel probabilities, and for a dynamic size one image again at another size) are
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
    "task",
    "decoder",
    "min_area",
    "members",
)
DIGEST_KEY = "checkpoint_sha256"  # the exported checkpoint file's SHA-256
SPATIAL_AXES = {2: "height", 3: "width"}  # a segmenter's dynamic axes besides the batch
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
        output_name: name of the graph output (logits ``[N, num_classes]``; a segmenter's
            pixel logits ``[N, 1, H, W]``).
        input_shape: ``(C, H, W)`` of one preprocessed image.
        batch_sizes: the batch sizes the parity check ran at.
        n_images: how many check images were used.
        check_source: ``"images"`` (given files) or ``"synthetic"``.
        max_abs_diff: largest absolute difference of class probabilities (a segmenter: pixel
            probabilities), ONNX vs PyTorch.
        max_abs_diff_logits: the same for raw logits (for information).
        atol: the tolerance the check applied to probabilities.
        size_bytes: size of the written file.
        seconds: wall time of export plus check.
        metadata: the readable metadata keys written (``fracturekit_meta`` excluded).
        task: ``"classify"`` or ``"segment"``.
        spatial_sizes: the ``(H, W)`` input sizes the parity check ran at.
        dynamic_spatial: whether height and width are dynamic axes of the graph (segmenters
            whose graph held at a second size); otherwise they are fixed at ``img_size``.
        mask_disagreement: segmenters: the share of checked pixels whose mask at the stored
            threshold (before ``min_area``) differs between ONNX and PyTorch; None otherwise.
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
    task: str = "classify"
    spatial_sizes: list[tuple[int, int]] = field(default_factory=list)
    dynamic_spatial: bool = False
    mask_disagreement: float | None = None

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


def _torch_export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    *,
    dynamic_spatial: bool = False,
) -> None:
    """Write the graph with the TorchScript exporter (dynamic batch axis; with
    ``dynamic_spatial`` dynamic height and width too).

    torch 2.9+ defaults to the torch.export-based exporter, which needs the ``onnxscript``
    package; the TorchScript exporter needs nothing more and handles every backbone of the table
    at a fixed input size, so it is used first, and the newer exporter only when torch no longer
    offers the old one.
    """
    import torch

    axes = {0: "batch", **(SPATIAL_AXES if dynamic_spatial else {})}
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "do_constant_folding": True,
    }
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation and traces shape arithmetic (TF
        # "same" padding, the segmenter's stride check) as constants; a fixed input size makes
        # that exact, and a dynamic one is checked at a second size by the caller.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                dynamo=False,
                **kwargs,
            )
        except TypeError:  # pragma: no cover - a torch without the TorchScript exporter
            shapes = {i: torch.export.Dim(name, min=1, max=4096) for i, name in axes.items()}
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes=(shapes,),
                dynamo=True,
                **kwargs,
            )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _write_graph(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    props: dict[str, str],
    *,
    dynamic_spatial: bool,
    ckpt: str | Path,
):
    """Export, attach the metadata, check the graph; return an ONNX Runtime session on it."""
    import onnx

    try:
        _torch_export(model, example, path, opset, dynamic_spatial=dynamic_spatial)
        graph = onnx.load(str(path))
        del graph.metadata_props[:]
        for key, value in props.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(graph)
        onnx.save(graph, str(path))
        return _session(path)
    except Exception as exc:  # exporters and onnx raise many types; report them as one
        raise ExportError(f"{ckpt}: ONNX export failed ({type(exc).__name__}: {exc})") from exc


def _run(session: Any, x: torch.Tensor) -> np.ndarray:
    feed = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    return session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0]


def _classifier_parity(
    session: Any,
    batch: torch.Tensor,
    ref_logits: torch.Tensor,
    temperature: float,
    report: ExportReport,
) -> None:
    """Class probabilities of the ONNX graph vs PyTorch's, at each of the report's batch sizes."""
    import torch

    from fracturekit.models import logits_to_proba

    ref_proba = logits_to_proba(ref_logits, temperature).numpy()
    diffs, logit_diffs = [], []
    # The full batch, then one image alone: proves the batch axis really is dynamic.
    for n in report.batch_sizes:
        logits = torch.from_numpy(_run(session, batch[:n]))
        proba = logits_to_proba(logits, temperature).numpy()
        diffs.append(float(np.abs(proba - ref_proba[:n]).max()))
        logit_diffs.append(float((logits - ref_logits[:n]).abs().max()))
    report.max_abs_diff = max(diffs)
    report.max_abs_diff_logits = max(logit_diffs)


def _segment_cases(
    model: torch.nn.Module, batch: torch.Tensor, ref_logits: torch.Tensor, report: ExportReport
) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Inputs and PyTorch's pixel logits for the parity check: the batch at each batch size,
    and (for a dynamic graph) its first image resized to another multiple of the stride."""
    import torch
    import torch.nn.functional as F

    cases = [(batch[:n], ref_logits[:n].numpy()) for n in report.batch_sizes]
    if report.dynamic_spatial:
        stride = int(getattr(model, "stride", 32))
        h, w = batch.shape[-2:]
        other = F.interpolate(
            batch[:1], size=(h + stride, w + 2 * stride), mode="bilinear", align_corners=False
        )
        with torch.inference_mode():
            cases.append((other, model(other).float().numpy()))
    report.spatial_sizes = sorted({tuple(int(v) for v in x.shape[-2:]) for x, _ in cases})
    return cases


def _segment_parity(session: Any, cases: list, threshold: float, report: ExportReport) -> None:
    """Pixel probabilities and masks at ``threshold`` of the ONNX graph vs PyTorch's.

    A case the graph cannot run (a size it does not take) counts as an infinite difference.
    """
    import torch

    diffs, logit_diffs, differ, pixels = [], [], 0, 0
    for x, ref in cases:
        try:
            logits = _run(session, x)
        except Exception:  # onnxruntime raises its own types for a shape the graph refuses
            logits = None
        if logits is None or logits.shape != ref.shape:
            diffs.append(float("inf"))
            logit_diffs.append(float("inf"))
            continue
        proba, ref_proba = (torch.sigmoid(torch.from_numpy(v)).numpy() for v in (logits, ref))
        diffs.append(float(np.abs(proba - ref_proba).max()))
        logit_diffs.append(float(np.abs(logits - ref).max()))
        differ += int(np.count_nonzero((proba >= threshold) != (ref_proba >= threshold)))
        pixels += ref.size
    report.max_abs_diff = max(diffs)
    report.max_abs_diff_logits = max(logit_diffs)
    report.mask_disagreement = differ / pixels if pixels else None


def _export_segmenter(
    model: torch.nn.Module,
    batch: torch.Tensor,
    tmp: Path,
    meta: dict,
    props: dict,
    report: ExportReport,
    ckpt: str | Path,
) -> None:
    """Export a segmenter with dynamic height and width and check it at two sizes; when the
    traced graph does not hold at the second size, export it again at the fixed ``img_size``."""
    import torch

    with torch.inference_mode():
        ref_logits = model(batch).float()
    threshold = float(meta.get("threshold") if meta.get("threshold") is not None else 0.5)
    for dynamic in (True, False):
        report.dynamic_spatial = dynamic
        try:
            session = _write_graph(
                model,
                batch[:1].clone(),
                tmp,
                report.opset,
                props,
                dynamic_spatial=dynamic,
                ckpt=ckpt,
            )
        except ExportError:
            if not dynamic:
                raise
            continue  # the exporter cannot make these axes dynamic: the fixed size follows
        cases = _segment_cases(model, batch, ref_logits, report)
        _segment_parity(session, cases, threshold, report)
        if report.passed:
            return


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

    A classifier's graph gives logits ``[N, num_classes]``; a segmenter's (``meta["task"] ==
    "segment"``) pixel logits ``[N, 1, H, W]``, with dynamic height and width when the graph
    computes the same at a second size (``report.dynamic_spatial``).

    Args:
        ckpt: a fracturekit checkpoint (``model.pt``).
        out: where to write the ``.onnx`` file. It appears only after the parity check passed
            (written under a temporary name, then renamed).
        opset: ONNX opset version.
        check_images: image files for the parity check; default: synthetic crack and no-crack
            images rendered at the model's input size.
        atol: largest allowed absolute difference of class probabilities (after the
            checkpoint's temperature; a segmenter: of pixel probabilities), ONNX Runtime vs
            PyTorch, at batch size N and 1.
        overwrite: replace an existing ``out``; otherwise an existing file is an error.

    Returns:
        An :class:`ExportReport`.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt``.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ExportError: the exporter failed, or the parity check failed (nothing is written).
    """
    import torch

    from fracturekit.models import load_checkpoint

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
    batch, source = _check_batch(meta, check_images)
    props = onnx_metadata(meta)
    props[DIGEST_KEY] = _file_digest(Path(ckpt))
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
        task=str(meta.get("task") or "classify"),
        spatial_sizes=[tuple(int(v) for v in batch.shape[-2:])],
    )

    def write(tmp: Path) -> None:
        if report.task == "segment":
            _export_segmenter(model, batch, tmp, meta, props, report, ckpt)
        else:
            with torch.inference_mode():
                ref_logits = model(batch).float()
            session = _write_graph(
                model, batch[:1].clone(), tmp, opset, props, dynamic_spatial=False, ckpt=ckpt
            )
            temperature = float(meta.get("temperature") or 1.0)
            _classifier_parity(session, batch, ref_logits, temperature, report)
        if not report.passed:
            what = "pixel probabilities" if report.task == "segment" else "probabilities"
            raise ExportError(
                f"{ckpt}: the ONNX model's {what} differ from PyTorch's by up to "
                f"{report.max_abs_diff:.3g} (allowed {atol:g}) on {report.n_images} "
                f"{'given' if source == 'images' else source} image(s); {out} was not written"
            )

    atomic_write(out, write)
    report.size_bytes = out.stat().st_size
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------------------------
# The ONNX twin a service runs: the exported file beside the checkpoint, or one exported once
# into a cache


def cache_dir() -> Path:
    """Where fracturekit keeps files it can rebuild: ``$FRACTUREKIT_CACHE``, else
    ``$XDG_CACHE_HOME/fracturekit``, else ``~/.cache/fracturekit``."""
    import os

    from fracturekit.contracts import ENV_CACHE

    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fracturekit"


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_digest(path: Path) -> str | None:
    """The checkpoint digest an ONNX file was exported from (None: unreadable or none)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, truncated, or the onnx package is missing
        return None
    return next((p.value for p in model.metadata_props if p.key == DIGEST_KEY), None)


@dataclass
class ServingModel:
    """The ONNX file a service runs for a checkpoint (:func:`serving_onnx`).

    Attributes:
        path: the ``.onnx`` file.
        origin: ``"beside"`` (the exported file next to the checkpoint, with the same
            metadata), ``"cache"`` (exported earlier into the cache) or ``"exported"`` (exported
            now, with the parity check).
        report: the export's report when ``origin == "exported"``.
    """

    path: Path
    origin: str
    report: ExportReport | None = None


def serving_onnx(ckpt: str | Path, cache: str | Path | None = None) -> ServingModel:
    """The ONNX model of ``ckpt`` for fast inference, exported only when none fits.

    ``model.onnx`` beside ``model.pt`` is used when it was exported from this very file (its
    metadata holds the checkpoint's SHA-256; a file exported from another or an earlier
    checkpoint is left alone). Otherwise the checkpoint is exported
    once, with :func:`export_onnx`'s parity check, into ``cache`` (default :func:`cache_dir`
    ``/onnx``) under the checkpoint's SHA-256, where later starts (and the other worker
    processes of a service) find it.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt``.
        ExportError: the export or its parity check failed.
    """
    from fracturekit import __version__

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint here")
    digest = _file_digest(ckpt)
    beside = ckpt.with_suffix(".onnx")
    if beside.is_file() and _onnx_digest(beside) == digest:
        return ServingModel(beside, "beside")
    folder = Path(cache) if cache is not None else cache_dir() / "onnx"
    path = folder / f"{digest[:32]}-{__version__}.onnx"
    if path.is_file() and _onnx_digest(path) == digest:
        return ServingModel(path, "cache")
    # Several worker processes may export at once: each writes its own temporary file and
    # renames it into place, so the last one wins with an identical file.
    report = export_onnx(ckpt, path, overwrite=True)
    return ServingModel(path, "exported", report)
