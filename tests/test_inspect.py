"""fracturekit.inspection and ``fracturekit inspect``: every planted problem is reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from fixture_images import make_class_folders, make_planted_dataset, noise_image
from fracturekit.cli import main
from fracturekit.inspection import InspectionReport, inspect_dataset


@pytest.fixture
def planted(tmp_path: Path):
    return make_planted_dataset(tmp_path / "planted")


def test_inspect_reports_every_planted_problem(planted, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = inspect_dataset(planted.root, out, samples_per_class=3)
    assert isinstance(report, InspectionReport)
    assert report.layout == "split-folders"
    assert report.classes == ["crack", "no crack"]
    assert report.splits == ["train", "val"]
    assert report.counts == {
        "train": {"crack": 8, "no crack": 7},
        "val": {"crack": 3, "no crack": 3},
    }
    unreadable = {Path(i.path): i.reason for i in report.unreadable}
    assert set(unreadable) == {planted.corrupt, planted.empty}
    assert "empty file" in unreadable[planted.empty]
    assert [Path(i.path) for i in report.truncated] == [planted.truncated]
    assert len(report.cross_split_duplicates) == 1
    files = {Path(p) for p, _, _ in report.cross_split_duplicates[0].entries}
    assert files == {planted.duplicate_train, planted.duplicate_val}
    assert report.cross_split_duplicates[0].splits == {"train", "val"}
    assert str(planted.notes) in report.ignored
    assert report.masks == {"crack": 1, "no crack": 0}
    assert not report.mask_mismatches  # the EXIF-rotated mask matches after the transpose
    # the special formats were decoded, each under its stored mode
    assert {"I;16", "RGBA", "MONOCHROME1;16", "RGB"} <= set(report.modes)
    assert report.formats["DICOM"] == 1
    assert report.sizes["width"] == {"min": 24.0, "median": 40.0, "max": 64.0}
    assert report.readable == report.total - 2 == 19
    assert report.exit_code == 1
    assert any("unreadable" in e for e in report.errors)
    assert any("leakage" in e for e in report.errors)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 1
    assert {Path(u["path"]) for u in summary["unreadable"]} == {planted.corrupt, planted.empty}
    assert summary["truncated"][0]["path"] == str(planted.truncated)
    assert len(summary["cross_split_duplicates"]) == 1
    for name in ("samples.png", "histograms.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200


def test_strict_counts_truncated_as_unreadable(planted) -> None:
    report = inspect_dataset(planted.root, strict=True)
    assert planted.truncated in {Path(i.path) for i in report.unreadable}
    assert not report.truncated


def test_clean_data_set_exits_zero(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "clean", {"crack": 3, "no_crack": 3})
    report = inspect_dataset(root)
    assert report.splits == ["all"]  # nothing split at random by default
    assert report.counts == {"all": {"crack": 3, "no_crack": 3}}
    assert report.errors == [] and report.warnings == [] and report.exit_code == 0
    assert report.outputs == {}


def test_duplicates_within_a_split_and_across_classes_are_warnings(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"crack": 2, "no_crack": 2})
    data = (root / "crack" / "crack_0.png").read_bytes()
    (root / "crack" / "copy.png").write_bytes(data)
    (root / "no_crack" / "same.png").write_bytes(
        (root / "no_crack" / "no_crack_0.png").read_bytes()
    )
    (root / "no_crack" / "mislabelled.png").write_bytes(data)
    report = inspect_dataset(root)
    assert report.exit_code == 0  # no split to leak across
    assert len(report.duplicates) == 2
    assert len(report.label_conflicts) == 1
    assert report.label_conflicts[0].classes == {"crack", "no_crack"}
    assert any("different classes" in w for w in report.warnings)
    assert any("within a split" in w for w in report.warnings)


def test_group_leak_in_a_manifest_is_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "imgs", {"a": 2, "b": 2})
    rows = [
        ["imgs/a/a_0.png", "a", "patient1", "train"],
        ["imgs/a/a_1.png", "a", "patient1", "val"],
        ["imgs/b/b_0.png", "b", "patient2", "train"],
        ["imgs/b/b_1.png", "b", "patient3", "val"],
    ]
    with open(tmp_path / "m.csv", "w", newline="") as fp:
        csv.writer(fp).writerows([["path", "label", "group", "split"], *rows])
    report = inspect_dataset(tmp_path / "m.csv")
    assert report.group_leaks == {"patient1": ["train", "val"]}
    assert report.exit_code == 1


def test_mask_size_mismatch_is_reported(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", {"crack": 2})
    (root / "masks").mkdir()
    Image.new("L", (10, 10)).save(root / "masks" / "crack_0.png")
    report = inspect_dataset(root)
    assert len(report.mask_mismatches) == 1 and "10x10" in report.mask_mismatches[0].reason


def test_cli_prints_problems_and_exits_one(planted, tmp_path: Path, capsys) -> None:
    code = main(["inspect", str(planted.root), "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert code == 1
    assert "ERROR" in text and "unreadable" in text and "leakage" in text
    assert str(planted.corrupt) in text and str(planted.empty) in text
    assert str(planted.truncated) in text and "truncated" in text
    assert str(planted.duplicate_val) in text
    assert "samples per class and split" in text
    assert (tmp_path / "o" / "summary.json").exists()


def test_cli_clean_exit_zero_and_help(tmp_path: Path, capsys) -> None:
    root = make_class_folders(tmp_path / "clean", {"a": 2, "b": 2})
    assert main(["inspect", str(root)]) == 0
    assert "clean" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "Exit codes" in help_text and "leakage" in help_text
    for flag in ("--out", "--layout", "--strict", "--group-column", "--label-key"):
        assert flag in help_text


def test_cli_unusable_data_set_is_exit_two(tmp_path: Path, capsys) -> None:
    (tmp_path / "nothing").mkdir()
    noise_image(1).save(tmp_path / "nothing" / "lonely.png")
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no layout recognised" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# real data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fracatlas", "crack500_patches", "crack500", "masonry_dais"])
def test_inspect_real_data(shared_data: Path, tmp_path: Path, name: str) -> None:
    report = inspect_dataset(shared_data / name, tmp_path / name)
    assert not report.unreadable and not report.cross_split_duplicates
    assert report.exit_code == 0
    assert report.readable == report.total
    assert (tmp_path / name / "samples.png").exists()
    if name == "fracatlas":
        assert len(report.truncated) == 34  # shared/data/README.md
        assert report.counts == {"all": {"fractured": 349, "not_fractured": 1728}}
        assert report.masks["fractured"] == 349 and not report.mask_mismatches
        assert set(report.modes) == {"L", "RGB"}
    else:
        assert not report.truncated


@pytest.mark.slow
def test_inspect_crack500_patches_by_source_image(shared_data: Path) -> None:
    report = inspect_dataset(
        shared_data / "crack500_patches" / "patches.csv",
        image_column="patch",
        group_column="source_image",
        val_fraction=0.2,
    )
    assert report.splits == ["train", "val"]
    assert not report.group_leaks and report.exit_code == 0


# --------------------------------------------------------------------------------------------
# one class; the loading options shared with load_dataset


def test_one_class_is_a_warning_not_clean(tmp_path: Path, capsys) -> None:
    root = make_class_folders(tmp_path / "one", {"crack": 3})
    report = inspect_dataset(root)
    assert report.one_class and report.exit_code == 0
    assert any("only one class (crack)" in w for w in report.warnings)
    assert any("only one class" in w for w in report.to_dict()["warnings"])
    assert main(["inspect", str(root)]) == 0
    text = capsys.readouterr().out
    assert "one class only" in text and "clean" not in text


def test_inspect_flags_are_the_load_options(capsys) -> None:
    from fracturekit.cli import build_parser
    from fracturekit.cli._load_options import load_options
    from fracturekit.data import LoadOptions
    from fracturekit.data._options import cli_fields
    from fracturekit.inspection import INSPECT_DEFAULTS

    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    help_text = capsys.readouterr().out
    for f in cli_fields():
        assert "--" + f.name.replace("_", "-") in help_text
    assert {"--download-timeout", "--download-deadline", "--max-download-bytes"} <= set(
        help_text.split()
    )
    argv = ["inspect", "d", "--download-timeout", "5", "--download-deadline", "7"]
    argv += ["--max-download-bytes", "10", "--strict", "--layout", "csv"]
    options = load_options(build_parser().parse_args(argv), INSPECT_DEFAULTS)
    assert options == LoadOptions(
        val_fraction=0.0,
        download_timeout=5.0,
        download_deadline=7.0,
        max_download_bytes=10,
        strict=True,
        layout="csv",
    )
    plain = load_options(build_parser().parse_args(["inspect", "d"]), INSPECT_DEFAULTS)
    assert plain == INSPECT_DEFAULTS and plain.val_fraction == 0.0


def test_inspect_takes_every_load_option(tmp_path: Path) -> None:
    from fracturekit.data import LoadOptions

    root = make_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    report = inspect_dataset(root, options=LoadOptions(val_fraction=0.25), download_timeout=5)
    assert report.splits == ["train", "val"]
    with pytest.raises(TypeError, match="unknown data-loading option"):
        inspect_dataset(root, download_timeout_s=5)
