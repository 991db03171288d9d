"""Global image descriptors for retrieval (pairs stage and localization).

Descriptors (registry :data:`DESCRIPTORS`):

* ``vlad-sift`` (default, no downloaded weights): VLAD over RootSIFT with a vocabulary fitted by
  k-means on the collection itself. Intra-normalised, signed-square-rooted and L2-normalised,
  dimension ``num_words * 128``. The fitted vocabulary is saved beside the descriptors
  (``global_vocabulary.npz``), so NEW images (localization queries) are encoded later in the same
  space with :func:`encode_images`.
* ``dinov2`` (learned, downloaded when online): DINOv2 ViT-S/14 from the Hugging Face hub through
  ``transformers``; descriptor = [CLS, GeM of patch tokens], L2-normalised. Offline without a
  cached copy it raises :class:`RetrievalUnavailableError` with a clear message.

Files (hloc layout): ``global_features.h5`` with one group per image name (a '/' inside a name
makes nested groups, as in hloc) holding the dataset ``global_descriptor`` (D,) float32.

Similarity = dot product of the L2-normalised descriptors.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import ImageReadError, InputError, atomic_path, file_bytes, h5_bytes, read_image, require_space
from .utils import merge_config

logger = logging.getLogger(__name__)

GLOBAL_FEATURES_FILE = "global_features.h5"
VOCABULARY_FILE = "global_vocabulary.npz"
DESCRIPTORS = ("vlad-sift", "dinov2")


class RetrievalUnavailableError(RuntimeError):
    """A learned global descriptor cannot be used here (weights not downloadable / package missing)."""


class VocabularyError(InputError):
    """The photos hold too few local features to fit a vlad-sift vocabulary (blank or featureless images)."""


@dataclass
class RetrievalConfig:
    descriptor: str = field(default="vlad-sift", metadata={"help": "global descriptor: vlad-sift | dinov2"})
    num_words: int = field(default=64, metadata={"help": "vlad-sift: vocabulary size (k-means clusters)"})
    max_side: int = field(default=1024, metadata={"help": "images are resized so the longer side is at most this"})
    max_keypoints: int = field(default=2000, metadata={"help": "vlad-sift: SIFT keypoints per image"})
    vocab_images: int = field(default=300, metadata={"help": "vlad-sift: images (evenly spaced) used to fit the vocabulary"})
    vocab_descriptors_per_image: int = field(default=500, metadata={"help": "vlad-sift: descriptors per image for k-means"})
    seed: int = field(default=0, metadata={"help": "k-means seed"})
    num_workers: int = field(default=2, metadata={"help": "worker processes for decoding + SIFT (0 = main process)"})
    dinov2_model: str = field(default="facebook/dinov2-small", metadata={"help": "dinov2: hub id"})


# --------------------------------------------------------------------------- local features


def _load_gray(path: Path, max_side: int) -> np.ndarray:
    import cv2

    img = read_image(path, grayscale=True)
    h, w = img.shape
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(int(round(w * s)), 1), max(int(round(h * s)), 1)), interpolation=cv2.INTER_AREA)
    return img


def _rootsift(path: Path, max_side: int, max_keypoints: int) -> np.ndarray:
    from .matchers.sift import extract_rootsift

    _, desc = extract_rootsift(_load_gray(path, max_side), max_keypoints)
    return desc


class _SiftDataset:
    def __init__(self, paths: Sequence[Path], max_side: int, max_keypoints: int):
        self.paths, self.max_side, self.max_keypoints = list(paths), max_side, max_keypoints

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, _rootsift(self.paths[i], self.max_side, self.max_keypoints), None
        except (ImageReadError, OSError, ValueError) as e:
            return i, None, str(e)


def _identity(x):
    return x


def _iter_rootsift(paths: Sequence[Path], config: RetrievalConfig, desc: str = "SIFT"):
    """Yield (index, (N, 128) RootSIFT or None, error or None), decoding in worker processes."""
    import torch
    from .utils import progress as tqdm  # follows set_progress (-q)

    from .matching import _worker_init

    ds = _SiftDataset(paths, config.max_side, config.max_keypoints)
    nw = max(int(config.num_workers), 0) if len(paths) > 1 else 0
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=nw, collate_fn=_identity, worker_init_fn=_worker_init if nw else None
    )
    for item in tqdm(loader, total=len(ds), unit="img", desc=desc, disable=len(ds) < 10):
        yield item


# --------------------------------------------------------------------------- VLAD


def kmeans(x: np.ndarray, k: int, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """k-means (k-means++ init, Lloyd iterations) of (N, D) float32 -> (k, D) centroids."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    n = len(X)
    if n < k:
        raise VocabularyError(f"cannot fit a vocabulary of {k} words from only {n} descriptors (too few or blank "
                              "images)")
    first = torch.randint(n, (1,), generator=g)
    C = X[first].clone()
    d2 = torch.cdist(X, C).squeeze(1) ** 2
    for _ in range(1, k):
        p = d2 / d2.sum().clamp_min(1e-12)
        nxt = torch.multinomial(p, 1, generator=g)
        C = torch.cat([C, X[nxt]])
        d2 = torch.minimum(d2, (torch.cdist(X, X[nxt]).squeeze(1)) ** 2)
    for _ in range(iterations):
        assign = torch.cdist(X, C).argmin(1)
        sums = torch.zeros_like(C).index_add_(0, assign, X)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        C_new = sums / counts.clamp_min(1)[:, None]
        if empty.any():  # re-seed empty clusters with random points
            C_new[empty] = X[torch.randint(n, (int(empty.sum()),), generator=g)]
        if torch.allclose(C_new, C, atol=1e-6):
            C = C_new
            break
        C = C_new
    return C.numpy().astype(np.float32)


