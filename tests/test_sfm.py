"""Mapping stage (loftr_sfm.sfm): outputs, summary, resume, the one fallback run, cameras, refinement."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from loftr_sfm.database import run_database
from loftr_sfm.utils import changed_options
from loftr_sfm.io import InputError
from loftr_sfm.keypoints import run_keypoints
from loftr_sfm.sfm import CameraOptions, MappingConfig, model_stats, run_mapping, triangulate_from_poses
from loftr_sfm.sfm import cameras as sfm_cameras
from loftr_sfm.sfm import mappers, stage
from loftr_sfm.sfm.cameras import camera_family, camera_groups, params_as, resolve_principal_point, share_cameras, \
    with_cameras
from loftr_sfm.sfm.mappers import global_options, incremental_options
from loftr_sfm.utils import merge_config
from loftr_sfm.workspace import read_stage_times, record_stage_time

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
    # the scene's camera has f = 280 px; the database starts from 1.2 x the larger image side (384 px)
    assert s["focal_change"] == pytest.approx(280 / 384, rel=0.02)
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
    # still up to date after someone only read the database (pycolmap rewrites the file when it opens it)
    with pycolmap.Database.open(str(scene / "database.db")) as db:
        assert db.num_images() == 5
    os.utime(scene / "database.db", ns=(mtime + 10**9, mtime + 10**9))
    run_mapping(scene, scene / "images", MappingConfig(mapper="incremental"))
    assert (scene / "summary.json").stat().st_mtime_ns == mtime
    # a model made before an option existed is up to date while that option keeps its default value
    record = json.loads((scene / "summary.json").read_text())
    del record["config"]["global_tracks_per_view"], record["config"]["cameras"]["share_cameras_radial"]
    (scene / "summary.json").write_text(json.dumps(record))
    mtime = (scene / "summary.json").stat().st_mtime_ns
    run_mapping(scene, scene / "images", MappingConfig(mapper="incremental"))
    assert (scene / "summary.json").stat().st_mtime_ns == mtime
    # a value other than the default, or an option the library no longer has, makes the model stale
    now = stage._record(MappingConfig())
    assert changed_options(record["config"], now) == changed_options(stage._record(MappingConfig(mapper="incremental")), now)
    assert changed_options(record["config"], now) != changed_options(
        stage._record(MappingConfig(mapper="incremental", global_tracks_per_view=300)), now)
    assert "removed_option" in changed_options({**record["config"], "removed_option": 1}, now)


def test_a_focal_length_far_from_its_start_is_reported(scene, tmp_path, monkeypatch, caplog):
    out = tmp_path / "s"
    shutil.copytree(scene, out)
    real = stage.start_focal_lengths
    monkeypatch.setattr(stage, "start_focal_lengths", lambda db: {n: f / 5 for n, f in real(db).items()})
    with caplog.at_level("WARNING", logger="loftr_sfm.sfm.stage"):
        s = run_mapping(out, out / "images", MappingConfig(mapper="incremental", overwrite=True))
    assert s["registered"] == 5 and s["focal_change"] == pytest.approx(5 * 280 / 384, rel=0.02)
    assert len(s["attempts"]) == 1  # every image registered: no second run
    assert "3.6x the starting guess" in caplog.text and "--camera-params" in caplog.text
    from loftr_sfm.report.run import collect

    assert any("3.6x the starting guess" in n for n in collect(out, out / "images")["notes"])  # the report says it too
    assert not any("starting guess" in n for n in collect(scene, scene / "images")["notes"])  # 0.73x: nothing to say


def test_far_focal_lengths_with_images_left_out_map_again_with_one_camera(scene, tmp_path, monkeypatch):
    """A first model that leaves images out with focal lengths > 3x the guess: the mapper runs once more on a
    copy of the database whose guessed images share one camera at the focal length found."""
    from loftr_sfm.database import database_fingerprint
    from loftr_sfm.evaluation import evaluate_reconstruction

    out = tmp_path / "s"
    shutil.copytree(scene, out)
    real_start, real_run = stage.start_focal_lengths, mappers.run_mapper
    monkeypatch.setattr(stage, "start_focal_lengths", lambda db: {n: f / 5 for n, f in real_start(db).items()})
    runs = []

    def first_misses_one(db_path, images, work, mapper, cfg, cameras, num_images=0):
        rec, n = real_run(db_path, images, work, mapper, cfg, cameras, num_images)
        runs.append((db_path, cameras))
        if len(runs) == 1:
            rec.deregister_frame(rec.image(min(rec.reg_image_ids())).frame_id)
        return rec, n

    monkeypatch.setattr(mappers, "run_mapper", first_misses_one)
    before = database_fingerprint(out / "database.db")
    s = run_mapping(out, out / "images", MappingConfig(overwrite=True))
    assert [(a["registered"], a["chosen"]) for a in s["attempts"]] == [(4, False), (5, True)]
    assert s["attempts"][1]["score"] > s["attempts"][0]["score"] > 0  # kept: it explains more verified pairs
    assert s["registered"] == 5 and s["focal_change"] == pytest.approx(5 * 280 / 384, rel=0.03)
    # the second run: on a copy, the focal length found (the scene's 280 px) held while mapping
    (found,) = s["attempts"][1]["focal_lengths"].items()
    assert found[0] == "SIMPLE_RADIAL 320x240" and found[1] == pytest.approx(280, rel=0.03)
    assert runs[1][0] != out / "database.db" and not runs[1][1].refine_focal_length
    assert not runs[1][1].refine_principal_point and runs[1][1].refine_extra_params
    assert database_fingerprint(out / "database.db") == before
    rec = pycolmap.Reconstruction(str(out / "model"))
    (cam,) = {rec.image(i).camera_id: rec.image(i).camera for i in rec.reg_image_ids()}.values()
    assert cam.focal_length == pytest.approx(280, rel=0.02)  # refined after mapping ...
    assert (cam.principal_point_x, cam.principal_point_y) == (160, 120)  # ... the principal point held
    assert evaluate_reconstruction(out / "model", out / "gt").row()["rot_med_deg"] < 0.3
    # a new model with more images that contradicts the verified pairs (two images turned) is not kept
    real_remap = mappers.remap_with_estimated_cameras

    def turned(*args):
        new, attempt = real_remap(*args)
        return _turned(new, sorted(im.name for im in new.images.values())[:2], 30.0), attempt

    runs.clear()
    monkeypatch.setattr(mappers, "remap_with_estimated_cameras", turned)
    s = run_mapping(out, out / "images", MappingConfig(overwrite=True))
    assert [(a["registered"], a["chosen"]) for a in s["attempts"]] == [(4, True), (5, False)]
    assert s["registered"] == 4 and s["attempts"][1]["score"] < s["attempts"][0]["score"]
    monkeypatch.setattr(mappers, "remap_with_estimated_cameras", real_remap)
    # off, or a first model that registers every image: one run
    runs.clear()
    s = run_mapping(out, out / "images", MappingConfig(overwrite=True, cameras=CameraOptions(remap_far_focal=False)))
    assert [a["registered"] for a in s["attempts"]] == [4] and len(runs) == 1
    runs.append(None)  # no image left out from now on
    s = run_mapping(out, out / "images", MappingConfig(overwrite=True))
    assert [a["registered"] for a in s["attempts"]] == [5] and len(runs) == 3


def test_write_start_cameras_gives_the_guessed_images_one_camera(scene, tmp_path):
    db = tmp_path / "database.db"
    shutil.copy2(scene / "database.db", db)
    start = stage.start_focal_lengths(db)
    names = sorted(start)
    moved = sfm_cameras.write_start_cameras(db, {("SIMPLE_RADIAL", 320, 240): 281.5}, {n: start[n] for n in names[1:]})
    assert moved == 4
    with pycolmap.Database.open(str(db)) as d:
        images = {im.name: im for im in d.read_all_images()}
        cams = {c.camera_id: c for c in d.read_all_cameras()}
    ids = {images[n].camera_id for n in names[1:]}
    assert len(ids) == 1 and images[names[0]].camera_id not in ids
    cam = cams[ids.pop()]
    assert cam.params.tolist() == [281.5, 160, 120, 0] and cam.has_prior_focal_length
    assert stage.start_focal_lengths(db) == {names[0]: start[names[0]]}  # no longer a guess
    assert sfm_cameras.write_start_cameras(db, {("PINHOLE", 320, 240): 300.0}, start) == 0  # no such kind
    # a database with rigs and frames (COLMAP's import_images) names cameras in its frames: left as it is
    framed = tmp_path / "framed.db"
    with pycolmap.Database.open(str(framed)) as d:
        cid = d.write_camera(pycolmap.Camera.create_from_model_name(0, "SIMPLE_RADIAL", 100.0, 64, 48))
        sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cid)
        rig = pycolmap.Rig()
        rig.add_ref_sensor(sensor)
        frame = pycolmap.Frame()
        frame.rig_id = d.write_rig(rig)
        frame.add_data_id(pycolmap.data_t(sensor, d.write_image(pycolmap.Image(name="a.png", camera_id=cid))))
        d.write_frame(frame)
    assert sfm_cameras.write_start_cameras(framed, {("SIMPLE_RADIAL", 64, 48): 300.0}, {"a.png": 100.0}) == 0
    with pycolmap.Database.open(str(framed)) as d:
        assert d.num_cameras() == 1 and d.read_image(1).camera_id == cid


def test_a_calibration_given_to_the_database_is_held(scene, tmp_path):
    """--camera-params is a known calibration: the model keeps it as given unless hold_known_calibration is off."""
    out = tmp_path / "s"
    shutil.copytree(scene, out)
    cam = next(iter(pycolmap.Reconstruction(str(scene / "gt")).cameras.values()))
    given = [290.0, 290.0, cam.principal_point_x, cam.principal_point_y]  # the focal length 3.6 % off the truth (280)
    run_database(out, out / "images", {"camera_model": "PINHOLE", "camera_params": ",".join(map(str, given)),
                                       "overwrite": True})
    s = run_mapping(out, out / "images", MappingConfig(mapper="incremental", overwrite=True))
    rec = pycolmap.Reconstruction(str(out / "model"))
    assert s["registered"] == 5 and s["known_calibration_held"] and s["shared_cameras"] is None
    assert all(c.params.tolist() == given for c in rec.cameras.values())
    s = run_mapping(out, out / "images", MappingConfig(mapper="incremental", overwrite=True,
                                                       cameras=CameraOptions(hold_known_calibration=False)))
    rec = pycolmap.Reconstruction(str(out / "model"))
    assert s["registered"] == 5 and not s["known_calibration_held"]
    assert all(abs(c.mean_focal_length() - 280.0) < abs(290.0 - 280.0) for c in rec.cameras.values())  # refined


def test_point_colours_follow_the_exif_orientation(scene, tmp_path):
    """Photos stored rotated with an EXIF orientation tag (as phones do): the points take the colours of the
    photos as displayed, where their keypoints are (pycolmap's own extraction reads the stored pixels)."""
    from PIL import Image

    from loftr_sfm.io import read_image
    from loftr_sfm.sfm.model import color_points

    out = tmp_path / "s"
    shutil.copytree(scene, out)
    for path in sorted((out / "images").iterdir()):
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 deg clockwise to display": store the picture turned the other way
        Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
        assert np.array_equal(read_image(path), read_image(scene / "images" / path.name))  # displayed the same
    s = run_mapping(out, out / "images", MappingConfig(mapper="incremental", overwrite=True))
    rec = pycolmap.Reconstruction(str(out / "model"))
    assert s["registered"] == 5 and rec.num_points3D() > 500
    written = {pid: p.color.copy() for pid, p in rec.points3D.items()}
    assert color_points(rec, scene / "images") == 5  # the unrotated photos: the pixels as displayed
    assert all(np.array_equal(written[pid], p.color) for pid, p in rec.points3D.items())
    assert np.mean([c.sum() > 0 for c in written.values()]) > 0.99


def test_the_opt_in_fallback_runs_the_other_mapper_once_when_too_few_images_register(scene, tmp_path, monkeypatch,
                                                                                     caplog):
    (tmp_path / "database.db").write_bytes((scene / "database.db").read_bytes())
    real = mappers.run_mapper

    def short(db_path, images, work, mapper, cfg, cameras, num_images=0):  # the incremental mapper misses an image
        rec, n = real(db_path, images, work, mapper, cfg, cameras, num_images)
        if mapper == "incremental":
            rec.deregister_frame(rec.image(min(rec.reg_image_ids())).frame_id)
        return rec, n

    monkeypatch.setattr(mappers, "run_mapper", short)
    with caplog.at_level("WARNING", logger="loftr_sfm"):
        s = run_mapping(tmp_path, scene / "images", {"mapper": "incremental"})  # the fallback is opt-in
    assert [a["mapper"] for a in s["attempts"]] == ["incremental"] and s["registered"] == 4
    left = s["unregistered_images"]
    assert len(left) == 1 and f"1 of 5 images have no pose ({left[0]})" in caplog.text
    s = run_mapping(tmp_path, scene / "images", {"mapper": "incremental", "fallback": True})  # 4/5 < 90 %
    assert [(a["mapper"], a["registered"]) for a in s["attempts"]] == [("incremental", 4), ("global", 5)]
    assert [a["chosen"] for a in s["attempts"]] == [False, True]
    assert s["mapper"] == "global" and s["registered"] == 5 and s["unregistered_images"] == []
    s = run_mapping(tmp_path, scene / "images", {"mapper": "incremental", "fallback": True,
                                                 "min_registered": 0.8})  # 4/5 is enough
    assert [a["mapper"] for a in s["attempts"]] == ["incremental"] and s["registered"] == 4
    assert len(s["unregistered_images"]) == 1
    # the other way round: the global mapper's full model needs no second run
    s = run_mapping(tmp_path, scene / "images", {"mapper": "global"})
    assert [a["mapper"] for a in s["attempts"]] == ["global"] and s["unregistered_images"] == []


def _turned(rec, names, degrees: float):
    """A copy of ``rec`` with the images ``names`` turned by ``degrees`` about their own x axis (across the
    epipolar lines of the scene's side-by-side cameras)."""
    out = pycolmap.Reconstruction(rec)
    turn = pycolmap.Rotation3d(np.array([np.sin(np.radians(degrees) / 2), 0.0, 0.0, np.cos(np.radians(degrees) / 2)]))
    for im in out.images.values():
        if im.name in names:
            pose = im.cam_from_world()
            out.frame(im.frame_id).rig_from_world = pycolmap.Rigid3d(turn * pose.rotation, turn * pose.translation)
    return out


def test_explained_pairs_counts_the_verified_pairs_a_model_agrees_with(scene):
    from loftr_sfm.sfm.checks import explained_pairs

    run_mapping(scene, scene / "images", MappingConfig(mapper="incremental"))
    rec = pycolmap.Reconstruction(str(scene / "model"))
    right = explained_pairs(rec, scene / "database.db")
    assert right.registered == 5 and right.pairs == 10 and right.explained == 10 and right.score == 10
    name = sorted(im.name for im in rec.images.values())[2]
    wrong = explained_pairs(_turned(rec, {name}, 5.0), scene / "database.db")  # its 4 pairs no longer agree
    assert wrong.pairs == 10 and wrong.explained == 6 and wrong.score == 2
    assert explained_pairs(_turned(rec, {name}, 0.05), scene / "database.db").explained == 10  # noise-level: still


def test_of_two_models_the_one_that_explains_more_is_kept(scene, tmp_path, monkeypatch):
    """The fallback's model with every image but two of them turned (pairs glued wrongly) loses to the first
    model with fewer images and every verified pair explained."""
    (tmp_path / "database.db").write_bytes((scene / "database.db").read_bytes())
    real = mappers.run_mapper

    def runs(db_path, images, work, mapper, cfg, cameras, num_images=0):
        rec, n = real(db_path, images, work, mapper, cfg, cameras, num_images)
        names = sorted(im.name for im in rec.images.values())
        if mapper == "incremental":  # 4 of 5 registered, all right
            rec.deregister_frame(rec.image(min(rec.reg_image_ids())).frame_id)
        else:  # 5 of 5 registered, 2 of them turned by 10 deg: their 6 pairs with the 3 others unexplained
            rec = _turned(rec, set(names[1:3]), 10.0)
        return rec, n

    monkeypatch.setattr(mappers, "run_mapper", runs)
    s = run_mapping(tmp_path, scene / "images", {"mapper": "incremental", "fallback": True})
    inc, glo = s["attempts"]
    assert (inc["mapper"], inc["registered"], inc["chosen"]) == ("incremental", 4, True)
    assert (glo["mapper"], glo["registered"], glo["chosen"]) == ("global", 5, False)
    assert inc["explained_pairs"] == inc["verified_pairs"] == 6 and glo["verified_pairs"] == 10
    assert glo["explained_pairs"] == 4 and glo["score"] == -2 and inc["score"] == 6
    assert s["registered"] == 4 and s["mapper"] == "incremental"


def test_nothing_removes_a_registered_image_and_the_refinements_are_opt_in(scene, tmp_path):
    (tmp_path / "database.db").write_bytes((scene / "database.db").read_bytes())
    s = run_mapping(tmp_path, scene / "images")
    assert s["track_refinement"] is None and s["relative_filter"] is None
    assert s["config"]["refinement"] == {"refine_tracks": "off", "track_refinement": None, "relative_filter": False,
                                         "relative_filter_factor": None, "relative_filter_rounds": 3}
    on = run_mapping(tmp_path, scene / "images", {"refine_tracks": "on", "relative_filter": True})
    assert on["registered"] == s["registered"] == 5  # refinements never cost an image its pose
    assert on["track_refinement"]["moved"] > 0 and on["relative_filter"]["observations_after"] > 0
    rf = on["relative_filter"]
    assert rf["observations_after"] <= rf["observations_before"]
    assert rf["reprojection_error_after"] <= rf["reprojection_error_before"] + 1e-6
    assert {"track_refinement", "relative_filter"} <= set(on["times"])


def test_errors(tmp_path):
    with pytest.raises(InputError, match="database"):
        run_mapping(tmp_path, tmp_path)
    with pytest.raises(ValueError, match="mapper"):
        run_mapping(tmp_path, tmp_path, {"mapper": "hierarchical"})
    with pytest.raises(ValueError, match="min_registered"):
        run_mapping(tmp_path, tmp_path, {"min_registered": 1.5})
    with pytest.raises(ValueError, match="relative_filter_factor"):
        run_mapping(tmp_path, tmp_path, {"relative_filter_factor": 0.5})
    with pytest.raises(ValueError, match="global_tracks_per_view"):
        run_mapping(tmp_path, tmp_path, {"global_tracks_per_view": -1})
    with pytest.raises(ValueError, match="unknown MappingConfig option"):
        run_mapping(tmp_path, tmp_path, {"second_pass": "global"})  # a removed rule is a typo now


def test_mapper_options_follow_the_config():
    cfg = merge_config(MappingConfig, seed=3, min_num_matches=20, num_threads=1)
    cams = CameraOptions(refine_focal_length=False, refine_principal_point=True, refine_extra_params=False)
    o = incremental_options(cfg, cams)
    assert (o.random_seed, o.min_num_matches, o.num_threads) == (3, 20, 1)
    assert (o.ba_refine_focal_length, o.ba_refine_principal_point, o.ba_refine_extra_params) == (False, True, False)
    g = global_options(cfg, cams)
    ba = g.mapper.bundle_adjustment
    assert (g.random_seed, g.min_num_matches, g.num_threads) == (3, 20, 1)
    assert (ba.refine_focal_length, ba.refine_principal_point, ba.refine_extra_params) == (False, True, False)
    assert g.mapper.track_required_tracks_per_view == pycolmap.GlobalPipelineOptions().mapper.track_required_tracks_per_view
    assert global_options(replace(cfg, global_tracks_per_view=300), cams).mapper.track_required_tracks_per_view == 300


def test_global_mapper_with_bounded_tracks_keeps_every_point_and_the_poses(scene, tmp_path):
    """Cameras placed from 40 tracks per image: the model still has every image, the points of the full run
    (the rest are triangulated after) and poses as close to the exact GT."""
    from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction

    rows = {}
    for tracks in (0, 40):
        out = tmp_path / str(tracks)
        out.mkdir()
        (out / "database.db").write_bytes((scene / "database.db").read_bytes())
        s = run_mapping(out, scene / "images", {"mapper": "global", "global_tracks_per_view": tracks})
        assert s["registered"] == 5 and s["config"]["global_tracks_per_view"] == tracks
        rows[tracks] = (s["points"], evaluate_reconstruction(out / "model", scene / "gt", EvaluationConfig()).row())
    assert rows[40][0] >= 0.98 * rows[0][0]
    assert float(rows[40][1]["rot_med_deg"]) < 0.1 and float(rows[0][1]["rot_med_deg"]) < 0.1


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


def test_principal_point_is_refined_for_shared_cameras_only():
    def auto(per_camera, **kw):
        return resolve_principal_point(CameraOptions(**kw), per_camera).refine_principal_point

    assert auto({1: 30}) is True and auto({1: 5, 2: 7}) is True
    assert auto({1: 1, 2: 1, 3: 1}) is False  # one camera per image: ill-posed, fixed at the centre
    assert auto({1: 29, 2: 1}) is False  # one flag for every camera of the model
    assert auto({1: 30}, refine_focal_length=False) is False  # a known calibration stays fixed
    assert auto({}) is False
    assert auto({1: 1}, refine_principal_point=True) is True and auto({1: 30}, refine_principal_point=False) is False


def _posed_cameras(cams):
    """A model of one posed image per (width, height, focal), each with its own SIMPLE_RADIAL camera (ids 1..n)."""
    rec = pycolmap.Reconstruction()
    for k, (w, h, f) in enumerate(cams, 1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=k, model="SIMPLE_RADIAL", width=w, height=h,
                                                        params=[f, w / 2, h / 2, 0.0]))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:03d}.jpg", camera_id=k, image_id=k), pycolmap.Rigid3d())
    return rec


