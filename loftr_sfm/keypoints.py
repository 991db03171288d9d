"""Semi-dense matches -> one shared keypoint set per image (the merge), hloc-layout outputs.

Input (written by the matching stage or by any other matcher, "bring your own matcher"):
``output/pairs.txt`` and the raw ``output/matches.h5`` (per pair group ``keypoints0`` (N, 2),
``keypoints1`` (N, 2) float32, ``scores`` (N,) float32; original-image pixels, OpenCV
convention: integer = pixel centre).

Output: ``output/features.h5`` (per image ``keypoints`` (K, 2) float32, ``scores`` (K,)
float32, ``image_size`` (2,) int64 = (width, height)) and, in every pair group of
``matches.h5``, ``matches0`` (K0,) int32 (index into image1's keypoints or -1) and
``matching_scores0`` (K0,) float32.

The rule (all steps vectorized with numpy / scipy, no per-match Python loop):

1. *Quantize*, streamed image by image: every observation (one side of one raw match) falls
   into a cell of ``cell_size`` px of its image; (image, cell) is a graph node whose position is
   the score-weighted mean of its observations. Node ids are assigned image by image with a
   dense cell table (no global sort), ordered by (image, y cell, x cell). Observations of the
   same physical point seen in several pairs land in the same node, so tracks form.
2. *Edges*: every raw match links two nodes (duplicates keep the best score).
3. *Tracks*: connected components of the node graph (a vectorized union-find). A component
   holding several nodes of one image violates "one keypoint per image per track". Tracks
   without such a conflict are final. In the conflicting ones, for each (track, image) group
   the node with the largest support (sum of incident edge scores) is the representative and
   nodes within ``max_error`` px of it are merged into it (the same point split by a cell border
   or by noise); then each pair is made one-to-one (an edge survives only if it is the best of
   both its nodes towards the other image). This repeats (at most ``max_rounds`` times) while it
   changes something; what still conflicts (far duplicates, outlier links) is rebuilt by a
   greedy, strongest-edge-first union that refuses any edge putting one image twice into a
   track (a Python loop, but only over the edges of the few remaining conflicting tracks).
   Afterwards each track holds at most one node per image, which also makes every pair
   one-to-one.
4. *Budget*: per image at most ``max_keypoints`` nodes, ranked by number of matched images,
   then support.
5. *Output*: surviving nodes of each image sorted by (y, x) cell, matches per pair as indices.

Deterministic (stable sorts only, no randomness), resumable (a finished run whose inputs and
configuration are unchanged is reused; ``features.h5`` is written atomically and is written
last, so an interrupted run is simply redone; ``matches0`` go to ``merged_matches.h5``, written
atomically before it; ``matches.h5`` is only read).

Memory: the stage never holds the raw matches: :func:`merge_pairs` reads them image by image
(a pair at its first image; what its second image needs is kept within a budget, else read
again), keeps per raw match two int32 node ids and a float32 score, and per node 32 bytes
(image, float64 position and weight, count); the later steps work on these arrays with int32
temporaries where ids fit, in chunks where a whole-array temporary would be int64 or float64.

Cost (pipelines/bench_merge.py, 2,000 pairs x 5,000 matches, 2 cores): about 12 s CPU for the
10 M matches, a peak of about 85 bytes per raw match (0.85 GB; the stage on a matches.h5 of them
the same, where the code before 2026-12-03's streaming held the 0.19 GB of raw matches and
peaked at 1.22 GB); on identical input it gives the same output as a per-match Python
implementation of the rule 60-100x faster (CPU time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .io import ImageReadError, InputError, atomic_path, find_pair, image_size, list_images, read_pairs, read_raw_group
from .utils import Timer, merge_config
from .workspace import MERGED_MATCHES_FILE, record_stage_time

logger = logging.getLogger(__name__)

#: Tested presets per matcher backend: (cell_size px, max_error px). See tests/test_keypoints.py
#: and tests/test_synthetic_e2e.py (EfficientLoFTR-shaped matches: image0 on a 1-px lattice,
#: image1 sub-pixel).
PRESETS: dict[str, dict[str, float]] = {
    # image0 keypoints on a 1-px lattice (integer pixels at the network resolution), image1
    # sub-pixel: 1-px cells join identical lattice points across pairs; close duplicates
    # (noise of the sub-pixel side) merge within 2 px.
    "eloftr": {"cell_size": 1.0, "max_error": 2.0},
    # XFeat*: image1 keypoints are the image's own coarse cell centres (the same point in every
    # pair), image0's are regressed by the offset head and then refined photometrically
    # (sub-pixel, different for every partner image): 2-px cells.
    "xfeat-star": {"cell_size": 2.0, "max_error": 2.0},
    # detector-based (SIFT): keypoints are repeatable to well below a pixel; a fine grid only
    # removes exact duplicates.
    "sift": {"cell_size": 0.25, "max_error": 1.0},
}


@dataclass
class KeypointsConfig:
    """Options of the keypoint merge (see the module docstring for the rule)."""

    preset: str = "auto"  # auto | eloftr | xfeat-star | sift (auto: matches.h5 attribute "matcher", else eloftr)
    cell_size: float | None = None  # px; None -> preset
    max_error: float | None = None  # px; None -> preset
    max_keypoints: int = 16384  # per-image budget (0 = unlimited)
    min_score: float = 0.0  # raw matches with a lower score are ignored
    max_rounds: int = 3  # merge / one-to-one rounds before the greedy split of what still conflicts
    read_ahead_mb: float = 256.0  # memory for raw positions read ahead (0: read every pair twice); not in the result
    overwrite: bool = False  # recompute even if a finished result with the same inputs exists

    def resolved(self, matcher: str | None = None) -> tuple[float, float]:
        """(cell_size, max_error); ``matcher`` names the backend for ``preset="auto"``."""
        preset = self.preset
        if preset == "auto":
            preset = matcher if matcher in PRESETS else "eloftr"
        if preset not in PRESETS:
            raise ValueError(f"unknown keypoints preset {self.preset!r}; choose one of {['auto', *sorted(PRESETS)]}")
        p = PRESETS[preset]
        cell = float(self.cell_size if self.cell_size is not None else p["cell_size"])
        err = float(self.max_error if self.max_error is not None else p["max_error"])
        if cell <= 0 or err < 0:
            raise ValueError(f"cell_size must be > 0 and max_error >= 0 (got {cell}, {err})")
        return cell, err


@dataclass
class MergeResult:
    """Result of :func:`merge_matches` (in memory).

    Attributes:
        keypoints: per image index, (K_i, 2) float32 positions (OpenCV convention).
        scores: per image index, (K_i,) float32 mean observation score.
        matches: per pair index, (M, 2) int32 index pairs (into image0's, image1's keypoints).
        match_scores: per pair index, (M,) float32.
        stats: counters (observations, nodes, merged, cut edges, ...).
    """

    keypoints: list[np.ndarray]
    scores: list[np.ndarray]
    matches: list[np.ndarray]
    match_scores: list[np.ndarray]
    stats: dict


# --------------------------------------------------------------------------- the merge


def _starts(gs: np.ndarray) -> np.ndarray:
    """Bool mask of the first element of each run of equal values in a sorted array."""
    m = np.ones(len(gs), bool)
    if len(gs) > 1:
        np.not_equal(gs[1:], gs[:-1], out=m[1:])
    return m


def _nonzero(mask: np.ndarray, dtype, chunk: int = 1 << 20) -> np.ndarray:
    """``np.flatnonzero(mask).astype(dtype)`` without the int64 array of all indices."""
    parts = [np.flatnonzero(mask[a : a + chunk]).astype(dtype) + a for a in range(0, len(mask), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _argbest(gs: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For runs of equal ``gs`` (sorted), the index of the first maximum of ``w`` in each run.

    Returns (best index per run, run id of every element).
    """
    st = _starts(gs)
    run = np.cumsum(st) - 1
    gmax = np.maximum.reduceat(w, np.flatnonzero(st))
    cand = np.flatnonzero(w == gmax[run])
    return cand[_starts(run[cand])], run


