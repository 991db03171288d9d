"""COLMAP database from shared keypoints and index matches (pycolmap 4.x).

Reads ``output/features.h5`` and ``output/merged_matches.h5`` (``matches0``, written by the keypoints
stage) and ``output/pairs.txt``; writes ``output/database.db`` with

* cameras: one per group of images that may share intrinsics (``camera_mode``); never shared
  across image sizes. Focal length from EXIF when present (``has_prior_focal_length=True``),
  else 1.2 * max(w, h) (COLMAP's default, no prior). User-given ``camera_model`` +
  ``camera_params`` (e.g. PINHOLE "fx,fy,cx,cy" in COLMAP's convention) are used as-is for every
  camera and mark the focal length as known (which also fixes the principal point, since COLMAP
  does not refine it by default). Photos from one camera without EXIF get one camera each here;
  the mapping stage gives images whose estimated cameras agree one camera afterwards
  (``share_cameras``) and refines its principal point, which one camera per image cannot. Stating
  it with ``camera_mode single`` (or ``per_folder``) does that from the start, the more accurate
  choice when it is true.
* images: ``write_image`` by name (ids are assigned by the database; everything downstream maps
  by name, never by id).
* keypoints: features.h5 coordinates + 0.5 (OpenCV pixel centres -> COLMAP convention).
* matches: validated index ranges, uint32.
* two-view geometries: pycolmap's geometric verification with a fixed RANSAC seed (existing
  two-view geometries are cleared first, re-verification is otherwise a no-op in pycolmap).
  A pair whose inliers are fewer than ``min_inlier_ratio`` of its matches is then rejected (its
  two-view geometry deleted; the matches stay): a semi-dense matcher returns hundreds of matches on
  images that do not overlap, and RANSAC finds enough of them consistent by chance to pass
  pycolmap's 15-inlier test; such chance pairs have inlier ratios well under those of right pairs.
  The default, 0.2, is below the lowest ratio of a right pair of semi-dense matches over the scene
  suite and rejects SIFT's chance pairs too (docs/accuracy.md: what it rejects, counted against GT,
  for both kinds of matches); 0 turns it off.

Resumable: the database is built in a temporary file and moved into place; a finished database
whose inputs and options are unchanged is reused (``overwrite`` forces a rebuild). The
signature lives in ``output/.database.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .io import (UNREADABLE_ATTR, InputError, atomic_path, disk_full_error, image_size, is_disk_full, low_space,
                 read_pairs, require_space)
from .utils import Timer, changed_options, merge_config, progress
from .workspace import MERGED_MATCHES_FILE, record_stage_time

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per_folder", "per_image")


@dataclass
class DatabaseConfig:
    """Options of the database stage."""

    camera_mode: str = "auto"  # auto | single | per_folder | per_image
    camera_model: str = "SIMPLE_RADIAL"  # any COLMAP camera model name
    camera_params: str | None = None  # comma-separated params of camera_model (COLMAP convention)
    verify: bool = True  # run pycolmap geometric verification
    ransac_max_error: float = 4.0  # px
    ransac_seed: int = 0
    ransac_max_trials: int = 20000
    ransac_min_inlier_ratio: float = 0.1
    min_num_inliers: int = 15
    min_inlier_ratio: float = 0.2  # reject verified pairs with fewer inliers than this share of matches (0: off)
    weak_link_pairs: int = 5  # warn where the images before and after a name share <= this many verified pairs (0: off)
    num_threads: int = -1
    verbose: bool = False
    overwrite: bool = False


def _quiet(verbose: bool) -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2


def _exif_focal(path: Path) -> float | None:
    """Focal length in pixels (of the larger image side) from EXIF via pycolmap, or None."""
    import pycolmap

    try:
        cam = pycolmap.infer_camera_from_image(str(path), pycolmap.ImageReaderOptions())
    except Exception as e:  # unreadable EXIF is not fatal
        logger.debug("%s: no EXIF camera (%s)", path, e)
        return None
    if not cam.has_prior_focal_length:
        return None
    # pycolmap reads the stored (un-rotated) size; the focal is the same for the rotated image
    return float(cam.mean_focal_length())


def make_cameras(
    names: list[str],
    sizes: dict[str, tuple[int, int]],
    images: Path | None,
    cfg: DatabaseConfig,
) -> tuple[list, dict[str, int]]:
    """Build the cameras and the image -> camera index assignment.

    Returns (list of pycolmap.Camera, {name: index into that list}).
    """
    import pycolmap

    if cfg.camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera_mode {cfg.camera_mode!r}; choose one of {CAMERA_MODES}")
    user_params = None
    if cfg.camera_params:
        try:
            user_params = [float(v) for v in str(cfg.camera_params).replace(" ", "").split(",") if v]
        except ValueError:
            raise InputError(f"camera_params {cfg.camera_params!r}: expected comma-separated numbers") from None
    groups: dict[tuple, int] = {}
    cams: list = []
    assign: dict[str, int] = {}
    for n in names:
        w, h = sizes[n]
        focal = _exif_focal(images / n) if (images is not None and user_params is None) else None
        if cfg.camera_mode == "per_image":
            gkey: tuple = (n,)
        elif cfg.camera_mode == "single":
            gkey = (w, h)
        elif cfg.camera_mode == "per_folder":
            gkey = (os.path.dirname(n), w, h)
        else:  # auto: images with EXIF focal and equal size share; images without EXIF: one each
            gkey = (w, h, round(focal, 3)) if focal is not None else (n,)
        if gkey not in groups:
            if user_params is not None:
                cam = pycolmap.Camera(model=cfg.camera_model, width=w, height=h, params=user_params)
                cam.has_prior_focal_length = True
            else:
                f = focal if focal is not None else 1.2 * max(w, h)
                cam = pycolmap.Camera.create_from_model_name(
                    camera_id=len(cams) + 1, model_name=cfg.camera_model, focal_length=f, width=w, height=h
                )
                cam.has_prior_focal_length = focal is not None
            if not cam.verify_params():
                raise InputError(
                    f"camera model {cfg.camera_model} expects {cam.params_info} but got params {cfg.camera_params!r}"
                )
            groups[gkey] = len(cams)
            cams.append(cam)
        assign[n] = groups[gkey]
    if cfg.camera_mode == "single" and len(cams) > 1:
        logger.warning("camera_mode=single but the images have %d different sizes: one camera per size", len(cams))
    return cams, assign


def _signature(output: Path, images: Path | None, cfg: DatabaseConfig) -> str:
    h = hashlib.sha1()
    for name in ("features.h5", MERGED_MATCHES_FILE, "pairs.txt"):
        p = output / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(str(images).encode())
    # options at their defaults are left out (an option added to the library keeps a finished database valid);
    # weak_link_pairs is a warning, not content
    h.update(json.dumps(changed_options(asdict(cfg), asdict(DatabaseConfig()),
                                        ignore=("weak_link_pairs", "overwrite", "verbose")), sort_keys=True).encode())
    return h.hexdigest()


def write_database(
    db_path: Path,
    features: dict[str, dict[str, np.ndarray]],
    pair_matches: list[tuple[str, str, np.ndarray]],
    images: Path | None,
    cfg: DatabaseConfig,
) -> dict[str, int]:
    """Write cameras, images, keypoints (+0.5) and matches into a new database.

    Args:
        features: {name: {"keypoints": (K, 2) OpenCV-convention pixels, "image_size": (w, h)}}.
        pair_matches: (name0, name1, (M, 2) int indices into name0's / name1's keypoints).
    Returns:
        {image name: database image id}.
    """
    import pycolmap

    names = sorted(features)
    sizes = {n: tuple(int(v) for v in features[n].get("image_size", (0, 0))) for n in names}
    for n, (w, h) in sizes.items():
        if images is not None:  # the image header is the authority (features.h5 may hold an estimate)
            real = image_size(images / n)
            if (w, h) != real and w > 0:
                logger.warning("%s: features.h5 says %dx%d, the image is %dx%d; using the image", n, w, h, *real)
            sizes[n] = real
        elif w <= 0 or h <= 0:
            raise InputError(f"image {n} has no size in features.h5 and no image folder was given")
    cams, assign = make_cameras(names, sizes, images, cfg)
    ids: dict[str, int] = {}
    with pycolmap.Database.open(str(db_path)) as db:
        with pycolmap.DatabaseTransaction(db):
            cam_ids = [db.write_camera(c) for c in cams]
            for n in names:
                ids[n] = db.write_image(pycolmap.Image(name=n, camera_id=cam_ids[assign[n]]))
                kp = np.asarray(features[n]["keypoints"], np.float32).reshape(-1, 2) + 0.5
                db.write_keypoints(ids[n], kp)
            for a, b, m in pair_matches:
                if len(m) == 0:
                    continue
                k0, k1 = len(features[a]["keypoints"]), len(features[b]["keypoints"])
                m = np.asarray(m, np.int64).reshape(-1, 2)
                if m.min() < 0 or m[:, 0].max() >= k0 or m[:, 1].max() >= k1:
                    raise InputError(
                        f"matches of pair ({a}, {b}) index beyond the keypoints ({k0}, {k1} keypoints): "
                        f"{MERGED_MATCHES_FILE} and features.h5 are out of sync; rerun the keypoints stage"
                    )
                db.write_matches(ids[a], ids[b], m.astype(np.uint32))
    return ids


def verify_database(db_path: Path, cfg: DatabaseConfig) -> None:
    """Geometric verification of every matched pair with a fixed RANSAC seed (clears old TVGs)."""
    import pycolmap

    with pycolmap.Database.open(str(db_path)) as db:
        db.clear_two_view_geometries()
    tvo = pycolmap.TwoViewGeometryOptions()
    tvo.ransac.max_error = cfg.ransac_max_error
    tvo.ransac.random_seed = cfg.ransac_seed
    tvo.ransac.max_num_trials = cfg.ransac_max_trials
    tvo.ransac.min_inlier_ratio = cfg.ransac_min_inlier_ratio
    tvo.min_num_inliers = cfg.min_num_inliers
    vo = pycolmap.GeometricVerifierOptions()
    vo.num_threads = cfg.num_threads
    pycolmap.geometric_verification(str(db_path), verifier_options=vo, two_view_geometry_options=tvo)


def min_inlier_ratio(cfg: DatabaseConfig) -> float:
    """``cfg.min_inlier_ratio``, checked to be a share in [0, 1)."""
    if not 0.0 <= cfg.min_inlier_ratio < 1.0:
        raise ValueError(f"min_inlier_ratio must be in [0, 1), got {cfg.min_inlier_ratio}")
    return float(cfg.min_inlier_ratio)


def reject_low_inlier_ratio(db_path: Path, ratio: float) -> list[tuple[str, str]]:
    """Delete the two-view geometries whose inliers are fewer than ``ratio`` times the pair's matches.

    Returns the rejected pairs (image names). The matches stay in the database.
    """
    import pycolmap

    if ratio <= 0:
        return []
    rejected = []
    with pycolmap.Database.open(str(db_path)) as db:
        names = {im.image_id: im.name for im in db.read_all_images()}
        num_matches = dict(zip(*db.read_num_matches()))  # counts only, no match blob is read
        for pair_id, n in zip(*db.read_two_view_geometry_num_inliers()):
            if 0 < n < ratio * num_matches.get(pair_id, 0):
                a, b = pycolmap.pair_id_to_image_pair(pair_id)
                db.delete_two_view_geometry(a, b)
                rejected.append((names[a], names[b]))
    return rejected


def weak_links(db_path: Path, max_pairs: int = 5, max_share: float = 0.25, min_side: int = 3,
               min_inliers: int = 15) -> list[dict]:
    """Places in name order where the collection hangs on a few verified pairs.

    Every cut of the images sorted by name (the order of sequential pairs: the images up to one
    name against those after it) is crossed by the verified pairs (``min_inliers`` inliers or more)
    with an image on each side. A cut whose two sides hold ``min_side`` images or more and which at
    most ``max_pairs`` pairs and at most ``max_share`` of the median cut's pairs cross is weak: a
    video with a gap matched with sequential pairs (a few pairs hold its two halves together), or
    photos of separate places (0 pairs). The model bends or splits
    there. Runs of consecutive weak cuts are reported once, at the cut crossed by the fewest pairs
    (the first on ties).

    Returns:
        ``[{"after": name, "before": next name, "verified_pairs": n, "pairs": [[a, b], ...]}]``
        in name order; ``pairs`` are the crossing pairs.
    """
    import pycolmap

    with pycolmap.Database.open(str(db_path)) as db:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, n_inl = db.read_two_view_geometry_num_inliers()
    order = sorted(names.values())
    n = len(order)
    if n < 2 * min_side:
        return []
    rank = {name: r for r, name in enumerate(order)}
    pairs = [pycolmap.pair_id_to_image_pair(int(p)) for p, k in zip(pair_ids, n_inl) if k >= min_inliers]
    ends = np.array([sorted((rank[names[a]], rank[names[b]])) for a, b in pairs], np.int64).reshape(-1, 2)
    ends = ends[np.lexsort((ends[:, 1], ends[:, 0]))]  # in name order, whatever the image ids
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, ends[:, 0], 1)
    np.add.at(delta, ends[:, 1], -1)
    cut = np.cumsum(delta)[: n - 1]  # cut[k]: pairs between images 0..k and k+1..n-1
    inner = cut[min_side - 1 : n - min_side]
    weak = np.zeros(n - 1, bool)
    weak[min_side - 1 : n - min_side] = (inner <= max_pairs) & (inner <= max_share * np.median(inner))
    out = []
    starts = np.flatnonzero(weak & ~np.r_[False, weak[:-1]])
    for a in starts:
        rest = ~weak[a:]
        b = a + int(np.argmax(rest)) if rest.any() else n - 1  # the run of weak cuts is a..b-1
        k = a + int(np.argmin(cut[a:b]))
        crossing = ends[(ends[:, 0] <= k) & (ends[:, 1] > k)]
        out.append({"after": order[k], "before": order[k + 1], "verified_pairs": int(cut[k]),
                    "pairs": [[order[i], order[j]] for i, j in crossing.tolist()]})
    return out


#: the stage's record in the output folder: ``{"signature": ..., "stats": {...}}``
STATS_FILE = ".database.json"


def read_stage_stats(output: Path) -> dict:
    """The ``stats`` the database stage recorded in ``output/.database.json`` ({} if none or unreadable)."""
    try:
        stats = json.loads((Path(output) / STATS_FILE).read_text())["stats"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return stats if isinstance(stats, dict) else {}


@contextlib.contextmanager
def read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """An SQLite connection to ``db_path`` that cannot write: pycolmap rewrites the file whenever it opens a
    database, even only to read it, which would make later stages think it changed."""
    con = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def _reading(db_path: Path) -> Iterator[sqlite3.Connection]:
    """:func:`read_only` for the readers of a stage's database: a file that is not a readable SQLite database
    raises :class:`InputError` naming it (on opening or on any query)."""
    try:
        with read_only(db_path) as con:
            yield con
    except sqlite3.DatabaseError as e:
        # a full disk makes SQLite fail even to read (its shared-memory index of the write-ahead log needs room)
        if is_disk_full(e) or ("disk I/O error" in str(e) and low_space(db_path)):
            raise disk_full_error(db_path) from None
        raise InputError(f"{db_path} is not a COLMAP database ({e}): run the database stage again") from None


def _intact(db_path: Path, stats: dict) -> bool:
    """Whether ``db_path`` is a readable SQLite database with the images and pairs ``stats`` recorded for it."""
    try:
        with read_only(db_path) as con:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return False
            images = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            pairs = con.execute("SELECT COUNT(*) FROM matches WHERE rows > 0").fetchone()[0]
    except sqlite3.Error:
        return False
    return images == stats.get("images") and pairs == stats.get("matched_pairs")


def database_stats(db_path: Path) -> dict:
    """Counts of a database: images, cameras, keypoints, matched and verified (>= 15 inliers) pairs."""
    import pycolmap

    with pycolmap.Database.open(str(db_path)) as db:
        pair_ids, n_inl = db.read_two_view_geometry_num_inliers()
        return {
            "images": db.num_images(),
            "cameras": db.num_cameras(),
            "keypoints": db.num_keypoints(),
            "matched_pairs": db.num_matched_image_pairs(),
            "matches": db.num_matches(),
            "verified_pairs": int(sum(1 for v in n_inl if v >= 15)),
            "inlier_matches": int(sum(n_inl)),
        }


def database_fingerprint(db_path: Path) -> str:
    """Hash of a database's content: every table, its rows in rowid order (hex, 32 characters).

    What later stages compare to know whether the database changed, instead of its mtime:
    pycolmap rewrites the SQLite file whenever it opens a database, even only to read it
    (pycolmap 4.2.1: ``Database.open`` + ``num_images`` changes the file's bytes and mtime, not a
    row), so looking into ``database.db`` would otherwise make the mapping stage map again. Read
    with sqlite3 in read-only mode (this function does not touch the file); cost is one pass over
    the file.
    Raises ``sqlite3.DatabaseError`` if the file is not a readable SQLite database.
    """

    h = hashlib.blake2b(digest_size=16)
    with read_only(db_path) as con:
        tables = [t for (t,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for table in tables:
            h.update(f"table {table};".encode())
            for row in con.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                for v in row:
                    if isinstance(v, bytes):
                        h.update(b"b%d:" % len(v))
                        h.update(v)
                    else:
                        h.update(f"{type(v).__name__}:{v!r};".encode())
    return h.hexdigest()


def image_ids_by_name(db_path: Path) -> dict[str, int]:
    """{image name: image id} of a database (map by name, never assume id order); read-only."""
    with _reading(db_path) as con:
        return dict(con.execute("SELECT name, image_id FROM images").fetchall())


def start_focal_lengths(db_path: Path) -> dict[str, float]:
    """{image name: mean focal length (px) its database camera starts from} for the images whose camera has no
    prior focal length (no EXIF, no ``--camera-params``): the mapper's starting guess; read-only."""
    import pycolmap

    with _reading(db_path) as con:
        focal = {}
        for cid, model, width, height, params, prior in con.execute(
                "SELECT camera_id, model, width, height, params, prior_focal_length FROM cameras"):
            if not prior:
                cam = pycolmap.Camera(model=pycolmap.CameraModelId(model), width=width, height=height,
                                      params=np.frombuffer(params, np.float64))
                focal[cid] = cam.mean_focal_length()
        return {name: focal[cid] for name, cid in con.execute("SELECT name, camera_id FROM images") if cid in focal}


