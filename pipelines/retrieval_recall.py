"""Recall of ground-truth overlapping pairs by global-descriptor retrieval (castle-P30, fox).

    python pipelines/retrieval_recall.py --scenes castle-P30 fox --work /tmp/retrieval_recall

Ground-truth overlap (the GT models have cameras but no 3D points):

1. Scene depth per image. Each image is matched (SIFT baseline, through
   :func:`loftr_sfm.matching.match_pairs`) with its 4 nearest GT cameras whose optical axes differ by
   less than 60 degrees; matches are triangulated with the GT poses and intrinsics (distortion
   included, via pycolmap's ``cam_from_img``) and kept when both reprojection errors are < 2 px,
   both depths are positive and the triangulation angle is > 1 degree. ``d_i`` = median depth of
   the points seen by image i.
2. Frustum overlap ``ov(i -> j)``: a 20 x 20 grid of pixels of image i, back-projected to depth
   ``d_i`` (a fronto-parallel plane through the scene), projected into image j: the fraction that
   lands inside image j in front of the camera.
3. A pair (i, j) overlaps in GT when ``(ov(i->j) + ov(j->i)) / 2 >= --min-overlap`` (default 0.3)
   and the angle between the optical axes is < 60 degrees (opposite views of a plane do not share
   a surface).

Metrics for retrieval top-k (k = 5, 10, 20) over all images, pairs unordered:
* pair recall = |retrieved ∩ GT| / |GT|, precision = |retrieved ∩ GT| / |retrieved|;
* image recall@k = mean over images of |top-k(i) ∩ GT(i)| / min(k, |GT(i)|) (how many of the k
  slots that could hold an overlapping image do).
The sequential window of the same K is printed as a reference (fox is a video, castle a walk).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loftr_sfm.io import list_images, read_raw_matches  # noqa: E402
from loftr_sfm.pairs import canonical_pairs, pairs_from_retrieval, pairs_from_sequential  # noqa: E402
from loftr_sfm.retrieval import GLOBAL_FEATURES_FILE, compute_global_descriptors, load_descriptors  # noqa: E402

logger = logging.getLogger("retrieval_recall")
DATA = REPO.parent / "shared" / "data"


def gt_cameras(scene: Path) -> dict:
    """name -> dict(cam, R (3x3 cam_from_world), t (3,), C (3,) centre, axis (3,) viewing direction)."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(scene / "gt"))
    out = {}
    for im in rec.images.values():
        T = im.cam_from_world()
        R, t = T.rotation.matrix(), np.asarray(T.translation)
        out[im.name] = {"cam": rec.cameras[im.camera_id], "R": R, "t": t, "C": -R.T @ t, "axis": R[2]}
    return out


def _axis_angle(cams, a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(cams[a]["axis"] @ cams[b]["axis"], -1, 1))))


def _triangulate(x0: np.ndarray, x1: np.ndarray, P0: np.ndarray, P1: np.ndarray) -> np.ndarray:
    """Linear DLT of (N, 2) normalised coordinates with (3, 4) cameras -> (N, 3) world points."""
    A = np.stack(
        [x0[:, :1] * P0[2] - P0[0], x0[:, 1:] * P0[2] - P0[1], x1[:, :1] * P1[2] - P1[0], x1[:, 1:] * P1[2] - P1[1]],
        axis=1,
    )  # (N, 4, 4)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    return X[:, :3] / X[:, 3:]


