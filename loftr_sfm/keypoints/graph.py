"""Graph primitives of the merge: runs, deduplication, one-to-one, tracks, conflicts, budget.

Nodes are (image, cell) ids numbered image by image (ids sorted by image), edges are raw matches
between nodes of two images. Everything is vectorized with numpy; the only Python loops run
over images, over the steps of the conflict split (bounded by ``MAX_STEP_EDGES``) or over the
edges of the rare oversized conflicting tracks.
"""

from __future__ import annotations

import numpy as np

#: tracks with more edges than this are split by the sequential loop, the others by the
#: vectorized steps (one step per edge rank, all tracks at once)
MAX_STEP_EDGES = 64
CHUNK = 1 << 20


class NodeImages:
    """The image of every node without an (N,) array: node ids are numbered image by image, so
    the first id of each image says it all. Indexing with ids (or a slice) gives int32 images,
    as indexing an (N,) int32 array would.
    """

    def __init__(self, counts: np.ndarray) -> None:
        """``counts``: (num_images,) nodes of every image."""
        self.first = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getitem__(self, ids) -> np.ndarray:
        if isinstance(ids, slice):
            start, stop, step = ids.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            i0 = int(np.searchsorted(self.first, start, side="right")) - 1 if stop > start else 0
            i1 = int(np.searchsorted(self.first, stop - 1, side="right")) if stop > start else 0
            counts = np.minimum(self.first[i0 + 1 : i1 + 1], stop) - np.maximum(self.first[i0:i1], start)
            return np.repeat(np.arange(i0, i1, dtype=np.int32), counts)
        ids = np.asarray(ids)
        out = np.empty(ids.shape, np.int32)
        flat, res = ids.reshape(-1), out.reshape(-1)
        for a in range(0, len(flat), CHUNK):
            res[a : a + CHUNK] = np.searchsorted(self.first, flat[a : a + CHUNK], side="right") - 1
        return out


def _starts(gs: np.ndarray) -> np.ndarray:
    """Bool mask of the first element of each run of equal values in a sorted array."""
    m = np.ones(len(gs), bool)
    if len(gs) > 1:
        np.not_equal(gs[1:], gs[:-1], out=m[1:])
    return m


def _nonzero(mask: np.ndarray, dtype, chunk: int = CHUNK) -> np.ndarray:
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
    """Unique (e0, e1) edges keeping the maximum weight; output sorted by (e0, e1).

    (Any sort gives the same result: the kept ids are those of the run, the weight its maximum.)
    """
    if len(e0) == 0:
        return e0, e1, w
    key = e0.astype(np.int64) * n_nodes + e1
    o = np.argsort(key)
    key = key[o]
    st = _starts(key)
    del key
    if st.all():  # no duplicate (the usual case): a permutation only
        return e0[o], e1[o], w[o]
    st = np.flatnonzero(st)
    wmax = np.maximum.reduceat(w[o], st)
    sel = o[st]
    return e0[sel], e1[sel], wmax


