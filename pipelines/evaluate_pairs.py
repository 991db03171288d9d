"""Two-view accuracy of raw matches: relative pose AUC against a GT model (matcher quality alone).

For every pair of an output folder's ``pairs.txt`` whose GT optical axes are less than
``--max-angle`` degrees apart, the raw matches of ``matches.h5`` (the matching stage's output,
before any merge) give an essential matrix with the GT intrinsics (OpenCV RANSAC, threshold in
pixels); its pose error is max(rotation error, translation direction error) against GT, and
the AUC at 5/10/20 degrees is reported as in the LoFTR paper. This separates the matcher's
precision from the merge, the database and the mapper (``evaluate_scenes.py`` measures those).

Usage:
    python pipelines/evaluate_pairs.py --gt ../shared/data/castle-P30/gt \
        outputs/eval/castle-P30/sift/exhaustive outputs/eval/castle-P30/xfeat-star/exhaustive
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loftr_sfm.evaluation import load_reconstruction, pose_auc, rigid_to_pose, rotation_error_deg  # noqa: E402
from loftr_sfm.io import find_pair, read_pairs  # noqa: E402

THRESHOLDS = (5.0, 10.0, 20.0)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two 3-vectors in degrees."""
    c = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pair_error(k0: np.ndarray, k1: np.ndarray, K0: np.ndarray, K1: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray,
               threshold: float) -> float:
    """Relative pose error (deg) of the essential matrix estimated from matches in COLMAP pixels."""
    if len(k0) < 5:
        return float("inf")
    # normalized coordinates: one RANSAC for two different cameras (threshold in pixels of a mean focal)
    n0 = cv2.undistortPoints(k0.reshape(-1, 1, 2).astype(np.float64), K0, None).reshape(-1, 2)
    n1 = cv2.undistortPoints(k1.reshape(-1, 1, 2).astype(np.float64), K1, None).reshape(-1, 2)
    f = 0.25 * (K0[0, 0] + K0[1, 1] + K1[0, 0] + K1[1, 1])
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.RANSAC, prob=0.99999, threshold=threshold / f)
    if E is None:
        return float("inf")
    best = float("inf")
    for Ei in np.split(E, len(E) // 3):
        _, R, t, _ = cv2.recoverPose(Ei, n0, n1, np.eye(3), mask=mask.copy())
        best = min(best, max(float(rotation_error_deg(R[None], R_gt[None])[0]), angle_deg(t.ravel(), t_gt)))
    return best


def evaluate(folder: Path, gt_dir: Path, max_angle: float, threshold: float) -> dict:
    rec = load_reconstruction(gt_dir)
    images = {im.name: im for im in rec.images.values() if im.has_pose}
    errors, counts = [], []
    with h5py.File(folder / "matches.h5", "r") as f:
        for a, b in read_pairs(folder / "pairs.txt"):
            if a not in images or b not in images:
                continue
            (Ra, ta), (Rb, tb) = rigid_to_pose(images[a].cam_from_world()), rigid_to_pose(images[b].cam_from_world())
            if angle_deg(Ra[2], Rb[2]) > max_angle:
                continue
            try:
                key, reverse = find_pair(f, a, b)
            except KeyError:
                errors.append(float("inf"))
                continue
            k0, k1 = f[key]["keypoints0"][()] + 0.5, f[key]["keypoints1"][()] + 0.5  # OpenCV -> COLMAP pixels
            if reverse:
                k0, k1 = k1, k0
            R_gt = Rb @ Ra.T
            K0 = rec.cameras[images[a].camera_id].calibration_matrix()
            K1 = rec.cameras[images[b].camera_id].calibration_matrix()
            errors.append(pair_error(k0, k1, K0, K1, R_gt, tb - R_gt @ ta, threshold))
            counts.append(len(k0))
    errors_arr = np.array(errors)
    return {
        "folder": str(folder),
        "pairs": len(errors),
        **{f"AUC@{t:g}": a for t, a in zip(THRESHOLDS, pose_auc(errors_arr, THRESHOLDS))},
        "median_error_deg": float(np.median(errors_arr)) if len(errors) else float("nan"),
        "median_matches": float(np.median(counts)) if counts else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="output folders with pairs.txt and a raw matches.h5")
    ap.add_argument("--gt", type=Path, required=True, help="GT COLMAP model folder")
    ap.add_argument("--max-angle", type=float, default=60.0, help="only pairs whose GT optical axes are closer (deg)")
    ap.add_argument("--threshold", type=float, default=0.5, help="RANSAC threshold (px)")
    args = ap.parse_args(argv)
    cols = ["folder", "pairs", "AUC@5", "AUC@10", "AUC@20", "median_error_deg", "median_matches"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for folder in args.folders:
        r = evaluate(folder, args.gt, args.max_angle, args.threshold)
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
