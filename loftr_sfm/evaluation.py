"""Evaluation against ground truth: Sim(3) alignment, pose errors, AUC, localization recall.

Conventions
-----------
* A *pose* is COLMAP's ``cam_from_world``: a 3D world point ``X`` maps to camera coordinates
  ``R @ X + t``. Pose sets are ``dict[name, (R (3, 3) float64, t (3,) float64)]`` keyed by the
  image name (relative path, as in the model / ``poses.txt``). The camera centre is ``-R.T @ t``.
* Ground truth is a COLMAP model (``pycolmap.Reconstruction(gt_dir)``), usually pose-only (no
  points), as in ``../shared/data/<scene>/gt``. Images are matched by **name**.
* Errors are measured in the ground truth's frame after a similarity ``gt_from_est`` fitted on
  camera centres (robust: Umeyama inside a deterministic LO-RANSAC, see
  :func:`estimate_sim3_robust`). Rotation error is the angle of ``R_est_aligned @ R_gt.T`` in
  degrees; position error is the camera-centre distance in GT units.

Reconstruction metrics (:func:`evaluate_reconstruction`)
--------------------------------------------------------
* ``registered_fraction``: GT images that have a pose in the model / GT images.
* per-image rotation and position error after alignment; median / mean / max.
* ``auc``: **relative-pose AUC at 1/2/5 degrees as in the SuperGlue / LoFTR papers**: for every
  pair of GT images, the error is ``max(relative rotation error, angle between the relative
  translation directions)``; a pair with an unregistered image has infinite error; the AUC is the
  area under the recall-vs-error curve up to the threshold (trapezoidal, curve starting at
  (0, 0)), divided by the threshold. It needs no alignment, so it is independent of the Sim(3).
  (Unlike two-view AUC there is no sign ambiguity of the translation here, so no ``min(e, 180-e)``.)
* ``auc_rotation``: the same AUC computed on the aligned absolute rotation errors (unregistered
  images: infinite error), a second, alignment-dependent view.

Localization metrics (:func:`evaluate_localization`)
----------------------------------------------------
Recall at (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg) over *all* queries (a query without a
pose counts as a failure), median rotation / position errors over the localized queries.
Optionally the map is first aligned to GT (for a GT only defined up to a similarity): the
Sim(3) is fitted on the map images' camera centres and applied to the query poses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import InputError, atomic_path
from .utils import merge_config

logger = logging.getLogger(__name__)

Pose = tuple[np.ndarray, np.ndarray]  # (R (3, 3), t (3,)) cam_from_world
PoseSet = dict[str, Pose]

DEFAULT_RECALL_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass
class EvaluationConfig:
    """Options of the evaluation.

    align_threshold: RANSAC inlier threshold on camera centres for the Sim(3), as a fraction of
        the GT scene extent (median distance of the GT camera centres to their median).
    align_threshold_abs: absolute threshold in GT units; overrides ``align_threshold`` if set.
    align_iterations: RANSAC hypotheses (minimal samples of 3 centres), fixed ``seed``.
    auc_thresholds: AUC thresholds in degrees.
    recall_thresholds: localization recall thresholds, (metres or GT units, degrees).
    """

    align_threshold: float = 0.05
    align_threshold_abs: float | None = None
    align_iterations: int = 2000
    seed: int = 0
    auc_thresholds: tuple[float, ...] = (1.0, 2.0, 5.0)
    recall_thresholds: tuple[tuple[float, float], ...] = DEFAULT_RECALL_THRESHOLDS


# --------------------------------------------------------------------------- Sim(3)


@dataclass
class Sim3:
    """Similarity ``X' = scale * rotation @ X + translation`` (maps *source* to *target*)."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (N, 3) points; returns (N, 3) float64."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        return self.scale * points @ self.rotation.T + self.translation

    def inverse(self) -> "Sim3":
        rinv = self.rotation.T
        return Sim3(1.0 / self.scale, rinv, -(rinv @ self.translation) / self.scale)

    def matrix(self) -> np.ndarray:
        """(3, 4) matrix ``[s R | t]``."""
        return np.concatenate([self.scale * self.rotation, self.translation[:, None]], axis=1)

    def transform_pose(self, R: np.ndarray, t: np.ndarray) -> Pose:
        """``cam_from_world`` pose expressed in the target world frame.

        With ``X' = s Ra X + ta`` the camera keeps its centre ``C' = s Ra C + ta`` and gets the
        rotation ``R Ra.T``; its translation is ``-R' C'`` (camera units scale by ``s``).
        """
        R = np.asarray(R, np.float64)
        t = np.asarray(t, np.float64)
        R_new = R @ self.rotation.T
        center = -R.T @ t
        c_new = self.scale * self.rotation @ center + self.translation
        return R_new, -R_new @ c_new

    def transform_poses(self, poses: Mapping[str, Pose]) -> PoseSet:
        return {n: self.transform_pose(R, t) for n, (R, t) in poses.items()}

    def to_pycolmap(self):
        import pycolmap

        return pycolmap.Sim3d(self.scale, pycolmap.Rotation3d(self.rotation), self.translation.reshape(3, 1))

    def to_dict(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "rotation": self.rotation.tolist(), "translation": self.translation.tolist()}


