"""The keypoints stage: ``matches.h5`` (raw) -> ``features.h5`` + ``merged_matches.h5`` (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io import (UNREADABLE_ATTR, ImageReadError, InputError, atomic_path, find_pair, h5_bytes, image_size, list_images,
                  read_pairs, read_raw_group, require_space)
from ..utils import Timer, changed_options, merge_config
from ..workspace import MERGED_MATCHES_FILE, record_stage_time
from .merge import merge_pairs

logger = logging.getLogger("loftr_sfm.keypoints")

#: Tested presets per matcher backend: (cell_size px, max_error px). See tests/test_keypoints.py
#: and tests/test_synthetic_e2e.py (EfficientLoFTR-shaped matches: image0 on a 1-px lattice,
#: image1 sub-pixel).
PRESETS: dict[str, dict[str, float]] = {
    # image0 keypoints on a 1-px lattice (integer pixels at the network resolution), image1
    # sub-pixel: 1-px cells join identical lattice points across pairs; close duplicates
    # (noise of the sub-pixel side) merge within 2 px.
    "eloftr": {"cell_size": 1.0, "max_error": 2.0},
    # XFeat*: image1 keypoints are the image's own coarse cell centres (the same point in every
    # pair), image0's are regressed by the offset head and then refined photometrically
    # (sub-pixel, different for every partner image): 2-px cells.
    "xfeat-star": {"cell_size": 2.0, "max_error": 2.0},
    # detector-based (SIFT): keypoints are repeatable to well below a pixel; a fine grid only
    # removes exact duplicates.
    "sift": {"cell_size": 0.25, "max_error": 1.0},
}


@dataclass
class KeypointsConfig:
    """Options of the keypoint merge (see the package docstring for the rule)."""

    preset: str = "auto"  # auto | eloftr | xfeat-star | sift (auto: matches.h5 attribute "matcher", else eloftr)
    cell_size: float | None = None  # px; None -> preset
    max_error: float | None = None  # px; None -> preset
    max_keypoints: int = 16384  # per-image budget (0 = unlimited)
    min_score: float = 0.0  # raw matches with a lower score are ignored
    max_rounds: int = 3  # merge / one-to-one rounds before the greedy split of what still conflicts
    read_ahead_mb: float = 256.0  # memory for raw positions read ahead (0: read every pair twice); not in the result
    overwrite: bool = False  # recompute even if a finished result with the same inputs exists

    def resolved(self, matcher: str | None = None) -> tuple[float, float]:
        """(cell_size, max_error); ``matcher`` names the backend for ``preset="auto"``."""
        preset = self.preset
        if preset == "auto":
            preset = matcher if matcher in PRESETS else "eloftr"
        if preset not in PRESETS:
            raise ValueError(f"unknown keypoints preset {self.preset!r}; choose one of {['auto', *sorted(PRESETS)]}")
        p = PRESETS[preset]
        cell = float(self.cell_size if self.cell_size is not None else p["cell_size"])
        err = float(self.max_error if self.max_error is not None else p["max_error"])
        if cell <= 0 or err < 0:
            raise ValueError(f"cell_size must be > 0 and max_error >= 0 (got {cell}, {err})")
        return cell, err



def _read_raw(f, key: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One raw pair group of an open ``matches.h5``: float32 datasets of the expected shapes are
    read straight into fresh arrays; anything else goes through :func:`read_raw_group` (which
    converts, or raises with a message naming ``where``)."""
    import h5py

    try:
        g = f[key]
        out = []
        for name in ("keypoints0", "keypoints1", "scores"):
            ds = g[name]
            if ds.dtype != np.float32:
                raise TypeError(name)
            arr = np.empty(ds.shape, np.float32)
            if arr.size:
                ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
            out.append(arr)
    except (KeyError, TypeError):
        return read_raw_group(f[key], where)
    k0, k1, sc = out
    if k0.ndim != 2 or k0.shape[1:] != (2,) or k1.shape != k0.shape or sc.shape != (len(k0),):
        return read_raw_group(f[key], where)
    return k0, k1, sc


def _signature(pairs_path: Path, cfg: KeypointsConfig, names: list[str]) -> str:
    h = hashlib.sha1()
    h.update(pairs_path.read_bytes())
    # options at their defaults are left out (an option added to the library keeps finished files valid);
    # the preset counts through the cell size and error it resolves to (in ``names``): "auto" and the matcher's own
    # preset make the same files
    h.update(json.dumps(changed_options(asdict(cfg), asdict(KeypointsConfig()),
                                        ignore=("overwrite", "read_ahead_mb", "preset")), sort_keys=True).encode())
    h.update("\n".join(names).encode())
    return h.hexdigest()


