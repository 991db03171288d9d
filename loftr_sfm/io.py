"""Input/output shared by every stage: images, ``pairs.txt``, HDF5 layouts, atomic writes.

Coordinate convention of every HDF5 file written by loftr_sfm: pixel coordinates in the
*original* image (after EXIF orientation is applied), OpenCV convention (integer = pixel
centre, the top-left pixel centre is (0, 0)). The +0.5 shift to COLMAP's convention happens in
:mod:`loftr_sfm.database` and :mod:`loftr_sfm.localization` only.

HDF5 layouts (hloc-compatible):

* ``matches.h5`` raw, one group per pair ``names_to_pair(name0, name1)``:
  ``keypoints0`` (N, 2) float32, ``keypoints1`` (N, 2) float32, ``scores`` (N,) float32.
  It is never edited after matching; the keypoints stage writes ``merged_matches.h5`` with the same
  group per pair holding ``matches0`` (K0,) int32 (index into image1's merged keypoints, or -1)
  and ``matching_scores0`` (K0,) float32.
* ``features.h5``, one group per image name: ``keypoints`` (K, 2) float32, ``scores`` (K,)
  float32, ``image_size`` (2,) int (width, height).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
# photo formats that are not read (HEIC/HEIF, AVIF, camera RAW): listed once in a warning, never skipped silently
UNREAD_PHOTO_EXTENSIONS = (".heic", ".heif", ".avif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")
_warned_unread: set[str] = set()
# attributes of the stage files naming images left out, JSON {name: reason}: matches.h5 (the images the matching
# stage could not read) and features.h5 (every image the keypoints stage left out); later stages leave them out too
UNREADABLE_ATTR = "unreadable_images"


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


class InputError(ValueError):
    """Bad user input (missing file, malformed pairs file, unknown image...)."""


class DiskFullError(InputError):
    """The file system of a stage's output has no room for what the stage writes; finished files are untouched."""


# --------------------------------------------------------------------------- images


def list_images(root: str | Path, recursive: bool = True) -> list[str]:
    """Image names below ``root`` as sorted POSIX paths relative to ``root``.

    Raises :class:`InputError` if ``root`` is not a directory or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    files = [p for p in (root.rglob("*") if recursive else root.glob("*"))
             if p.is_file() and not p.name.startswith(".")]
    names = sorted(p.relative_to(root).as_posix() for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
    unread = sorted(p.relative_to(root).as_posix() for p in files if p.suffix.lower() in UNREAD_PHOTO_EXTENSIONS)
    if unread and str(root) not in _warned_unread:
        _warned_unread.add(str(root))
        logger.warning("%d photo(s) in %s are in a format this library does not read (HEIC, AVIF, camera RAW) and are "
                       "left out; convert them to JPEG or PNG: %s", len(unread), root, ", ".join(unread[:10]))
    if not names:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return names


def _open_pil(path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise ImageReadError(f"{path}: file does not exist")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: corrupt or truncated image ({e})") from None
    try:
        img = ImageOps.exif_transpose(img)  # apply the EXIF orientation tag
    except Exception as e:  # malformed EXIF: keep the pixels as stored
        logger.warning("%s: ignoring malformed EXIF orientation (%s)", path, e)
    return img


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as uint8, EXIF orientation applied.

    Conversions (documented, never silent failures):
    16-bit and 32-bit integer / float images are scaled to 0..255 by their type's range
    (``I;16``: /257; float: clipped to [0, 1] then x255); RGBA / LA are composited on black
    (alpha dropped); palette, CMYK, YCbCr and 1-bit images are converted to RGB.

    Returns:
        (H, W) uint8 if ``grayscale`` else (H, W, 3) uint8 RGB.
    Raises:
        ImageReadError: naming the file, if it is missing, unreadable or corrupt.
    """
    path = Path(path)
    img = _open_pil(path)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr = np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0
        elif mode == "I" and arr.max(initial=0) > 65535:
            arr = arr.astype(np.float64) / float(2**32 - 1) * 255.0
        else:
            arr = arr.astype(np.float32) / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return gray if grayscale else np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        from PIL import Image

        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("L" if grayscale else "RGB")
    arr = np.asarray(img)
    if arr.size == 0:
        raise ImageReadError(f"{path}: image is empty ({img.size[0]}x{img.size[1]})")
    return np.ascontiguousarray(arr)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image after EXIF orientation, read from the header only."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file does not exist")
    try:
        with Image.open(path) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# --------------------------------------------------------------------------- pairs


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's HDF5 group name of a pair: '/' inside a name becomes '-'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def find_pair(h5, name0: str, name1: str) -> tuple[str, bool]:
    """Group name of a pair in an open h5 file and whether it is stored as (name1, name0).

    Accepts hloc's current layout and its older ``_``-separated one.
    Raises KeyError naming the pair if it is absent.
    """
    for sep in ("/", "_"):
        key = names_to_pair(name0, name1, sep)
        if key in h5:
            return key, False
        key = names_to_pair(name1, name0, sep)
        if key in h5:
            return key, True
    raise KeyError(f"pair ({name0}, {name1}) not found in {getattr(h5, 'filename', 'h5 file')}")