def _umeyama_batched(src: np.ndarray, tgt: np.ndarray, with_scale: bool = True):
    """Least-squares similarity for a batch of point sets (Umeyama 1991).

    Args:
        src, tgt: (B, M, 3) corresponding points.
    Returns:
        scale (B,), rotation (B, 3, 3), translation (B, 3); degenerate sets give scale 0 / NaN-free
        but meaningless results (the callers score them).
    """
    mu_s = src.mean(axis=1, keepdims=True)
    mu_t = tgt.mean(axis=1, keepdims=True)
    s0 = src - mu_s
    t0 = tgt - mu_t
    m = src.shape[1]
    cov = np.einsum("bmi,bmj->bij", t0, s0) / m  # (B, 3, 3) = sum tgt src^T
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign[sign == 0] = 1.0
    fix = np.ones((len(src), 3))
    fix[:, 2] = sign
    rot = np.einsum("bij,bj,bjk->bik", u, fix, vt)
    var_s = (s0**2).sum(axis=(1, 2)) / m
    if with_scale:
        scale = np.where(var_s > 0, (d * fix).sum(axis=1) / np.maximum(var_s, 1e-300), 0.0)
    else:
        scale = np.ones(len(src))
    trans = mu_t[:, 0] - scale[:, None] * np.einsum("bij,bj->bi", rot, mu_s[:, 0])
    return scale, rot, trans


