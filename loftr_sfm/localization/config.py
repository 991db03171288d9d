"""Localization options, the per-query result (one entry of ``localize_log.json``) and the file
names of a map folder and of a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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

