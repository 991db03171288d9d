"""The mapper run: pycolmap's incremental or global mapper on the database, as they come.

One run of the chosen mapper (pycolmap's defaults but for the seed, the thread count, the
minimum of verified inliers per pair, the intrinsics bundle adjustment refines and, when asked,
the global mapper's tracks per image: ``global_tracks_per_view``); the model with most
registered images is kept (pycolmap returns every model it started, the first one is not the
largest). A second run follows only on a signal that the first model is incomplete, and then of
the two models the one that explains more of the database's verified geometry is kept: verified
pairs between its images that it explains, minus those it contradicts (:mod:`.checks`; a model
with more images but pairs glued in the wrong place loses). Nothing is removed from a model.

- ``fallback`` (off by default): when the model registers fewer than ``min_registered`` of the
  database's images, the other mapper runs once.
- ``cameras.remap_far_focal`` (on by default, :func:`remap_with_estimated_cameras`): when the model
  leaves images out and its focal lengths came out over :data:`.options.FAR_FOCAL_CHANGE` x the
  guess the database started from (no EXIF), the images were self-calibrated one by one from a
  wrong start, each image's focal length trading off against its depth. The model's mapper runs
  once more on a copy of the database in which the guessed images of each kind (model, size) share
  one camera at the model's median focal length, held while mapping. When the new model is kept,
  its focal lengths and distortion are bundle-adjusted with the principal points held at the image
  centre: a focal length this long against the image (a field of view under about 16 deg) hardly
  tells a shifted principal point from a rotation.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .cameras import focal_change, guessed_focal_lengths, write_start_cameras
from .checks import explained_pairs
from .options import FAR_FOCAL_CHANGE, MAPPERS, CameraOptions, MappingConfig

logger = logging.getLogger(__name__)


def incremental_options(cfg: MappingConfig, cameras: CameraOptions):
    """pycolmap.IncrementalPipelineOptions of a run."""
    import pycolmap

    o = pycolmap.IncrementalPipelineOptions()
    o.num_threads = cfg.num_threads
    o.random_seed = cfg.seed
    o.min_num_matches = cfg.min_num_matches
    o.ba_refine_focal_length = cameras.refine_focal_length
    o.ba_refine_principal_point = bool(cameras.refine_principal_point)
    o.ba_refine_extra_params = cameras.refine_extra_params
    o.extract_colors = False  # the stage colours the final model itself (sfm.model.color_points)
    return o


def global_options(cfg: MappingConfig, cameras: CameraOptions):
    """pycolmap.GlobalPipelineOptions of a run."""
    import pycolmap

    o = pycolmap.GlobalPipelineOptions()
    o.num_threads = cfg.num_threads
    o.random_seed = cfg.seed
    o.min_num_matches = cfg.min_num_matches
    if cfg.global_tracks_per_view:
        o.mapper.track_required_tracks_per_view = cfg.global_tracks_per_view
    ba = o.mapper.bundle_adjustment
    ba.refine_focal_length = cameras.refine_focal_length
    ba.refine_principal_point = bool(cameras.refine_principal_point)
    ba.refine_extra_params = cameras.refine_extra_params
    return o


def run_mapper(db_path: Path, images: Path, work: Path, mapper: str, cfg: MappingConfig, cameras: CameraOptions,
               num_images: int = 0):
    """One run of ``mapper`` on ``db_path``; returns (largest model or None, number of models).

    The incremental mapper reports registered images as they come (tqdm over ``num_images``).
    """
    import pycolmap

    from ..utils import progress

    work.mkdir(parents=True, exist_ok=True)
    if mapper == "incremental":
        with progress(total=num_images or None, desc="mapping (incremental)", unit="image", leave=False) as bar:
            def next_image() -> None:
                bar.update(1)

            def initial_pair() -> None:  # a new model starts: the bar counts its images
                bar.reset(total=num_images or None)
                bar.update(2)

            recs = pycolmap.incremental_mapping(str(db_path), str(images), str(work),
                                                options=incremental_options(cfg, cameras),
                                                initial_image_pair_callback=initial_pair,
                                                next_image_callback=next_image)
    elif mapper == "global":
        recs = pycolmap.global_mapping(str(db_path), str(images), str(work), options=global_options(cfg, cameras))
    else:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {MAPPERS}")
    if not recs:
        return None, 0
    return max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D())), len(recs)


def preference(attempt: dict) -> tuple:
    """How two models of one database are ordered (higher is kept): score (:mod:`.checks`), then registered
    images, then points. ``attempt``: a record with registered, points and, where both models were
    scored, score."""
    return attempt.get("score", 0), attempt["registered"], attempt["points"]


def map_database(db_path: Path, images: Path, cfg: MappingConfig, cameras: CameraOptions, num_images: int,
                 start: Mapping[str, float] | None = None):
    """The chosen mapper, and the other one once if its model registers too few images (``fallback``); then,
    when the model leaves images out and its focal lengths came out far from ``start`` (the guesses the
    database started from, :func:`loftr_sfm.database.start_focal_lengths`), that mapper once more with the
    focal lengths found (``cameras.remap_far_focal``, see the module docstring).

    Returns (model or None, attempts): one record per run (mapper, registered, points, models,
    seconds, chosen; the run with the focal lengths found also ``focal_lengths``).
    """
    order = [cfg.mapper]
    attempts: list[dict] = []
    models: list = []
    with tempfile.TemporaryDirectory(prefix=".mapping.", dir=db_path.parent) as tmp:
        while order:
            mapper = order.pop(0)
            t0 = time.perf_counter()
            rec, n_models = run_mapper(db_path, images, Path(tmp) / mapper, mapper, cfg, cameras, num_images)
            registered = rec.num_reg_images() if rec is not None else 0
            attempts.append({"mapper": mapper, "registered": registered,
                             "points": rec.num_points3D() if rec is not None else 0, "models": n_models,
                             "seconds": round(time.perf_counter() - t0, 2), "chosen": False})
            logger.info("mapping (%s): %d/%d images registered in the largest of %d model(s), %.1f s", mapper,
                        registered, num_images, n_models, attempts[-1]["seconds"])
            models.append(rec)
            if len(attempts) == 1 and cfg.fallback and registered < cfg.min_registered * num_images:
                other = next(m for m in MAPPERS if m != mapper)
                logger.warning("mapping: the %s mapper registered %d of %d images; trying the %s mapper once",
                               mapper, registered, num_images, other)
                order.append(other)
    best = _choose(models, attempts, db_path)
    if best is None:
        return None, attempts
    rec = models[best]
    change = focal_change(rec, start) if start else None
    if not (cfg.cameras.remap_far_focal and change is not None and change > FAR_FOCAL_CHANGE
            and rec.num_reg_images() < num_images):
        return rec, attempts
    new, attempt = remap_with_estimated_cameras(db_path, images, replace(cfg, mapper=attempts[best]["mapper"]),
                                                cameras, num_images, rec, start)
    models.append(new)
    attempts.append(attempt)
    attempts[best]["chosen"] = False
    if _choose(models, attempts, db_path, [best, len(models) - 1]) == best:
        return rec, attempts
    from .track_refinement import bundle_adjust

    bundle_adjust(new, cameras.refine_focal_length, False, cameras.refine_extra_params, cfg.num_threads, 1.0)
    return new, attempts


def _choose(models: list, attempts: list[dict], db_path: Path, among: list[int] | None = None) -> int | None:
    """Index of the model kept among ``among`` (default: all) by :func:`preference`, marked chosen in
    ``attempts``; None when there is no model. Two models or more are scored first (:mod:`.checks`)."""
    candidates = [i for i in (range(len(models)) if among is None else among) if models[i] is not None]
    if not candidates:
        return None
    if len(candidates) > 1:  # models of one database: the one that explains more of its verified geometry
        for i in candidates:
            if "score" not in attempts[i]:
                attempts[i].update(explained_pairs(models[i], db_path).to_dict())
        logger.info("mapping: %s", "; ".join(
            f"{attempts[i]['mapper']}{' (focal lengths found)' if 'focal_lengths' in attempts[i] else ''} "
            f"{attempts[i]['registered']} images, {attempts[i]['explained_pairs']} of {attempts[i]['verified_pairs']} "
            f"verified pairs explained (score {attempts[i]['score']})" for i in candidates))
    best = max(candidates, key=lambda i: preference(attempts[i]))
    attempts[best]["chosen"] = True
    return best


def remap_with_estimated_cameras(db_path: Path, images: Path, cfg: MappingConfig, cameras: CameraOptions,
                                 num_images: int, rec, start: Mapping[str, float]):
    """The chosen mapper once more, the guessed cameras replaced by the focal lengths ``rec`` found.

    ``start``: {image name: focal length its database camera starts from} of the images whose camera
    was guessed (:func:`loftr_sfm.database.start_focal_lengths`). On a copy of the database, those
    images get one camera per kind (model, size) at the median focal length of ``rec``'s registered
    images of that kind (:func:`.cameras.guessed_focal_lengths`), principal point centred, no
    distortion; bundle adjustment holds the focal length and the principal point while mapping and
    refines the distortion as ``cameras`` says. ``db_path`` is not modified.
    Returns (model or None, attempt record with ``focal_lengths``: {"MODEL WxH": px}).
    """
    focal_of = guessed_focal_lengths(rec, start)
    held = replace(cameras, refine_focal_length=False, refine_principal_point=False)
    with tempfile.TemporaryDirectory(prefix=".mapping.", dir=db_path.parent) as tmp:
        copy = Path(tmp) / "database.db"
        shutil.copy2(db_path, copy)
        t0 = time.perf_counter()
        new, n_models = (run_mapper(copy, images, Path(tmp) / "remap", cfg.mapper, cfg, held, num_images)
                         if write_start_cameras(copy, focal_of, start) else (None, 0))
    registered = new.num_reg_images() if new is not None else 0
    attempt = {"mapper": cfg.mapper, "registered": registered, "points": new.num_points3D() if new is not None else 0,
               "models": n_models, "seconds": round(time.perf_counter() - t0, 2), "chosen": False,
               "focal_lengths": {f"{m} {w}x{h}": round(f, 1) for (m, w, h), f in focal_of.items()}}
    logger.info("mapping (%s, one camera per image size at the focal length found: %s): %d/%d images registered in "
                "the largest of %d model(s), %.1f s", cfg.mapper,
                ", ".join(f"{k} {v:.0f} px" for k, v in attempt["focal_lengths"].items()), registered, num_images,
                n_models, attempt["seconds"])
    return new, attempt
