"""The mapping stage: database.db -> model/, model_txt/, points.ply, summary.json.

1. the mapper run (:mod:`loftr_sfm.sfm.mappers`): pycolmap's incremental (default) or global
   mapper; with ``fallback`` (opt-in), the other one once if the first registers too few images;
   when the model leaves images out and its focal lengths came out over ``FAR_FOCAL_CHANGE`` (3) x
   the guess the database started from (no EXIF), the mapper once more with one camera per image
   size at the focal length found (``cameras.remap_far_focal``); of two models, the one that explains
   more of the verified pairs is kept;
2. shared cameras (:mod:`loftr_sfm.sfm.cameras`, on by default): images of one size whose
   estimated focal lengths agree get one camera, principal point and distortion refined;
3. optional refinement (:mod:`loftr_sfm.sfm.refine`, opt-in): photometric track refinement,
   relative filtering of observations.

Cameras given to the database stage (``camera_params``) are a known calibration: every bundle
adjustment holds them as given (``cameras.hold_known_calibration``).

Nothing removes a registered image. The summary lists every database image without a pose.
Resumable: an existing model is reused when the database's content and the options are those
it was made from (``overwrite`` maps again).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..database import (database_fingerprint, image_ids_by_name, images_per_camera, keypoint_count, read_stage_stats,
                        start_focal_lengths)
from ..io import InputError, atomic_path, file_bytes, matches_backend, require_space
from ..utils import Timer, changed_options, merge_config
from ..workspace import read_stage_times, record_stage_time
from .cameras import focal_change, model_images_per_camera, resolve_principal_point, share_cameras
from .mappers import map_database
from .model import MODEL_BYTES_PER_KEYPOINT, color_points, model_stats, quiet_pycolmap, write_model
from .options import FAR_FOCAL_CHANGE, MappingConfig
from .refine import filter_model, refine_model_tracks, track_refinement_wanted

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
# from this many images on, the log points to the faster mapping of large collections (docs/performance.md)
LARGE_COLLECTION = 300
EMPTY_STATS = {"registered": 0, "points": 0, "observations": 0, "mean_track_length": 0.0,
               "duplicate_observations": 0, "mean_reprojection_error": 0.0}


def focal_change_warning(change: float | None) -> str | None:
    """What to tell the user of a summary's ``focal_change`` beyond :data:`.options.FAR_FOCAL_CHANGE` x (else None)."""
    if change is None or 1 / FAR_FOCAL_CHANGE <= change <= FAR_FOCAL_CHANGE:
        return None
    return (f"the focal lengths came out {change:.1f}x the starting guess from the image size (no EXIF): "
            "self-calibration this far from the start is often wrong; if you know the camera, give --camera-params "
            "(or photos with EXIF)")


def _record(cfg: MappingConfig) -> dict[str, Any]:
    """The options a model was made with, as compared on a rerun (verbosity and overwrite left out)."""
    return {**asdict(cfg), "overwrite": False, "verbose": False}


def _up_to_date(output: Path, db_path: Path, cfg: MappingConfig) -> dict | None:
    """The earlier summary if ``output/model`` was made from this database's content with these options."""
    path = output / SUMMARY_FILE
    if cfg.overwrite or not path.is_file() or not (output / "model").is_dir():
        return None
    default = _record(MappingConfig())
    try:
        old = json.loads(path.read_text())
        if not isinstance(old.get("config"), dict) \
                or changed_options(old["config"], default) != changed_options(_record(cfg), default):
            return None
        # pycolmap rewrites a database's file whenever it opens it: same mtime, or else same content
        if old.get("database_mtime_ns") != db_path.stat().st_mtime_ns \
                and old.get("database_fingerprint") != database_fingerprint(db_path):
            return None
    except (OSError, ValueError, sqlite3.Error):
        return None
    return old