def _file_stat(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_done(features: Path, matches_h5: Path, merged: Path, sig: str) -> bool:
    """Whether ``features`` was made with ``sig`` from this ``matches_h5`` together with this ``merged`` file."""
    import h5py

    if not features.is_file() or not merged.is_file():
        return False
    try:
        with h5py.File(features, "r") as f:
            return (f.attrs.get("loftr_sfm_signature", "") == sig
                    and f.attrs.get("loftr_sfm_matches_stat", "") == _file_stat(matches_h5)
                    and f.attrs.get("loftr_sfm_merged_stat", "") == _file_stat(merged))
    except OSError:
        return False


def run_keypoints(output: Path, images: Path | None = None, config: KeypointsConfig | None = None) -> Path:
    """Merge the raw semi-dense matches of ``output/matches.h5`` into shared keypoints.

    Reads ``output/pairs.txt`` and ``output/matches.h5`` (raw layout, never modified), writes
    ``output/merged_matches.h5`` (``matches0`` / ``matching_scores0`` per pair group, hloc's layout)
    and then ``output/features.h5``, each atomically. Image sizes come from ``images`` when given (images in no pair then get an
    empty keypoint set), else from the keypoint extent. Returns the path of ``features.h5``.
    """
    import h5py

    cfg = merge_config(KeypointsConfig, config)
    output = Path(output)
    pairs_path, matches_path, features_path = output / "pairs.txt", output / "matches.h5", output / "features.h5"
    if not matches_path.is_file():
        raise InputError(f"{matches_path} does not exist: run the matching stage first (or provide a raw matches.h5)")
    matcher = None
    if cfg.preset == "auto":
        with h5py.File(matches_path, "r") as f:
            matcher = f.attrs.get("matcher")
        matcher = matcher.decode() if isinstance(matcher, bytes) else matcher
    cell, err = cfg.resolved(matcher)
    logger.info("keypoints: cell_size %.3g px, max_error %.3g px (preset %s%s)", cell, err, cfg.preset,
                f" -> {matcher}" if matcher else "")
    pairs = read_pairs(pairs_path)
    names = sorted({n for p in pairs for n in p})
    if images is not None:
        all_names = list_images(images)
        known = set(all_names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"{pairs_path} names image(s) not in {images}: {', '.join(unknown[:5])}")
        names = all_names
    # the size/mtime of matches.h5 (and of merged_matches.h5) are stored in features.h5; any later change
    # (e.g. the matching stage added pairs) triggers a recompute.
    sig = _signature(pairs_path, cfg, names + [f"cell={cell} err={err}"])
    if not cfg.overwrite and _is_done(features_path, matches_path, output / MERGED_MATCHES_FILE, sig):
        logger.info("keypoints: %s is up to date, skipping (use overwrite to recompute)", features_path)
        return features_path
    # images the matching stage could not read (e.g. a JPEG cut short: its header reads), and images whose header
    # does not read: left out by name, the others go on without them
    with h5py.File(matches_path, "r") as f:
        left_out: dict[str, str] = {n: r for n, r in json.loads(f.attrs.get(UNREADABLE_ATTR, "{}")).items()
                                    if n in set(names)}
    size_of: dict[str, tuple[int, int]] = {}
    if images is not None:
        for n in names:
            if n in left_out:
                continue
            try:
                size_of[n] = image_size(Path(images) / n)
            except ImageReadError as e:
                left_out[n] = str(e)
    if left_out:
        logger.warning("keypoints: %d unreadable image(s) left out: %s", len(left_out),
                       "; ".join(f"{n} ({r})" for n, r in sorted(left_out.items())[:10]))
        names = [n for n in names if n not in left_out]
        pairs = [p for p in pairs if p[0] not in left_out and p[1] not in left_out]
    index = {n: i for i, n in enumerate(names)}
    timer = Timer().__enter__()
    pair_images, keys = [], []
    missing = 0
    with h5py.File(matches_path, "r") as f:
        for a, b in pairs:
            try:
                key, rev = find_pair(f, a, b)
            except KeyError:
                missing += 1
                continue
            # keep the stored orientation: matches0 of a group indexes its own image0
            n0, n1 = (b, a) if rev else (a, b)
            pair_images.append((index[n0], index[n1]))
            keys.append(key)
        if missing:
            logger.warning("keypoints: %d of %d pairs of %s have no group in %s (treated as 0 matches)",
                           missing, len(pairs), pairs_path, matches_path)
        # the raw matches are read on demand, image by image (a pair once, twice beyond the
        # read-ahead budget), never all at once
        res = merge_pairs(
            np.array(pair_images, np.int64).reshape(-1, 2),
            lambda p: _read_raw(f, keys[p], f"{matches_path}: pair {keys[p]}"), len(names),
            cell_size=cell, max_error=err, max_keypoints=cfg.max_keypoints, max_rounds=cfg.max_rounds,
            min_score=cfg.min_score, progress=len(names) >= 50, cache_mb=cfg.read_ahead_mb, scratch_dir=output,
        )
    # ---- image sizes
    sizes = []
    for i, n in enumerate(names):
        if images is not None:
            sizes.append(size_of[n])
        else:
            kp = res.keypoints[i]
            sizes.append(tuple(int(np.ceil(v)) + 1 for v in kp.max(0)) if len(kp) else (0, 0))
    # both files fit, or neither is written: matches0 + scores (8 bytes per keypoint of image0 of each pair),
    # keypoints + scores (12 bytes per keypoint)
    need = (sum(8 * len(res.keypoints[pair_images[p][0]]) + 4096 for p in range(len(keys)))
            + h5_bytes((a for i in range(len(names)) for a in (res.keypoints[i], res.scores[i])), len(names)))
    require_space(output / MERGED_MATCHES_FILE, need)
    # ---- matches0 into a file of their own (matches.h5 is never edited: a kill loses only this stage's work);
    # features.h5 is written last and marks completion
    with atomic_path(output / MERGED_MATCHES_FILE) as tmp, h5py.File(tmp, "w") as f:
        for p, key in enumerate(keys):
            g = f.create_group(key)
            i0 = pair_images[p][0]
            m0 = np.full(len(res.keypoints[i0]), -1, np.int32)
            s0 = np.zeros(len(res.keypoints[i0]), np.float32)
            m = res.matches[p]
            m0[m[:, 0]] = m[:, 1]
            s0[m[:, 0]] = res.match_scores[p]
            g.create_dataset("matches0", data=m0)
            g.create_dataset("matching_scores0", data=s0)
    with atomic_path(features_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, n in enumerate(names):
                g = f.create_group(n)  # '/' in a name makes nested groups, as in hloc
                g.create_dataset("keypoints", data=res.keypoints[i])
                g.create_dataset("scores", data=res.scores[i])
                g.create_dataset("image_size", data=np.array(sizes[i], np.int64))
            f.attrs["loftr_sfm_signature"] = sig
            f.attrs["loftr_sfm_matches_stat"] = _file_stat(matches_path)
            f.attrs["loftr_sfm_merged_stat"] = _file_stat(output / MERGED_MATCHES_FILE)
            f.attrs["loftr_sfm_config"] = json.dumps({**asdict(cfg), "cell_size": cell, "max_error": err})
            f.attrs["loftr_sfm_stats"] = json.dumps(res.stats)
            f.attrs[UNREADABLE_ATTR] = json.dumps(left_out, sort_keys=True)
    timer.__exit__()
    logger.info(
        "keypoints: %d pairs, %d raw matches -> %d keypoints in %d images, %d matches "
        "(merged %d duplicate nodes, cut %d edges) in %.1f s",
        len(keys), res.stats["raw_matches"], res.stats["keypoints"], len(names), res.stats["matches"],
        res.stats["merged_nodes"], res.stats["cut_edges"], timer.seconds,
    )
    record_stage_time(output, "keypoints", timer.seconds)
    return features_path


def read_features(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read ``features.h5`` into {name: {"keypoints": (K,2), "scores": (K,), "image_size": (2,)}}."""
    import h5py

    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                out[name] = {k: np.asarray(obj[k]) for k in ("keypoints", "scores", "image_size") if k in obj}
        f.visititems(visit)
    return out


def read_matches(h5, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Index matches of a pair from an open ``merged_matches.h5`` (the keypoints stage's output).

    Returns:
        (M, 2) int64 indices into (name0, name1) keypoints (orientation handled) and (M,)
        float32 scores.
    """
    key, rev = find_pair(h5, name0, name1)
    g = h5[key]
    if "matches0" not in g:
        raise InputError(f"{getattr(h5, 'filename', MERGED_MATCHES_FILE)}: pair {key} has no matches0; run the keypoints stage")
    m0 = np.asarray(g["matches0"]).astype(np.int64)
    s0 = np.asarray(g["matching_scores0"], np.float32) if "matching_scores0" in g else np.ones(len(m0), np.float32)
    idx = np.flatnonzero(m0 >= 0)
    m = np.stack([idx, m0[idx]], 1)
    if rev:
        m = m[:, ::-1].copy()
    return m, s0[idx]
