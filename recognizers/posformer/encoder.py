"""PosFormer's image encoder, CoMER's DenseNet-B (posformer.md §3.1).

Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017), in the bottleneck-compression
("B", "C") form used for math recognition since DenseWAP (Zhang et al., ICPR 2018), then a 1×1 projection
to d, DETR's normalised 2-D sinusoidal encoding and a LayerNorm (Zhao & Gao, CoMER, ECCV 2022).

Faithful to the reference: bottlenecks are conv → BN → ReLU (not the textbook BN → ReLU → conv), convs
have no bias, pooling uses ceil mode, and the pixel mask is downsampled by taking every second row and
column four times. As in the reference, batch padding is *not* masked inside the DenseNet (the image is
zero there, like the background), so features of cells whose receptive field reaches into the padding
can differ from those of the image alone; the mask does make the positional encoding and every later
step (the decoders' key masks and the ARM) ignore the padded cells.

Legend: B images, H×W pixels, h = ⌈H/16⌉, w = ⌈W/16⌉, g growth rate, d model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import sinusoidal_encoding_2d
from .config import EncoderConfig

__all__ = ["DenseNetB", "Encoder", "downsample_mask"]


class _ConvBNReLU(nn.Sequential):
    """conv (no bias) → BN → ReLU → dropout, the reference's building block."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dropout: float, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.Dropout(dropout))


class _Bottleneck(nn.Module):
    """x → concat(x, conv3×3(conv1×1(x))): adds g channels."""

    def __init__(self, c_in: int, cfg: EncoderConfig) -> None:
        super().__init__()
        width = cfg.bottleneck_width * cfg.growth_rate
        self.reduce = _ConvBNReLU(c_in, width, 1, cfg.dropout)
        self.grow = _ConvBNReLU(width, cfg.growth_rate, 3, cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.grow(self.reduce(x))], dim=1)  # (B, C + g, h, w)


class _Transition(nn.Module):
    """conv1×1 → BN → ReLU → dropout → average pool 2 (ceil): compresses channels, halves h and w."""

    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(c_in, c_out, 1, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(x), 2, ceil_mode=True)


class DenseNetB(nn.Module):
    """The DenseNet-B backbone: `(B, 1, H, W)` → `(B, out_channels, h, w)` at stride 16.

    Args:
        cfg: the encoder configuration (684 output channels by default).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        stem = cfg.stem_channels
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(cfg.block_channels):
            stages.extend(_Bottleneck(c_in + k * cfg.growth_rate, cfg) for k in range(cfg.num_layers))
            if i < 2:
                stages.append(_Transition(c_out, cfg.block_channels[i + 1][0], cfg.dropout))
        self.stages = nn.Sequential(*stages)
        self.post_norm = nn.BatchNorm2d(cfg.out_channels)

    def forward(self, images: Tensor) -> Tensor:
        x = F.max_pool2d(self.stem(images), 2, ceil_mode=True)  # (B, 2g, H/4, W/4)
        return self.post_norm(self.stages(x))  # (B, C, h, w)


def downsample_mask(masks: Tensor, times: int = 4) -> Tensor:
    """Pixel mask at the feature resolution: every second row and column, ``times`` times.

    Args:
        masks: `(B, H, W)` bool, True on padding.

    Returns:
        `(B, ⌈H/2^times⌉, ⌈W/2^times⌉)`, which is the feature map's size under ceil-mode pooling.
    """
    for _ in range(times):
        masks = masks[:, ::2, ::2]
    return masks


class Encoder(nn.Module):
    """DenseNet-B, 1×1 projection to d, 2-D positional encoding, LayerNorm.

    Args:
        cfg: the DenseNet configuration.
        d_model: d, the decoders' width.
    """

    def __init__(self, cfg: EncoderConfig, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.densenet = DenseNetB(cfg)
        self.proj = nn.Conv2d(cfg.out_channels, d_model, 1)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a zero-padded batch.

        Args:
            images: `(B, 1, H, W)` in [0, 1], white ink on black, zero on padding.
            masks: `(B, H, W)` bool, True on padding.

        Returns:
            Features `(B, h, w, d)` and their mask `(B, h, w)` (True on padding).
        """
        if images.dim() != 4 or images.shape[1] != 1 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"need images (B, 1, H, W) and masks (B, H, W); got {tuple(images.shape)} "
                             f"and {tuple(masks.shape)}")
        x = self.proj(self.densenet(images)).permute(0, 2, 3, 1)  # (B, h, w, d)
        mask = downsample_mask(masks.bool())  # (B, h, w): the same size as x under ceil-mode pooling
        x = x + sinusoidal_encoding_2d(mask, self.d_model).to(x.dtype)
        return self.norm(x), mask
