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

PAIR_ID_FACTOR = 2147483647  # COLMAP's pair_id = image_id1 * 2147483647 + image_id2


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


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def explained_pairs(rec, db_path: Path, max_error: float = 4.0, min_share: float = 0.5,
                    min_inliers: int = 15) -> Explained:
    """Count the verified pairs of ``db_path`` between images registered in ``rec`` that ``rec`` explains."""
    posed = {im.name: im for im in rec.images.values() if im.has_pose}
    with read_only(Path(db_path)) as con:
        ids = {iid: name for iid, name in con.execute("SELECT image_id, name FROM images") if name in posed}
        geometries = [(pid, rows, data) for pid, rows, data in
                      con.execute("SELECT pair_id, rows, data FROM two_view_geometries WHERE rows >= ?", (min_inliers,))
                      if pid // PAIR_ID_FACTOR in ids and pid % PAIR_ID_FACTOR in ids]
        keypoints = {}
        for iid, rows, cols, data in con.execute("SELECT image_id, rows, cols, data FROM keypoints"):
            if iid in ids and rows:
                keypoints[iid] = np.frombuffer(data, np.float32).reshape(rows, cols)[:, :2].astype(np.float64)
    explained = 0
    normalised: dict[int, np.ndarray] = {}
    for pid, rows, data in geometries:
        i1, i2 = pid // PAIR_ID_FACTOR, pid % PAIR_ID_FACTOR
        for i in (i1, i2):
            if i not in normalised:
                im = posed[ids[i]]
                normalised[i] = np.asarray(rec.cameras[im.camera_id].cam_from_img(keypoints[i]), np.float64)
        m = np.frombuffer(data, np.uint32).reshape(rows, 2)
        a, b = posed[ids[i1]], posed[ids[i2]]
        rel = b.cam_from_world() * a.cam_from_world().inverse()
        t = np.asarray(rel.translation, np.float64)
        E = _skew(t / max(np.linalg.norm(t), 1e-12)) @ rel.rotation.matrix()
        x1 = np.c_[normalised[i1][m[:, 0]], np.ones(rows)]
        x2 = np.c_[normalised[i2][m[:, 1]], np.ones(rows)]
        ex1, etx2 = x1 @ E.T, x2 @ E
        num = np.einsum("ij,ij->i", x2, ex1) ** 2
        den = ex1[:, 0] ** 2 + ex1[:, 1] ** 2 + etx2[:, 0] ** 2 + etx2[:, 1] ** 2
        focal = 0.5 * (rec.cameras[a.camera_id].mean_focal_length() + rec.cameras[b.camera_id].mean_focal_length())
        err = np.sqrt(num / np.maximum(den, 1e-30)) * focal
        explained += int(np.mean(err < max_error) > min_share)
    return Explained(registered=len(posed), pairs=len(geometries), explained=explained)
