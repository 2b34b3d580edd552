"""Shapes over architectures and encoders: one base tester, one small subclass each."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from fedbcs_models import (
    CDPAModel,
    FeatureTaps,
    UNet,
    fsr_stage_numbers,
    insert_fsr,
    tappable_module,
)

CLASSES = 3
PROTO_DIM = 8


class BaseModelTester:
    """Subclasses set ``build`` (a zero-argument model factory) and ``fsr_stages``."""

    fsr_stages = (2, 3, 4)

    @staticmethod
    def expected_bottleneck(backbone, x):
        """smp: the deepest encoder level (smp Unet's ``center`` is an Identity)."""
        return backbone.encoder(x)[-1]

    @classmethod
    def build(cls):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        torch.manual_seed(0)
        model = CDPAModel(insert_fsr(cls.build(), cls.fsr_stages), proto_dim=PROTO_DIM)
        return model.eval()  # no dropout or drop-connect: tapped and plain runs must agree

    @pytest.mark.parametrize("size", [64, 96])
    def test_logits_and_embeddings(self, model, size):
        x = torch.randn(2, model.taps.in_channels, size, size)
        logits = model(x)
        assert logits.shape == (2, CLASSES, size, size)
        tapped_logits, embeddings = model.forward_with_embeddings(x)
        torch.testing.assert_close(tapped_logits, logits)
        strides = {"encoder": model.taps.encoder_strides[0], "decoder": 4}
        for stream, embedding in embeddings.items():
            side = size // strides[stream]
            dim = model.head.embedding_dim(stream)
            assert embedding.materialize().shape == (2, dim, side, side)
            assert embedding.cosine(torch.randn(4, dim)).shape == (2, 4, side, side)

    def test_taps_match_encoder_channels(self, model):
        out_channels = [c for c in model.backbone.encoder.out_channels[1:] if c > 0]
        assert model.taps.encoder_channels == out_channels
        assert model.taps.encoder_strides == sorted(model.taps.encoder_strides)
        assert model.taps.decoder_strides == sorted(model.taps.decoder_strides)
        assert len(model.taps.decoder_channels) >= 2

    @pytest.mark.parametrize("size", [64, 96])
    def test_bottleneck(self, model, size):
        taps = model.taps
        x = torch.randn(2, taps.in_channels, size, size)
        tapped = taps.forward_with_levels(x)
        side = size // taps.bottleneck_stride
        assert tapped.bottleneck.shape == (2, taps.bottleneck_channels, side, side)
        torch.testing.assert_close(tapped.bottleneck, self.expected_bottleneck(model.backbone, x))
        torch.testing.assert_close(tapped.output, model(x))

    def test_taps_leave_no_hooks(self, model):
        """The taps hook only for the call, even when the forward raises; FSR's stay."""

        def hooks():
            return sum(len(module._forward_hooks) for module in model.modules())

        assert hooks() == len(self.fsr_stages)
        model.taps.forward_with_levels(torch.randn(2, model.taps.in_channels, 64, 64))
        assert hooks() == len(self.fsr_stages)
        with pytest.raises((RuntimeError, ValueError)):  # wrong channel count
            model.taps.forward_with_levels(torch.randn(2, model.taps.in_channels + 1, 64, 64))
        assert hooks() == len(self.fsr_stages)

    def test_fsr_modules_match_stage_channels(self, model):
        for stage in self.fsr_stages:
            fsr = model.backbone.encoder_fsr[f"stage{stage}"]
            assert fsr.channels == model.backbone.encoder.out_channels[stage]

    def test_fsr_inputs_and_outputs_are_tapped(self, model):
        """Each FSR's input, and its output, which is the encoder level of its stage."""
        taps = model.taps
        tapped = taps.forward_with_levels(torch.randn(2, taps.in_channels, 64, 64))
        assert list(tapped.fsr) == list(self.fsr_stages)
        for stage, (before, after) in tapped.fsr.items():
            assert after is tapped.encoder[taps.encoder_stages.index(stage)]
            fsr = model.backbone.encoder_fsr[f"stage{stage}"]
            torch.testing.assert_close(after, fsr(before))
            assert not torch.allclose(before, after)

    def test_taps_found_inside_a_wrapper_and_run_through_it(self, model):
        """The network inside the CDPA wrapper is found; a wrapper that changes the input
        runs, and the taps see what the network got."""
        assert tappable_module(model) is model.backbone
        x = torch.randn(2, model.taps.in_channels, 64, 64)
        doubled = torch.nn.Sequential(_Double(), model.backbone)
        through = model.taps.forward_with_levels(x, through=doubled)
        direct = model.taps.forward_with_levels(2 * x)
        torch.testing.assert_close(through.output, doubled(x))
        torch.testing.assert_close(through.bottleneck, direct.bottleneck)
        torch.testing.assert_close(through.decoder[0], direct.decoder[0])


class _Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


class TestUNet(BaseModelTester):
    @classmethod
    def build(cls):
        return UNet(in_channels=1, classes=CLASSES, init_features=8)

    @staticmethod
    def expected_bottleneck(backbone, x):
        return backbone.decoder.center(backbone.encoder(x)[-1])

    def test_levels_are_the_released_ones(self, model):
        taps = model.taps
        assert (taps.encoder_channels, taps.encoder_strides) == ([8, 16, 32, 64], [1, 2, 4, 8])
        assert (taps.decoder_channels, taps.decoder_strides) == ([8, 16, 32, 64], [1, 2, 4, 8])
        assert (taps.bottleneck_channels, taps.bottleneck_stride) == (128, 16)


# Narrow decoders keep the suite fast; the taps and FSR discover whatever widths there are.
SMALL_DECODERS = {
    "Unet": {"decoder_channels": (32, 16, 8, 8, 8)},
    "UnetPlusPlus": {"decoder_channels": (32, 16, 8, 8, 8)},
    "FPN": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "DeepLabV3Plus": {"decoder_channels": 32},
}


def _smp_tester(architecture: str, encoder: str):
    class Tester(BaseModelTester):
        @classmethod
        def build(cls):
            return getattr(smp, architecture)(
                encoder,
                encoder_weights=None,
                in_channels=3,
                classes=CLASSES,
                **SMALL_DECODERS[architecture],
            )

    Tester.__name__ = f"Test{architecture}_{encoder.replace('-', '_')}"
    return Tester


for _architecture in SMALL_DECODERS:
    for _encoder in ("resnet18", "efficientnet-b0", "tu-resnet18"):
        _tester = _smp_tester(_architecture, _encoder)
        globals()[_tester.__name__] = _tester


def test_fsr_stage_numbers():
    assert fsr_stage_numbers(UNet(init_features=8)) == [1, 2, 3, 4]
    assert fsr_stage_numbers(smp.FPN("resnet18", encoder_weights=None)) == [1, 2, 3, 4, 5]


def test_unknown_decoder_lists_the_valid_ones():
    model = smp.Linknet("resnet18", encoder_weights=None)
    with pytest.raises(TypeError, match="valid: UNetDecoder, UnetDecoder"):
        FeatureTaps(model)
    with pytest.raises(TypeError, match="valid decoders: UNetDecoder, UnetDecoder"):
        tappable_module(torch.nn.Sequential(model))


def test_encoder_stages_number_the_levels_as_insert_fsr_does():
    assert FeatureTaps(UNet(init_features=8)).encoder_stages == [1, 2, 3, 4]
    taps = FeatureTaps(
        smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8))
    )
    assert taps.encoder_stages == [1, 2, 3]