def _mutual_best(e0: np.ndarray, e1: np.ndarray, w: np.ndarray, node_img: np.ndarray, num_images: int) -> np.ndarray:
    """Mask of edges that are the best-scored edge of e0 towards image(e1) and of e1 towards image(e0).

    Ties go to the lower edge index. Requires edges sorted by (e0, e1) and node ids sorted by image
    (both hold in the merge), so the (e0, image(e1)) groups are contiguous.
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


def _components(e0: np.ndarray, e1: np.ndarray, n_nodes: int, chunk: int = CHUNK) -> np.ndarray:
    """Track id of every node: connected components of the (undirected) edge graph.

    Hook-and-compress union-find, vectorized: every edge hooks the larger of its two roots onto
    the smaller (``np.minimum.at``), then pointer jumping points every node at its root (only
    the nodes not yet there take part in each jump); this repeats until no edge joins two roots
    (a few rounds: tracks are short), from the second round on over the edges that still joined
    two roots in the round before. Edges are visited in chunks, so the memory is that of a few
    node-sized int arrays (scipy's ``connected_components`` builds a float64 matrix and its
    transpose). Ids are the rank of each component's smallest node, as scipy numbers them.

    Returns:
        (n_nodes,) int32 (int64 beyond 2**31 nodes) component ids.
    """
    dt = np.int32 if n_nodes < 2**31 - 1 else np.int64
    parent = np.arange(n_nodes, dtype=dt)
    first = True
    while len(e0):
        left: tuple[list, list] = ([], [])  # edges that joined two roots (candidates for the next round)
        for a in range(0, len(e0), chunk):
            lo = parent[e0[a : a + chunk]]
            other = parent[e1[a : a + chunk]]
            hi = np.maximum(lo, other)
            np.minimum(lo, other, out=lo)
            del other
            m = lo != hi
            if m.any():
                np.minimum.at(parent, hi[m], lo[m])
                if not first:
                    left[0].append(e0[a : a + chunk][m])
                    left[1].append(e1[a : a + chunk][m])
                elif not left[0]:
                    left[0].append(None)  # first round: every edge is looked at again once
        if not left[0]:
            break
        # pointer jumping: parent[x] <= x always, so this ends at the roots
        todo = np.concatenate([np.flatnonzero(parent[a : a + chunk] != np.arange(a, min(a + chunk, n_nodes), dtype=dt))
                               .astype(dt) + dt(a) for a in range(0, n_nodes, chunk)])
        while len(todo):
            p = parent[todo]
            pp = parent[p]
            parent[todo] = pp
            todo = todo[pp != p]
            del p, pp
        if not first:
            e0 = np.concatenate(left[0])
            e1 = np.concatenate(left[1])
        first = False
    root = np.zeros(n_nodes, bool)
    root[parent] = True  # after the jumps every parent is a root
    rank = np.cumsum(root, dtype=dt)
    del root
    rank -= 1
    return rank[parent]


def _conflict_groups(e0, e1, ew, node_img, num_images, N):
    """Nodes sharing a track with another node of their image.

    Returns (members, reps, comp): every non-representative node of a (track, image) group with
    more than one node, that group's representative (largest support, then lowest node id), and
    the track id of every node. Only tracks of three nodes or more can hold such a group (an
    edge joins two images), so only their nodes are sorted.
    """
    comp = _components(e0, e1, N)
    size = np.bincount(comp)
    if size.max(initial=0) < 3:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), comp
    big = size >= 3
    del size
    nodes = np.concatenate([np.flatnonzero(big[comp[a : a + CHUNK]]).astype(e0.dtype) + a
                            for a in range(0, N, CHUNK)])
    del big
    # group by (track, image): node ids are sorted by image, so a stable sort by track alone
    # orders every track's nodes by image (and by id within an image); no (track, image) key
    if nodes.dtype == np.int32 and np.little_endian:
        # (track, node) packed in one int64 and sorted in place (no argsort index); nodes and tracks
        # are then the two int32 halves of each key (views, no copies)
        key = np.empty(len(nodes), np.int64)
        for a in range(0, len(nodes), CHUNK):
            key[a : a + CHUNK] = comp[nodes[a : a + CHUNK]]
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


def _greedy_loop(e0: np.ndarray, e1: np.ndarray, ew: np.ndarray, node_img: np.ndarray) -> np.ndarray:
    """The sequential form of :func:`_greedy_split` (a Python loop over the edges); keep mask."""
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


def _greedy_split(e0: np.ndarray, e1: np.ndarray, ew: np.ndarray, node_img: np.ndarray,
                  max_step_edges: int = MAX_STEP_EDGES) -> np.ndarray:
    """Kruskal-style track building with a conflict check, strongest edge first (ties: lower index).

    An edge is kept if its nodes are already in one track, or if joining their two tracks puts
    no image twice in the result. Tracks (components of the given edges) do not interact, so
    all of them are built at once: step ``t`` takes the ``t``-th strongest edge of every track
    (vectorized over tracks). Tracks of more than ``max_step_edges`` edges go through the
    sequential loop instead (their steps would each gather the whole track).

    Returns a keep mask over the edges.
    """
    E = len(e0)
    keep = np.zeros(E, bool)
    if E == 0:
        return keep
    used, inv = np.unique(np.concatenate([e0, e1]), return_inverse=True)
    a, b = inv[:E].astype(np.int64), inv[E:].astype(np.int64)
    del inv
    M = len(used)
    img = np.asarray(node_img[used], np.int64)
    num_images = int(img.max()) + 1
    cc = _components(a, b, M).astype(np.int64)
    ec = cc[a]
    n_edges = np.bincount(ec, minlength=int(cc.max()) + 1)
    big = n_edges[ec] > max_step_edges
    if big.any():
        keep[big] = _greedy_loop(e0[big], e1[big], ew[big], node_img)
    S = np.flatnonzero(~big)
    if len(S) == 0:
        return keep
    o = S[np.lexsort((-ew[S], ec[S]))]  # by track, strongest first, ties by edge index (stable)
    ts = np.flatnonzero(_starts(ec[o]))  # first edge of each track in o
    tlen = np.diff(np.append(ts, len(o)))
    tcomp = ec[o[ts]]
    # nodes of every track, contiguous: node_order[ns[c] : ns[c] + nn[c]]
    node_order = np.argsort(cc, kind="stable")
    nn = np.bincount(cc, minlength=len(n_edges))
    ns = np.cumsum(nn) - nn
    label = np.arange(M)  # sub-track root of every node
    for t in range(int(tlen.max())):
        act = np.flatnonzero(tlen > t)
        k = o[ts[act] + t]  # the t-th strongest edge of every track that has one
        ra, rb = label[a[k]], label[b[k]]
        same = ra == rb
        keep[k[same]] = True
        d = np.flatnonzero(~same)
        if len(d) == 0:
            continue
        k, ra, rb, c = k[d], ra[d], rb[d], tcomp[act[d]]
        cnt = nn[c]
        rep = np.repeat(np.arange(len(c)), cnt)
        x = node_order[np.repeat(ns[c] - np.cumsum(cnt) + cnt, cnt) + np.arange(len(rep))]
        lx = label[x]
        in_a, in_b = lx == ra[rep], lx == rb[rep]
        sel = in_a | in_b
        key = np.sort(rep[sel] * num_images + img[x[sel]])  # (edge, image) over both sub-tracks
        clash = np.zeros(len(c), bool)  # an image in both (each sub-track has an image once)
        clash[key[1:][key[1:] == key[:-1]] // num_images] = True
        keep[k[~clash]] = True
        join = in_b & ~clash[rep]
        label[x[join]] = ra[rep[join]]
    return keep


def _budget_drop(nodes: np.ndarray, node_img: np.ndarray, deg: np.ndarray, support: np.ndarray,
                 max_keypoints: int) -> np.ndarray:
    """Nodes beyond the ``max_keypoints`` best of their image: rank by (degree desc, support desc, id asc).

    ``nodes`` (sorted ids, hence grouped by image) are the candidates, ``deg`` / ``support``
    their values (aligned with ``nodes``). Selection, not a sort: per image the degree at which
    the budget runs out is found from degree counts; only the nodes of that degree are then
    selected by support (``np.partition``, one call per image), equal supports by lower id.
    """
    im = node_img[nodes]
    st = _starts(im)
    g = np.cumsum(st) - 1
    G = int(g[-1]) + 1 if len(g) else 0
    D = int(deg.max()) + 1 if len(deg) else 1
    K = int(max_keypoints)
    if G * D > 4 * len(nodes) + (1 << 20):  # degree table too large (very long tracks): a full sort
        o = np.lexsort((-support, -deg.astype(np.int64), im))
        rank = np.arange(len(o)) - np.searchsorted(im, im, side="left")  # im is sorted: im[o] == im
        return nodes[o[rank >= K]]
    cnt = np.bincount(g * D + deg, minlength=G * D).reshape(G, D)
    ge = np.cumsum(cnt[:, ::-1], 1)[:, ::-1]  # ge[g, x]: nodes of image g with degree >= x
    dstar = (ge >= K).sum(1) - 1  # the degree at which the budget runs out
    above = np.where(dstar + 1 < D, ge[np.arange(G), np.minimum(dstar + 1, D - 1)], 0)
    need = K - above  # how many nodes of degree dstar are kept
    dn = dstar[g]
    keep = deg > dn
    tie = np.flatnonzero(deg == dn)
    tb = np.searchsorted(g[tie], np.arange(G + 1))
    for gi in np.flatnonzero(need < np.diff(tb)).tolist():
        t = tie[tb[gi] : tb[gi + 1]]
        s = support[t]
        cut = len(t) - int(need[gi])
        thr = np.partition(s, cut)[cut]  # the need-th largest support
        gt = s > thr
        keep[t[gt]] = True
        keep[t[np.flatnonzero(s == thr)[: int(need[gi]) - int(gt.sum())]]] = True
    keep[tie[np.repeat(need >= np.diff(tb), np.diff(tb))]] = True
    return nodes[~keep]