def _dedupe_edges(e0: np.ndarray, e1: np.ndarray, w: np.ndarray, n_nodes: int):
    """Unique (e0, e1) edges keeping the maximum weight; output sorted by (e0, e1)."""
    if len(e0) == 0:
        return e0, e1, w
    key = e0.astype(np.int64) * n_nodes + e1
    o = np.argsort(key, kind="stable")
    st = np.flatnonzero(_starts(key[o]))
    wmax = np.maximum.reduceat(w[o], st)
    sel = o[st]
    return e0[sel], e1[sel], wmax


def _mutual_best(e0: np.ndarray, e1: np.ndarray, w: np.ndarray, node_img: np.ndarray, num_images: int) -> np.ndarray:
    """Mask of edges that are the best-scored edge of e0 towards image(e1) and of e1 towards image(e0).

    Ties go to the lower edge index. Requires edges sorted by (e0, e1) and node ids sorted by image
    (both hold in :func:`merge_matches`), so the (e0, image(e1)) groups are contiguous.
    """
    if len(e0) == 0:
        return np.ones(0, bool)
    ga = e0.astype(np.int64) * num_images + node_img[e1]
    best_a = np.zeros(len(e0), bool)
    best_a[_argbest(ga, w)[0]] = True
    o = np.argsort(e1.astype(np.int64) * (int(e0.max()) + 1) + e0, kind="stable")
    gb = e1[o].astype(np.int64) * num_images + node_img[e0[o]]
    best_b = np.zeros(len(e0), bool)
    best_b[o[_argbest(gb, w[o])[0]]] = True
    return best_a & best_b


def _conflict_groups(e0, e1, ew, node_img, num_images, N):
    """Nodes sharing a track with another node of their image.

    Returns (members, reps): every non-representative node of a (track, image) group with more
    than one node, and that group's representative (largest support, then lowest node id).
    """
    comp = _components(e0, e1, N)
    active = np.zeros(N, bool)
    active[e0] = True
    active[e1] = True
    nodes = _nonzero(active, e0.dtype)
    del active
    # group by (track, image): node ids are sorted by image, so a stable sort by track alone
    # orders every track's nodes by image (and by id within an image); no (track, image) key
    if nodes.dtype == np.int32 and np.little_endian:
        # (track, node) packed in one int64 and sorted in place (no argsort index); nodes and tracks
        # are then the two int32 halves of each key (views, no copies)
        key = np.empty(len(nodes), np.int64)
        for a in range(0, len(nodes), 1 << 20):
            key[a : a + (1 << 20)] = comp[nodes[a : a + (1 << 20)]]
        key <<= 32
        key |= nodes
        del nodes
        key.sort()
        halves = key.view(np.int32).reshape(-1, 2)  # little endian: (node, track)
        nodes, cs = halves[:, 0], halves[:, 1]
        del key, halves
    else:
        o = np.argsort(comp[nodes], kind="stable")
        nodes = nodes[o]
        del o
        cs = comp[nodes]
    im = node_img[nodes]
    st = _starts(cs)  # first node of each (track, image) group
    st[1:] |= im[1:] != im[:-1]
    del cs, im
    dup = ~st  # nodes of groups with more than one node: not a group's first, or followed by one
    dup[:-1] |= ~st[1:]
    if not dup.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), comp
    group = np.cumsum(st[dup]) - 1  # the duplicated groups are contiguous runs, each opened by st
    dn = nodes[dup]
    del nodes, dup, st
    # support (sum of incident edge scores) of the duplicated nodes only
    slot = np.full(N, -1, np.int32 if len(dn) < 2**31 - 1 else np.int64)
    slot[dn] = np.arange(len(dn))
    support = np.zeros(len(dn))
    for e in (e0, e1):
        s = slot[e]
        hit = s >= 0
        support += np.bincount(s[hit], ew[hit].astype(np.float64), len(dn))
    del slot
    best, drun = _argbest(group, support)
    reps = dn[best][drun]
    m = dn != reps
    return dn[m].astype(np.int64), reps[m].astype(np.int64), comp


