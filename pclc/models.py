"""Classifiers by name, built from the input shape and class count; they output logits.

No normalisation layer: inputs are pixels in [0, 1] and the attacks clip to [0, 1], as the
authors do. Each model is registered with the input shape it was designed for (`MODELS.info(name)`,
collected in `NATIVE_INPUT_SHAPES`; the tests build every registered model at that shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclc.registry import Registry

__all__ = ["MODELS", "NATIVE_INPUT_SHAPES", "create_model"]

Shape = tuple[int, int, int]  # (channels, height, width)
Builder = Callable[..., nn.Module]

MODELS: Registry[nn.Module] = Registry("model")


def _register(name: str, native: Shape) -> Callable[[Builder], Builder]:
    """`MODELS.register(name)` with the input shape (C, H, W) the model was designed for as its info."""
    return MODELS.register(name, info=native)


def _require_min_size(name: str, input_shape: Shape, minimum: int) -> None:
    _, h, w = input_shape
    if h < minimum or w < minimum:
        raise ValueError(f"{name} needs inputs of at least {minimum}×{minimum}, got {h}×{w}")


def create_model(name: str, *, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model called `name` for `input_shape` = (C, H, W) images and `num_classes` logits.

    Example:
        >>> model = create_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    return MODELS.create(name, input_shape=shape, num_classes=int(num_classes))


# --- small convolutional nets: conv/ReLU blocks and pools → fully connected head


Layers = list["tuple[int, int, int] | str"]  # (out channels, kernel, padding) conv + ReLU, or "M": 2×2 max-pool


def _features(in_channels: int, layers: Layers, *, batch_norm: bool = False) -> tuple[nn.Sequential, int]:
    """The conv stack `layers` describes (each conv followed by BatchNorm if asked, then ReLU), and its width."""
    blocks: list[nn.Module] = []
    channels = in_channels
    for layer in layers:
        if layer == "M":
            blocks.append(nn.MaxPool2d(2))
            continue
        out, kernel, padding = layer  # type: ignore[misc]
        blocks.append(nn.Conv2d(channels, out, kernel, padding=padding))
        blocks += [nn.BatchNorm2d(out), nn.ReLU()] if batch_norm else [nn.ReLU()]
        channels = out
    return nn.Sequential(*blocks), channels


class ConvNet(nn.Module):
    """`features` (convs with ReLU, max-pools) → flatten → `hidden` FC layers with ReLU → K logits."""

    def __init__(self, in_channels: int, layers: Layers, flat: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.features, _ = _features(in_channels, layers)
        head: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            head += [nn.Linear(flat, width), nn.ReLU()]
            flat = width
        self.classifier = nn.Sequential(*head, nn.Linear(flat, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(ConvNet):
    """conv 32 → conv 64 (3×3, same padding) → max-pool 2 → FC 128 → K: the embedded default, for 8×8 digits."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        c, h, w = input_shape
        super().__init__(c, [(32, 3, 1), (64, 3, 1), "M"], 64 * (h // 2) * (w // 2), (128,), num_classes)


# MNIST-type models from the authors' repository (28×28; sizes computed, so 32×32 works)
class LeNet5(ConvNet):
    """conv 6@5×5 pad 2 → pool → conv 16@5×5 → pool → 120 → 84 → K."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        c, h, w = input_shape
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        super().__init__(c, [(6, 5, 2), "M", (16, 5, 0), "M"], flat, (120, 84), num_classes)


class CNN3(ConvNet):
    """conv 16 → conv 32 → pool → conv 64 → pool (all 5×5, same padding) → 100 → K."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        c, h, w = input_shape
        layers: Layers = [(16, 5, 2), (32, 5, 2), "M", (64, 5, 2), "M"]
        super().__init__(c, layers, 64 * (h // 4) * (w // 4), (100,), num_classes)


def _small(name: str, cls: type[ConvNet], native: Shape, min_size: int) -> None:
    """Register `cls` as `name`, refusing inputs smaller than `min_size` pixels a side."""

    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        _require_min_size(name, input_shape, min_size)
        return cls(input_shape, num_classes)

    build.__name__ = build.__qualname__ = name
    _register(name, native)(build)


_small("small_cnn", SmallCNN, (1, 8, 8), 2)
_small("lenet5", LeNet5, (1, 28, 28), 12)
_small("cnn3", CNN3, (1, 28, 28), 4)


# --- VGG (CIFAR style: 3×3 convs with BatchNorm, five pools; 512 → dropout → 512 → K)

_VGG_LAYERS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG features, global average pool (so any input ≥ 32×32 works), dropout + 512 hidden → K."""

    def __init__(self, layers: list[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        convs: Layers = [v if v == "M" else (int(v), 3, 1) for v in layers]
        self.features, c = _features(in_channels, convs, batch_norm=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(c, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def _vgg(name: str) -> Builder:
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        _require_min_size(name, input_shape, 32)  # five 2× pools
        return VGG(_VGG_LAYERS[name], input_shape[0], num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name.upper()} with BatchNorm, CIFAR style."
    return _register(name, (3, 32, 32))(build)


vgg11 = _vgg("vgg11")
vgg13 = _vgg("vgg13")
vgg16 = _vgg("vgg16")


# --- CIFAR ResNet (He et al. 2016, §4.2): 3 stages of n basic blocks, 16/32/64 channels


class _BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers; the shortcut subsamples and zero-pads channels (option A, no weights)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad = out_channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images; global average pool to the final 64-dim feature."""

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(c, width, stride))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _resnet(name: str, depth: int) -> Builder:
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        _require_min_size(name, input_shape, 4)  # two stride-2 stages
        return CifarResNet(depth, input_shape[0], num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet-{depth} (16/32/64 channels, 64-dim final feature)."
    return _register(name, (3, 32, 32))(build)


resnet20 = _resnet("resnet20", 20)
resnet56 = _resnet("resnet56", 56)


NATIVE_INPUT_SHAPES: dict[str, Shape] = {name: MODELS.info(name) for name in MODELS.names()}
"""model name → the dataset shape it was designed for (derived from the registry)."""
