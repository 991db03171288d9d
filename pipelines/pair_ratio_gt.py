"""Which verified pairs an inlier-ratio rule would reject, counted against GT.

For every verified pair of a database (two-view geometry with >= 15 inliers), the share of its
inlier matches that agree with the GT relative pose (Sampson distance under ``--max-error`` px,
in undistorted coordinates of the GT cameras) says whether the pair is right (> 70 % agree) or
wrong (< 30 %). The table counts, per threshold of ``inliers / matches``, the right and wrong
pairs below it: a rejection rule is only worth having where what it rejects is mostly wrong.

Usage:
    python pipelines/pair_ratio_gt.py --db outputs/suite/castle-P30/xfeat-star/database.db \
        --gt ../shared/data/castle-P30/gt [--thresholds 0.1 0.15 0.2 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def pair_agreement(db_path: Path, gt_path: Path, max_error: float = 4.0) -> list[dict]:
    """Per verified pair: names, matches, inliers, inlier ratio and the share of inliers agreeing with GT."""
    import pycolmap

    from loftr_sfm.database import read_only
    from loftr_sfm.sfm.checks import epipolar_errors, verified_geometries

    gt = pycolmap.Reconstruction(str(gt_path))
    gt_images = {im.name: im for im in gt.images.values() if im.has_pose}
    names, keypoints, geometries = verified_geometries(db_path, 15, set(gt_images))
    with read_only(Path(db_path)) as con:
        num_matches = dict(con.execute("SELECT pair_id, rows FROM matches"))
    rows = []
    for a, b, inl in geometries:
        matches = int(num_matches.get(pycolmap.image_pair_to_pair_id(a, b), len(inl)))
        ia, ib = gt_images[names[a]], gt_images[names[b]]
        err = epipolar_errors(ia, ia.camera, keypoints[a][inl[:, 0]], ib, ib.camera, keypoints[b][inl[:, 1]])
        rows.append({"pair": [names[a], names[b]], "matches": matches, "inliers": len(inl),
                     "ratio": len(inl) / max(matches, 1), "agree": float(np.mean(err < max_error))})
    return rows


def count_below(rows: list[dict], thresholds: list[float]) -> list[dict]:
    """Right (> 70 % agree) and wrong (< 30 %) pairs under each inlier-ratio threshold, and in all."""
    right = [r for r in rows if r["agree"] > 0.7]
    wrong = [r for r in rows if r["agree"] < 0.3]
    out = [{"threshold": "all", "right": len(right), "wrong": len(wrong), "pairs": len(rows)}]
    for t in thresholds:
        out.append({"threshold": t, "right": sum(r["ratio"] < t for r in right),
                    "wrong": sum(r["ratio"] < t for r in wrong), "pairs": sum(r["ratio"] < t for r in rows)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True, nargs="+")
    ap.add_argument("--gt", type=Path, required=True, nargs="+", help="one GT model per database, same order")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25])
    ap.add_argument("--max-error", type=float, default=4.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if len(args.db) != len(args.gt):
        ap.error("give one --gt per --db")
    result = {}
    print("| database | ratio below | right pairs | wrong pairs | pairs |\n|---|---|---|---|---|")
    for db, gt in zip(args.db, args.gt):
        rows = pair_agreement(db, gt, args.max_error)
        counts = count_below(rows, args.thresholds)
        result[str(db)] = {"pairs": rows, "counts": counts}
        for c in counts:
            print(f"| {db.parent.parent.name} | {c['threshold']} | {c['right']} | {c['wrong']} | {c['pairs']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
