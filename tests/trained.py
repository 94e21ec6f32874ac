"""A small CNN trained on real digits with a plain CE loop: the target of the attack and evaluation tests.

Kept apart from pclc.train on purpose: these tests check the attacks, not our training code.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def train(x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int = 8) -> nn.Module:
    """A plain CE loop; a few epochs reach ~98 % on digits."""
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        idx = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 64):
            b = idx[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:1600], y[1400:1600]


@pytest.fixture(scope="module")
def model(digits) -> nn.Module:
    return train(digits[0], digits[1], seed=0)


@pytest.fixture(scope="module")
def substitute(digits) -> nn.Module:
    return train(digits[0], digits[1], seed=1)
