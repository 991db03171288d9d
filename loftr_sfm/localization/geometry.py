"""The geometry of localization, pure functions on arrays: map-side match points -> 3D point ids,
2D-3D correspondences per pair and merged, the absolute pose (pycolmap), two-view triangulation
and covisibility clusters.

Pixel coordinates are OpenCV's (integer = pixel centre, original image) unless said otherwise;
the +0.5 to COLMAP's convention happens inside :func:`estimate_pose`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from .map import MapImage


def assign_map_points(
    map_image: MapImage, map_points: np.ndarray, max_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest map keypoint with a 3D point for each map-side match point.

    Args:
        map_points: (N, 2) map-side match coordinates (OpenCV convention).
        max_error: px; farther points get no 3D point.
    Returns:
        valid (N,) bool, point3D_ids (N,) int64 (-1 where invalid).
    """
    map_points = np.asarray(map_points, np.float64).reshape(-1, 2)
    ids = np.full(len(map_points), -1, np.int64)
    if len(map_points) == 0 or len(map_image.keypoints) == 0:
        return np.zeros(len(map_points), bool), ids
    dist, idx = map_image.tree.query(map_points, k=1, distance_upper_bound=max_error)
    valid = np.isfinite(dist)
    ids[valid] = map_image.point3D_ids[idx[valid]]
    return valid, ids


def correspondences_2d3d(
    query_points: np.ndarray,
    map_points: np.ndarray,
    scores: np.ndarray,
    map_image: MapImage,
    max_error: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D-3D correspondences of one query <-> map image pair.

    Query points are kept as matched (not quantized). When several matches reach the same 3D
    point, the best-scoring one is kept (a 3D point has one projection in the query).

    Args:
        query_points, map_points: (N, 2) matched coordinates, OpenCV convention.
        scores: (N,) match scores.
    Returns:
        points2D (K, 2) float64 (query, OpenCV convention), point3D_ids (K,) int64, scores (K,).
    """
    query_points = np.asarray(query_points, np.float64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64).reshape(-1)
    valid, ids = assign_map_points(map_image, map_points, max_error)
    q, ids, sc = query_points[valid], ids[valid], scores[valid]
    if len(ids) == 0:
        return q, ids, sc
    order = np.lexsort((-sc, ids))  # by id, best score first
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    keep = np.sort(order[first])
    return q[keep], ids[keep], sc[keep]


def merge_correspondences(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-pair correspondences, dropping exact duplicates (same 2D point, same 3D id)."""
    if not parts:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0)
    q = np.concatenate([p[0] for p in parts]).reshape(-1, 2)
    ids = np.concatenate([p[1] for p in parts]).astype(np.int64)
    sc = np.concatenate([p[2] for p in parts])
    if len(ids) == 0:
        return q, ids, sc
    rows = np.concatenate([q, ids[:, None].astype(np.float64)], axis=1)
    _, keep = np.unique(rows, axis=0, return_index=True)
    keep = np.sort(keep)
    return q[keep], ids[keep], sc[keep]


def estimate_pose(
    points2D: np.ndarray,
    points3D: np.ndarray,
    camera,
    ransac_max_error: float = 12.0,
    estimate_focal_length: bool = False,
    refine_intrinsics: bool = False,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Absolute pose with pycolmap (LO-RANSAC + refinement) on a deep copy of ``camera``.

    Args:
        points2D: (N, 2) query pixels, OpenCV convention (+0.5 is added here for COLMAP).
        points3D: (N, 3) world points.
    Returns:
        None on failure, else ``{'cam_from_world': pycolmap.Rigid3d, 'num_inliers': int,
        'inlier_mask': (N,) bool, 'camera': the (possibly refined) camera copy}``.
    """
    import pycolmap

    points2D = np.asarray(points2D, np.float64).reshape(-1, 2)
    points3D = np.asarray(points3D, np.float64).reshape(-1, 3)
    if len(points2D) < 4:
        return None
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = float(ransac_max_error)
    est.ransac.random_seed = int(seed)
    est.estimate_focal_length = bool(estimate_focal_length)
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.refine_focal_length = bool(refine_intrinsics)
    ref.refine_extra_params = bool(refine_intrinsics)
    cam = copy.deepcopy(camera)  # pycolmap refines intrinsics in place
    ret = pycolmap.estimate_and_refine_absolute_pose(points2D + 0.5, points3D, cam, est, ref)
    if ret is None:
        return None
    ret = dict(ret)
    ret["inlier_mask"] = np.asarray(ret["inlier_mask"], bool)
    ret["camera"] = cam
    return ret


def triangulate_two_view(
    P0: np.ndarray, P1: np.ndarray, x0: np.ndarray, x1: np.ndarray, min_angle: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Linear (DLT) triangulation of N correspondences between two posed cameras.

    Args:
        P0, P1: (3, 4) ``cam_from_world`` matrices.
        x0, x1: (N, 2) normalized image coordinates (``camera.cam_from_img``, undistorted).
    Returns:
        X (N, 3) world points, ok (N,) bool: in front of both cameras and a triangulation angle
        of at least ``min_angle`` degrees.
    """
    x0 = np.asarray(x0, np.float64).reshape(-1, 2)
    x1 = np.asarray(x1, np.float64).reshape(-1, 2)
    A = np.stack(
        [
            x0[:, :1] * P0[2] - P0[0],
            x0[:, 1:] * P0[2] - P0[1],
            x1[:, :1] * P1[2] - P1[0],
            x1[:, 1:] * P1[2] - P1[1],
        ],
        axis=1,
    )  # (N, 4, 4)
    if len(A) == 0:
        return np.zeros((0, 3)), np.zeros(0, bool)
    _, _, vt = np.linalg.svd(A)
    Xh = vt[:, -1]
    w = Xh[:, 3]
    ok = np.abs(w) > 1e-12
    X = Xh[:, :3] / np.where(ok, w, 1.0)[:, None]
    d0 = X @ P0[2, :3] + P0[2, 3]
    d1 = X @ P1[2, :3] + P1[2, 3]
    c0 = -P0[:, :3].T @ P0[:, 3]
    c1 = -P1[:, :3].T @ P1[:, 3]
    r0, r1 = X - c0, X - c1
    cos = (r0 * r1).sum(1) / np.maximum(np.linalg.norm(r0, axis=1) * np.linalg.norm(r1, axis=1), 1e-300)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    ok &= (d0 > 0) & (d1 > 0) & (angle >= min_angle)
    return X, ok


def covisibility_clusters(image_point_ids: Sequence[np.ndarray]) -> list[list[int]]:
    """Group images that share 3D points (connected components), largest first.

    Args:
        image_point_ids: per image, the (M_i,) 3D point ids it observes.
    Returns:
        lists of indices into ``image_point_ids``; order inside a cluster follows the input.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(image_point_ids)
    if n == 0:
        return []
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(image_point_ids)]).astype(np.int64)
    pts = np.concatenate([np.asarray(p, np.int64) for p in image_point_ids])
    _, cols = np.unique(pts, return_inverse=True)
    inc = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, int(cols.max(initial=-1)) + 1)).tocsr()
    adj = inc @ inc.T
    _, labels = connected_components(adj, directed=False)
    clusters: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        clusters.setdefault(int(lab), []).append(i)
    return sorted(clusters.values(), key=lambda c: (-len(c), c[0]))

