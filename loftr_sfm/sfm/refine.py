"""Optional refinement of the chosen model: photometric track refinement, relative filtering.

Both are opt-in (:class:`~loftr_sfm.sfm.options.RefinementOptions`). Each works on a copy of the
model; if the result leaves a registered image with fewer than :data:`MIN_IMAGE_POINTS` 3D points
(and fewer than before), the model from before the step is kept: a refinement never costs an
image its pose.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import matches_backend
from .options import CameraOptions, RefinementOptions

logger = logging.getLogger(__name__)

MIN_IMAGE_POINTS = 30  # a refinement that leaves an image with fewer 3D points (and fewer than before) is undone


def track_refinement_wanted(refinement: RefinementOptions, output: Path) -> bool:
    """``refine_tracks``: on / off, or auto = on unless the matches come from a detector (matches.h5 says sift)."""
    if refinement.refine_tracks != "auto":
        return refinement.refine_tracks == "on"
    return matches_backend(output) != "sift"


def keep_unless_images_starve(before, after, stats: dict, step: str):
    """``after``, or ``before`` if ``after`` leaves an image with fewer 3D points than :data:`MIN_IMAGE_POINTS`
    (and than before); sets ``stats["reverted"]``. Returns (model, stats)."""
    lost = [before.image(i).name for i in before.reg_image_ids()
            if after.image(i).num_points3D < min(MIN_IMAGE_POINTS, before.image(i).num_points3D)]
    stats["reverted"] = bool(lost)
    if lost:
        logger.warning("%s left %d image(s) with fewer than %d points (%s): keeping the model from before it", step,
                       len(lost), MIN_IMAGE_POINTS, ", ".join(lost[:5]))
        return before, stats
    return after, stats


def refine_model_tracks(rec, images: Path, refinement: RefinementOptions, cameras: CameraOptions,
                        num_threads: int = -1):
    """:func:`~loftr_sfm.sfm.track_refinement.refine_tracks` on a copy of ``rec``; (model, statistics)."""
    import pycolmap

    from ..matchers import parse_options
    from .track_refinement import refine_tracks

    refined = pycolmap.Reconstruction(rec)
    stats = refine_tracks(refined, images, parse_options(refinement.track_refinement), cameras.refine_focal_length,
                          bool(cameras.refine_principal_point), cameras.refine_extra_params, num_threads)
    return keep_unless_images_starve(rec, refined, stats, "track refinement")


def relative_filter_factor(refinement: RefinementOptions, cameras: CameraOptions) -> float:
    """``relative_filter_factor``, or by default 3 when bundle adjustment refines no intrinsics, else 8
    (the residuals then also carry the camera model's misfit)."""
    if refinement.relative_filter_factor is not None:
        return float(refinement.relative_filter_factor)
    fixed = not (cameras.refine_focal_length or cameras.refine_principal_point or cameras.refine_extra_params)
    return 3.0 if fixed else 8.0


def filter_model(rec, refinement: RefinementOptions, cameras: CameraOptions, num_threads: int = -1):
    """:func:`~loftr_sfm.sfm.track_refinement.filter_observations` on a copy of ``rec``; (model, statistics)."""
    import pycolmap

    from .track_refinement import TrackRefinementConfig, filter_observations

    filtered = pycolmap.Reconstruction(rec)
    stats = filter_observations(filtered, relative_filter_factor(refinement, cameras),
                                refinement.relative_filter_rounds, TrackRefinementConfig.min_tri_angle,
                                cameras.refine_focal_length, bool(cameras.refine_principal_point),
                                cameras.refine_extra_params, num_threads)
    return keep_unless_images_starve(rec, filtered, stats, "relative filtering")
