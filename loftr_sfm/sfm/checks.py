"""How much of the database's verified geometry a model explains (no ground truth needed).

A verified pair (two-view geometry with at least ``min_inliers`` inlier matches) between two registered
images is *explained* by a model when most of its inlier matches (``min_share``) lie within
``max_error`` px (Sampson distance, in the pair's mean focal length) of the epipolar geometry of the
two posed cameras: a pair glued in the wrong place, or an image turned the wrong way, leaves its
verified matches unexplained. The score of a model counts each verified pair between its images as a
vote: +1 when the model explains it, -1 when it contradicts it. The choice between two mappers' models
of one database (:func:`loftr_sfm.sfm.mappers.map_database`) keeps the higher score: more registered
images win by the pairs they bring only if the model explains more of them than it contradicts.

Keypoints are read from the database (COLMAP convention, pixel centre at +0.5) and normalised by
each registered image's camera (distortion included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..database import read_only


@dataclass
class Explained:
    """``pairs``: verified pairs between registered images; ``explained``: those the model explains."""

    registered: int
    pairs: int
    explained: int

    @property
    def share(self) -> float:
        return self.explained / self.pairs if self.pairs else 1.0

    @property
    def score(self) -> int:
        return self.explained - (self.pairs - self.explained)

    def to_dict(self) -> dict:
        return {"verified_pairs": self.pairs, "explained_pairs": self.explained, "explained_share": round(self.share, 4),
                "score": self.score}


def epipolar_errors(image_a, camera_a, x_a: np.ndarray, image_b, camera_b, x_b: np.ndarray) -> np.ndarray:
    """Sampson distances (px, in the two cameras' mean focal length) of matches to two posed images' geometry.

    Args:
        image_a, image_b: posed pycolmap images (``cam_from_world``); camera_a, camera_b: their cameras.
        x_a, x_b: (M, 2) matched keypoints in pixels (COLMAP convention, pixel centre at +0.5),
            normalised by the cameras (distortion included).
    Returns:
        (M,) distances.
    """
    rel = image_b.cam_from_world() * image_a.cam_from_world().inverse()
    t = np.asarray(rel.translation, np.float64)
    t = t / max(np.linalg.norm(t), 1e-12)
    E = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]]) @ rel.rotation.matrix()
    h_a = np.c_[np.asarray(camera_a.cam_from_img(x_a), np.float64), np.ones(len(x_a))]
    h_b = np.c_[np.asarray(camera_b.cam_from_img(x_b), np.float64), np.ones(len(x_b))]
    e_a, et_b = h_a @ E.T, h_b @ E
    num = np.einsum("ij,ij->i", h_b, e_a) ** 2
    den = e_a[:, 0] ** 2 + e_a[:, 1] ** 2 + et_b[:, 0] ** 2 + et_b[:, 1] ** 2
    focal = 0.5 * (camera_a.mean_focal_length() + camera_b.mean_focal_length())
    return np.sqrt(num / np.maximum(den, 1e-300)) * focal


def verified_geometries(db_path: Path, min_inliers: int = 15, names: set[str] | None = None):
    """The verified pairs of a database (read-only) between images named in ``names`` (None: every image).

    Returns ({image id: name}, {image id: (N, 2) float64 keypoints, COLMAP pixels}, [(id a, id b, (M, 2) inlier
    keypoint indices of a and b)]).
    """
    import pycolmap

    with read_only(Path(db_path)) as con:
        ids = {iid: name for iid, name in con.execute("SELECT image_id, name FROM images")
               if names is None or name in names}
        geometries = []
        for pid, rows, data in con.execute("SELECT pair_id, rows, data FROM two_view_geometries WHERE rows >= ?",
                                           (min_inliers,)):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            if a in ids and b in ids:
                geometries.append((a, b, np.frombuffer(data, np.uint32).reshape(rows, 2)))
        keypoints = {}
        for iid, rows, cols, data in con.execute("SELECT image_id, rows, cols, data FROM keypoints"):
            if iid in ids and rows:
                keypoints[iid] = np.frombuffer(data, np.float32).reshape(rows, cols)[:, :2].astype(np.float64)
    return ids, keypoints, geometries


def explains(rec, image_a, image_b, x_a: np.ndarray, x_b: np.ndarray, max_error: float = 4.0,
             min_share: float = 0.5) -> bool:
    """Whether ``rec`` explains a verified pair: more than ``min_share`` of its inlier matches ``x_a``, ``x_b``
    ((M, 2) pixels) lie within ``max_error`` px of the epipolar geometry of the posed ``image_a``, ``image_b``."""
    err = epipolar_errors(image_a, rec.cameras[image_a.camera_id], x_a, image_b, rec.cameras[image_b.camera_id], x_b)
    return bool(np.mean(err < max_error) > min_share)


def explained_pairs(rec, db_path: Path, max_error: float = 4.0, min_share: float = 0.5,
                    min_inliers: int = 15) -> Explained:
    """Count the verified pairs of ``db_path`` between images registered in ``rec`` that ``rec`` explains."""
    posed = {im.name: im for im in rec.images.values() if im.has_pose}
    ids, keypoints, geometries = verified_geometries(db_path, min_inliers, set(posed))
    explained = sum(explains(rec, posed[ids[a]], posed[ids[b]], keypoints[a][m[:, 0]], keypoints[b][m[:, 1]],
                             max_error, min_share) for a, b, m in geometries)
    return Explained(registered=len(posed), pairs=len(geometries), explained=explained)
