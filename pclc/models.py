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


# --- small CNN: the embedded default, for scikit-learn's 8×8 digits


class SmallCNN(nn.Module):
    """conv 32 → conv 64 (3×3, same padding) → max-pool 2 → FC 128 → K."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (h // 2) * (w // 2), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@_register("small_cnn", (1, 8, 8))
def small_cnn(input_shape: Shape, num_classes: int) -> nn.Module:
    _require_min_size("small_cnn", input_shape, 2)
    return SmallCNN(input_shape, num_classes)


# --- MNIST-type models from the authors' repository (28×28; sizes computed, so 32×32 works)


class LeNet5(nn.Module):
    """conv 6@5×5 pad 2 → pool → conv 16@5×5 → pool → 120 → 84 → K."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        fh, fw = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@_register("lenet5", (1, 28, 28))
def lenet5(input_shape: Shape, num_classes: int) -> nn.Module:
    _require_min_size("lenet5", input_shape, 12)
    return LeNet5(input_shape, num_classes)


class CNN3(nn.Module):
    """conv 16 → conv 32 → pool → conv 64 → pool (all 5×5, same padding) → 100 → K."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@_register("cnn3", (1, 28, 28))
def cnn3(input_shape: Shape, num_classes: int) -> nn.Module:
    _require_min_size("cnn3", input_shape, 4)
    return CNN3(input_shape, num_classes)


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
        blocks: list[nn.Module] = []
        c = in_channels
        for v in layers:
            if v == "M":
                blocks.append(nn.MaxPool2d(2))
            else:
                blocks += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        self.features = nn.Sequential(*blocks)
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
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
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
