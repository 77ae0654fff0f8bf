"""fracturekit.data: layouts, splits, unusable-file policy, downloads, transforms, imbalance."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import pickle
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixture_images import (
    blob_image,
    make_class_folders,
    make_planted_dataset,
    noise_image,
    write_exif_jpeg,
    write_truncated_jpeg,
)
from fracturekit.config import TrainConfig
from fracturekit.data import (
    DatasetError,
    DatasetSplits,
    ImageDataset,
    LoadOptions,
    Sample,
    address_refusal,
    build_transforms,
    class_counts,
    class_weights,
    detect_layout,
    download_images,
    load_dataset,
    make_sampler,
    split_samples,
    undersample,
)

# --------------------------------------------------------------------------------------------
# layouts


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_folders_layout_with_masks(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"no_crack": 6, "crack": 4})
    (root / "masks").mkdir()
    Image.new("L", (32, 32)).save(root / "masks" / "crack_0.png")
    assert detect_layout(root) == "folders"
    splits = load_dataset(root, val_fraction=0.25, seed=0)
    assert isinstance(splits, DatasetSplits)
    assert splits.layout == "folders"
    assert splits.classes == ["crack", "no_crack"]  # sorted; masks/ is not a class
    everything = splits.all_samples()
    assert len(everything) == 10
    assert all(s.label == splits.classes.index(s.class_name) for s in everything)
    assert {s.split for s in splits.train} == {"train"} and {s.split for s in splits.val} == {"val"}
    with_mask = [s for s in everything if s.mask is not None]
    assert [s.path.name for s in with_mask] == ["crack_0.png"]
    assert with_mask[0].mask == root / "masks" / "crack_0.png"
    assert not splits.dropped and not splits.warnings


def test_split_folders_layout_with_spaces(tmp_path: Path) -> None:
    root = tmp_path / "bones"
    for split, n in (("train", 5), ("valid", 2), ("test", 3)):
        make_class_folders(root / split, {"fractured": n, "not fractured": n}, seed=len(split))
    assert detect_layout(root) == "split-folders"
    splits = load_dataset(root)
    assert splits.layout == "split-folders"
    assert splits.classes == ["fractured", "not fractured"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 4, 6)
    assert all(s.path.parts[-3] == "valid" for s in splits.val)
    assert splits.counts()["test"] == {"fractured": 3, "not fractured": 3}


def test_split_folders_without_val_carve_it_from_train(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 10, "b": 10})
    make_class_folders(root / "test", {"a": 2, "b": 2}, seed=1)
    splits = load_dataset(root, val_fraction=0.1, seed=3)  # seed 3: 90/10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 4)
    assert splits.counts()["val"] == {"a": 1, "b": 1}  # stratified
    assert all(s.path.parts[-3] == "train" for s in splits.val)


def test_one_tree_plus_fraction_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"major": 40, "minor": 10})
    a = load_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=0)
    b = load_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=0)
    c = load_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert a.counts() == {
        "train": {"major": 28, "minor": 7},
        "val": {"major": 8, "minor": 2},
        "test": {"major": 4, "minor": 1},
    }
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert [s.path for s in a.val] != [s.path for s in c.val]
    paths = [s.path for s in a.all_samples()]
    assert len(paths) == len(set(paths)) == 50


def test_split_seed_keeps_the_split_while_seed_changes(tmp_path: Path) -> None:
    from fracturekit.evaluate import training_split_options
    from fracturekit.train import load_options

    root = make_class_folders(tmp_path / "d", {"major": 40, "minor": 10})

    def val_of(**fields: object) -> list[Path]:
        cfg = TrainConfig(data=str(root), val_fraction=0.2, test_fraction=0.1, **fields)
        return [s.path for s in load_dataset(root, **load_options(cfg)).val]

    assert val_of(seed=1, split_seed=0) == val_of(seed=0) != val_of(seed=1)
    # a checkpoint's stored config carves the same split again when evaluated on its own data
    stored = {"data": str(root), "seed": 5, "split_seed": 0, "val_fraction": 0.2}
    assert training_split_options(stored, root)["seed"] == 0
    assert training_split_options({**stored, "split_seed": None}, root)["seed"] == 5


def test_csv_manifest_paths_groups_and_split_column(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "imgs", {"crack": 4, "no_crack": 4})
    other = tmp_path / "elsewhere.png"
    noise_image(77).save(other)
    rows = [
        ["imgs/crack/crack_0.png", "crack", "p1", "train"],
        ["imgs/crack/crack_1.png", "crack", "p1", "train"],
        ["imgs/crack/crack_2.png", "crack", "p2", "val"],
        ["imgs/no_crack/no_crack_0.png", "no_crack", "p3", "train"],
        ["imgs/no_crack/no_crack_1.png", "no_crack", "p4", "val"],
        [str(other), "no_crack", "p5", "test"],  # an absolute path
    ]
    manifest = _write_csv(tmp_path / "manifest.csv", ["path", "label", "group", "split"], rows)
    assert detect_layout(manifest) == "csv"
    splits = load_dataset(manifest)
    assert splits.layout == "csv"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 1)
    assert splits.test[0].path == other
    assert {s.group for s in splits.train} == {"p1", "p3"}
    assert root.exists()


def test_csv_groups_make_group_disjoint_splits(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "imgs", {"crack": 30, "no_crack": 30})
    rows = [
        [f"imgs/{cls}/{cls}_{i}.png", cls, f"photo{i % 12}"]
        for cls in ("crack", "no_crack")
        for i in range(30)
    ]
    manifest = _write_csv(tmp_path / "m.csv", ["path", "label", "group"], rows)
    for seed in range(3):
        splits = load_dataset(manifest, val_fraction=0.25, test_fraction=0.2, seed=seed)
        groups = {name: {s.group for s in part} for name, part in splits.splits().items()}
        assert not groups["train"] & groups["val"]
        assert not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert all(groups.values())
        assert {s.class_name for s in splits.val} == {"crack", "no_crack"}
        assert len(splits.all_samples()) == 60


def test_split_samples_without_groups_keeps_every_class() -> None:
    samples = [Sample(Path(f"{c}{i}.png"), -1, c) for c in "ab" for i in range(5)] + [
        Sample(Path("c0.png"), -1, "c")
    ]
    rest, taken = split_samples(samples, 0.2, seed=0)
    assert {s.class_name for s in taken} == {"a", "b"}  # a single-sample class stays in train
    assert len(rest) + len(taken) == 11


def test_extensionless_names_resolved_in_label_folders(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "patches", {"crack": 3, "no_crack": 3})
    rows = [[f"{c}_{i}", f"src{i}.jpg", c] for c in ("crack", "no_crack") for i in range(3)]
    manifest = _write_csv(root / "patches.csv", ["patch", "source_image", "label"], rows)
    splits = load_dataset(
        manifest, image_column="patch", group_column="source_image", val_fraction=0.34
    )
    assert all(s.path.exists() and s.path.suffix == ".png" for s in splits.all_samples())
    assert {s.group for s in splits.train}.isdisjoint({s.group for s in splits.val})
    # a folder holding only the manifest is read as that manifest (but here class folders win)
    assert detect_layout(root) == "folders"


def test_bad_layouts_and_columns_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no layout recognised"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nowhere")
    manifest = _write_csv(tmp_path / "m.csv", ["file_name", "klass"], [["a.png", "x"]])
    with pytest.raises(DatasetError, match="no image column.*file_name, klass"):
        load_dataset(manifest)
    with pytest.raises(DatasetError, match="no column 'label'"):
        load_dataset(manifest, image_column="file_name", label_column="label")
    bad_split = _write_csv(tmp_path / "s.csv", ["path", "label", "split"], [["a.png", "x", "dev"]])
    with pytest.raises(DatasetError, match="row 2: split 'dev'"):
        load_dataset(bad_split)
    with pytest.raises(DatasetError, match="layout='tree'"):
        load_dataset(tmp_path, layout="tree")


def test_val_and_test_paths(tmp_path: Path) -> None:
    train = make_class_folders(tmp_path / "train", {"a": 4, "b": 4})
    val = make_class_folders(tmp_path / "val", {"a": 2, "b": 1}, seed=1)
    bad = make_class_folders(tmp_path / "bad", {"a": 1, "zzz": 1}, seed=2)
    splits = load_dataset(train, val=val)
    assert (len(splits.train), len(splits.val)) == (8, 3)  # no fraction carved when val is given
    with pytest.raises(DatasetError, match="zzz appear in val/test but not in train"):
        load_dataset(train, val=bad)
    presplit = tmp_path / "pre"
    make_class_folders(presplit / "train", {"a": 2, "b": 2})
    make_class_folders(presplit / "val", {"a": 1, "b": 1}, seed=3)
    with pytest.raises(DatasetError, match="already has a val split"):
        load_dataset(presplit, val=val)


def test_train_config_has_group_column() -> None:
    cfg = TrainConfig.from_dict({"group_column": "source_image"})
    assert cfg.group_column == "source_image"
    assert TrainConfig().group_column is None


# --------------------------------------------------------------------------------------------
# unusable files: checked up front, dropped and named (or refused with strict)


def test_planted_problems_dropped_and_named(tmp_path: Path) -> None:
    planted = make_planted_dataset(tmp_path / "d")
    splits = load_dataset(planted.root)
    dropped = {Path(i.path): i.reason for i in splits.dropped}
    assert set(dropped) == {planted.corrupt, planted.empty}
    assert "empty file" in dropped[planted.empty]
    assert [w.path for w in splits.warnings] == [planted.truncated]
    assert planted.notes in splits.ignored
    kept = {s.path for s in splits.all_samples()}
    assert planted.truncated in kept and planted.corrupt not in kept
    assert {planted.tiff16, planted.rgba, planted.dicom_mono1, planted.exif_jpeg} <= kept
    rotated = next(s for s in splits.all_samples() if s.path == planted.exif_jpeg)
    assert rotated.mask == planted.exif_mask
    text = "\n".join(splits.problems())
    assert str(planted.corrupt) in text and str(planted.truncated) in text


def test_strict_refuses_and_lists_every_file(tmp_path: Path) -> None:
    planted = make_planted_dataset(tmp_path / "d")
    with pytest.raises(DatasetError) as info:
        load_dataset(planted.root, strict=True)
    message = str(info.value)
    for path in (planted.corrupt, planted.empty, planted.truncated):
        assert str(path) in message
    assert "3 unusable file(s)" in message


def test_unreadable_mask_drops_its_sample(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 3, "b": 3})
    (root / "masks").mkdir()
    (root / "masks" / "a_1.png").write_bytes(b"broken")
    splits = load_dataset(root, val_fraction=0)
    assert [(Path(i.path).name, "its mask" in i.reason) for i in splits.dropped] == [
        ("a_1.png", True)
    ]
    assert len(splits.train) == 5


def test_check_false_skips_decoding(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "broken.png").write_bytes(b"x")
    splits = load_dataset(root, val_fraction=0, check=False)
    assert len(splits.train) == 5 and not splits.dropped


# --------------------------------------------------------------------------------------------
# labelling-tool export with URLs: a local server on 127.0.0.1 only


class _Handler(SimpleHTTPRequestHandler):
    """Files under ``directory``, plus ``/slow*`` (1.5 s late), ``/drip`` (a byte every 0.2 s
    of a declared 100), ``/to?URL`` (a redirect to URL) and ``/loop`` (redirects to itself)."""

    requests: list[str]

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        if self.path.startswith(("/to?", "/loop")):
            self.send_response(302)
            self.send_header("Location", self.path.partition("?")[2] or "/loop")
            self.end_headers()
            return
        if self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass
            return
        super().do_GET()


@contextlib.contextmanager
def _serve(host: str, root: Path):
    """An HTTP server on ``host`` serving ``root``: ``(base URL, requested paths)``."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = ThreadingHTTPServer((host, 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def web(tmp_path: Path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    with _serve("127.0.0.1", root) as (base, requests):
        yield root, base, requests