def _greedy_split(e0: np.ndarray, e1: np.ndarray, ew: np.ndarray, node_img: np.ndarray) -> np.ndarray:
    """Kruskal-style track building with a conflict check, strongest edge first (ties: lower index).

    An edge is kept if its nodes are already in one track, or if joining their two tracks
    puts no image twice in the result. Runs only on the edges of conflicting tracks (a small
    fraction after merging and one-to-one filtering), hence the Python loop over them.

    Returns a keep mask over the edges.
    """
    order = np.argsort(-ew, kind="stable")
    keep = np.zeros(len(e0), bool)
    parent: dict[int, int] = {}
    images: dict[int, set] = {}
    img = node_img

    def find(a: int) -> int:
        root = a
        while parent.get(root, root) != root:
            root = parent[root]
        while a != root:
            parent[a], a = root, parent.get(a, a)
        return root

    for k, a, b in zip(order.tolist(), e0[order].tolist(), e1[order].tolist()):
        ra, rb = find(a), find(b)
        if ra == rb:
            keep[k] = True
            continue
        sa = images.get(ra) or {int(img[a])}
        sb = images.get(rb) or {int(img[b])}
        if sa.isdisjoint(sb):
            if len(sa) < len(sb):
                ra, rb, sa, sb = rb, ra, sb, sa
            parent[rb] = ra
            sa |= sb
            images[ra] = sa
            images.pop(rb, None)
            keep[k] = True
    return keep


def _components(e0: np.ndarray, e1: np.ndarray, n_nodes: int, chunk: int = 1 << 20) -> np.ndarray:
    """Track id of every node: connected components of the (undirected) edge graph.

    Hook-and-compress union-find, vectorized: every edge hooks the larger of its two roots onto
    the smaller (``np.minimum.at``), then pointer jumping points every node at its root; this
    repeats until no edge joins two roots (a few rounds: tracks are short). Edges are visited in
    chunks, so the memory is that of a few node-sized int arrays (scipy's ``connected_components``
    builds a float64 matrix and its transpose: 367 MB against 195 MB on bench_merge's 10 M edges,
    about as fast). Ids are the rank of each component's smallest node, as scipy numbers them.

    Returns:
        (n_nodes,) int32 (int64 beyond 2**31 nodes) component ids.
    """
    dt = np.int32 if n_nodes < 2**31 - 1 else np.int64
    parent = np.arange(n_nodes, dtype=dt)
    while True:
        hooked = False
        for a in range(0, len(e0), chunk):
            lo = parent[e0[a : a + chunk]]
            other = parent[e1[a : a + chunk]]
            hi = np.maximum(lo, other)
            np.minimum(lo, other, out=lo)
            del other
            m = lo != hi
            if m.any():
                hooked = True
                np.minimum.at(parent, hi[m], lo[m])
        if not hooked:
            break
        while True:  # pointer jumping: parent[x] <= x always, so this ends at the roots
            jumped = parent[parent]  # (fancy indexing keeps int32 indices; np.take casts them to int64)
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        del jumped
    root = np.zeros(n_nodes, bool)
    root[parent] = True  # after the jumps every parent is a root
    rank = np.cumsum(root, dtype=dt)
    del root
    rank -= 1
    return rank[parent]


#: ``read_pair(p) -> (kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` of pair ``p``; called once or twice.
PairReader = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _valid_observations(k0: np.ndarray, k1: np.ndarray, sc: np.ndarray, min_score: float) -> np.ndarray:
    """(N,) bool: finite, not absurdly far outside any image, score >= ``min_score``."""
    ok = np.isfinite(k0).all(1) & np.isfinite(k1).all(1) & np.isfinite(sc) & (sc >= min_score)
    ok &= (np.abs(k0) < 1e7).all(1) & (np.abs(k1) < 1e7).all(1)
    return ok


