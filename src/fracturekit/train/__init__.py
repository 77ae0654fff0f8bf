"""Training: a folder of labelled images in, a self-describing checkpoint out.

``train(cfg, out)`` loads the data (``fracturekit.data.load_dataset``), builds the model
(``fracturekit.models``), trains it and writes the run folder::

    out/config.yaml    the resolved configuration (defaults < config file < flags)
    out/model.pt       best epoch by validation loss; meta holds threshold, temperature, metrics
                       and the validation labels and probabilities (``validation``)
    out/last.pt        last epoch + optimizer/scheduler/RNG state (``--resume out`` continues)
    out/history.csv    epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds
    out/curves.png     loss and accuracy, training and validation

Two ways through an epoch:

* **cached** — the backbone's first blocks are frozen and the images are not augmented
  (``--augment none`` with ``--freeze all-but-head`` or ``--freeze train-last --train-last P``):
  the frozen prefix runs once over every image (``torch.no_grad``, channels-last, batched) and
  the epochs train only the last blocks and the head on the stored activations (pooled feature
  vectors for ``all-but-head``). ``cache_views`` > 1 stores flipped copies as fixed
  augmentation. Validation always uses a cache of the frozen prefix, whatever the mode.
* **end-to-end** — with augmentation or nothing frozen: images are decoded, augmented and sent
  through the whole network each epoch (the frozen prefix without autograd).

After the epochs, binary tasks get a decision threshold chosen on validation (max F1, or the
highest threshold that keeps ``target_recall``) and every task a temperature fitted on the
validation logits; both are stored in ``model.pt`` with the validation metrics.

Under ``torchrun --nproc_per_node N -m fracturekit train ...`` each process trains a shard of
the data through ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs); rank 0 alone loads
and checks the data set, writes files and prints. ``--resume`` needs the run folder on a file
system every process sees.

The loop is the same for every kind of model; what is specific to one (the batch, the loss, the
validation score, what the checkpoint stores) is a row of ``TASKS``: ``classify`` and
``segment`` (``task=segment``: a ``Segmenter`` trained on image/mask pairs, end to end with the
first encoder stages frozen and run without autograd, on random tiles (``tile``) with mirrors
and 90-degree turns; the pixel threshold and ``min_area`` are chosen on validation; see
``_segment_task``).

``members`` K > 1 (segmenters): K runs with seeds ``seed .. seed+K-1`` on one split in
``out/members/<i>/``, then their mean (``models.SegmenterMean``) calibrated as one checkpoint in
``out/model.pt`` (``_members``).
"""

from fracturekit.train._cache import FeatureCache, build_cache
from fracturekit.train._loop import (
    LAST_FILE,
    MODEL_FILE,
    RUN_FILES,
    TrainError,
    TrainResult,
    load_options,
    train,
)
from fracturekit.train._records import HISTORY_COLUMNS
from fracturekit.train._segment_task import SegmentTask
from fracturekit.train._tasks import TASKS, ClassifyTask

__all__ = [
    "HISTORY_COLUMNS",
    "LAST_FILE",
    "MODEL_FILE",
    "RUN_FILES",
    "TASKS",
    "ClassifyTask",
    "SegmentTask",
    "FeatureCache",
    "TrainError",
    "TrainResult",
    "build_cache",
    "load_options",
    "train",
]