def estimate_depths(scene: Path, names: list[str], cams: dict, work: Path, num_neighbors: int = 4) -> dict[str, float]:
    """Median depth of triangulated GT-consistent SIFT matches per image (see module docstring)."""
    import h5py

    from loftr_sfm.matching import match_pairs

    centres = np.stack([cams[n]["C"] for n in names])
    pairs = []
    for i, n in enumerate(names):
        d = np.linalg.norm(centres - centres[i], axis=1)
        cand = [j for j in np.argsort(d) if j != i and _axis_angle(cams, n, names[j]) < 60]
        pairs += [(n, names[j]) for j in cand[:num_neighbors]]
    pairs = canonical_pairs(pairs, names)
    h5 = work / "depth_matches.h5"
    match_pairs(pairs, scene / "images", h5, {"matcher": "sift", "num_workers": 1})
    depths: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with h5py.File(h5, "r") as f:
        for a, b in pairs:
            k0, k1, _ = read_raw_matches(f, a, b)
            if len(k0) < 8:
                continue
            ca, cb = cams[a], cams[b]
            x0 = ca["cam"].cam_from_img(k0.astype(np.float64) + 0.5)  # COLMAP convention
            x1 = cb["cam"].cam_from_img(k1.astype(np.float64) + 0.5)
            P0, P1 = np.c_[ca["R"], ca["t"]], np.c_[cb["R"], cb["t"]]
            X = _triangulate(x0, x1, P0, P1)
            Xa, Xb = X @ ca["R"].T + ca["t"], X @ cb["R"].T + cb["t"]
            ok = (Xa[:, 2] > 0) & (Xb[:, 2] > 0)
            fa, fb = ca["cam"].mean_focal_length(), cb["cam"].mean_focal_length()
            err_a = np.linalg.norm(Xa[:, :2] / Xa[:, 2:] - x0, axis=1) * fa
            err_b = np.linalg.norm(Xb[:, :2] / Xb[:, 2:] - x1, axis=1) * fb
            ra, rb = X - ca["C"], X - cb["C"]
            cosang = np.sum(ra * rb, 1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
            ok &= (err_a < 2) & (err_b < 2) & (cosang < np.cos(np.radians(1.0)))
            depths[a].append(Xa[ok, 2])
            depths[b].append(Xb[ok, 2])
    med = {n: float(np.median(np.concatenate(v))) if v and sum(map(len, v)) >= 20 else np.nan for n, v in depths.items()}
    fallback = float(np.nanmedian(list(med.values())))
    missing = [n for n, d in med.items() if not np.isfinite(d)]
    if missing:
        logger.warning("%d image(s) without enough triangulated points: depth %.2f used", len(missing), fallback)
    return {n: (d if np.isfinite(d) else fallback) for n, d in med.items()}


def overlap_matrix(names: list[str], cams: dict, depths: dict[str, float], grid: int = 20) -> np.ndarray:
    """(N, N) frustum overlap ov[i, j] = fraction of image i's plane-at-depth grid seen by image j."""
    n = len(names)
    ov = np.zeros((n, n))
    for i, a in enumerate(names):
        ca = cams[a]
        W, H = ca["cam"].width, ca["cam"].height
        u, v = np.meshgrid((np.arange(grid) + 0.5) * W / grid, (np.arange(grid) + 0.5) * H / grid)
        rays = ca["cam"].cam_from_img(np.c_[u.ravel(), v.ravel()])
        Xc = np.c_[rays, np.ones(len(rays))] * depths[a]
        Xw = (Xc - ca["t"]) @ ca["R"]  # R^T (Xc - t)
        for j, b in enumerate(names):
            if i == j:
                continue
            cb = cams[b]
            Xb = Xw @ cb["R"].T + cb["t"]
            front = Xb[:, 2] > 1e-6
            if not front.any():
                continue
            uv = cb["cam"].img_from_cam(Xb[front])
            inside = (uv[:, 0] >= 0) & (uv[:, 0] <= cb["cam"].width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cb["cam"].height)
            ov[i, j] = inside.sum() / len(Xb)
    return ov


def gt_pairs(names, cams, ov, min_overlap: float) -> set[frozenset]:
    out = set()
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if (ov[i, j] + ov[j, i]) / 2 >= min_overlap and _axis_angle(cams, names[i], names[j]) < 60:
                out.add(frozenset((names[i], names[j])))
    return out


def metrics(pairs, gt: set[frozenset], names, per_image_top: dict[str, list[str]] | None, k: int) -> dict:
    got = {frozenset(p) for p in pairs}
    hit = got & gt
    res = {"pairs": len(got), "recall": len(hit) / max(len(gt), 1), "precision": len(hit) / max(len(got), 1)}
    if per_image_top is not None:
        vals = []
        for n in names:
            g = {m for p in gt if n in p for m in p if m != n}
            if g:
                vals.append(len(set(per_image_top[n][:k]) & g) / min(k, len(g)))
        res["image_recall"] = float(np.mean(vals))
    return res


def run_scene(scene_name: str, work: Path, ks=(5, 10, 20), min_overlap: float = 0.3, num_workers: int = 1) -> list[dict]:
    scene = DATA / scene_name
    work = work / scene_name
    work.mkdir(parents=True, exist_ok=True)
    names = list_images(scene / "images")
    cams = gt_cameras(scene)
    names = [n for n in names if n in cams]
    t = time.perf_counter()
    depths = estimate_depths(scene, names, cams, work)
    ov = overlap_matrix(names, cams, depths)
    gt = gt_pairs(names, cams, ov, min_overlap)
    t_gt = time.perf_counter() - t
    t = time.perf_counter()
    compute_global_descriptors(names, scene / "images", work, {"num_workers": num_workers})
    t_desc = time.perf_counter() - t
    _, desc = load_descriptors(work / GLOBAL_FEATURES_FILE, names)
    sim = desc @ desc.T
    np.fill_diagonal(sim, -np.inf)
    top = {n: [names[j] for j in np.argsort(-sim[i], kind="stable")] for i, n in enumerate(names)}
    rows = []
    total = len(names) * (len(names) - 1) // 2
    for k in ks:
        r = metrics(pairs_from_retrieval(names, desc, k), gt, names, top, k)
        s = metrics(pairs_from_sequential(names, k), gt, names, None, k)
        rows.append(
            {
                "scene": scene_name,
                "images": len(names),
                "gt_pairs": len(gt),
                "all_pairs": total,
                "k": k,
                **{f"ret_{a}": b for a, b in r.items()},
                **{f"seq_{a}": b for a, b in s.items()},
                "t_gt": t_gt,
                "t_desc": t_desc,
            }
        )
    logger.info("%s: median depth %.2f, GT pairs %d of %d", scene_name, np.median(list(depths.values())), len(gt), total)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["castle-P30", "fox"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/retrieval_recall"))
    ap.add_argument("--k", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--min-overlap", type=float, default=0.3)
    ap.add_argument("--num-workers", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    rows = []
    for s in args.scenes:
        rows += run_scene(s, args.work, args.k, args.min_overlap, args.num_workers)
    print()
    print(f"GT overlap: mean frustum overlap >= {args.min_overlap} at the median triangulated depth, axes < 60 deg")
    print("| scene | images | GT pairs / all | k | retrieval pairs | pair recall | precision | image recall@k | sequential(K=k) pair recall | precision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scene']} | {r['images']} | {r['gt_pairs']} / {r['all_pairs']} | {r['k']} | {r['ret_pairs']} | "
            f"{r['ret_recall']:.3f} | {r['ret_precision']:.3f} | {r['ret_image_recall']:.3f} | "
            f"{r['seq_recall']:.3f} | {r['seq_precision']:.3f} |"
        )
    for s in args.scenes:
        r = next(x for x in rows if x["scene"] == s)
        print(f"{s}: GT construction {r['t_gt']:.1f} s, VLAD descriptors {r['t_desc']:.1f} s (shared machine, noisy)")


if __name__ == "__main__":
    main()
