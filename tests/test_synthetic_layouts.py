"""Camera layouts of the synthetic scene generator (datasets/synthetic.py): a tiny scene per layout
(blank 160x120 images, ~0.5 s each), its GT model read back with pycolmap, every image matched
somewhere, the raw matches consistent with the GT poses; the default "arc" cameras unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402

# SceneConfig() (seed 0, layout "arc"), first and last camera centres, computed with make_cameras as it was
# before the layout option existed
ARC_SEED0_FIRST_CENTRE = [-3.8378661249552266, -4.616082388207563, 2.5960633975664917]
ARC_SEED0_LAST_CENTRE = [4.053991222829392, -4.542659597115024, 2.8207455882793075]

SECOND = {"focal": 200.0, "width": 200, "height": 150}  # a second camera model (odd images)
SECOND_RADIAL = {"focal": 110.0, "width": 128, "height": 128, "distortion": [-0.08, 0.01], "images": "second_half"}

CASES = {  # layout: (number of images, extra SceneConfig keywords)
    "arc": (8, {}),
    "ring": (12, {"second_camera": SECOND}),
    "turntable": (12, {}),
    "walk_turn": (12, {"pairs": "sequential", "num_neighbors": 3, "second_camera": SECOND_RADIAL}),
    "video_gap": (10, {"pairs": "sequential", "num_neighbors": 3}),
    "wide_baseline": (8, {}),
}


def _yaw(im) -> float:
    z = im.cam_from_world().rotation.matrix()[2]  # viewing direction in the world
    return float(np.degrees(np.arctan2(z[1], z[0])))


@pytest.mark.parametrize("layout", list(CASES))
def test_layout_scene_is_consistent_with_its_ground_truth(tmp_path, layout):
    assert set(CASES) == set(synthetic.LAYOUTS)
    n, kw = CASES[layout]
    cfg = synthetic.SceneConfig(num_images=n, width=160, height=120, focal=135.0, layout=layout, render=False, **kw)
    man = synthetic.generate(tmp_path, cfg)

    # images: n of them, named in capture order, all in the GT model
    names = [f"img_{i:03d}.png" for i in range(n)]
    assert man["images"] == names == sorted(p.name for p in (tmp_path / "images").iterdir())
    gt = pycolmap.Reconstruction(str(tmp_path / "gt"))
    by_name = {im.name: im for im in gt.images.values()}
    assert sorted(by_name) == names
    models = {(c.width, c.height, tuple(np.round(c.params, 6))) for c in gt.cameras.values()}
    assert len(models) == (2 if "second_camera" in kw else 1)
    if "second_camera" in kw:
        assert {c.model.name for c in gt.cameras.values()} == (
            {"PINHOLE", "RADIAL"} if "distortion" in kw["second_camera"] else {"PINHOLE"})

    # every image in a pair with >= 50 matches; the matches agree with the GT epipolar geometry
    res = synthetic.check_scene(tmp_path)
    assert len(res) == man["pairs"] > 0
    best = {name: 0 for name in names}
    for r in res:
        for name in (r["image0"], r["image1"]):
            best[name] = max(best[name], r["matches"])
    assert min(best.values()) >= 50, best
    for r in res:
        if r["matches"] >= 50:  # (pairs of few matches: the mutual coarse matching inflates the outlier share)
            assert r["inlier_fraction"] >= 0.8, r
    # without outliers, every match of every pair is within 1 px (noise 0.3 px): the GT model is exact
    clean = tmp_path / "clean"
    synthetic.generate(clean, synthetic.SceneConfig(**{**json.loads(json.dumps(man["config"])), "outliers": 0.0}))
    for r in synthetic.check_scene(clean):
        assert r["matches"] == 0 or r["inlier_fraction"] >= 0.98, r

    # the geometry of the layout
    C = np.array([by_name[name].projection_center() for name in names])
    az = np.degrees(np.unwrap(np.arctan2(C[:, 1], C[:, 0])))
    steps = np.abs(np.diff(az))
    if layout == "arc":
        cams = synthetic.make_cameras(synthetic.SceneConfig(), np.random.default_rng(0))
        assert np.allclose(cams[0].centre, ARC_SEED0_FIRST_CENTRE, rtol=0, atol=1e-12)
        assert np.allclose(cams[-1].centre, ARC_SEED0_LAST_CENTRE, rtol=0, atol=1e-12)
    elif layout == "ring":
        assert np.ptp(az) > 360 * (n - 1) / n - 10 and steps.max() < 360 / n + 10
    elif layout == "turntable":
        d = np.linalg.norm(C - [0, 0, 0.9], axis=1)
        assert d.max() < 0.7 * cfg.radius and len(np.unique(np.round(C[:, 2]))) >= 2
    elif layout == "walk_turn":
        yaw = np.unwrap(np.radians([_yaw(by_name[name]) for name in names]))
        assert abs(np.degrees(yaw[-1] - yaw[0]) - 90) < 15  # looks +y, then -x
    elif layout == "video_gap":
        assert int(np.argmax(steps)) == n // 2 - 1 and steps.max() > 2.5 * np.median(steps)
    elif layout == "wide_baseline":
        assert 140 < np.ptp(az) < 160 and steps.min() > 15
