"""The shared-camera rules, measured on the scene suite's bare pycolmap models.

For every GT scene of a finished suite run (``pipelines/scene_suite.py --work WORK``), the model that
pycolmap's incremental mapper made on our database (``WORK/<scene>/bare-<matcher>/model``) is given
shared cameras (:func:`loftr_sfm.sfm.cameras.share_cameras`) with each variant of the two camera
rules, and compared with GT: the principal point of a shared camera refined (the default) or held at
the image centre, and the second radial term (``share_cameras_radial``) on or off. The same model
enters every variant, so mapper noise plays no part in the differences.

    python pipelines/camera_rules.py --work outputs/suite [--matcher xfeat-star] [--scenes ...]

Prints one row per scene and variant (median rotation error after Sim(3), median position error,
AUC@1/5 of relative poses, the shared camera's principal point minus the image centre against GT's).
For the default variant, the refined principal point's offset from the centre is also given in units
of its standard deviation from bundle adjustment's covariance (pycolmap ``estimate_ba_covariance``):
a test of whether the data tells an off-centre principal point from a centred one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_suite import DATA, GT_SCENES  # noqa: E402

from loftr_sfm.evaluation import evaluate_reconstruction  # noqa: E402
from loftr_sfm.sfm.cameras import model_images_per_camera, share_cameras  # noqa: E402
from loftr_sfm.sfm.options import PRINCIPAL_POINT_MIN_IMAGES, CameraOptions  # noqa: E402

VARIANTS = {
    "bare (own cameras)": None,
    "pp refined + radial (default)": CameraOptions(),
    "pp centred + radial": CameraOptions(refine_principal_point=False),
    "pp refined, no radial": CameraOptions(share_cameras_radial=False),
    "pp centred, no radial": CameraOptions(refine_principal_point=False, share_cameras_radial=False),
}


def principal_offsets(rec, min_images: int = 1) -> list[tuple[float, float]]:
    """Principal point minus the image centre (px) of the cameras used by at least ``min_images`` images."""
    users = model_images_per_camera(rec)
    return [(round(c.principal_point_x - c.width / 2, 2), round(c.principal_point_y - c.height / 2, 2))
            for cid, c in rec.cameras.items() if users.get(cid, 0) >= min_images]


def principal_point_z(rec, min_images: int) -> list[tuple[float, float]]:
    """Principal point minus the image centre over its standard deviation (x, y), for the cameras used by
    at least ``min_images`` images: every image and camera of ``rec`` bundle-adjusted (intrinsics refined),
    then the covariance of each camera's parameters. ``rec`` is changed by the adjustment."""
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = True
    config = pycolmap.BundleAdjustmentConfig()
    for iid in rec.reg_image_ids():
        config.add_image(iid)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    adjuster.solve()
    cov = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster)
    users = model_images_per_camera(rec)
    out = []
    for cid, cam in rec.cameras.items():
        if users.get(cid, 0) < min_images or cov is None:
            continue
        c = cov.get_other_params_cov(cam.params)
        if c is None or c.shape[0] != len(cam.params):
            continue
        sd = np.sqrt(np.diag(c)[list(cam.principal_point_idxs())])
        off = np.array([cam.principal_point_x - cam.width / 2, cam.principal_point_y - cam.height / 2])
        out.append(tuple(np.round(off / sd, 1).tolist()))
    return out


def main(argv: list[str] | None = None) -> int:
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder of a finished scene_suite.py run")
    ap.add_argument("--matcher", default="xfeat-star")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--scenes", nargs="+", default=GT_SCENES)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    pycolmap.logging.minloglevel = 2
    rows = []
    print("| scene | variant | registered | rot_med_deg | pos_med | AUC@1 | AUC@5 | principal point - centre (px) "
          "| offset / sd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scene in args.scenes:
        model = args.work / scene / f"bare-{args.matcher}" / "model"
        if not model.is_dir():
            print(f"| {scene} | (no bare model in {model}) |||||||")
            continue
        gt = pycolmap.Reconstruction(str(args.data / scene / "gt"))
        gt_pp = np.median(principal_offsets(gt), axis=0).round(1).tolist()
        for name, cameras in VARIANTS.items():
            rec = pycolmap.Reconstruction(str(model))
            if cameras is not None:
                rec, _ = share_cameras(rec, cameras)
            e = evaluate_reconstruction(rec, gt).row()
            pp = principal_offsets(rec, PRINCIPAL_POINT_MIN_IMAGES) if cameras is not None else []
            z = principal_point_z(rec, PRINCIPAL_POINT_MIN_IMAGES) if cameras == CameraOptions() else []
            row = {"scene": scene, "variant": name, **e, "principal_point": pp, "gt_principal_point": gt_pp,
                   "principal_point_z": z}
            rows.append(row)
            print(f"| {scene} | {name} | {e['registered']} | {e['rot_med_deg']:.3f} | {e['pos_med']:.4f} | "
                  f"{e['AUC@1']:.3f} | {e['AUC@5']:.3f} | {pp[:2] if pp else '-'} (GT {gt_pp}) | {z or '-'} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