def vlad(desc: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """VLAD of (N, D) local descriptors with (K, D) centroids -> (K*D,) float32, unit L2 norm.

    Residuals summed per nearest centroid, intra-normalised (per word L2), signed square root,
    global L2 normalisation. An image without descriptors gives the zero vector.
    """
    import torch

    K, D = centroids.shape
    if desc is None or len(desc) == 0:
        return np.zeros(K * D, np.float32)
    X = torch.from_numpy(np.ascontiguousarray(desc, np.float32))
    C = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
    assign = torch.cdist(X, C).argmin(1)
    V = torch.zeros(K, D).index_add_(0, assign, X - C[assign])
    V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-12)
    V = V.flatten()
    V = torch.sign(V) * V.abs().sqrt()
    V = V / V.norm().clamp_min(1e-12)
    return V.numpy().astype(np.float32)


@dataclass
class Vocabulary:
    """A fitted ``vlad-sift`` vocabulary with the extraction parameters needed to encode new images."""

    centroids: np.ndarray  # (K, 128) float32
    max_side: int
    max_keypoints: int
    descriptor: str = "vlad-sift"

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    centroids=self.centroids,
                    max_side=self.max_side,
                    max_keypoints=self.max_keypoints,
                    descriptor=self.descriptor,
                )

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"retrieval vocabulary {path} does not exist (run the pairs stage with retrieval first)")
        try:
            z = np.load(path, allow_pickle=False)
            return cls(
                centroids=z["centroids"].astype(np.float32),
                max_side=int(z["max_side"]),
                max_keypoints=int(z["max_keypoints"]),
                descriptor=str(z["descriptor"]),
            )
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path} is not a valid retrieval vocabulary ({e})") from None