def images_per_camera(db_path: Path) -> dict[int, int]:
    """{camera_id: number of images} of a database; read-only."""
    with _reading(db_path) as con:
        return dict(con.execute("SELECT camera_id, COUNT(*) FROM images GROUP BY camera_id").fetchall())


def keypoint_count(db_path: Path) -> int:
    """Number of keypoints in a database (all images); read-only."""
    with _reading(db_path) as con:
        return int(con.execute("SELECT COALESCE(SUM(rows), 0) FROM keypoints").fetchone()[0])


def run_database(output: Path, images: Path, config: DatabaseConfig | None = None) -> Path:
    """Build ``output/database.db`` from ``features.h5`` + ``merged_matches.h5`` (+ ``pairs.txt``).

    ``images`` is the image folder (EXIF focal priors; sizes when features.h5 lacks them).
    Returns the database path.
    """
    import h5py

    from .keypoints import read_features, read_matches

    cfg = merge_config(DatabaseConfig, config)
    _quiet(cfg.verbose)
    output = Path(output)
    images = Path(images) if images is not None else None
    db_path = output / "database.db"
    stamp = output / STATS_FILE
    feats_path, matches_path = output / "features.h5", output / MERGED_MATCHES_FILE
    for p in (feats_path, matches_path):
        if not p.is_file():
            raise InputError(f"{p} does not exist: run the keypoints stage first")
    ratio = min_inlier_ratio(cfg) if cfg.verify else 0.0
    if cfg.weak_link_pairs < 0:
        raise ValueError(f"weak_link_pairs must be >= 0 (0: no warning), got {cfg.weak_link_pairs}")
    sig = _signature(output, images, cfg)
    if not cfg.overwrite and db_path.is_file() and stamp.is_file():
        try:
            record = json.loads(stamp.read_text())
            if record.get("signature") == sig:
                if _intact(db_path, record.get("stats", {})):
                    logger.info("database: %s is up to date, skipping (use overwrite to rebuild)", db_path)
                    return db_path
                logger.warning("database: %s is damaged or not the one this stage wrote: building it again", db_path)
        except (OSError, ValueError):
            pass
    with Timer() as t:
        features = read_features(feats_path)
        if not features:
            raise InputError(f"{feats_path} holds no image")
        with h5py.File(feats_path, "r") as f:  # images the keypoints stage left out (unreadable): their pairs too
            left_out = set(json.loads(f.attrs.get(UNREADABLE_ATTR, "{}")))
        pairs = [p for p in read_pairs(output / "pairs.txt", known_names=[*features, *left_out])
                 if p[0] in features and p[1] in features]
        pm = []
        with h5py.File(matches_path, "r") as f:
            for a, b in progress(pairs, desc="database: read matches", unit="pair", leave=False):
                try:
                    m, _ = read_matches(f, a, b)
                except KeyError:
                    continue
                pm.append((a, b, m))
        # COLMAP's rows: keypoints (at most 6 float32 each), matches and inlier matches (2 uint32 each); its write-ahead
        # log may hold all of it once more before the file is complete
        require_space(db_path, 2 * (24 * sum(len(f["keypoints"]) for f in features.values())
                                    + 16 * sum(len(m) for _, _, m in pm)) + 2**20)
        with atomic_path(db_path) as tmp:
            tmp.unlink()  # pycolmap creates the file
            write_database(tmp, features, pm, images, cfg)
            rejected = []
            if cfg.verify:
                verify_database(tmp, cfg)
                rejected = reject_low_inlier_ratio(tmp, ratio)
                if rejected:
                    logger.info("database: rejected %d verified pair(s) with fewer inliers than %.0f %% of their "
                                "matches (min_inlier_ratio), e.g. %s", len(rejected), 100 * ratio,
                                ", ".join(f"{a} {b}" for a, b in rejected[:3]))
            links = (weak_links(tmp, cfg.weak_link_pairs, min_inliers=cfg.min_num_inliers)
                     if cfg.verify and cfg.weak_link_pairs > 0 else [])
            for link in links:
                logger.warning(
                    "database: the images up to %s and those from %s on (name order) are linked by %s; the "
                    "model may bend or split there (sequential pairs of a video with a gap: keep their loop-closure "
                    "pairs on, `--loop-closure`, or raise `--loop-closure-neighbors`; or the photos show places "
                    "that do not overlap)", link["after"], link["before"],
                    f"only {link['verified_pairs']} verified pair(s) "
                    f"({', '.join(f'{a} {b}' for a, b in link['pairs'])})" if link["pairs"] else "no verified pair")
            stats = {**database_stats(tmp), "rejected_pairs": len(rejected), "weak_links": links,
                     "known_calibration": bool(cfg.camera_params)}  # the mapping stage holds such cameras
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"signature": sig, "stats": stats}, indent=1))
    logger.info(
        "database: %d images, %d cameras, %d keypoints, %d matched pairs, %d verified pairs in %.1f s",
        stats["images"], stats["cameras"], stats["keypoints"], stats["matched_pairs"], stats["verified_pairs"], t.seconds,
    )
    record_stage_time(output, "database", t.seconds)
    return db_path