def run_mapping(output: Path, images: Path, config: MappingConfig | dict | None = None,
                stage_times: dict[str, float] | None = None) -> dict:
    """Map ``output/database.db``; write model/, model_txt/, points.ply and summary.json into ``output``.

    Args:
        output: the output folder of the earlier stages (database.db).
        images: the image folder (colours of the points; track refinement reads the pixels).
        config: :class:`MappingConfig`, a dict of its options (nested or flat), or None.
        stage_times: wall times (s) of earlier stages measured by the caller (``reconstruct``),
            stored in ``timings.json`` and reported in the summary.
    Returns:
        the summary dict (also ``summary.json``): num_images, matcher (of matches.h5), registered, points, observations,
        mean_track_length, mean_reprojection_error, unregistered_images, attempts (one per mapper
        run), focal_change (the mapped focal lengths over the start guessed from the image size, median over
        the images without EXIF focal; logged as a warning beyond :data:`.options.FAR_FOCAL_CHANGE` x),
        shared_cameras, track_refinement, relative_filter, times, config. If no model could
        be built, registered is 0 and no model is written.
    Raises:
        InputError if the database or the image folder is missing.
    """
    cfg = merge_config(MappingConfig, config)
    output, images = Path(output), Path(images)
    for stage, seconds in (stage_times or {}).items():
        record_stage_time(output, stage, seconds)
    from ..matchers import parse_options
    from .track_refinement import TrackRefinementConfig

    merge_config(TrackRefinementConfig, parse_options(cfg.refinement.track_refinement))  # typos fail before mapping
    quiet_pycolmap(cfg.verbose)
    db_path = output / "database.db"
    if not db_path.is_file():
        raise InputError(f"{db_path} does not exist: run the database stage first")
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist")
    old = _up_to_date(output, db_path, cfg)
    if old is not None:
        logger.info("mapping: %s is up to date, skipping (use overwrite to recompute)", output / "model")
        old["times"] = read_stage_times(output)
        return old
    per_camera = images_per_camera(db_path)
    num_images = sum(per_camera.values())
    # room for the model files (and a mapper's copy of the database) before minutes of mapping, not after
    require_space(output / "model", MODEL_BYTES_PER_KEYPOINT * keypoint_count(db_path) + file_bytes(db_path))
    # a calibration the user gave the database stage is known: bundle adjustment holds it (hold_known_calibration)
    held = bool(read_stage_stats(output).get("known_calibration")) and cfg.cameras.hold_known_calibration
    base = (replace(cfg.cameras, refine_focal_length=False, refine_principal_point=False, refine_extra_params=False)
            if held else cfg.cameras)
    if held:
        logger.info("mapping: the cameras are the calibration given to the database stage (camera_params), held as "
                    "given (--hold-known-calibration false refines them)")
    cameras = resolve_principal_point(base, per_camera)
    if num_images >= LARGE_COLLECTION and not (cfg.mapper == "global" and cfg.global_tracks_per_view):
        logger.info("mapping: %d images; for collections this large, --mapper global --global-tracks-per-view 300 "
                    "takes a fraction of the time and memory (docs/performance.md)", num_images)
    start = start_focal_lengths(db_path)
    with Timer() as t:
        rec, attempts = map_database(db_path, images, cfg, cameras, num_images, start)
    record_stage_time(output, "mapping", t.seconds)
    change = focal_change(rec, start) if rec is not None else None
    if warning := focal_change_warning(change):
        logger.warning("mapping: %s", warning)
    share_stats = track_stats = filter_stats = None
    if rec is not None and cfg.cameras.share_cameras:
        with Timer() as ts:
            rec, share_stats = share_cameras(rec, base, cfg.num_threads)  # the user's principal point rule
        record_stage_time(output, "share_cameras", ts.seconds)
        if share_stats is not None and share_stats["groups"] and cfg.cameras.refine_principal_point is None:
            cameras = resolve_principal_point(replace(cameras, refine_principal_point=None),
                                              model_images_per_camera(rec))
    if rec is not None and track_refinement_wanted(cfg.refinement, output):
        with Timer() as tt:
            rec, track_stats = refine_model_tracks(rec, images, cfg.refinement, cameras, cfg.num_threads)
        record_stage_time(output, "track_refinement", tt.seconds)
    if rec is not None and cfg.refinement.relative_filter:
        with Timer() as tf:
            rec, filter_stats = filter_model(rec, cfg.refinement, cameras, cfg.num_threads)
        record_stage_time(output, "relative_filter", tf.seconds)
    if rec is not None:
        color_points(rec, images)  # the photos as the keypoints saw them (EXIF orientation applied)
        write_model(rec, output)
    stats = model_stats(rec) if rec is not None else dict(EMPTY_STATS)
    posed = {im.name for im in rec.images.values() if im.has_pose} if rec is not None else set()

    summary = {
        "num_images": num_images,
        "matcher": matches_backend(output),  # what made the map: localization matches queries with it
        **stats,
        "unregistered_images": sorted(set(image_ids_by_name(db_path)) - posed),
        "registered_fraction": stats["registered"] / max(num_images, 1),
        "mapper": next((a["mapper"] for a in attempts if a["chosen"]), cfg.mapper),
        "focal_change": None if change is None else round(change, 4),
        "known_calibration_held": held,
        "attempts": attempts,
        "shared_cameras": share_stats,
        "track_refinement": track_stats,
        "relative_filter": filter_stats,
        "times": read_stage_times(output),
        "config": _record(cfg),
        "database_mtime_ns": db_path.stat().st_mtime_ns,
        "database_fingerprint": database_fingerprint(db_path),
    }
    with atomic_path(output / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    logger.info("reconstruction: %d/%d images registered, %d points, mean track length %.2f, reprojection error "
                "%.3f px (mapping %.1f s)", stats["registered"], num_images, stats["points"],
                stats["mean_track_length"], stats["mean_reprojection_error"], t.seconds)
    if left := summary["unregistered_images"]:
        logger.warning("mapping: %d of %d images have no pose (%s%s); all are listed in %s (unregistered_images) and "
                       "the report", len(left), num_images, ", ".join(left[:5]), ", ..." if len(left) > 5 else "",
                       output / SUMMARY_FILE)
    return summary
