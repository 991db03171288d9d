"""pipelines/known_intrinsics.py: the calibrated reference is the mapped model with the known camera held."""

from __future__ import annotations

import sys
from pathlib import Path

import pycolmap

from conftest import REPO
from loftr_sfm.database import run_database
from loftr_sfm.evaluation import evaluate_reconstruction
from loftr_sfm.keypoints import run_keypoints
from loftr_sfm.sfm.mappers import run_mapper
from loftr_sfm.sfm.options import CameraOptions, MappingConfig

sys.path.insert(0, str(REPO / "datasets"))
import synthetic  # noqa: E402


def test_calibrated_reference_follows_the_intrinsics_given(tmp_path):
    sys.path.insert(0, str(REPO / "pipelines"))
    from known_intrinsics import calibrated_reference, main_camera

    out = tmp_path / "s"
    synthetic.generate(out, synthetic.SceneConfig(num_images=6, width=320, height=240, focal=280, arc_deg=50, seed=3))
    run_keypoints(out, out / "images")
    run_database(out, out / "images")
    gt = pycolmap.Reconstruction(str(out / "gt"))
    cam = next(iter(gt.cameras.values()))
    fx, fy, cx, cy = cam.focal_length_x, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y
    rec, _ = run_mapper(out / "database.db", out / "images", tmp_path / "m", "incremental",
                        MappingConfig(mapper="incremental"), CameraOptions(refine_principal_point=False))
    assert rec.num_reg_images() == 6
    right = calibrated_reference(rec, fx, fy, cx, cy)
    c = main_camera(right)
    assert c.model.name == "PINHOLE" and list(c.params) == [fx, fy, cx, cy]  # held
    err = evaluate_reconstruction(right, gt).row()["rot_med_deg"]
    assert err < 0.1
    off = calibrated_reference(rec, fx, fy, cx + 12.0, cy)  # a principal point 12 px off tilts the cameras
    assert evaluate_reconstruction(off, gt).row()["rot_med_deg"] > 5 * err
    assert main_camera(rec).model.name != "PINHOLE"  # the mapper's model itself is not changed
