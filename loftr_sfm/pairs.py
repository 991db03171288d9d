"""Pairs stage: choose the image pairs to match -> ``pairs.txt`` ("name0 name1" per line).

Methods (``PairsConfig.method``):

* ``exhaustive``: every pair, N(N-1)/2.
* ``sequential``: each image with the next ``num_neighbors`` images in name order (videos,
  walk-throughs); ``quadratic`` adds steps 2^j (j = 0 .. num_neighbors-1) beyond that window;
  ``loop_closure`` (on by default) adds the top-``loop_closure_neighbors`` retrieval pairs of every
  image: where the path comes back (a ring, rows of a grid, a walk that returns) the images meet
  again, and a video with a gap is tied across it.
* ``retrieval``: each image with its top-``num_neighbors`` images by global descriptor
  similarity (:mod:`loftr_sfm.retrieval`; descriptors and the fitted vocabulary are saved in the
  output folder and reused on rerun and by localization).
* ``covisibility``: from an existing COLMAP model, each image with the ``num_neighbors`` images
  sharing most 3D points with it.

Every generator returns pairs with no self-pair and no duplicate (in either order), each oriented
as (earlier name, later name) in the given name list, sorted by those positions: the output is
deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .io import InputError, list_images, write_pairs
from .utils import merge_config

logger = logging.getLogger(__name__)

PAIRS_FILE = "pairs.txt"


@dataclass
class PairsConfig:
    method: Literal["exhaustive", "sequential", "retrieval", "covisibility"] = field(
        default="exhaustive", metadata={"help": "pair selection: exhaustive | sequential | retrieval | covisibility"}
    )
    num_neighbors: int = field(
        default=10, metadata={"help": "K: sequential window / retrieval top-k / covisibility top-k per image"}
    )
    quadratic: bool = field(default=False, metadata={"help": "sequential: also pair with images 2^j steps ahead"})
    loop_closure: bool = field(default=True, metadata={"help": "sequential: add retrieval pairs (loop closure)"})
    loop_closure_neighbors: int = field(default=5, metadata={"help": "sequential: retrieval top-k for loop closure"})
    descriptor: str = field(default="vlad-sift", metadata={"help": "global descriptor for retrieval: vlad-sift | dinov2"})
    vocabulary_size: int = field(default=64, metadata={"help": "vlad-sift: number of visual words"})
    reference_model: str | None = field(
        default=None, metadata={"help": "covisibility: COLMAP model folder (default: OUTPUT/model)"}
    )
    num_workers: int = field(default=2, metadata={"help": "worker processes for image decoding"})


# --------------------------------------------------------------------------- helpers


def canonical_pairs(pairs: Iterable[tuple[str, str]], names: Sequence[str]) -> list[tuple[str, str]]:
    """Drop self-pairs and duplicates (either order); orient and sort by position in ``names``.

    Raises :class:`InputError` if a pair names an image that is not in ``names``.
    """
    index = {n: i for i, n in enumerate(names)}
    keys: set[tuple[int, int]] = set()
    for a, b in pairs:
        if a not in index or b not in index:
            raise InputError(f"pair ({a}, {b}) names an image that is not in the image list")
        i, j = index[a], index[b]
        if i != j:
            keys.add((i, j) if i < j else (j, i))
    return [(names[i], names[j]) for i, j in sorted(keys)]


# --------------------------------------------------------------------------- generators


def pairs_from_exhaustive(names: Sequence[str]) -> list[tuple[str, str]]:
    """All N(N-1)/2 pairs (i < j) in name-list order."""
    names = list(names)
    if len(set(names)) != len(names):
        raise InputError("duplicate image names")
    i, j = np.triu_indices(len(names), k=1)
    return [(names[a], names[b]) for a, b in zip(i.tolist(), j.tolist())]


def pairs_from_sequential(
    names: Sequence[str],
    num_neighbors: int = 10,
    quadratic: bool = False,
    loop_pairs: Iterable[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Each image i with i+1 .. i+num_neighbors (in the given order, normally sorted names).

    ``quadratic`` adds i + 2^j for j = 0 .. num_neighbors-1 (steps beyond the window);
    ``loop_pairs`` (e.g. retrieval pairs) are added. Count without extras:
    sum over i of min(K, N-1-i).
    """
    names = list(names)
    n = len(names)
    steps = set(range(1, max(int(num_neighbors), 0) + 1))
    if quadratic:
        steps |= {2**j for j in range(max(int(num_neighbors), 0))}
    pairs = [(names[i], names[i + s]) for i in range(n) for s in sorted(steps) if i + s < n]
    if loop_pairs is not None:
        pairs += list(loop_pairs)
    return canonical_pairs(pairs, names)


def pairs_from_retrieval(
    names: Sequence[str],
    descriptors: np.ndarray,
    num_neighbors: int = 10,
    db_names: Sequence[str] | None = None,
    db_descriptors: np.ndarray | None = None,
) -> list[tuple[str, str]]:
    """Top-``num_neighbors`` most similar images of each image (self excluded).

    Args:
        names: images of the collection, (N, D) unit-norm ``descriptors`` in the same order.
        db_names, db_descriptors: another database to retrieve from (default: the collection).
    Returns canonical pairs (see :func:`canonical_pairs`) over ``names`` (+ ``db_names``).
    """
    from .retrieval import topk_pairs

    db_names = list(names) if db_names is None else list(db_names)
    db_descriptors = descriptors if db_descriptors is None else db_descriptors
    pairs = topk_pairs(list(names), descriptors, db_names, db_descriptors, int(num_neighbors), exclude_self=True)
    universe = list(names) + [n for n in db_names if n not in set(names)]
    return canonical_pairs(pairs, universe)


