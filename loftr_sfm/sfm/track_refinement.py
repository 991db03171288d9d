"""Multi-view refinement of a model's tracks: every observation of a 3D point moved onto the same
physical point by photometric alignment to one reference view, then bundle adjustment.

Semi-dense matchers place each pair's matches independently: one side on the network's lattice,
the other regressed (or photometrically refined) to it. The keypoint merge joins observations of
one image that lie within a cell, so a track collects points that are each right for *their* pair
but up to a cell apart from each other; bundle adjustment then averages inconsistent
observations (a higher mean reprojection error than a keypoint detector's model). This is
the idea of keypoint adjustment in Pixel-Perfect SfM (Lindenberger et al., 2021), done with image
patches instead of learned feature maps:

1. each track picks a reference observation: the one whose viewing ray is closest to the track's
   mean viewing ray (least foreshortened relative to the others);
2. every other observation is moved so that its patch matches the reference patch
   (inverse-compositional affine Lucas-Kanade of :mod:`loftr_sfm.matchers.refine`, all
   observations of an image at once); observations that would move more than ``max_shift`` or
   correlate less than ``min_ncc`` keep their position;
3. bundle adjustment (Huber loss) of poses, points (and the intrinsics the mapping stage
   refines); observations with reprojection errors over ``max_reproj_error`` (1 px, or three
   times the median error if that is larger) and points with small triangulation angles are
   filtered, and bundle adjustment runs once more. The mappers keep observations up to 4 px;
   once tracks are consistent, the 1-4 px ones are outliers (wrong merges and matches) rather
   than noise.

Semi-dense models gain pose accuracy from it (``pipelines/evaluate_track_refinement.py`` measures
it; numbers in ``docs/``). A detector's keypoints (SIFT) are already consistent across views and
gain nothing, so the mapping stage's ``refine_tracks=auto`` leaves SIFT models alone.

Memory is bounded by processing tracks in chunks (``chunk_tracks`` templates at a time; one
image's gradient stack at a time). Coordinates: COLMAP convention in the model (pixel centre at
+0.5), OpenCV convention (integer = centre) inside, in images scaled to ``max_size``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import ImageReadError, read_image

logger = logging.getLogger(__name__)


@dataclass
class TrackRefinementConfig:
    """Options of :func:`refine_tracks`."""

    max_size: int = 1600  # px, long side at which patches are compared (0: original size)
    radius: int = 7  # patch half-size in px at that size
    iterations: int = 8  # Gauss-Newton steps
    min_ncc: float = 0.8  # an observation correlating less with its reference keeps its position
    max_shift: float = 2.0  # px at that size; an observation that would move farther keeps its position
    affine: bool = True  # fit each patch's affine distortion against the reference (False: translation)
    chunk_tracks: int = 50_000  # tracks whose templates are held in memory at once
    max_reproj_error: float = 1.0  # px; after the first adjustment, observations beyond are filtered ...
    relative_reproj_error: float = 3.0  # ... unless that is under this many times their median error
    min_tri_angle: float = 1.5  # deg; points triangulated under a smaller angle are filtered too
    loss_scale: float = 1.0  # px, Huber loss scale of bundle adjustment
    device: str = "auto"  # torch device of the alignment (auto: GPU when present, else CPU)


@dataclass
class TrackTable:
    """Observations of a model's 3D points, one row each (N observations, T tracks).

    ``track`` (N,) track index 0..T-1; ``point3D_id`` (T,); ``image_id``, ``point2D_idx`` (N,);
    ``xy`` (N, 2) COLMAP pixel coordinates. Rows are grouped by image (ascending ids).
    """

    track: np.ndarray
    point3D_id: np.ndarray
    image_id: np.ndarray
    point2D_idx: np.ndarray
    xy: np.ndarray

    def by_image(self) -> dict[int, slice]:
        """{image id: the slice of its rows}."""
        ids, first, counts = np.unique(self.image_id, return_index=True, return_counts=True)
        return {int(i): slice(int(f), int(f + c)) for i, f, c in zip(ids, first, counts)}


def track_table(rec) -> TrackTable:
    """All observations of the registered images of ``rec`` as arrays.

    (pycolmap exposes points2D one object at a time: the loop over them is the binding's cost.)
    """
    image_ids, idxs, xys, pids = [], [], [], []
    for image_id in sorted(rec.reg_image_ids()):
        im = rec.image(image_id)
        idx = np.asarray(im.get_observation_point2D_idxs(), dtype=np.int64)
        if len(idx) == 0:
            continue
        obs = im.get_observation_points2D()
        image_ids.append(np.full(len(idx), image_id, dtype=np.int64))
        idxs.append(idx)
        xys.append(np.array([p.xy for p in obs], dtype=np.float64).reshape(-1, 2))
        pids.append(np.array([p.point3D_id for p in obs], dtype=np.int64))
    if not idxs:
        z = np.zeros(0, dtype=np.int64)
        return TrackTable(z, z, z, z, np.zeros((0, 2)))
    pid = np.concatenate(pids)
    point3D_id, track = np.unique(pid, return_inverse=True)
    return TrackTable(track, point3D_id, np.concatenate(image_ids), np.concatenate(idxs), np.concatenate(xys))


def choose_references(rec, table: TrackTable) -> np.ndarray:
    """(N,) bool: per track, the observation whose viewing ray is closest to the track's mean ray."""
    n_tracks = len(table.point3D_id)
    xyz = np.array([rec.point3D(int(p)).xyz for p in table.point3D_id], dtype=np.float64).reshape(-1, 3)
    centres = {i: np.asarray(rec.image(int(i)).projection_center()) for i in np.unique(table.image_id)}
    C = np.stack([centres[i] for i in table.image_id]) if len(table.image_id) else np.zeros((0, 3))
    rays = xyz[table.track] - C
    rays /= np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12)
    mean = np.zeros((n_tracks, 3))
    np.add.at(mean, table.track, rays)
    score = (rays * mean[table.track]).sum(1)
    order = np.lexsort((-score, table.track))  # by track, best score first
    first = np.ones(len(order), dtype=bool)
    first[1:] = table.track[order][1:] != table.track[order][:-1]
    ref = np.zeros(len(order), dtype=bool)
    ref[order[first]] = True
    return ref


