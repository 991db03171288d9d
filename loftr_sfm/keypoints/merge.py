"""The merge in memory: per-pair matches -> shared keypoints (steps 3 to 5 of the rule)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .graph import (
    CHUNK,
    _budget_drop,
    _components,
    _conflict_groups,
    _dedupe_edges,
    _greedy_split,
    _mutual_best,
    _nonzero,
)
from .nodes import PairReader, _index_nodes
from .store import NodeStore


def _release_memory() -> None:
    """Give the freed heap memory back to the system between the steps (glibc's ``malloc_trim``;
    elsewhere nothing): the merge's many small per-pair arrays leave holes that would otherwise
    stay resident through the later, larger steps."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


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


def _resolve_conflicts(e0, e1, ew, node_img, store: NodeStore, num_images, max_error, max_rounds):
    """Step 3: one keypoint per image per track (merge close duplicates, one-to-one, greedy split).

    Updates the records (position, weight, count) of the representatives that absorb merged
    nodes in ``store``. Returns the surviving edges (e0, e1, ew) and (merged nodes, cut edges,
    rounds). After the first round's conflict check only the conflicting tracks' edges remain,
    and their nodes are renumbered 0..M-1 in id order (the order, hence every tie rule, is
    unchanged) with their records read into memory: later rounds cost what those tracks hold,
    not what the whole graph holds.
    """
    merged = cut = 0
    rounds_used = 0
    done = None
    used = None  # global id of every compact node id, once renumbered
    img = node_img
    for rnd in range(max_rounds + 1):
        if len(e0) == 0:
            break
        N = len(img)
        members, reps, comp = _conflict_groups(e0, e1, ew, img, num_images, N)
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
            if used is not None:
                c0, c1 = used[c0], used[c1]
            done = (c0, c1, cw) if done is None else tuple(np.concatenate([a, b]) for a, b in zip(done, (c0, c1, cw)))
            del c0, c1, cw
        del comp, dirty, de
        if used is None:  # renumber the nodes of the conflicting tracks, read their records
            used = np.unique(np.concatenate([e0, e1]))
            e0 = np.searchsorted(used, e0).astype(e0.dtype)
            e1 = np.searchsorted(used, e1).astype(e1.dtype)
            members = np.searchsorted(used, members)
            reps = np.searchsorted(used, reps)
            img = node_img[used]
            xy, ow, on = store.gather(used)
            N = len(used)
            changed = np.zeros(N, bool)
        close = np.zeros(len(members), bool)
        n_cut = 0
        if rnd < max_rounds:
            close = np.linalg.norm(xy[members] - xy[reps], axis=1) <= max_error
            if close.any():  # merge close duplicates into their representative
                mm, rr = members[close], reps[close]
                remap = np.arange(N, dtype=e0.dtype)
                remap[mm] = rr
                # weighted means of the merged nodes (only the few touched nodes are updated)
                ur, k = np.unique(rr, return_inverse=True)
                k = k.reshape(-1)
                sw = ow[ur] + np.bincount(k, ow[mm], len(ur))
                for c in (0, 1):
                    sx = ow[ur] * xy[ur, c] + np.bincount(k, ow[mm] * xy[mm, c], len(ur))
                    xy[ur, c] = sx / np.maximum(sw, 1e-12)
                on[ur] += np.bincount(k, on[mm], len(ur)).astype(on.dtype)
                ow[ur] = sw
                changed[ur] = True
                e0, e1 = remap[e0], remap[e1]
                del remap
                e0, e1, ew = _dedupe_edges(e0, e1, ew, N)
                merged += int(close.sum())
            # one-to-one per pair: an edge survives only if it is the best of both its nodes
            # towards the other image (best score wins; ties -> lower edge index)
            keep = _mutual_best(e0, e1, ew, img, num_images)
            n_cut = int((~keep).sum())
            if n_cut:
                cut += n_cut
                e0, e1, ew = e0[keep], e1[keep], ew[keep]
        if not close.any() and not n_cut:
            # conflicts that neither merging nor one-to-one resolve (far duplicates, outlier
            # links): rebuild the conflicting tracks strongest edge first, refusing any edge that
            # would put two keypoints of one image into one track
            keep = _greedy_split(e0, e1, ew, img)
            cut += int((~keep).sum())
            e0, e1, ew = e0[keep], e1[keep], ew[keep]
            break
    if used is not None:  # back to global ids; the merged positions and weights into the store
        e0, e1 = used[e0], used[e1]
        if changed.any():
            store.update(used[changed], xy[changed], ow[changed], on[changed])
    if done is not None:
        d0, d1, dw = done
        del done
        e0 = np.concatenate([d0, e0])
        del d0
        e1 = np.concatenate([d1, e1])
        del d1
        ew = np.concatenate([dw, ew])
        del dw
    return e0, e1, ew, (merged, cut, rounds_used)


