"""Synthetic scenes with exact ground truth and EfficientLoFTR-shaped semi-dense matches.

The scene is analytic: a textured ground plane, a textured back wall and a textured box, seen
by cameras on an arc around it or in another ``layout`` (see below), pinhole or with COLMAP's RADIAL
distortion (``distortion``), optionally two camera models (``second_camera``).
Every pixel is ray-cast against the planes (nearest hit), so depth, visibility and
correspondences are exact. Images are rendered from procedural multi-scale textures (so real
matchers can run on them too).

Output folder:
  images/            PNG images (optionally in sub-folders, mixed sizes / portrait)
  gt/                COLMAP text model: cameras (PINHOLE, or RADIAL with ``distortion``; COLMAP
                     convention) and poses, no points
  pairs.txt          the pairs (exhaustive unless told otherwise)
  matches.h5         raw semi-dense matches shaped like EfficientLoFTR's (hloc dense layout):
                     image0 on the 8-px coarse grid refined to a 1-px lattice (the pixel chosen
                     in each 8x8 cell is the image's "salient" pixel with probability
                     ``p_same_pixel``, else a random one, like the network's argmax), mutual
                     coarse matching (one match per image1 coarse cell), image1 sub-pixel with
                     Gaussian noise ``noise`` px, a fraction ``outliers`` of random matches.
Coordinates in matches.h5 follow OpenCV (integer = pixel centre), i.e. COLMAP minus 0.5.

With ``style="sift"`` the matches are detector-like instead: fixed 3D points on the surfaces,
each image "detects" the visible ones once (projection + noise, identical in every pair), so the
same keypoint recurs exactly across pairs (what SIFT / detector-based matchers give).

Camera layouts (``layout``; images are named img_000.png, img_001.png, ... in capture order):
  arc            (default) ``arc_deg`` (80) deg of a circle of ``radius`` (6 m) in front of the box, heights
                 2.5 +- 0.6 m, looking at the box / wall. Exactly the cameras of the versions before ``layout``.
  ring           a full 360 deg circle of ``radius`` around the box, looking at the box centre. The back
                 wall (y = 4) would hide the scene from the cameras behind it, so the ring has no back wall
                 (ground + box only; ``back_wall=True`` puts it back); the upper part of the images is empty.
  turntable      object-turntable: full circles at 2 elevations (20, 45 deg; 3 rings at 15, 35, 55 deg from
                 18 images on) at 0.6 ``radius`` (3.6 m) from the box centre, looking at it (the box fills
                 most of the image); ring by ring, odd rings shifted by half a step. The back wall stays
                 (it is behind the cameras, never between them and the box).
  walk_turn      a walk around the box's front-right corner at eye height (1.6 m): a segment along y = -5
                 looking sideways (+y, at box and wall), a 90 deg turn (quarter circle of radius 1 m, the
                 view turns with the path), a segment along x = +5 looking -x; cameras equally spaced along
                 the path (so the view direction jumps by up to ~70-90 deg between the two images around the
                 corner at ~1.5 m spacing).
  video_gap      like arc, but the step between images n//2 - 1 and n//2 is a quarter of the arc (the other
                 steps are equal): a video with a dropped stretch.
  wide_baseline  like arc over 150 deg (``arc_deg`` overrides): few images, wide baselines between neighbours.
The camera jitter (position, aim, roll) is drawn from the scene's generator like the arc's.

Two camera models in one scene: ``second_camera={"focal": px, "width": w, "height": h, "distortion": [k1, k2],
"images": "odd" | "second_half"}`` takes the odd-indexed images (or the second half) with that camera
(missing keys: the first camera's; focal: scaled with the size). Per-index ``focals`` / ``sizes`` /
``portrait`` apply on top (``focals`` are then relative to the image's camera size).

:func:`check_scene` reads a written scene back (gt/ with pycolmap, pairs.txt, matches.h5) and gives, per pair,
the match count and the fraction of matches within 1 px (Sampson, undistorted pixels) of the GT epipolar
geometry. Note the fraction of outliers after the mutual coarse matching is larger than ``outliers`` in pairs
of small, foreshortened overlap (inliers then share image1 cells and collapse, random outliers do not).

Run: ``python datasets/synthetic.py --output DIR [--num-images 8] [--style sift] [--layout ring] [--check] [...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

logger = logging.getLogger(__name__)


Layout = Literal["arc", "ring", "turntable", "walk_turn", "video_gap", "wide_baseline"]
LAYOUTS = get_args(Layout)
VIDEO_GAP = 0.25  # video_gap: fraction of the arc skipped between images n // 2 - 1 and n // 2
TURNTABLE_ELEVATIONS = {2: (20.0, 45.0), 3: (15.0, 35.0, 55.0)}  # deg, per number of rings
TURNTABLE_DISTANCE = 0.6  # turntable: camera distance to the box centre, times ``radius`` (3.6 m by default)
WALK_DISTANCE = 5 / 6  # walk_turn: the path runs at ``radius`` times this (5 m) from the box centre
WALK_CORNER_RADIUS = 1.0  # walk_turn: radius (m) of the 90 deg turn
WALK_SEGMENT2_END = 2.5  # walk_turn: segment 2 ends at y = this (m; the back wall is at y = 4)


@dataclass
class SceneConfig:
    num_images: int = 8
    width: int = 480
    height: int = 360
    focal: float = 400.0  # px
    principal_offset: tuple[float, float] = (0.0, 0.0)  # px, principal point minus the image centre (x, y)
    focals: dict = field(default_factory=dict)  # {index: focal} images taken with another focal length (px)
    distortion: tuple[float, float] = (0.0, 0.0)  # radial k1, k2 of every camera (COLMAP's RADIAL model)
    radius: float = 6.0  # camera distance to the scene centre (ring, arc layouts; scales turntable / walk_turn)
    # span of the arc layouts (arc, video_gap, wide_baseline); None: 80 deg, 150 deg for wide_baseline
    arc_deg: float | None = None
    layout: Layout = "arc"  # camera layout, see "Camera layouts" in the module docstring
    back_wall: bool | None = None  # the back wall plane y=4; None: present except in the "ring" layout
    # a second camera model: {"focal": px, "width": w, "height": h, "distortion": [k1, k2], "principal_offset":
    # [dx, dy], "images": "odd" | "second_half"}; the odd-indexed images (default) or the second half of the
    # images are taken with it; missing keys are the first camera's (focal: scaled with the size)
    second_camera: dict | None = None
    seed: int = 0
    noise: float = 0.3  # px, Gaussian noise of image1 keypoints
    outliers: float = 0.05  # fraction of random matches
    p_same_pixel: float = 0.6  # probability that image0's lattice pixel is the cell's salient pixel
    coarse: int = 8  # coarse grid stride (px)
    style: str = "eloftr"  # eloftr (semi-dense, see above) | sift (repeatable detections, see sift_matches)
    num_points: int = 4000  # sift style: 3D points sampled on the surfaces
    pairs: str = "exhaustive"  # exhaustive | sequential
    num_neighbors: int = 3  # for sequential
    # edge cases
    portrait: list[int] = field(default_factory=list)  # image indices rendered portrait (h x w swapped)
    sizes: dict = field(default_factory=dict)  # {index: [w, h]} other sizes
    subfolders: bool = False  # images in a/ and b/ with equal file names
    zero_match_pairs: int = 0  # this many pairs keep their group but have 0 matches
    isolated_images: int = 0  # extra images (rendered) that appear in no pair
    render: bool = True  # write textured images (else flat grey of the right size)
    antialias: int = 1  # rays per pixel side (1: point-sampled, aliased at grazing views; 3: a camera's area sampling)
    # texture per plane, never repeated (False: 5 textures of 3 m tiled over the planes and shared by
    # opposite box faces, i.e. exactly periodic structure, where matches can be wrong yet consistent)
    unique_textures: bool = False


# --------------------------------------------------------------------------- geometry


def _planes(back_wall: bool = True) -> list[dict]:
    """Rectangles: origin o, edge vectors u, v (the rectangle is o + a u + b v, a, b in [0,1]).
    Without ``back_wall`` only the ground and the box (texture indices unchanged)."""
    P = []

    def rect(o, u, v, tex):
        o, u, v = (np.array(x, float) for x in (o, u, v))
        n = np.cross(u, v)
        P.append({"o": o, "u": u, "v": v, "n": n / np.linalg.norm(n), "tex": tex})

    rect([-6, -6, 0], [12, 0, 0], [0, 12, 0], 0)  # ground z=0
    if back_wall:
        rect([-6, 4, 0], [12, 0, 0], [0, 0, 6], 1)  # back wall y=4
    # box [-1.2,1.2] x [-1,1] x [0,1.8]
    x0, x1, y0, y1, z1 = -1.2, 1.2, -1.0, 1.0, 1.8
    rect([x0, y0, 0], [x1 - x0, 0, 0], [0, 0, z1], 2)  # front y=y0
    rect([x0, y1, 0], [x1 - x0, 0, 0], [0, 0, z1], 2)  # back
    rect([x0, y0, 0], [0, y1 - y0, 0], [0, 0, z1], 3)  # left
    rect([x1, y0, 0], [0, y1 - y0, 0], [0, 0, z1], 3)  # right
    rect([x0, y0, z1], [x1 - x0, 0, 0], [0, y1 - y0, 0], 4)  # top
    return P


def raycast(centre: np.ndarray, dirs: np.ndarray, planes: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays ``centre + t * dirs`` (dirs (M, 3)).

    Returns t (M,) (inf = no hit), plane index (M,) (-1), a (M,), b (M,) rectangle coords.
    """
    M = len(dirs)
    best = np.full(M, np.inf)
    pid = np.full(M, -1)
    A = np.zeros(M)
    B = np.zeros(M)
    for k, p in enumerate(planes):
        den = dirs @ p["n"]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((p["o"] - centre) @ p["n"]) / den
        X = centre + t[:, None] * dirs
        r = X - p["o"]
        a = r @ p["u"] / (p["u"] @ p["u"])
        b = r @ p["v"] / (p["v"] @ p["v"])
        ok = (t > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (t < best) & np.isfinite(t)
        best[ok], pid[ok], A[ok], B[ok] = t[ok], k, a[ok], b[ok]
    return best, pid, A, B


def look_at(c: np.ndarray, target: np.ndarray, up=(0, 0, 1.0)) -> np.ndarray:
    """World-to-camera rotation (OpenCV camera: x right, y down, z forward)."""
    z = target - c
    z /= np.linalg.norm(z)
    x = np.cross(z, np.array(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


@dataclass
class Cam:
    name: str
    w: int
    h: int
    f: float
    R: np.ndarray  # world -> camera
    t: np.ndarray
    offset: tuple[float, float] = (0.0, 0.0)  # principal point minus the image centre (px)
    k: tuple[float, float] = (0.0, 0.0)  # radial distortion k1, k2 (COLMAP RADIAL: x_d = x (1 + k1 r^2 + k2 r^4))

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t

    def K_cv(self) -> np.ndarray:
        """Intrinsics in OpenCV convention (principal point = COLMAP's minus 0.5)."""
        cx, cy = self.w / 2 + self.offset[0] - 0.5, self.h / 2 + self.offset[1] - 0.5
        return np.array([[self.f, 0, cx], [0, self.f, cy], [0, 0, 1.0]])

    def rays(self, xy: np.ndarray) -> np.ndarray:
        K = self.K_cv()
        u = np.stack([(xy[:, 0] - K[0, 2]) / self.f, (xy[:, 1] - K[1, 2]) / self.f], 1)
        if any(self.k):  # undistort: fixed-point iteration of u = u_d / (1 + k1 r^2 + k2 r^4)
            ud = u.copy()
            for _ in range(50):
                r2 = np.sum(u * u, 1, keepdims=True)
                u = ud / (1 + self.k[0] * r2 + self.k[1] * r2 * r2)
        d = np.c_[u, np.ones(len(xy))]
        return d @ self.R  # camera -> world directions (R^T d)

    def project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xc = X @ self.R.T + self.t
        K = self.K_cv()
        z = Xc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = Xc[:, :2] / z[:, None]
            r2 = np.sum(u * u, 1, keepdims=True)
            u = u * (1 + self.k[0] * r2 + self.k[1] * r2 * r2)
            # beyond the radius where distortion stops growing with r, points would fold back into the image
            u[(1 + 3 * self.k[0] * r2 + 5 * self.k[1] * r2 * r2)[:, 0] <= 0] = np.nan
            xy = np.stack([K[0, 0] * u[:, 0] + K[0, 2], K[1, 1] * u[:, 1] + K[1, 2]], 1)
        return xy, z


def _jitter_pose(c: np.ndarray, target: np.ndarray, rng: np.random.Generator, pos: float = 0.15,
                 aim: float = 0.2, roll: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Centre + N(0, pos), looking at target + N(0, aim), rolled by N(0, roll) rad; returns (c, R).
    Draws in this order: centre (3), target (3), roll (1) -- the order of the original "arc" cameras."""
    c = c + rng.normal(0, pos, 3)
    target = target + rng.normal(0, aim, 3)
    R = look_at(c, target)
    r = rng.normal(0, roll)
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return c, Rz @ R


def _arc_angles(n: int, span_deg: float, gap: float = 0.0) -> np.ndarray:
    """n azimuths (rad, 0 = in front of the box, i.e. at -y) over ``span_deg``; with ``gap`` > 0 the step
    between images n // 2 - 1 and n // 2 is ``gap`` of the span and the other steps are equal."""
    if n <= 1:
        return np.zeros(1)
    if gap <= 0 or n < 3:
        return np.deg2rad(np.linspace(-span_deg / 2, span_deg / 2, n))
    step = span_deg * (1 - gap) / (n - 2)
    steps = np.full(n - 1, step)
    steps[n // 2 - 1] = span_deg * gap
    return np.deg2rad(np.r_[0.0, np.cumsum(steps)] - span_deg / 2)


def _layout_poses(cfg: SceneConfig, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centre, world-to-camera R) of the ``n`` cameras of ``cfg.layout``, in capture order."""
    layout = cfg.layout
    poses = []
    if layout in ("arc", "video_gap", "wide_baseline"):
        span = cfg.arc_deg if cfg.arc_deg is not None else (150.0 if layout == "wide_baseline" else 80.0)
        angles = _arc_angles(n, span, VIDEO_GAP if layout == "video_gap" else 0.0)
        for i in range(n):
            a = angles[i] - np.pi / 2
            c = np.array([cfg.radius * np.cos(a), cfg.radius * np.sin(a), 2.5 + 0.6 * np.sin(3 * i)])
            poses.append(_jitter_pose(c, np.array([0, 0.5, 0.7]), rng))
    elif layout == "ring":
        for i in range(n):
            a = 2 * np.pi * i / n - np.pi / 2
            c = np.array([cfg.radius * np.cos(a), cfg.radius * np.sin(a), 2.5 + 0.6 * np.sin(3 * i)])
            poses.append(_jitter_pose(c, np.array([0, 0, 0.7]), rng))
    elif layout == "turntable":
        rings = TURNTABLE_ELEVATIONS[3 if n >= 18 else 2]
        dist = TURNTABLE_DISTANCE * cfg.radius
        centre = np.array([0, 0, 0.9])  # of the box
        counts = [n // len(rings) + (k < n % len(rings)) for k in range(len(rings))]
        for k, (elev, m) in enumerate(zip(rings, counts)):
            e = np.deg2rad(elev)
            for j in range(m):
                a = 2 * np.pi * (j + 0.5 * (k % 2)) / m - np.pi / 2  # odd rings shifted by half a step
                c = centre + dist * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
                poses.append(_jitter_pose(c, centre, rng, pos=0.05, aim=0.1))
    elif layout == "walk_turn":
        # L-shaped path around the box's front-right corner: segment 1 along y = -d (walking +x, looking +y),
        # a quarter circle of radius rc (the 90 deg turn; the view turns with the path), segment 2 along x = +d
        # (walking +y, looking -x). Cameras equally spaced along the path, eye height 1.6 m.
        d, rc = WALK_DISTANCE * cfg.radius, WALK_CORNER_RADIUS
        l1, l2 = 2 * d - rc, d - rc + WALK_SEGMENT2_END
        la = np.pi / 2 * rc
        for i, s in enumerate(np.linspace(0, l1 + la + l2, n) if n > 1 else [0.0]):
            if s <= l1:
                p, tangent = np.array([-d + s, -d]), np.array([1.0, 0.0])
            elif s <= l1 + la:
                phi = (s - l1) / rc  # 0 -> pi/2
                p = np.array([d - rc + rc * np.sin(phi), -d + rc - rc * np.cos(phi)])
                tangent = np.array([np.cos(phi), np.sin(phi)])
            else:
                p, tangent = np.array([d, -d + rc + (s - l1 - la)]), np.array([0.0, 1.0])
            look = np.array([-tangent[1], tangent[0]])  # left of the walking direction: towards the box
            c = np.array([p[0], p[1], 1.6 + 0.1 * np.sin(3 * i)])
            target = np.array([*(p + d * look), 0.7])
            poses.append(_jitter_pose(c, target, rng, pos=0.05, aim=0.1))
    else:
        raise ValueError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    return poses


def _intrinsics(cfg: SceneConfig, i: int, n: int) -> tuple[int, int, float, tuple, tuple]:
    """(w, h, f, principal offset, distortion) of image i: its camera group's, then ``sizes`` / ``portrait``
    / ``focals`` of that index (the focal scaled with the image size relative to the group's size)."""
    W, H, F, off, k = cfg.width, cfg.height, cfg.focal, cfg.principal_offset, cfg.distortion
    sc = cfg.second_camera
    if sc:
        which = sc.get("images", "odd")
        if which not in ("odd", "second_half"):
            raise ValueError(f"second_camera['images'] must be 'odd' or 'second_half', not {which!r}")
        if (i % 2 == 1) if which == "odd" else (i >= (n + 1) // 2):
            W, H = sc.get("width", W), sc.get("height", H)
            F = sc.get("focal", F * max(W, H) / max(cfg.width, cfg.height))
            off, k = sc.get("principal_offset", off), sc.get("distortion", k)
    w, h = W, H
    if i in cfg.sizes or str(i) in cfg.sizes:
        w, h = cfg.sizes.get(i, cfg.sizes.get(str(i)))
    if i in cfg.portrait:
        w, h = h, w
    f = cfg.focals.get(i, cfg.focals.get(str(i), F)) * max(w, h) / max(W, H)
    return int(w), int(h), float(f), tuple(map(float, off)), tuple(map(float, k))


def make_cameras(cfg: SceneConfig, rng: np.random.Generator) -> list[Cam]:
    n = cfg.num_images + cfg.isolated_images
    cams = []
    for i, (c, R) in enumerate(_layout_poses(cfg, n, rng)):
        w, h, f, off, k = _intrinsics(cfg, i, n)
        if cfg.subfolders:
            name = f"{'ab'[i % 2]}/img_{i // 2:03d}.png"
        else:
            name = f"img_{i:03d}.png"
        cams.append(Cam(name, w, h, f, R, -R @ c, off, k))
    return cams


# --------------------------------------------------------------------------- rendering


TEXTURE_METRES = 3.0  # side of one texture (size px) on a plane


def _textures(rng: np.random.Generator, n: int = 5, size: int = 1024, scales: list[int] | None = None) -> list[np.ndarray]:
    """``n`` multi-scale noise textures; texture k spans ``scales[k]`` (default 1) times 3 m with the
    same detail per metre (side ``size * scales[k]`` px)."""
    import cv2

    texs = []
    for k in range(n):
        r = scales[k] if scales else 1
        side = size * r
        t = np.zeros((side, side), np.float32)
        for s, amp in ((8, 1.0), (32, 0.7), (128, 0.5), (512, 0.3)):
            small = rng.random((s * r, s * r)).astype(np.float32)
            t += amp * cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        # a few sharp blobs / lines for corners
        for _ in range(300 * r * r):
            x, y = rng.integers(0, side, 2)
            cv2.circle(t, (int(x), int(y)), int(rng.integers(2, 10)), float(rng.uniform(-1, 2)), -1)
        t = (t - t.min()) / (t.max() - t.min() + 1e-9)
        texs.append(t)
    return texs


def unique_textures(planes: list[dict], rng: np.random.Generator) -> list[np.ndarray]:
    """One texture per plane, large enough to cover it once; sets each plane's ``tex`` and ``reps`` = 1."""
    scales = [int(np.ceil(max(np.linalg.norm(p["u"]), np.linalg.norm(p["v"])) / TEXTURE_METRES)) for p in planes]
    for k, p in enumerate(planes):
        p["tex"], p["reps"] = k, 1.0
    return _textures(rng, len(planes), scales=scales)


def render(cam: Cam, planes: list[dict], texs: list[np.ndarray], antialias: int = 1) -> np.ndarray:
    """(h, w, 3) uint8 image of the scene from ``cam``; ``antialias`` x ``antialias`` rays per pixel, averaged."""

    s = max(int(antialias), 1)
    ys, xs = np.mgrid[0 : cam.h * s, 0 : cam.w * s]
    xy = (np.stack([xs.ravel(), ys.ravel()], 1).astype(float) + 0.5) / s - 0.5  # sub-pixel ray positions
    t, pid, a, b = raycast(cam.centre, cam.rays(xy), planes)
    img = np.full(len(xy), 0.5, np.float32)
    for k, p in enumerate(planes):
        sel = pid == k
        if not sel.any():
            continue
        tex = texs[p["tex"]]
        S = tex.shape[0]
        reps = p.get("reps", max(1.0, np.linalg.norm(p["u"]) / TEXTURE_METRES))
        u = (a[sel] * reps * S) % S
        v = (b[sel] * reps * S) % S
        u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
        fu, fv = (u - u0)[:, None], (v - v0)[:, None]
        u1, v1 = (u0 + 1) % S, (v0 + 1) % S
        img[sel] = ((tex[v0, u0] * (1 - fu[:, 0]) + tex[v0, u1] * fu[:, 0]) * (1 - fv[:, 0])
                    + (tex[v1, u0] * (1 - fu[:, 0]) + tex[v1, u1] * fu[:, 0]) * fv[:, 0])
    shade = 0.75 + 0.25 * np.abs(np.stack([p["n"][2] for p in planes] + [0.0])[pid])
    img = img * shade
    img = img.reshape(cam.h, s, cam.w, s).mean(axis=(1, 3)) if s > 1 else img.reshape(cam.h, cam.w)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, 2)


# --------------------------------------------------------------------------- matches


def salient_offsets(cam_index: int, shape: tuple[int, int], coarse: int, seed: int) -> np.ndarray:
    """Per-image, per-coarse-cell preferred lattice offset (gy, gx, 2) in 0..coarse-1."""
    r = np.random.default_rng(seed * 7919 + cam_index)
    return r.integers(0, coarse, size=shape + (2,))


def surface_points(cam: Cam, xy: np.ndarray, planes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The scene points seen at pixels ``xy`` (N, 2) (OpenCV convention) of ``cam``.

    Returns X (N, 3) and hit (N,) bool; X is meaningless where the ray hits no plane.
    """
    rays = cam.rays(xy)
    t = raycast(cam.centre, rays, planes)[0]
    hit = np.isfinite(t)
    return cam.centre + np.where(hit, t, 1.0)[:, None] * rays, hit


def gt_matches(ci: Cam, cj: Cam, i: int, j: int, planes: list[dict], cfg: SceneConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EfficientLoFTR-shaped matches of pair (i, j) from the exact geometry.

    Returns kpts0 (N, 2) on the 1-px lattice of image i, kpts1 (N, 2) sub-pixel in image j,
    scores (N,). OpenCV pixel convention.
    """
    s = cfg.coarse
    gy, gx = ci.h // s, ci.w // s
    sal = salient_offsets(i, (gy, gx), s, cfg.seed)
    rnd = rng.integers(0, s, size=(gy, gx, 2))
    use = rng.random((gy, gx)) < cfg.p_same_pixel
    off = np.where(use[..., None], sal, rnd)
    cy, cx = np.mgrid[0:gy, 0:gx]
    xy0 = np.stack([cx * s + off[..., 1], cy * s + off[..., 0]], -1).reshape(-1, 2).astype(float)
    X, hit = surface_points(ci, xy0, planes)
    xy1, z1 = cj.project(X)
    inb = hit & (z1 > 0) & (xy1[:, 0] >= 0) & (xy1[:, 0] <= cj.w - 1) & (xy1[:, 1] >= 0) & (xy1[:, 1] <= cj.h - 1)
    # occlusion test in image j: the first hit along j's ray must be X
    idx = np.flatnonzero(inb)
    dirs = X[idx] - cj.centre
    dist = np.linalg.norm(dirs, axis=1)
    tj, _, _, _ = raycast(cj.centre, dirs / dist[:, None], planes)
    vis = np.zeros(len(xy0), bool)
    vis[idx] = np.abs(tj - dist) < 1e-6 * np.maximum(dist, 1) + 1e-6
    xy0, xy1 = xy0[vis], xy1[vis]
    n = len(xy0)
    xy1 = xy1 + rng.normal(0, cfg.noise, xy1.shape)
    scores = rng.uniform(0.5, 1.0, n)
    n_out = int(round(cfg.outliers * n))
    if n_out:
        o = rng.choice(n, n_out, replace=False)
        xy1[o] = rng.uniform([0, 0], [cj.w - 1, cj.h - 1], (n_out, 2))
        scores[o] = rng.uniform(0.2, 0.8, n_out)
    xy1 = np.clip(xy1, 0, [cj.w - 1, cj.h - 1])
    # mutual coarse matching: one match per coarse cell of image1 (best score)
    c1 = np.floor(xy1 / s).astype(np.int64)
    key = c1[:, 1] * 100000 + c1[:, 0]
    order = np.lexsort((-scores, key))
    first = np.ones(n, bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = np.sort(order[first])
    return xy0[keep].astype(np.float32), xy1[keep].astype(np.float32), scores[keep].astype(np.float32)


def sift_detections(cams: list[Cam], planes: list[dict], cfg: SceneConfig, rng: np.random.Generator):
    """Detector-style keypoints: 3D points on the surfaces, each image detects the visible ones
    at their projection plus a per-(image, point) noise that is the same in every pair.

    Returns a list (per image) of dicts {point id: (x, y)} (OpenCV convention).
    """
    areas = np.array([np.linalg.norm(np.cross(p["u"], p["v"])) for p in planes])
    pid = rng.choice(len(planes), cfg.num_points, p=areas / areas.sum())
    ab = rng.random((cfg.num_points, 2))
    X = np.stack([planes[k]["o"] + a * planes[k]["u"] + b * planes[k]["v"] for k, (a, b) in zip(pid, ab)])
    dets = []
    for c in cams:
        xy, z = c.project(X)
        ok = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] <= c.w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= c.h - 1)
        idx = np.flatnonzero(ok)
        d = X[idx] - c.centre
        dist = np.linalg.norm(d, axis=1)
        t, _, _, _ = raycast(c.centre, d / dist[:, None], planes)
        vis = idx[np.abs(t - dist) < 1e-6 * np.maximum(dist, 1) + 1e-6]
        noisy = xy[vis] + rng.normal(0, cfg.noise, (len(vis), 2))
        dets.append(dict(zip(vis.tolist(), np.clip(noisy, 0, [c.w - 1, c.h - 1]).tolist())))
    return dets


def sift_matches(dets: list[dict], i: int, j: int, cfg: SceneConfig, rng: np.random.Generator, cams: list[Cam]):
    """Matches between the detections of images i and j (+ outliers between random detections)."""
    common = sorted(set(dets[i]) & set(dets[j]))
    k0 = np.array([dets[i][p] for p in common], np.float64).reshape(-1, 2)
    k1 = np.array([dets[j][p] for p in common], np.float64).reshape(-1, 2)
    sc = rng.uniform(0.5, 1.0, len(common))
    n_out = int(round(cfg.outliers * len(common)))
    if n_out:
        o = rng.choice(len(common), n_out, replace=False)
        others = np.array(list(dets[j].values()))
        k1[o] = others[rng.integers(0, len(others), n_out)]
        sc[o] = rng.uniform(0.2, 0.8, n_out)
    return k0.astype(np.float32), k1.astype(np.float32), sc.astype(np.float32)


# --------------------------------------------------------------------------- writer


def make_pairs(cams: list[Cam], cfg: SceneConfig) -> list[tuple[int, int]]:
    n = cfg.num_images  # isolated images (indices >= num_images) are in no pair
    if cfg.pairs == "exhaustive":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(i, j) for i in range(n) for j in range(i + 1, min(n, i + 1 + cfg.num_neighbors))]


def write_gt(cams: list[Cam], path: Path) -> None:
    import pycolmap

    rec = pycolmap.Reconstruction()
    for k, c in enumerate(cams, 1):
        cx, cy = c.w / 2 + c.offset[0], c.h / 2 + c.offset[1]
        if any(c.k):
            cam = pycolmap.Camera(camera_id=k, model="RADIAL", width=c.w, height=c.h, params=[c.f, cx, cy, *c.k])
        else:
            cam = pycolmap.Camera(camera_id=k, model="PINHOLE", width=c.w, height=c.h, params=[c.f, c.f, cx, cy])
        rec.add_camera_with_trivial_rig(cam)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(c.R), c.t)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=c.name, camera_id=k, image_id=k), pose)
    path.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(path))


def generate(output: Path, cfg: SceneConfig | None = None) -> dict:
    """Write a synthetic scene (see the module docstring). Returns a small manifest dict."""
    import cv2
    import h5py

    cfg = cfg or SceneConfig()
    output = Path(output)
    rng = np.random.default_rng(cfg.seed)
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {cfg.layout!r} (one of {', '.join(LAYOUTS)})")
    planes = _planes(cfg.back_wall if cfg.back_wall is not None else cfg.layout != "ring")
    cams = make_cameras(cfg, rng)
    (output / "images").mkdir(parents=True, exist_ok=True)
    texs = None
    if cfg.render:
        trng = np.random.default_rng(cfg.seed + 1)
        texs = unique_textures(planes, trng) if cfg.unique_textures else _textures(trng)
    for c in cams:
        p = output / "images" / c.name
        p.parent.mkdir(parents=True, exist_ok=True)
        img = render(c, planes, texs, cfg.antialias) if cfg.render else np.full((c.h, c.w, 3), 128, np.uint8)
        cv2.imwrite(str(p), img[..., ::-1])
    write_gt(cams, output / "gt")
    pairs = make_pairs(cams, cfg)
    zero = set(range(min(cfg.zero_match_pairs, len(pairs))))  # these pairs get 0 matches
    n_matches = []
    if cfg.style not in ("eloftr", "sift"):
        raise ValueError(f"unknown style {cfg.style!r}")
    dets = sift_detections(cams, planes, cfg, rng) if cfg.style == "sift" else None
    with h5py.File(output / "matches.h5", "w") as f:
        f.attrs["matcher"] = "sift" if cfg.style == "sift" else "eloftr"  # read by the keypoints preset "auto"
        for k, (i, j) in enumerate(pairs):
            if dets is not None:
                k0, k1, sc = sift_matches(dets, i, j, cfg, rng, cams)
            else:
                k0, k1, sc = gt_matches(cams[i], cams[j], i, j, planes, cfg, rng)
            if k in zero:
                k0, k1, sc = k0[:0], k1[:0], sc[:0]
            g = f.create_group(cams[i].name.replace("/", "-") + "/" + cams[j].name.replace("/", "-"))
            g.create_dataset("keypoints0", data=k0)
            g.create_dataset("keypoints1", data=k1)
            g.create_dataset("scores", data=sc)
            n_matches.append(len(k0))
    (output / "pairs.txt").write_text("".join(f"{cams[i].name} {cams[j].name}\n" for i, j in pairs))
    manifest = {"config": asdict(cfg), "images": [c.name for c in cams], "pairs": len(pairs),
                "matches_per_pair": n_matches}
    (output / "synthetic.json").write_text(json.dumps(manifest, indent=1))
    logger.info("synthetic scene: %d images, %d pairs, %d matches -> %s", len(cams), len(pairs), sum(n_matches), output)
    return manifest


def generate_cached(output: Path, cfg: SceneConfig) -> Path:
    """:func:`generate` into ``output`` unless it already holds the scene of ``cfg`` (its manifest's config);
    a folder holding another scene is replaced. Returns ``output``."""
    import shutil
    import time

    output = Path(output)
    manifest = output / "synthetic.json"
    if manifest.exists() and json.loads(manifest.read_text())["config"] == json.loads(json.dumps(asdict(cfg))):
        return output
    if output.exists():
        shutil.rmtree(output)
    t = time.perf_counter()
    generate(output, cfg)
    logger.info("generated %s in %.1f s", output, time.perf_counter() - t)
    return output


def write_matches(output: Path, cfg: SceneConfig, pairs: list[tuple[str, str]], progress: bool = False) -> list[int]:
    """Raw matches of any pair list (image names of the scene ``cfg``, e.g. a ``pairs.txt`` written by the
    pairs stage) into ``output/matches.h5``, as the matching stage would write them.

    The cameras are those :func:`generate` made for ``cfg``; the matches are drawn as there (``style``
    eloftr or sift), from a generator of their own seeded by ``cfg.seed`` and the pair list. Returns the
    number of matches per pair.
    """
    import h5py

    output = Path(output)
    rng = np.random.default_rng(cfg.seed)
    planes = _planes(cfg.back_wall if cfg.back_wall is not None else cfg.layout != "ring")
    cams = make_cameras(cfg, rng)
    index = {c.name: k for k, c in enumerate(cams)}
    unknown = sorted({n for p in pairs for n in p} - set(index))
    if unknown:
        raise ValueError(f"pairs name images that are not in the scene: {', '.join(unknown[:5])}")
    mrng = np.random.default_rng([cfg.seed, len(pairs), 27])
    dets = sift_detections(cams, planes, cfg, mrng) if cfg.style == "sift" else None
    n_matches = []
    from tqdm import tqdm

    with h5py.File(output / "matches.h5", "w") as f:
        f.attrs["matcher"] = "sift" if cfg.style == "sift" else "eloftr"
        for a, b in tqdm(pairs, desc="synthetic matches", unit="pair", disable=not progress):
            i, j = index[a], index[b]
            if dets is not None:
                k0, k1, sc = sift_matches(dets, i, j, cfg, mrng, cams)
            else:
                k0, k1, sc = gt_matches(cams[i], cams[j], i, j, planes, cfg, mrng)
            g = f.create_group(a.replace("/", "-") + "/" + b.replace("/", "-"))
            g.create_dataset("keypoints0", data=k0)
            g.create_dataset("keypoints1", data=k1)
            g.create_dataset("scores", data=sc)
            n_matches.append(len(k0))
    return n_matches


def sampson_errors(cam0, cam1, pose0, pose1, k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
    """Sampson distance (px, in undistorted pixels) of matches k0 <-> k1 (OpenCV convention) to the
    epipolar geometry of the pycolmap cameras ``cam0``, ``cam1`` with poses (cam_from_world Rigid3d)."""
    R0, t0 = pose0.rotation.matrix(), np.asarray(pose0.translation)
    R1, t1 = pose1.rotation.matrix(), np.asarray(pose1.translation)
    R = R1 @ R0.T
    t = t1 - R @ t0
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
    K0, K1 = cam0.calibration_matrix(), cam1.calibration_matrix()
    F = np.linalg.inv(K1).T @ E @ np.linalg.inv(K0)

    def undistorted(cam, K, k):  # COLMAP pixels (+0.5), undistorted, back to pixels of an ideal pinhole
        x = np.c_[cam.cam_from_img(np.asarray(k, np.float64) + 0.5), np.ones(len(k))]
        return x @ K.T

    x0, x1 = undistorted(cam0, K0, k0), undistorted(cam1, K1, k1)
    Fx0, Ftx1 = x0 @ F.T, x1 @ F
    num = np.sum(x1 * Fx0, 1) ** 2
    den = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30))