def _index_nodes(pair_images: np.ndarray, read_pair: PairReader, num_images: int, cell_size: float,
                 min_score: float, stats: dict, progress: bool = False, cache_bytes: int = 0):
    """Step 1, streamed image by image: (image, cell) nodes, their positions, and the raw edges.

    For image ``i`` the pairs holding it are read (side 0 pairs, then side 1 pairs, each in pair
    order), its observations quantized and its cells numbered (ids sorted by (image, y cell,
    x cell)); its nodes' score-weighted mean positions are accumulated right there, so no
    observation position outlives its image. What is kept per raw match: two node ids (int32)
    and the score (float32). A pair is read at its first image; its other image's positions are
    kept for the second while ``cache_bytes`` allows (sequential pairs: a few neighbours' worth),
    else the pair is read again.

    Returns:
        e0, e1: (E,) node ids of the edges (the used raw matches, duplicates merged keeping the
        best score), sorted by (e0, e1); ``w`` (E,) float32 scores (>= 1e-6); ``node_img`` (N,)
        int32, ``node_xy`` (N, 2) float64, ``obs_w`` (N,) float64 (sum of observation weights),
        ``obs_n`` (N,) float32 (number of observations). Positions stay float64: the merge's
        ``max_error`` test on float32 means flips ties of lattice data.
    """
    P = len(pair_images)
    inv_cell = np.float32(1.0 / cell_size)
    visits: list[tuple[list[int], list[int]]] = [([], []) for _ in range(num_images)]
    for p, (i0, i1) in enumerate(pair_images.tolist()):
        visits[i0][0].append(p)
        visits[i1][1].append(p)
    counts = np.full(P, -1, np.int64)
    w_parts: list = [None] * P
    e_parts: tuple[list, list] = ([None] * P, [None] * P)
    node_parts: list = []  # per image with nodes: [image, xy (n, 2) f8, obs_w (n,) f8, obs_n (n,) f4]
    pending: dict[int, np.ndarray] = {}  # pair -> positions of its other image, read at the first visit
    pending_bytes = 0
    N = 0
    from tqdm import tqdm

    for i in tqdm(range(num_images), desc="keypoints: merge", unit="image", disable=not progress, leave=False):
        parts: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (side, pair, positions, weights)
        for s in (0, 1):
            for p in visits[i][s]:
                if p in pending:  # second visit, the positions kept from the first
                    k = pending.pop(p)
                    pending_bytes -= k.nbytes
                    parts.append((s, p, k, w_parts[p]))
                    continue
                k0, k1, sc = read_pair(p)
                k0 = np.asarray(k0, np.float32).reshape(-1, 2)
                k1 = np.asarray(k1, np.float32).reshape(-1, 2)
                sc = np.asarray(sc, np.float32).reshape(-1)
                if len(k1) != len(k0) or len(sc) != len(k0):
                    raise ValueError(f"pair {p}: keypoints0 {len(k0)}, keypoints1 {len(k1)}, scores {len(sc)} "
                                     "differ in length")
                ok = _valid_observations(k0, k1, sc, min_score)
                every = bool(ok.all())
                first = counts[p] < 0
                if first:
                    stats["raw_matches"] += len(k0)
                    counts[p] = len(k0) if every else int(ok.sum())
                    w_parts[p] = np.maximum(sc if every else sc[ok], np.float32(1e-6))
                if counts[p]:
                    mine, other = (k0, k1) if s == 0 else (k1, k0)
                    parts.append((s, p, mine if every else mine[ok], w_parts[p]))
                    if first and pending_bytes + 8 * counts[p] <= cache_bytes:
                        pending[p] = other if every else other[ok]
                        pending_bytes += pending[p].nbytes
                    del mine, other
                del k0, k1, sc, ok
        if not parts:
            continue
        pos = np.concatenate([q[2] for q in parts])
        c = np.floor(pos * inv_cell).astype(np.int32)
        lo = c.min(0).astype(np.int64)
        wc = int(c[:, 0].max()) - int(lo[0]) + 1
        lin = (c[:, 1] - lo[1]).astype(np.int64) * wc + (c[:, 0] - lo[0])
        span = (int(c[:, 1].max()) - int(lo[1]) + 1) * wc
        del c
        if span <= 1 << 26:  # dense table: no sort
            table = np.zeros(span, bool)
            table[lin] = True
            u = np.flatnonzero(table)
            del table
            local = np.searchsorted(u, lin)
        else:
            u, local = np.unique(lin, return_inverse=True)
            local = local.reshape(-1)
        del lin
        n_i = len(u)
        del u
        ids_dtype = np.int32 if N + n_i < 2**31 - 1 else np.int64
        w64 = np.concatenate([q[3] for q in parts]).astype(np.float64)
        # accumulate side 0 observations, then side 1 (each in pair order)
        n0 = sum(len(q[2]) for q in parts if q[0] == 0)
        sides = (slice(0, n0), slice(n0, len(pos)))
        obs_w = np.zeros(n_i)
        xy = np.zeros((n_i, 2))
        for sl in sides:
            obs_w += np.bincount(local[sl], w64[sl], n_i)
            for ax in (0, 1):
                xy[:, ax] += np.bincount(local[sl], w64[sl] * pos[sl, ax], n_i)
        xy /= np.maximum(obs_w, 1e-12)[:, None]
        obs_n = np.bincount(local, minlength=n_i).astype(np.float32)
        del pos, w64
        a = 0
        for s, p, k, _ in parts:
            e_parts[s][p] = (N + local[a : a + len(k)]).astype(ids_dtype)
            a += len(k)
        del parts, local
        node_parts.append([i, xy, obs_w, obs_n])
        N += n_i
    n_obs = int(counts.clip(0).sum())
    stats["used_matches"] = n_obs
    stats["observations"] = 2 * n_obs
    stats["nodes"] = N
    # assemble one array at a time, freeing the parts as they are copied
    sizes = np.array([len(q[3]) for q in node_parts], np.int64)
    node_img = np.repeat(np.array([q[0] for q in node_parts], np.int32), sizes)
    cols = []
    for col, shape, dtype in ((1, (N, 2), np.float64), (2, N, np.float64), (3, N, np.float32)):
        arr = np.empty(shape, dtype)
        a = 0
        for q in node_parts:
            arr[a : a + len(q[col])] = q[col]
            a += len(q[col])
            q[col] = None
        cols.append(arr)
    del node_parts
    node_xy, obs_w, obs_n = cols
    # edges, deduplicated (best score) and sorted by (e0, e1) one image0 at a time: a duplicate
    # edge has its image0 in common, and node ids grow with the image, so the sorted blocks of
    # successive images concatenate to the global order
    ids_dtype = np.int32 if N < 2**31 - 1 else np.int64
    blocks: tuple[list, list, list] = ([], [], [])
    for i in range(num_images):
        ps = [p for p in visits[i][0] if counts[p] > 0]
        if not ps:
            continue
        b0 = np.concatenate([e_parts[0][p] for p in ps]).astype(ids_dtype, copy=False)
        b1 = np.concatenate([e_parts[1][p] for p in ps]).astype(ids_dtype, copy=False)
        bw = np.concatenate([w_parts[p] for p in ps])
        for p in ps:
            e_parts[0][p] = e_parts[1][p] = w_parts[p] = None
        for lst, arr in zip(blocks, _dedupe_edges(b0, b1, bw, N)):
            lst.append(arr)
        del b0, b1, bw
    out = []
    for lst, dt in zip(blocks, (ids_dtype, ids_dtype, np.float32)):
        arr = np.empty(sum(len(x) for x in lst), dt)
        a = 0
        for k, x in enumerate(lst):
            arr[a : a + len(x)] = x
            a += len(x)
            lst[k] = None
        out.append(arr)
    e0, e1, w = out
    return e0, e1, w, node_img, node_xy, obs_w, obs_n


