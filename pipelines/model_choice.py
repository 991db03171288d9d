"""The mapping stage's choice between its two mappers' models, counted against GT.

For each database (with its image folder and GT model), both pycolmap mappers run with the stage's options;
for each model the program prints the registered images, the images placed right (median relative-rotation
error to the model's other images at most ``--right-deg``, no Sim(3) needed), the verified pairs between its
images, how many it explains (:mod:`loftr_sfm.sfm.checks`), its score (explained minus contradicted) and which
model the stage keeps when the fallback runs. Used for the table of docs/accuracy.md ("Which of the two models").

Usage:
    python pipelines/model_choice.py --db outputs/suite/eth3d-pipes/xfeat-star/database.db \
        --images ../shared/data/eth3d-pipes/images --gt ../shared/data/eth3d-pipes/gt [--db ... --images ... --gt ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def relative_rotation_errors(est: dict, gt: dict) -> dict[str, float]:
    """Each common image's median relative-rotation error (deg) to the other common images (no Sim(3) needed).

    ``est``, ``gt``: name -> (R (3, 3) world-to-camera, ...)."""
    from loftr_sfm.evaluation import rotation_error_deg

    names = [n for n in est if n in gt]
    if len(names) < 2:
        return {}
    R_est = np.stack([est[n][0] for n in names])
    R_gt = np.stack([gt[n][0] for n in names])
    # (i, j): rotation from image i to image j, estimated against GT
    rel_est = R_est[None] @ np.swapaxes(R_est, -1, -2)[:, None]
    rel_gt = R_gt[None] @ np.swapaxes(R_gt, -1, -2)[:, None]
    err = rotation_error_deg(rel_est, rel_gt)
    np.fill_diagonal(err, np.nan)
    return dict(zip(names, np.nanmedian(err, axis=1).tolist()))


def right_images(est: dict, gt: dict, max_deg: float) -> int:
    """Images whose median relative-rotation error to the other common images is at most ``max_deg``."""
    return sum(e <= max_deg for e in relative_rotation_errors(est, gt).values())


def main(argv: list[str] | None = None) -> int:
    from loftr_sfm.database import images_per_camera
    from loftr_sfm.evaluation import poses_from_reconstruction
    from loftr_sfm.sfm.cameras import resolve_principal_point
    from loftr_sfm.sfm.checks import explained_pairs
    from loftr_sfm.sfm.mappers import preference, run_mapper
    from loftr_sfm.sfm.model import quiet_pycolmap
    from loftr_sfm.sfm.options import MappingConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, action="append", required=True)
    ap.add_argument("--images", type=Path, action="append", required=True, help="one per --db, same order")
    ap.add_argument("--gt", type=Path, action="append", required=True, help="one per --db, same order")
    ap.add_argument("--right-deg", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not len(args.db) == len(args.images) == len(args.gt):
        ap.error("give one --images and one --gt per --db")
    quiet_pycolmap(False)
    cfg = MappingConfig()
    rows = []
    print("| database | mapper | registered | right | verified pairs | explained | score | kept |\n|---|---|---|---|---|---|---|---|")
    for db, images, gt_dir in zip(args.db, args.images, args.gt):
        per_camera = images_per_camera(db)
        cams = resolve_principal_point(cfg.cameras, per_camera)
        gt = poses_from_reconstruction(gt_dir)
        found = []
        with tempfile.TemporaryDirectory(prefix="model_choice_") as tmp:
            for mapper in ("incremental", "global"):
                rec, _ = run_mapper(db, images, Path(tmp) / mapper, mapper, cfg, cams, sum(per_camera.values()))
                if rec is None:
                    continue
                e = explained_pairs(rec, db)
                found.append({"database": str(db), "mapper": mapper, "registered": e.registered,
                              "points": rec.num_points3D(),
                              "right": right_images(poses_from_reconstruction(rec), gt, args.right_deg),
                              "verified_pairs": e.pairs, "explained": e.explained, "score": e.score})
        if found:
            best = max(found, key=preference)
            for r in found:
                r["kept"] = r is best
                print(f"| {db} | {r['mapper']} | {r['registered']} | {r['right']} | {r['verified_pairs']} | "
                      f"{r['explained']} | {r['score']:+d} | {'yes' if r['kept'] else ''} |", flush=True)
        rows += found
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