def test_labelling_export_downloads_once(tmp_path: Path, web) -> None:
    www, base, requests = web
    for i in range(4):
        noise_image(i).save(www / f"crack{i}.png")
        noise_image(10 + i).save(www / f"clean{i}.jpg")
    (www / "broken.png").write_bytes(b"not an image")
    rows = [[f"{base}/crack{i}.png", json.dumps({"labels": ["Crack"]})] for i in range(4)]
    rows += [[f"{base}/clean{i}.jpg", json.dumps({"labels": ["No crack"]})] for i in range(4)]
    rows += [
        [f"{base}/missing.png", json.dumps({"labels": ["Crack"]})],
        [f"{base}/broken.png", json.dumps({"labels": ["Crack"]})],
        [f"{base}/crack0.png?again", json.dumps({"labels": []})],  # not annotated yet
    ]
    export = _write_csv(tmp_path / "export.csv", ["image", "annotation"], rows)
    assert detect_layout(export, image_column="image") == "labelling-export"
    cache = tmp_path / "cache"
    options = dict(
        image_column="image",
        label_column="annotation",
        label_key="labels",
        cache_dir=cache,
        allow_private_hosts=True,  # the test server is on 127.0.0.1
    )
    splits = load_dataset(export, val_fraction=0.25, **options)
    assert splits.layout == "labelling-export"
    assert splits.classes == ["Crack", "No crack"]
    assert len(splits.all_samples()) == 8
    assert all(s.path.parent == cache for s in splits.all_samples())
    reasons = {str(i.path).rsplit("/", 1)[-1]: i.reason for i in splits.dropped}
    assert "HTTP 404" in reasons["missing.png"]
    assert "not a readable image" in reasons["broken.png"]
    assert "no label" in reasons["crack0.png?again"]

    fetched = len(requests)
    again = load_dataset(export, val_fraction=0.25, **options)
    assert [s.path for s in again.val] == [s.path for s in splits.val]
    # Only the 404 and the body that is not an image are asked again: neither was cached.
    assert sorted(requests[fetched:]) == ["/broken.png", "/missing.png"]
    with pytest.raises(DatasetError, match="missing.png"):
        load_dataset(export, strict=True, **options)