def test_camera_family_and_parameters_in_the_upgraded_model():
    cam = pycolmap.Camera(camera_id=1, model="SIMPLE_RADIAL", width=100, height=80, params=[90.0, 50, 40, 0.1])
    assert camera_family("RADIAL") == "SIMPLE_RADIAL" == camera_family("SIMPLE_RADIAL")
    assert camera_family("RADIAL_FISHEYE") == "SIMPLE_RADIAL_FISHEYE"
    assert camera_family("OPENCV") == "OPENCV"
    np.testing.assert_array_equal(params_as(cam, "RADIAL"), [90, 50, 40, 0.1, 0])
    np.testing.assert_array_equal(params_as(cam, "SIMPLE_RADIAL"), [90, 50, 40, 0.1])
    with pytest.raises(ValueError, match="cannot be expressed as OPENCV"):
        params_as(cam, "OPENCV")


def test_camera_groups_by_size_and_focal_length():
    cams = ([(1536, 1024, f) for f in (1000, 1005, 995, 1010, 990, 1002)]  # 1-6: one camera
            + [(1536, 1024, f) for f in (1200, 1210, 1195, 1190, 1205)]  # 7-11: zoomed, 19 % apart
            + [(1536, 1024, f) for f in (700, 705)]  # 12-13: too few
            + [(1024, 768, 1000.0)] * 5  # 14-18: another size
            + [(800, 600, 1000 * 1.025 ** k) for k in range(5)]  # 19-23: a chain of 2.5 % steps is one run
            + [(640, 480, 1000.0)] * 4)  # 24-27: too few
    groups = camera_groups(_posed_cameras(cams), tolerance=0.03, min_images=5)
    assert groups == [list(range(19, 24)), list(range(14, 19)), list(range(1, 7)), list(range(7, 12))]
    assert camera_groups(_posed_cameras(cams), tolerance=0.02, min_images=5) == groups[1:]  # no chain
    assert camera_groups(_posed_cameras(cams), tolerance=0.02, min_images=6) == [list(range(1, 7))]


