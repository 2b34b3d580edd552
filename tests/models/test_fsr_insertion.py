"""FSR inside models: placement, equality with the literal FFT FSR, errors, scripting."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from fedbcs_models import UNet, insert_fsr
from fedbcs_ops import FSR, reference

BUILDERS = {
    "unet": lambda: UNet(in_channels=1, classes=2, init_features=8),
    "smp-unet-efficientnet": lambda: smp.Unet(
        "efficientnet-b0",
        encoder_weights=None,
        in_channels=1,
        classes=2,
        decoder_channels=(32, 16, 8, 8, 8),
    ),
    "smp-fpn-resnet18": lambda: smp.FPN(
        "resnet18",
        encoder_weights=None,
        in_channels=1,
        classes=2,
        decoder_pyramid_channels=32,
        decoder_segmentation_channels=32,
    ),
    "smp-deeplab-tu-resnet18": lambda: smp.DeepLabV3Plus(
        "tu-resnet18", encoder_weights=None, in_channels=1, classes=2, decoder_channels=32
    ),
}


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("gate", ["static", "adaptive"])
def test_forward_equals_literal_fft_fsr(name, gate, monkeypatch):
    torch.manual_seed(0)
    model = insert_fsr(BUILDERS[name](), (2, 3, 4), gate=gate).eval()
    with torch.no_grad():
        for fsr in model.encoder_fsr.values():
            fsr.weight.uniform_(0.5, 1.5)
            fsr.bias.uniform_(-0.5, 0.5)
            if gate == "static":
                fsr.logits.uniform_(-0.1, 0.1)
            else:
                fsr.gate_proj.weight.normal_(0, 0.01)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(FSR, "forward", reference.fsr_module_fft)
        literal = model(x)
    error = (fast - literal).abs().max() / literal.abs().max()
    assert error <= 1e-4, f"relative error {error:.3g}"


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("stage", [1, 2])
def test_fsr_output_is_the_stage_output_and_feeds_deeper_stages(name, stage):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        before = model.encoder(x)
        insert_fsr(model, (stage,))
        fsr = model.encoder_fsr[f"stage{stage}"]
        fsr.weight.zero_()
        fsr.bias.fill_(7.0)
        after = model.encoder(x)
    assert (after[stage] == 7.0).all()
    torch.testing.assert_close(after[stage - 1], before[stage - 1])
    assert not torch.allclose(after[stage + 1], before[stage + 1])


def test_unet_fsr_stages_equal_insert_fsr():
    built = UNet(init_features=8, fsr_stages=(2, 3, 4), fsr_gate="adaptive")
    inserted = insert_fsr(UNet(init_features=8), (2, 3, 4), gate="adaptive")
    assert built.state_dict().keys() == inserted.state_dict().keys()
    assert [f.channels for f in built.encoder_fsr.values()] == [16, 32, 64]


def test_bad_stages_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"selection of \[1, 2, 3, 4\] for UNet, got \[5\]"):
        insert_fsr(UNet(init_features=8), (2, 5))
    with pytest.raises(ValueError, match=r"selection of \[1, 2, 3, 4, 5\] for FPN, got \[0\]"):
        insert_fsr(smp.FPN("resnet18", encoder_weights=None), (0,))
    model = insert_fsr(UNet(init_features=8), (2,))
    with pytest.raises(ValueError, match=r"encoder stages \[2\] already have FSR"):
        insert_fsr(model, (2, 3))
    with pytest.raises(TypeError, match="model must have an `encoder`"):
        insert_fsr(torch.nn.Conv2d(3, 3, 1), (1,))


def test_unet_input_validation():
    model = UNet(in_channels=1, init_features=8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, H, W\]"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 1, 40, 40))


def test_plain_unet_scripts():
    model = UNet(in_channels=1, init_features=8).eval()
    x = torch.randn(1, 1, 32, 32)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.slow
def test_fsr_unet_compiles():
    torch.manual_seed(0)
    model = UNet(in_channels=1, init_features=8, fsr_stages=(2, 3, 4))
    x = torch.randn(2, 1, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
