"""Matching stage: run a matcher backend over image pairs -> ``matches.h5`` (raw, hloc dense layout).

``run_matching(output, images, config)`` reads ``output/pairs.txt`` and writes
``output/matches.h5``: one group per pair ``names_to_pair(name0, name1)`` with ``keypoints0``,
``keypoints1`` (N, 2) float32 in ORIGINAL-image pixels, OpenCV convention (integer = pixel
centre), and ``scores`` (N,) float32 (see :mod:`loftr_sfm.io`).

:func:`match_pairs` is the reusable core (localization uses it for query <-> map pairs whose
images live in different folders, with a matcher built once via :func:`build_backend`).

How it runs:

* images are decoded (EXIF orientation applied) and resized to the backend's
  :class:`~loftr_sfm.matchers.InputSpec` inside DataLoader worker processes (``num_workers``;
  0 = in the main process);
* pairs are bucketed by (resized size of image0, resized size of image1), preserving the pair
  order inside a bucket, and batched (``batch_size``) so that a batch is one tensor per side;
* device ``auto`` = CUDA (with fp16 autocast when ``mixed_precision``) / MPS / CPU;
* resumable and kill-safe: every finished batch is written as a small HDF5 file into the journal
  folder ``.matches.h5.journal/`` beside ``matches.h5`` (write to a temporary name, then atomic
  rename). Journal files are merged into ``matches.h5`` by writing a complete new copy and
  atomically replacing the old one (at start, every ``merge_interval`` seconds and at the end).
  So ``matches.h5`` is always a complete, readable HDF5 file, and a kill (even SIGKILL, at any
  moment) loses at most the batch in flight. Pairs already present in ``matches.h5`` or in the
  journal are skipped;
* an unreadable image is reported by name (once) and its pairs are skipped; the run never
  crashes because of one bad file;
* ``executor="ray"``: the same plan of batches, cut into shards, is matched by the workers of a Ray
  cluster, each shard written as a file of its own and merged into ``matches.h5`` at the end
  (:mod:`loftr_sfm.distributed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .io import (
    UNREADABLE_ATTR,
    ImageReadError,
    InputError,
    atomic_path,
    file_bytes,
    h5_bytes,
    image_size,
    list_images,
    names_to_pair,
    read_image,
    read_pairs,
    require_space,
    write_raw_matches,
)
from .matchers import DEFAULT_MATCHER, InputSpec, MatcherBackend, PairMatches, build_matcher, parse_options
from .utils import merge_config, resolve_device

logger = logging.getLogger(__name__)

PAIRS_FILE = "pairs.txt"
MATCHES_FILE = "matches.h5"


@dataclass
class MatchingConfig:
    matcher: str = field(default=DEFAULT_MATCHER, metadata={"help": "matcher backend: eloftr | xfeat-star | sift"})
    weights: str | None = field(
        default=None, metadata={"help": "weights of the backend (hub id, directory or file); default: the backend's own"}
    )
    max_side: int | None = field(
        default=None, metadata={"help": "resize so the longer side is at most this; default: the backend's own"}
    )
    matcher_options: str | None = field(
        default=None, metadata={"help": "extra backend options, 'key=value,key=value' or a JSON object"}
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "pairs per forward pass (same-size pairs are batched); default: the backend's own"},
    )
    num_workers: int = field(default=2, metadata={"help": "image decoding worker processes (0 = main process)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    mixed_precision: bool = field(default=True, metadata={"help": "fp16 autocast on CUDA (ignored on CPU)"})
    overwrite: bool = field(default=False, metadata={"help": "recompute pairs already in matches.h5"})
    merge_interval: float = field(
        default=300.0, metadata={"help": "seconds between merges of the batch journal into matches.h5"}
    )
    executor: Literal["local", "ray"] = field(
        default="local",
        metadata={"help": "local: in this process; ray: shards of the pairs on the workers of a Ray cluster "
                          "(pip install 'loftr_sfm[ray]'; images and output on storage every node sees)"},
    )
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join (HEAD:6379, 'auto', ray://...); default: RAY_ADDRESS or the "
                          "cluster started on this machine by 'ray start', else a new local one"},
    )
    ray_cpus_per_worker: int = field(
        default=4, metadata={"help": "CPUs (torch threads) of each Ray matching worker; at most a node's CPUs"}
    )
    ray_shard_size: int = field(
        default=64, metadata={"help": "pairs per Ray shard (whole batches): the unit a worker writes, a rerun "
                                      "skips and a lost worker's replacement redoes"}
    )

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ValueError(f"unknown executor {self.executor!r}; choose 'local' or 'ray'")


@dataclass
class MatchingStats:
    """What :func:`match_pairs` did."""

    num_pairs: int = 0  # pairs requested
    num_done_before: int = 0  # skipped because already in the file / journal
    num_matched: int = 0  # matched in this run
    num_failed: int = 0  # skipped because an image could not be read
    failed_images: list[str] = field(default_factory=list)
    num_matches: int = 0  # total matches written in this run
    seconds: float = 0.0


# --------------------------------------------------------------------------- backend


def backend_options(config: MatchingConfig) -> dict[str, Any]:
    """Options passed to the backend: ``matcher_options`` plus ``weights``/``max_side`` when set."""
    opts = parse_options(config.matcher_options)
    if config.weights is not None:
        opts["weights"] = config.weights
    if config.max_side is not None:
        opts["max_side"] = config.max_side
    return opts


def build_backend(config: MatchingConfig | Mapping[str, Any] | None = None) -> MatcherBackend:
    """Build the backend described by a matching config (load it once, reuse it for many calls)."""
    config = merge_config(MatchingConfig, config)
    return build_matcher(config.matcher, device=resolve_device(config.device), **backend_options(config))


# --------------------------------------------------------------------------- loader


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if (w, h) == tuple(size):
        return img
    interp = cv2.INTER_AREA if size[0] < w and size[1] < h else cv2.INTER_LINEAR
    return cv2.resize(img, tuple(int(s) for s in size), interpolation=interp)


def load_image_tensor(path: Path, spec: InputSpec, size: tuple[int, int] | None = None):
    """Decode + resize one image for a backend.

    Returns:
        (C, H, W) float32 tensor in [0, 1] (C = 1 if ``spec.grayscale`` else 3) and the ORIGINAL
        (width, height). ``size`` (width, height) forces the resized size (default: the spec's).
    """
    import torch

    img = read_image(path, grayscale=spec.grayscale)
    h, w = img.shape[:2]
    size = size or spec.resized_size(w, h)
    img = _resize(img, size)
    t = torch.from_numpy(np.array(img, copy=True)).float().div_(255.0)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.contiguous(), (w, h)


class _PairDataset:
    """Items = pairs; decoding happens in the DataLoader workers."""

    def __init__(self, pairs, paths: Mapping[str, Path], sizes: Mapping[str, tuple[int, int]], spec: InputSpec):
        self.pairs = list(pairs)
        self.paths = dict(paths)
        self.sizes = dict(sizes)  # resized (w, h) per image name
        self.spec = spec

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n0, n1 = self.pairs[i]
        item: dict[str, Any] = {"name0": n0, "name1": n1}
        try:
            item["image0"], item["size0"] = load_image_tensor(self.paths[n0], self.spec, self.sizes[n0])
        except (ImageReadError, OSError, ValueError) as e:
            item["error"], item["bad"] = str(e), n0
            return item
        try:
            item["image1"], item["size1"] = load_image_tensor(self.paths[n1], self.spec, self.sizes[n1])
        except (ImageReadError, OSError, ValueError) as e:
            item["error"], item["bad"] = str(e), n1
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    ok = [it for it in items if "error" not in it]
    out: dict[str, Any] = {"errors": [(it["name0"], it["name1"], it["bad"], it["error"]) for it in items if "error" in it]}
    out["names0"] = [it["name0"] for it in ok]
    out["names1"] = [it["name1"] for it in ok]
    if ok:
        out["image0"] = torch.stack([it["image0"] for it in ok])
        out["image1"] = torch.stack([it["image1"] for it in ok])
        out["size0"] = torch.tensor([it["size0"] for it in ok], dtype=torch.int64)
        out["size1"] = torch.tensor([it["size1"] for it in ok], dtype=torch.int64)
    return out


def _worker_init(_: int) -> None:
    # NB: do not call cv2.setNumThreads here: in a forked child it waits for the parent's OpenCV
    # pool threads, which do not exist there (deadlock observed).
    import torch

    torch.set_num_threads(1)


def bucket_batches(keys: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Group indices by key (first-seen key order, stable inside a key) into chunks of ``batch_size``."""
    buckets: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        buckets.setdefault(k, []).append(i)
    bs = max(int(batch_size), 1)
    return [idx[j : j + bs] for idx in buckets.values() for j in range(0, len(idx), bs)]


# --------------------------------------------------------------------------- kill-safe writer


def _pair_groups(h5) -> list[str]:
    """Keys of every group holding ``keypoints0`` (i.e. one pair) in an open h5 file."""
    keys: list[str] = []

    def visit(name: str, obj) -> None:
        if hasattr(obj, "keys") and "keypoints0" in obj:
            keys.append(name)

    h5.visititems(visit)
    return keys


class MatchesWriter:
    """Journal of per-batch HDF5 files, merged atomically into the final matches file.

    ``matches_path`` is replaced only by complete files (``os.replace``); journal files appear only
    complete (atomic rename). Safe against a kill at any moment; not meant for two concurrent
    writers on the same file.
    """

    def __init__(self, matches_path: str | Path, attrs: Mapping[str, str] | None = None,
                 pair_attrs: Mapping[str, str] | None = None) -> None:
        self.path = Path(matches_path)
        self.journal = self.path.parent / f".{self.path.name}.journal"
        self._count = 0
        self.attrs = dict(attrs or {})  # file attributes the matches file gets (e.g. "matcher")
        self.pair_attrs = dict(pair_attrs or {})  # attributes of every pair group written
        self.adopted: list[Path] = []  # complete files of other writers (Ray shards), merged like the journal

    def adopt(self, files: Iterable[str | Path]) -> None:
        """Merge these complete raw-matches files at the next :meth:`merge` too (after the journal), then delete them."""
        self.adopted.extend(Path(p) for p in files)

    def _set_attrs(self, f) -> None:
        for k, v in self.attrs.items():
            f.attrs[k] = v

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a killed run left behind (never complete results)."""
        stale = list(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        if self.journal.is_dir():
            stale += list(self.journal.glob(".batch_*.tmp"))
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()
        return len(stale)

    def journal_files(self) -> list[Path]:
        if not self.journal.is_dir():
            return []
        return sorted(p for p in self.journal.glob("batch_*.h5"))

    def existing_keys(self) -> set[str]:
        """Pair group keys already in the matches file or the journal."""
        import h5py

        keys: set[str] = set()
        for p in ([self.path] if self.path.exists() else []) + self.journal_files():
            try:
                with h5py.File(p, "r") as f:
                    keys.update(_pair_groups(f))
            except OSError as e:
                if p == self.path:
                    raise InputError(f"{p} is not a readable HDF5 file ({e}); move it away to recompute") from None
                logger.warning("ignoring unreadable journal file %s (%s)", p, e)
        return keys

    def write_batch(self, results: Iterable[tuple[str, str, PairMatches]]) -> Path | None:
        """Write one batch's results as a new journal file (atomic)."""
        import h5py

        results = list(results)
        if not results:
            return None
        self.journal.mkdir(parents=True, exist_ok=True)
        self._count += 1
        name = f"batch_{time.time_ns():020d}_{os.getpid()}_{self._count:06d}.h5"
        require_space(self.path, h5_bytes((a for _, _, m in results for a in (m.keypoints0, m.keypoints1,
                                                                                          m.scores)), len(results)))
        with atomic_path(self.journal / name) as tmp:
            with h5py.File(tmp, "w") as f:
                for n0, n1, m in results:
                    write_raw_matches(f, n0, n1, m.keypoints0, m.keypoints1, m.scores)
                    for k, v in self.pair_attrs.items():
                        f[names_to_pair(n0, n1)].attrs[k] = v
        return self.journal / name

    def merge(self, ensure_exists: bool = True) -> int:
        """Merge the journal into the matches file (new complete copy + atomic replace).

        Returns the number of pair groups merged. With ``ensure_exists`` an empty, valid matches
        file is created when there is none.
        """
        import h5py

        files = self.journal_files() + [p for p in self.adopted if p.exists()]
        self.adopted = []
        if not files:
            if ensure_exists and not self.path.exists():
                with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
                    self._set_attrs(f)
            return 0
        merged, used = 0, []
        require_space(self.path, file_bytes(self.path, *files))  # a complete new copy beside the old one
        with atomic_path(self.path) as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as out:
                self._set_attrs(out)
                for p in files:
                    try:
                        with h5py.File(p, "r") as f:
                            for key in _pair_groups(f):
                                g = f[key]
                                if key in out:
                                    del out[key]
                                dst = out.require_group(key.rsplit("/", 1)[0]) if "/" in key else out
                                f.copy(g, dst, name=key.rsplit("/", 1)[-1])
                                merged += 1
                        used.append(p)
                    except OSError as e:
                        logger.warning("journal file %s is unreadable (%s); moving it aside", p, e)
                        with contextlib.suppress(OSError):
                            p.rename(p.with_suffix(".bad"))
        for p in used:
            with contextlib.suppress(OSError):
                p.unlink()
        for folder in {p.parent for p in used} | {self.journal}:  # the journal, a shards folder: once empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        logger.debug("merged %d pairs from %d journal files into %s", merged, len(used), self.path)
        return merged


# --------------------------------------------------------------------------- core


def _file_digest(path: Path) -> str:
    """A short content digest of a file (blake2b, 128 bits)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _image_stamps(names: Iterable[str], resolve_fn: Callable[[str], Path],
                  recorded: Mapping[str, str] | None = None) -> dict[str, str]:
    """{name: "size:mtime_ns:digest"} of the image files that exist (missing ones are reported when read).

    The content digest is read only where size or modification time differ from ``recorded`` (or the
    record has none): an unchanged folder costs one ``stat`` per image.
    """
    recorded = recorded or {}
    out = {}
    for n in names:
        with contextlib.suppress(OSError, InputError):
            path = Path(resolve_fn(n))
            st = path.stat()
            quick = f"{st.st_size}:{st.st_mtime_ns}"
            old = recorded.get(n, "")
            out[n] = old if old.count(":") == 2 and old.startswith(quick + ":") else f"{quick}:{_file_digest(path)}"
    return out


def _stamp_changed(old: str, new: str) -> bool:
    """Whether an image's content changed between two stamps: size and digest when the old stamp has a digest
    (a copy that lost its modification time is the same photo), else size and modification time."""
    o, n = old.split(":"), new.split(":")
    if len(o) == 3 and len(n) == 3:
        return (o[0], o[2]) != (n[0], n[2])
    return o[:2] != n[:2]


def _recorded_stamps(path: Path) -> dict[str, str]:
    """The ``image_stamps`` attribute of a matches file ({} when absent or unreadable)."""
    import h5py

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with h5py.File(path, "r") as f:
            return dict(json.loads(f.attrs["image_stamps"]))
    return {}


def _resolver(resolve: Callable[[str], Path] | Mapping[str, Path] | str | Path) -> Callable[[str], Path]:
    if isinstance(resolve, Mapping):
        table = {k: Path(v) for k, v in resolve.items()}

        def fn(name: str) -> Path:
            if name not in table:
                raise InputError(f"no path known for image {name!r}")
            return table[name]

        return fn
    if isinstance(resolve, (str, Path)):
        root = Path(resolve)
        return lambda name: root / name
    return lambda name: Path(resolve(name))


def _warn_if_made_differently(path: Path, made_by: Mapping[str, str], num_kept: int) -> None:
    """Warn when the pairs already in ``path`` were matched with another matcher or other options."""
    import h5py

    with h5py.File(path, "r") as f:
        before = {k: f.attrs[k] for k in made_by if k in f.attrs}
    for key, value in before.items():
        value = value.decode() if isinstance(value, bytes) else str(value)
        if value != made_by[key]:
            logger.warning("%s: its %d pairs reused here were matched with %s %s, this run asks for %s; they are kept "
                           "(--overwrite recomputes them, or use another output folder)", path, num_kept, key, value,
                           made_by[key])


def match_pairs(
    pairs: Sequence[tuple[str, str]],
    resolve: Callable[[str], Path] | Mapping[str, Path] | str | Path,
    matches_path: str | Path,
    config: MatchingConfig | Mapping[str, Any] | None = None,
    matcher: MatcherBackend | None = None,
    pair_attrs: Mapping[str, str] | None = None,
) -> MatchingStats:
    """Match ``pairs`` (name0, name1) and add them to the raw matches file ``matches_path``.

    Args:
        pairs: image name pairs; names are keys, ``resolve`` turns them into files (a callable,
            a mapping name -> path, or one folder), so the two images may live in different
            folders (e.g. query and map images).
        matches_path: the h5 file to create or extend (kill-safe, see the module docstring).
        config: :class:`MatchingConfig` (or dict); its backend fields are ignored when ``matcher``
            is given.
        matcher: an already built backend (see :func:`build_backend`) to reuse across calls.
        pair_attrs: attributes written on each of these pairs' groups; the file's own ``matcher_options``
            attribute is then left as it is (e.g. a few pairs matched again with other options).
    Returns:
        :class:`MatchingStats`. Pairs already present are skipped (unless ``config.overwrite``).
    """
    import torch
    from .utils import progress as tqdm  # follows set_progress (-q)

    config = merge_config(MatchingConfig, config)
    t_start = time.perf_counter()
    resolve_fn = _resolver(resolve)
    pairs = [(str(a), str(b)) for a, b in pairs]
    stats = MatchingStats(num_pairs=len(pairs))
    # which backend made the matches (file attribute "matcher"): the keypoints preset and the mapping
    # stage's track refinement read it; "matcher_options" lets a rerun notice changed settings
    made_by = {"matcher": matcher.name if matcher is not None else config.matcher}
    if matcher is None and not pair_attrs:
        made_by["matcher_options"] = json.dumps(backend_options(config), sort_keys=True)
    writer = MatchesWriter(matches_path, made_by, pair_attrs)
    if writer.remove_stale_temporaries():
        logger.info("removed temporary files of an interrupted run beside %s", writer.path)
    writer.merge(ensure_exists=True)  # leftovers of an interrupted run first, and a valid file from now on
    done = set() if config.overwrite else writer.existing_keys()
    # what each image file was when its pairs were matched: a photo replaced under the same name has its pairs
    # matched again (file size and content digest; images never stamped before are taken as they are)
    recorded = _recorded_stamps(writer.path)
    stamps = _image_stamps({n for p in pairs for n in p}, resolve_fn, recorded)
    changed = {n for n, st in stamps.items() if n in recorded and _stamp_changed(recorded[n], st)}
    if changed and done:
        logger.info("%d image(s) changed since their pairs were matched (%s): matching their pairs again",
                    len(changed), ", ".join(sorted(changed)[:5]))
    writer.attrs["image_stamps"] = json.dumps({**recorded, **stamps}, sort_keys=True)
    # images this run could not read (their pairs are never done, so every run checks them again)
    writer.attrs[UNREADABLE_ATTR] = "{}"
    todo = []
    for a, b in pairs:
        if a in changed or b in changed:
            todo.append((a, b))
        elif names_to_pair(a, b) in done or names_to_pair(b, a) in done:
            stats.num_done_before += 1
        else:
            todo.append((a, b))
    if stats.num_done_before:
        logger.info("%d of %d pairs already in %s: skipped", stats.num_done_before, len(pairs), writer.path)
        _warn_if_made_differently(writer.path, made_by, stats.num_done_before)
    if not todo:
        stats.seconds = time.perf_counter() - t_start
        return stats
    require_space(writer.path, 0)  # a full disk fails here, not after the first batch

    if matcher is None:
        if config.executor == "ray":  # workers of a Ray cluster stand in for the backend (loftr_sfm.distributed)
            from .distributed import RayMatchers

            matcher = RayMatchers(config)
        else:
            matcher = build_backend(config)
        writer.attrs["matcher"] = matcher.name
    spec = matcher.spec

    # image headers: sizes for bucketing; unreadable images reported once and their pairs dropped
    names = sorted({n for p in todo for n in p})
    paths, sizes, bad = {}, {}, {}
    for n in names:
        try:
            paths[n] = resolve_fn(n)
            original = image_size(paths[n])
            if min(original) < spec.min_side:
                raise InputError(f"{original[0]}x{original[1]} px is smaller than the {matcher.name} backend's "
                                 f"minimum of {spec.min_side} px per side")
            sizes[n] = spec.resized_size(*original)
        except (ImageReadError, InputError, OSError) as e:
            bad[n] = str(e)
            logger.warning("skipping image %s: %s", n, e)
    kept = [p for p in todo if p[0] not in bad and p[1] not in bad]
    stats.num_failed += len(todo) - len(kept)

    if not matcher.supports_batching:
        batch_size = 1
    else:
        batch_size = config.batch_size if config.batch_size is not None else matcher.default_batch_size
    batches = bucket_batches([(sizes[a], sizes[b]) for a, b in kept], batch_size)
    dataset = _PairDataset(kept, paths, sizes, spec)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=max(int(config.num_workers), 0),
        collate_fn=_collate,
        worker_init_fn=_worker_init if config.num_workers > 0 else None,
        pin_memory=str(matcher.device).startswith("cuda"),
    )
    device = str(matcher.device)
    use_amp = bool(config.mixed_precision) and device.startswith("cuda")
    remote = getattr(matcher, "runs_remotely", False)
    last_merge = time.monotonic()
    try:
        if remote:  # the batches, cut into shards, are matched on the cluster
            matcher.run(kept, batches, batch_size, paths, stamps, writer, stats, bad)
        else:
            with tqdm(total=len(kept), unit="pair", desc=f"matching ({matcher.name})", smoothing=0.1) as bar:
                for batch in loader:
                    for n0, n1, bad_name, err in batch["errors"]:
                        stats.num_failed += 1
                        if bad_name not in bad:
                            bad[bad_name] = err
                            logger.warning("skipping image %s: %s", bad_name, err)
                    if batch["names0"]:
                        amp = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
                        with amp:
                            results = matcher.match(
                                batch["image0"], batch["image1"], batch["size0"], batch["size1"],
                                names0=batch["names0"], names1=batch["names1"],
                            )  # fmt: skip
                        if len(results) != len(batch["names0"]):
                            raise RuntimeError(
                                f"matcher {matcher.name} returned {len(results)} results for {len(batch['names0'])} pairs"
                            )
                        writer.write_batch(zip(batch["names0"], batch["names1"], results))
                        stats.num_matched += len(results)
                        stats.num_matches += int(sum(len(r.scores) for r in results))
                    bar.update(len(batch["names0"]) + len(batch["errors"]))
                    if time.monotonic() - last_merge > config.merge_interval:
                        writer.merge()
                        last_merge = time.monotonic()
    finally:
        writer.attrs[UNREADABLE_ATTR] = json.dumps(bad, sort_keys=True)
        writer.merge()
        if remote:
            matcher.close()
    stats.failed_images = sorted(bad)
    if bad:
        logger.warning("%d unreadable image(s) skipped (%d pairs): %s", len(bad), stats.num_failed, ", ".join(sorted(bad)[:10]))
    stats.seconds = time.perf_counter() - t_start
    logger.info(
        "matched %d pairs (%d matches, %.1f per pair) in %.1f s -> %s",
        stats.num_matched,
        stats.num_matches,
        stats.num_matches / max(stats.num_matched, 1),
        stats.seconds,
        writer.path,
    )
    return stats


def run_matching(output: Path, images: Path, config: MatchingConfig | Mapping[str, Any] | None = None) -> Path:
    """Stage ``match``: ``output/pairs.txt`` + images -> ``output/matches.h5``; returns its path.

    Raises :class:`~loftr_sfm.io.InputError` if the pairs file is missing or names images that
    are not in ``images``.
    """
    output, images = Path(output), Path(images)
    config = merge_config(MatchingConfig, config)
    pairs = read_pairs(output / PAIRS_FILE, known_names=list_images(images))
    matches_path = output / MATCHES_FILE
    match_pairs(pairs, images, matches_path, config)
    return matches_path


__all__ = [
    "MATCHES_FILE",
    "MatchesWriter",
    "MatchingConfig",
    "MatchingStats",
    "backend_options",
    "bucket_batches",
    "build_backend",
    "load_image_tensor",
    "match_pairs",
    "run_matching",
]