def read_images_table(db_path: Path) -> list[dict]:
    """Every image of a database, read-only: ``{"name", "image_id", "camera_id", "keypoints", "camera"}``.

    ``camera`` is the database's (initial) camera: ``{"model", "width", "height", "params"}``.
    """
    import pycolmap

    with _reading(db_path) as con:
        cams = {cid: {"model": pycolmap.CameraModelId(model).name, "width": w, "height": h,
                      "params": np.frombuffer(blob or b"", np.float64).tolist()}
                for cid, model, w, h, blob in con.execute("SELECT camera_id, model, width, height, params FROM cameras")}
        rows = con.execute("SELECT i.image_id, i.name, i.camera_id, COALESCE(k.rows, 0) FROM images i "
                           "LEFT JOIN keypoints k ON k.image_id = i.image_id ORDER BY i.name").fetchall()
    return [{"name": name, "image_id": iid, "camera_id": cid, "keypoints": int(n), "camera": cams.get(cid)}
            for iid, name, cid, n in rows]


def read_pairs_table(db_path: Path) -> list[dict]:
    """Every pair of a database with matches or a two-view geometry, read-only.

    ``{"name0", "name1", "matches", "inliers", "config"}``: ``matches`` is the number of index matches written
    by this stage, ``inliers`` that of the two-view geometry's inliers, -1 when the pair has none (not verified,
    or rejected by the inlier-ratio check, which deletes it), ``config`` its pycolmap
    ``TwoViewGeometryConfiguration`` name ("" when none).
    """
    import pycolmap

    with _reading(db_path) as con:
        names = dict(con.execute("SELECT image_id, name FROM images"))
        matches = dict(con.execute("SELECT pair_id, rows FROM matches"))
        tvgs = {pid: (rows, config) for pid, rows, config in
                con.execute("SELECT pair_id, rows, config FROM two_view_geometries")}
    out = []
    for pid in sorted(set(matches) | set(tvgs)):
        a, b = pycolmap.pair_id_to_image_pair(int(pid))
        rows, config = tvgs.get(pid, (-1, None))
        out.append({"name0": names[a], "name1": names[b], "matches": int(matches.get(pid, 0)), "inliers": int(rows),
                    "config": pycolmap.TwoViewGeometryConfiguration(config).name if config is not None else ""})
    return out