def test_share_cameras_and_its_guard(scene, tmp_path, monkeypatch):
    (tmp_path / "database.db").write_bytes((scene / "database.db").read_bytes())
    s = run_mapping(tmp_path, scene / "images", {"share_cameras": False})
    assert s["shared_cameras"] is None
    rec = pycolmap.Reconstruction(str(tmp_path / "model"))
    assert len({im.camera_id for im in rec.images.values()}) == 5
    cfg = CameraOptions()
    shared, stats = share_cameras(rec, cfg)
    assert stats["groups"] == [5] and stats["rejected"] == [] and stats["principal_point_refined"]
    assert len(shared.cameras) == 1 and len(rec.cameras) == 5  # the input is not modified
    assert shared.num_points3D() == rec.num_points3D()
    assert shared.compute_num_observations() == rec.compute_num_observations()
    assert stats["reprojection_error"][1] < 1.1 * stats["reprojection_error"][0] < 1.0
    f, cx, cy = next(iter(shared.cameras.values())).params[:3]
    assert abs(f - 280) < 2 and abs(cx - 160) < 1 and abs(cy - 120) < 1
    # the shared camera has a second radial term (share_cameras_radial); the scene has no distortion
    assert stats["models"] == ["RADIAL"] and next(iter(shared.cameras.values())).model.name == "RADIAL"
    assert np.abs(next(iter(shared.cameras.values())).params[3:]).max() < 0.02
    assert share_cameras(rec, replace(cfg, share_cameras_radial=False))[1]["models"] == ["SIMPLE_RADIAL"]
    assert share_cameras(rec, replace(cfg, refine_extra_params=False))[1]["models"] == ["SIMPLE_RADIAL"]
    # an image left with its own SIMPLE_RADIAL camera joins the RADIAL one later (the pass after track refinement)
    lone = pycolmap.Camera(camera_id=99, model="SIMPLE_RADIAL", width=320, height=240, params=[281.0, 160, 120, 0])
    some = sorted(shared.reg_image_ids())[0]
    mixed = with_cameras(shared, {i: lone if i == some else shared.image(i).camera
                                                 for i in shared.reg_image_ids()})
    assert camera_groups(mixed) == [sorted(shared.reg_image_ids())]
    joined, stats = share_cameras(mixed, cfg)
    assert stats["groups"] == [5] and stats["models"] == ["RADIAL"] and len(joined.cameras) == 1
    for im in rec.images.values():  # the copy keeps names, ids and keypoints
        other = shared.image(im.image_id)
        assert other.name == im.name and other.num_points3D == im.num_points3D
        np.testing.assert_array_equal([p.xy for p in other.points2D], [p.xy for p in im.points2D])
    # the user fixed the principal point: only focal length and distortion are shared and refined
    _, stats = share_cameras(rec, replace(cfg, refine_principal_point=False))
    assert stats["groups"] == [5] and not stats["principal_point_refined"]
    # a known calibration has nothing to share
    assert share_cameras(rec, CameraOptions(refine_focal_length=False, refine_extra_params=False)) \
        == (rec, None)
    # a group that fits one camera worse keeps its cameras (here: any rise at all is too much)
    monkeypatch.setattr(sfm_cameras, "SHARE_CAMERAS_MAX_ERROR_INCREASE", -0.5)
    kept, stats = share_cameras(rec, cfg)
    assert kept is rec and stats["groups"] == [] and stats["rejected"] == [5]