def merge_matches(
    pair_images: np.ndarray,
    kpts0: list[np.ndarray],
    kpts1: list[np.ndarray],
    scores: list[np.ndarray],
    num_images: int,
    cell_size: float = 1.0,
    max_error: float = 2.0,
    max_keypoints: int = 0,
    max_rounds: int = 3,
    min_score: float = 0.0,
) -> MergeResult:
    """Merge per-pair semi-dense matches held in memory into shared per-image keypoints.

    Args:
        pair_images: (P, 2) int image indices (image0, image1) of every pair; each unordered
            image pair at most once.
        kpts0, kpts1: per pair (N_p, 2) float pixel coordinates (OpenCV convention).
        scores: per pair (N_p,) float.
        num_images: number of images (indices in ``pair_images`` are < num_images).
    Returns:
        :class:`MergeResult`; keypoints of image i sorted by (y cell, x cell).
    """
    P = len(np.asarray(pair_images).reshape(-1, 2))
    if not (len(kpts0) == len(kpts1) == len(scores) == P):
        raise ValueError(f"{P} pairs but {len(kpts0)}, {len(kpts1)}, {len(scores)} keypoint / score arrays")
    return merge_pairs(pair_images, lambda p: (kpts0[p], kpts1[p], scores[p]), num_images, cell_size=cell_size,
                       max_error=max_error, max_keypoints=max_keypoints, max_rounds=max_rounds, min_score=min_score)


