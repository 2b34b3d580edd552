"""The ``folder`` source: your own sites in nnU-Net's raw layout, 2-D and 3-D, any number
of classes, on tiny folders written by :func:`tests.data.conftest.write_folder_site`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedbcs_fl.cli import main
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import check_data, load_sites
from fedbcs_fl.data.folder import load_folder, slicing_axis
from fedbcs_fl.data.problems import DataError
from fedbcs_fl.data.splits import split_of, write_split
from tests.data.conftest import (
    FOLDER_SHAPE_2D,
    FOLDER_SHAPE_3D,
    folder_case,
    write_folder_site,
    write_nifti,
    write_picture,
)

STEP = 1 / 255  # samples are stored as 8-bit


def _config(root: Path, **fields) -> RunConfig:
    return RunConfig(dataset="folder", data_root=str(root), **fields).resolved()


@pytest.mark.parametrize("classes", [2, 3])
def test_2d_sites_load_with_the_classes_and_channels_dataset_json_declares(tmp_path, classes):
    for site in ("south", "north"):
        write_folder_site(tmp_path, site, classes=classes)
    config = _config(tmp_path, image_size=12)
    assert (config.in_channels, config.num_classes) == (1, classes)
    sites = load_sites(config)
    assert [site.name for site in sites] == ["north", "south"]  # the folders, sorted
    for site in sites:
        assert len(site.train) + len(site.test) == 5  # one sample per 2-D case
        for image, mask in site.test:
            assert image.shape == (1, 12, 12) and mask.shape == (12, 12)
            # Rows read 10·row + index: scaled from the minimum to the 99th percentile.
            rows = torch.arange(12, dtype=torch.float32) / 11
            torch.testing.assert_close(image[0], rows[:, None].expand(12, 12), atol=STEP, rtol=0)
            assert set(mask.unique().tolist()) == set(range(classes))


def test_an_rgb_picture_holds_the_three_channels_dataset_json_names(tmp_path):
    site = write_folder_site(tmp_path, "rgb", cases=3)
    declared = json.loads((site / "dataset.json").read_text())
    declared["channel_names"] = {"0": "R", "1": "G", "2": "B"}
    (site / "dataset.json").write_text(json.dumps(declared))
    for index, path in enumerate(sorted((site / "imagesTr").iterdir())):
        image, _ = folder_case(index, FOLDER_SHAPE_2D, 3)
        write_picture(path, np.stack([image, image[::-1], image], axis=-1).astype(np.uint8))
    (sample, _), *_ = load_folder(tmp_path, image_size=12, augment=False)[0].test
    rows = torch.arange(12, dtype=torch.float32) / 11
    expected = torch.stack([rows, rows.flip(0), rows])[:, :, None].expand(3, 12, 12)
    torch.testing.assert_close(sample, expected, atol=STEP, rtol=0)


@pytest.mark.parametrize(
    ("spacing", "slices_per_case"),
    [((3.0, 1.0, 1.0), 5), ((1.0, 1.0, 3.0), 4)],
    ids=["axis0", "axis2"],
)
def test_volumes_are_sliced_along_the_axis_of_lowest_resolution(tmp_path, spacing, slices_per_case):
    write_folder_site(tmp_path, "mri", cases=4, classes=2, volumetric=True, spacing=spacing)
    assert slicing_axis(spacing) == (0 if spacing[0] == 3 else 2)
    site = load_folder(tmp_path, image_size=10, augment=False)[0]
    cases = len(site.train.cases) + len(site.test.cases)
    # Only the slices holding a class other than background become samples: along axis
    # 0, slices 1–5; along axis 2, columns 2–5.
    assert len(site.train) + len(site.test) == cases * slices_per_case


def test_neighbouring_slices_become_channels_and_repeat_at_the_ends(tmp_path):
    write_folder_site(tmp_path, "mri", cases=3, channels=2, volumetric=True)
    config = _config(tmp_path, image_size=10, slice_neighbours=1)
    assert (config.in_channels, config.num_classes) == (6, 3)  # 2 channels × 3 slices
    site = load_folder(tmp_path, image_size=10, augment=False, slice_neighbours=1)[0]
    last = FOLDER_SHAPE_3D[0] - 1
    slices = list(range(1, last + 1)) * len(site.test.cases)  # slices 1..5 of each case
    for (image, mask), z in zip(site.test, slices, strict=True):
        assert image.shape == (6, 10, 10) and mask.shape == (10, 10)
        around = torch.tensor([z - 1, z, min(z + 1, last)], dtype=torch.float32) / last
        expected = torch.cat([around, 1 - around])  # channel 1 is mirrored
        torch.testing.assert_close(image[:, 0, 0], expected, atol=STEP, rtol=0)
        assert (image == image[:, :1, :1]).all()  # each slice is constant


def test_held_out_cases_of_labels_ts_are_the_test_split(tmp_path):
    write_folder_site(tmp_path, "a", cases=4, held_out=2)
    site = load_folder(tmp_path, image_size=12)[0]
    assert site.train.cases == ["case0", "case1", "case2", "case3"]
    assert site.test.cases == ["test0", "test1"] and site.val is None


def test_the_seeded_split_is_by_case_and_reused_from_split_json(tmp_path):
    root = tmp_path / "data"
    for site in ("a", "b"):
        write_folder_site(root, site, cases=10, volumetric=True)
    sites = load_sites(_config(root, image_size=10, seed=3))
    for site in sites:
        train, test = set(site.train.sample_cases), set(site.test.sample_cases)
        assert not train & test and len(train | test) == 10  # every slice of a case together
        assert len(test) == 2  # 20 % of the cases
    written = write_split(sites, tmp_path / "split.json")
    other_seed = load_sites(_config(root, image_size=10, seed=4))
    assert split_of(other_seed) != written
    reused = _config(root, image_size=10, seed=4, split_file=str(tmp_path / "split.json"))
    assert split_of(load_sites(reused)) == written


# ---- check-data: every problem, each naming its file ------------------------------------


def _break(site: Path, name: str, how) -> Path:
    path = site / name
    how(path)
    return path


def _volumetric_root(root: Path) -> dict[str, str]:
    """Three sites of 2-channel volumes with three classes: ``alpha`` with one problem per
    case, ``beta`` that declares two classes, ``gamma`` without ``dataset.json``; the
    expected problems as {path relative to root: part of the message}."""
    alpha = write_folder_site(root, "alpha", cases=9, channels=2, volumetric=True)
    write_folder_site(root, "beta", cases=2, classes=2, channels=2, volumetric=True)
    gamma = write_folder_site(root, "gamma", cases=2, channels=2, volumetric=True)
    (gamma / "dataset.json").unlink()
    images, labels = alpha / "imagesTr", alpha / "labelsTr"
    (labels / "case0.nii.gz").unlink()
    (images / "case1_0001.nii.gz").unlink()
    image, _ = folder_case(2, FOLDER_SHAPE_3D, 3)
    write_nifti(images / "case2_0001.nii.gz", image[:, :-1], (3.0, 1.0, 1.0))
    _, label = folder_case(3, FOLDER_SHAPE_3D, 3)
    label[0, 0, 0] = 7
    write_nifti(labels / "case3.nii.gz", label, (3.0, 1.0, 1.0))
    (images / "case4_0000.nii.gz").write_bytes(b"")
    (images / "case5_0000.nii.gz").write_bytes(b"not a NIfTI file")
    image[0, 0, 0] = np.nan
    write_nifti(images / "case6_0000.nii.gz", image, (3.0, 1.0, 1.0))
    image, _ = folder_case(7, FOLDER_SHAPE_3D, 3, channel=1)
    write_nifti(images / "case7_0001.nii.gz", image, (2.0, 1.0, 1.0))
    for channel in (0, 1):
        (images / f"case8_{channel:04d}.nii.gz").unlink()
    return {
        "alpha/imagesTr/case0_0000.nii.gz": "image has no label (expected labelsTr/case0.nii.gz)",
        "alpha/imagesTr/case1_0001.nii.gz": "channel file is missing",
        "alpha/imagesTr/case2_0001.nii.gz": "shape (6, 7, 10) does not match label case2",
        "alpha/labelsTr/case3.nii.gz": "label has values 7 not in dataset.json's labels "
        "(0 background, 1 peripheral, 2 transition)",
        "alpha/imagesTr/case4_0000.nii.gz": "file is empty",
        "alpha/imagesTr/case5_0000.nii.gz": "cannot read NIfTI",
        "alpha/imagesTr/case6_0000.nii.gz": "NaN or infinite values",
        "alpha/imagesTr/case7_0001.nii.gz": "voxel spacing (2.0, 1.0, 1.0) differs from "
        "case7.nii.gz's (3.0, 1.0, 1.0)",
        "alpha/labelsTr/case8.nii.gz": "label has no image (expected imagesTr/case8_0000",
        "alpha/dataset.json": "numTraining is 9 but labelsTr holds 8 labels",
        "beta/dataset.json": "site beta disagrees with site alpha: channels ['channel0', "
        "'channel1'], labels ['class0', 'class1'], 3-D vs channels ['channel0', 'channel1'], "
        "labels ['background', 'peripheral', 'transition'], 3-D",
        "gamma/dataset.json": "missing: every site folder needs nnU-Net's dataset.json",
    }


def _picture_root(root: Path) -> dict[str, str]:
    """One site of 2-D pictures with the problems only pictures have, and a misnamed file."""
    site = write_folder_site(root, "slides", cases=4)
    image, label = folder_case(0, FOLDER_SHAPE_2D, 3)
    colour = np.stack([label, label, 2 * label], axis=-1)
    write_picture(site / "labelsTr" / "case0.png", colour)
    rgb = np.stack([image] * 3, axis=-1).astype(np.uint8)
    write_picture(site / "imagesTr" / "case1_0000.png", rgb)
    write_picture(site / "imagesTr" / "case2_0000.png", image[:-2].astype(np.uint8))
    write_picture(site / "imagesTr" / "notes.png", image.astype(np.uint8))
    return {
        "slides/labelsTr/case0.png": "colour mask",
        "slides/imagesTr/case1_0000.png": "the case's files hold 3 channel(s) but dataset.json "
        "lists 1",
        "slides/imagesTr/case2_0000.png": "shape (10, 10) does not match label case2.png's",
        "slides/imagesTr/notes.png": "image name must end in _XXXX",
    }


@pytest.mark.parametrize("make", [_volumetric_root, _picture_root], ids=["3d", "2d"])
def test_check_data_lists_every_problem_at_once_each_naming_its_file(tmp_path, make):
    expected = make(tmp_path)
    report = check_data("folder", tmp_path)
    found = {str(p.path.relative_to(tmp_path)): p.message for p in report.problems}
    assert set(found) == set(expected), report.format()
    for path, message in expected.items():
        assert message in found[path], (path, found[path])
    with pytest.raises(DataError) as error:
        load_folder(tmp_path, sites=[s for s in ("alpha", "slides") if (tmp_path / s).is_dir()])
    assert not {str(p.path.relative_to(tmp_path)) for p in error.value.problems} - set(expected)


def test_check_data_command_exits_1_with_the_list_and_no_traceback(tmp_path, capsys):
    expected = _volumetric_root(tmp_path)
    assert main(["check-data", "--dataset", "folder", "--data-root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert f"{len(expected)} problem(s):" in out and "Traceback" not in out + err
    assert all(str(tmp_path / path) in out for path in expected)


def test_a_folder_without_sites_or_dataset_json_says_so(tmp_path):
    assert [str(p) for p in check_data("folder", tmp_path / "none").problems] == [
        f"{tmp_path / 'none'}: data root is not a folder"
    ]
    (tmp_path / "empty").mkdir()
    assert "no site folders" in str(check_data("folder", tmp_path / "empty").problems[0])
    site = write_folder_site(tmp_path / "bad", "a")
    (site / "dataset.json").write_text(
        json.dumps({"channel_names": {"1": "T2"}, "labels": {"0": "background", "1": "x"}})
    )
    messages = [p.message for p in check_data("folder", tmp_path / "bad").problems]
    assert [m.split(" ")[0] for m in messages] == [
        "channel_names",
        "labels",
        "file_ending",
        "numTraining",
    ]


# ---- the run's model shape comes from dataset.json ---------------------------------------


def test_sites_that_disagree_are_named_before_any_training(tmp_path):
    write_folder_site(tmp_path, "a", classes=3)
    write_folder_site(tmp_path, "b", classes=2)
    with pytest.raises(DataError, match="site b disagrees with site a"):
        _config(tmp_path)
    assert _config(tmp_path, sites=["b"]).num_classes == 2


def test_the_shape_needs_the_data_or_matching_values(tmp_path):
    write_folder_site(tmp_path, "a", classes=3)
    with pytest.raises(ValueError, match="give --data-root"):
        RunConfig(dataset="folder").resolved()
    given = RunConfig(dataset="folder", in_channels=1, num_classes=3).resolved()
    assert (given.in_channels, given.num_classes) == (1, 3)
    with pytest.raises(ValueError, match=r"slice_neighbours must be 0 for 2-D \.png"):
        _config(tmp_path, slice_neighbours=1)
    with pytest.raises(ValueError, match="slice_neighbours applies to volumes"):
        RunConfig(dataset="synthetic-prostate", slice_neighbours=1).resolved()
    with pytest.raises(ValueError, match="synthetic-nuclei has num_classes 2; the config says 3"):
        RunConfig(num_classes=3).resolved()
    wrong = _config(tmp_path, num_classes=4)
    with pytest.raises(
        ValueError, match=r"has in_channels 1 and num_classes 3 .* the run has 1 and 4"
    ):
        load_sites(wrong)


def test_a_copy_of_a_site_is_a_site(tmp_path):
    write_folder_site(tmp_path, "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert [site.name for site in load_sites(_config(tmp_path, image_size=12))] == ["a", "b"]