def fit_vocabulary(paths: Sequence[Path], config: RetrievalConfig | None = None) -> tuple[Vocabulary, dict[int, np.ndarray]]:
    """Fit a ``vlad-sift`` vocabulary on (a spread-out subset of) ``paths``.

    Returns the vocabulary and the RootSIFT descriptors computed on the way ({index: (N, 128)}),
    so callers need not extract them again.
    """
    config = merge_config(RetrievalConfig, config)
    n = len(paths)
    m = min(n, max(int(config.vocab_images), 1))
    chosen = np.unique(np.linspace(0, n - 1, m).round().astype(int)) if n else np.zeros(0, int)
    rng = np.random.default_rng(config.seed)
    sample, got = [], {}
    for i, desc, err in _iter_rootsift([paths[j] for j in chosen], config, desc="SIFT (vocabulary)"):
        if desc is None:
            continue
        got[int(chosen[i])] = desc
        take = desc if len(desc) <= config.vocab_descriptors_per_image else desc[
            rng.choice(len(desc), config.vocab_descriptors_per_image, replace=False)
        ]
        sample.append(take)
    if not sample:
        raise VocabularyError("no readable image to fit the retrieval vocabulary")
    X = np.concatenate(sample)
    centroids = kmeans(X, config.num_words, seed=config.seed)
    logger.info("fitted a %d-word VLAD vocabulary on %d descriptors of %d images", config.num_words, len(X), len(sample))
    return Vocabulary(centroids, config.max_side, config.max_keypoints), got


# --------------------------------------------------------------------------- learned (downloaded) descriptors