def merge_pairs(
    pair_images: np.ndarray,
    read_pair: PairReader,
    num_images: int,
    cell_size: float = 1.0,
    max_error: float = 2.0,
    max_keypoints: int = 0,
    max_rounds: int = 3,
    min_score: float = 0.0,
    progress: bool = False,
    cache_mb: float = 256.0,
) -> MergeResult:
    """Merge per-pair semi-dense matches into shared per-image keypoints, reading pairs on demand.

    The same rule and output as :func:`merge_matches`, but the raw matches are never all in
    memory: images are handled in index order and ``read_pair(p)`` is called at the first image
    of pair ``p`` (e.g. to read a group of ``matches.h5``); the positions its second image needs
    are kept until then within ``cache_mb`` (sequential pairs need only a few neighbours' worth),
    beyond it the pair is read again.

    Args:
        pair_images: (P, 2) int image indices (image0, image1) of every pair; each unordered
            image pair at most once.
        read_pair: ``p -> (kpts0 (N_p, 2), kpts1 (N_p, 2), scores (N_p,))``, pixel coordinates
            (OpenCV convention); must return the same arrays if called again.
        num_images: number of images (indices in ``pair_images`` are < num_images).
        progress: show a tqdm bar over the images.
        cache_mb: memory for positions read ahead (8 bytes per match); 0 reads every pair twice.
    Returns:
        :class:`MergeResult`; keypoints of image i sorted by (y cell, x cell).
    """
    pair_images = np.asarray(pair_images, np.int64).reshape(-1, 2)
    P = len(pair_images)
    if P and (pair_images.min() < 0 or pair_images.max() >= num_images):
        raise ValueError(f"pair image indices must lie in [0, {num_images})")
    stats: dict = {"pairs": P, "raw_matches": 0}
    # ---- 1. + 2. every observation quantized to a cell of its image (nodes, positions); the edges,
    # oriented image0 -> image1 of their pair and deduplicated
    e0, e1, ew, node_img, node_xy, obs_w, obs_n = _index_nodes(pair_images, read_pair, num_images, cell_size,
                                                               min_score, stats, progress, int(cache_mb * 2**20))
    N = len(node_img)
    # ---- 3. one keypoint per image per track
    merged = cut = 0
    rounds_used = 0
    done = None
    for rnd in range(max_rounds + 1):
        if len(e0) == 0:
            break
        members, reps, comp = _conflict_groups(e0, e1, ew, node_img, num_images, N)
        if len(members) == 0:
            break
        rounds_used = rnd + 1
        # tracks without conflict are final: set their edges aside, the next steps only touch
        # the (few) conflicting tracks
        dirty = np.zeros(int(comp.max()) + 1, bool)
        dirty[comp[members]] = True
        de = dirty[comp[e0]]
        if not de.all():  # one array at a time: at most one extra copy of an edge array
            cl = ~de
            c0, e0 = e0[cl], e0[de]
            c1, e1 = e1[cl], e1[de]
            cw, ew = ew[cl], ew[de]
            del cl
            done = (c0, c1, cw) if done is None else tuple(np.concatenate([a, b]) for a, b in zip(done, (c0, c1, cw)))
            del c0, c1, cw
        del comp, dirty, de
        close = np.zeros(len(members), bool)
        n_cut = 0
        if rnd < max_rounds:
            close = np.linalg.norm(node_xy[members] - node_xy[reps], axis=1) <= max_error
            if close.any():  # merge close duplicates into their representative
                mm, rr = members[close], reps[close]
                remap = np.arange(N, dtype=e0.dtype)
                remap[mm] = rr
                # weighted means of the merged nodes (only the few touched nodes are updated)
                ur, k = np.unique(rr, return_inverse=True)
                k = k.reshape(-1)
                sw = obs_w[ur] + np.bincount(k, obs_w[mm], len(ur))
                for c in (0, 1):
                    sx = obs_w[ur] * node_xy[ur, c] + np.bincount(k, obs_w[mm] * node_xy[mm, c], len(ur))
                    node_xy[ur, c] = sx / np.maximum(sw, 1e-12)
                obs_n[ur] += np.bincount(k, obs_n[mm], len(ur)).astype(obs_n.dtype)
                obs_w[ur] = sw
                e0, e1 = remap[e0], remap[e1]
                del remap
                e0, e1, ew = _dedupe_edges(e0, e1, ew, N)
                merged += int(close.sum())
            # one-to-one per pair: an edge survives only if it is the best of both its nodes
            # towards the other image (best score wins; ties -> lower edge index)
            keep = _mutual_best(e0, e1, ew, node_img, num_images)
            n_cut = int((~keep).sum())
            if n_cut:
                cut += n_cut
                e0, e1, ew = e0[keep], e1[keep], ew[keep]
        if not close.any() and not n_cut:
            # conflicts that neither merging nor one-to-one resolve (far duplicates, outlier
            # links): rebuild the conflicting tracks strongest edge first, refusing any edge that
            # would put two keypoints of one image into one track
            keep = _greedy_split(e0, e1, ew, node_img)
            cut += int((~keep).sum())
            e0, e1, ew = e0[keep], e1[keep], ew[keep]
            break
    if done is not None:
        d0, d1, dw = done
        del done
        e0 = np.concatenate([d0, e0])
        del d0
        e1 = np.concatenate([d1, e1])
        del d1
        ew = np.concatenate([dw, ew])
        del dw
    stats.update(merged_nodes=merged, cut_edges=cut, conflict_rounds=rounds_used)
    # ---- 4. budget per image
    alive = np.zeros(N, bool)
    alive[e0] = True
    alive[e1] = True
    if max_keypoints and max_keypoints > 0:
        per_img = np.bincount(node_img[alive], minlength=num_images)
        over = per_img > max_keypoints
        if over.any():
            deg = np.bincount(e0, minlength=N) + np.bincount(e1, minlength=N)
            support = np.bincount(e0, ew, N) + np.bincount(e1, ew, N)
            nodes = np.flatnonzero(alive & over[node_img])
            o = np.lexsort((nodes, -support[nodes], -deg[nodes], node_img[nodes]))
            del deg, support
            im = node_img[nodes[o]]
            rank = np.arange(len(o)) - np.searchsorted(im, im, side="left")
            drop = nodes[o[rank >= max_keypoints]]
            alive[drop] = False
            keep = alive[e0] & alive[e1]
            e0, e1, ew = e0[keep], e1[keep], ew[keep]
            alive[:] = False
            alive[e0] = True
            alive[e1] = True
            stats["budget_dropped"] = int(len(drop))
    # ---- 5. per-image keypoints (node ids are sorted by key = (image, y cell, x cell))
    C = 1 << 20  # chunks: no int64 or float64 temporaries of all nodes
    alive_nodes = _nonzero(alive, e0.dtype, C)
    del alive
    K = len(alive_nodes)
    xy = np.empty((K, 2), np.float32)
    for a in range(0, K, C):
        xy[a : a + C] = node_xy[alive_nodes[a : a + C]]
    del node_xy
    mean_score = np.empty(K, np.float32)
    for a in range(0, K, C):
        nodes = alive_nodes[a : a + C]
        mean_score[a : a + len(nodes)] = obs_w[nodes] / np.maximum(obs_n[nodes], 1)
    del obs_w, obs_n
    img_alive = node_img[alive_nodes]
    bounds = np.searchsorted(img_alive, np.arange(num_images + 1))
    b32 = bounds.astype(np.int32)
    local = np.full(N, -1, np.int32)
    for a in range(0, K, C):
        nodes = alive_nodes[a : a + C]
        local[nodes] = np.arange(a, a + len(nodes), dtype=np.int32) - b32[img_alive[a : a + len(nodes)]]
    del img_alive
    keypoints = [xy[bounds[i] : bounds[i + 1]] for i in range(num_images)]
    kp_scores = [mean_score[bounds[i] : bounds[i + 1]] for i in range(num_images)]
    # ---- matches per pair
    pk = pair_images[:, 0] * num_images + pair_images[:, 1]
    pk_order = np.argsort(pk, kind="stable")
    spk, pk_order = pk[pk_order], pk_order.astype(np.int32 if P < 2**31 - 1 else np.int64)
    pidx = np.empty(len(e0), pk_order.dtype)
    for a in range(0, len(e0), 1 << 20):  # in chunks: no int64 key per edge
        ek = node_img[e0[a : a + (1 << 20)]].astype(np.int64) * num_images + node_img[e1[a : a + (1 << 20)]]
        pidx[a : a + len(ek)] = pk_order[np.searchsorted(spk, ek)]
        del ek
    m0 = local[e0]
    del e0
    m1 = local[e1]
    del local, e1
    o = np.lexsort((m0, pidx))  # by pair, then image0 keypoint (stable)
    pidx = pidx[o]
    pb = np.searchsorted(pidx, np.arange(P + 1))
    del pidx
    m = np.empty((len(o), 2), m0.dtype)
    m[:, 0] = m0[o]
    del m0
    m[:, 1] = m1[o]
    del m1
    mw = ew[o].astype(np.float32, copy=False)
    del o, ew
    matches = [m[pb[p] : pb[p + 1]] for p in range(P)]
    mscores = [mw[pb[p] : pb[p + 1]] for p in range(P)]
    stats["keypoints"] = int(len(alive_nodes))
    stats["matches"] = int(len(m))
    return MergeResult(keypoints, kp_scores, matches, mscores, stats)


