"""Named choices: one registry per choice, the single source of its names, help and checks.

Each choice (activation, SIL kind, SIL loss, optimizer, schedule...) is one `Registry` in the
module that implements it. Config validation, `--help` texts and lookups all read that registry,
so adding an activation or a SIL kind is one edit: one decorated function.

    ACTIVATIONS = Registry[Callable[[jax.Array], jax.Array]]("model.activation")

    @ACTIVATIONS.register("relu", "max(x, 0)")
    def relu(x): ...

    ACTIVATIONS["relu"]             # the function; an unknown name raises ConfigError
    ACTIVATIONS.check("swish")      # ConfigError: model.activation = 'swish' is not one of ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from synthpart.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """Name -> item, in registration order, for the setting `setting` (used in messages)."""

  def __init__(self, setting: str):
    self.setting = setting
    self._items: dict[str, T] = {}
    self._docs: dict[str, str] = {}

  def register(self, name: str, doc: str = "") -> Callable[[T], T]:
    """Decorator: registers the decorated item under `name` (a name is registered once)."""
    def add(item: T) -> T:
      self.add(name, item, doc)
      return item
    return add

  def add(self, name: str, item: T, doc: str = "") -> None:
    """Registers `item` under `name`; a second registration of a name is an error."""
    if name in self._items:
      raise ValueError(f"{self.setting}: {name!r} is already registered")
    self._items[name] = item
    self._docs[name] = doc

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._items)

  def check(self, value: str, path: str | None = None) -> None:
    """Raises `ConfigError` unless `value` is a registered name."""
    if value not in self._items:
      raise ConfigError(f"{path or self.setting} = {value!r} is not one of "
                        f"{', '.join(self._items)}")

  def __getitem__(self, name: str) -> T:
    self.check(name)
    return self._items[name]

  def __contains__(self, name: object) -> bool:
    return name in self._items

  def values(self) -> tuple[T, ...]:
    """The items, in registration order."""
    return tuple(self._items.values())

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def doc(self, name: str) -> str:
    return self._docs[name]

  def choices(self) -> str:
    """The names as a `--help` text shows them: ``a | b | c``."""
    return " | ".join(self._items)
