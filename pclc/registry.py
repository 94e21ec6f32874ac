"""A typed name → builder registry that knows its members, as timm's does: users choose by name.

Each member is registered with its builder and, optionally, what it is (an `info` object: an attack's
kind, a model's native input shape, the knobs a loss uses). Lists such as "the white-box attacks" are
derived from the registry with `select`, never kept by hand.

    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square", info={"sides": 4})
    ... def square(size: float = 1.0) -> str:
    ...     return f"square of {size}"
    >>> SHAPES.create("square", size=None), SHAPES.info("square"), SHAPES.select(lambda i: i["sides"] > 3)
    ('square of 1.0', {'sides': 4}, ('square',))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders (and what each member is); `create` drops `None` kwargs so builder defaults survive."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}  # in registration order
        self._info: dict[str, Any] = {}

    def register(self, name: str, *, info: Any = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            self._info[name] = info
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def select(self, where: Callable[[Any], bool] | None = None) -> tuple[str, ...]:
        """The members whose info satisfies `where` (all without it), in registration order."""
        return tuple(n for n in self._builders if where is None or where(self._info[n]))

    def info(self, name: str) -> Any:
        """What member `name` is, as registered (None when nothing was said)."""
        self.get(name)
        return self._info[name]

    def choices(self) -> str:
        """The names, for an error message: 'a, b, c'."""
        return ", ".join(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {self.choices()}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})
