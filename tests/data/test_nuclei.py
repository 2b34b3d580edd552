"""The nuclei loader and checker on tiny PNG / TIFF folders in the published layout."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import load_sites
from fedbcs_fl.data.nuclei import check_nuclei, load_nuclei
from fedbcs_fl.data.problems import DataError
from fedbcs_fl.data.splits import split_of, write_split
from tests.data.conftest import assert_problems, nuclei_pair, write_nuclei_item, write_picture


def test_images_scale_to_unit_range_and_masks_to_foreground(nuclei_root):
    tnbc, crc = load_nuclei(nuclei_root, sites=["TNBC", "CRC"], image_size=10, augment=False)
    for site in (tnbc, crc):
        # Native images are 12x10; resized to 10x10. Masks stay binary.
        for image, mask in site.test:
            assert image.shape == (3, 10, 10) and image.dtype == torch.float32
            assert image.min() >= 0 and image.max() <= 1
            assert mask.shape == (10, 10) and set(mask.unique().tolist()) == {0, 1}


def test_pixels_are_kept_at_native_size_and_masks_resized_nearest(tmp_path):
    image, labels = nuclei_pair(seed=0, size=(10, 10))
    for index in range(2):
        write_picture(tmp_path / "TCIA" / "images" / f"t{index}.png", image)
        write_picture(tmp_path / "TCIA" / "masks" / f"t{index}.tif", labels)
    native = load_nuclei(tmp_path, sites=["TCIA"], image_size=10, augment=False, intensity="dtype")
    native = native[0].test
    torch.testing.assert_close(native[0][0], torch.from_numpy(image).permute(2, 0, 1) / 255)
    expected_mask = torch.from_numpy((labels > 0).astype(np.int64))
    assert torch.equal(native[0][1], expected_mask)
    doubled = load_nuclei(tmp_path, sites=["TCIA"], image_size=20, augment=False)[0].test
    assert torch.equal(doubled[0][1], expected_mask.repeat_interleave(2, 0).repeat_interleave(2, 1))


def _two_ranges(root: Path) -> dict[str, torch.Tensor]:
    """TCIA with two 10×10 images, values 50..101 and 0..51 (each spanning 51 levels, so
    min–max gives multiples of 5/255, which 8-bit storage holds exactly); their pixels."""
    rng = np.random.default_rng(0)
    _, labels = nuclei_pair(seed=0, size=(10, 10))
    pixels = {}
    for stem, low in (("bright", 50), ("dark", 0)):
        image = rng.integers(low, low + 52, (10, 10, 3), dtype=np.uint8)
        image[0, 0, 0], image[0, 1, 1] = low, low + 51
        write_picture(root / "TCIA" / "images" / f"{stem}.png", image)
        write_picture(root / "TCIA" / "masks" / f"{stem}.tif", labels)
        pixels[stem] = torch.from_numpy(image).permute(2, 0, 1).float()
    return pixels


def _samples(site) -> dict[str, torch.Tensor]:
    return {
        case: split[i][0] for split in (site.train, site.test) for i, case in enumerate(split.cases)
    }


def test_images_are_min_max_scaled_per_image_by_default_as_released(tmp_path):
    pixels = _two_ranges(tmp_path)
    (site,) = load_nuclei(tmp_path, sites=["TCIA"], image_size=10, augment=False)
    for case, image in _samples(site).items():
        low = pixels[case].min()
        torch.testing.assert_close(image, (pixels[case] - low) / 51)
    (site,) = load_nuclei(tmp_path, sites=["TCIA"], image_size=10, augment=False, intensity="dtype")
    for case, image in _samples(site).items():
        torch.testing.assert_close(image, pixels[case] / 255)
    with pytest.raises(ValueError, match="intensity must be one of minmax, dtype"):
        load_nuclei(tmp_path, sites=["TCIA"], image_size=10, intensity="unit")


def test_the_run_config_chooses_the_nuclei_intensity(tmp_path):
    pixels = _two_ranges(tmp_path)
    config = RunConfig(
        dataset="nuclei", data_root=str(tmp_path), sites=["TCIA"], image_size=10
    ).resolved()
    for intensity, scale in (
        ("minmax", lambda p: (p - p.min()) / 51),
        ("dtype", lambda p: p / 255),
    ):
        (site,) = load_sites(dataclasses.replace(config, nuclei_intensity=intensity))
        for i, case in enumerate(site.test.cases):  # the test split is never augmented
            torch.testing.assert_close(site.test[i][0], scale(pixels[case]))


def test_lists_give_train_and_test_and_no_val(nuclei_root):
    crc = load_nuclei(nuclei_root, sites=["CRC"], image_size=8)[0]
    assert crc.train.cases == ["crc0", "crc1", "crc2"]
    assert crc.test.cases == ["crc3", "crc4"]
    assert crc.val is None
    assert split_of([crc]) == {
        "CRC": {"train": ["crc0", "crc1", "crc2"], "val": [], "test": ["crc3", "crc4"]}
    }


def test_without_lists_the_split_is_seeded_by_image(nuclei_root, tmp_path):
    tnbc = load_nuclei(nuclei_root, sites=["TNBC"], image_size=8)[0]
    assert (len(tnbc.train), len(tnbc.test), tnbc.val) == (5, 1, None)
    assert not set(tnbc.train.cases) & set(tnbc.test.cases)
    split = split_of([tnbc])
    assert split_of(load_nuclei(nuclei_root, sites=["TNBC"], image_size=8)) == split
    path = tmp_path / "split.json"
    write_split(split, path)
    reused = load_nuclei(nuclei_root, sites=["TNBC"], image_size=8, seed=5, split_file=path)
    assert split_of(reused) == split
    three_way = load_nuclei(nuclei_root, sites=["TNBC"], image_size=8, split=(0.5, 0.25, 0.25))[0]
    assert (len(three_way.train), len(three_way.val), len(three_way.test)) == (2, 2, 2)


def test_check_reports_images_with_foreground(nuclei_root):
    report = check_nuclei(nuclei_root, sites=["TNBC", "CRC"])
    assert report.ok
    tnbc = report.sites[0]
    assert (tnbc.cases, tnbc.slices, tnbc.foreground_slices) == (6, 6, 6)
    assert tnbc.foreground_fraction == pytest.approx(27 / 120)
    assert "images with fg / total" in report.format()


def test_unknown_domain_names_the_valid_ones(nuclei_root):
    with pytest.raises(ValueError, match="valid sites: TCIA, CRC, KIRC, TNBC"):
        check_nuclei(nuclei_root, sites=["BIDMC"])


def _bad_domains(root: Path) -> dict[str, str]:
    """Domains with one of each problem; returns {file name: expected message part}."""
    kirc = root / "KIRC"
    image, labels = nuclei_pair(0)
    write_nuclei_item(kirc, "good")
    write_picture(kirc / "images" / "lonely.png", image)
    write_picture(kirc / "masks" / "orphan.png", labels.astype(np.uint8))
    write_picture(kirc / "images" / "colour.png", image)
    write_picture(kirc / "masks" / "colour.png", image)
    write_picture(kirc / "images" / "negative.tif", image)
    write_picture(kirc / "masks" / "negative.tif", -labels.astype(np.int16))
    write_picture(kirc / "images" / "fraction.tif", image)
    write_picture(kirc / "masks" / "fraction.tif", labels.astype(np.float32) / 2)
    write_picture(kirc / "images" / "shape.png", image)
    write_picture(kirc / "masks" / "shape.png", labels[:, :8].astype(np.uint8))
    truncated, _ = write_nuclei_item(kirc, "truncated")
    truncated.write_bytes(truncated.read_bytes()[:60])
    (kirc / "train.txt").write_text("good\nmissing.png\n")
    (root / "TCIA" / "images").mkdir(parents=True)
    return {
        "lonely.png": "image has no mask",
        "orphan.png": "mask has no image",
        "colour.png": "colour mask",
        "negative.tif": "values -3, -2, -1",
        "fraction.tif": "values 0.5, 1.5",
        "shape.png": "does not match image size",
        "truncated.png": "cannot read image",
        "train.txt": "found without its partner",
        "masks": "folder is missing",
        "TNBC": "domain folder is missing",
    }


def test_check_lists_every_problem_at_once(tmp_path):
    expected = _bad_domains(tmp_path)
    assert_problems(check_nuclei(tmp_path, sites=["KIRC", "TCIA", "TNBC"]).problems, expected)
    with pytest.raises(DataError) as error:
        load_nuclei(tmp_path, sites=["KIRC", "TCIA", "TNBC"], image_size=8)
    assert len(error.value.problems) == len(expected)


def test_list_entries_must_name_images(nuclei_root):
    (nuclei_root / "CRC" / "val.txt").write_text("crc3\ncrc2.tif\nnope.tif\n")
    with pytest.raises(DataError) as error:
        load_nuclei(nuclei_root, sites=["CRC"], image_size=8)
    message = str(error.value)
    assert "lists nope, which is not an image with a mask" in message
    assert "crc2 is also in train.txt" in message


def _palette_mask(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    """A palette-mode PNG: ``indices`` into ``palette`` (RGB colours)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([value for colour in palette for value in colour])
    image.save(path)