def _dinov2_encoder(config: RetrievalConfig):
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise RetrievalUnavailableError(f"descriptor 'dinov2' needs the transformers package ({e})") from None
    try:
        model = AutoModel.from_pretrained(config.dinov2_model).eval()
    except Exception as e:  # offline, no cache, hub error...
        raise RetrievalUnavailableError(
            f"descriptor 'dinov2' needs the weights {config.dinov2_model!r} from the Hugging Face hub, which could not "
            f"be downloaded or found in the cache ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Connect to the internet once, or use descriptor 'vlad-sift' (no downloaded weights)."
        ) from None

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def encode(path: Path) -> np.ndarray:
        import cv2

        img = read_image(path)
        h, w = img.shape[:2]
        s = min(1.0, 518 / max(h, w))
        W, H = max(int(w * s) // 14 * 14, 14), max(int(h * s) // 14 * 14, 14)
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            tokens = model(pixel_values=(x - mean) / std).last_hidden_state[0]  # (1 + HW, C)
        cls, patches = tokens[0], tokens[1:]
        gem = patches.clamp_min(1e-6).pow(3).mean(0).pow(1 / 3)
        d = torch.cat([torch.nn.functional.normalize(cls, dim=0), torch.nn.functional.normalize(gem, dim=0)])
        return torch.nn.functional.normalize(d, dim=0).numpy().astype(np.float32)

    return encode


# --------------------------------------------------------------------------- h5 storage


def _write_descriptors(path: Path, items: Mapping[str, np.ndarray]) -> None:
    """Add descriptors to ``global_features.h5`` (complete new copy + atomic replace)."""
    import h5py

    if not items:
        return
    require_space(path, file_bytes(path) + h5_bytes((np.asarray(d, np.float32) for d in items.values()), len(items)))
    with atomic_path(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            for name, d in items.items():
                if name in f:
                    del f[name]
                f.create_group(name).create_dataset("global_descriptor", data=np.asarray(d, np.float32))


def load_descriptors(path: str | Path, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Read ``global_features.h5``.

    Returns:
        names (all images in the file, sorted, if ``names`` is None) and (N, D) float32.
    Raises:
        InputError naming the file / the missing images.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"global descriptor file {path} does not exist")
    with h5py.File(path, "r") as f:
        if names is None:
            found: list[str] = []
            f.visititems(lambda n, o: found.append(n) if hasattr(o, "keys") and "global_descriptor" in o else None)
            names = sorted(found)
        missing = [n for n in names if n not in f or "global_descriptor" not in f[n]]
        if missing:
            raise InputError(f"{path} has no global descriptor for {len(missing)} image(s): {', '.join(missing[:5])}")
        desc = [np.asarray(f[n]["global_descriptor"], np.float32) for n in names]
    return list(names), (np.stack(desc) if desc else np.zeros((0, 0), np.float32))


def _existing_names(path: Path) -> set[str]:
    import h5py

    if not path.is_file():
        return set()
    found: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: found.append(n) if hasattr(o, "keys") and "global_descriptor" in o else None)
    except OSError as e:
        raise InputError(f"{path} is not a readable HDF5 file ({e}); move it away to recompute") from None
    return set(found)


# --------------------------------------------------------------------------- public API


def _resolver(resolve) -> Callable[[str], Path]:
    from .matching import _resolver as r

    return r(resolve)


def compute_global_descriptors(
    names: Sequence[str],
    resolve: Callable[[str], Path] | Mapping[str, Path] | str | Path,
    output_dir: str | Path,
    config: RetrievalConfig | Mapping[str, Any] | None = None,
    chunk: int = 64,
) -> Path:
    """Descriptors of the MAP images -> ``output_dir/global_features.h5`` (resumable).

    ``vlad-sift`` fits the vocabulary on these images when ``output_dir/global_vocabulary.npz``
    does not exist yet, and saves it there. Images already in the file are skipped; results are
    written every ``chunk`` images. Unreadable images are reported by name and skipped (they
    get no descriptor).
    """
    config = merge_config(RetrievalConfig, config)
    if config.descriptor not in DESCRIPTORS:
        raise ValueError(f"unknown global descriptor {config.descriptor!r}; available: {list(DESCRIPTORS)}")
    output_dir = Path(output_dir)
    out = output_dir / GLOBAL_FEATURES_FILE
    resolve_fn = _resolver(resolve)
    have = _existing_names(out)
    vocab_path = output_dir / VOCABULARY_FILE
    if config.descriptor == "vlad-sift" and not vocab_path.exists() and have:
        logger.warning("%s exists without %s: recomputing all descriptors", out, vocab_path)
        out.unlink()
        have = set()
    todo = [n for n in names if n not in have]
    if not todo:
        return out
    paths = [resolve_fn(n) for n in todo]
    pending: dict[str, np.ndarray] = {}

    def flush() -> None:
        _write_descriptors(out, pending)
        pending.clear()

    if config.descriptor == "dinov2":
        encode = _dinov2_encoder(config)
        for n, p in zip(todo, paths):
            try:
                pending[n] = encode(p)
            except ImageReadError as e:
                logger.warning("skipping image %s: %s", n, e)
            if len(pending) >= chunk:
                flush()
        flush()
        return out

    cached: dict[int, np.ndarray] = {}
    if vocab_path.exists():
        vocab = Vocabulary.load(vocab_path)
    else:
        all_paths = [resolve_fn(n) for n in names]
        vocab, got = fit_vocabulary(all_paths, config)
        vocab.save(vocab_path)
        index_of = {n: i for i, n in enumerate(todo)}
        cached = {index_of[names[j]]: d for j, d in got.items() if names[j] in index_of}
    rest = [i for i in range(len(todo)) if i not in cached]
    for i, d in cached.items():
        pending[todo[i]] = vlad(d, vocab.centroids)
    cfg = merge_config(RetrievalConfig, config, max_side=vocab.max_side, max_keypoints=vocab.max_keypoints)
    for j, desc, err in _iter_rootsift([paths[i] for i in rest], cfg, desc="SIFT (VLAD)"):
        n = todo[rest[j]]
        if desc is None:
            logger.warning("skipping image %s: %s", n, err)
            continue
        pending[n] = vlad(desc, vocab.centroids)
        if len(pending) >= chunk:
            flush()
    flush()
    return out


def encode_images(
    names: Sequence[str],
    resolve: Callable[[str], Path] | Mapping[str, Path] | str | Path,
    map_dir: str | Path,
    config: RetrievalConfig | Mapping[str, Any] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Encode NEW images (e.g. localization queries) in the space of the map in ``map_dir``.

    ``vlad-sift`` uses the vocabulary saved in ``map_dir/global_vocabulary.npz``. Nothing is
    written. Unreadable images are reported and left out.

    Returns:
        the names that were encoded and their (N, D) float32 descriptors.
    """
    config = merge_config(RetrievalConfig, config)
    resolve_fn = _resolver(resolve)
    paths = [resolve_fn(n) for n in names]
    ok, out = [], []
    if config.descriptor == "dinov2":
        encode = _dinov2_encoder(config)
        for n, p in zip(names, paths):
            try:
                out.append(encode(p))
                ok.append(n)
            except ImageReadError as e:
                logger.warning("skipping image %s: %s", n, e)
    elif config.descriptor == "vlad-sift":
        vocab = Vocabulary.load(Path(map_dir) / VOCABULARY_FILE)
        cfg = merge_config(RetrievalConfig, config, max_side=vocab.max_side, max_keypoints=vocab.max_keypoints)
        for i, desc, err in _iter_rootsift(paths, cfg, desc="SIFT (queries)"):
            if desc is None:
                logger.warning("skipping image %s: %s", names[i], err)
                continue
            ok.append(names[i])
            out.append(vlad(desc, vocab.centroids))
    else:
        raise ValueError(f"unknown global descriptor {config.descriptor!r}; available: {list(DESCRIPTORS)}")
    return ok, (np.stack(out) if out else np.zeros((0, 0), np.float32))


def similarity(query_desc: np.ndarray, db_desc: np.ndarray) -> np.ndarray:
    """(Nq, D) x (Ndb, D) -> (Nq, Ndb) cosine similarities (descriptors are unit norm)."""
    return np.asarray(query_desc, np.float32) @ np.asarray(db_desc, np.float32).T


def _topk_rows(sim: np.ndarray, k: int) -> np.ndarray:
    """(R, k) column indices of every row's ``k`` largest values, largest first, ties by lower column.

    A selection (``np.partition``) then a sort of the ``k`` chosen: the same as the first ``k``
    columns of a stable argsort of ``-sim``, at O(R * N) instead of O(R * N log N).
    """
    n = sim.shape[1]
    if k >= n:
        return np.argsort(-sim, axis=1, kind="stable")
    neg = -sim
    t = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]  # every row's k-th smallest of -sim
    lt = neg < t
    eq = neg == t
    need = k - lt.sum(1, keepdims=True)  # how many of the values equal to it are taken (lowest columns)
    sel = lt | (eq & (np.cumsum(eq, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(sel)[1].reshape(len(sim), k)  # row by row, in column order
    o = np.argsort(np.take_along_axis(neg, cols, 1), axis=1, kind="stable")
    return np.take_along_axis(cols, o, 1)


def topk_pairs(
    query_names: Sequence[str],
    query_desc: np.ndarray,
    db_names: Sequence[str],
    db_desc: np.ndarray,
    k: int,
    exclude_self: bool = True,
    min_score: float | None = None,
    max_block: int = 1 << 22,
) -> list[tuple[str, str]]:
    """Top-``k`` database images per query -> pairs (query, db), best first per query.

    A query is never paired with the database image of the same name when ``exclude_self``.
    Ties are broken by database order (deterministic). The similarities are computed for a block
    of queries at a time (at most ``max_block`` values: 16 MB of float32), never as the whole
    (Nq, Ndb) matrix.
    """
    if len(query_names) == 0 or len(db_names) == 0 or k <= 0:
        return []
    q = np.asarray(query_desc, np.float32)
    db = np.asarray(db_desc, np.float32)
    pos = {n: j for j, n in enumerate(db_names)} if exclude_self else {}
    rows = max(1, int(max_block) // len(db_names))
    pairs = []
    for a in range(0, len(query_names), rows):
        names = query_names[a : a + rows]
        sim = similarity(q[a : a + rows], db)
        for i, n in enumerate(names):
            if n in pos:
                sim[i, pos[n]] = -np.inf
        sim[np.isnan(sim)] = -np.inf  # (argsort put NaN last; they are skipped below in both cases)
        order = _topk_rows(sim, min(k, len(db_names)))
        for i, qn in enumerate(names):
            for j in order[i]:
                s = sim[i, j]
                if not np.isfinite(s) or (min_score is not None and s < min_score):
                    continue
                pairs.append((qn, db_names[j]))
    return pairs


__all__ = [
    "DESCRIPTORS",
    "GLOBAL_FEATURES_FILE",
    "VOCABULARY_FILE",
    "RetrievalConfig",
    "RetrievalUnavailableError",
    "Vocabulary",
    "compute_global_descriptors",
    "encode_images",
    "fit_vocabulary",
    "kmeans",
    "load_descriptors",
    "similarity",
    "topk_pairs",
    "vlad",
]
