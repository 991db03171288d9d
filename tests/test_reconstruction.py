"""Mapping stage: outputs, summary, stage times, fallback policy, triangulation from known poses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from loftr_sfm.database import run_database
from loftr_sfm.io import InputError
from loftr_sfm.keypoints import run_keypoints
from loftr_sfm.reconstruction import (
    MappingConfig,
    model_stats,
    read_stage_times,
    record_stage_time,
    run_mapping,
    triangulate_from_poses,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec_scene")
    synthetic.generate(out, synthetic.SceneConfig(num_images=5, width=320, height=240, focal=280, arc_deg=50, seed=5))
    run_keypoints(out, out / "images")
    run_database(out, out / "images")
    return out


def test_mapping_outputs_and_summary(scene):
    record_stage_time(scene, "matching", 12.5)
    s = run_mapping(scene, scene / "images", MappingConfig(mapper="incremental", overwrite=True))
    assert s["registered"] == 5 and s["num_images"] == 5
    assert s["points"] > 500 and 2.0 < s["mean_track_length"] <= 5.0
    assert s["duplicate_observations"] == 0
    assert 0 < s["mean_reprojection_error"] < 1.0
    assert s["times"]["matching"] == 12.5 and "keypoints" in s["times"] and "mapping" in s["times"]
    rec = pycolmap.Reconstruction(str(scene / "model"))
    assert rec.num_reg_images() == 5 and rec.num_points3D() == s["points"]
    assert pycolmap.Reconstruction(str(scene / "model_txt")).num_points3D() == s["points"]
    assert (scene / "points.ply").stat().st_size > 100
    assert json.loads((scene / "summary.json").read_text())["points"] == s["points"]
    assert model_stats(rec)["mean_track_length"] == pytest.approx(s["mean_track_length"])
    # up to date: reused, not recomputed
    mtime = (scene / "summary.json").stat().st_mtime_ns
    run_mapping(scene, scene / "images", MappingConfig(mapper="incremental"))
    assert (scene / "summary.json").stat().st_mtime_ns == mtime


def test_low_coverage_triggers_retry_then_other_mapper(scene):
    # an unreachable coverage target makes every attempt of the policy run
    s = run_mapping(scene, scene / "images",
                    MappingConfig(mapper="incremental", min_coverage=1.01, retry_seeds=1, overwrite=True))
    assert [(a["mapper"], a["seed"]) for a in s["attempts"]] == [("incremental", 0), ("incremental", 1), ("global", 0)]
    assert s["registered"] == max(a["registered"] for a in s["attempts"]) == 5


def test_stage_times_roundtrip(tmp_path):
    record_stage_time(tmp_path, "pairs", 1.0)
    record_stage_time(tmp_path, "pairs", 2.0)
    record_stage_time(tmp_path, "match", 3.0)
    assert read_stage_times(tmp_path) == {"pairs": 2.0, "match": 3.0}


def test_triangulate_from_gt_poses(scene):
    gt = pycolmap.Reconstruction(str(scene / "gt"))
    rec = triangulate_from_poses(gt, scene / "database.db", scene / "images", output=scene / "tri")
    assert rec.num_reg_images() == 5
    assert rec.num_points3D() > 500
    assert rec.compute_mean_reprojection_error() < 1.0
    # poses unchanged (by name)
    gtn = {im.name: im for im in gt.images.values()}
    for im in rec.images.values():
        np.testing.assert_allclose(im.cam_from_world().matrix(), gtn[im.name].cam_from_world().matrix(), atol=1e-9)
    assert pycolmap.Reconstruction(str(scene / "tri")).num_points3D() == rec.num_points3D()


def test_errors(tmp_path):
    with pytest.raises(InputError, match="database"):
        run_mapping(tmp_path, tmp_path)
    with pytest.raises(ValueError, match="mapper"):
        run_mapping(tmp_path, tmp_path, {"mapper": "hierarchical"})
