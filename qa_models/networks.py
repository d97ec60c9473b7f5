"""Dice regressors: a 3-D EfficientDet (Isaksson et al. 2022) and the plain 3-D CNN "Reg-net".

Both take an image channel and a mask channel (optionally more: see crop.py) and return one Dice value in
[0, 1] per sample. Dropout layers stay switchable at inference so Monte Carlo dropout can give an interval.

``efficientdet3d-seg`` is the same backbone and BiFPN with a segmentation head instead of the regression
head (issue 15): it draws the reference it expects in the crop, at full resolution, and its Dice is the
soft Dice between that drawing and the candidate. Trained on the reference crops as well as the Dice,
its supervision is dense (where the organ's boundary lies), and its number is geometry, not a scale
learned from one generator's images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("efficientdet3d", "efficientdet3d-seg", "regnet3d")
REFERENCE_ARCHITECTURES = ("efficientdet3d-seg",)  # trained on reference crops as well as Dice values


def pooled_features(feature_map: torch.Tensor) -> torch.Tensor:
    """A feature map (N, C, D, H, W) as its mean and standard deviation over space, for the domain guard
    (the standard deviation sees texture and contrast that the mean averages away)."""
    flat = feature_map.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


class RegNet3D(nn.Module):
    """Four conv blocks (16-32-64-128 filters), global pooling and a dense head with a sigmoid."""

    def __init__(self, in_channels: int = 2, filters: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.2):
        super().__init__()
        blocks, channels = [], in_channels
        for width in filters:
            blocks.append(nn.Sequential(
                nn.Conv3d(channels, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.PReLU(width),
                nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.PReLU(width),
                nn.MaxPool3d(2, ceil_mode=True),
            ))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 2, 64), nn.PReLU(64), nn.Dropout(dropout),
            nn.Linear(64, 1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the first dropout layer (run once per input for MC dropout)."""
        return self.encode_and_describe(x)[0]

    def encode_and_describe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode``'s output and the domain guard's descriptor: the first block's and the encoding's statistics."""
        first = self.features[0](x)
        features = self.features[1:](first)
        # Mean and max pooling: the mean sees overall agreement, the max a local defect.
        encoded = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        return encoded, torch.cat([pooled_features(first), encoded], dim=1)

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """The head, where the dropout layers are: one Dice value per sample."""
        return torch.sigmoid(self.head(encoded)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv3d(channels, reduced, 1)
        self.expand = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.expand(F.silu(self.reduce(x.mean(dim=(2, 3, 4), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation; expansion 2 instead of EfficientNet's 6, as published."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int = 2, kernel: int = 3):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            nn.Conv3d(in_channels, hidden, 1, bias=False), nn.BatchNorm3d(hidden), nn.SiLU(),
            nn.Conv3d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm3d(hidden), nn.SiLU(),
            SqueezeExcitation(hidden, max(1, in_channels // 4)),
            nn.Conv3d(hidden, out_channels, 1, bias=False), nn.BatchNorm3d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class FastNormalisedFusion(nn.Module):
    """EfficientDet's fusion: a weighted sum with ReLU weights normalised to sum to one, then a separable conv."""

    def __init__(self, inputs: int, channels: int):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(inputs))
        self.conv = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv3d(channels, channels, 1, bias=False), nn.BatchNorm3d(channels), nn.SiLU(),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        weights = F.relu(self.weights)
        weights = weights / (weights.sum() + 1e-4)
        size = features[0].shape[2:]
        fused = sum(w * (f if f.shape[2:] == size else F.interpolate(f, size=size, mode="nearest"))
                    for w, f in zip(weights, features))
        return self.conv(fused)


