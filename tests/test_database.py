"""COLMAP database stage: +0.5 convention, camera modes, names -> ids, two-view geometries, resume."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from loftr_sfm.database import (
    DatabaseConfig,
    database_fingerprint,
    database_stats,
    image_ids_by_name,
    min_inlier_ratio,
    run_database,
    verify_database,
)
from loftr_sfm.io import InputError, read_pairs, write_pairs
from loftr_sfm.keypoints import read_features, read_matches, run_keypoints

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """6 images: sub-folders with equal file names, one portrait and one smaller image."""
    out = tmp_path_factory.mktemp("db_scene")
    synthetic.generate(out, synthetic.SceneConfig(num_images=6, width=320, height=240, focal=280, subfolders=True,
                                                  portrait=[3], sizes={5: [256, 192]}, seed=3))
    run_keypoints(out, out / "images")
    return out


def _db(path):
    return pycolmap.Database.open(str(path))


def test_keypoints_shifted_by_half_pixel_and_names_map_to_ids(scene):
    run_database(scene, scene / "images", {"overwrite": True})
    feats = read_features(scene / "features.h5")
    ids = image_ids_by_name(scene / "database.db")
    assert sorted(ids) == sorted(feats) and len(ids) == 6
    assert "a/img_000.png" in ids and "b/img_000.png" in ids  # equal file names, different folders
    with _db(scene / "database.db") as db, h5py.File(scene / "merged_matches.h5", "r") as mf:
        for name, iid in ids.items():
            np.testing.assert_allclose(db.read_keypoints(iid), feats[name]["keypoints"] + 0.5, atol=1e-4)
        pairs = [tuple(line.split()) for line in (scene / "pairs.txt").read_text().splitlines()]
        for a, b in pairs:
            m, _ = read_matches(mf, a, b)
            dbm = db.read_matches(ids[a], ids[b])
            np.testing.assert_array_equal(np.sort(dbm.astype(np.int64), axis=0), np.sort(m, axis=0))


def test_two_view_geometries_are_usable_and_reverification_clears(scene):
    run_database(scene, scene / "images", {"overwrite": True})
    db_path = scene / "database.db"
    with _db(db_path) as db:
        tvgs = db.read_two_view_geometries()
        pair_ids, geoms = tvgs
        configs = [g.config for g in geoms if len(g.inlier_matches) >= 15]
        inl_default = sum(len(g.inlier_matches) for g in geoms)
    assert len(configs) >= 10
    assert all(c != pycolmap.TwoViewGeometryConfiguration.UNDEFINED for c in configs)
    # re-verification with a much tighter threshold changes the result (old TVGs are cleared)
    verify_database(db_path, DatabaseConfig(ransac_max_error=0.05, ransac_max_trials=500))
    with _db(db_path) as db:
        inl_tight = sum(len(g.inlier_matches) for g in db.read_two_view_geometries()[1])
    assert inl_tight < 0.9 * inl_default
    # deterministic: same options, same inliers
    verify_database(db_path, DatabaseConfig())
    with _db(db_path) as db:
        assert sum(len(g.inlier_matches) for g in db.read_two_view_geometries()[1]) == inl_default


@pytest.mark.parametrize("mode,expected", [("per_image", 6), ("single", 3), ("per_folder", 4), ("auto", 6)])
def test_camera_modes_never_share_across_sizes(scene, mode, expected):
    run_database(scene, scene / "images", {"camera_mode": mode, "verify": False, "overwrite": True})
    with _db(scene / "database.db") as db:
        cams = {c.camera_id: c for c in db.read_all_cameras()}
        assert len(cams) == expected
        assert db.num_images() == 6  # nobody dropped
        for im in db.read_all_images():
            w, h = read_features(scene / "features.h5")[im.name]["image_size"]
            assert (cams[im.camera_id].width, cams[im.camera_id].height) == (w, h)
            assert not cams[im.camera_id].has_prior_focal_length  # PNGs: no EXIF


def test_user_camera_params_fix_intrinsics(scene):
    run_database(scene, scene / "images",
                 {"camera_mode": "single", "camera_model": "PINHOLE", "camera_params": "280,280,160,120",
                  "verify": False, "overwrite": True})
    with _db(scene / "database.db") as db:
        cams = db.read_all_cameras()
        assert all(c.model.name == "PINHOLE" and c.has_prior_focal_length for c in cams)
        assert any(list(c.params) == [280, 280, 160, 120] for c in cams)
    with pytest.raises(InputError, match="PINHOLE"):
        run_database(scene, scene / "images", {"camera_model": "PINHOLE", "camera_params": "280,280", "overwrite": True})


def test_exif_focal_prior(tmp_path):
    from PIL import Image

    out = tmp_path / "o"
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    out.mkdir()
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "Canon EOS 5D"  # Model
    exif_ifd = {0x920A: 50.0, 0xA405: 50}  # FocalLength, FocalLengthIn35mmFilm
    exif[0x8769] = exif_ifd
    for n in ("x.jpg", "y.jpg"):
        Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(img_dir / n, exif=exif)
    cam = pycolmap.infer_camera_from_image(str(img_dir / "x.jpg"))
    if not cam.has_prior_focal_length:
        pytest.skip("this pycolmap build does not read the EXIF written by Pillow")
    (out / "pairs.txt").write_text("x.jpg y.jpg\n")
    with h5py.File(out / "matches.h5", "w") as f:
        g = f.create_group("x.jpg/y.jpg")
        g.create_dataset("keypoints0", data=np.array([[10, 10]], np.float32))
        g.create_dataset("keypoints1", data=np.array([[12, 11]], np.float32))
        g.create_dataset("scores", data=np.ones(1, np.float32))
    run_keypoints(out, img_dir)
    run_database(out, img_dir, {"verify": False})
    with _db(out / "database.db") as db:
        cams = db.read_all_cameras()
    assert len(cams) == 1  # auto: same size and EXIF focal -> shared
    assert cams[0].has_prior_focal_length
    assert abs(cams[0].mean_focal_length() - cam.mean_focal_length()) < 1e-6


def test_resume_and_bad_matches(scene, tmp_path):
    p = run_database(scene, scene / "images", {"overwrite": True})
    mtime = p.stat().st_mtime_ns
    assert run_database(scene, scene / "images") == p
    assert p.stat().st_mtime_ns == mtime  # reused
    write_pairs(scene / "pairs.txt", read_pairs(scene / "pairs.txt"))  # the pairs stage rerun, same result
    assert run_database(scene, scene / "images") == p
    assert p.stat().st_mtime_ns == mtime  # still reused
    run_database(scene, scene / "images", {"ransac_max_error": 3.0})  # options changed -> rebuilt
    assert p.stat().st_mtime_ns != mtime
    stats = database_stats(p)
    assert stats["images"] == 6 and stats["verified_pairs"] >= 10
    # out-of-sync matches -> clear error, the existing database stays intact
    bad = tmp_path / "bad"
    bad.mkdir()
    for n in ("features.h5", "merged_matches.h5", "pairs.txt"):
        (bad / n).write_bytes((scene / n).read_bytes())
    with h5py.File(bad / "merged_matches.h5", "r+") as f:
        key = next(iter(f.keys()))
        g = f[key][next(iter(f[key].keys()))]
        m = np.asarray(g["matches0"])
        m[np.flatnonzero(m >= 0)[0]] = 10**6
        del g["matches0"]
        g.create_dataset("matches0", data=m)
    with pytest.raises(InputError, match="out of sync"):
        run_database(bad, scene / "images")
    assert not (bad / "database.db").exists()


def test_fingerprint_follows_content_not_the_file(scene, tmp_path):
    db_path = tmp_path / "database.db"
    shutil.copy2(run_database(scene, scene / "images"), db_path)
    fp, mtime = database_fingerprint(db_path), db_path.stat().st_mtime_ns
    assert len(fp) == 32 and db_path.stat().st_mtime_ns == mtime  # computing it leaves the file alone
    with _db(db_path) as db:  # a reader: pycolmap rewrites the file, the content stays
        ids = image_ids_by_name(db_path)
        assert db.num_images() == 6
    assert database_fingerprint(db_path) == fp
    with _db(db_path) as db:  # one two-view geometry fewer: another database
        a, b = sorted(ids.values())[:2]
        assert db.exists_two_view_geometry(a, b)
        db.delete_two_view_geometry(a, b)
    assert database_fingerprint(db_path) != fp
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        database_fingerprint(tmp_path / "junk.db")


def test_min_inlier_ratio_default_and_range():
    assert min_inlier_ratio(DatabaseConfig()) == 0.2  # every backend: semi-dense and SIFT alike
    assert min_inlier_ratio(DatabaseConfig(min_inlier_ratio=0.0)) == 0.0
    with pytest.raises(ValueError, match="min_inlier_ratio"):
        min_inlier_ratio(DatabaseConfig(min_inlier_ratio=1.5))


def test_pair_of_chance_inliers_is_rejected(tmp_path):
    """Random matches pass pycolmap's verification with chance inliers; the inlier ratio rejects them."""
    out = tmp_path / "s"
    synthetic.generate(out, synthetic.SceneConfig(num_images=4, width=640, height=480, focal=500, render=False, seed=1))
    pairs = read_pairs(out / "pairs.txt")
    a, b = pairs[0]
    with h5py.File(out / "matches.h5", "r+") as f:  # the first pair's matches become garbage
        k1 = f[a][b]["keypoints1"]
        k1[...] = (np.random.default_rng(0).random(k1.shape) * [639, 479]).astype(np.float32)
    run_keypoints(out, out / "images")

    def inliers(cfg):
        run_database(out, out / "images", cfg)
        ids = image_ids_by_name(out / "database.db")
        with _db(out / "database.db") as db:
            return {p: (len(db.read_matches(ids[p[0]], ids[p[1]])),
                        len(db.read_two_view_geometry(ids[p[0]], ids[p[1]]).inlier_matches)
                        if db.exists_two_view_geometry(ids[p[0]], ids[p[1]]) else None) for p in pairs}

    plain = inliers({"min_inlier_ratio": 0.0})
    n, k = plain[(a, b)]
    assert n > 1000 and 15 <= k < 0.1 * n  # verified by pycolmap, on chance inliers
    default = inliers({})  # matches.h5 says eloftr: 0.2
    assert default[(a, b)] == (n, None)  # rejected, its matches kept
    for p in pairs[1:]:
        assert default[p] == plain[p] and default[p][1] > 0.9 * default[p][0]
    assert json.loads((out / ".database.json").read_text())["stats"]["rejected_pairs"] == 1
    assert database_stats(out / "database.db")["verified_pairs"] == len(pairs) - 1


