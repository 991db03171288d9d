"""Synthetic scenes with exact ground truth and EfficientLoFTR-shaped semi-dense matches.

The scene is analytic: a textured ground plane, a textured back wall and a textured box, seen
by cameras on an arc around it (pinhole, or with COLMAP's RADIAL distortion: ``distortion``).
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

Run: ``python datasets/synthetic.py --output DIR [--num-images 8] [--style sift] [...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class SceneConfig:
    num_images: int = 8
    width: int = 480
    height: int = 360
    focal: float = 400.0  # px
    principal_offset: tuple[float, float] = (0.0, 0.0)  # px, principal point minus the image centre (x, y)
    focals: dict = field(default_factory=dict)  # {index: focal} images taken with another focal length (px)
    distortion: tuple[float, float] = (0.0, 0.0)  # radial k1, k2 of every camera (COLMAP's RADIAL model)
    radius: float = 6.0  # camera distance to the scene centre
    arc_deg: float = 80.0  # cameras spread over this arc
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


def _planes() -> list[dict]:
    """Rectangles: origin o, edge vectors u, v (the rectangle is o + a u + b v, a, b in [0,1])."""
    P = []

    def rect(o, u, v, tex):
        o, u, v = (np.array(x, float) for x in (o, u, v))
        n = np.cross(u, v)
        P.append({"o": o, "u": u, "v": v, "n": n / np.linalg.norm(n), "tex": tex})

    rect([-6, -6, 0], [12, 0, 0], [0, 12, 0], 0)  # ground z=0
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


def make_cameras(cfg: SceneConfig, rng: np.random.Generator) -> list[Cam]:
    n = cfg.num_images + cfg.isolated_images
    cams = []
    angles = np.deg2rad(np.linspace(-cfg.arc_deg / 2, cfg.arc_deg / 2, max(n, 1))) if n > 1 else np.zeros(1)
    for i in range(n):
        a = angles[i] - np.pi / 2
        c = np.array([cfg.radius * np.cos(a), cfg.radius * np.sin(a), 2.5 + 0.6 * np.sin(3 * i)])
        c += rng.normal(0, 0.15, 3)
        target = np.array([0, 0.5, 0.7]) + rng.normal(0, 0.2, 3)
        R = look_at(c, target)
        roll = rng.normal(0, 0.05)
        Rz = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
        R = Rz @ R
        w, h = cfg.width, cfg.height
        if i in cfg.sizes or str(i) in cfg.sizes:
            w, h = cfg.sizes.get(i, cfg.sizes.get(str(i)))
        if i in cfg.portrait:
            w, h = h, w
        f = cfg.focals.get(i, cfg.focals.get(str(i), cfg.focal)) * max(w, h) / max(cfg.width, cfg.height)
        if cfg.subfolders:
            name = f"{'ab'[i % 2]}/img_{i // 2:03d}.png"
        else:
            name = f"img_{i:03d}.png"
        cams.append(Cam(name, int(w), int(h), float(f), R, -R @ c, tuple(map(float, cfg.principal_offset)),
                        tuple(map(float, cfg.distortion))))
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
    planes = _planes()
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
    a = vars(ap.parse_args(argv))
    out = a.pop("output")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a["principal_offset"] = tuple(a["principal_offset"])
    a["distortion"] = tuple(a["distortion"])
    generate(out, SceneConfig(**a))


if __name__ == "__main__":
    main()
