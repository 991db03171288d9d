"""The shared-camera rules on a photo set with known intrinsics but no GT poses.

For a database our stages wrote (e.g. ``loftr-sfm reconstruct`` on ``../shared/data/freiburg_sequence``,
whose README gives the camera's intrinsics), pycolmap's incremental mapper makes one model; a
**calibrated reference** is that model with every camera replaced by the known PINHOLE camera and
bundle-adjusted with the intrinsics held. Each camera-rule variant of ``camera_rules.py`` is applied to
the same mapper model and compared with the reference (median rotation error after Sim(3), AUC of the
relative poses) and with the known intrinsics (focal length, principal point). The reference shares the
model's matches, so it measures what the intrinsics cost, not the matches.

    python pipelines/known_intrinsics.py --db outputs/freiburg/database.db \
        --images ../shared/data/freiburg_sequence/images --intrinsics 535.4,539.2,320.1,247.6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from camera_rules import VARIANTS  # noqa: E402

from loftr_sfm.evaluation import evaluate_reconstruction  # noqa: E402
from loftr_sfm.sfm.cameras import model_images_per_camera, share_cameras  # noqa: E402
from loftr_sfm.sfm.mappers import run_mapper  # noqa: E402
from loftr_sfm.sfm.options import CameraOptions, MappingConfig  # noqa: E402


def calibrated_reference(rec, fx: float, fy: float, cx: float, cy: float):
    """A copy of ``rec`` with every camera PINHOLE (fx, fy, cx, cy), bundle-adjusted with the intrinsics held."""
    import pycolmap

    ref = pycolmap.Reconstruction(rec)
    for cid in list(ref.cameras):
        cam = ref.cameras[cid]
        ref.cameras[cid] = pycolmap.Camera(camera_id=cid, model="PINHOLE", width=cam.width, height=cam.height,
                                           params=[fx, fy, cx, cy])
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = options.refine_principal_point = options.refine_extra_params = False
    options.print_summary = False
    pycolmap.bundle_adjustment(ref, options)
    return ref


def main_camera(rec):
    """The camera used by most registered images."""
    users = model_images_per_camera(rec)
    return rec.cameras[max(users, key=users.get)]


def main(argv: list[str] | None = None) -> int:
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--intrinsics", required=True, help="fx,fy,cx,cy (COLMAP convention, pixel centre at +0.5)")
    args = ap.parse_args(argv)
    fx, fy, cx, cy = (float(v) for v in args.intrinsics.split(","))
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        rec, _ = run_mapper(args.db, args.images, Path(tmp), "incremental", MappingConfig(mapper="incremental"),
                            CameraOptions(refine_principal_point=False))
    if rec is None:
        print(f"{args.db}: no model")
        return 1
    ref = calibrated_reference(rec, fx, fy, cx, cy)
    print(f"{args.db}: {rec.num_reg_images()} images; known f {0.5 * (fx + fy):.1f}, principal point ({cx}, {cy})")
    print("| variant | rot_med_deg | AUC@1 | AUC@5 | focal (px) | principal point (px) |")
    print("|---|---|---|---|---|---|")
    for name, cameras in VARIANTS.items():
        model = pycolmap.Reconstruction(rec)
        if cameras is not None:
            model, _ = share_cameras(model, cameras)
        e = evaluate_reconstruction(model, ref).row()
        cam = main_camera(model)
        f = cam.mean_focal_length()
        print(f"| {name} | {e['rot_med_deg']:.3f} | {e['AUC@1']:.3f} | {e['AUC@5']:.3f} | {f:.1f} "
              f"({100 * (f / (0.5 * (fx + fy)) - 1):+.1f} %) | ({cam.principal_point_x:.1f}, {cam.principal_point_y:.1f}) "
              f"({np.hypot(cam.principal_point_x - cx, cam.principal_point_y - cy):.1f} off) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
