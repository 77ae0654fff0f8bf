"""Data sets: samples from folders or CSV manifests, splits, transforms, imbalance helpers.

One module a concern: ``_records`` (Sample, DatasetSplits), ``_options`` (LoadOptions, the
options declared once), ``_folders``/``_manifest``/``_layouts`` (reading; the layout table),
``_download`` (URL manifests), ``_hashing``, ``_splits``, ``_load`` (load_dataset),
``_transforms``, ``_dataset``, ``_samplers``.

Layouts (``layout="auto"`` detects them; a flag forces one):

* ``folders``: ``ROOT/<class>/*`` (nested sub-folders belong to their class).
* ``split-folders``: ``ROOT/{train,val|valid|validation,test}/<class>/*``; class names may
  contain spaces (``not fractured``). Without a val split, one is carved from train.
* ``csv``: a manifest ``path,label[,group][,split][,mask]``; paths relative to the CSV or
  absolute. Other column names are chosen with ``image_column``/``label_column``/
  ``group_column``. A name without an extension (``crack500_patches/patches.csv``'s ``patch``
  column) is resolved to the one image file ``<csv dir>/<name>.*`` or
  ``<csv dir>/<label>/<name>.*``.
* ``labelling-export``: a CSV whose image column holds http(s) URLs and whose label column holds
  JSON (``{"labels": ["Crack"]}``), the label picked by ``label_key``, a dotted path such as
  ``labels.0`` or ``choices``. URLs are downloaded once into a cache folder with a per-read
  timeout, an overall deadline and a size cap, never from loopback, private or cloud-metadata
  addresses (redirects included), and cached only once they decode as images; every failed
  URL is reported. (Any CSV may mix plain labels, JSON labels, paths and
  URLs; the layout name says what was detected.)

A folder named ``masks/`` beside the class folders holds binary masks ``masks/<stem>.png`` (any
image extension) and is never a class; samples with a mask get ``Sample.mask``.

Splits are stratified by class with a fixed seed. When samples have groups (a ``group`` column:
patient, source photo) every split is group-disjoint, made with scikit-learn's
``StratifiedGroupKFold`` using ``round(1 / fraction)`` folds, so the fraction is approximate
(whole groups move). Class order is sorted by name; labels are indices into it.

Unusable files policy: ``load_dataset`` decodes every file (images and masks) up front with
:func:`fracturekit.io.check_images`, so a bad file never stops a long run halfway.

* default: a sample whose image or mask cannot be read (or whose URL failed to download, or
  whose manifest row has no label) is **left out** and named in ``DatasetSplits.dropped``;
  truncated files load and are named in ``DatasetSplits.warnings``. Both are also logged as
  warnings on the ``fracturekit.data`` logger, so they are never silent.
* ``strict=True``: any of the above, truncated files included, raises :class:`DatasetError`
  listing every file.
"""

from __future__ import annotations

from fracturekit.config import AUGMENTS, LAYOUTS
from fracturekit.data._dataset import ImageDataset
from fracturekit.data._download import (
    MAX_REDIRECTS,
    address_refusal,
    default_cache_dir,
    download_images,
)
from fracturekit.data._folders import MASKS_DIR, SPLIT_NAMES
from fracturekit.data._hashing import content_digest
from fracturekit.data._layouts import READERS, detect_layout
from fracturekit.data._load import load_dataset
from fracturekit.data._manifest import IMAGE_COLUMNS, JSON_LABEL_KEYS, LABEL_COLUMNS
from fracturekit.data._options import (
    DEFAULT_DOWNLOAD_DEADLINE,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    LoadOptions,
)
from fracturekit.data._records import DatasetError, DatasetSplits, Sample
from fracturekit.data._samplers import class_counts, class_weights, make_sampler, undersample
from fracturekit.data._splits import split_samples
from fracturekit.data._transforms import ImageTransform, build_transforms

__all__ = [
    "AUGMENTS",
    "DEFAULT_DOWNLOAD_DEADLINE",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "IMAGE_COLUMNS",
    "JSON_LABEL_KEYS",
    "LABEL_COLUMNS",
    "LAYOUTS",
    "MASKS_DIR",
    "MAX_REDIRECTS",
    "READERS",
    "SPLIT_NAMES",
    "DatasetError",
    "DatasetSplits",
    "ImageDataset",
    "ImageTransform",
    "LoadOptions",
    "Sample",
    "address_refusal",
    "build_transforms",
    "class_counts",
    "class_weights",
    "content_digest",
    "default_cache_dir",
    "detect_layout",
    "download_images",
    "load_dataset",
    "make_sampler",
    "split_samples",
    "undersample",
]
