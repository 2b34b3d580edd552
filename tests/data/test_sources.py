"""The data-source registry: what each source declares, and that every engine builds its
model from the declaration (``in_channels``, ``num_classes``), not from a constant."""

from __future__ import annotations

import pytest
import torch

from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import DATA_SOURCES, DataSource, check_data, data_source, load_sites
from fedbcs_fl.simulation import Simulation

from .._tiny import first_conv_and_head, tiny_config

# name → (sites, num_classes, in_channels)
SHIPPED = {
    "synthetic-nuclei": (("site-A", "site-B", "site-C", "site-D"), 2, 3),
    "synthetic-prostate": (("site-A", "site-B", "site-C", "site-D", "site-E", "site-F"), 2, 3),
    "synthetic-prostate-zones": (
        ("site-A", "site-B", "site-C", "site-D", "site-E", "site-F"),
        3,
        3,
    ),
    "prostate": (("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL"), 2, 3),
    "nuclei": (("TCIA", "CRC", "KIRC", "TNBC"), 2, 3),
}


def test_the_registry_lists_the_shipped_sources_then_your_own_folder():
    declared = {s.name: (s.sites, s.num_classes, s.in_channels) for s in DATA_SOURCES.values()}
    assert declared == SHIPPED | {"folder": ((), None, None)}  # folder reads them
    assert [s.name for s in DATA_SOURCES.values() if s.reads_files] == [
        "prostate",
        "nuclei",
        "folder",
    ]


@pytest.mark.parametrize("name", list(SHIPPED))
def test_loaded_sites_have_the_declared_channels_and_classes(name, request):
    fields = {"n_train": 2, "n_test": 1, "image_size": 32}
    source = data_source(name)
    if source.reads_files:  # the tiny folders of tests/data/conftest.py
        fields["data_root"] = str(request.getfixturevalue(f"{name}_root"))
        fields["sites"] = {"prostate": ["BIDMC", "HK"], "nuclei": ["TNBC", "CRC"]}[name]
    sites = load_sites(RunConfig(dataset=name, **fields).resolved())
    for site in sites:
        image, mask = site.train[0]
        assert image.shape[0] == source.in_channels
        assert mask.min() >= 0 and mask.max() < source.num_classes


VALID_SOURCES = (
    "synthetic-nuclei, synthetic-prostate, synthetic-prostate-zones, prostate, nuclei, folder"
)


@pytest.mark.parametrize(
    "entry, message",
    [
        (data_source, f"unknown dataset 'mnist'; valid: {VALID_SOURCES}$"),
        (
            lambda name: RunConfig(dataset=name).resolved(),
            f"dataset must be one of {VALID_SOURCES}; got 'mnist'$",
        ),
    ],
    ids=["registry", "config"],
)
def test_an_unknown_source_is_refused_with_the_valid_names(entry, message):
    with pytest.raises(ValueError, match=message):
        entry("mnist")


def test_check_data_refuses_a_generated_source_naming_those_it_reads():
    with pytest.raises(
        ValueError, match="check-data reads real data sets; valid: prostate, nuclei, folder"
    ):
        check_data("synthetic-nuclei", "/nowhere")


def test_a_source_whose_images_disagree_with_its_declaration_is_refused(
    three_class_source, monkeypatch
):
    three_channels = DataSource(
        three_class_source.name, three_class_source.sites, 3, 3, three_class_source.load
    )
    monkeypatch.setitem(DATA_SOURCES, three_channels.name, three_channels)
    config = tiny_config(dataset=three_channels.name)
    with pytest.raises(ValueError, match="site north has 1 channels; three-class-gray declares"):
        load_sites(config)


@pytest.mark.parametrize("method", ["fedavg", "fedbcs"])
def test_the_simulator_builds_the_model_its_source_declares(three_class_source, method):
    config = tiny_config(method, dataset=three_class_source.name)
    sites = load_sites(config)
    simulation = Simulation(config, sites, progress=False)
    assert first_conv_and_head(simulation.global_weights) == (1, 3)
    images = torch.stack([sites[0].train[i][0] for i in range(2)])
    assert simulation.global_model(images).shape == (2, 3, *images.shape[-2:])