def _load_stack(images: Path, name: str, max_size: int, device: str):
    """Gray image scaled to ``max_size`` as a (3, H, W) gradient stack, and the scale factor."""
    import cv2
    import torch

    from ..matchers.refine import image_gradients

    gray = read_image(images / name, grayscale=True)
    h, w = gray.shape
    scale = 1.0
    if max_size and max(h, w) > max_size:
        scale = max_size / max(h, w)
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    # the real factors of the resized image per axis (rounding)
    sx, sy = gray.shape[1] / w, gray.shape[0] / h
    img = torch.from_numpy(np.ascontiguousarray(gray).copy()).to(device).float() / 255.0
    return image_gradients(img), np.array([sx, sy])


def align_tracks(rec, images: Path, table: TrackTable, ref: np.ndarray, config: TrackRefinementConfig):
    """Photometric alignment of every non-reference observation to its track's reference.

    Returns:
        new ``xy`` (N, 2) COLMAP coordinates and ``moved`` (N,) bool (refined non-reference rows).
    """
    import torch
    from ..utils import progress as tqdm  # follows set_progress (-q)

    from ..matchers.refine import RefineOptions, Templates, align, make_templates
    from ..utils import resolve_device

    device = resolve_device(config.device)
    opts = RefineOptions(config.radius, config.iterations, config.min_ncc, config.max_shift, config.affine)
    slices = table.by_image()
    names = {i: rec.image(i).name for i in slices}
    new_xy = table.xy.copy()
    moved = np.zeros(len(table.xy), dtype=bool)
    n_tracks = len(table.point3D_id)
    chunks = [(s, min(s + config.chunk_tracks, n_tracks)) for s in range(0, n_tracks, config.chunk_tracks)]
    progress = tqdm(total=2 * len(names) * len(chunks), desc="track refinement", unit="image",
                    disable=None, leave=False)
    for start, stop in chunks:
        in_chunk = (table.track >= start) & (table.track < stop)
        t = torch.zeros((stop - start, (2 * config.radius + 1) ** 2), device=device)
        step = torch.zeros((stop - start, 6 if config.affine else 2, t.shape[1]), device=device)
        for image_id, name in names.items():  # templates from the reference observations
            sl = slices[image_id]
            rows = sl.start + np.flatnonzero(in_chunk[sl] & ref[sl])
            progress.update()
            if len(rows) == 0:
                continue
            stack, s = _load_stack(images, name, config.max_size, device)
            pts = torch.from_numpy((table.xy[rows] * s - 0.5).astype(np.float32)).to(device)
            tm = make_templates(stack, pts, opts)
            k = torch.from_numpy(table.track[rows] - start).to(device)
            t[k], step[k] = tm.t, tm.step
        for image_id, name in names.items():  # every other observation aligned to its template
            sl = slices[image_id]
            rows = sl.start + np.flatnonzero(in_chunk[sl] & ~ref[sl])
            progress.update()
            if len(rows) == 0:
                continue
            stack, s = _load_stack(images, name, config.max_size, device)
            pts = torch.from_numpy((table.xy[rows] * s - 0.5).astype(np.float32)).to(device)
            k = torch.from_numpy(table.track[rows] - start).to(device)
            with torch.inference_mode():
                p, ok, _ = align(stack, pts, Templates(t[k], step[k]), opts)
            ok = ok.cpu().numpy()
            new_xy[rows[ok]] = (p.cpu().numpy()[ok].astype(np.float64) + 0.5) / s
            moved[rows[ok]] = True
    progress.close()
    return new_xy, moved