def _covisibility_sparse(reconstruction: Any) -> tuple[list[str], Any]:
    """Image names (sorted) and the sparse (N, N) CSR matrix of 3D points shared by each image pair
    (diagonal: the image's own points)."""
    import pycolmap
    from scipy import sparse

    rec = reconstruction
    if not isinstance(rec, pycolmap.Reconstruction):
        path = Path(rec)
        if not path.is_dir():
            raise InputError(f"reference model {path} does not exist")
        try:
            rec = pycolmap.Reconstruction(str(path))
        except Exception as e:
            raise InputError(f"cannot read the COLMAP model in {path} ({e})") from None
    images = sorted(((img.name, iid) for iid, img in rec.images.items() if img.has_pose), key=lambda t: t[0])
    names = [n for n, _ in images]
    row_of = {iid: r for r, (_, iid) in enumerate(images)}
    rows, cols = [], []
    for col, (_, p3d) in enumerate(rec.points3D.items()):
        ids = {el.image_id for el in p3d.track.elements}
        for iid in ids:
            if iid in row_of:
                rows.append(row_of[iid])
                cols.append(col)
    A = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(names), max(len(rec.points3D), 1)))
    return names, (A @ A.T).tocsr()


def covisibility_counts(reconstruction: Any) -> tuple[list[str], np.ndarray]:
    """Image names (sorted) and the (N, N) int matrix of 3D points shared by each image pair."""
    names, C = _covisibility_sparse(reconstruction)
    C = C.toarray().astype(np.int64)
    np.fill_diagonal(C, 0)
    return names, C


def pairs_from_covisibility(reconstruction_or_model_dir: Any, num_neighbors: int = 10) -> list[tuple[str, str]]:
    """Each registered image with the ``num_neighbors`` images sharing most 3D points (> 0).

    Reads the sparse covisibility matrix row by row (no (N, N) array).
    """
    names, C = _covisibility_sparse(reconstruction_or_model_dir)
    pairs = []
    k = int(num_neighbors)
    for i in range(len(names)):
        cols = C.indices[C.indptr[i] : C.indptr[i + 1]]
        vals = C.data[C.indptr[i] : C.indptr[i + 1]]
        ok = (cols != i) & (vals > 0)
        cols, vals = cols[ok], vals[ok]
        order = np.lexsort((cols, -vals))[:k]  # most shared first, ties by name
        pairs += [(names[i], names[j]) for j in cols[order]]
    return canonical_pairs(pairs, names)


# --------------------------------------------------------------------------- stage


def _retrieval_pairs(output: Path, images: Path, names: list[str], config: PairsConfig, k: int) -> list[tuple[str, str]]:
    from .retrieval import GLOBAL_FEATURES_FILE, compute_global_descriptors, load_descriptors

    rcfg = {"descriptor": config.descriptor, "num_words": config.vocabulary_size, "num_workers": config.num_workers}
    compute_global_descriptors(names, images, output, rcfg)
    ok, desc = load_descriptors(output / GLOBAL_FEATURES_FILE, _names_in(output / GLOBAL_FEATURES_FILE, names))
    if len(ok) < len(names):
        logger.warning("%d image(s) have no global descriptor (unreadable) and get no retrieval pairs", len(names) - len(ok))
    return pairs_from_retrieval(ok, desc, k)


def _names_in(path: Path, names: list[str]) -> list[str]:
    from .retrieval import _existing_names

    have = _existing_names(path)
    return [n for n in names if n in have]


def run_pairs(output: Path, images: Path, config: PairsConfig | Mapping[str, Any] | None = None) -> Path:
    """Stage ``pairs``: images -> ``output/pairs.txt`` (atomic); returns its path."""
    config = merge_config(PairsConfig, config)
    output, images = Path(output), Path(images)
    names = list_images(images)
    method = config.method
    if method == "exhaustive":
        pairs = pairs_from_exhaustive(names)
    elif method == "sequential":
        loop = None
        if config.loop_closure and len(names) > 2:
            from .retrieval import VocabularyError

            try:
                loop = _retrieval_pairs(output, images, names, config, config.loop_closure_neighbors)
            except VocabularyError as e:  # featureless photos: the sequential pairs alone
                logger.warning("sequential pairs without loop closure: %s", e)
        pairs = pairs_from_sequential(names, config.num_neighbors, config.quadratic, loop)
        if loop is not None:
            window = len(pairs_from_sequential(names, config.num_neighbors, config.quadratic))
            logger.info("sequential pairs: %d in the window, %d more from loop closure (retrieval top-%d)", window,
                        len(pairs) - window, config.loop_closure_neighbors)
    elif method == "retrieval":
        pairs = _retrieval_pairs(output, images, names, config, config.num_neighbors)
    elif method == "covisibility":
        model = Path(config.reference_model) if config.reference_model else output / "model"
        pairs = pairs_from_covisibility(model, config.num_neighbors)
        known = set(names)
        unknown = sorted({n for p in pairs for n in p} - known)
        if unknown:
            raise InputError(f"model {model} has image(s) that are not in {images}: {', '.join(unknown[:5])}")
    else:
        raise ValueError(f"unknown pairs method {method!r}; choose exhaustive, sequential, retrieval or covisibility")
    path = output / PAIRS_FILE
    write_pairs(path, pairs)
    logger.info("%s pairs: %d pairs for %d images -> %s", method, len(pairs), len(names), path)
    return path


__all__ = [
    "PairsConfig",
    "canonical_pairs",
    "covisibility_counts",
    "pairs_from_covisibility",
    "pairs_from_exhaustive",
    "pairs_from_retrieval",
    "pairs_from_sequential",
    "run_pairs",
]