def _graph_db(path, n, pairs, inliers=30):
    """A database of ``n`` images 00.png ... with a two-view geometry of ``inliers`` inliers per pair."""
    with pycolmap.Database.open(str(path)) as db:
        cam = db.write_camera(pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 500.0, 640, 480))
        # ids deliberately not in name order
        ids = {i: db.write_image(pycolmap.Image(name=f"{i:02d}.png", camera_id=cam)) for i in reversed(range(n))}
        for a, b in pairs:
            g = pycolmap.TwoViewGeometry()
            g.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            k = inliers if not isinstance(inliers, dict) else inliers.get((a, b), 30)
            g.inlier_matches = np.stack([np.arange(k), np.arange(k)], 1).astype(np.uint32)
            db.write_two_view_geometry(ids[a], ids[b], g)


def test_weak_links_find_the_gap_of_a_video(tmp_path):
    from loftr_sfm.database import weak_links

    seq = lambda lo, hi, k: [(i, j) for i in range(lo, hi) for j in range(i + 1, min(i + k + 1, hi))]  # noqa: E731
    # two halves of 10 images, 4 neighbours each, held by 2 pairs (and one pair of 14 inliers: ignored)
    _graph_db(tmp_path / "gap.db", 20, seq(0, 10, 4) + seq(10, 20, 4) + [(7, 11), (9, 12), (8, 10)],
              inliers={(8, 10): 14})
    links = weak_links(tmp_path / "gap.db")
    assert links == [{"after": "09.png", "before": "10.png", "verified_pairs": 2,
                      "pairs": [["07.png", "11.png"], ["09.png", "12.png"]]}]
    # separate places: no pair at all across
    _graph_db(tmp_path / "split.db", 12, seq(0, 6, 3) + seq(6, 12, 3))
    assert [(x["after"], x["verified_pairs"], x["pairs"]) for x in weak_links(tmp_path / "split.db")] == \
        [("05.png", 0, [])]
    # sequential pairs with 2 neighbours: 3 pairs cross every cut, none is weaker than the others
    _graph_db(tmp_path / "thin.db", 12, seq(0, 12, 2))
    assert weak_links(tmp_path / "thin.db") == []
    # a weak cut near the ends (fewer than 3 images on one side) is a weakly attached image, not a gap
    _graph_db(tmp_path / "end.db", 12, seq(2, 12, 4) + [(0, 1), (1, 2)])
    assert weak_links(tmp_path / "end.db") == []