def observation_errors(rec, table: TrackTable) -> np.ndarray:
    """(N,) reprojection error (px) of every observation of ``table`` in the current ``rec``."""
    xyz = np.array([rec.point3D(int(p)).xyz for p in table.point3D_id], dtype=np.float64).reshape(-1, 3)
    err = np.full(len(table.xy), np.inf)
    for image_id, sl in table.by_image().items():
        rows = np.arange(sl.start, sl.stop)
        im = rec.image(image_id)
        T = im.cam_from_world().matrix()
        X = xyz[table.track[rows]] @ T[:, :3].T + T[:, 3]
        front = X[:, 2] > 1e-9
        proj = im.camera.img_from_cam(X[front], check_cheirality=False)
        err[rows[front]] = np.linalg.norm(proj - table.xy[rows[front]], axis=1)
    return err


def bundle_adjust(rec, refine_focal_length: bool, refine_principal_point: bool, refine_extra_params: bool,
                  num_threads: int, loss_scale: float, fixed_images: Collection[int] = (),
                  held_intrinsics: Collection[int] = ()) -> None:
    """Bundle adjustment of every registered image and point (gauge: two cameras fixed, as COLMAP's global BA).

    ``fixed_images``: ids of images whose poses and cameras stay as they are (they fix the gauge then).
    ``held_intrinsics``: ids of images whose cameras stay as they are (their poses move).
    """
    import pycolmap

    o = pycolmap.BundleAdjustmentOptions()
    o.refine_focal_length = refine_focal_length
    o.refine_principal_point = refine_principal_point
    o.refine_extra_params = refine_extra_params
    o.print_summary = False
    o.ceres.loss_function_type = pycolmap.LossFunctionType.HUBER  # as the global mapper's: outliers stay bounded
    o.ceres.loss_function_scale = loss_scale
    o.ceres.solver_options.num_threads = num_threads
    # stop when the cost changes by < 1e-6 (relative), Ceres' default; COLMAP's 0 runs on to the
    # iteration limit, several times slower on large models for no gain in reprojection error
    o.ceres.solver_options.function_tolerance = 1e-6
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    fixed = [i for i in fixed_images if rec.exists_image(i) and rec.image(i).has_pose]
    for image_id in fixed:
        config.set_constant_rig_from_world_pose(rec.image(image_id).frame_id)
        config.set_constant_cam_intrinsics(rec.image(image_id).camera_id)
    for image_id in held_intrinsics:
        if rec.exists_image(image_id) and rec.image(image_id).has_pose:
            config.set_constant_cam_intrinsics(rec.image(image_id).camera_id)
    if len(fixed) < 2:
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    summary = pycolmap.create_default_bundle_adjuster(o, config, rec).solve()  # (pycolmap.bundle_adjustment logs)
    if not summary.is_solution_usable():
        logger.warning("bundle adjustment did not converge to a usable solution (%s)",
                       summary.termination_type)


