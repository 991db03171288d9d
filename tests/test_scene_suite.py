"""pipelines/scene_suite.py: the quick subset runs the default pipeline on synthetic layouts and checks it."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import REPO


def _suite():
    sys.path.insert(0, str(REPO / "pipelines"))
    spec = importlib.util.spec_from_file_location("scene_suite", REPO / "pipelines" / "scene_suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scene_suite"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_subset_registers_every_image_accurately(tmp_path, capsys):
    suite = _suite()
    quick = [s.name for s in suite.SUITE if s.quick]
    assert {s.split for s in suite.SUITE if s.quick} == {"tune", "confirm"}  # both splits in CI
    assert suite.main(["--quick", "--methods", "ours", "bare-pycolmap", "--work", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "suite.json").read_text())
    ours = {r["scene"]: r for r in rows if r["method"] == "ours"}
    assert sorted(ours) == sorted(quick)
    for r in ours.values():
        done, total = map(int, r["registered"].split("/"))
        assert done == total and r["rot_med_deg"] <= suite.QUICK_MAX_ROT_DEG
        assert r["after/bare"] > 0 and r["after_s"] > 0
    assert (tmp_path / "suite.md").read_text().count("| ours |") == len(quick)
    assert "FAILED" not in capsys.readouterr().out
    # a second run keeps every result; --fresh maps again, and times bare pycolmap again beside it
    bare = {q: (tmp_path / q / "bare-oracle" / "seconds.json").read_text() for q in quick}
    summary = tmp_path / quick[0] / "ours" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert suite.main(["--quick", "--methods", "ours", "bare-pycolmap", "--work", str(tmp_path)]) == 0
    assert summary.stat().st_mtime_ns == before
    assert {q: (tmp_path / q / "bare-oracle" / "seconds.json").read_text() for q in quick} == bare
    assert json.loads((tmp_path / "suite.json").read_text()) == rows
    assert suite.main(["--quick", "--fresh", "--methods", "ours", "bare-pycolmap", "--work", str(tmp_path)]) == 0
    assert summary.stat().st_mtime_ns != before
    again = {q: json.loads((tmp_path / q / "bare-oracle" / "seconds.json").read_text()) for q in quick}
    assert all(again[q]["inputs"] != json.loads(bare[q])["inputs"] for q in quick)


def test_a_reference_is_computed_again_when_its_inputs_change(tmp_path):
    suite = _suite()
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"1")
    first = suite.inputs_digest(images, extra="pycolmap 4.2")
    assert suite.inputs_digest(images, extra="pycolmap 4.3") != first
    out = tmp_path / "colmap-sift"
    (out / "model").mkdir(parents=True)
    (out / "seconds.json").write_text(json.dumps({"seconds": 3.5, "inputs": first}))
    assert suite.cached_seconds(out, first) == 3.5 and (out / "model").is_dir()
    (images / "a.png").write_bytes(b"12")
    changed = suite.inputs_digest(images, extra="pycolmap 4.2")
    assert changed != first
    assert suite.cached_seconds(out, changed) is None
    assert not (out / "model").exists() and not (out / "seconds.json").exists()


def test_quick_check_names_what_fails():
    suite = _suite()
    rows = [{"scene": "a", "method": "ours", "matcher": "oracle", "registered": "9/10", "rot_med_deg": 0.1},
            {"scene": "b", "method": "ours", "matcher": "oracle", "registered": "10/10", "rot_med_deg": 2.0},
            {"scene": "c", "method": "ours", "matcher": "oracle", "registered": "10/10", "rot_med_deg": 0.1},
            {"scene": "d", "method": "colmap-sift", "matcher": "sift", "registered": "1/10"}]
    bad = suite.quick_failures(rows)
    assert len(bad) == 2 and bad[0].startswith("a (oracle): 9/10") and bad[1].startswith("b (oracle): 10/10")
