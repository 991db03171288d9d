"""Per-node floats of the merge: in memory, or in a scratch file read back only where needed.

Every node has a position (x, y float64), the sum of its observation weights (float64) and its
number of observations (float32): 28 bytes, the largest per-node cost of the merge. Only the nodes
of conflicting tracks (a few percent) and the surviving keypoints need them, so with a scratch
directory they are written to an unlinked temporary file as the nodes are made (image by image,
in id order) and read back by index: the resident memory of the merge then holds the graph only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

NODE_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("w", "<f8"), ("n", "<f4")])
#: records per read when the nodes are taken back in id order (28 MB)
READ_RECORDS = 1 << 20


class NodeStore:
    """Append-only per-node records (``NODE_DTYPE``), then read by node id, a few updated.

    ``scratch_dir=None`` keeps them in memory; a directory holds them in an unlinked temporary
    file there (nothing is left behind, even after a kill), read back with plain file reads (no
    memory map: the file never counts as resident memory). Updated records are kept in memory
    and override the file's.
    """

    def __init__(self, scratch_dir: str | Path | None = None) -> None:
        self._parts: list[np.ndarray] | None = [] if scratch_dir is None else None
        self._file = None if scratch_dir is None else tempfile.TemporaryFile(dir=scratch_dir, prefix=".keypoints-")
        self._arr: np.ndarray | None = None
        self._over_ids = np.zeros(0, np.int64)  # sorted ids of updated records (file mode)
        self._over = np.zeros(0, NODE_DTYPE)
        self.size = 0

    def append(self, xy: np.ndarray, w: np.ndarray, n: np.ndarray) -> None:
        """Records of the next ``len(w)`` nodes: positions (k, 2), weight sums (k,), counts (k,)."""
        rec = _records(xy, w, n)
        if self._parts is not None:
            self._parts.append(rec)
        else:
            rec.tofile(self._file)
        self.size += len(rec)

    def finish(self) -> None:
        """End of appends: the records become readable by node id."""
        if self._parts is not None:
            self._arr = np.empty(self.size, NODE_DTYPE)
            a = 0
            for k, part in enumerate(self._parts):  # one copy at a time, freeing the parts
                self._arr[a : a + len(part)] = part
                a += len(part)
                self._parts[k] = None
            self._parts = None
        else:
            self._file.flush()

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy (k, 2) float64, weight sums (k,) float64, counts (k,) float32) of sorted node ids."""
        rec = np.concatenate([r for _, r in self.take(np.asarray(idx))]) if len(idx) else np.zeros(0, NODE_DTYPE)
        return np.stack([rec["x"], rec["y"]], 1), np.ascontiguousarray(rec["w"]), np.ascontiguousarray(rec["n"])

    def update(self, idx: np.ndarray, xy: np.ndarray, w: np.ndarray, n: np.ndarray) -> None:
        """Overwrite the records of a few nodes (sorted, unique ids)."""
        idx = np.asarray(idx, np.int64)
        rec = _records(xy, w, n)
        if self._file is None:
            self._arr[idx] = rec
            return
        keep = ~np.isin(self._over_ids, idx)
        ids = np.concatenate([self._over_ids[keep], idx])
        o = np.argsort(ids, kind="stable")
        self._over_ids, self._over = ids[o], np.concatenate([self._over[keep], rec])[o]

    def take(self, idx: np.ndarray, chunk: int = READ_RECORDS):
        """Yield (start, records) for sorted node ids ``idx``, in order, ``chunk`` ids at a time."""
        for a in range(0, len(idx), chunk):
            sel = idx[a : a + chunk]
            if self._file is None:
                yield a, self._arr[sel]
                continue
            hi = int(sel[-1]) + 1
            out = np.empty(len(sel), NODE_DTYPE)
            b = 0
            while b < len(sel):  # from the next wanted id, at most `chunk` records per read
                r0 = int(sel[b])
                r1 = min(r0 + chunk, hi)
                m = int(np.searchsorted(sel, r1, side="left"))
                self._file.seek(r0 * NODE_DTYPE.itemsize)
                buf = np.fromfile(self._file, NODE_DTYPE, count=r1 - r0)
                out[b:m] = buf[sel[b:m] - r0]
                del buf
                b = m
            if len(self._over_ids):
                k = np.searchsorted(self._over_ids, sel)
                hit = k < len(self._over_ids)
                hit[hit] = self._over_ids[k[hit]] == sel[hit]
                out[hit] = self._over[k[hit]]
            yield a, out

    def close(self) -> None:
        self._arr = None
        self._parts = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _records(xy: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    rec = np.empty(len(w), NODE_DTYPE)
    rec["x"], rec["y"], rec["w"], rec["n"] = xy[:, 0], xy[:, 1], w, n
    return rec
