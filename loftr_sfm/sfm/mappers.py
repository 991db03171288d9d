"""The mapper run: pycolmap's incremental or global mapper on the database, as they come.

One run of the chosen mapper (pycolmap's defaults but for the seed, the thread count, the
minimum of verified inliers per pair, the intrinsics bundle adjustment refines and, when asked,
the global mapper's tracks per image: ``global_tracks_per_view``); the model with most
registered images is kept (pycolmap returns every model it started, the first one is not the
largest). The only second run, when asked (``fallback``, off by default): when that model
registers fewer than ``min_registered`` of the database's images, the other mapper runs once,
and of the two models the one that explains more of the database's verified geometry is kept:
verified pairs between its images that it explains, minus those it contradicts (:mod:`.checks`;
a model with more images but pairs glued in the wrong place loses). Nothing is removed from a
model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from .checks import explained_pairs
from .options import MAPPERS, CameraOptions, MappingConfig

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


def map_database(db_path: Path, images: Path, cfg: MappingConfig, cameras: CameraOptions, num_images: int):
    """The chosen mapper, and the other one once if its model registers too few images.

    Returns (model or None, attempts): one record per run (mapper, registered, points, models,
    seconds, chosen).
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
    candidates = [i for i, rec in enumerate(models) if rec is not None]
    if not candidates:
        return None, attempts
    if len(candidates) > 1:  # two models of one database: the one that explains more of its verified geometry
        for i in candidates:
            attempts[i].update(explained_pairs(models[i], db_path).to_dict())
        logger.info("mapping: %s", "; ".join(
            f"{attempts[i]['mapper']} {attempts[i]['registered']} images, {attempts[i]['explained_pairs']} of "
            f"{attempts[i]['verified_pairs']} verified pairs explained (score {attempts[i]['score']})"
            for i in candidates))
    best = max(candidates, key=lambda i: preference(attempts[i]))
    attempts[best]["chosen"] = True
    return models[best], attempts