def test_json_label_key_paths(tmp_path: Path, web) -> None:
    www, base, _ = web
    noise_image(1).save(www / "a.png")
    noise_image(2).save(www / "b.png")
    annotation = [{"result": [{"value": {"choices": ["Crack"]}}]}]
    other = [{"result": [{"value": {"choices": ["Intact"]}}]}]
    rows = [[f"{base}/a.png", json.dumps(annotation)], [f"{base}/b.png", json.dumps(other)]]
    export = _write_csv(tmp_path / "ls.csv", ["data.image", "annotations"], rows)
    options = {
        "image_column": "data.image",
        "label_column": "annotations",
        "cache_dir": tmp_path / "c",
        "allow_private_hosts": True,
    }
    splits = load_dataset(export, label_key="0.result.0.value.choices", val_fraction=0, **options)
    assert splits.classes == ["Crack", "Intact"]
    with pytest.raises(DatasetError, match="(?s)no usable rows.*label key 'nope'"):
        load_dataset(export, label_key="nope", **options)


def test_download_limits_are_reported_per_url(tmp_path: Path, web) -> None:
    www, base, _ = web
    (www / "big.png").write_bytes(b"x" * 5000)
    (www / "slow.png").write_bytes(b"x" * 10)
    urls = [f"{base}/big.png", f"{base}/slow.png", "ftp://127.0.0.1/x.png", f"{base}/nope.png"]
    local, failed = download_images(
        urls, tmp_path / "cache", timeout=0.3, max_bytes=1000, allow_private_hosts=True
    )
    assert local == {}
    reasons = dict(failed)
    assert "download cap" in reasons[f"{base}/big.png"]
    assert "timed out" in reasons[f"{base}/slow.png"]
    assert "unsupported URL scheme 'ftp'" in reasons["ftp://127.0.0.1/x.png"]
    assert "HTTP 404" in reasons[f"{base}/nope.png"]
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written