def track_stats(num_images_kps: list[int], pair_images: np.ndarray, matches: list[np.ndarray]) -> dict:
    """Tracks implied by per-pair index matches (connected components over (image, keypoint)).

    Returns dict with ``tracks`` (components with >= 2 observations), ``mean_track_length``,
    ``max_track_length`` and ``same_image_duplicates`` (observations beyond the first of one
    image in one track; 0 for a valid merge).
    """
    offs = np.concatenate([[0], np.cumsum(num_images_kps)]).astype(np.int64)
    N = int(offs[-1])
    a = [offs[pair_images[p, 0]] + m[:, 0] for p, m in enumerate(matches) if len(m)]
    b = [offs[pair_images[p, 1]] + m[:, 1] for p, m in enumerate(matches) if len(m)]
    if not a:
        return {"tracks": 0, "mean_track_length": 0.0, "max_track_length": 0, "same_image_duplicates": 0}
    a, b = np.concatenate(a), np.concatenate(b)
    comp = _components(a, b, N)
    used = np.zeros(N, bool)
    used[a] = True
    used[b] = True
    nodes = np.flatnonzero(used)
    img = np.searchsorted(offs, nodes, side="right") - 1
    c = comp[nodes]
    n_tracks = len(np.unique(c))
    ci = np.unique(c.astype(np.int64) * len(offs) + img)
    lengths = np.bincount(np.unique(c, return_inverse=True)[1])
    return {
        "tracks": int(n_tracks),
        "mean_track_length": float(lengths.mean()),
        "max_track_length": int(lengths.max()),
        "same_image_duplicates": int(len(nodes) - len(ci)),
    }


# --------------------------------------------------------------------------- the stage


def _signature(pairs_path: Path, cfg: KeypointsConfig, names: list[str]) -> str:
    h = hashlib.sha1()
    h.update(pairs_path.read_bytes())
    h.update(json.dumps({**asdict(cfg), "overwrite": False, "read_ahead_mb": 0}, sort_keys=True).encode())
    h.update("\n".join(names).encode())
    return h.hexdigest()


