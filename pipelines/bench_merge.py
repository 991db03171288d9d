"""Benchmark of the keypoint merge (loftr_sfm.keypoints): speed against a per-match Python version and
against hloc, memory at scale.

Synthetic but realistic input: images of 1024x768 looking at a textured plane
(image i = a similarity transform of the plane, images drift so that neighbours overlap),
pairs = each image with its next ``--pairs-per-image`` images, ``--pairs`` pairs (2,000 by default; or
``--images N``: every such pair of N images), every pair ``--matches`` EfficientLoFTR-shaped matches (5,000
by default): image0 on the 8-px coarse grid refined to a 1-px lattice (the cell's salient pixel with
probability 0.6, else random), image1 sub-pixel with ``--noise`` px Gaussian noise (0.3), ``--outliers``
uniform outliers (0.05). The issue-27 noisy input: ``--images 60 --matches 4000 --noise 0.5 --outliers 0.1``
(545 pairs, 2.18 M matches).

Modes:

* default: side by side in one process, ``vectorized`` (loftr_sfm.keypoints.merge_matches) and ``python``, a
  straightforward per-match Python implementation of the same rule (dicts, union-find, per-edge loops) run
  on the first ``--naive-pairs`` pairs only (it needs ~1 KB of Python objects per match); the outputs are
  compared (same keypoint and match counts, positions within 1e-6 px) and the speed-up is measured on that
  identical input. The vectorized merge is also run on all pairs; its peak memory is the tracemalloc peak
  of a separate call. ``--stage`` also writes the matches to a ``matches.h5`` (hloc's dense layout) and
  runs the whole stage on it in this process.
* ``--vs-hloc R``: the data written as ``pairs.txt`` + ``matches.h5``, then, R times in turn, the whole
  ``loftr-sfm keypoints`` command as a child process (wall, CPU = user + system of the child, peak RSS) and
  hloc's ``aggregate_matches`` + ``assign_matches`` (its ``loftr`` configuration, ``max_kps=8192`` as in
  hloc's dense pipeline) in this process on a fresh copy of ``matches.h5`` (wall, CPU of this process).
  Medians and the ratio hloc / ours. hloc comes from ``../shared/refs/hloc-src`` (``--hloc``), put on
  sys.path here only.
* ``--memory-sizes P1 P2 ...``: for each number of pairs, the data written (streamed, never all in memory)
  and ``loftr-sfm keypoints`` run as a child process: peak RSS (``wait4``), bytes per raw match, a
  least-squares line through the sizes and its value at ``--project-pairs`` (100,000 pairs: 10,000 images
  with ``--pairs-per-image 10``).

Timings on a shared machine are only comparable within one run (the ratios); retake them on a quiet
machine for publication.

Run: ``python pipelines/bench_merge.py [--pairs 2000 --pairs-per-image 10 --matches 5000]``;
``python pipelines/bench_merge.py --images 60 --matches 4000 --noise 0.5 --outliers 0.1 --vs-hloc 3``;
``python pipelines/bench_merge.py --matches 2500 --noise 0.5 --outliers 0.1 --memory-sizes 5000 20000 50000``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))

from hloc_ref import HLOC_SRC  # noqa: E402
from measure import run_module  # noqa: E402

from loftr_sfm.keypoints import PRESETS, KeypointsConfig, merge_matches, run_keypoints  # noqa: E402

_ENV = dict(__import__("os").environ)
_ENV["PYTHONPATH"] = __import__("os").pathsep.join([str(ROOT), str(ROOT / "pipelines"), _ENV.get("PYTHONPATH", "")])

W, H, S = 1024, 768, 8


def pair_list(n_pairs: int, per_image: int, n_images: int | None = None) -> tuple[list[tuple[int, int]], int]:
    """The pairs (each image with its next ``per_image`` images) and the number of images."""
    if n_images is None:
        n_images = -(-n_pairs // per_image) + per_image
        return [(i, j) for i in range(n_images) for j in range(i + 1, min(n_images, i + 1 + per_image))][:n_pairs], n_images
    return [(i, j) for i in range(n_images) for j in range(i + 1, min(n_images, i + 1 + per_image))], n_images


def iter_data(n_pairs: int, per_image: int, n_matches: int, seed: int = 0, noise: float = 0.3,
              outliers: float = 0.05, n_images: int | None = None):
    """Yield (i, j, kpts0 (N, 2) f4, kpts1 (N, 2) f4, scores (N,) f4) pair by pair (see the module docstring)."""
    rng = np.random.default_rng(seed)
    all_pairs, n_images = pair_list(n_pairs, per_image, n_images)
    # image i: x_i = s_i R_i (X - c_i) + image centre (plane coordinates X in px; the
    # camera drifts along the plane by ~25 px per image)
    ang = rng.normal(0, 0.05, n_images)
    sc = 1 + rng.normal(0, 0.05, n_images)
    c = np.stack([25.0 * np.arange(n_images), 8 * np.sin(np.arange(n_images) / 5)], 1) + rng.normal(0, 3, (n_images, 2))
    A = np.array([s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for s, a in zip(sc, ang)])
    ctr = np.array([W / 2, H / 2])
    t = ctr - np.einsum("nij,nj->ni", A, c)
    salient = rng.integers(0, S, (n_images, H // S, W // S, 2)).astype(np.int8)
    gy, gx = np.mgrid[0 : H // S, 0 : W // S]
    for i, j in all_pairs:
        rnd = rng.integers(0, S, (H // S, W // S, 2))
        off = np.where((rng.random((H // S, W // S)) < 0.6)[..., None], salient[i], rnd)
        x0 = np.stack([gx * S + off[..., 1], gy * S + off[..., 0]], -1).reshape(-1, 2).astype(np.float64)
        X = (x0 - t[i]) @ np.linalg.inv(A[i]).T
        x1 = X @ A[j].T + t[j]
        ok = (x1[:, 0] >= 0) & (x1[:, 0] <= W - 1) & (x1[:, 1] >= 0) & (x1[:, 1] <= H - 1)
        idx = np.flatnonzero(ok)
        if len(idx) > n_matches:
            idx = np.sort(rng.choice(idx, n_matches, replace=False))
        a, b = x0[idx], x1[idx] + rng.normal(0, noise, (len(idx), 2))
        s = rng.uniform(0.5, 1.0, len(idx))
        n_out = int(len(idx) * outliers)  # (len // 20 at 0.05)
        o = rng.choice(len(idx), n_out, replace=False)
        b[o] = rng.uniform([0, 0], [W - 1, H - 1], (n_out, 2))
        s[o] = rng.uniform(0.2, 0.8, n_out)
        yield i, j, a.astype(np.float32), np.clip(b, 0, [W - 1, H - 1]).astype(np.float32), s.astype(np.float32)


def make_data(n_pairs: int, per_image: int, n_matches: int, seed: int = 0, noise: float = 0.3,
              outliers: float = 0.05, n_images: int | None = None):
    """Pairs (P, 2), kpts0, kpts1, scores lists and the number of images (see the module docstring)."""
    pairs, k0s, k1s, scs = [], [], [], []
    for i, j, a, b, s in iter_data(n_pairs, per_image, n_matches, seed, noise, outliers, n_images):
        pairs.append((i, j))
        k0s.append(a)
        k1s.append(b)
        scs.append(s)
    return np.array(pairs).reshape(-1, 2), k0s, k1s, scs, pair_list(n_pairs, per_image, n_images)[1]


def write_stage_input(out: Path, data) -> int:
    """``pairs.txt`` + raw ``matches.h5`` (hloc's layout, matcher attribute eloftr) from (i, j, k0, k1, s)
    tuples, streamed; returns the number of raw matches."""
    import h5py

    from loftr_sfm.io import write_pairs, write_raw_matches

    out.mkdir(parents=True, exist_ok=True)
    pairs, n = [], 0
    with h5py.File(out / "matches.h5", "w") as f:
        f.attrs["matcher"] = "eloftr"
        for i, j, a, b, s in data:
            n0, n1 = f"{i:05d}.jpg", f"{j:05d}.jpg"
            write_raw_matches(f, n0, n1, a, b, s)
            pairs.append((n0, n1))
            n += len(a)
    write_pairs(out / "pairs.txt", pairs)
    return n


# --------------------------------------------------------------------------- the per-match Python version


def python_merge(pair_images, kpts0, kpts1, scores, num_images, cell_size, max_error, max_keypoints=0,
                 max_rounds=3, min_score=0.0):
    """Per-match Python implementation of the rule of loftr_sfm.keypoints.merge_matches."""
    inv = 1.0 / cell_size
    acc: dict = {}  # key -> [sum w, sum w x, sum w y, n]
    raw_edges: dict = {}
    for p, (i0, i1) in enumerate(pair_images.tolist()):
        for (x0, y0), (x1, y1), s in zip(kpts0[p].tolist(), kpts1[p].tolist(), scores[p].tolist()):
            if not (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(x1) and math.isfinite(y1)) or s < min_score:
                continue
            w = max(s, 1e-6)
            ka = (i0, math.floor(y0 * inv), math.floor(x0 * inv))
            kb = (i1, math.floor(y1 * inv), math.floor(x1 * inv))
            for k, x, y in ((ka, x0, y0), (kb, x1, y1)):
                a = acc.get(k)
                if a is None:
                    acc[k] = [w, w * x, w * y, 1]
                else:
                    a[0] += w
                    a[1] += w * x
                    a[2] += w * y
                    a[3] += 1
            ek = (ka, kb)
            if raw_edges.get(ek, -1.0) < w:
                raw_edges[ek] = w
    keys = sorted(acc)
    nid = {k: i for i, k in enumerate(keys)}
    img = [k[0] for k in keys]
    sw = [acc[k][0] for k in keys]
    sx = [acc[k][1] for k in keys]
    sy = [acc[k][2] for k in keys]
    cnt = [acc[k][3] for k in keys]
    edges = {}
    for (ka, kb), w in raw_edges.items():
        edges[(nid[ka], nid[kb])] = w

    def pos(n):
        return sx[n] / sw[n], sy[n] / sw[n]

    def components(edge_list):
        parent = {}

        def find(a):
            r = a
            while parent.get(r, r) != r:
                r = parent[r]
            while parent.get(a, a) != r:
                parent[a], a = r, parent[a]
            return r

        for a, b in edge_list:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        return find

    def groups_of(elist):
        find = components(elist)
        support: dict = {}
        for (a, b), w in elist.items():
            support[a] = support.get(a, 0.0) + w
            support[b] = support.get(b, 0.0) + w
        groups: dict = {}
        for n in support:
            groups.setdefault((find(n), img[n]), []).append(n)
        out = []
        for g in groups.values():
            if len(g) > 1:
                g.sort(key=lambda n: (-support[n], n))
                out.append(g)
        return out

    def mutual_best(elist):
        best: dict = {}
        for idx, ((a, b), w) in enumerate(sorted(elist.items())):
            for key in ((0, a, img[b]), (1, b, img[a])):
                cur = best.get(key)
                if cur is None or w > cur[0]:
                    best[key] = (w, (a, b))
        keep = set()
        for (side, _, _), (_, e) in best.items():
            keep.add((side, e))
        return {e: w for e, w in elist.items() if (0, e) in keep and (1, e) in keep}

    def greedy(elist):
        parent: dict = {}
        images: dict = {}

        def find(a):
            while parent.get(a, a) != a:
                a = parent[a]
            return a

        kept = {}
        for (a, b), w in sorted(elist.items(), key=lambda kv: (-kv[1], kv[0])):
            ra, rb = find(a), find(b)
            if ra == rb:
                kept[(a, b)] = w
                continue
            sa, sb = images.get(ra, {img[a]}), images.get(rb, {img[b]})
            if not (sa & sb):
                parent[rb] = ra
                images[ra] = sa | sb
                kept[(a, b)] = w
        return kept

    merged = 0
    for rnd in range(max_rounds + 1):
        if not edges:
            break
        groups = groups_of(edges)
        if not groups:
            break
        remap = {}
        n_cut = 0
        if rnd < max_rounds:
            for g in groups:
                r = g[0]
                rx, ry = pos(r)
                for n in g[1:]:
                    x, y = pos(n)
                    if math.hypot(x - rx, y - ry) <= max_error:
                        remap[n] = r
            for n, r in remap.items():
                sw[r] += sw[n]
                sx[r] += sx[n]
                sy[r] += sy[n]
                cnt[r] += cnt[n]
            merged += len(remap)
            if remap:
                new = {}
                for (a, b), w in edges.items():
                    e = (remap.get(a, a), remap.get(b, b))
                    if new.get(e, -1.0) < w:
                        new[e] = w
                edges = new
            before = len(edges)
            edges = mutual_best(edges)
            n_cut = before - len(edges)
        if not remap and not n_cut:
            edges = greedy(edges)
            break
    # budget
    deg: dict = {}
    sup: dict = {}
    for (a, b), w in edges.items():
        for n in (a, b):
            deg[n] = deg.get(n, 0) + 1
            sup[n] = sup.get(n, 0.0) + w
    if max_keypoints:
        per_img: dict = {}
        for n in deg:
            per_img.setdefault(img[n], []).append(n)
        drop = set()
        for lst in per_img.values():
            lst.sort(key=lambda n: (-deg[n], -sup[n], n))
            drop.update(lst[max_keypoints:])
        edges = {e: w for e, w in edges.items() if e[0] not in drop and e[1] not in drop}
    alive = sorted({n for e in edges for n in e})
    local, kps, kscores = {}, [[] for _ in range(num_images)], [[] for _ in range(num_images)]
    for n in alive:
        local[n] = len(kps[img[n]])
        kps[img[n]].append(pos(n))
        kscores[img[n]].append(sw[n] / cnt[n])
    pidx = {(a, b): p for p, (a, b) in enumerate(pair_images.tolist())}
    matches = [[] for _ in range(len(pair_images))]
    for (a, b), w in edges.items():
        matches[pidx[(img[a], img[b])]].append((local[a], local[b], w))
    for m in matches:
        m.sort()
    return kps, kscores, matches, merged


# --------------------------------------------------------------------------- main


def _run(fn, *args, **kw):
    """(result, wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _peak(fn, *args, **kw) -> float:
    tracemalloc.start()
    fn(*args, **kw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--pairs-per-image", type=int, default=10)
    ap.add_argument("--images", type=int, default=None, help="every pair of this many images (instead of --pairs)")
    ap.add_argument("--matches", type=int, default=5000)
    ap.add_argument("--noise", type=float, default=0.3, help="px, Gaussian noise of image1 keypoints")
    ap.add_argument("--outliers", type=float, default=0.05, help="fraction of uniform outlier matches")
    ap.add_argument("--naive-pairs", type=int, default=200, help="pairs given to the per-match Python version")
    ap.add_argument("--preset", default="eloftr")
    ap.add_argument("--stage", action="store_true", help="also run the keypoints stage on a matches.h5 of the data")
    ap.add_argument("--vs-hloc", type=int, default=0, metavar="R",
                    help="R runs each of the loftr-sfm keypoints command and hloc's aggregate + assign")
    ap.add_argument("--hloc", type=Path, default=HLOC_SRC)
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=None, metavar="PAIRS",
                    help="peak RSS of the loftr-sfm keypoints command at these numbers of pairs")
    ap.add_argument("--project-pairs", type=int, default=100_000, help="memory projected to this many pairs")
    ap.add_argument("--work", type=Path, default=None, help="folder for the written data (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--hloc-child", nargs=4, type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.hloc_child:  # (internal) hloc's aggregate + assign in this process, timings to a JSON file
        hloc_src, src, work, out = a.hloc_child
        out.write_text(json.dumps(_hloc_aggregate_assign(hloc_src, src, work)))
        return {}
    data_kw = dict(noise=a.noise, outliers=a.outliers, n_images=a.images)
    if a.vs_hloc or a.memory_sizes:
        import tempfile

        with tempfile.TemporaryDirectory(dir=a.work) as tmp:
            if a.vs_hloc:
                res = vs_hloc(Path(tmp), a, data_kw)
            else:
                res = memory_sizes(Path(tmp), a, data_kw)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
        return res
    cell, err = PRESETS[a.preset]["cell_size"], PRESETS[a.preset]["max_error"]
    t0 = time.perf_counter()
    pairs, k0, k1, sc, n_images = make_data(a.pairs, a.pairs_per_image, a.matches, **data_kw)
    n_all = sum(len(k) for k in k0)
    print(f"data: {len(pairs)} pairs, {n_all} matches, {n_images} images ({time.perf_counter() - t0:.1f} s to generate)")
    res = {"pairs": len(pairs), "matches": n_all, "preset": a.preset}
    # --- subset: both implementations on identical input
    ns = min(a.naive_pairs, len(pairs))
    sub = (pairs[:ns], k0[:ns], k1[:ns], sc[:ns])
    n_sub = sum(len(k) for k in sub[1])
    used = int(sub[0].max()) + 1
    merge_matches(*(x[:2] for x in sub), used, cell_size=cell, max_error=err)  # warm-up (scipy import)
    r_vec, t_vec_sub, c_vec_sub = _run(merge_matches, *sub, used, cell_size=cell, max_error=err)
    (kps, ksc, mts, _), t_py, c_py = _run(python_merge, *sub, used, cell, err)
    same_counts = [len(k) for k in kps] == [len(k) for k in r_vec.keypoints] and [len(m) for m in mts] == [
        len(m) for m in r_vec.matches]
    max_pos = max((float(np.abs(np.asarray(k, float).reshape(-1, 2) - r_vec.keypoints[i]).max()) for i, k in enumerate(kps)
                   if len(k)), default=0.0) if same_counts else float("nan")
    same_matches = same_counts and all(
        np.array_equal(np.array([(x, y) for x, y, _ in m], np.int64).reshape(-1, 2), r_vec.matches[p])
        for p, m in enumerate(mts))
    res["subset"] = {
        "pairs": ns, "matches": n_sub,
        "python_wall_s": round(t_py, 3), "python_cpu_s": round(c_py, 3),
        "vectorized_wall_s": round(t_vec_sub, 3), "vectorized_cpu_s": round(c_vec_sub, 3),
        "python_matches_per_s": round(n_sub / t_py), "vectorized_matches_per_s": round(n_sub / t_vec_sub),
        "speedup_wall": round(t_py / t_vec_sub, 1), "speedup_cpu": round(c_py / c_vec_sub, 1),
        "identical_keypoint_and_match_counts": bool(same_counts), "identical_matches": bool(same_matches),
        "max_keypoint_difference_px": max_pos,
    }
    print(f"subset {ns} pairs / {n_sub} matches: python {t_py:.2f} s wall / {c_py:.2f} s CPU "
          f"({n_sub / t_py:,.0f} matches/s), vectorized {t_vec_sub:.3f} s wall / {c_vec_sub:.3f} s CPU "
          f"({n_sub / t_vec_sub:,.0f} matches/s): {t_py / t_vec_sub:.1f}x wall, {c_py / c_vec_sub:.1f}x CPU; "
          f"identical counts {same_counts}, identical matches {same_matches}, max keypoint diff {max_pos:.2e} px")
    # --- everything, vectorized
    r_all, t_all, c_all = _run(merge_matches, pairs, k0, k1, sc, n_images, cell_size=cell, max_error=err)
    peak = _peak(merge_matches, pairs, k0, k1, sc, n_images, cell_size=cell, max_error=err)
    input_mb = sum(k.nbytes for k in k0 + k1 + sc) / 2**20
    res["full"] = {"vectorized_wall_s": round(t_all, 3), "vectorized_cpu_s": round(c_all, 3),
                   "matches_per_s_wall": round(n_all / t_all), "matches_per_s_cpu": round(n_all / c_all),
                   "peak_memory_mb": round(peak, 1), "input_mb": round(input_mb, 1), "stats": r_all.stats}
    print(f"full {len(pairs)} pairs / {n_all} matches: vectorized {t_all:.2f} s wall / {c_all:.2f} s CPU "
          f"({n_all / t_all:,.0f} matches/s wall), peak memory {peak:.0f} MB beyond the {input_mb:.0f} MB input; "
          f"stats {r_all.stats}")
    if a.stage:
        res["stage"] = _stage(pairs, k0, k1, sc, n_images, a.preset)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


def _keypoints_cli(out: Path) -> dict:
    """The whole ``loftr-sfm keypoints`` command as a child process (see measure.py)."""
    return run_module("loftr_sfm.cli", ["-q", "keypoints", "--output", str(out), "--overwrite"], env=_ENV)


def _hloc_child(hloc_src: Path, src: Path, work: Path) -> dict:
    """hloc's aggregate + assign timed inside a child process of its own (this process stays small)."""
    out = work / "hloc_time.json"
    m = run_module("bench_merge", ["--hloc-child", str(hloc_src), str(src), str(work), str(out)],
                   env={**_ENV, "TQDM_DISABLE": "1"})  # (hloc's progress bars)
    return {**json.loads(out.read_text()), "peak_gb": m["peak_gb"]}


def _hloc_aggregate_assign(hloc_src: Path, src: Path, work: Path) -> dict:
    """hloc's aggregate_matches + assign_matches (loftr configuration) on a fresh copy of ``src/matches.h5``."""
    import logging
    import shutil
    from collections import defaultdict

    from hloc_ref import import_match_dense

    from loftr_sfm.io import read_pairs

    match_dense = import_match_dense(hloc_src)
    logging.getLogger("hloc").setLevel(logging.WARNING)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "matches.h5", work / "matches.h5")
    (work / "features.h5").unlink(missing_ok=True)
    pairs = read_pairs(src / "pairs.txt")
    conf = match_dense.confs["loftr"]
    t0, c0 = time.perf_counter(), time.process_time()
    cpdict = match_dense.aggregate_matches(conf, pairs, work / "matches.h5", work / "features.h5",
                                           required_queries={n for p in pairs for n in p}, max_kps=8192,
                                           cpdict=defaultdict(list), bindict=defaultdict(list))
    match_dense.assign_matches(pairs, work / "matches.h5", cpdict, max_error=conf["max_error"])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def vs_hloc(tmp: Path, a, data_kw: dict) -> dict:
    """The loftr-sfm keypoints command against hloc's aggregate + assign on the same pairs.txt + matches.h5."""
    import statistics

    import h5py

    src = tmp / "input"
    t0 = time.perf_counter()
    n = write_stage_input(src, iter_data(a.pairs, a.pairs_per_image, a.matches, **data_kw))
    print(f"data: {n:,} raw matches in {src} ({time.perf_counter() - t0:.1f} s to generate and write)", flush=True)
    ours, theirs = [], []
    for r in range(a.vs_hloc):
        ours.append(_keypoints_cli(src))
        theirs.append(_hloc_child(a.hloc, src, tmp / "hloc"))
        print(f"run {r + 1}: loftr-sfm keypoints {ours[-1]['wall_s']:.2f} s wall / {ours[-1]['cpu_s']:.2f} s CPU / "
              f"{ours[-1]['peak_gb']:.2f} GB; hloc aggregate + assign {theirs[-1]['wall_s']:.2f} s wall / "
              f"{theirs[-1]['cpu_s']:.2f} s CPU / {theirs[-1]['peak_gb']:.2f} GB (its whole process)", flush=True)
    with h5py.File(src / "features.h5", "r") as f:
        stats = json.loads(f.attrs["loftr_sfm_stats"])
    med = {k: {m: statistics.median(x[m] for x in runs) for m in ("wall_s", "cpu_s")} for k, runs in
           (("ours", ours), ("hloc", theirs))}
    res = {"raw_matches": n, "runs": a.vs_hloc, "ours": ours, "hloc": theirs, "median": med, "stats": stats,
           "hloc_over_ours_wall": med["hloc"]["wall_s"] / med["ours"]["wall_s"],
           "hloc_over_ours_cpu": med["hloc"]["cpu_s"] / med["ours"]["cpu_s"]}
    print(f"median of {a.vs_hloc}: loftr-sfm keypoints {med['ours']['wall_s']:.2f} s wall / {med['ours']['cpu_s']:.2f} s "
          f"CPU ({n / med['ours']['wall_s']:,.0f} matches/s), hloc {med['hloc']['wall_s']:.2f} s wall / "
          f"{med['hloc']['cpu_s']:.2f} s CPU: hloc / ours {res['hloc_over_ours_wall']:.1f}x wall, "
          f"{res['hloc_over_ours_cpu']:.1f}x CPU; our stats {stats}")
    return res


def memory_sizes(tmp: Path, a, data_kw: dict) -> dict:
    """Peak RSS of the keypoints command at several sizes, and a linear projection."""
    import shutil

    rows = []
    for n_pairs in a.memory_sizes:
        src = tmp / f"p{n_pairs}"
        t0 = time.perf_counter()
        n = write_stage_input(src, iter_data(n_pairs, a.pairs_per_image, a.matches, **{**data_kw, "n_images": None}))
        gen = time.perf_counter() - t0
        m = _keypoints_cli(src)
        rows.append({"pairs": n_pairs, "raw_matches": n, **m, "bytes_per_match": m["peak_gb"] * 2**30 / n})
        print(f"{n_pairs} pairs, {n:,} raw matches (written in {gen:.0f} s): {m['wall_s']:.1f} s wall, "
              f"{m['cpu_s']:.1f} s CPU, peak RSS {m['peak_gb']:.2f} GB ({rows[-1]['bytes_per_match']:.0f} bytes per "
              "raw match)", flush=True)
        shutil.rmtree(src)
    res = {"rows": rows}
    if len(rows) >= 2:
        x = np.array([r["raw_matches"] for r in rows], float)
        y = np.array([r["peak_gb"] for r in rows])
        slope, icpt = np.polyfit(x, y, 1)
        n_proj = a.project_pairs * float(np.mean(x / np.array([r["pairs"] for r in rows])))
        res.update(slope_bytes_per_match=slope * 2**30, intercept_gb=icpt, projected_matches=n_proj,
                   projected_gb=slope * n_proj + icpt)
        print(f"peak RSS ~ {icpt:.2f} GB + {slope * 2**30:.1f} bytes x raw matches: at {a.project_pairs:,} pairs "
              f"({n_proj:,.0f} raw matches) {res['projected_gb']:.1f} GB")
    return res


def _stage(pairs, k0, k1, sc, n_images, preset) -> dict:
    """The keypoints stage end to end on the data written as pairs.txt + matches.h5."""
    import tempfile

    import h5py

    from loftr_sfm.io import write_pairs, write_raw_matches

    names = [f"{i:05d}.jpg" for i in range(n_images)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        write_pairs(out / "pairs.txt", [(names[i], names[j]) for i, j in pairs.tolist()])
        with h5py.File(out / "matches.h5", "w") as f:
            for (i, j), a, b, s in zip(pairs.tolist(), k0, k1, sc):
                write_raw_matches(f, names[i], names[j], a, b, s)
        t_write = time.perf_counter() - t0
        input_mb = sum(k.nbytes for k in k0 + k1 + sc) / 2**20
        cfg = KeypointsConfig(preset=preset, overwrite=True, max_keypoints=0)
        _, t, c = _run(run_keypoints, out, config=cfg)
        peak = _peak(run_keypoints, out, config=cfg)
    print(f"stage (run_keypoints on matches.h5, written in {t_write:.1f} s): {t:.2f} s wall / {c:.2f} s CPU, "
          f"peak memory {peak:.0f} MB (the raw matches are {input_mb:.0f} MB)")
    return {"wall_s": round(t, 3), "cpu_s": round(c, 3), "peak_memory_mb": round(peak, 1),
            "raw_matches_mb": round(input_mb, 1)}


if __name__ == "__main__":
    main()