def normalize_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self-pairs and duplicates (in either order); keep first-seen order and orientation."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for a, b in pairs:
        if a == b:
            continue
        key = (a, b) if a < b else (b, a)
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out


def read_pairs(path: str | Path, known_names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Read ``pairs.txt`` ("name0 name1" per line; blank lines and '#' comments skipped).

    Self-pairs and duplicates are dropped. With ``known_names``, a pair naming an unknown
    image raises :class:`InputError` listing the first unknown names.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:  # names with spaces are quoted (write_pairs); plain lines are hloc's
            parts = shlex.split(line) if ("'" in line or '"' in line) else line.split()
        except ValueError as e:
            raise InputError(f"{path}:{lineno}: {e} in {line!r}") from None
        if len(parts) < 2:
            raise InputError(f"{path}:{lineno}: expected 'name0 name1', got {line!r}")
        pairs.append((parts[0], parts[1]))
    pairs = normalize_pairs(pairs)
    check_pair_keys({n for p in pairs for n in p}, path)
    if known_names is not None:
        known = set(known_names)
        unknown = sorted({n for p in pairs for n in p if n not in known})
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(f"{path} names {len(unknown)} image(s) that are not in the image folder: {shown}")
    return pairs


def _pair_name(name: str) -> str:
    """A name as written in ``pairs.txt``: as it is (hloc's format), quoted when plain words would not read it
    back (spaces, quotes, backslashes, a leading '#')."""
    return shlex.quote(name) if name.startswith("#") or any(c.isspace() or c in "'\"\\" for c in name) else name


def check_pair_keys(names: Iterable[str], where: str | Path = "pairs") -> None:
    """Refuse image names whose hloc HDF5 keys collide (``a/0001.jpg`` and ``a-0001.jpg``: '/' becomes '-').

    Raises InputError listing the colliding names before any work is done with them.
    """
    by_key: dict[str, list[str]] = {}
    for n in names:
        by_key.setdefault(n.replace("/", "-"), []).append(n)
    clashes = [sorted(v) for v in by_key.values() if len(v) > 1]
    if clashes:
        shown = "; ".join(" and ".join(c) for c in sorted(clashes)[:5])
        raise InputError(f"{where}: image names that share an HDF5 key once '/' becomes '-' (hloc's layout): "
                         f"{shown}; rename one of each")


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> None:
    """Write ``pairs.txt`` atomically; an identical existing file is left untouched.

    Names with spaces or quotes are quoted (shell style, read back by :func:`read_pairs`).

    Leaving it untouched keeps its modification time, which the later stages use to decide
    that their results are up to date (rerunning ``pairs`` must not make them recompute).
    """
    pairs = list(pairs)
    check_pair_keys({n for p in pairs for n in p}, path)
    text = "".join(f"{_pair_name(a)} {_pair_name(b)}\n" for a, b in pairs)
    path = Path(path)
    try:
        if path.is_file() and path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass  # unreadable: rewrite it
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


# --------------------------------------------------------------------------- free space

#: bytes a stage leaves free beyond its estimated output (SQLite journals, logs, temporaries). HDF5 (h5py) and
#: COLMAP's writers do not fail cleanly on a full disk (a segmentation fault, an abort, a silently truncated file),
#: so every stage checks the free space for what it is about to write before it writes.
SPACE_RESERVE = 16 * 2**20


def _free_bytes(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` reports a full disk or an exhausted quota (an OSError, or HDF5's and SQLite's own errors)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(t in text for t in ("errno = 28", "No space left on device", "database or disk is full",
                                   "Disk quota exceeded"))


def disk_full_error(path: str | Path, need: int | None = None) -> DiskFullError:
    """The one message of a full disk: the path, the free and the needed space, what to do."""
    free = _free_bytes(Path(path))
    needed = f", about {_megabytes(need + SPACE_RESERVE)} needed" if need is not None else ""
    return DiskFullError(f"no space left for {path}: {_megabytes(free)} free on its device{needed}; free some space "
                         "(or choose another output folder) and run the same command again: finished stages are kept")


def low_space(path: str | Path) -> bool:
    """Whether the file system of ``path`` has less than :data:`SPACE_RESERVE` free."""
    return _free_bytes(Path(path)) < SPACE_RESERVE


def write_failure(path: str | Path, e: BaseException) -> InputError:
    """The error of a failed write of ``path`` by a writer that does not say why (COLMAP's): a full disk when the
    device is (nearly) full, else the writer's own message."""
    if is_disk_full(e) or low_space(path):
        return disk_full_error(path)
    return InputError(f"cannot write {path}: {e}")


def require_space(path: str | Path, need: int) -> None:
    """Raise :class:`DiskFullError` naming ``path`` unless its file system has ``need`` + :data:`SPACE_RESERVE`
    bytes free (``path`` may not exist yet: its nearest existing parent is asked)."""
    if _free_bytes(Path(path)) < need + SPACE_RESERVE:
        raise disk_full_error(path, need)


def h5_bytes(arrays: Iterable[np.ndarray], groups: int = 0) -> int:
    """An upper estimate of the HDF5 file holding ``arrays`` in ``groups`` groups (data + object headers)."""
    return sum(int(a.nbytes) + 1024 for a in arrays) + 2048 * groups + 65536


def file_bytes(*paths: str | Path) -> int:
    """Total size of the files among ``paths`` that exist."""
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched; a full disk is raised as
    :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path) from e
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)  # mkstemp creates 0600 files: give the result the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except Exception as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- h5 layouts


def write_raw_matches(h5, name0: str, name1: str, kpts0: np.ndarray, kpts1: np.ndarray, scores: np.ndarray) -> None:
    """Write one pair's raw matches (hloc dense layout) into an open, writable h5 file.

    Args:
        kpts0, kpts1: (N, 2) original-image pixels, OpenCV convention.
        scores: (N,).
    """
    key = names_to_pair(name0, name1)
    if key in h5:
        del h5[key]
    g = h5.create_group(key)
    g.create_dataset("keypoints0", data=np.asarray(kpts0, np.float32).reshape(-1, 2))
    g.create_dataset("keypoints1", data=np.asarray(kpts1, np.float32).reshape(-1, 2))
    g.create_dataset("scores", data=np.asarray(scores, np.float32).reshape(-1))


def read_raw_group(group, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one raw pair group as stored (no re-orientation), validating the layout.

    Returns:
        kpts0 (N, 2) float32, kpts1 (N, 2) float32, scores (N,) float32 (ones if absent).
    Raises:
        InputError naming ``where`` (file and pair) if a dataset is missing or lengths differ.
    """
    where = where or getattr(group, "name", "pair group")
    for ds in ("keypoints0", "keypoints1"):
        if ds not in group:
            raise InputError(f"{where}: no dataset {ds!r} (raw layout expected)")
    k0 = np.asarray(group["keypoints0"], np.float32).reshape(-1, 2)
    k1 = np.asarray(group["keypoints1"], np.float32).reshape(-1, 2)
    sc = np.asarray(group["scores"], np.float32).reshape(-1) if "scores" in group else np.ones(len(k0), np.float32)
    if len(k0) != len(k1) or len(sc) != len(k0):
        raise InputError(
            f"{where}: inconsistent lengths (keypoints0 {len(k0)}, keypoints1 {len(k1)}, scores {len(sc)})"
        )
    return k0, k1, sc


def read_raw_matches(h5, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one pair's raw matches, oriented as (name0, name1) whatever the stored order.

    Returns:
        kpts0 (N, 2) float32, kpts1 (N, 2) float32, scores (N,) float32.
    """
    key, rev = find_pair(h5, name0, name1)
    k0, k1, sc = read_raw_group(h5[key], f"{getattr(h5, 'filename', 'h5')}: pair {key}")
    return (k1, k0, sc) if rev else (k0, k1, sc)


def matches_backend(output: str | Path) -> str | None:
    """The matcher backend behind ``output``'s matches (``eloftr``, ``xfeat-star``, ``sift``...), or None.

    The ``matcher`` attribute of ``matches.h5`` (written by the matching stage), else the keypoints
    preset ``features.h5`` was merged with (raw matches brought from elsewhere), else unknown. Stages
    with matcher-dependent defaults treat unknown as semi-dense, as the keypoints preset ``auto`` does.
    """
    import h5py

    output = Path(output)
    with contextlib.suppress(OSError, KeyError, ValueError, TypeError):
        with h5py.File(output / "matches.h5", "r") as f:
            matcher = f.attrs.get("matcher")
        if matcher is not None:
            return matcher.decode() if isinstance(matcher, bytes) else str(matcher)
    with contextlib.suppress(OSError, KeyError, ValueError, TypeError):
        with h5py.File(output / "features.h5", "r") as f:
            preset = json.loads(f.attrs["loftr_sfm_config"]).get("preset")
        return preset if preset != "auto" else None
    return None
