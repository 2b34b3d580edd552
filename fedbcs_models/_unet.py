"""The paper's UNet, composed like a segmentation_models_pytorch model.

``UNet = UNetEncoder → UNetDecoder → 1×1 segmentation head``. The encoder returns the
smp-style feature list ``[x, enc1, enc2, enc3, enc4]`` and carries ``out_channels``, so
:func:`~fedbcs_models.insert_fsr` and :class:`~fedbcs_models.FeatureTaps` treat the UNet
and smp models alike. The bottleneck is the decoder's ``center``, as in smp's Unet.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ._fsr_insertion import insert_fsr


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3×3 convs, each followed by BatchNorm (no affine, no running stats) and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, affine=False, track_running_stats=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, affine=False, track_running_stats=False),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """Four stages of f, 2f, 4f, 8f channels; stages 2–4 start with a 2×2 max-pool.

    Args:
        in_channels: channels of the input image.
        init_features: f, the channels of the first stage.

    ``forward(x)`` returns ``[x, enc1, enc2, enc3, enc4]`` at strides 1, 1, 2, 4, 8.
    """

    def __init__(self, in_channels: int, init_features: int):
        super().__init__()
        widths = [init_features * 2**stage for stage in range(4)]
        self.out_channels = [in_channels, *widths]
        stages = [double_conv(in_channels, widths[0])]
        for previous, width in itertools.pairwise(widths):
            stages.append(nn.Sequential(nn.MaxPool2d(2), double_conv(previous, width)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNetUpBlock(nn.Module):
    """2×2 transposed-conv upsampling, concatenation with the skip, then a double conv."""

    def __init__(self, in_channels: int, skip_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = double_conv(2 * skip_channels, skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Bottleneck (``center``: max-pool, double conv to 16f) and four up blocks.

    Args:
        encoder_channels: the encoder's ``out_channels`` ``[in, f, 2f, 4f, 8f]``.

    ``forward(features)`` returns the last up block's output (f channels, stride 1).
    """

    def __init__(self, encoder_channels: list[int]):
        super().__init__()
        skips = encoder_channels[1:][::-1]
        self.center = nn.Sequential(nn.MaxPool2d(2), double_conv(skips[0], 2 * skips[0]))
        widths = [2 * skips[0], *skips]
        self.blocks = nn.ModuleList(
            UNetUpBlock(width, skip) for width, skip in zip(widths, skips, strict=False)
        )
        self.out_channels = skips[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[-1])
        for depth, block in enumerate(self.blocks):
            x = block(x, features[-1 - depth])
        return x


class UNet(nn.Module):
    """The paper's UNet (and the authors' released one), with optional FSR.

    Args:
        in_channels: image channels (default 3).
        classes: output channels of the logits (default 2).
        init_features: f; encoder stages have f, 2f, 4f, 8f channels and the bottleneck
            16f (default 32, the paper's; tests and CPU runs use 8 or 16).
        fsr_stages: encoder stages (1–4) followed by :class:`fedbcs_ops.FSR` (default
            none; the released setting is ``(2, 3, 4)``), put there by
            :func:`~fedbcs_models.insert_fsr`.
        fsr_gate: the FSR gate, ``"static"`` (default, released) or ``"adaptive"``.

    ``forward(x)`` takes ``[B, in_channels, H, W]`` with H and W multiples of 16 and
    returns logits ``[B, classes, H, W]``. Without FSR the model scripts
    (``torch.jit.script``); :class:`fedbcs_ops.FSR` itself does not script, so with FSR use
    ``torch.compile``.

    Example:
        >>> model = UNet(in_channels=1, classes=3, init_features=8, fsr_stages=(2, 3, 4))
        >>> model(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 2,
        init_features: int = 32,
        fsr_stages: tuple[int, ...] = (),
        fsr_gate: str = "static",
    ):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("classes", classes),
            ("init_features", init_features),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.encoder = UNetEncoder(in_channels, init_features)
        self.decoder = UNetDecoder(self.encoder.out_channels)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, classes, kernel_size=1)
        if fsr_stages:
            insert_fsr(self, fsr_stages, gate=fsr_gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape [B, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        if x.shape[2] % 16 != 0 or x.shape[3] % 16 != 0:
            raise ValueError(f"x height and width must be multiples of 16, got {list(x.shape)}")
        return self.segmentation_head(self.decoder(self.encoder(x)))