def _file_stat(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_done(features: Path, matches_h5: Path, merged: Path, sig: str) -> bool:
    """Whether ``features`` was made with ``sig`` from this ``matches_h5`` together with this ``merged`` file."""
    import h5py

    if not features.is_file() or not merged.is_file():
        return False
    try:
        with h5py.File(features, "r") as f:
            return (f.attrs.get("loftr_sfm_signature", "") == sig
                    and f.attrs.get("loftr_sfm_matches_stat", "") == _file_stat(matches_h5)
                    and f.attrs.get("loftr_sfm_merged_stat", "") == _file_stat(merged))
    except OSError:
        return False


def run_keypoints(output: Path, images: Path | None = None, config: KeypointsConfig | None = None) -> Path:
    """Merge the raw semi-dense matches of ``output/matches.h5`` into shared keypoints.

    Reads ``output/pairs.txt`` and ``output/matches.h5`` (raw layout, never modified), writes
    ``output/merged_matches.h5`` (``matches0`` / ``matching_scores0`` per pair group, hloc's layout)
    and then ``output/features.h5``, each atomically. Image sizes come from ``images`` when given (images in no pair then get an
    empty keypoint set), else from the keypoint extent. Returns the path of ``features.h5``.
    """
    import h5py

    cfg = merge_config(KeypointsConfig, config)
    output = Path(output)
    pairs_path, matches_path, features_path = output / "pairs.txt", output / "matches.h5", output / "features.h5"
    if not matches_path.is_file():
        raise InputError(f"{matches_path} does not exist: run the matching stage first (or provide a raw matches.h5)")
    matcher = None
    if cfg.preset == "auto":
        with h5py.File(matches_path, "r") as f:
            matcher = f.attrs.get("matcher")
        matcher = matcher.decode() if isinstance(matcher, bytes) else matcher
    cell, err = cfg.resolved(matcher)
    logger.info("keypoints: cell_size %.3g px, max_error %.3g px (preset %s%s)", cell, err, cfg.preset,
                f" -> {matcher}" if matcher else "")
    pairs = read_pairs(pairs_path)
    names = sorted({n for p in pairs for n in p})
    if images is not None:
        all_names = list_images(images)
        known = set(all_names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"{pairs_path} names image(s) not in {images}: {', '.join(unknown[:5])}")
        names = all_names
    # the size/mtime of matches.h5 (and of merged_matches.h5) are stored in features.h5; any later change
    # (e.g. the matching stage added pairs) triggers a recompute.
    sig = _signature(pairs_path, cfg, names + [f"cell={cell} err={err}"])
    if not cfg.overwrite and _is_done(features_path, matches_path, output / MERGED_MATCHES_FILE, sig):
        logger.info("keypoints: %s is up to date, skipping (use overwrite to recompute)", features_path)
        return features_path
    size_of: dict[str, tuple[int, int]] = {}
    if images is not None:
        unreadable = []
        for n in names:
            try:
                size_of[n] = image_size(Path(images) / n)
            except ImageReadError as e:
                unreadable.append(f"{n} ({e})")
        if unreadable:  # the matching stage skipped them too: the others go on without them
            logger.warning("keypoints: %d unreadable image(s) left out: %s", len(unreadable), "; ".join(unreadable[:10]))
        names = [n for n in names if n in size_of]
        pairs = [p for p in pairs if p[0] in size_of and p[1] in size_of]
    index = {n: i for i, n in enumerate(names)}
    timer = Timer().__enter__()
    pair_images, keys = [], []
    missing = 0
    with h5py.File(matches_path, "r") as f:
        for a, b in pairs:
            try:
                key, rev = find_pair(f, a, b)
            except KeyError:
                missing += 1
                continue
            # keep the stored orientation: matches0 of a group indexes its own image0
            n0, n1 = (b, a) if rev else (a, b)
            pair_images.append((index[n0], index[n1]))
            keys.append(key)
        if missing:
            logger.warning("keypoints: %d of %d pairs of %s have no group in %s (treated as 0 matches)",
                           missing, len(pairs), pairs_path, matches_path)
        # the raw matches are read on demand, image by image (a pair once, twice beyond the
        # read-ahead budget), never all at once
        res = merge_pairs(
            np.array(pair_images, np.int64).reshape(-1, 2),
            lambda p: read_raw_group(f[keys[p]], f"{matches_path}: pair {keys[p]}"), len(names),
            cell_size=cell, max_error=err, max_keypoints=cfg.max_keypoints, max_rounds=cfg.max_rounds,
            min_score=cfg.min_score, progress=len(names) >= 50, cache_mb=cfg.read_ahead_mb,
        )
    # ---- image sizes
    sizes = []
    for i, n in enumerate(names):
        if images is not None:
            sizes.append(size_of[n])
        else:
            kp = res.keypoints[i]
            sizes.append(tuple(int(np.ceil(v)) + 1 for v in kp.max(0)) if len(kp) else (0, 0))
    # ---- matches0 into a file of their own (matches.h5 is never edited: a kill loses only this stage's work);
    # features.h5 is written last and marks completion
    with atomic_path(output / MERGED_MATCHES_FILE) as tmp, h5py.File(tmp, "w") as f:
        for p, key in enumerate(keys):
            g = f.create_group(key)
            i0 = pair_images[p][0]
            m0 = np.full(len(res.keypoints[i0]), -1, np.int32)
            s0 = np.zeros(len(res.keypoints[i0]), np.float32)
            m = res.matches[p]
            m0[m[:, 0]] = m[:, 1]
            s0[m[:, 0]] = res.match_scores[p]
            g.create_dataset("matches0", data=m0)
            g.create_dataset("matching_scores0", data=s0)
    with atomic_path(features_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, n in enumerate(names):
                g = f.create_group(n)  # '/' in a name makes nested groups, as in hloc
                g.create_dataset("keypoints", data=res.keypoints[i])
                g.create_dataset("scores", data=res.scores[i])
                g.create_dataset("image_size", data=np.array(sizes[i], np.int64))
            f.attrs["loftr_sfm_signature"] = sig
            f.attrs["loftr_sfm_matches_stat"] = _file_stat(matches_path)
            f.attrs["loftr_sfm_merged_stat"] = _file_stat(output / MERGED_MATCHES_FILE)
            f.attrs["loftr_sfm_config"] = json.dumps({**asdict(cfg), "cell_size": cell, "max_error": err})
            f.attrs["loftr_sfm_stats"] = json.dumps(res.stats)
    timer.__exit__()
    logger.info(
        "keypoints: %d pairs, %d raw matches -> %d keypoints in %d images, %d matches "
        "(merged %d duplicate nodes, cut %d edges) in %.1f s",
        len(keys), res.stats["raw_matches"], res.stats["keypoints"], len(names), res.stats["matches"],
        res.stats["merged_nodes"], res.stats["cut_edges"], timer.seconds,
    )
    record_stage_time(output, "keypoints", timer.seconds)
    return features_path


def read_features(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read ``features.h5`` into {name: {"keypoints": (K,2), "scores": (K,), "image_size": (2,)}}."""
    import h5py

    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                out[name] = {k: np.asarray(obj[k]) for k in ("keypoints", "scores", "image_size") if k in obj}
        f.visititems(visit)
    return out


def read_matches(h5, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Index matches of a pair from an open ``merged_matches.h5`` (the keypoints stage's output).

    Returns:
        (M, 2) int64 indices into (name0, name1) keypoints (orientation handled) and (M,)
        float32 scores.
    """
    key, rev = find_pair(h5, name0, name1)
    g = h5[key]
    if "matches0" not in g:
        raise InputError(f"{getattr(h5, 'filename', MERGED_MATCHES_FILE)}: pair {key} has no matches0; run the keypoints stage")
    m0 = np.asarray(g["matches0"]).astype(np.int64)
    s0 = np.asarray(g["matching_scores0"], np.float32) if "matching_scores0" in g else np.ones(len(m0), np.float32)
    idx = np.flatnonzero(m0 >= 0)
    m = np.stack([idx, m0[idx]], 1)
    if rev:
        m = m[:, ::-1].copy()
    return m, s0[idx]


__all__ = ["KeypointsConfig", "MergeResult", "PRESETS", "merge_matches", "merge_pairs", "run_keypoints",
           "read_features", "read_matches", "track_stats", "MERGED_MATCHES_FILE"]
