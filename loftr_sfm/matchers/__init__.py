"""Matcher backends behind one small interface, and their registry.

A backend is built from a name plus options (:func:`build_matcher`) and matches *batches of image
pairs*. It declares the input it wants (:class:`InputSpec`: grayscale or RGB, resize policy);
the matching stage (:mod:`loftr_sfm.matching`) decodes and resizes images accordingly in worker
processes, buckets pairs by resized size and calls :meth:`MatcherBackend.match` with

* ``image0``: (B, C, H0, W0) float32 tensor in [0, 1] (C = 1 gray or 3 RGB), all the same size,
* ``image1``: (B, C, H1, W1) likewise (H1, W1 may differ from H0, W0),
* ``size0`` / ``size1``: (B, 2) int tensors, ORIGINAL (width, height) of each image,
* ``names0`` / ``names1``: the image names (backends may cache per-image work by name).

It returns one :class:`PairMatches` per pair: ``keypoints0``, ``keypoints1`` (N, 2) float32 in
ORIGINAL-image pixels, OpenCV convention (integer = pixel centre), and ``scores`` (N,) float32.

Registered backends: ``eloftr`` (default), ``xfeat-star``, ``sift``. Third-party backends can be
added with :func:`register_matcher`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MATCHER = "eloftr"

# name -> "module:Class" (imported lazily: only the chosen backend's dependencies are loaded)
_REGISTRY: dict[str, str] = {
    "eloftr": "loftr_sfm.matchers.eloftr:EfficientLoFTRMatcher",
    "xfeat-star": "loftr_sfm.matchers.xfeat:XFeatStarMatcher",
    "sift": "loftr_sfm.matchers.sift:SiftMatcher",
}


@dataclass(frozen=True)
class InputSpec:
    """The input a backend wants; the loader produces exactly this.

    Resize policy: scale so that the longer side is at most ``max_side`` (never upscale;
    ``None`` = keep the original size), then round each side DOWN to a multiple of ``multiple``
    (the aspect ratio changes by less than ``multiple`` pixels per side).
    """

    grayscale: bool = True
    max_side: int | None = 1024
    multiple: int = 1
    min_side: int = 1  # px of the original's shorter side; smaller images are skipped by name

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize policy, for an original (width, height)."""
        scale = 1.0
        if self.max_side is not None and max(width, height) > self.max_side:
            scale = self.max_side / max(width, height)
        w = max(int(round(width * scale)), 1)
        h = max(int(round(height * scale)), 1)
        m = max(int(self.multiple), 1)
        if m > 1:
            w, h = max(w // m * m, m), max(h // m * m, m)
        return w, h


class PairMatches(NamedTuple):
    """Matches of one pair: keypoints0/1 (N, 2) float32 original pixels (OpenCV), scores (N,)."""

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    scores: np.ndarray


def empty_matches() -> PairMatches:
    return PairMatches(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros((0,), np.float32))


def to_original_pixels(kpts: np.ndarray, input_size: Sequence[float], original_size: Sequence[float]) -> np.ndarray:
    """Map (N, 2) pixel coordinates of a resized input back to the original image.

    Both frames use the OpenCV convention (integer = pixel centre) and the resize is the usual
    area/bilinear one with pixel-centre alignment, so ``x_orig = (x_in + 0.5) * W_orig / W_in - 0.5``
    (same for y). Sizes are (width, height).
    """
    kpts = np.asarray(kpts, np.float64).reshape(-1, 2)
    s = np.asarray(original_size, np.float64) / np.asarray(input_size, np.float64)
    return ((kpts + 0.5) * s - 0.5).astype(np.float32)


class MatcherBackend:
    """Base class of the backends. Subclasses set ``name``, ``spec`` and implement :meth:`match`."""

    name: str = "base"
    spec: InputSpec = InputSpec()
    #: whether :meth:`match` benefits from B > 1 (otherwise the stage uses batch size 1)
    supports_batching: bool = True

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @property
    def default_batch_size(self) -> int:
        """Pairs per call when the user does not choose (1 for backends that do not batch)."""
        return 4 if self.supports_batching else 1

    def match(
        self,
        image0: Any,
        image1: Any,
        size0: Any,
        size1: Any,
        names0: Sequence[str] | None = None,
        names1: Sequence[str] | None = None,
    ) -> list[PairMatches]:
        """Match B pairs; see the module docstring for shapes and conventions."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, spec={self.spec}, device={self.device!r})"


def available_matchers() -> list[str]:
    """Names accepted by :func:`build_matcher`."""
    return sorted(_REGISTRY)


def register_matcher(name: str, target: str | type, overwrite: bool = False) -> None:
    """Register a backend class (or a ``"module:Class"`` string) under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"matcher {name!r} is already registered")
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[name] = target


def _resolve(name: str) -> type:
    if name not in _REGISTRY:
        raise ValueError(f"unknown matcher {name!r}; available: {available_matchers()}")
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def parse_options(options: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Backend options from a dict, a JSON object string or ``"key=value,key=value"``.

    Values in the ``key=value`` form are parsed as JSON when possible (numbers, true/false,
    null), otherwise kept as strings.
    """
    if options is None or options == "":
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    text = str(options).strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"matcher options {text!r} are not valid JSON: {e}") from None
        return dict(value)
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"matcher option {item!r} is not of the form key=value")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


def matcher_class(name: str) -> type:
    """The backend class registered as ``name`` (imports its module, builds nothing)."""
    return _resolve(name)


def build_matcher(name: str = DEFAULT_MATCHER, device: str | None = "auto", **options: Any) -> MatcherBackend:
    """Build a backend by name. ``options`` are merged strictly into the backend's ``Options``
    dataclass (unknown keys fail with the list of valid ones)."""
    from ..utils import merge_config, resolve_device

    cls = _resolve(name)
    opts_cls = getattr(cls, "Options", None)
    if opts_cls is not None and dataclasses.is_dataclass(opts_cls):
        opts = merge_config(opts_cls, None, **options)
        return cls(opts, device=resolve_device(device))
    if options:
        raise ValueError(f"matcher {name!r} takes no options, got {sorted(options)}")
    return cls(device=resolve_device(device))


__all__ = [
    "DEFAULT_MATCHER",
    "InputSpec",
    "MatcherBackend",
    "PairMatches",
    "available_matchers",
    "build_matcher",
    "empty_matches",
    "matcher_class",
    "parse_options",
    "register_matcher",
    "to_original_pixels",
]