class BiFPN(nn.Module):
    """One bidirectional feature pyramid block over levels P3..P7 (top-down, then bottom-up)."""

    def __init__(self, channels: int, levels: int = 5):
        super().__init__()
        self.top_down = nn.ModuleList(FastNormalisedFusion(2, channels) for _ in range(levels - 1))
        self.bottom_up = nn.ModuleList(FastNormalisedFusion(3, channels) for _ in range(levels - 2))
        self.last = FastNormalisedFusion(2, channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = len(features)
        intermediate = [None] * levels
        intermediate[-1] = features[-1]
        for i in range(levels - 2, -1, -1):  # P6 .. P3
            intermediate[i] = self.top_down[i]([features[i], intermediate[i + 1]])
        outputs = [intermediate[0]]
        for i in range(1, levels - 1):  # P4 .. P6
            outputs.append(self.bottom_up[i - 1]([features[i], intermediate[i], outputs[-1]]))
        outputs.append(self.last([features[-1], outputs[-1]]))
        return outputs


class EfficientDet3D(nn.Module):
    """EfficientNet-B0 backbone in 3-D (levels P1-P7: 32, 16, 24, 40, 80, 112, 192 channels), three BiFPN blocks
    of 64 filters, and a regression head of serial fast normalised fusion nodes, BatchNorm, PReLU, a one-channel
    convolution and a sigmoid, averaged to one Dice value."""

    LEVEL_CHANNELS = (32, 16, 24, 40, 80, 112, 192)
    LEVEL_STRIDES = (2, 1, 2, 2, 2, 1, 2)  # P1 is the stride-2 stem

    def __init__(self, in_channels: int = 2, bifpn_channels: int = 64, bifpn_repeats: int = 3, dropout: float = 0.2,
                 reference_head: bool = False):
        super().__init__()
        self.reference_head = reference_head
        self.stem = nn.Sequential(nn.Conv3d(in_channels, 32, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm3d(32), nn.SiLU())
        stages, channels = [], 32
        for width, stride in zip(self.LEVEL_CHANNELS[1:], self.LEVEL_STRIDES[1:]):
            stages.append(MBConv(channels, width, stride))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv3d(c, bifpn_channels, 1) for c in self.LEVEL_CHANNELS[2:])
        self.bifpn = nn.ModuleList(BiFPN(bifpn_channels) for _ in range(bifpn_repeats))
        self.head_fusion = nn.ModuleList(FastNormalisedFusion(2, bifpn_channels) for _ in range(4))
        if reference_head:
            # narrow: at full resolution every channel costs as much as the whole backbone's deep levels
            self.upsample_half = _conv_block(bifpn_channels + self.LEVEL_CHANNELS[1], 16)
            self.upsample_full = _conv_block(16 + in_channels, 8)
            self.head = nn.Sequential(nn.Dropout3d(dropout), nn.Conv3d(8, 1, 1))
        else:
            self.head = nn.Sequential(nn.BatchNorm3d(bifpn_channels), nn.PReLU(bifpn_channels),
                                      nn.Dropout3d(dropout), nn.Conv3d(bifpn_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward_with_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Dice per sample, logits of the reference drawn in the crop (N, 1, D, H, W)): for training."""
        return self._score_drawing(self.encode(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone, BiFPN and fusion nodes: everything before the dropout (run once for MC dropout)."""
        return self.encode_and_describe(x)[0]

    def encode_and_describe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode``'s output and the domain guard's descriptor: statistics of the stem and the first stage
        (they see the image's contrast and texture) and of the encoding (what the head decides on)."""
        image = x
        x = self.stem(x)
        early = [pooled_features(x)]
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        early.append(pooled_features(levels[0]))
        pyramid = [lateral(level) for lateral, level in zip(self.lateral, levels[1:])]  # P3..P7
        for block in self.bifpn:
            pyramid = block(pyramid)
        node = pyramid[-1]
        for fusion, level in zip(self.head_fusion, reversed(pyramid[:-1])):  # serial nodes P6 .. P3
            node = fusion([level, node])
        descriptor = torch.cat([*early, pooled_features(node)], dim=1)
        if not self.reference_head:
            return node, descriptor
        # Up to full resolution, with the stride-2 features and then the input itself as skips; the
        # candidate mask rides along as the last channel, so the head (after the dropout) can score it.
        half = self.upsample_half(torch.cat([_resize(node, levels[0]), levels[0]], dim=1))
        full = self.upsample_full(torch.cat([_resize(half, image), image], dim=1))
        return torch.cat([full, image[:, 1:2]], dim=1), descriptor

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """The head, where the dropout is: one Dice value per sample."""
        if self.reference_head:
            return self._score_drawing(encoded)[0]
        return torch.sigmoid(self.head(encoded)).mean(dim=(1, 2, 3, 4))

    def _score_drawing(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference head on ``encode``'s output (decoder features, then the candidate mask):
        (soft Dice of the drawing against the mask, the drawing's logits)."""
        logits = self.head(encoded[:, :-1])
        return soft_dice(torch.sigmoid(logits), encoded[:, -1:]), logits


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """A pointwise convolution down to ``out_channels``, then a 3x3x3 one among them."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, bias=False),
                         nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm3d(out_channels), nn.SiLU())


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=False)


def soft_dice(probabilities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dice per sample between a drawn reference's probabilities and a (resampled) mask, both (N, 1, D, H, W).
    An empty mask scores 0 even where nothing is drawn: the organ it names exists, so an empty contour of
    it has Dice 0, whatever the crop shows."""
    overlap = (probabilities * mask).sum(dim=(1, 2, 3, 4))
    total = probabilities.sum(dim=(1, 2, 3, 4)) + mask.sum(dim=(1, 2, 3, 4))
    return 2 * overlap / (total + 1e-3)


def build_network(architecture: str, in_channels: int = 2) -> nn.Module:
    """A fresh network of the named architecture."""
    if architecture == "regnet3d":
        return RegNet3D(in_channels)
    if architecture == "efficientdet3d":
        return EfficientDet3D(in_channels)
    if architecture == "efficientdet3d-seg":
        return EfficientDet3D(in_channels, reference_head=True)
    raise ValueError(f"unknown architecture '{architecture}' (choose from {', '.join(ARCHITECTURES)})")