def test_load_options_object_and_keywords(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    options = LoadOptions(val_fraction=0.25, seed=3)
    by_object = load_dataset(root, options)
    by_keywords = load_dataset(root, val_fraction=0.25, seed=3)
    assert by_object == by_keywords and len(by_object.val) == 2
    assert len(load_dataset(root, options, val_fraction=0).val) == 0  # keywords win
    with pytest.raises(TypeError, match="unknown data-loading option.*val_frac"):
        load_dataset(root, val_frac=0.1)
    with pytest.raises(DatasetError, match="download_timeout"):
        load_dataset(root, download_timeout=0)


def test_layout_and_augment_names_are_declared_once() -> None:
    from fracturekit.config import AUGMENTS, LAYOUTS
    from fracturekit.data import READERS
    from fracturekit.data._transforms import _AUGMENT_STEPS

    assert ("auto", *READERS) == LAYOUTS
    assert tuple(_AUGMENT_STEPS) == AUGMENTS
    assert LoadOptions.__dataclass_fields__["layout"].metadata["choices"] == LAYOUTS


# --------------------------------------------------------------------------------------------
# download hardening: where a URL may lead, how long it may take, what the cache keeps


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "cloud-metadata"),
        ("fd00:ec2::254", "cloud-metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_refusal(address: str, why: str | None) -> None:
    assert address_refusal(address) == why


def test_private_hosts_are_refused_by_default(tmp_path: Path, web) -> None:
    www, base, requests = web
    noise_image(1).save(www / "a.png")
    local, failed = download_images([f"{base}/a.png"], tmp_path / "cache")
    assert local == {} and "127.0.0.1, a loopback address" in dict(failed)[f"{base}/a.png"]
    assert requests == []  # refused before connecting
    export = _write_csv(tmp_path / "e.csv", ["image", "label"], [[f"{base}/a.png", "crack"]])
    with pytest.raises(DatasetError, match="loopback"):
        load_dataset(export, cache_dir=tmp_path / "cache")


def test_a_redirect_to_a_private_address_is_refused(tmp_path: Path, web, monkeypatch) -> None:
    """A URL on an allowed host that redirects to 127.0.0.1: the redirect is checked too."""
    from fracturekit.data import _download

    www, base, requests = web
    noise_image(1).save(www / "a.png")
    refusal = _download.address_refusal
    # 127.0.0.2 stands for a public host here; 127.0.0.1 stays refused.
    monkeypatch.setattr(
        _download, "address_refusal", lambda a: None if a == "127.0.0.2" else refusal(a)
    )
    with _serve("127.0.0.2", www) as (public, public_requests):
        local, failed = download_images([f"{public}/to?{base}/a.png"], tmp_path / "cache")
        assert public_requests == [f"/to?{base}/a.png"]
    assert local == {} and "loopback" in failed[0].reason
    assert requests == []  # the private server was never asked
    assert not list((tmp_path / "cache").iterdir())


def test_redirects_are_followed_a_bounded_number_of_times(tmp_path: Path, web) -> None:
    www, base, requests = web
    noise_image(1).save(www / "a.png")
    urls = [f"{base}/to?/a.png", f"{base}/loop"]
    local, failed = download_images(urls, tmp_path / "cache", allow_private_hosts=True)
    assert list(local) == [f"{base}/to?/a.png"]
    assert local[urls[0]].read_bytes() == (www / "a.png").read_bytes()
    assert "more than 5 redirects" in dict(failed)[f"{base}/loop"]
    assert requests.count("/loop") == 6


def test_the_deadline_bounds_a_slow_drip(tmp_path: Path, web) -> None:
    """A server sending a byte every 0.2 s never trips the per-read timeout; the overall
    deadline ends the download, and the partial body is not cached."""
    _, base, _ = web
    start = time.monotonic()
    local, failed = download_images(
        [f"{base}/drip"], tmp_path / "cache", timeout=5, deadline=1, allow_private_hosts=True
    )
    assert time.monotonic() - start < 3
    assert local == {} and "1 s deadline" in failed[0].reason
    assert not list((tmp_path / "cache").iterdir())


def test_a_cached_partial_body_is_downloaded_again(tmp_path: Path, web) -> None:
    from fracturekit.data._hashing import cache_name

    www, base, requests = web
    noise_image(1).save(www / "a.png")
    url = f"{base}/a.png"
    cache = tmp_path / "cache"
    cache.mkdir()
    good = (www / "a.png").read_bytes()
    (cache / cache_name(url)).write_bytes(good[:40])  # what an older version kept
    local, failed = download_images([url], cache, allow_private_hosts=True)
    assert not failed and local[url].read_bytes() == good and requests == ["/a.png"]
    local, _ = download_images([url], cache, allow_private_hosts=True)
    assert requests == ["/a.png"]  # a cached file that decodes is a hit

    # The partial body is never reported as a success: gone from the server, it is a failure.
    (cache / cache_name(url)).write_bytes(good[:40])
    (www / "a.png").unlink()
    local, failed = download_images([url], cache, allow_private_hosts=True)
    assert local == {} and "HTTP 404" in failed[0].reason
    assert not (cache / cache_name(url)).exists()


# --------------------------------------------------------------------------------------------
# transforms


def _blobs(size: int = 64) -> tuple[Image.Image, np.ndarray]:
    arr = np.full((size, size), 25, np.uint8)
    arr[10:34, 12:30] = 225
    arr[40:56, 36:58] = 225
    return Image.fromarray(arr, "L").convert("RGB"), arr > 127


@pytest.mark.parametrize("augment", ["none", "default", "strong"])
def test_mask_follows_the_image_through_augmentation(augment: str) -> None:
    image, mask = _blobs()
    transform = build_transforms(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=augment)
    masks, ious = [], []
    for seed in range(12):
        torch.manual_seed(seed)
        x, m = transform(image, mask)
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert m.shape == (1, 48, 48) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        gray = x.mean(0)
        bright = gray > (gray.max() + gray.min()) / 2
        target = m[0] > 0.5
        iou = float((bright & target).sum() / max(1, (bright | target).sum()))
        # bilinear image vs nearest mask differ by about a pixel at edges (blur too, in
        # "strong"); a mask left unaugmented scores about 0.3 on average.
        assert iou > 0.75, f"{augment} seed {seed}: IoU {iou:.2f}"
        ious.append(iou)
        masks.append(m)
    assert np.mean(ious) > 0.85
    moved = any(not torch.equal(masks[0], other) for other in masks[1:])
    assert moved == (augment != "none")


def test_eval_transform_resizes_and_normalises() -> None:
    transform = build_transforms(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, m = transform(Image.new("RGB", (40, 30), (255, 0, 255)))
    assert m is None and x.shape == (3, 16, 16)
    assert torch.allclose(x[0], torch.full((16, 16), 2.0)) and torch.allclose(
        x[1], torch.tensor(-2.0)
    )
    gray = build_transforms(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels=1)
    y, _ = gray(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert y.shape == (1, 16, 16) and torch.allclose(y, torch.tensor(2.0))
    with pytest.raises(ValueError, match="augment"):
        build_transforms(16, (0.5,), (0.5,), augment="heavy")
    with pytest.raises(ValueError, match="mask is"):
        transform(Image.new("RGB", (40, 30)), np.zeros((10, 10), bool))


def test_transform_and_dataset_pickle(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    splits = load_dataset(root, val_fraction=0)
    transform = build_transforms(24, (0.5,) * 3, (0.5,) * 3, augment="default")
    dataset = ImageDataset(splits.train, transform)
    clone = pickle.loads(pickle.dumps(dataset))
    torch.manual_seed(0)
    x1, y1 = dataset[1]
    torch.manual_seed(0)
    x2, y2 = clone[1]
    assert torch.equal(x1, x2) and y1 == y2 == 0


def test_dataset_yields_masks_aligned_with_exif_images(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "crack").mkdir(parents=True)
    (root / "intact").mkdir()
    (root / "masks").mkdir()
    stored = blob_image((48, 40), box=(4, 4, 18, 30))
    write_exif_jpeg(root / "crack" / "turned.jpg", stored, orientation=8)
    Image.fromarray(((np.asarray(stored) > 127) * 255).astype(np.uint8)).save(
        root / "masks" / "turned.png"
    )
    noise_image(1, (48, 40)).save(root / "intact" / "plain.png")
    splits = load_dataset(root, val_fraction=0)
    transform = build_transforms(32, (0.5,), (0.5,), channels=1)
    dataset = ImageDataset(splits.train, transform, channels=1, with_masks=True)
    x, y, m = dataset[0]
    assert splits.classes[y] == "crack"
    assert x.shape == (1, 32, 32) and m.shape == (1, 32, 32)
    bright = x[0] > 0
    assert (bright == (m[0] > 0.5)).float().mean() > 0.95
    x, y, m = dataset[1]
    assert splits.classes[y] == "intact" and m.sum() == 0
    plain = ImageDataset(splits.train, None)
    x, y = plain[0]
    assert x.shape == (3, 48, 40)  # EXIF orientation 8 turns 48x40 (WxH) into 40 wide, 48 high


def test_dataloader_batches(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 3, "b": 3})
    splits = load_dataset(root, val_fraction=0)
    dataset = ImageDataset(
        splits.train, build_transforms(16, (0.5,) * 3, (0.5,) * 3), with_masks=True
    )
    x, y, m = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 0, 1] and m.shape == (4, 1, 16, 16)


# --------------------------------------------------------------------------------------------
# class imbalance


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [
        Sample(Path(f"{label}_{i}.png"), label, str(label))
        for label, n in counts.items()
        for i in range(n)
    ]


def test_class_counts_and_weights() -> None:
    samples = _samples({0: 30, 1: 10})
    assert class_counts(samples) == {0: 30, 1: 10}
    weights = class_weights(samples, 3)
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, torch.tensor([40 / 60, 40 / 20, 0.0]))
    per_sample = sum(weights[s.label] for s in samples) / len(samples)
    assert abs(float(per_sample) - 1.0) < 1e-6  # normalised: weights average one per sample
    assert torch.allclose(class_weights(_samples({0: 5, 1: 5}), 2), torch.ones(2))


def test_sampler_balances_and_is_seeded() -> None:
    samples = _samples({0: 90, 1: 10})
    draws = list(make_sampler(samples, seed=1))
    assert len(draws) == 100 and draws == list(make_sampler(samples, seed=1))
    assert draws != list(make_sampler(samples, seed=2))
    labels = [samples[i].label for seed in range(20) for i in make_sampler(samples, seed=seed)]
    assert 0.4 < sum(labels) / len(labels) < 0.6  # the 10% class is drawn about half the time


def test_undersample_keeps_minority_and_caps_others() -> None:
    samples = _samples({0: 50, 1: 8, 2: 12})
    kept = undersample(samples, 1.5, seed=5)
    assert class_counts(kept) == {0: 12, 1: 8, 2: 12}
    assert kept == undersample(samples, 1.5, seed=5)
    assert kept != undersample(samples, 1.5, seed=6)
    assert all(s in samples for s in kept)
    order = [samples.index(s) for s in kept]
    assert order == sorted(order)
    with pytest.raises(ValueError):
        undersample(samples, 0.5)


# --------------------------------------------------------------------------------------------
# real data


def test_crack500_patches_split_by_source_image(shared_data: Path) -> None:
    manifest = shared_data / "crack500_patches" / "patches.csv"
    splits = load_dataset(
        manifest,
        image_column="patch",
        label_column="label",
        group_column="source_image",
        val_fraction=0.2,
        seed=0,
    )
    assert splits.layout == "csv"
    assert splits.classes == ["crack", "no_crack"]
    assert len(splits.all_samples()) == 2000 and not splits.dropped
    train_sources = {s.group for s in splits.train}
    val_sources = {s.group for s in splits.val}
    assert len(train_sources & val_sources) == 0  # zero source photos shared
    assert 0.15 < len(splits.val) / 2000 < 0.25
    assert {s.class_name for s in splits.val} == {"crack", "no_crack"}
    assert sum(s.mask is not None for s in splits.all_samples()) == 1000


@pytest.mark.slow
def test_fracatlas_loads_with_truncated_warnings(shared_data: Path) -> None:
    splits = load_dataset(shared_data / "fracatlas", val_fraction=0.2)
    assert splits.layout == "folders" and splits.classes == ["fractured", "not_fractured"]
    assert len(splits.warnings) == 34 and not splits.dropped
    assert len(splits.all_samples()) == 2077
    assert sum(s.mask is not None for s in splits.all_samples()) == 349
    with pytest.raises(DatasetError, match="34 unusable file"):
        load_dataset(shared_data / "fracatlas", strict=True)


def test_truncated_file_in_dataset_loads_in_dataset_class(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    write_truncated_jpeg(root / "a" / "cut.jpg")
    splits = load_dataset(root, val_fraction=0)
    assert [Path(w.path).name for w in splits.warnings] == ["cut.jpg"]
    dataset = ImageDataset(splits.train, build_transforms(16, (0.5,) * 3, (0.5,) * 3))
    assert all(dataset[i][0].shape == (3, 16, 16) for i in range(len(dataset)))


def test_identical_copies_never_straddle_a_random_split(tmp_path: Path) -> None:
    from PIL import Image

    from fracturekit.data import load_dataset

    rng = np.random.default_rng(0)
    for cls in ("crack", "no_crack"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
        # Five byte-identical copies of one image under other names.
        for j in range(5):
            (tmp_path / cls / f"copy{j}.png").write_bytes((tmp_path / cls / "0.png").read_bytes())
    for seed in range(5):
        splits = load_dataset(tmp_path, val_fraction=0.3, seed=seed)
        train = {p.read_bytes() for p in (Path(s.path) for s in splits.train)}
        val = {p.read_bytes() for p in (Path(s.path) for s in splits.val)}
        assert not train & val
        assert len(splits.val) > 0