def refine_tracks(
    rec,
    images: str | Path,
    config: TrackRefinementConfig | None = None,
    refine_focal_length: bool = True,
    refine_principal_point: bool = False,
    refine_extra_params: bool = True,
    num_threads: int = -1,
    fixed_images: Collection[int] = (),
) -> dict:
    """Refine the observations of ``rec`` (in place) and bundle-adjust it; see the module doc.

    Args:
        rec: a pycolmap.Reconstruction whose image names are relative to ``images``.
        refine_*: which intrinsics bundle adjustment may change (as in the mapping stage).
        fixed_images: ids of images whose poses and cameras bundle adjustment keeps.
    Returns:
        statistics: observations, moved (refined non-reference observations), reference
        observations, filtered observations, mean reprojection error before and after (px).
    """
    import pycolmap

    from ..utils import merge_config

    cfg = merge_config(TrackRefinementConfig, config)
    images = Path(images)
    table = track_table(rec)
    rec.update_point_3d_errors()
    stats = {"observations": int(len(table.xy)), "tracks": int(len(table.point3D_id)), "moved": 0,
             "references": 0, "filtered": 0,
             "reprojection_error_before": float(rec.compute_mean_reprojection_error()) if len(table.xy) else 0.0}
    if len(table.xy) == 0:
        stats["reprojection_error_after"] = 0.0
        return stats
    ref = choose_references(rec, table)
    try:
        new_xy, moved = align_tracks(rec, images, table, ref, cfg)
    except ImageReadError as e:
        logger.warning("track refinement skipped: %s", e)
        stats["reprojection_error_after"] = stats["reprojection_error_before"]
        stats["skipped"] = str(e)
        return stats
    for image_id, sl in table.by_image().items():  # one binding call per moved point (no bulk setter)
        sel = sl.start + np.flatnonzero(moved[sl])
        points2D = rec.image(image_id).points2D
        for idx, xy in zip(table.point2D_idx[sel].tolist(), new_xy[sel]):
            points2D[idx].xy = xy
    bundle_adjust(rec, refine_focal_length, refine_principal_point, refine_extra_params, num_threads, cfg.loss_scale,
                  fixed_images)
    errors = observation_errors(rec, dataclasses.replace(table, xy=new_xy))  # BA moves points and poses only
    threshold = max(cfg.max_reproj_error, cfg.relative_reproj_error * float(np.median(errors)))
    filtered = pycolmap.ObservationManager(rec).filter_all_points3D(threshold, cfg.min_tri_angle)
    if filtered:
        bundle_adjust(rec, refine_focal_length, refine_principal_point, refine_extra_params, num_threads,
                      cfg.loss_scale, fixed_images)
    rec.update_point_3d_errors()
    stats.update(moved=int(moved.sum()), references=int(ref.sum()), filtered=int(filtered),
                 filter_threshold=threshold,
                 reprojection_error_after=float(rec.compute_mean_reprojection_error()))
    logger.info("track refinement: %d of %d observations moved onto their track's reference (%d tracks), "
                "%d filtered, reprojection error %.3f -> %.3f px", stats["moved"], stats["observations"],
                stats["tracks"], stats["filtered"], stats["reprojection_error_before"],
                stats["reprojection_error_after"])
    return stats


def filter_observations(
    rec,
    factor: float = 3.0,
    rounds: int = 3,
    min_tri_angle: float = 1.5,
    refine_focal_length: bool = False,
    refine_principal_point: bool = False,
    refine_extra_params: bool = False,
    num_threads: int = -1,
    fixed_images: Collection[int] = (),
) -> dict:
    """Relative outlier filtering of ``rec`` (in place): ``rounds`` times, drop the observations whose
    reprojection error exceeds ``factor`` x the median error (and points under ``min_tri_angle``
    deg), then bundle-adjust (Huber loss at that threshold); the poses and cameras of the images
    ``fixed_images`` (ids) stay as they are.

    For Gaussian noise the median error is 1.18 sigma, so ``factor`` 3 cuts at 3.5 sigma (0.2 % of
    the inliers); the mappers' fixed 4 px keeps wrong observations that bundle adjustment then
    absorbs by bending poses and points. Unit-free: the same on any image size and matcher.

    Returns: per-round thresholds (px) and observations removed, observations before and after, mean
    reprojection error before and after.
    """
    import pycolmap

    rec.update_point_3d_errors()
    stats: dict = {"observations_before": int(rec.compute_num_observations()),
                   "reprojection_error_before": float(rec.compute_mean_reprojection_error()),
                   "thresholds": [], "removed": []}
    for _ in range(max(int(rounds), 0)):
        table = track_table(rec)
        if len(table.xy) == 0:
            break
        errors = observation_errors(rec, table)
        finite = errors[np.isfinite(errors)]
        if len(finite) == 0:  # every point behind its cameras: nothing to measure against
            break
        threshold = factor * float(np.median(finite))
        removed = pycolmap.ObservationManager(rec).filter_all_points3D(threshold, min_tri_angle)
        stats["thresholds"].append(round(threshold, 4))
        stats["removed"].append(int(removed))
        bundle_adjust(rec, refine_focal_length, refine_principal_point, refine_extra_params, num_threads,
                      max(threshold, 1e-3), fixed_images)
        if removed == 0:
            break
    rec.update_point_3d_errors()
    stats.update(observations_after=int(rec.compute_num_observations()),
                 reprojection_error_after=float(rec.compute_mean_reprojection_error()))
    logger.info("relative filtering: %d -> %d observations (thresholds %s px), reprojection error %.3f -> %.3f px",
                stats["observations_before"], stats["observations_after"],
                ", ".join(f"{t:.3f}" for t in stats["thresholds"]), stats["reprojection_error_before"],
                stats["reprojection_error_after"])
    return stats