def test_database_stage_warns_of_weak_links(tmp_path, caplog, monkeypatch):
    """Sequential pairs of a synthetic video whose middle pairs are gone: the stage says where and what to do."""
    out = tmp_path / "s"
    synthetic.generate(out, synthetic.SceneConfig(num_images=16, width=320, height=240, focal=280, render=False,
                                                  pairs="sequential", num_neighbors=4, seed=2))
    pairs = [p for p in read_pairs(out / "pairs.txt")
             if not (p[0] < "img_008" <= p[1]) or p == ("img_007.png", "img_008.png")]  # one pair across 7 | 8
    write_pairs(out / "pairs.txt", pairs)
    run_keypoints(out, out / "images")
    with caplog.at_level("WARNING", logger="loftr_sfm.database"):
        run_database(out, out / "images")
    links = json.loads((out / ".database.json").read_text())["stats"]["weak_links"]
    assert [(x["after"], x["verified_pairs"]) for x in links] == [("img_007.png", 1)]
    assert "img_007.png and those from img_008.png on" in caplog.text and "--loop-closure" in caplog.text
    run_database(out, out / "images", {"weak_link_pairs": 0})  # a warning only: the database is up to date
    assert json.loads((out / ".database.json").read_text())["stats"]["weak_links"] == links
    with pytest.raises(ValueError, match="weak_link_pairs"):
        run_database(out, out / "images", {"weak_link_pairs": -1})
    # an option added to the library since: the database stays up to date while it keeps its default
    import dataclasses

    import loftr_sfm.database as database

    mtime = (out / "database.db").stat().st_mtime_ns
    upgraded = dataclasses.make_dataclass("DatabaseConfig", [("new_option", int, dataclasses.field(default=0))],
                                          bases=(database.DatabaseConfig,))
    monkeypatch.setattr(database, "DatabaseConfig", upgraded)
    run_database(out, out / "images")
    assert (out / "database.db").stat().st_mtime_ns == mtime
    run_database(out, out / "images", {"new_option": 1})
    assert (out / "database.db").stat().st_mtime_ns != mtime


