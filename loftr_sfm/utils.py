"""Small helpers shared by the stages: strict config merging, device choice, timing."""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

C = TypeVar("C")


def config_field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of the dataclass ``cls`` (``typing.get_type_hints``).

    If the annotations cannot all be resolved (a class defined inside a function, say), each field
    falls back to its own annotation: a string naming a dataclass that is also the field's default
    (factory) resolves to that class, any other unresolved string stays a string.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references that cannot be resolved here
        hints = {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in hints:
            out[f.name] = hints[f.name]
            continue
        tp = f.type
        if isinstance(tp, str):
            default = f.default_factory if f.default_factory is not dataclasses.MISSING else (
                type(f.default) if f.default is not dataclasses.MISSING else None
            )
            if _is_dataclass_type(default) and tp.strip().rsplit(".", 1)[-1] == default.__name__:
                tp = default
        out[f.name] = tp
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def config_parts(cls: type) -> dict[str, type]:
    """The fields of ``cls`` whose type is itself a dataclass (its *parts*): name -> part class."""
    types_ = config_field_types(cls)
    return {f.name: types_[f.name] for f in dataclasses.fields(cls) if _is_dataclass_type(types_[f.name])}


def _nested_names(cls: type, _stack: tuple[type, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    """Every field name inside the parts of ``cls`` (any depth) -> its paths from ``cls``.

    Raises TypeError if a field of ``cls`` (or of a part, recursively) has the name of a field
    inside one of its parts: flat keys could not be routed.
    """
    if cls in _stack:
        raise TypeError(f"{cls.__name__} contains itself as a part")
    found: dict[str, list[tuple[str, ...]]] = {}
    for part_name, part_cls in config_parts(cls).items():
        for f in dataclasses.fields(part_cls):
            found.setdefault(f.name, []).append((part_name, f.name))
        for name, paths in _nested_names(part_cls, _stack + (cls,)).items():
            found.setdefault(name, []).extend((part_name, *p) for p in paths)
    clashes = sorted({f.name for f in dataclasses.fields(cls)} & found.keys())
    if clashes:
        where = ", ".join(f"{n!r} (also {'.'.join(found[n][0])})" for n in clashes)
        raise TypeError(f"{cls.__name__}: field name(s) {where} collide with fields of its parts; rename one of them")
    return found


def _ambiguity_error(cls: type, name: str, paths: list[tuple[str, ...]]) -> ValueError:
    joined = " and ".join(".".join(p) for p in paths)
    return ValueError(
        f"ambiguous {cls.__name__} option {name!r}: it is {joined}; give it nested "
        f"(e.g. {{{paths[0][0]!r}: {{...}}}}) instead"
    )


def config_leaves(cls: type) -> dict[str, tuple[str, ...]]:
    """Every leaf (non-part) field of a possibly nested config: leaf name -> path of field names.

    ``{"mapper": ("mapper",), "share": ("cameras", "share")}`` for a config with a field ``mapper``
    and a part ``cameras`` with a field ``share``. Raises ValueError if a leaf name is ambiguous
    (in two parts) and TypeError if a field collides with a field of a part.
    """
    nested = _nested_names(cls)
    parts = config_parts(cls)
    leaves: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        if f.name in parts:
            for name, path in config_leaves(parts[f.name]).items():
                if len(nested[name]) > 1:
                    raise _ambiguity_error(cls, name, nested[name])
                leaves[name] = (f.name, *path)
        else:
            leaves[f.name] = (f.name,)
    return leaves


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


_ABSENT = object()  # an entry the defaults' record lacks


def changed_options(record: Mapping[str, Any], default: Mapping[str, Any],
                    ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of a config record (``dataclasses.asdict``) that differ from the defaults' record.

    What a stage compares to tell whether a finished output was made with the options asked now: an
    option added to the library since (absent from an old record) counts as its default, so an upgrade
    leaves finished outputs valid; an option the defaults no longer have is kept (it differs). Nested
    records compare entry by entry; ``ignore`` names top-level entries that do not change an output.
    """
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in ignore:
            continue
        base = default.get(key, _ABSENT)
        if isinstance(value, Mapping) and isinstance(base, Mapping):
            inner = changed_options(value, base)
            if inner:
                out[key] = inner
        elif base is _ABSENT or value != base:
            out[key] = value
    return out


def merge_config(cls: type[C], base: C | Mapping[str, Any] | None = None, **overrides: Any) -> C:
    """Build a dataclass config from defaults, an optional base (instance or dict) and overrides.

    Unknown keys fail loudly with the list of valid ones (a typo never goes unnoticed).

    A field whose type is a dataclass is a *part*: its value may be an instance, a dict (merged
    onto the field's default with the same strictness, recursively) or None (the default). A key
    that is not a field of ``cls`` but names a field inside exactly one part (at any depth) is
    routed there: ``merge_config(Cfg, share=False) == merge_config(Cfg, {"cameras": {"share": False}})``.
    The overrides apply on top of the base; within one of them, routed flat keys apply on top of
    the nested form. A flat key found in two parts is ambiguous (ValueError naming both paths).
    """
    return _merge(cls, base, overrides)


def _merge(cls: type[C], base: C | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> C:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    parts = config_parts(cls)
    nested = _nested_names(cls) if parts else {}
    values: dict[str, Any] = {}
    patches: dict[str, list[Any]] = {name: [] for name in parts}
    unknown: set[Any] = set()
    ambiguous: dict[str, list[tuple[str, ...]]] = {}

    def add(source: Mapping[str, Any]) -> None:
        routed: dict[str, dict[str, Any]] = {}
        for key, value in source.items():
            if key in parts:
                patches[key].append(value)
            elif key in fields:
                values[key] = value
            elif key in nested and len(nested[key]) == 1:
                routed.setdefault(nested[key][0][0], {})[key] = value
            elif key in nested:
                ambiguous[key] = nested[key]
            else:
                unknown.add(key)
        for part_name, flat in routed.items():
            patches[part_name].append(flat)

    if isinstance(base, cls):
        as_dict = dataclasses.asdict(base)
        as_dict.update({name: getattr(base, name) for name in parts})  # parts stay instances (subclasses too)
        add(as_dict)
    elif isinstance(base, Mapping):
        add(base)
    elif base is not None:
        raise TypeError(f"expected {cls.__name__}, a dict or None, got {type(base).__name__}")
    add(overrides)
    if unknown:
        valid = set(fields) | set(nested)
        raise ValueError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; valid options: {sorted(valid)}")
    if ambiguous:
        name, paths = sorted(ambiguous.items())[0]
        raise _ambiguity_error(cls, name, paths)
    for name, part_cls in parts.items():
        if not patches[name]:
            continue
        current = _field_default(fields[name])
        for patch in patches[name]:
            if patch is None:
                current = _field_default(fields[name])
            elif isinstance(patch, part_cls):
                current = patch
            elif isinstance(patch, Mapping):
                current = _merge(type(current) if isinstance(current, part_cls) else part_cls, current, patch)
            else:
                raise TypeError(
                    f"{cls.__name__}.{name}: expected {part_cls.__name__}, a dict or None, got {type(patch).__name__}"
                )
        # a copy (never the caller's instance); an instance of a subclass of the part stays one
        values[name] = _merge(type(current) if isinstance(current, part_cls) else part_cls, current, {})
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


_PROGRESS = True


def set_progress(enabled: bool) -> None:
    """Show (True, the default) or hide every progress bar of the library; ``loftr-sfm -q`` hides them."""
    global _PROGRESS
    _PROGRESS = bool(enabled)


def progress_enabled() -> bool:
    """Whether the library's progress bars are shown (:func:`set_progress`)."""
    return _PROGRESS


def progress(iterable: Any = None, **kwargs: Any):
    """A ``tqdm`` bar (with its rate) that follows :func:`set_progress`: every bar of the library is made here.

    ``kwargs`` go to tqdm; a bar with ``disable=True`` stays hidden whatever the switch says.
    """
    from tqdm import tqdm

    if not _PROGRESS:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


class Timer:
    """Context manager measuring wall time: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
