"""Batch prediction beyond one machine: ``predict_ray(ckpt, inputs, out=...)`` on Ray Data.

The inputs (files, folders, CSV manifests) are expanded on the driver by the same
``expand_inputs`` as local ``predict``; Ray Data spreads the paths over an actor pool whose
workers each load the :class:`~fracturekit.predict.Predictor` once (:class:`PredictWorker`) and
decode and classify their batches with ``Predictor.predict_paths``, so rows, error rows and
columns are exactly those of the local path. Rows come back in input order (Ray Data's
``preserve_order``, checked against each row's index) and are written by the same
``write_predictions``.

Without an address a local Ray is started for the run and stopped after it; with an address
(or ``RAY_ADDRESS``) the run joins that cluster. The checkpoint and the images must be readable
at the same paths on every node (a shared file system), as with any Ray Data job over files.

A worker that dies mid-run is restarted and its batch run again (Ray Data's actor pools restart
actors and retry their tasks by default); a batch's output counts only once its task has
finished, so no row is lost or doubled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit.predict import (
    BatchResult,
    Prediction,
    Predictor,
    check_batch_io,
    mask_names,
    prediction_columns,
    write_mask,
    write_predictions,
)

INDEX = "_index"  # the column carrying each path's position in the input


class PredictWorker:
    """The callable class of the actor pool: loads the Predictor once, classifies batches.

    Args:
        source: checkpoint or ONNX path (readable on every node).
        backend: ``"torch"`` or ``"onnx"``.
        strict: refuse truncated images.
        batch_size: images per forward pass inside a Ray batch.
        prior: decide at this prevalence (``Predictor.from_checkpoint(prior=...)``).
    """

    def __init__(
        self, source: str, backend: str, strict: bool, batch_size: int, prior: Any = None
    ) -> None:
        self.predictor = Predictor.from_checkpoint(source, backend, prior=prior)
        self.strict = strict
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        masks = [str(m) for m in batch["mask"]]
        preds = list(
            self.predictor.predict_paths(
                paths, self.batch_size, strict=self.strict, keep_masks=any(masks)
            )
        )
        # Segmenters' masks are written here, by the worker that holds them.
        for pred, mask in zip(preds, masks, strict=True):
            if mask:
                write_mask(pred, Path(mask))
        classes = self.predictor.classes
        # Plain columns (NaN / "" for missing values): Arrow blocks of fixed types.
        return {
            INDEX: np.asarray(batch[INDEX], dtype=np.int64),
            "path": np.array([p.path for p in preds], dtype=object),
            "label": np.array([p.label or "" for p in preds], dtype=object),
            "proba": np.array(
                [[p.probabilities.get(c, np.nan) for c in classes] for p in preds],
                dtype=np.float64,
            ).reshape(len(preds), len(classes)),
            "crack_fraction": np.array(
                [np.nan if p.crack_fraction is None else p.crack_fraction for p in preds],
                dtype=np.float64,
            ),
            "mask_file": np.array([p.mask_file or "" for p in preds], dtype=object),
            "error": np.array([p.error or "" for p in preds], dtype=object),
        }


def _prediction(row: dict[str, Any], classes: list[str], threshold: float | None) -> Prediction:
    if row["error"]:
        return Prediction(str(row["path"]), None, None, {}, threshold, error=str(row["error"]))
    proba = dict(zip(classes, (float(v) for v in row["proba"]), strict=True))
    label = str(row["label"])
    fraction = float(row["crack_fraction"])
    return Prediction(
        str(row["path"]),
        label,
        proba[label],
        proba,
        threshold,
        crack_fraction=None if np.isnan(fraction) else fraction,
        mask_file=str(row["mask_file"]) or None,
    )


def _start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # "local" always starts a new Ray: a bare ray.init() would join a cluster that `ray start`
    # left on this machine (or fail on a stale record of one).
    # Ray's own start-up messages stay out of the command's output; warnings still show.
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ValueError(f"cannot start or reach {where}: {exc}") from exc
    return True


def _import_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(
            "--ray needs Ray Data: pip install 'fracturekit[ray]' (ray[data])"
        ) from None


def _rows(
    paths: list[str],
    source: str,
    *,
    backend: str,
    batch_size: int,
    strict: bool,
    workers: int | None,
    worker: type[PredictWorker],
    prior: Any = None,
    masks: list[Path] | None = None,
) -> Iterator[dict[str, Any]]:
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    names = [str(m) for m in masks] if masks else [""] * len(paths)
    pairs = enumerate(zip(paths, names, strict=True))
    items = [{INDEX: i, "path": p, "mask": m} for i, (p, m) in pairs]
    blocks = max(1, -(-len(items) // batch_size))
    # A fixed pool, one actor a CPU: an autoscaling pool grows only as its queue does.
    pool = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), blocks)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        worker,
        fn_constructor_kwargs={
            "source": source,
            "backend": backend,
            "strict": strict,
            "batch_size": batch_size,
            "prior": prior,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=pool,
        num_cpus=1,
    )
    yield from ds.iter_rows()


def predict_ray(
    source: str | Path,
    inputs: Iterable[str | Path],
    *,
    out: str | Path,
    address: str | None = None,
    backend: str = "torch",
    batch_size: int = 32,
    overwrite: bool = False,
    strict: bool = False,
    workers: int | None = None,
    num_cpus: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    worker: type[PredictWorker] = PredictWorker,
    prior: float | dict[str, float] | None = None,
    masks: str | Path | None = None,
) -> BatchResult:
    """Classify files, folders and manifests on Ray Data; the rows of local ``predict_batch``.

    Args:
        source: checkpoint or ONNX path, readable at the same path on every node.
        inputs: files, folders and CSV manifests (``fracturekit.predict.expand_inputs``).
        out: ``.csv``, ``.json`` or ``.parquet`` (``fracturekit.predict.write_predictions``).
        address: a Ray cluster (``ray start --head`` prints it); None: ``RAY_ADDRESS`` if set,
            else a local Ray started for this run (``num_cpus`` CPUs, default all).
        backend: ``"torch"`` or ``"onnx"``.
        batch_size: images per Ray batch and per forward pass.
        overwrite: replace an existing ``out``.
        strict: refuse truncated images.
        workers: actors in the pool (default: one per CPU of the cluster).
        num_cpus: CPUs of a local Ray started here.
        progress: called as ``progress(done, total)`` before the first and after every row.
        worker: the callable class of the actor pool (a subclass may add per-batch behaviour).
        prior: decide at this prevalence (``Predictor.from_checkpoint(prior=...)``).
        masks: segmenters: the folder the workers write each image's mask into (as local
            ``predict_batch``; the folder must be on storage every node writes to).

    Returns:
        A :class:`~fracturekit.predict.BatchResult` (``predictions`` empty: rows go to ``out``).

    Raises:
        ValueError: Ray is not installed or the cluster cannot be reached; and as
            ``predict_batch`` (bad output name, bad manifest, no input).
        FileExistsError: as ``predict_batch``.
        RuntimeError: rows came back out of order or missing (never expected; the file is then
            not written).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    out, masks, paths = check_batch_io(inputs, out, masks, overwrite=overwrite)
    _import_ray()
    # Loaded here too: a missing or broken checkpoint is a usage error before Ray starts, and the
    # class names and threshold give the columns.
    local = Predictor.from_checkpoint(source, backend, prior=prior)
    classes, threshold = local.classes, local.threshold
    segment = local.task == "segment"
    if masks is not None and not segment:
        raise ValueError(
            f"{source} is a classifier: --masks needs a segmentation checkpoint "
            "(fracturekit train --task segment)"
        )
    names = [p.resolve() for p in mask_names(paths, masks)] if masks is not None else None
    columns = prediction_columns(classes, segment=segment, masks=masks is not None)
    started = _start_ray(address, num_cpus)
    counts = {"n": 0, "failed": 0}

    def stream() -> Iterator[Prediction]:
        if progress is not None:
            progress(0, len(paths))
        rows = _rows(
            paths,
            str(Path(source).resolve()),
            backend=backend,
            batch_size=batch_size,
            strict=strict,
            workers=workers,
            worker=worker,
            prior=prior,
            masks=names,
        )
        for expected, row in enumerate(rows):
            if int(row[INDEX]) != expected:
                raise RuntimeError(f"Ray returned row {row[INDEX]} where {expected} was due")
            pred = _prediction(row, classes, threshold)
            counts["n"] += 1
            counts["failed"] += pred.error is not None
            yield pred
            if progress is not None:
                progress(counts["n"], len(paths))
        if counts["n"] != len(paths):
            raise RuntimeError(f"Ray returned {counts['n']} of {len(paths)} rows")

    try:
        write_predictions(out, stream(), classes, columns)
    finally:
        if started:
            import ray

            ray.shutdown()
    return BatchResult(counts["n"], counts["failed"], out, [], classes, columns)