def test_a_damaged_or_emptied_database_is_built_again(scene, tmp_path):
    """A truncated database.db (or an empty one where it was deleted) is not taken as up to date."""
    out = tmp_path / "out"
    out.mkdir()
    for n in ("features.h5", "merged_matches.h5", "matches.h5", "pairs.txt"):
        (out / n).write_bytes((scene / n).read_bytes())
    run_database(out, scene / "images")
    good = database_stats(out / "database.db")
    data = (out / "database.db").read_bytes()
    (out / "database.db").write_bytes(data[: len(data) // 3])  # truncated
    run_database(out, scene / "images")
    assert database_stats(out / "database.db") == good
    (out / "database.db").write_bytes(b"")  # deleted and re-created empty
    run_database(out, scene / "images")
    assert database_stats(out / "database.db") == good


def test_reading_names_and_cameras_leaves_the_file_untouched(scene):
    from loftr_sfm.database import images_per_camera

    db_path = run_database(scene, scene / "images")
    before = (db_path.stat().st_mtime_ns, db_path.read_bytes())
    ids = image_ids_by_name(db_path)
    per_camera = images_per_camera(db_path)
    assert len(ids) == 6 and sum(per_camera.values()) == 6
    assert (db_path.stat().st_mtime_ns, db_path.read_bytes()) == before