def check_scene(output: Path, max_error: float = 1.0) -> list[dict]:
    """Check a written scene against its own files: for each pair of pairs.txt, the number of matches in
    matches.h5 and the fraction of them within ``max_error`` px (Sampson) of the epipolar geometry of the GT
    model in gt/. Returns one dict per pair: names, matches, inlier_fraction, median_error."""
    import h5py
    import pycolmap

    output = Path(output)
    rec = pycolmap.Reconstruction(str(output / "gt"))
    by_name = {im.name: im for im in rec.images.values()}
    out = []
    with h5py.File(output / "matches.h5", "r") as f:
        for line in (output / "pairs.txt").read_text().splitlines():
            if not line.strip():
                continue
            a, b = line.split()
            g = f[a.replace("/", "-") + "/" + b.replace("/", "-")]
            k0, k1 = g["keypoints0"][()], g["keypoints1"][()]
            ia, ib = by_name[a], by_name[b]
            err = sampson_errors(rec.cameras[ia.camera_id], rec.cameras[ib.camera_id], ia.cam_from_world(),
                                 ib.cam_from_world(), k0, k1) if len(k0) else np.zeros(0)
            out.append({"image0": a, "image1": b, "matches": int(len(k0)),
                        "inlier_fraction": float(np.mean(err < max_error)) if len(err) else 0.0,
                        "median_error": float(np.median(err)) if len(err) else float("nan")})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, type=Path)
    for fdef in SceneConfig.__dataclass_fields__.values():
        if fdef.type in ("int", "float", "str"):
            ap.add_argument("--" + fdef.name.replace("_", "-"), type={"int": int, "float": float, "str": str}[fdef.type],
                            default=fdef.default)
    ap.add_argument("--subfolders", action="store_true")
    ap.add_argument("--unique-textures", action="store_true", help="one texture per plane, not tiled (no periodic structure)")
    ap.add_argument("--portrait", type=int, nargs="*", default=[])
    ap.add_argument("--principal-offset", type=float, nargs=2, default=[0.0, 0.0], metavar=("DX", "DY"))
    ap.add_argument("--distortion", type=float, nargs=2, default=[0.0, 0.0], metavar=("K1", "K2"))
    ap.add_argument("--layout", choices=LAYOUTS, default="arc", help="camera layout (see the module docstring)")
    ap.add_argument("--arc-deg", type=float, default=None, help="span of the arc layouts (default 80, wide_baseline 150)")
    ap.add_argument("--back-wall", choices=["auto", "yes", "no"], default="auto",
                    help="the back wall plane (auto: present except in the ring layout)")
    ap.add_argument("--second-camera", type=json.loads, default=None, metavar="JSON",
                    help='e.g. \'{"focal": 300, "width": 640, "height": 480}\': the odd images come from this camera')
    ap.add_argument("--no-render", dest="render", action="store_false", help="flat grey images (GT and matches only)")
    ap.add_argument("--check", action="store_true", help="after writing, check the matches against the GT poses")
    a = vars(ap.parse_args(argv))
    out = a.pop("output")
    check = a.pop("check")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a["principal_offset"] = tuple(a["principal_offset"])
    a["distortion"] = tuple(a["distortion"])
    a["back_wall"] = {"auto": None, "yes": True, "no": False}[a["back_wall"]]
    generate(out, SceneConfig(**a))
    if check:
        res = check_scene(out)
        fr = np.array([r["inlier_fraction"] for r in res if r["matches"]])
        logger.info("check: %d pairs, %d with matches, min %d matches; fraction of matches within 1 px (Sampson) of "
                    "the GT epipolar geometry: min %.3f, median %.3f", len(res), len(fr),
                    min((r["matches"] for r in res), default=0), fr.min() if len(fr) else 0, np.median(fr) if len(fr) else 0)


if __name__ == "__main__":
    main()
