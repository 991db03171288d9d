"""Pictures of a report: two photos side by side with their matches drawn, as base64 JPEG.

Coordinates are original-image pixels in the OpenCV convention (integer = pixel centre), those of
every HDF5 file of the library and of :func:`loftr_sfm.database.read_pair_matches`.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from ..io import read_image

INLIER_COLOUR = (40, 200, 60)  # RGB
OUTLIER_COLOUR = (230, 50, 40)


def encode_jpeg(image: np.ndarray, quality: int = 80) -> str:
    """(H, W, 3) uint8 RGB -> base64 JPEG text (for a ``data:image/jpeg;base64,`` URL)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def thumbnail(path: Path, height: int) -> tuple[np.ndarray, float]:
    """The photo at ``path`` (EXIF orientation applied) resized to ``height`` rows; returns (RGB image, scale)."""
    import cv2

    img = read_image(path)
    scale = height / img.shape[0]
    size = (max(1, round(img.shape[1] * scale)), height)
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA), scale


def _subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """At most ``k`` of ``n`` indices, sorted, the same on every call."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def draw_matches(
    path0: Path,
    path1: Path,
    points0: np.ndarray,
    points1: np.ndarray,
    inlier: np.ndarray | None = None,
    *,
    height: int = 360,
    max_lines: int = 150,
    gap: int = 8,
) -> str:
    """Two photos side by side, a line per match: green for inliers, red for the others.

    Args:
        points0, points1: (N, 2) matched pixels of the two photos (OpenCV convention, original size).
        inlier: (N,) bool, or None (every match an inlier).
        height: rows of the picture; max_lines: lines drawn at most per colour (a fixed subsample).
    Returns:
        the picture as base64 JPEG text.
    """
    import cv2

    im0, s0 = thumbnail(path0, height)
    im1, s1 = thumbnail(path1, height)
    canvas = np.full((height, im0.shape[1] + gap + im1.shape[1], 3), 255, np.uint8)
    canvas[:, : im0.shape[1]] = im0
    canvas[:, im0.shape[1] + gap :] = im1
    p0 = np.asarray(points0, np.float64).reshape(-1, 2)
    p1 = np.asarray(points1, np.float64).reshape(-1, 2)
    inlier = np.ones(len(p0), bool) if inlier is None else np.asarray(inlier, bool)
    offset = im0.shape[1] + gap
    # outliers first, inliers on top
    for mask, colour in ((~inlier, OUTLIER_COLOUR), (inlier, INLIER_COLOUR)):
        idx = np.flatnonzero(mask)
        idx = idx[_subsample(len(idx), max_lines)]
        a = np.rint((p0[idx] + 0.5) * s0 - 0.5).astype(np.int64)
        b = np.rint((p1[idx] + 0.5) * s1 - 0.5).astype(np.int64) + [offset, 0]
        for (x0, y0), (x1, y1) in zip(a.tolist(), b.tolist()):
            cv2.line(canvas, (x0, y0), (x1, y1), colour, 1, cv2.LINE_AA)
            cv2.circle(canvas, (x0, y0), 2, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, (x1, y1), 2, colour, -1, cv2.LINE_AA)
    return encode_jpeg(canvas)


def draw_image(path: Path, height: int = 200) -> str:
    """One photo resized to ``height`` rows, as base64 JPEG text."""
    return encode_jpeg(thumbnail(path, height)[0])
