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


def test_quick_check_names_what_fails():
    suite = _suite()
    rows = [{"scene": "a", "method": "ours", "matcher": "oracle", "registered": "9/10", "rot_med_deg": 0.1},
            {"scene": "b", "method": "ours", "matcher": "oracle", "registered": "10/10", "rot_med_deg": 2.0},
            {"scene": "c", "method": "ours", "matcher": "oracle", "registered": "10/10", "rot_med_deg": 0.1},
            {"scene": "d", "method": "colmap-sift", "matcher": "sift", "registered": "1/10"}]
    bad = suite.quick_failures(rows)
    assert len(bad) == 2 and bad[0].startswith("a (oracle): 9/10") and bad[1].startswith("b (oracle): 10/10")