def umeyama(src: np.ndarray, tgt: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity ``tgt ~ s R src + t`` from (N, 3) correspondences (N >= 3)."""
    src = np.asarray(src, np.float64).reshape(-1, 3)
    tgt = np.asarray(tgt, np.float64).reshape(-1, 3)
    if len(src) != len(tgt) or len(src) < 3:
        raise ValueError(f"umeyama needs >= 3 corresponding points, got {len(src)} and {len(tgt)}")
    s, r, t = _umeyama_batched(src[None], tgt[None], with_scale)
    return Sim3(float(s[0]), r[0], t[0])


def estimate_sim3_robust(
    src: np.ndarray,
    tgt: np.ndarray,
    threshold: float,
    iterations: int = 2000,
    seed: int = 0,
) -> tuple[Sim3, np.ndarray]:
    """Robust similarity ``tgt ~ s R src + t``: RANSAC over minimal samples + local refit.

    Hypotheses come from random 3-point samples (deterministic ``seed``; all triples when there
    are few points), are scored by inlier count (ties: smaller truncated squared error), and the
    best one is refined by least squares on its inliers until the inlier set is stable.

    Args:
        src, tgt: (N, 3) corresponding points (N >= 3), e.g. camera centres.
        threshold: inlier distance in ``tgt`` units.
    Returns:
        (Sim3, inlier mask (N,) bool).
    Raises:
        ValueError: fewer than 3 points, or no non-degenerate hypothesis with >= 3 inliers.
    """
    src = np.asarray(src, np.float64).reshape(-1, 3)
    tgt = np.asarray(tgt, np.float64).reshape(-1, 3)
    n = len(src)
    if n != len(tgt) or n < 3:
        raise ValueError(f"Sim(3) alignment needs >= 3 common cameras, got {min(n, len(tgt))}")
    from itertools import combinations
    from math import comb

    if comb(n, 3) <= iterations:
        samples = np.array(list(combinations(range(n), 3)), np.int64)
    else:
        rng = np.random.default_rng(seed)
        samples = np.argsort(rng.random((iterations, n)), axis=1)[:, :3]
    scale, rot, trans = _umeyama_batched(src[samples], tgt[samples])
    # (B, N) residuals of every hypothesis on every point
    pred = scale[:, None, None] * np.einsum("bij,nj->bni", rot, src) + trans[:, None, :]
    err = np.linalg.norm(pred - tgt[None], axis=2)
    valid = scale > 1e-12
    inl = (err < threshold) & valid[:, None]
    count = inl.sum(axis=1)
    cost = np.minimum(err, threshold) ** 2
    cost = cost.sum(axis=1)
    order = np.lexsort((cost, -count))
    best = order[0]
    if count[best] < 3:
        raise ValueError(
            f"Sim(3) alignment failed: no hypothesis with >= 3 inliers at threshold {threshold:.4g} ({n} cameras)"
        )
    mask = inl[best]
    sim = Sim3(float(scale[best]), rot[best], trans[best])
    for _ in range(10):
        sim = umeyama(src[mask], tgt[mask])
        e = np.linalg.norm(sim.apply(src) - tgt, axis=1)
        new = e < threshold
        if new.sum() < 3 or np.array_equal(new, mask):
            break
        mask = new
    return sim, mask


# --------------------------------------------------------------------------- poses


def load_reconstruction(path: str | Path):
    """``pycolmap.Reconstruction`` from a model folder (binary or text), with a clear error."""
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model folder {path} does not exist")
    has_bin = all((path / f"{n}.bin").is_file() for n in ("cameras", "images"))
    has_txt = all((path / f"{n}.txt").is_file() for n in ("cameras", "images"))
    if not (has_bin or has_txt):
        raise InputError(f"{path} is not a COLMAP model (no cameras/images .bin or .txt)")
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with a C++ check message
        raise InputError(f"{path}: cannot read COLMAP model ({e})") from None


def gt_camera_params(gt) -> tuple[str, str]:
    """``(model name, "p1,p2,...")`` of the single camera of a GT model (object or folder).

    The string is what :class:`loftr_sfm.database.DatabaseConfig` takes as ``camera_params``
    (COLMAP convention), so a reconstruction or a localization can be run with the GT calibration.
    """
    rec = load_reconstruction(gt) if isinstance(gt, (str, Path)) else gt
    cams = list(rec.cameras.values())
    if len(cams) != 1:
        raise InputError(f"{gt}: expected exactly one GT camera, found {len(cams)}")
    c = cams[0]
    return c.model_name, ",".join(f"{v:.10g}" for v in c.params)


def poses_from_reconstruction(rec) -> PoseSet:
    """Registered images of a reconstruction (object or folder) as ``{name: (R, t)}``."""
    if isinstance(rec, (str, Path)):
        rec = load_reconstruction(rec)
    return {img.name: rigid_to_pose(img.cam_from_world()) for img in rec.images.values() if img.has_pose}


def rigid_to_pose(rigid) -> Pose:
    """A ``pycolmap.Rigid3d`` as (R (3, 3), t (3,)) float64.

    pycolmap keeps text-model quaternions unnormalized (text files round them), and
    ``rotation.matrix()`` is then not orthonormal: normalize (scipy's from_quat does, xyzw).
    """
    from scipy.spatial.transform import Rotation

    R = Rotation.from_quat(np.asarray(rigid.rotation.quat, np.float64)).as_matrix()
    return R, np.asarray(rigid.translation, np.float64).reshape(3)


def rotation_to_qvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (4,) in COLMAP's wxyz order with qw >= 0."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def read_poses(path: str | Path) -> PoseSet:
    """Read ``poses.txt`` (``name qw qx qy qz tx ty tz`` per line, cam_from_world, COLMAP's wxyz).

    Blank lines and '#' comments are skipped. Raises :class:`InputError` on malformed lines.
    """
    from scipy.spatial.transform import Rotation

    path = Path(path)
    if not path.is_file():
        raise InputError(f"poses file {path} does not exist")
    out: PoseSet = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 8:
            raise InputError(f"{path}:{lineno}: expected 'name qw qx qy qz tx ty tz', got {line!r}")
        try:
            q = np.array([float(v) for v in parts[1:5]])
            t = np.array([float(v) for v in parts[5:8]])
        except ValueError:
            raise InputError(f"{path}:{lineno}: non-numeric pose values in {line!r}") from None
        if not np.isfinite(q).all() or not np.isfinite(t).all() or np.linalg.norm(q) < 1e-12:
            raise InputError(f"{path}:{lineno}: invalid quaternion / translation in {line!r}")
        R = Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix()  # scipy wants xyzw
        out[parts[0]] = (R, t)
    return out


def write_poses(path: str | Path, poses: Mapping[str, Pose]) -> None:
    """Write ``poses.txt`` atomically (``name qw qx qy qz tx ty tz``, cam_from_world, wxyz).

    Quaternions are normalized with ``qw >= 0``; lines are in the mapping's order.
    """
    lines = []
    for name, (R, t) in poses.items():
        if any(c.isspace() for c in name):
            raise InputError(f"image name {name!r} contains whitespace; poses.txt cannot represent it")
        q = rotation_to_qvec(R)
        t = np.asarray(t, np.float64).reshape(3)
        lines.append(name + " " + " ".join(f"{v:.12g}" for v in (*q, *t)) + "\n")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(lines))


def camera_centers(poses: Mapping[str, Pose], names: Sequence[str]) -> np.ndarray:
    """(N, 3) camera centres ``-R.T t`` of ``names``."""
    return np.array([-poses[n][0].T @ poses[n][1] for n in names], np.float64).reshape(-1, 3)


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Angle of ``R_est @ R_gt.T`` in degrees, for (..., 3, 3) stacks; numerically safe near 0."""
    R_est = np.asarray(R_est, np.float64)
    R_gt = np.asarray(R_gt, np.float64)
    d = R_est @ np.swapaxes(R_gt, -1, -2)
    # atan2(|axis*sin|, cos) is accurate for small angles, unlike arccos(trace)
    cos = (np.trace(d, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack([d[..., 2, 1] - d[..., 1, 2], d[..., 0, 2] - d[..., 2, 0], d[..., 1, 0] - d[..., 0, 1]], -1)
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def _angle_between_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between (..., 3) vectors in degrees (0 if both are zero, 90 if one is zero)."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = (a * b).sum(-1)
    return np.degrees(np.arctan2(cross, dot))


def pose_auc(errors: Iterable[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold.

    The curve is the one of the SuperGlue / LoFTR evaluation: sorted errors ``e_i`` with recall
    ``i/N``, starting at (0, 0), linearly interpolated, closed at the threshold with the last
    recall below it. Infinite / NaN errors count as failures (they stay in N).
    """
    e = np.asarray(list(errors), np.float64)
    e = np.where(np.isnan(e), np.inf, e)
    n = len(e)
    if n == 0:
        return [float("nan")] * len(thresholds)
    e = np.sort(e)
    recall = np.arange(1, n + 1) / n
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    out = []
    for thr in thresholds:
        last = int(np.searchsorted(e, thr, side="left"))  # e[:last] < thr
        x = np.concatenate([e[:last], [thr]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        out.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / thr))
    return out


def relative_pose_errors(est: Mapping[str, Pose], gt: Mapping[str, Pose], names: Sequence[str]) -> np.ndarray:
    """Per-pair relative pose errors over all pairs ``i < j`` of ``names`` (order of ``names``).

    Error = max(rotation error of ``R_j R_i^T``, angle between the relative translations
    ``t_j - R_ij t_i``) in degrees; ``inf`` when either image has no estimate.
    Returns (N (N-1) / 2,) float64.
    """
    n = len(names)
    iu, ju = np.triu_indices(n, k=1)
    if len(iu) == 0:
        return np.zeros(0)
    R_gt = np.stack([gt[k][0] for k in names])
    t_gt = np.stack([gt[k][1] for k in names])
    have = np.array([k in est for k in names])
    R_e = np.stack([est[k][0] if k in est else np.eye(3) for k in names])
    t_e = np.stack([est[k][1] if k in est else np.zeros(3) for k in names])

    def rel(R, t):
        Rij = R[ju] @ np.swapaxes(R[iu], 1, 2)
        tij = t[ju] - np.einsum("bij,bj->bi", Rij, t[iu])
        return Rij, tij

    Rg, tg = rel(R_gt, t_gt)
    Re, te = rel(R_e, t_e)
    err = np.maximum(rotation_error_deg(Re, Rg), _angle_between_deg(te, tg))
    err[~(have[iu] & have[ju])] = np.inf
    return err


def scene_extent(centers: np.ndarray) -> float:
    """Median distance of (N, 3) camera centres to their coordinate-wise median."""
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    if len(centers) == 0:
        return float("nan")
    return float(np.median(np.linalg.norm(centers - np.median(centers, axis=0), axis=1)))


def align_poses(
    est: Mapping[str, Pose], gt: Mapping[str, Pose], config: EvaluationConfig | Mapping | None = None
) -> tuple[Sim3, list[str], list[str]]:
    """Sim(3) ``gt_from_est`` fitted on the camera centres of the images in both sets.

    Returns (sim, common names, inlier names). Raises ValueError when < 3 images are common or
    RANSAC finds no consensus.
    """
    cfg = merge_config(EvaluationConfig, config)
    common = [n for n in gt if n in est]
    c_gt = camera_centers(gt, common)
    c_est = camera_centers(est, common)
    thr = cfg.align_threshold_abs
    if thr is None:
        thr = cfg.align_threshold * scene_extent(camera_centers(gt, list(gt)))
    if not np.isfinite(thr) or thr <= 0:
        raise ValueError("Sim(3) alignment: degenerate GT camera layout (zero extent)")
    sim, mask = estimate_sim3_robust(c_est, c_gt, thr, cfg.align_iterations, cfg.seed)
    return sim, common, [n for n, m in zip(common, mask) if m]


def pose_errors(est: Mapping[str, Pose], gt: Mapping[str, Pose], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation error (deg) and camera-centre error (GT units) of ``names`` (all in both sets).

    ``est`` must already be expressed in GT's frame. Returns two (N,) float64 arrays.
    """
    if not names:
        return np.zeros(0), np.zeros(0)
    R_e = np.stack([est[n][0] for n in names])
    R_g = np.stack([gt[n][0] for n in names])
    rot = rotation_error_deg(R_e, R_g)
    pos = np.linalg.norm(camera_centers(est, names) - camera_centers(gt, names), axis=1)
    return rot, pos


def _stats(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"median": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"median": float(np.median(x)), "mean": float(np.mean(x)), "max": float(np.max(x))}


# --------------------------------------------------------------------------- reconstruction


@dataclass
class ReconstructionEvaluation:
    """Result of :func:`evaluate_reconstruction` (errors in degrees and GT units)."""

    num_gt: int
    num_registered: int
    num_align_inliers: int
    rotation_error: dict[str, float]
    position_error: dict[str, float]
    auc: dict[str, float]
    auc_rotation: dict[str, float]
    per_image: dict[str, dict[str, float]]
    sim3: dict[str, Any] | None
    extra_images: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def registered_fraction(self) -> float:
        return self.num_registered / self.num_gt if self.num_gt else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["registered_fraction"] = self.registered_fraction
        return d

    def row(self) -> dict[str, Any]:
        """Flat summary (one table row)."""
        r: dict[str, Any] = {
            "registered": f"{self.num_registered}/{self.num_gt}",
            "rot_med_deg": self.rotation_error["median"],
            "rot_max_deg": self.rotation_error["max"],
            "pos_med": self.position_error["median"],
            "pos_max": self.position_error["max"],
        }
        for k, v in self.auc.items():
            r[f"AUC@{k}"] = v
        return r


def evaluate_reconstruction(rec, gt, config: EvaluationConfig | Mapping | None = None) -> ReconstructionEvaluation:
    """Compare a reconstruction with a GT model (objects, folders, or pose dicts), by image name.

    Steps: registered fraction; Sim(3) ``gt_from_rec`` on camera centres (robust); per-image
    rotation / position errors of the registered GT images; pairwise relative-pose AUC and
    rotation AUC (see the module docstring). Model images absent from GT are listed in
    ``extra_images`` and ignored. If alignment is impossible (< 3 common images or no
    consensus), errors are NaN, AUCs use what needs no alignment, and ``message`` says why.
    """
    cfg = merge_config(EvaluationConfig, config)
    est = rec if isinstance(rec, Mapping) else poses_from_reconstruction(rec)
    gtp = gt if isinstance(gt, Mapping) else poses_from_reconstruction(gt)
    if not gtp:
        raise InputError("ground truth has no posed images")
    names = sorted(gtp)
    common = [n for n in names if n in est]
    extra = sorted(n for n in est if n not in gtp)
    keys = [_fmt_thr(t) for t in cfg.auc_thresholds]
    auc = dict(zip(keys, pose_auc(relative_pose_errors(est, gtp, names), cfg.auc_thresholds)))
    per_image: dict[str, dict[str, float]] = {}
    message = ""
    sim = None
    inliers: list[str] = []
    rot = np.full(len(names), np.inf)
    try:
        sim, _, inliers = align_poses(est, gtp, cfg)
    except ValueError as e:
        message = str(e)
        logger.warning("evaluation: %s", message)
    if sim is not None:
        aligned = sim.transform_poses({n: est[n] for n in common})
        r, p = pose_errors(aligned, gtp, common)
        for n, a, b in zip(common, r, p):
            per_image[n] = {"rotation_error_deg": float(a), "position_error": float(b), "inlier": n in inliers}
        idx = {n: i for i, n in enumerate(names)}
        for n, a in zip(common, r):
            rot[idx[n]] = a
        rot_stats, pos_stats = _stats(r), _stats(p)
    else:
        nan = {"median": float("nan"), "mean": float("nan"), "max": float("nan")}
        rot_stats, pos_stats = dict(nan), dict(nan)
    auc_rot = dict(zip(keys, pose_auc(rot, cfg.auc_thresholds))) if sim is not None else dict.fromkeys(keys, float("nan"))
    return ReconstructionEvaluation(
        num_gt=len(names),
        num_registered=len(common),
        num_align_inliers=len(inliers),
        rotation_error=rot_stats,
        position_error=pos_stats,
        auc=auc,
        auc_rotation=auc_rot,
        per_image=per_image,
        sim3=sim.to_dict() if sim is not None else None,
        extra_images=extra,
        message=message,
    )


def _fmt_thr(t: float) -> str:
    return f"{t:g}"


# --------------------------------------------------------------------------- localization


@dataclass
class LocalizationEvaluation:
    """Result of :func:`evaluate_localization`."""

    num_queries: int
    num_localized: int
    recall: dict[str, float]
    rotation_error_median: float
    position_error_median: float
    per_query: dict[str, dict[str, Any]]
    sim3: dict[str, Any] | None = None
    missing_gt: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def row(self) -> dict[str, Any]:
        r: dict[str, Any] = {"localized": f"{self.num_localized}/{self.num_queries}"}
        r.update({f"recall@{k}": v for k, v in self.recall.items()})
        r["rot_med_deg"] = self.rotation_error_median
        r["pos_med"] = self.position_error_median
        return r


def recall_key(pos: float, rot: float) -> str:
    return f"{pos:g}m,{rot:g}deg"


def evaluate_localization(
    estimates: Mapping[str, Pose] | str | Path,
    gt,
    queries: Sequence[str] | None = None,
    map_reconstruction=None,
    config: EvaluationConfig | Mapping | None = None,
) -> LocalizationEvaluation:
    """Localization recall and median errors against GT.

    Args:
        estimates: ``{name: (R, t)}`` cam_from_world in the map's frame, or a ``poses.txt`` path.
        gt: GT model (object, folder or pose dict).
        queries: names of all queries (the recall denominator: a query without an estimate
            is a failure). Default: every GT image that is not in ``map_reconstruction`` if
            given, else the names in ``estimates``.
        map_reconstruction: if given (object, folder or pose dict), a Sim(3) ``gt_from_map`` is
            fitted on the camera centres of its images (queries excluded) and applied to the
            estimates first; needed when the map is not in GT's frame (always for our maps:
            the mapper fixes an arbitrary gauge).
    Raises:
        InputError: a query has no GT pose is *not* an error (listed in ``missing_gt`` and left
        out of the denominator), but an empty query set is.
    """
    cfg = merge_config(EvaluationConfig, config)
    est = read_poses(estimates) if isinstance(estimates, (str, Path)) else dict(estimates)
    gtp = gt if isinstance(gt, Mapping) else poses_from_reconstruction(gt)
    map_poses = None
    if map_reconstruction is not None:
        map_poses = (
            map_reconstruction if isinstance(map_reconstruction, Mapping) else poses_from_reconstruction(map_reconstruction)
        )
    if queries is None:
        queries = [n for n in sorted(gtp) if n not in map_poses] if map_poses is not None else sorted(est)
    queries = list(queries)
    missing = [q for q in queries if q not in gtp]
    if missing:
        logger.warning("%d queries have no GT pose and are not evaluated: %s", len(missing), missing[:5])
    queries = [q for q in queries if q in gtp]
    if not queries:
        raise InputError("no query with a GT pose to evaluate")
    sim = None
    if map_poses is not None:
        qset = set(queries)
        ref = {n: p for n, p in map_poses.items() if n not in qset}
        sim, _, inl = align_poses(ref, gtp, cfg)
        logger.info("map -> GT Sim(3): scale %.4g, %d/%d inlier cameras", sim.scale, len(inl), len(ref))
        est = sim.transform_poses({q: est[q] for q in queries if q in est})
    localized = [q for q in queries if q in est]
    rot, pos = pose_errors(est, gtp, localized)
    per_query: dict[str, dict[str, Any]] = {q: {"localized": False} for q in queries}
    for q, r, p in zip(localized, rot, pos):
        per_query[q] = {"localized": True, "rotation_error_deg": float(r), "position_error": float(p)}
    recall = {}
    for pt, rt in cfg.recall_thresholds:
        ok = int(np.sum((pos < pt) & (rot < rt)))
        recall[recall_key(pt, rt)] = ok / len(queries)
    return LocalizationEvaluation(
        num_queries=len(queries),
        num_localized=len(localized),
        recall=recall,
        rotation_error_median=float(np.median(rot)) if len(rot) else float("nan"),
        position_error_median=float(np.median(pos)) if len(pos) else float("nan"),
        per_query=per_query,
        sim3=sim.to_dict() if sim is not None else None,
        missing_gt=missing,
    )


def save_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (NaN/inf written as null)."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(clean(data), indent=2))
