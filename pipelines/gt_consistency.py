"""How well a reconstruction's own observations fit the ground-truth poses (a check of pseudo-GT).

Pose errors against a pseudo ground truth (fox's ``gt/`` is a COLMAP model) mix the model's
errors with the reference's. This program asks the data instead: every track of the model with
at least ``--min-track`` observations in images of the GT is triangulated twice, linearly from
undistorted normalized coordinates, once with the model's own cameras and poses and once with
the GT's, and the reprojection errors of its observations are compared (pixels: normalized error
times the focal length of the camera used). If the GT reprojects the model's observations nearly
as well as the model's own poses do, the pose differences lie in directions the observations
hardly constrain, and the model's data do not contradict the reference there.

Run: ``python pipelines/gt_consistency.py --model OUT/model --gt ../shared/data/fox/gt [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loftr_sfm.evaluation import load_reconstruction, poses_from_reconstruction  # noqa: E402


def _triangulate_errors(uv: np.ndarray, P: np.ndarray, f: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Per-observation reprojection error (px) of linearly triangulated tracks.

    Args:
        uv: (N, 2) normalized undistorted coordinates, sorted by track.
        P: (N, 3, 4) cam_from_world of each observation's image.
        f: (N,) focal length (px) of each observation's camera.
        track: (N,) track id of each observation, sorted.
    Returns:
        (N,) errors; NaN for observations behind their camera.
    """
    err = np.full(len(uv), np.nan)
    starts = np.flatnonzero(np.r_[True, track[1:] != track[:-1]])
    lengths = np.diff(np.r_[starts, len(track)])
    for L in np.unique(lengths):  # tracks of one length at a time: one batched SVD
        idx = starts[lengths == L][:, None] + np.arange(L)  # (T, L)
        Pi, x, y = P[idx], uv[idx, 0], uv[idx, 1]
        A = np.concatenate([x[..., None] * Pi[..., 2, :] - Pi[..., 0, :],
                            y[..., None] * Pi[..., 2, :] - Pi[..., 1, :]], axis=1)  # (T, 2L, 4)
        X = np.linalg.svd(A)[2][:, -1]  # (T, 4)
        X = X[:, :3] / X[:, 3:]
        c = np.einsum("tlij,tj->tli", Pi[..., :3], X) + Pi[..., 3]  # (T, L, 3)
        proj = c[..., :2] / c[..., 2:]
        e = np.linalg.norm(proj - uv[idx], axis=-1) * f[idx]
        e[c[..., 2] <= 0] = np.nan
        err[idx] = e
    return err


def consistency(model: Path, gt: Path, min_track: int = 3) -> dict:
    """Reprojection errors of ``model``'s tracks with its own poses and with ``gt``'s (see the module docstring)."""
    rec, ref = load_reconstruction(model), load_reconstruction(gt)
    ref_images = {im.name: im for im in ref.images.values()}
    own_poses, ref_poses = poses_from_reconstruction(rec), poses_from_reconstruction(ref)
    pid, uv_own, uv_gt, P_own, P_gt, f_own, f_gt = [], [], [], [], [], [], []
    for im in rec.images.values():
        g = ref_images.get(im.name)
        pts = [p for p in im.points2D if p.has_point3D()]
        if g is None or not pts or im.name not in own_poses or g.name not in ref_poses:
            continue
        xy = np.array([p.xy for p in pts], np.float64)  # COLMAP convention in both models
        cam, gcam = rec.cameras[im.camera_id], ref.cameras[g.camera_id]
        n = len(pts)
        pid.append(np.array([p.point3D_id for p in pts], np.int64))
        uv_own.append(np.asarray(cam.cam_from_img(xy), np.float64))
        uv_gt.append(np.asarray(gcam.cam_from_img(xy), np.float64))
        for P, (R, t) in ((P_own, own_poses[im.name]), (P_gt, ref_poses[g.name])):
            P.append(np.repeat(np.c_[R, t][None], n, 0))
        f_own.append(np.full(n, cam.mean_focal_length()))
        f_gt.append(np.full(n, gcam.mean_focal_length()))
    if not pid:
        raise SystemExit(f"{model}: no observation in an image of {gt}")
    pid = np.concatenate(pid)
    o = np.argsort(pid, kind="stable")
    pid = pid[o]
    counts = np.bincount(np.unique(pid, return_inverse=True)[1])
    keep = np.repeat(counts >= min_track, counts)
    o, pid = o[keep], pid[keep]
    out = {"model": str(model), "gt": str(gt), "tracks": int((counts >= min_track).sum()), "observations": int(len(o))}
    for label, uv, P, f in (("own_poses", uv_own, P_own, f_own), ("gt_poses", uv_gt, P_gt, f_gt)):
        e = _triangulate_errors(np.concatenate(uv)[o], np.concatenate(P)[o], np.concatenate(f)[o], pid)
        e = e[np.isfinite(e)]
        out[label] = {"mean_px": float(e.mean()), "median_px": float(np.median(e)),
                      "rms_below_4px": float(np.sqrt(np.mean(e[e < 4] ** 2)))}
    out["gt_over_own_mean"] = out["gt_poses"]["mean_px"] / max(out["own_poses"]["mean_px"], 1e-12)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--gt", type=Path, required=True)
    ap.add_argument("--min-track", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = consistency(a.model, a.gt, a.min_track)
    own, ref = res["own_poses"], res["gt_poses"]
    print(f"{a.model}: {res['tracks']} tracks ({res['observations']} observations); reprojection error with its own "
          f"poses mean {own['mean_px']:.3f} / median {own['median_px']:.3f} px, with the GT poses "
          f"{ref['mean_px']:.3f} / {ref['median_px']:.3f} px (x{res['gt_over_own_mean']:.3f})")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
