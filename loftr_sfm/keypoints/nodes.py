"""Steps 1 and 2 of the merge, streamed image by image: (image, cell) nodes and the raw edges."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .graph import NodeImages, _dedupe_edges
from .store import NodeStore

#: ``read_pair(p) -> (kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` of pair ``p``; called once or twice.
PairReader = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]

#: cell tables up to this many cells are ranked by a cumulative sum (int32: 64 MB at most)
RANK_TABLE_CELLS = 1 << 24
#: up to this many cells a bool table and a binary search (64 MB); beyond, a sort (np.unique)
BOOL_TABLE_CELLS = 1 << 26


def _valid_observations(k0: np.ndarray, k1: np.ndarray, sc: np.ndarray, min_score: float) -> np.ndarray:
    """(N,) bool: finite, not absurdly far outside any image, score >= ``min_score``."""
    ok = np.isfinite(k0).all(1) & np.isfinite(k1).all(1) & np.isfinite(sc) & (sc >= min_score)
    ok &= (np.abs(k0) < 1e7).all(1) & (np.abs(k1) < 1e7).all(1)
    return ok


def _all_valid(k0: np.ndarray, k1: np.ndarray, sc: np.ndarray, min_score: float) -> bool:
    """Whether :func:`_valid_observations` holds everywhere, from six reductions (NaN propagates
    through min / max and fails every comparison)."""
    if len(sc) == 0:
        return True
    lo, hi = sc.min(), sc.max()
    return bool(min(k0.min(), k1.min()) > -1e7 and max(k0.max(), k1.max()) < 1e7
                and np.isfinite(lo) and np.isfinite(hi) and lo >= min_score)


class _Tables:
    """Cell tables reused from image to image (fresh memory for every image costs page faults)."""

    def __init__(self) -> None:
        self.occupied = np.zeros(0, bool)
        self.rank = np.zeros(0, np.int32)

    def get(self, span: int) -> tuple[np.ndarray, np.ndarray]:
        """A cleared (span,) bool table and an (span,) int32 buffer."""
        if len(self.occupied) < span:
            self.occupied = np.zeros(max(span, 2 * len(self.occupied)), bool)
            self.rank = np.empty(len(self.occupied), np.int32)
        table = self.occupied[:span]
        table[:] = False
        return table, self.rank[:span]


def _cell_ids(pos: np.ndarray, inv_cell: np.float32, tables: _Tables) -> tuple[np.ndarray, int]:
    """Rank of every position's cell among the occupied cells of the image, ordered by (y, x) cell.

    Returns (local ids (n,) int, number of occupied cells).
    """
    c = np.floor(pos * inv_cell).astype(np.int32)
    cx, cy = c[:, 0], c[:, 1]
    lo_x, lo_y = int(cx.min()), int(cy.min())
    wc = int(cx.max()) - lo_x + 1
    span = (int(cy.max()) - lo_y + 1) * wc
    lin = (cy - lo_y).astype(np.int64) * wc + (cx - lo_x)
    del c, cx, cy
    if span <= RANK_TABLE_CELLS:  # dense table: rank = cumulative count of occupied cells
        table, rank = tables.get(span)
        table[lin] = True
        np.cumsum(table, dtype=np.int32, out=rank)
        local = rank[lin]
        local -= 1
        return local, int(rank[-1])
    if span <= BOOL_TABLE_CELLS:  # dense table: no sort
        table = np.zeros(span, bool)
        table[lin] = True
        u = np.flatnonzero(table)
        del table
        return np.searchsorted(u, lin), len(u)
    u, local = np.unique(lin, return_inverse=True)
    return local.reshape(-1), len(u)


def _index_nodes(pair_images: np.ndarray, read_pair: PairReader, num_images: int, cell_size: float,
                 min_score: float, stats: dict, progress: bool = False, cache_bytes: int = 0,
                 store: NodeStore | None = None):
    """Step 1, streamed image by image: (image, cell) nodes, their positions, and the raw edges.

    For image ``i`` the pairs holding it are read (side 0 pairs, then side 1 pairs, each in pair
    order), its observations quantized and its cells numbered (ids sorted by (image, y cell,
    x cell)); its nodes' score-weighted mean positions are accumulated right there, so no
    observation position outlives its image. What is kept per raw match: two node ids (int32)
    and the score (float32). A pair is read at its first image; its other image's positions are
    kept for the second while ``cache_bytes`` allows (sequential pairs: a few neighbours' worth),
    else the pair is read again.

    The node records go to ``store`` (a new in-memory :class:`NodeStore` if None), image by
    image: position (float64; the merge's ``max_error`` test on float32 means flips ties of
    lattice data), sum of observation weights (float64), number of observations (float32).

    Returns:
        e0, e1: (E,) node ids of the edges (the used raw matches, duplicates merged keeping the
        best score), sorted by (e0, e1); ``w`` (E,) float32 scores (>= 1e-6); ``node_img``, the
        image of every node (a :class:`~loftr_sfm.keypoints.graph.NodeImages`); the finished ``store``.
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
    store = NodeStore() if store is None else store
    node_counts: list[tuple[int, int]] = []  # (image, nodes) of every image with nodes
    pending: dict[int, np.ndarray] = {}  # pair -> positions of its other image, read at the first visit
    pending_bytes = 0
    tables = _Tables()
    N = 0
    from ..utils import progress as tqdm  # follows set_progress (-q)

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
                every = _all_valid(k0, k1, sc, min_score)
                ok = None if every else _valid_observations(k0, k1, sc, min_score)
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
        local, n_i = _cell_ids(pos, inv_cell, tables)
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
        for s, p, k, _ in parts:  # global ids (int32 sums are safe when the ids fit int32)
            e_parts[s][p] = (local[a : a + len(k)] + ids_dtype(N)).astype(ids_dtype, copy=False)
            a += len(k)
        del parts, local
        store.append(xy, obs_w, obs_n)
        del xy, obs_w, obs_n
        node_counts.append((i, n_i))
        N += n_i
    del tables
    n_obs = int(counts.clip(0).sum())
    stats["used_matches"] = n_obs
    stats["observations"] = 2 * n_obs
    stats["nodes"] = N
    store.finish()
    per_image = np.zeros(num_images, np.int64)
    for i, n in node_counts:
        per_image[i] = n
    node_img = NodeImages(per_image)
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
    return e0, e1, w, node_img, store
