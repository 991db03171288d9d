"""The report page: one self-contained HTML file (no server, no network) with the data of a run.

The page is ``assets/report.css`` + ``assets/three.bundle.min.js`` (three.js, MIT, bundled into one
file: ``assets/build_three.sh``) + ``assets/report.js``, with the run's data as one JSON block.
Large arrays (3D points, their colours, camera frustums) are base64 typed arrays.

3D coordinates are the model's world frame (COLMAP: ``x_cam = R x_world + t``) shifted by
``scene.origin`` (the median point), in float32.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path

ASSETS = Path(__file__).resolve().parent / "assets"
#: 3D points shown at most; beyond, a fixed random subsample (and a note on the page)
MAX_POINTS = 1_000_000


def b64(array: np.ndarray) -> str:
    """A numpy array's bytes (C order, native little-endian) as base64 text."""
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def frustum_segments(R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int, depth: float) -> np.ndarray:
    """The 8 segments of a camera's frustum (centre to the 4 image corners, and the image rectangle).

    Args:
        R, t: ``cam_from_world`` (3, 3) and (3,); K: (3, 3) intrinsics (COLMAP convention: pixel corners at
            integers); depth: distance of the image plane from the centre, in world units.
    Returns:
        (16, 3) float64: segment k is rows 2k, 2k + 1 (world coordinates).
    """
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64)
    rays = corners @ np.linalg.inv(K).T
    rays *= depth / rays[:, 2:3]
    centre = -R.T @ t
    world = rays @ R + centre  # R^T x_cam + centre, row-wise
    ends = [(centre, world[i]) for i in range(4)] + [(world[i], world[(i + 1) % 4]) for i in range(4)]
    return np.array([p for seg in ends for p in seg])


def scene_3d(
    xyz: np.ndarray,
    rgb: np.ndarray,
    cameras: list[dict[str, Any]],
    max_points: int = MAX_POINTS,
) -> dict[str, Any]:
    """The 3D view's data: points (subsampled beyond ``max_points``) and camera frustums.

    Args:
        xyz: (N, 3) world points; rgb: (N, 3) uint8 colours.
        cameras: per camera ``{"name", "R", "t", "K", "width", "height", "kind"}`` (``kind``: "map" or "query").
    Returns:
        JSON-ready dict: ``points`` (count, shown, base64 float32 xyz and uint8 rgb, in a fixed random order),
        ``cameras`` (names, kinds, base64 float32 centres (C, 3) and frustum segments (C, 16, 3)), ``origin``,
        ``up``, ``scale``.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    count = len(xyz)
    # random order (fixed): any prefix is a uniform subsample, what the page draws while the view moves
    keep = np.random.default_rng(0).permutation(count)[:max_points]
    xyz, rgb = xyz[keep], rgb[keep]
    centres = np.array([-c["R"].T @ c["t"] for c in cameras]).reshape(-1, 3)
    ref = xyz if len(xyz) else centres
    origin = np.median(ref, axis=0) if len(ref) else np.zeros(3)
    if len(xyz) >= 10:
        extent = float(np.linalg.norm(np.percentile(xyz, 95, axis=0) - np.percentile(xyz, 5, axis=0)))
    else:
        extent = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 1.0
    extent = extent if extent > 0 else 1.0
    depth = 0.05 * extent
    if len(centres) > 1:  # frustums no larger than half the usual distance to the nearest camera
        from scipy.spatial import cKDTree

        nn = cKDTree(centres).query(centres, k=2)[0][:, 1]
        if np.median(nn) > 0:
            depth = min(depth, 0.5 * float(np.median(nn)))
    segs = np.array([frustum_segments(c["R"], c["t"], c["K"], c["width"], c["height"], depth) for c in cameras])
    # the view's "up": the mean of the cameras' up directions (-y of the camera, in the world)
    up = -np.mean([c["R"][1] for c in cameras], axis=0) if cameras else np.array([0.0, -1.0, 0.0])
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 0 else np.array([0.0, -1.0, 0.0])
    return {
        "origin": origin.tolist(),
        "up": up.tolist(),
        "scale": extent,
        "points": {
            "count": int(count),
            "shown": int(len(xyz)),
            "xyz": b64((xyz - origin).astype("<f4")),
            "rgb": b64(rgb),
        },
        "cameras": {
            "names": [c["name"] for c in cameras],
            "kinds": [c.get("kind", "map") for c in cameras],
            "centres": b64((centres - origin).astype("<f4")),
            "segments": b64((segs.reshape(-1, 3) - origin).astype("<f4")) if len(segs) else "",
        },
    }


def _asset(name: str) -> str:
    path = ASSETS / name
    if not path.is_file():
        raise FileNotFoundError(f"report asset {path} is missing (a broken install of loftr_sfm?)")
    text = path.read_text(encoding="utf-8")
    if "</script" in text.lower():  # would end the inline script early
        raise ValueError(f"report asset {path} contains '</script': it cannot be inlined")
    return text


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities (JSON has none) as None, recursively."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def render_html(data: dict[str, Any], title: str) -> str:
    """The page: the assets inlined and ``data`` as a JSON block (every ``<`` escaped: no name can end the block)."""
    blob = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_escape(title)}</title>\n<style>\n{_asset('report.css')}\n</style>\n</head>\n<body>\n"
        f"<script type=\"application/json\" id=\"report-data\">{blob}</script>\n"
        f"<script>\n{_asset('three.bundle.min.js')}\n</script>\n"
        f"<script>\n{_asset('report.js')}\n</script>\n</body>\n</html>\n"
    )


def write_html(path: Path, data: dict[str, Any], title: str) -> Path:
    """Write the page to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_html(data, title), encoding="utf-8")
    return path
