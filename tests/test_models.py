"""Every registered model builds at its native shape, runs forward and backward, and gives (N, K) logits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from pclc.models import MODELS, NATIVE_INPUT_SHAPES, create_model


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The machine is shared: keep the convolutions on one core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_model_declares_its_native_input_shape() -> None:
    assert sorted(NATIVE_INPUT_SHAPES) == MODELS.names()
    assert set(MODELS.names()) >= {"small_cnn", "lenet5", "cnn3", "vgg11", "vgg13", "vgg16", "resnet20", "resnet56"}


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward_at_native_shape(name: str) -> None:
    torch.manual_seed(0)
    shape = NATIVE_INPUT_SHAPES[name]
    model = create_model(name, input_shape=shape, num_classes=7)
    model.train()
    x = torch.rand(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_gradient_reaches_the_input(name: str) -> None:
    # The attacks differentiate through the model to the pixels.
    model = create_model(name, input_shape=NATIVE_INPUT_SHAPES[name], num_classes=3).eval()
    x = torch.rand(1, *NATIVE_INPUT_SHAPES[name], requires_grad=True)
    model(x)[0, 1].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("small_cnn", (1, 28, 28)),
        ("small_cnn", (3, 9, 7)),
        ("lenet5", (1, 32, 32)),
        ("lenet5", (3, 32, 32)),
        ("cnn3", (3, 32, 32)),
        ("vgg11", (3, 64, 64)),
        ("resnet20", (1, 28, 28)),
        ("vgg13", (3, 64, 64)),
        ("resnet20", (3, 64, 64)),
    ],  # Tiny ImageNet's 64×64
)
def test_other_input_shapes(name: str, shape: tuple[int, int, int]) -> None:
    model = create_model(name, input_shape=shape, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, 4)


def test_lenet5_has_the_classic_layer_sizes() -> None:
    model = create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(400, 120), (120, 84), (84, 10)]


def test_resnet_depths_and_final_feature() -> None:
    for name, depth in [("resnet20", 20), ("resnet56", 56)]:
        model = create_model(name, input_shape=(3, 32, 32), num_classes=10)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) + 1 == depth  # conv layers + the final FC
        assert model.fc.in_features == 64


def test_too_small_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        create_model("vgg11", input_shape=(3, 16, 16), num_classes=10)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*small_cnn"):
        create_model("resnet18", input_shape=(3, 32, 32), num_classes=10)


@pytest.mark.parametrize(("shape", "k"), [((1, 8), 10), ((1, 8, 8), 1), ((0, 8, 8), 10)])
def test_bad_shape_or_class_count_is_refused(shape: tuple[int, ...], k: int) -> None:
    with pytest.raises(ValueError):
        create_model("small_cnn", input_shape=shape, num_classes=k)  # type: ignore[arg-type]
