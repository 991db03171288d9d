"""``reconstruct`` end to end: every image keeps its pose, reruns are up to date, weak links get loop closure."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pycolmap
import pytest

from loftr_sfm.stages import reconstruct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402
from served_matcher import ServedMatcher  # noqa: E402
from served_matcher import register as register_served  # noqa: E402

WEAK = "img_002.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    register_served()
    root = tmp_path_factory.mktemp("served")
    synthetic.generate(root, synthetic.SceneConfig(num_images=6, width=320, height=240, focal=280, arc_deg=50, seed=5))
    return root


def _run(served: Path, out: Path, mapping: dict | None = None, **options) -> dict:
    opts = {"source": str(served / "matches.h5"), "weak": WEAK, **options}
    return reconstruct(served / "images", out, pairs={"method": "exhaustive"},
                       matching={"matcher": "served", "matcher_options": json.dumps(opts), "num_workers": 0},
                       mapping=mapping)


def test_an_image_on_few_matches_the_opt_in_fallback_and_a_rerun_that_is_up_to_date(served, tmp_path):
    """An image whose pairs hold 25 matches each: the incremental mapper's PnP needs 30 inliers and leaves it
    out, and the summary names it; the opt-in fallback (the global mapper once) registers it right; nothing
    removes it, and a rerun of the same command matches nothing and maps nothing."""
    ServedMatcher.calls.clear()
    s = _run(served, tmp_path / "default")
    assert len(ServedMatcher.calls) == 15  # 6 images, exhaustive
    assert [(a["mapper"], a["registered"]) for a in s["attempts"]] == [("incremental", 5)]
    assert s["registered"] == 5 and s["unregistered_images"] == [WEAK]
    ServedMatcher.calls.clear()
    s = _run(served, tmp_path, mapping={"fallback": True})
    assert [(a["mapper"], a["registered"], a["chosen"]) for a in s["attempts"]] == [("incremental", 5, False),
                                                                                   ("global", 6, True)]
    assert s["registered"] == 6 and s["unregistered_images"] == []
    rec = pycolmap.Reconstruction(str(tmp_path / "model"))
    gt = pycolmap.Reconstruction(str(served / "gt"))
    from loftr_sfm.evaluation import evaluate_reconstruction

    ev = evaluate_reconstruction(rec, gt)
    assert ev.num_registered == 6 and WEAK in ev.per_image and ev.rotation_error["median"] < 0.5
    assert set(s["times"]) >= {"pairs", "matching", "keypoints", "database", "mapping"}
    ServedMatcher.calls.clear()
    stamp = (tmp_path / "model" / "images.bin").stat().st_mtime_ns
    again = _run(served, tmp_path, mapping={"fallback": True})
    assert ServedMatcher.calls == [] and again["registered"] == 6
    assert (tmp_path / "model" / "images.bin").stat().st_mtime_ns == stamp


def test_sequential_pairs_tie_a_video_with_a_gap_by_loop_closure(tmp_path, caplog):
    """A "video" whose sequential pairs across img_007 | img_008 are chance matches but one. With loop closure
    off, the database stage finds the weak link and says how to fix it, and the incremental mapper splits
    there; with the default (loop closure on) the retrieval pairs tie the two halves: one incremental model of
    every image, and a rerun matches nothing."""
    from loftr_sfm.io import read_pairs

    register_served()
    root = tmp_path / "scene"
    synthetic.generate(root, synthetic.SceneConfig(num_images=16, width=320, height=240, focal=280, arc_deg=60, seed=6))
    across = [(f"img_{i:03d}.png", f"img_{j:03d}.png") for i in range(4, 8) for j in range(8, 12) if j - i <= 4]
    chance = [p for p in across if p != ("img_007.png", "img_008.png")]  # the one right pair left across
    opts = {"source": str(root / "matches.h5"), "chance": ";".join(f"{a} {b}" for a, b in chance)}

    def run(out, **pairs):
        return reconstruct(root / "images", out, pairs={"method": "sequential", "num_neighbors": 4, **pairs},
                           matching={"matcher": "served", "matcher_options": json.dumps(opts), "num_workers": 0})

    sequential = sum(min(4, 15 - i) for i in range(16))  # 16 images, 4 neighbours: 54 pairs
    ServedMatcher.calls.clear()
    with caplog.at_level("WARNING", logger="loftr_sfm"):
        plain = run(tmp_path / "plain", loop_closure=False)
    assert len(read_pairs(tmp_path / "plain" / "pairs.txt")) == len(ServedMatcher.calls) == sequential
    links = json.loads((tmp_path / "plain" / ".database.json").read_text())["stats"]["weak_links"]
    # the one right pair, and at most one chance pair that random matches happen to verify
    assert [x["after"] for x in links] == ["img_007.png"] and links[0]["verified_pairs"] <= 2
    assert "--loop-closure" in caplog.text
    assert plain["attempts"][0]["mapper"] == "incremental" and plain["attempts"][0]["registered"] < 16

    ServedMatcher.calls.clear()
    out = tmp_path / "default"
    s = run(out)
    pairs = read_pairs(out / "pairs.txt")
    assert len(pairs) > sequential and len(ServedMatcher.calls) == len(pairs)
    assert not json.loads((out / ".database.json").read_text())["stats"]["weak_links"]
    # the incremental mapper crosses the gap: one model of every image at the first attempt
    assert [(a["mapper"], a["models"], a["registered"]) for a in s["attempts"]] == [("incremental", 1, 16)]
    ServedMatcher.calls.clear()
    again = run(out)
    assert ServedMatcher.calls == [] and read_pairs(out / "pairs.txt") == pairs and again["registered"] == 16


def test_one_run_per_output_folder_and_stale_temporaries_go(tmp_path):
    """A second run on a folder another run holds is refused at once, naming the holder; the lock dies with its
    process (kill -9 too); temporaries a killed run left are removed when the next run starts."""
    import os
    import signal
    import subprocess

    from loftr_sfm.io import InputError
    from loftr_sfm.workspace import output_lock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from loftr_sfm.workspace import output_lock\n"
                               f"with output_lock({str(out)!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match=f"in use by another loftr-sfm run \\(pid {holder.pid}\\)"):
        reconstruct(tmp_path, out)
    (out / ".database.db.abc123.tmp").write_bytes(b"half")
    (out / ".mapping.xyz").mkdir()
    (out / ".matches.h5.journal").mkdir()  # finished batches of matching: kept
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with output_lock(out):
        assert not (out / ".database.db.abc123.tmp").exists() and not (out / ".mapping.xyz").exists()
        assert (out / ".matches.h5.journal").is_dir()


def test_odd_names_an_unreadable_file_and_a_truncated_jpeg_end_to_end(tmp_path, caplog):
    """The CLI's ``reconstruct`` on photos whose names hold spaces, quotes, '#', a backslash and non-ASCII
    letters (one in a sub-folder with a space), beside a file that is no image and a JPEG cut in half: exit
    code 0, the two bad files left out by name, every good photo registered near its GT pose, and
    ``pairs.txt`` reads back to the same names."""
    from loftr_sfm.cli import main
    from loftr_sfm.evaluation import evaluate_reconstruction
    from loftr_sfm.io import read_pairs

    scene = tmp_path / "scene"
    synthetic.generate(scene, synthetic.SceneConfig(num_images=5, width=400, height=300, focal=340, arc_deg=32,
                                                    seed=3))
    odd = ["my photos/img 0.png", "it's #1.png", "#2 café.png", "back\\slash 3.png", "\"quoted\" 4.png"]
    images = tmp_path / "images"
    gt = pycolmap.Reconstruction(str(scene / "gt"))
    gt_poses = {}
    for i, name in enumerate(odd):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(scene / "images" / f"img_{i:03d}.png", images / name)
        im = next(im for im in gt.images.values() if im.name == f"img_{i:03d}.png")
        gt_poses[name] = im
    (images / "not an image.jpg").write_bytes(b"this is text, not a JPEG\n" * 20)
    import cv2

    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(scene / "images" / "img_000.png")))
    (images / "cut off.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])

    register_served()
    served = {"source": str(scene / "matches.h5"), "names": json.dumps({n: f"img_{i:03d}.png" for i, n in enumerate(odd)})}
    out = tmp_path / "out dir"
    code = main(["reconstruct", "--images", str(images), "--output", str(out), "--matcher", "served",
                 "--matcher-options", json.dumps(served), "--num-workers", "0", "--pairs", "exhaustive"])
    assert code == 0
    assert "not an image.jpg" in caplog.text and "cut off.jpg" in caplog.text
    names = {n for p in read_pairs(out / "pairs.txt") for n in p}
    assert names == set(odd) | {"not an image.jpg", "cut off.jpg"}  # pairs are chosen before images are read
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registered"] == 5 and summary["num_images"] == 5
    rec = pycolmap.Reconstruction(str(out / "model"))
    assert {im.name for im in rec.images.values()} == set(odd)
    from loftr_sfm.evaluation import poses_from_reconstruction

    gt_named = {name: pose for name, pose in zip(odd, (poses_from_reconstruction(gt)[f"img_{i:03d}.png"]
                                                       for i in range(5)))}
    ev = evaluate_reconstruction(rec, gt_named)
    assert ev.num_registered == 5 and ev.rotation_error["max"] < 0.5  # a name mix-up would cost degrees


def test_reconstruct_says_bridge_weak_links_is_gone(monkeypatch, tmp_path):
    import loftr_sfm.stages

    monkeypatch.setattr(loftr_sfm.stages, "_reconstruct", lambda *a, **k: {"registered": 0})
    with pytest.warns(DeprecationWarning, match="no effect"):
        loftr_sfm.stages.reconstruct(tmp_path, tmp_path / "out", bridge_weak_links=True, report=False)
