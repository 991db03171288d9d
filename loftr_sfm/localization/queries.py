"""The queries of a localization run: their list (a folder, or paths with an optional root) and
the run's log (``localize_log.json``): its signature, read to resume, written atomically after
every query.

The log: ``signature``, ``map``, ``map_images``, ``matcher``, ``config``, ``num_queries``,
``num_localized``, ``mean_time``, ``mean_matching_time`` and ``queries`` (one
:meth:`QueryResult.log_entry` each).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_path, list_images
from .config import MODEL_DIR, LocalizationConfig, QueryResult

logger = logging.getLogger(__package__)  # one logger for the stage: loftr_sfm.localization


def query_items(
    queries: str | Path | Sequence[str | Path], query_root: str | Path | None = None
) -> list[tuple[str, Path | None]]:
    """(name, path) of every query, sorted by name; see :meth:`Localizer.localize` for the naming.

    Raises:
        InputError: a folder that does not exist or holds no image, or an empty list.
    """
    if isinstance(queries, (str, Path)) and Path(queries).is_dir():
        root = Path(queries)
        names = list_images(root)  # raises InputError when empty
        items: list[tuple[str, Path | None]] = [(n, root / n) for n in names]
        # files with other extensions are reported, not silently ignored
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.relative_to(root).as_posix() not in set(names):
                logger.warning("query folder: ignoring %s (not an image extension)", p)
        return items
    if isinstance(queries, (str, Path)):
        raise InputError(f"query folder {queries} does not exist or is not a directory")
    root = Path(query_root) if query_root is not None else None
    items = []
    for q in queries:
        p = Path(q)
        # a path as given; a bare name relative to the root (a relative root given in both must not double)
        if root is not None and not p.is_absolute() and not p.is_relative_to(root) and not p.exists():
            p = root / p
        name = p.relative_to(root).as_posix() if root is not None and p.is_relative_to(root) else p.name
        items.append((name, p))
    if not items:
        raise InputError("no query images given")
    return sorted(items)


def run_signature(config: LocalizationConfig, matcher_name: str, map_dir: Path) -> str:
    """Hash of what a query's result depends on: the options (those that change results) and the
    map's model files (names, sizes, mtimes). A log of another signature is not reused."""
    c = dataclasses.asdict(config)
    for k in ("resume", "register", "register_dir", "device", "batch_size", "report"):
        c.pop(k, None)
    c["matcher"] = matcher_name
    model = Path(map_dir) / MODEL_DIR
    stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model.iterdir() if p.is_file())
    return hashlib.sha1(json.dumps([c, stamp], sort_keys=True).encode()).hexdigest()[:16]


def read_log(path: Path, sig: str) -> dict[str, QueryResult]:
    """The queries of the log at ``path`` by name, if it has signature ``sig`` (else none); a
    localized query gets its pose arrays back (not its 2D-3D data, which the log does not hold)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("signature") != sig:
        return {}
    out = {}
    names = {f.name for f in dataclasses.fields(QueryResult)}
    for e in data.get("queries", []):
        r = QueryResult(**{k: v for k, v in e.items() if k in names})
        if r.success and r.qvec and r.tvec:
            from scipy.spatial.transform import Rotation

            w, x, y, z = r.qvec
            r.R = Rotation.from_quat([x, y, z, w]).as_matrix()
            r.t = np.asarray(r.tvec, np.float64)
        out[r.name] = r
    return out


def write_log(
    path: Path,
    sig: str,
    results: Sequence[QueryResult],
    previous: Mapping[str, QueryResult],
    *,
    map_dir: Path,
    map_images: Path,
    matcher_name: str,
    config: LocalizationConfig,
) -> None:
    """Write the log atomically: ``results``, then the ``previous`` entries of other names."""
    done = {r.name for r in results}
    entries = [r.log_entry() for r in results] + [r.log_entry() for n, r in previous.items() if n not in done]
    ok = [e for e in entries if e["success"]]
    data = {
        "signature": sig,
        "map": str(map_dir),
        "map_images": str(map_images),
        "matcher": matcher_name,
        "config": dataclasses.asdict(config),
        "num_queries": len(entries),
        "num_localized": len(ok),
        "mean_time": float(np.mean([e["time"] for e in entries])) if entries else 0.0,
        "mean_matching_time": float(np.mean([e["matching_time"] for e in entries])) if entries else 0.0,
        "queries": entries,
    }
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))

