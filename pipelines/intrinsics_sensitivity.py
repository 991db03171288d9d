"""How far a model's accuracy against GT moves with camera intrinsics its observations cannot tell apart.

A model's focal lengths, principal points and distortion are estimated from the same observations
as its poses. Along directions the observations hardly constrain (a focal length a tenth of a per
cent off, tangential distortion traded against the principal point), bundle adjustment finds
poses that reproject the observations as well as the mapped ones and still differ from the GT's.
This program adjusts a model again (poses and points, plus the intrinsics each variant frees) with
the mapping stage's bundle adjustment (:func:`loftr_sfm.sfm.track_refinement.bundle_adjust`, Huber
loss) and prints, per variant, the mean reprojection error and the accuracy against the GT
(:mod:`loftr_sfm.evaluation`). A difference between two models smaller than what the variants
span at equal reprojection error is one their observations do not decide.

Variants (``--variants``, default all of them):

- ``mapped``: the model as it is;
- ``refit``: its intrinsics, adjusted again (the others' baseline: the same solver);
- ``focal-P`` / ``focal+P``: every focal length scaled by 1 -/+ P % and held, principal point
  (for cameras of at least 5 images, as the mapping stage) and distortion refined; P from
  ``--focal-steps`` (per cent, default 0.1 0.2);
- ``opencv``: every camera converted to OPENCV (fx, fy, principal point, k1, k2, p1, p2; from
  SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL or OPENCV), all refined;
- ``reference``: every image gets the GT's camera of the same image, held (needs the same image
  sizes and, per camera of the model, one GT camera).

Run: ``python pipelines/intrinsics_sensitivity.py --model OUT/model --gt ../shared/data/herzjesu-P8/gt
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loftr_sfm.evaluation import evaluate_reconstruction, load_reconstruction  # noqa: E402
from loftr_sfm.sfm import CameraOptions  # noqa: E402
from loftr_sfm.sfm.cameras import model_images_per_camera, resolve_principal_point  # noqa: E402
from loftr_sfm.sfm.track_refinement import bundle_adjust  # noqa: E402

logger = logging.getLogger("intrinsics_sensitivity")

VARIANTS = ("mapped", "refit", "focal", "opencv", "reference")
# OPENCV parameters (fx, fy, cx, cy, k1, k2, p1, p2) from the models that are special cases of it
_TO_OPENCV = {
    "SIMPLE_PINHOLE": lambda p: [p[0], p[0], p[1], p[2], 0, 0, 0, 0],
    "PINHOLE": lambda p: [p[0], p[1], p[2], p[3], 0, 0, 0, 0],
    "SIMPLE_RADIAL": lambda p: [p[0], p[0], p[1], p[2], p[3], 0, 0, 0],
    "RADIAL": lambda p: [p[0], p[0], p[1], p[2], p[3], p[4], 0, 0],
    "OPENCV": list,
}


class VariantError(ValueError):
    """A variant that does not apply to this model (reported, the others still run)."""


def _replace_camera(rec, camera_id: int, model: str, params) -> None:
    import pycolmap

    cam = rec.cameras[camera_id]
    rec.cameras[camera_id] = pycolmap.Camera(model=model, width=cam.width, height=cam.height,
                                             params=np.asarray(params, np.float64), camera_id=camera_id)


def _to_opencv(rec) -> None:
    for cid, cam in list(rec.cameras.items()):
        convert = _TO_OPENCV.get(cam.model.name)
        if convert is None:
            raise VariantError(f"camera {cid} is {cam.model.name}, which OPENCV does not contain")
        _replace_camera(rec, cid, "OPENCV", convert(np.asarray(cam.params)))


def _scale_focal(rec, factor: float) -> None:
    for cid, cam in list(rec.cameras.items()):
        params = np.asarray(cam.params, np.float64).copy()
        params[list(cam.focal_length_idxs())] *= factor
        _replace_camera(rec, cid, cam.model.name, params)


def _reference_cameras(rec, gt) -> None:
    """Give every camera of ``rec`` the GT camera of its images (one per camera, same size)."""
    gt_by_name = {im.name: im for im in gt.images.values()}
    chosen: dict[int, int] = {}
    for i in rec.reg_image_ids():
        im = rec.image(i)
        g = gt_by_name.get(im.name)
        if g is None:
            continue
        if chosen.setdefault(im.camera_id, g.camera_id) != g.camera_id:
            raise VariantError(f"the images of camera {im.camera_id} have different GT cameras")
    if not chosen:
        raise VariantError("no image of the model is in the GT")
    for cid, gid in chosen.items():
        cam, ref = rec.cameras[cid], gt.cameras[gid]
        if (cam.width, cam.height) != (ref.width, ref.height):
            raise VariantError(f"camera {cid} is {cam.width}x{cam.height}, its GT camera {ref.width}x{ref.height}")
        _replace_camera(rec, cid, ref.model.name, np.asarray(ref.params))


def _measure(rec, gt, label: str) -> dict:
    rec.update_point_3d_errors()
    ev = evaluate_reconstruction(rec, gt)
    cams = sorted(rec.cameras.items())
    return {
        "variant": label,
        "reprojection_px": float(rec.compute_mean_reprojection_error()),
        "rot_med_deg": ev.rotation_error["median"],
        "pos_med": ev.position_error["median"],
        **{f"AUC@{k}": v for k, v in ev.auc.items()},
        "camera": {"model": cams[0][1].model.name, "params": [float(v) for v in cams[0][1].params]} if cams else None,
    }


def sensitivity(model: Path | str, gt: Path | str, variants=VARIANTS, focal_steps=(0.1, 0.2),
                num_threads: int = -1) -> list[dict]:
    """One row per variant (see the module docstring); a variant that does not apply gets a ``skipped`` reason."""
    import pycolmap

    rec, ref = load_reconstruction(model), load_reconstruction(gt)
    # the principal point as the mapping stage's auto rule would refine it (cameras of 5+ images)
    refine_pp = resolve_principal_point(CameraOptions(), model_images_per_camera(rec)).refine_principal_point
    jobs = []  # (label, prepare, refine_focal, refine_pp, refine_extra)
    for v in variants:
        if v == "mapped":
            jobs.append(("mapped", None, None, None, None))
        elif v == "refit":
            jobs.append(("refit", lambda r: None, True, refine_pp, True))
        elif v == "focal":
            for step in focal_steps:
                for sign in (-1, 1):
                    factor = 1 + sign * step / 100
                    scale = lambda r, f=factor: _scale_focal(r, f)  # noqa: E731
                    jobs.append((f"focal{sign * step:+g}%", scale, False, refine_pp, True))
        elif v == "opencv":
            jobs.append(("opencv", _to_opencv, True, refine_pp, True))
        elif v == "reference":
            jobs.append(("reference", lambda r: _reference_cameras(r, ref), False, False, False))
        else:
            raise ValueError(f"unknown variant {v!r}; choose from {VARIANTS}")
    rows = []
    for label, prepare, rf, rpp, rx in jobs:
        work = pycolmap.Reconstruction(rec)  # a copy
        if prepare is not None:
            try:
                prepare(work)
            except VariantError as e:
                logger.warning("%s: %s, skipped", label, e)
                rows.append({"variant": label, "skipped": str(e)})
                continue
            bundle_adjust(work, rf, rpp, rx, num_threads, 1.0)
        rows.append(_measure(work, ref, label))
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["variant", "reprojection_px", "rot_med_deg", "pos_med", "AUC@1", "AUC@2", "AUC@5", "camera"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['variant']} | skipped: {r['skipped']} |")
            continue
        cam = r["camera"]
        cells = [r["variant"], f"{r['reprojection_px']:.4f}", f"{r['rot_med_deg']:.3f}", f"{r['pos_med']:.4f}",
                 *(f"{r.get(k, float('nan')):.3f}" for k in ("AUC@1", "AUC@2", "AUC@5")),
                 f"{cam['model']} " + " ".join(f"{v:.5g}" for v in cam["params"]) if cam else ""]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--gt", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--focal-steps", nargs="+", type=float, default=[0.1, 0.2], help="per cent")
    ap.add_argument("--num-threads", type=int, default=-1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    rows = sensitivity(a.model, a.gt, a.variants, a.focal_steps, a.num_threads)
    print(f"{a.model} against {a.gt}:")
    print(format_table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
