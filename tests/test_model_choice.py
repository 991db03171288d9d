"""pipelines/model_choice.py: which images of a model are placed right, from relative rotations against GT."""

from __future__ import annotations

import sys

import numpy as np

from conftest import REPO


def _rot(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotation matrix of ``deg`` degrees about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_one_turned_image_is_the_only_wrong_one_whatever_the_model_frame():
    sys.path.insert(0, str(REPO / "pipelines"))
    from model_choice import relative_rotation_errors, right_images

    rng = np.random.default_rng(0)
    gt = {f"im{i}": (_rot(rng.normal(size=3), rng.uniform(0, 90)), None) for i in range(6)}
    frame = _rot([0.3, 1.0, -0.2], 40.0)  # the model's world frame differs from GT's: relative rotations do not
    est = {n: (R @ frame, None) for n, (R, _) in gt.items()}
    est["im3"] = (_rot([1.0, 0.0, 0.0], 5.0) @ est["im3"][0], None)  # one camera turned by 5 deg
    est["extra"] = (np.eye(3), None)  # not in GT: not counted
    err = relative_rotation_errors(est, gt)
    assert sorted(err) == sorted(gt)
    assert abs(err["im3"] - 5.0) < 1e-6
    assert all(e < 1e-6 for n, e in err.items() if n != "im3")
    assert right_images(est, gt, 2.0) == 5 and right_images(est, gt, 6.0) == 6
    assert relative_rotation_errors({"im0": est["im0"]}, gt) == {}