def test_a_palette_mask_reads_as_its_colours_not_its_indices(tmp_path):
    _, labels = nuclei_pair(0)
    nuclei = labels > 0
    write_nuclei_item(tmp_path / "TNBC", "inverted")
    # Index 0 is white (nucleus) and index 1 black: read as indices, the mask inverts.
    _palette_mask(tmp_path / "TNBC" / "masks" / "inverted.png", ~nuclei, [(255,) * 3, (0,) * 3])
    report = check_nuclei(tmp_path, sites=["TNBC"])
    assert report.ok, report.format()
    assert report.sites[0].foreground_pixels == nuclei.sum()
    write_nuclei_item(tmp_path / "TNBC", "red")
    _palette_mask(tmp_path / "TNBC" / "masks" / "red.png", nuclei, [(0, 0, 0), (255, 0, 0)])
    (problem,) = check_nuclei(tmp_path, sites=["TNBC"]).problems
    assert problem.path.name == "red.png" and "colour mask" in problem.message


def _spoil_lists_and_links(root: Path) -> dict[str, str]:
    """CRC with an empty val.txt and a train.txt naming an image twice, TNBC with a
    broken link among its images; returns {file name: expected message part}."""
    (root / "CRC" / "val.txt").write_text("\n")
    (root / "CRC" / "train.txt").write_text("crc0\ncrc1.tif\ncrc0.tif\n")
    os.symlink(root / "elsewhere" / "img9.png", root / "TNBC" / "images" / "img9.png")
    return {
        "val.txt": "lists no image",
        "train.txt": "lists crc0 more than once",
        "img9.png": "broken symbolic link",
    }


def test_empty_lists_repeated_entries_and_broken_links_are_listed_and_refused(nuclei_root):
    expected = _spoil_lists_and_links(nuclei_root)
    assert_problems(check_nuclei(nuclei_root, sites=["CRC", "TNBC"]).problems, expected)
    with pytest.raises(DataError) as error:
        load_nuclei(nuclei_root, sites=["CRC", "TNBC"], image_size=8)
    assert_problems(error.value.problems, expected)