def read_pair_matches(db_path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints and matches of one pair of a database, read-only.

    Returns keypoints0 (K0, 2), keypoints1 (K1, 2) float32 in the OpenCV convention (the database's minus 0.5),
    matches (M, 2) and two-view-geometry inliers (I, 2) uint32, index pairs into them (columns in the order
    name0, name1; (0, 2) when none).
    """
    import pycolmap

    with read_only(db_path) as con:
        ids = dict(con.execute("SELECT name, image_id FROM images WHERE name IN (?, ?)", (name0, name1)))
        if len(ids) != 2:
            raise InputError(f"{db_path}: no image pair ({name0}, {name1})")
        kps = []
        for n in (name0, name1):
            row = con.execute("SELECT rows, cols, data FROM keypoints WHERE image_id = ?", (ids[n],)).fetchone()
            kp = np.frombuffer(row[2], np.float32).reshape(row[0], row[1]) if row and row[0] else np.zeros((0, 2))
            kps.append(np.asarray(kp[:, :2], np.float32) - 0.5)
        pid = pycolmap.image_pair_to_pair_id(ids[name0], ids[name1])
        swap = pycolmap.should_swap_image_pair(ids[name0], ids[name1])
        out = []
        for table in ("matches", "two_view_geometries"):
            row = con.execute(f"SELECT rows, data FROM {table} WHERE pair_id = ?", (int(pid),)).fetchone()
            m = np.frombuffer(row[1], np.uint32).reshape(-1, 2) if row and row[0] and row[1] else np.zeros((0, 2), np.uint32)
            out.append(m[:, ::-1] if swap else m)
    return kps[0], kps[1], out[0], out[1]


__all__ = ["DatabaseConfig", "CAMERA_MODES", "make_cameras", "write_database",
           "verify_database", "min_inlier_ratio", "reject_low_inlier_ratio", "weak_links", "database_stats",
           "STATS_FILE", "read_stage_stats",
           "image_ids_by_name", "images_per_camera", "read_only", "read_images_table", "read_pairs_table",
           "read_pair_matches", "run_database"]
