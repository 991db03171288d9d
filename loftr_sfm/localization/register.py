"""Registration of localized queries into a copy of the map (``localize --register``): the
query's matches to map keypoints without a 3D point, two-view triangulation of new points, and
the new model written in COLMAP's binary format."""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .config import QueryResult
from .geometry import triangulate_two_view
from .map import MapImage

logger = logging.getLogger(__package__)  # one logger for the stage: loftr_sfm.localization


def free_matches(
    map_images: Mapping[str, MapImage],
    matches: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    max_error: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query points matched to map keypoints that have NO 3D point (for triangulation).

    Args:
        map_images: the map's images by name (with their free keypoints).
        matches: map image name -> (query points (N, 2), map points (N, 2), scores (N,)), OpenCV.
        max_error: px, map-side match -> free map keypoint.
    Returns:
        query points (K, 2) OpenCV, map image ids (K,), map points2D indices (K,); per map
        keypoint the best-scoring match.
    """
    qs, imgs, idxs = [], [], []
    for n, (kq, km, sc) in matches.items():
        mi = map_images.get(n)
        if mi is None or mi.free_keypoints is None or len(mi.free_keypoints) == 0 or len(km) == 0:
            continue
        dist, j = mi.free_tree.query(np.asarray(km, np.float64), k=1, distance_upper_bound=max_error)
        ok = np.isfinite(dist)
        j, kq_ok, sc_ok = j[ok], np.asarray(kq, np.float64)[ok], np.asarray(sc)[ok]
        order = np.lexsort((-sc_ok, j))
        first = np.ones(len(order), bool)
        first[1:] = j[order][1:] != j[order][:-1]
        keep = order[first]
        qs.append(kq_ok[keep])
        imgs.append(np.full(len(keep), mi.image_id, np.int64))
        idxs.append(mi.free_indices[j[keep]])
    if not qs:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(qs), np.concatenate(imgs), np.concatenate(idxs)


def register_queries(
    reconstruction,
    results: Sequence[QueryResult],
    output_model: str | Path,
    max_reprojection_error: float = 4.0,
    min_angle: float = 1.5,
) -> Path:
    """Add localized queries to a copy of the map and save it (COLMAP binary) in ``output_model``.

    Each query gets its own camera (the refined one), an image whose ``points2D`` are its
    PnP inlier points (COLMAP convention, +0.5) observing the matched 3D points, and its
    pose. New 3D points are triangulated from the query's matches to map keypoints that had
    no 3D point (two-view, see :func:`triangulate_two_view`; kept when both reprojection
    errors are below ``max_reprojection_error`` px, the point is in front of both cameras
    and the triangulation angle is at least ``min_angle`` degrees). ``reconstruction`` (the map's
    ``pycolmap.Reconstruction``) itself is not modified.
    """
    import pycolmap

    rec = pycolmap.Reconstruction(reconstruction)
    next_cam = max(rec.cameras, default=0) + 1
    next_img = max(rec.images, default=0) + 1
    added = 0
    new_points = 0
    for r in results:
        if not r.success or r.camera_object is None or r.inlier_points2D is None:
            continue
        if rec.find_image_with_name(r.name) is not None:
            logger.warning("register: %s already in the map, skipped", r.name)
            continue
        cam = copy.deepcopy(r.camera_object)
        cam.camera_id = next_cam
        q_new, X_new, m_new, i_new = triangulate_new(rec, r, cam, max_reprojection_error, min_angle)
        rec.add_camera_with_trivial_rig(cam)
        n_inl = len(r.inlier_points2D)
        img = pycolmap.Image(
            name=r.name,
            keypoints=np.concatenate([np.asarray(r.inlier_points2D, np.float64) + 0.5, q_new]),
            camera_id=next_cam,
            image_id=next_img,
        )
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(r.R), r.t))
        ids = r.inlier_point3D_ids
        # one observation of a 3D point per image
        _, first = np.unique(ids, return_index=True)
        for j in np.sort(first):
            rec.add_observation(int(ids[j]), pycolmap.TrackElement(next_img, int(j)))
        for k in range(len(q_new)):
            pid = rec.add_point3D(X_new[k], pycolmap.Track())
            rec.add_observation(pid, pycolmap.TrackElement(next_img, n_inl + k))
            rec.add_observation(pid, pycolmap.TrackElement(int(m_new[k]), int(i_new[k])))
        new_points += len(q_new)
        next_cam += 1
        next_img += 1
        added += 1
    output_model = Path(output_model)
    tmp = output_model.with_name(f".{output_model.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rec.write(str(tmp))
    shutil.rmtree(output_model, ignore_errors=True)
    tmp.rename(output_model)
    logger.info("registered %d localized queries (%d new 3D points) into %s", added, new_points, output_model)
    return output_model


def triangulate_new(rec, r: QueryResult, camera, max_error: float, min_angle: float):
    """Two-view points from a localized query's free matches (map keypoints without 3D point).

    Returns query keypoints (K, 2) in COLMAP convention, world points (K, 3), map image ids
    (K,) and map points2D indices (K,).
    """
    empty = (np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not r.free_matches or len(r.free_matches[0]) == 0:
        return empty
    qxy, map_ids, p2d = r.free_matches
    qcol = np.asarray(qxy, np.float64) + 0.5
    P0 = np.concatenate([r.R, r.t[:, None]], axis=1)
    n0 = np.asarray(camera.cam_from_img(qcol), np.float64)
    out = [[], [], [], []]
    for mid in np.unique(map_ids):
        sel = np.flatnonzero(map_ids == mid)
        mimg = rec.images[int(mid)]
        # only keypoints that still have no 3D point (an earlier query may have used them)
        sel = sel[[not mimg.point2D(int(k)).has_point3D() for k in p2d[sel]]]
        if len(sel) == 0:
            continue
        mcam = rec.cameras[mimg.camera_id]
        P1 = np.asarray(mimg.cam_from_world().matrix(), np.float64)
        xy1 = np.array([mimg.point2D(int(k)).xy for k in p2d[sel]], np.float64).reshape(-1, 2)
        X, ok = triangulate_two_view(P0, P1, n0[sel], np.asarray(mcam.cam_from_img(xy1), np.float64), min_angle)
        for P, cam, obs in ((P0, camera, qcol[sel]), (P1, mcam, xy1)):
            Xc = X @ P[:, :3].T + P[:, 3]
            proj = np.asarray(cam.img_from_cam(Xc / np.where(np.abs(Xc[:, 2:3]) > 1e-12, Xc[:, 2:3], 1.0)))
            ok &= np.linalg.norm(proj[:, :2] - obs, axis=1) < max_error
        good = sel[ok]
        out[0].append(qcol[good])
        out[1].append(X[ok])
        out[2].append(np.full(len(good), int(mid), np.int64))
        out[3].append(p2d[good])
    if not out[0]:
        return empty
    q, X, mids, idx = (np.concatenate(o) for o in out)
    # a query keypoint reaches at most one new point (keep the first)
    _, first = np.unique(np.round(q, 6), axis=0, return_index=True)
    first = np.sort(first)
    return q[first], X[first], mids[first], idx[first]
