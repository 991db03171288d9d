"""Small helpers shared by the stages: strict config merging, device choice, timing."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

C = TypeVar("C")


def merge_config(cls: type[C], base: C | Mapping[str, Any] | None = None, **overrides: Any) -> C:
    """Build a dataclass config from defaults, an optional base (instance or dict) and overrides.

    Unknown keys fail loudly with the list of valid ones (a typo never goes unnoticed).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    valid = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if isinstance(base, cls):
        values.update(dataclasses.asdict(base))
    elif isinstance(base, Mapping):
        values.update(base)
    elif base is not None:
        raise TypeError(f"expected {cls.__name__}, a dict or None, got {type(base).__name__}")
    values.update(overrides)
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; valid options: {sorted(valid)}")
    return cls(**values)


def resolve_device(device: str | None = "auto") -> str:
    """'auto' -> 'cuda' if available, else 'mps' if available, else 'cpu'. Imports torch lazily."""
    if device not in (None, "auto"):
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Timer:
    """Context manager measuring wall time: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
