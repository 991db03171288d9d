"""Localization of new photos (queries) against a map built by ``loftr-sfm reconstruct``.

``localize(map_dir, map_images, queries, output, config)`` and :class:`Localizer` (load the
map once, then localize many queries).

The map (``map_dir``) is an output folder of the reconstruction: ``model/`` (COLMAP model),
``features.h5`` (the shared keypoints whose indices are the model's ``points2D`` indices) and,
when the pairs stage used retrieval, its saved global descriptors. Nothing of the map is re-read
or re-merged per query.

Per query:

1. **camera**: user intrinsics (``camera_model`` + ``camera_params``, COLMAP convention), else
   the EXIF focal length (both through :func:`loftr_sfm.database.make_cameras`), else the camera
   of the best retrieved map image of the query's size (photos from the map's own device, whose
   calibration the map estimated from many images), else the focal length is estimated by the
   absolute-pose solver and refined (``SIMPLE_RADIAL`` start with ``f = 1.2 max(w, h)``). The log
   names each query's source (``camera_source``).
2. **retrieval**: top ``num_retrieved`` map images by global descriptor similarity, with the
   descriptors of the pairs stage (:mod:`loftr_sfm.retrieval`), optionally expanded by
   ``num_covisible`` images that share the most 3D points with the retrieved ones.
3. **matching** query <-> retrieved map images with any backend, through
   :func:`loftr_sfm.matching.match_pairs` (the backend is built once).
4. **2D-3D**: each match's map-side point is assigned to the nearest map keypoint that has a 3D
   point, within ``max_keypoint_error`` px (one ``scipy.spatial.cKDTree`` per map image, built
   once); query-side points are kept as matched (not quantized). Per pair, a 3D point keeps its
   best-scoring match; exact duplicates across pairs are removed.
5. **pose**: ``pycolmap.estimate_and_refine_absolute_pose`` on the 2D points + 0.5 (OpenCV ->
   COLMAP pixel convention) with a deep copy of the camera. Optional covisibility clustering
   (as in hloc): the retrieved images are split into groups connected through shared 3D points,
   each group is tried and the pose with most inliers wins.

Outputs: ``output`` (``poses.txt``: ``name qw qx qy qz tx ty tz``, world-to-camera
``cam_from_world``, COLMAP convention; written atomically) and ``localize_log.json`` beside it:
per query the retrieved images, number of matches, 2D-3D correspondences, inliers, times and
success. A query that fails is absent from ``poses.txt`` and marked failed in the log, with the
reason; it never receives a retrieved image's pose. Reruns resume: queries already in the log
(same map, same options) are not recomputed. With ``register=True`` the localized queries are
added to a copy of the map (see :meth:`Localizer.register_queries`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .evaluation import rigid_to_pose, rotation_to_qvec, write_poses
from .io import ImageReadError, InputError, atomic_path, image_size, list_images, matches_backend, read_raw_matches
from .utils import Timer, merge_config

logger = logging.getLogger(__name__)

SCALED_MAP_CAMERA = "map-scaled"  # camera source: a map camera of the query's aspect ratio, rescaled

MODEL_DIR = "model"
FEATURES_FILE = "features.h5"
LOG_FILE = "localize_log.json"
#: prefix of query names inside the temporary matches file (queries and map images may share names)
QUERY_PREFIX = "__query__/"
INVALID_POINT3D = np.uint64(np.iinfo(np.uint64).max)


@dataclass
class LocalizationConfig:
    """Options of the localization (the CLI exposes every field as ``--field-name``)."""

    matcher: str | None = field(
        default=None, metadata={"help": "matcher backend (eloftr | xfeat-star | sift); default: the map's"}
    )
    weights: str | None = field(default=None, metadata={"help": "weights of the backend; default: its own"})
    max_side: int | None = field(default=None, metadata={"help": "matcher input resize; default: the backend's"})
    matcher_options: str | None = field(default=None, metadata={"help": "extra backend options 'k=v,k=v'"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    batch_size: int = field(default=4, metadata={"help": "pairs per forward pass"})
    num_retrieved: int = field(default=10, metadata={"help": "map images retrieved per query"})
    retrieval: str | None = field(
        default=None, metadata={"help": "global descriptor (vlad-sift | dinov2); default: the map's"}
    )
    num_covisible: int = field(default=0, metadata={"help": "extra map images added by covisibility"})
    covisibility_clustering: bool = field(default=False, metadata={"help": "hloc-style covisibility clustering"})
    max_keypoint_error: float = field(default=2.0, metadata={"help": "px, map-side match -> map keypoint"})
    ransac_max_error: float = field(default=12.0, metadata={"help": "px, absolute pose RANSAC threshold"})
    min_inliers: int = field(default=20, metadata={"help": "fewer PnP inliers = failed query (see docs/localization.md)"})
    min_inlier_ratio: float = field(
        default=0.1, metadata={"help": "fewer PnP inliers than this share of the 2D-3D matches = failed query (a "
                                       "photo of another place: chance poses)"})
    seed: int = field(default=0, metadata={"help": "RANSAC seed"})
    camera_source: Literal["auto", "map", "estimate"] = field(
        default="auto", metadata={"help": "auto | map | estimate (auto: user > EXIF > the map's camera of the query's size "
                                          "> the map's camera of its aspect ratio, scaled > estimate)"})
    camera_model: str = field(default="SIMPLE_RADIAL", metadata={"help": "query camera model (with camera_params)"})
    camera_params: str | None = field(default=None, metadata={"help": "query intrinsics 'fx,fy,cx,cy,...' (COLMAP)"})
    refine_intrinsics: bool | None = field(
        default=None, metadata={"help": "refine focal/extra params; default: only when the focal is unknown"}
    )
    resume: bool = field(default=True, metadata={"help": "reuse queries already in the log (same map/options)"})
    register: bool = field(default=False, metadata={"help": "add localized queries to a copy of the map"})
    register_dir: str | None = field(default=None, metadata={"help": "model folder for --register (default beside output)"})
    report: bool = field(default=True, metadata={"help": "write localize_report.html beside the poses file"})


def _validate(c: LocalizationConfig) -> None:
    if c.camera_source not in ("auto", "map", "estimate"):
        raise ValueError(f"unknown camera_source {c.camera_source!r}; choose auto | map | estimate")
    if c.num_retrieved < 1:
        raise ValueError(f"num_retrieved must be >= 1, got {c.num_retrieved}")
    if c.max_keypoint_error <= 0 or c.ransac_max_error <= 0:
        raise ValueError("max_keypoint_error and ransac_max_error must be > 0")
    if c.camera_params is not None and c.camera_source == "estimate":
        raise ValueError("camera_params are given but camera_source=estimate would ignore them")
    if not 0.0 <= c.min_inlier_ratio < 1.0:
        raise ValueError(f"min_inlier_ratio must be in [0, 1), got {c.min_inlier_ratio}")


@dataclass
class QueryResult:
    """Outcome of one query (also one entry of ``localize_log.json``)."""

    name: str
    success: bool = False
    message: str = ""
    retrieved: list[str] = field(default_factory=list)
    num_matches: int = 0
    num_2d3d: int = 0
    num_inliers: int = 0
    time: float = 0.0
    matching_time: float = 0.0
    retrieval_time: float = 0.0
    pose_time: float = 0.0
    camera: dict[str, Any] | None = None
    camera_source: str = ""
    cluster: list[str] | None = None
    qvec: list[float] | None = None  # wxyz, cam_from_world
    tvec: list[float] | None = None
    # in memory only (not logged): pose arrays and the inlier 2D-3D for registration
    R: np.ndarray | None = field(default=None, repr=False)
    t: np.ndarray | None = field(default=None, repr=False)
    inlier_points2D: np.ndarray | None = field(default=None, repr=False)
    inlier_point3D_ids: np.ndarray | None = field(default=None, repr=False)
    camera_object: Any = field(default=None, repr=False)
    # registration only: query point (K, 2) <-> map keypoint without 3D point (image id, points2D idx)
    free_matches: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def log_entry(self) -> dict[str, Any]:
        skip = {"R", "t", "inlier_points2D", "inlier_point3D_ids", "camera_object", "free_matches"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


@dataclass
class MapImage:
    """Map-side data of one registered image, built once.

    keypoints: (M, 2) float64 keypoints with a 3D point, OpenCV convention (original pixels).
    point3D_ids: (M,) int64 their 3D point ids.
    """

    name: str
    image_id: int
    keypoints: np.ndarray
    point3D_ids: np.ndarray
    free_keypoints: np.ndarray | None = None  # (F, 2) keypoints WITHOUT a 3D point (registration)
    free_indices: np.ndarray | None = None  # (F,) their points2D indices in the model
    _tree: Any = None
    _free_tree: Any = None

    @property
    def tree(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.keypoints if len(self.keypoints) else np.zeros((0, 2)))
        return self._tree

    @property
    def free_tree(self):
        if self._free_tree is None:
            from scipy.spatial import cKDTree

            kp = self.free_keypoints if self.free_keypoints is not None else np.zeros((0, 2))
            self._free_tree = cKDTree(kp if len(kp) else np.zeros((0, 2)))
        return self._free_tree


# --------------------------------------------------------------------------- pure helpers


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


def _camera_dict(cam) -> dict[str, Any]:
    return {"model": cam.model_name, "width": int(cam.width), "height": int(cam.height), "params": [float(v) for v in cam.params]}


# --------------------------------------------------------------------------- retrieval


class MapRetriever:
    """Global-descriptor retrieval against the map images, with :mod:`loftr_sfm.retrieval`.

    The map images' descriptors are those of the pairs stage (``map_dir/global_features.h5``,
    vocabulary ``map_dir/global_vocabulary.npz``); when the map was built without retrieval
    they are computed once and saved there. Descriptors are loaded once; each query is encoded
    in the map's space (same vocabulary) and ranked by cosine similarity.
    """

    def __init__(self, map_dir: Path, map_images: Path, names: Sequence[str], descriptor: str | None = None):
        from . import retrieval as rt

        self.map_dir = Path(map_dir)
        if descriptor is None:
            descriptor = "vlad-sift"
            if (self.map_dir / rt.GLOBAL_FEATURES_FILE).is_file() and not (self.map_dir / rt.VOCABULARY_FILE).is_file():
                descriptor = "dinov2"  # the only descriptor without a vocabulary file
        self.config = rt.RetrievalConfig(descriptor=descriptor, num_workers=0)
        path = self.map_dir / rt.GLOBAL_FEATURES_FILE
        have = rt._existing_names(path) if path.is_file() else set()
        missing = [n for n in names if n not in have]
        if missing:
            logger.info("computing global descriptors (%s) of %d map image(s) into %s", descriptor, len(missing), path)
            # in-process decoding: forked DataLoader workers were seen to deadlock here after the
            # (multi-threaded) pycolmap stages ran in the same process
            rt.compute_global_descriptors(list(names), Path(map_images), self.map_dir, self.config)
        have = rt._existing_names(path)
        self.names = [n for n in names if n in have]
        if len(self.names) < len(names):
            logger.warning("%d map image(s) have no global descriptor (unreadable?): never retrieved", len(names) - len(self.names))
        _, self.desc = rt.load_descriptors(path, self.names)

    def query(self, query_path: Path, k: int) -> list[str]:
        """Map image names, best first (at most ``k``). Raises ImageReadError if unreadable."""
        from . import retrieval as rt

        ok, qd = rt.encode_images(["query"], {"query": Path(query_path)}, self.map_dir, self.config)
        if not ok:
            raise ImageReadError(f"{query_path}: could not be read for retrieval")
        pairs = rt.topk_pairs(["query"], qd, self.names, self.desc, k, exclude_self=False)
        return [b for _, b in pairs]


# --------------------------------------------------------------------------- the localizer


class Localizer:
    """A map loaded once; :meth:`localize` / :meth:`localize_paths` localize queries against it.

    Args:
        map_dir: output folder of the reconstruction (``model/``, ``features.h5``, ...).
        map_images: the map's photo folder (the images are matched against queries).
        config: :class:`LocalizationConfig` (or dict).
    Raises:
        InputError: the map folder lacks ``model/`` or ``features.h5`` or the model is empty.
    """

    def __init__(self, map_dir: str | Path, map_images: str | Path, config: LocalizationConfig | Mapping | None = None):
        import pycolmap

        self.config = merge_config(LocalizationConfig, config)
        _validate(self.config)
        self.map_dir = Path(map_dir)
        self.map_images = Path(map_images)
        if not self.map_dir.is_dir():
            raise InputError(f"map folder {self.map_dir} does not exist")
        model_dir = self.map_dir / MODEL_DIR
        if not model_dir.is_dir():
            raise InputError(f"map folder {self.map_dir} has no {MODEL_DIR}/ (run `loftr-sfm reconstruct` or `map` first)")
        features = self.map_dir / FEATURES_FILE
        if not features.is_file():
            raise InputError(f"map folder {self.map_dir} has no {FEATURES_FILE} (the keypoints stage's output)")
        if not self.map_images.is_dir():
            raise InputError(f"map image folder {self.map_images} does not exist")
        pycolmap.logging.minloglevel = 2
        from .evaluation import load_reconstruction

        with Timer() as t:
            self.reconstruction = load_reconstruction(model_dir)
            self.map = self._load_map_images(features)
        if not self.map:
            raise InputError(f"the model in {model_dir} has no registered image with 3D points")
        self.names = sorted(self.map)
        self._point_ids = np.array(sorted(self.reconstruction.point3D_ids()), np.int64)
        self._point_xyz = np.array([self.reconstruction.points3D[int(i)].xyz for i in self._point_ids], np.float64).reshape(-1, 3)
        self._covis = None
        self.matcher_name = self.config.matcher or self._map_matcher() or matches_backend(self.map_dir) or "eloftr"
        self._matcher = None
        self.retriever = None
        if len(self.names) > self.config.num_retrieved:
            self.retriever = MapRetriever(self.map_dir, self.map_images, self.names, self.config.retrieval)
        else:
            logger.info("map has %d <= num_retrieved images: every map image is matched", len(self.names))
        logger.info(
            "map loaded in %.2f s: %d images, %d 3D points, matcher %s",
            t.seconds,
            len(self.names),
            len(self._point_ids),
            self.matcher_name,
        )

    # ------------------------------------------------------------------ map loading

    def _map_matcher(self) -> str | None:
        """The matcher the map was built with, from ``summary.json`` when it records it."""
        path = self.map_dir / "summary.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        for key in ("matcher",):
            if isinstance(data.get(key), str):
                return data[key]
        cfg = data.get("config") or {}
        for sub in (cfg, cfg.get("matching") or {}):
            if isinstance(sub, dict) and isinstance(sub.get("matcher"), str):
                return sub["matcher"]
        return None

    def _load_map_images(self, features: Path) -> dict[str, MapImage]:
        """Keypoints with a 3D point of every registered image (features.h5 + model ids)."""
        import h5py

        out: dict[str, MapImage] = {}
        mismatched = []
        try:
            f = h5py.File(features, "r")
        except OSError as e:
            raise InputError(f"{features}: not a readable HDF5 file ({e})") from None
        with f:
            for image_id, img in self.reconstruction.images.items():
                if not img.has_pose:
                    continue
                pts = img.points2D
                ids = np.fromiter((p.point3D_id for p in pts), np.uint64, count=len(pts))
                has = ids != INVALID_POINT3D
                if not has.any():
                    continue
                kp = None
                if img.name in f and "keypoints" in f[img.name]:
                    kp = np.asarray(f[img.name]["keypoints"], np.float64).reshape(-1, 2)
                    if len(kp) != len(pts):
                        kp = None
                if kp is not None:
                    sel = np.flatnonzero(has)[:20]
                    xy = np.array([pts[int(i)].xy for i in sel]) - 0.5
                    if not np.allclose(kp[sel], xy, atol=1e-2):
                        kp = None
                if kp is None:
                    mismatched.append(img.name)
                    kp = np.array([p.xy for p in pts], np.float64).reshape(-1, 2) - 0.5
                out[img.name] = MapImage(
                    img.name,
                    int(image_id),
                    kp[has],
                    ids[has].astype(np.int64),
                    free_keypoints=kp[~has] if self.config.register else None,
                    free_indices=np.flatnonzero(~has) if self.config.register else None,
                )
        if mismatched:
            logger.warning(
                "%d map image(s) have keypoints in %s that differ from the model's points2D (using the model's): %s",
                len(mismatched),
                features,
                ", ".join(mismatched[:5]),
            )
        return out

    def points3D(self, ids: np.ndarray) -> np.ndarray:
        """(N, 3) coordinates of 3D point ids (vectorized lookup)."""
        pos = np.searchsorted(self._point_ids, ids)
        return self._point_xyz[pos]

    # ------------------------------------------------------------------ covisibility

    def covisible(self, names: Sequence[str], k: int) -> list[str]:
        """Up to ``k`` map images not in ``names`` sharing the most 3D points with them."""
        if k <= 0:
            return []
        if self._covis is None:
            from scipy.sparse import coo_matrix

            rows = np.concatenate([np.full(len(self.map[n].point3D_ids), i) for i, n in enumerate(self.names)])
            cols = np.searchsorted(self._point_ids, np.concatenate([self.map[n].point3D_ids for n in self.names]))
            self._covis = coo_matrix(
                (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self.names), len(self._point_ids))
            ).tocsr()
        idx = {n: i for i, n in enumerate(self.names)}
        sel = [idx[n] for n in names if n in idx]
        if not sel:
            return []
        counts = np.asarray((self._covis[sel] @ self._covis.T).sum(axis=0)).ravel()
        counts[sel] = 0
        order = np.argsort(-counts, kind="stable")
        return [self.names[i] for i in order[:k] if counts[i] > 0]

    # ------------------------------------------------------------------ stages

    @property
    def matcher(self):
        if self._matcher is None:
            from .matching import MatchingConfig, build_backend

            self._matcher = build_backend(self._matching_config())
        return self._matcher

    def _matching_config(self):
        from .matching import MatchingConfig

        c = self.config
        return MatchingConfig(
            matcher=self.matcher_name,
            weights=c.weights,
            max_side=c.max_side,
            matcher_options=c.matcher_options,
            batch_size=c.batch_size,
            num_workers=0,
            device=c.device,
        )

    def retrieve(self, query_path: Path) -> list[str]:
        """Top ``num_retrieved`` map images for a query (all map images without an index)."""
        if self.retriever is None:
            return list(self.names)
        ranked = self.retriever.query(query_path, self.config.num_retrieved)
        return [n for n in ranked if n in self.map][: self.config.num_retrieved]

    def query_camera(self, query_path: Path, name: str, retrieved: Sequence[str]) -> tuple[Any, str, bool]:
        """(camera, source, focal known) for a query; raises ImageReadError for unreadable files.

        ``auto``: the user's intrinsics, else EXIF, else the camera of the best retrieved map image of
        the query's size (a photo of the map's own device: its calibration is what the map estimated
        from many images), else that of the best retrieved map image of the query's aspect ratio scaled
        to its size (``map-scaled``: the start of the pose's intrinsics refinement), else an estimated
        focal length. ``map`` skips user and EXIF; ``estimate``
        always estimates.
        """
        from .database import DatabaseConfig, make_cameras

        w, h = image_size(query_path)
        c = self.config
        if c.camera_source == "auto":
            fname = query_path.name  # make_cameras reads EXIF from folder / name
            cams, _ = make_cameras(
                [fname],
                {fname: (w, h)},
                query_path.parent if c.camera_params is None else None,
                DatabaseConfig(camera_mode="per_image", camera_model=c.camera_model, camera_params=c.camera_params),
            )
            cam = cams[0]
            if cam.has_prior_focal_length:
                return cam, ("user" if c.camera_params else "exif"), True
        if c.camera_source != "estimate":
            for n in retrieved:
                cam = self.reconstruction.images[self.map[n].image_id].camera
                if (cam.width, cam.height) == (w, h):
                    return copy.deepcopy(cam), "map", True
            for n in retrieved:  # maybe the map's device at another resolution: its camera scaled, focal refined
                cam = self.reconstruction.images[self.map[n].image_id].camera
                if cam.width * h == cam.height * w:
                    scaled = copy.deepcopy(cam)
                    scaled.rescale(w, h)
                    return scaled, SCALED_MAP_CAMERA, True
            if c.camera_source == "map":
                logger.warning("%s: no retrieved map camera of size %dx%d; its focal length is estimated", name, w, h)
        import pycolmap

        cam = pycolmap.Camera.create_from_model_name(
            camera_id=1, model_name="SIMPLE_RADIAL", focal_length=1.2 * max(w, h), width=w, height=h
        )
        return cam, "estimated", False

    def match(self, query_path: Path, qname: str, map_names: Sequence[str], workdir: Path):
        """Match a query with map images. Returns ({map name: (kq, km, scores)}, seconds)."""
        from .matching import match_pairs

        qkey = QUERY_PREFIX + qname
        paths = {qkey: query_path, **{n: self.map_images / n for n in map_names}}
        h5path = workdir / "matches.h5"
        if h5path.exists():
            h5path.unlink()
        with Timer() as t:
            match_pairs([(qkey, n) for n in map_names], paths, h5path, self._matching_config(), matcher=self.matcher)
        out = {}
        import h5py

        if h5path.exists():
            with h5py.File(h5path, "r") as f:
                for n in map_names:
                    try:
                        out[n] = read_raw_matches(f, qkey, n)
                    except KeyError:  # unreadable map image: reported by match_pairs
                        continue
        return out, t.seconds

    def localize_from_matches(
        self,
        result: QueryResult,
        matches: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        camera,
        focal_known: bool,
    ) -> QueryResult:
        """2D-3D assembly + pose for one query whose matches are given (fills ``result``).

        Args:
            matches: map image name -> (query points (N, 2), map points (N, 2), scores (N,)),
                OpenCV convention.
        """
        c = self.config
        t0 = time.perf_counter()
        result.num_matches = int(sum(len(m[2]) for m in matches.values()))
        per_image = {
            n: correspondences_2d3d(kq, km, sc, self.map[n], c.max_keypoint_error)
            for n, (kq, km, sc) in matches.items()
            if n in self.map
        }
        names = [n for n in per_image if len(per_image[n][1])]
        groups = [names]
        if c.covisibility_clustering and len(names) > 1:
            groups = [[names[i] for i in g] for g in covisibility_clusters([self.map[n].point3D_ids for n in names])]
        # a scaled map camera is a start, not a calibration: RANSAC uses it, the refinement adjusts it
        refine = (c.refine_intrinsics if c.refine_intrinsics is not None
                  else not focal_known or result.camera_source == SCALED_MAP_CAMERA)
        best = None
        total = merge_correspondences([per_image[n] for n in names])
        result.num_2d3d = int(len(total[1]))
        for group in groups:
            q, ids, _ = merge_correspondences([per_image[n] for n in group])
            if len(ids) < max(c.min_inliers, 4):
                continue
            ret = estimate_pose(q, self.points3D(ids), camera, c.ransac_max_error, not focal_known, refine, c.seed)
            if ret is not None and (best is None or ret["num_inliers"] > best[0]["num_inliers"]):
                best = (ret, q, ids, group)
        result.pose_time = time.perf_counter() - t0
        # a pose must beat chance: RANSAC finds a few percent of the 2D-3D matches of an unrelated photo consistent
        need = c.min_inliers if best is None else max(c.min_inliers, int(np.ceil(c.min_inlier_ratio * len(best[2]))))
        if best is None or best[0]["num_inliers"] < need:
            n_in = 0 if best is None else int(best[0]["num_inliers"])
            result.success = False
            result.num_inliers = n_in
            result.message = (
                f"pose estimation failed ({result.num_2d3d} 2D-3D correspondences, {n_in} inliers, need {need}"
                f"{'' if need == c.min_inliers else f' = {c.min_inlier_ratio:g} of them'}: not this place?)"
            )
            return result
        ret, q, ids, group = best
        R, t = rigid_to_pose(ret["cam_from_world"])
        result.success = True
        result.num_inliers = int(ret["num_inliers"])
        result.R, result.t = R, t
        result.qvec, result.tvec = rotation_to_qvec(R).tolist(), t.tolist()
        result.camera = _camera_dict(ret["camera"])
        result.camera_object = ret["camera"]
        result.cluster = list(group) if c.covisibility_clustering else None
        mask = ret["inlier_mask"]
        result.inlier_points2D, result.inlier_point3D_ids = q[mask], ids[mask]
        if c.register:
            result.free_matches = self._free_matches(matches)
        return result

    def _free_matches(self, matches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query points matched to map keypoints that have NO 3D point (for triangulation).

        Returns query points (K, 2) OpenCV, map image ids (K,), map points2D indices (K,); per
        map keypoint the best-scoring match.
        """
        qs, imgs, idxs = [], [], []
        for n, (kq, km, sc) in matches.items():
            mi = self.map.get(n)
            if mi is None or mi.free_keypoints is None or len(mi.free_keypoints) == 0 or len(km) == 0:
                continue
            dist, j = mi.free_tree.query(np.asarray(km, np.float64), k=1, distance_upper_bound=self.config.max_keypoint_error)
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

    def localize_path(self, query_path: str | Path, name: str | None = None, workdir: Path | None = None) -> QueryResult:
        """Localize one query image file. Never raises for bad input: the result says why."""
        query_path = Path(query_path)
        name = name or query_path.name
        res = QueryResult(name=name)
        t0 = time.perf_counter()
        own_tmp = workdir is None
        if own_tmp:
            workdir = Path(tempfile.mkdtemp(prefix="loftr_sfm_localize_"))
        try:
            image_size(query_path)  # unreadable / missing file: ImageReadError naming it
            with Timer() as tr:
                retrieved = self.retrieve(query_path)
                retrieved = retrieved + self.covisible(retrieved, self.config.num_covisible)
            res.retrieval_time = tr.seconds
            res.retrieved = retrieved
            if not retrieved:
                res.message = "no map image retrieved"
                return res
            camera, res.camera_source, focal_known = self.query_camera(query_path, name, retrieved)
            matches, res.matching_time = self.match(query_path, name, retrieved, workdir)
            if not matches:
                res.message = "no matches with any retrieved map image (unreadable images?)"
                return res
            self.localize_from_matches(res, matches, camera, focal_known)
        except (ImageReadError, InputError) as e:
            res.success = False
            res.message = str(e)
            logger.warning("query %s: %s", name, e)
        finally:
            res.time = time.perf_counter() - t0
            if own_tmp:
                shutil.rmtree(workdir, ignore_errors=True)
        logger.info("query %s: %s (camera: %s; %d inliers; %.1f s)", name,
                    "localized" if res.success else f"failed, {res.message or 'no pose'}", res.camera_source or "-",
                    res.num_inliers, res.time)
        return res

    # ------------------------------------------------------------------ registration

    def register_queries(
        self,
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
        and the triangulation angle is at least ``min_angle`` degrees). The map itself is not
        modified.
        """
        import pycolmap

        rec = pycolmap.Reconstruction(self.reconstruction)
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
            q_new, X_new, m_new, i_new = self._triangulate_new(rec, r, cam, max_reprojection_error, min_angle)
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

    def _triangulate_new(self, rec, r: QueryResult, camera, max_error: float, min_angle: float):
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

    # ------------------------------------------------------------------ many queries

    def signature(self) -> str:
        c = dataclasses.asdict(self.config)
        for k in ("resume", "register", "register_dir", "device", "batch_size", "report"):
            c.pop(k, None)
        c["matcher"] = self.matcher_name
        model = self.map_dir / MODEL_DIR
        stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model.iterdir() if p.is_file())
        return hashlib.sha1(json.dumps([c, stamp], sort_keys=True).encode()).hexdigest()[:16]

    def localize(
        self, queries: str | Path | Sequence[str | Path], output: str | Path, query_root: str | Path | None = None
    ) -> list[QueryResult]:
        """Localize a folder of queries (or a list of files) and write ``poses.txt`` + the log.

        Args:
            queries: a folder (every image below it; names relative to it) or a list of paths
                (names relative to ``query_root`` if given, else file names).
            output: the poses file; the log ``localize_log.json`` is written beside it.
        Returns:
            one :class:`QueryResult` per query, in name order.
        """
        from .utils import progress as tqdm  # follows set_progress (-q)

        output = Path(output)
        if output.is_dir():
            raise InputError(f"output {output} is a directory; give the poses file path (e.g. {output / 'poses.txt'})")
        items = self._query_items(queries, query_root)
        log_path = output.parent / LOG_FILE
        sig = self.signature()
        previous = self._read_log(log_path, sig) if self.config.resume else {}
        results: list[QueryResult] = []
        output.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".localize_", dir=output.parent))
        try:
            for name, path in tqdm(items, unit="query", desc="localizing"):
                if name in previous and previous[name].success:  # failures are retried
                    results.append(previous[name])
                    continue
                if path is None:
                    res = QueryResult(name=name, message=f"{name}: not a readable image file")
                elif any(ch.isspace() for ch in name):
                    res = QueryResult(name=name, message=f"{name!r}: whitespace in the name cannot be written to poses.txt")
                else:
                    res = self.localize_path(path, name, workdir)
                results.append(res)
                level = logging.INFO if res.success else logging.WARNING
                logger.log(
                    level,
                    "%s: %s (%d 2D-3D, %d inliers, %.2f s, matching %.2f s)%s",
                    name,
                    "localized" if res.success else "FAILED",
                    res.num_2d3d,
                    res.num_inliers,
                    res.time,
                    res.matching_time,
                    "" if res.success else f": {res.message}",
                )
                self._write_log(log_path, sig, results, previous)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        results.sort(key=lambda r: r.name)
        poses = {r.name: (r.R, r.t) for r in results if r.success}
        write_poses(output, poses)
        self._write_log(log_path, sig, results, {})
        ok = sum(r.success for r in results)
        logger.info("localized %d / %d queries -> %s (log: %s)", ok, len(results), output, log_path)
        if self.config.report:
            try:
                from .report import LOCALIZE_REPORT_FILE, write_localization_report

                write_localization_report(self, results, dict(items), output.parent / LOCALIZE_REPORT_FILE)
            except Exception as e:  # noqa: BLE001 - the poses are written: a report that fails is only a warning
                logger.warning("the localization report could not be written: %s: %s", type(e).__name__, e)
                logger.debug("traceback", exc_info=True)
        if self.config.register:
            target = Path(self.config.register_dir) if self.config.register_dir else output.parent / "model_with_queries"
            fresh = [r for r in results if r.success and r.inlier_points2D is not None]
            if len(fresh) < ok:
                logger.warning("register: %d queries reused from the log lack 2D-3D data; rerun with --resume false", ok - len(fresh))
            self.register_queries(fresh, target)
        return results

    def _query_items(self, queries, query_root) -> list[tuple[str, Path | None]]:
        if isinstance(queries, (str, Path)) and Path(queries).is_dir():
            root = Path(queries)
            names = list_images(root)  # raises InputError when empty
            items: list[tuple[str, Path | None]] = [(n, root / n) for n in names]
            # files with other extensions are reported, not silently ignored
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.name.startswith(".") and p.relative_to(root).as_posix() not in set(names):
                    logger.warning("query folder: ignoring %s (not an image extension)", p)
            return items
        if isinstance(queries, (str, Path)):
            raise InputError(f"query folder {queries} does not exist or is not a directory")
        root = Path(query_root) if query_root is not None else None
        items = []
        for q in queries:
            p = Path(q)
            # a path as given; a bare name relative to the root (a relative root given in both must not double)
            if root is not None and not p.is_absolute() and not p.is_relative_to(root) and not p.exists():
                p = root / p
            name = p.relative_to(root).as_posix() if root is not None and p.is_relative_to(root) else p.name
            items.append((name, p))
        if not items:
            raise InputError("no query images given")
        return sorted(items)

    @staticmethod
    def _read_log(path: Path, sig: str) -> dict[str, QueryResult]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("signature") != sig:
            return {}
        out = {}
        names = {f.name for f in dataclasses.fields(QueryResult)}
        for e in data.get("queries", []):
            r = QueryResult(**{k: v for k, v in e.items() if k in names})
            if r.success and r.qvec and r.tvec:
                from scipy.spatial.transform import Rotation

                w, x, y, z = r.qvec
                r.R = Rotation.from_quat([x, y, z, w]).as_matrix()
                r.t = np.asarray(r.tvec, np.float64)
            out[r.name] = r
        return out

    def _write_log(self, path: Path, sig: str, results: Sequence[QueryResult], previous: Mapping[str, QueryResult]) -> None:
        done = {r.name for r in results}
        entries = [r.log_entry() for r in results] + [r.log_entry() for n, r in previous.items() if n not in done]
        ok = [e for e in entries if e["success"]]
        data = {
            "signature": sig,
            "map": str(self.map_dir),
            "map_images": str(self.map_images),
            "matcher": self.matcher_name,
            "config": dataclasses.asdict(self.config),
            "num_queries": len(entries),
            "num_localized": len(ok),
            "mean_time": float(np.mean([e["time"] for e in entries])) if entries else 0.0,
            "mean_matching_time": float(np.mean([e["matching_time"] for e in entries])) if entries else 0.0,
            "queries": entries,
        }
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1))


def localize(
    map_dir: Path,
    map_images: Path,
    queries: Path,
    output: Path,
    config: LocalizationConfig | Mapping | None = None,
) -> list[QueryResult]:
    """Localize every image of ``queries`` against the map in ``map_dir``; write ``output``.

    See the module docstring. Returns one :class:`QueryResult` per query (name order).
    """
    localizer = Localizer(map_dir, map_images, config)
    return localizer.localize(queries, output)