def _apply_budget(e0, e1, ew, node_img, num_images, max_keypoints, max_degree, stats):
    """Step 4: at most ``max_keypoints`` nodes per image. Returns (e0, e1, ew, alive mask).

    Rank: degree, then support (sum of incident edge scores, summed as two bincounts over the
    e0 and e1 sides and added), then node id. Memory: per node two counts, one float64 sum and
    two bools; the support of the few nodes whose two side sums do not add up to one sequential
    sum (an e0 edge and at least two e1 edges) is summed apart.
    """
    N = len(node_img)
    alive = np.zeros(N, bool)
    alive[e0] = True
    alive[e1] = True
    if not max_keypoints or max_keypoints <= 0:
        return e0, e1, ew, alive
    per_img = np.zeros(num_images, np.int64)
    for a in range(0, N, CHUNK):  # alive nodes per image
        per_img += np.bincount(node_img[a : a + CHUNK][alive[a : a + CHUNK]], minlength=num_images)
    over = per_img > max_keypoints
    if not over.any():
        return e0, e1, ew, alive

    def edge_chunks(e):  # (chunk of e, the chunk's scores) for the edges whose end is a candidate
        for a in range(0, len(e), CHUNK):
            ec = e[a : a + CHUNK]
            hit = over[node_img[ec]]  # edge ends are alive: candidates are those of full images
            yield ec[hit], ew[a : a + CHUNK][hit]

    # a node has at most one edge per pair of its image (tracks hold one node per image)
    cdt = np.uint16 if max_degree < 2**16 else np.int32
    c0, c1 = np.zeros(N, cdt), np.zeros(N, cdt)
    for e, c in ((e0, c0), (e1, c1)):
        for ec, _ in edge_chunks(e):
            np.add.at(c, ec, np.ones(len(ec), cdt))
    apart = (c0 > 0) & (c1 > 1)
    deg = c0
    deg += c1
    del c1
    support = np.zeros(N)
    for ec, wc in edge_chunks(e0):  # np.add.at adds in edge order, as one bincount would
        np.add.at(support, ec, wc.astype(np.float64))
    sp = np.flatnonzero(apart)
    side1 = np.zeros(len(sp))
    for ec, wc in edge_chunks(e1):
        a = apart[ec]
        np.add.at(support, ec[~a], wc[~a].astype(np.float64))  # onto 0.0 or one term: a sequential sum
        np.add.at(side1, np.searchsorted(sp, ec[a]), wc[a].astype(np.float64))
    support[sp] += side1
    del apart, sp, side1
    # the candidates, whole images at a time (node ids are contiguous per image)
    first = node_img.first  # node ids are contiguous per image
    n_cand = np.where(over, per_img, 0).cumsum()
    drop, i0 = [], 0
    while i0 < num_images:
        i1 = max(int(np.searchsorted(n_cand, n_cand[i0] - (per_img[i0] if over[i0] else 0) + CHUNK, "right")),
                 i0 + 1)
        i1 = min(i1, num_images)
        lo, hi = int(first[i0]), int(first[i1])
        nodes = np.flatnonzero(alive[lo:hi] & over[node_img[lo:hi]]).astype(e0.dtype) + e0.dtype.type(lo)
        if len(nodes):
            drop.append(_budget_drop(nodes, node_img, deg[nodes], support[nodes], max_keypoints))
        del nodes
        i0 = i1
    del deg, support
    drop = np.concatenate(drop) if drop else np.zeros(0, e0.dtype)
    alive[drop] = False
    keep = alive[e0] & alive[e1]
    e0, e1, ew = e0[keep], e1[keep], ew[keep]
    alive[:] = False
    alive[e0] = True
    alive[e1] = True
    stats["budget_dropped"] = int(len(drop))
    return e0, e1, ew, alive


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
    scratch_dir: str | Path | None = None,
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
        progress: show a progress bar over the images.
        cache_mb: memory for positions read ahead (8 bytes per match); 0 reads every pair twice.
        scratch_dir: where the per-node records (28 bytes per node) wait in an unlinked scratch
            file instead of memory (:class:`~loftr_sfm.keypoints.store.NodeStore`); the result
            is the same.
    Returns:
        :class:`MergeResult`; keypoints of image i sorted by (y cell, x cell).
    """
    pair_images = np.asarray(pair_images, np.int64).reshape(-1, 2)
    P = len(pair_images)
    if P and (pair_images.min() < 0 or pair_images.max() >= num_images):
        raise ValueError(f"pair image indices must lie in [0, {num_images})")
    stats: dict = {"pairs": P, "raw_matches": 0}
    store = NodeStore(scratch_dir)
    try:
        # ---- 1. + 2. every observation quantized to a cell of its image (nodes, positions); the edges,
        # oriented image0 -> image1 of their pair and deduplicated
        e0, e1, ew, node_img, store = _index_nodes(pair_images, read_pair, num_images, cell_size, min_score, stats,
                                                   progress, int(cache_mb * 2**20), store)
        _release_memory()
        # ---- 3. one keypoint per image per track
        e0, e1, ew, (merged, cut, rounds_used) = _resolve_conflicts(e0, e1, ew, node_img, store, num_images,
                                                                    max_error, max_rounds)
        stats.update(merged_nodes=merged, cut_edges=cut, conflict_rounds=rounds_used)
        _release_memory()
        # ---- 4. budget per image
        max_degree = int(np.bincount(pair_images.ravel(), minlength=num_images).max()) if P else 0
        e0, e1, ew, alive = _apply_budget(e0, e1, ew, node_img, num_images, max_keypoints, max_degree, stats)
        # ---- 5. per-image keypoints (node ids are sorted by key = (image, y cell, x cell))
        alive_nodes = _nonzero(alive, e0.dtype)
        del alive
        K = len(alive_nodes)
        xy = np.empty((K, 2), np.float32)
        mean_score = np.empty(K, np.float32)
        for a, rec in store.take(alive_nodes):
            xy[a : a + len(rec), 0] = rec["x"]
            xy[a : a + len(rec), 1] = rec["y"]
            mean_score[a : a + len(rec)] = rec["w"] / np.maximum(rec["n"], 1)
    finally:
        store.close()
    keypoints, kp_scores, matches, mscores = _outputs(pair_images, num_images, node_img, alive_nodes, xy, mean_score,
                                                      e0, e1, ew)
    stats["keypoints"] = int(K)
    stats["matches"] = int(sum(len(m) for m in matches))
    return MergeResult(keypoints, kp_scores, matches, mscores, stats)


def _outputs(pair_images, num_images, node_img, alive_nodes, xy, mean_score, e0, e1, ew):
    """Step 5: keypoints and scores per image, (index, index) matches and scores per pair."""
    C = CHUNK  # chunks: no int64 or float64 temporaries of all nodes / edges
    N, K, P = len(node_img), len(alive_nodes), len(pair_images)
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
    # matches sorted by (pair, image0 keypoint): one int64 key per edge (unique: each pair is
    # one-to-one), so any sort gives the order
    pk = pair_images[:, 0] * num_images + pair_images[:, 1]
    pk_order = np.argsort(pk, kind="stable")
    spk = pk[pk_order]
    kmax = max((len(k) for k in keypoints), default=0) + 1
    key = np.empty(len(e0), np.int64)
    for a in range(0, len(e0), C):
        ek = node_img[e0[a : a + C]].astype(np.int64) * num_images + node_img[e1[a : a + C]]
        key[a : a + len(ek)] = pk_order[np.searchsorted(spk, ek)] * kmax + local[e0[a : a + C]]
        del ek
    o = np.argsort(key)
    key = key[o]
    pb = np.searchsorted(key, np.arange(P + 1) * kmax)
    del key
    m = np.empty((len(o), 2), np.int32)
    m[:, 0] = local[e0[o]]
    m[:, 1] = local[e1[o]]
    del local
    mw = ew[o].astype(np.float32, copy=False)
    del o
    matches = [m[pb[p] : pb[p + 1]] for p in range(P)]
    mscores = [mw[pb[p] : pb[p + 1]] for p in range(P)]
    return keypoints, kp_scores, matches, mscores


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
