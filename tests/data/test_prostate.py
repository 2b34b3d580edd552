"""The prostate loader and checker on tiny NIfTI folders in the published layout."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedbcs_fl.data.problems import DataError
from fedbcs_fl.data.prostate import check_prostate, load_prostate
from fedbcs_fl.data.samples import SegmentationSamples
from fedbcs_fl.data.splits import split_of, write_split
from tests.data.conftest import (
    FOREGROUND_SLICES,
    MASK_X,
    MASK_Y,
    VOLUME_SHAPE,
    assert_problems,
    prostate_volumes,
    write_nifti,
    write_prostate_case,
)


def _load(root: Path, **kwargs):
    return load_prostate(root, sites=["BIDMC", "HK"], image_size=8, **kwargs)


def test_samples_stack_three_slices_centred_on_foreground(prostate_root):
    bidmc = _load(prostate_root, augment=False)[0]
    depth = VOLUME_SHAPE[2]
    image, mask = bidmc.test[0]
    assert image.dtype == torch.float32 and mask.dtype == torch.int64
    assert image.shape == (3, 8, 8) and mask.shape == (8, 8)
    assert len(bidmc.test) == len(FOREGROUND_SLICES) * len(bidmc.test.cases)
    for index, z in enumerate(FOREGROUND_SLICES):
        image, mask = bidmc.test[index]
        neighbours = [max(z - 1, 0), z, min(z + 1, depth - 1)]
        expected = torch.tensor(neighbours, dtype=torch.float32) / (depth - 1)
        torch.testing.assert_close(image, expected[:, None, None].expand(3, 8, 8))
        # Slices are [y, x] (as SimpleITK reads them), so rows are nibabel's y.
        expected_mask = torch.zeros(8, 8, dtype=torch.int64)
        expected_mask[MASK_Y, MASK_X] = 1
        assert torch.equal(mask, expected_mask)


def test_intensities_clip_at_99th_percentile(tmp_path):
    image, mask = prostate_volumes()
    image[0, 0, 0] = 1e6  # one bright outlier, above the 99th percentile
    write_prostate_case(tmp_path / "UCL", "Case00", image, mask)
    for index in range(1, 4):
        write_prostate_case(tmp_path / "UCL", f"Case{index:02d}")
    site = load_prostate(tmp_path, sites=["ucl"], image_size=8, split=(0.5, 0.25, 0.25))[0]
    for dataset in (site.train, site.val, site.test):
        for image, _ in dataset:
            assert image.min() >= 0 and image.max() <= 1
    outlier_case = next(d for d in (site.train, site.val, site.test) if "Case00" in d.cases)
    first, _ = outlier_case[outlier_case.sample_cases.index("Case00")]
    assert first[0, 0, 0] == 1 and first[0, 0, 1] == 0


def test_resize_keeps_masks_binary_and_nearest(prostate_root):
    small = _load(prostate_root, augment=False)[0].test
    large = load_prostate(prostate_root, sites=["BIDMC"], image_size=16, augment=False)[0].test
    shrunk = load_prostate(prostate_root, sites=["BIDMC"], image_size=5, augment=False)[0].test
    for index in range(len(small)):
        mask = small[index][1]
        doubled = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.equal(large[index][1], doubled)
        assert large[index][0].shape == (3, 16, 16)
        assert set(shrunk[index][1].unique().tolist()) <= {0, 1}
        assert shrunk[index][0].shape == (3, 5, 5)


def test_split_is_by_case_seeded_and_proportional(prostate_root):
    sites = _load(prostate_root)
    split = split_of(sites)
    assert {name: len(part["train"]) for name, part in split.items()} == {"BIDMC": 6, "HK": 3}
    assert [len(split["BIDMC"][name]) for name in ("val", "test")] == [2, 2]
    for site in sites:
        parts = [set(site.train.cases), set(site.val.cases), set(site.test.cases)]
        assert sum(map(len, parts)) == len(set.union(*parts))  # no case in two splits
        for dataset in (site.train, site.val, site.test):
            assert set(dataset.sample_cases) == set(dataset.cases)
    assert split_of(_load(prostate_root)) == split
    assert split_of(_load(prostate_root, seed=1)) != split
    # Each site's split depends on its own cases only.
    assert split_of(load_prostate(prostate_root, sites=["HK"], image_size=8))["HK"] == split["HK"]


def test_written_split_is_reused(prostate_root, tmp_path):
    path = tmp_path / "split.json"
    written = write_split(_load(prostate_root), path)
    assert json.loads(path.read_text()) == written
    assert split_of(_load(prostate_root, seed=7, split_file=path)) == written
    assert split_of(_load(prostate_root, seed=7, split_file=written)) == written


def test_split_file_not_matching_the_data_is_refused(prostate_root, tmp_path):
    split = split_of(_load(prostate_root))
    split["BIDMC"]["test"].append("Case99")
    split["BIDMC"]["val"].append(split["BIDMC"]["train"][0])
    split["HK"]["train"].pop()
    path = tmp_path / "split.json"
    write_split(split, path)
    with pytest.raises(DataError) as error:
        _load(prostate_root, split_file=path)
    message = str(error.value)
    assert "case Case99 is listed but not in the data" in message
    assert "is in more than one split" in message
    assert "HK: case" in message and "in no split" in message
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read split file"):
        _load(prostate_root, split_file=path)


def test_volumes_are_decoded_once_and_epochs_read_no_nifti(prostate_root, monkeypatch):
    calls = []
    real_load = nibabel.load
    monkeypatch.setattr(
        nibabel, "load", lambda path, **kw: calls.append(path) or real_load(path, **kw)
    )
    sites = _load(prostate_root)
    assert len(calls) == 2 * 15  # each image and mask once
    for _epoch in range(2):
        for site in sites:
            for dataset in (site.train, site.val, site.test):
                for _batch in DataLoader(dataset, batch_size=4, shuffle=True):
                    pass
    assert len(calls) == 2 * 15


def test_worker_processes_give_the_same_samples(prostate_root):
    serial = load_prostate(prostate_root, sites=["HK"], image_size=8, augment=False)[0]
    parallel = load_prostate(prostate_root, sites=["HK"], image_size=8, augment=False, workers=2)[0]
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(serial, name).images, getattr(parallel, name).images)
        assert torch.equal(getattr(serial, name).masks, getattr(parallel, name).masks)


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, 6, 6, generator=generator) > 0.5).to(torch.uint8)
    images = (masks[:, None].expand(4, 3, 6, 6) * 255).contiguous()
    images[:, 0, 0, :] = 128  # makes every rotation and flip distinguishable
    dataset = SegmentationSamples(images, masks, ["a"] * 4, augment=True)
    torch.manual_seed(0)
    seen = set()
    first_run = []
    for _ in range(40):
        image, mask = dataset[1]
        assert torch.equal(image[1], mask.float())
        first_run.append(image)
        seen.add(image[0].numpy().tobytes())
    assert len(seen) == 8  # all rotations and flips of the square occur
    torch.manual_seed(0)
    assert all(torch.equal(dataset[1][0], image) for image in first_run)


def test_loading_is_deterministic_with_shuffling_workers(prostate_root):
    def batches():
        torch.manual_seed(3)
        train = _load(prostate_root)[0].train
        loader = DataLoader(train, batch_size=5, shuffle=True, num_workers=1)
        return [batch for batch in loader]

    first, second = batches(), batches()
    train = _load(prostate_root, augment=False)[0].train
    copy = pickle.loads(pickle.dumps(train))  # what spawned DataLoader workers receive
    assert all(torch.equal(a, b) for a, b in zip(copy[0], train[0], strict=True))
    for (image_a, mask_a), (image_b, mask_b) in zip(first, second, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_check_reports_per_site_counts(prostate_root):
    report = check_prostate(prostate_root, sites=["BIDMC", "HK"])
    assert report.ok
    bidmc = report.sites[0]
    assert (bidmc.cases, bidmc.slices, bidmc.foreground_slices) == (10, 60, 30)
    area = (MASK_X.stop - MASK_X.start) * (MASK_Y.stop - MASK_Y.start)
    assert bidmc.foreground_fraction == pytest.approx(3 * area / (8 * 8 * 6))
    text = report.format()
    assert "BIDMC" in text and "30 / 60" in text and "no problems found" in text


def test_unknown_site_names_the_valid_ones(prostate_root):
    with pytest.raises(ValueError, match=r"valid sites: BIDMC, HK, I2CVB, ISBI, ISBI_1\.5, UCL"):
        load_prostate(prostate_root, sites=["BIDMC", "Mars"])


def _bad_site(root: Path) -> dict[str, str]:
    """A site with one of each problem; returns {file name: expected message part}."""
    site = root / "ISBI"
    image, mask = prostate_volumes()
    write_prostate_case(site, "Case00")  # one good case
    write_nifti(site / "Case01.nii.gz", image)
    write_nifti(site / "Case02_segmentation.nii.gz", mask)
    write_prostate_case(site, "Case03", mask=mask[:, :6])
    noise = np.random.default_rng(0).random(image.shape, np.float32)  # compresses badly
    truncated, _ = write_prostate_case(site, "Case04", image=noise)
    truncated.write_bytes(truncated.read_bytes()[:-30])  # header intact, data cut short
    (site / "Case05.nii.gz").write_bytes(b"this is not a NIfTI file")
    write_nifti(site / "Case05_segmentation.nii.gz", mask)
    write_prostate_case(site, "Case06", mask=np.zeros_like(mask))
    write_prostate_case(site, "Case07", mask=mask * 3)
    write_prostate_case(site, "Case08", mask=mask.astype(np.int16) * -1)
    write_prostate_case(site, "Case09", mask=mask.astype(np.float32) * 0.5)
    write_prostate_case(site, "Case10", mask=mask * 2)  # zone labels: fine
    return {
        "Case01.nii.gz": "image has no mask",
        "Case02_segmentation.nii.gz": "mask has no image",
        "Case03_segmentation.nii.gz": "does not match image shape",
        "Case04.nii.gz": "cannot read NIfTI (EOFError",
        "Case05.nii.gz": "cannot read NIfTI",
        "Case06_segmentation.nii.gz": "mask is empty",
        "Case07_segmentation.nii.gz": "unexpected values 3",
        "Case08_segmentation.nii.gz": "unexpected values -1",
        "Case09_segmentation.nii.gz": "unexpected values 0.5",
        "UCL": "site folder is missing",
    }


def test_check_lists_every_problem_at_once(tmp_path):
    expected = _bad_site(tmp_path)
    report = check_prostate(tmp_path, sites=["ISBI", "UCL"])
    assert_problems(report.problems, expected)
    assert report.sites[0].cases == 2  # Case00 and Case10 are readable
    assert f"{len(expected)} problem(s)" in report.format()


def test_load_refuses_bad_data_with_one_error(tmp_path):
    expected = _bad_site(tmp_path)
    with pytest.raises(DataError) as error:
        load_prostate(tmp_path, sites=["ISBI", "UCL"], image_size=8)
    assert len(error.value.problems) == len(expected)
    message = str(error.value)
    assert all(name in message for name in expected)
    assert isinstance(error.value, ValueError)


def test_missing_root_and_too_few_cases(tmp_path):
    with pytest.raises(DataError, match="data root is not a folder"):
        load_prostate(tmp_path / "nowhere")
    write_prostate_case(tmp_path / "HK", "Case00")
    with pytest.raises(DataError, match="too few"):
        load_prostate(tmp_path, sites=["HK"], image_size=8)


def test_a_case_in_nii_and_nii_gz_and_broken_links_are_listed_and_refused(prostate_root):
    write_nifti(prostate_root / "HK" / "Case00.nii", prostate_volumes()[0])  # beside .nii.gz
    os.symlink(prostate_root / "gone.nii.gz", prostate_root / "HK" / "Case07.nii.gz")
    expected = {
        "Case00.nii.gz": "second image for Case00 (also Case00.nii)",
        "Case07.nii.gz": "broken symbolic link",
    }
    assert_problems(check_prostate(prostate_root, sites=["HK"]).problems, expected)
    with pytest.raises(DataError) as error:
        load_prostate(prostate_root, sites=["HK"], image_size=8)
    assert_problems(error.value.problems, expected)


def test_a_split_file_with_an_empty_or_repeated_list_is_refused(prostate_root, tmp_path):
    drawn = split_of(load_prostate(prostate_root, sites=["HK"], image_size=8))["HK"]
    first = drawn["train"][0]
    spoiled = {
        "HK": {"train": [*drawn["train"], first], "val": drawn["val"] + drawn["test"], "test": []}
    }
    write_split(spoiled, tmp_path / "split.json")
    with pytest.raises(DataError) as error:
        load_prostate(prostate_root, sites=["HK"], image_size=8, split_file=tmp_path / "split.json")
    message = str(error.value)
    assert "HK: the test split lists no case" in message, message
    assert f"HK: case {first} is listed twice in train" in message
