"""The map side of localization: per-image keypoints with 3D points, their loading from
``model/`` + ``features.h5``, the matcher the map was built with, and global-descriptor retrieval
against the map images."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageReadError, InputError
from .config import INVALID_POINT3D

logger = logging.getLogger(__package__)  # one logger for the stage: loftr_sfm.localization


@dataclass
class MapImage:
    """Map-side data of one registered image, built once.

    keypoints: (M, 2) float64 keypoints with a 3D point, OpenCV convention (original pixels).
    point3D_ids: (M,) int64 their 3D point ids.
    """

    name: str
    image_id: int
    keypoints: np.ndarray
    point3D_ids: np.ndarray
    free_keypoints: np.ndarray | None = None  # (F, 2) keypoints WITHOUT a 3D point (registration)
    free_indices: np.ndarray | None = None  # (F,) their points2D indices in the model
    _tree: Any = None
    _free_tree: Any = None

    @property
    def tree(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.keypoints if len(self.keypoints) else np.zeros((0, 2)))
        return self._tree

    @property
    def free_tree(self):
        if self._free_tree is None:
            from scipy.spatial import cKDTree

            kp = self.free_keypoints if self.free_keypoints is not None else np.zeros((0, 2))
            self._free_tree = cKDTree(kp if len(kp) else np.zeros((0, 2)))
        return self._free_tree



def map_matcher(map_dir: Path) -> str | None:
    """The matcher the map was built with, from ``map_dir/summary.json`` when it records it."""
    path = Path(map_dir) / "summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("matcher",):
        if isinstance(data.get(key), str):
            return data[key]
    cfg = data.get("config") or {}
    for sub in (cfg, cfg.get("matching") or {}):
        if isinstance(sub, dict) and isinstance(sub.get("matcher"), str):
            return sub["matcher"]
    return None


def load_map_images(reconstruction, features: Path, keep_free: bool) -> dict[str, MapImage]:
    """Keypoints with a 3D point of every registered image (features.h5 + model ids).

    Args:
        reconstruction: the map's ``pycolmap.Reconstruction``.
        features: the map's ``features.h5``; an image whose keypoints there differ from the
            model's ``points2D`` (COLMAP convention, -0.5) uses the model's, with a warning.
        keep_free: also keep the keypoints without a 3D point (registration).
    Returns:
        {image name: :class:`MapImage`} of the posed images with at least one 3D point.
    """
    import h5py

    out: dict[str, MapImage] = {}
    mismatched = []
    try:
        f = h5py.File(features, "r")
    except OSError as e:
        raise InputError(f"{features}: not a readable HDF5 file ({e})") from None
    with f:
        for image_id, img in reconstruction.images.items():
            if not img.has_pose:
                continue
            pts = img.points2D
            ids = np.fromiter((p.point3D_id for p in pts), np.uint64, count=len(pts))
            has = ids != INVALID_POINT3D
            if not has.any():
                continue
            kp = None
            if img.name in f and "keypoints" in f[img.name]:
                kp = np.asarray(f[img.name]["keypoints"], np.float64).reshape(-1, 2)
                if len(kp) != len(pts):
                    kp = None
            if kp is not None:
                sel = np.flatnonzero(has)[:20]
                xy = np.array([pts[int(i)].xy for i in sel]) - 0.5
                if not np.allclose(kp[sel], xy, atol=1e-2):
                    kp = None
            if kp is None:
                mismatched.append(img.name)
                kp = np.array([p.xy for p in pts], np.float64).reshape(-1, 2) - 0.5
            out[img.name] = MapImage(
                img.name,
                int(image_id),
                kp[has],
                ids[has].astype(np.int64),
                free_keypoints=kp[~has] if keep_free else None,
                free_indices=np.flatnonzero(~has) if keep_free else None,
            )
    if mismatched:
        logger.warning(
            "%d map image(s) have keypoints in %s that differ from the model's points2D (using the model's): %s",
            len(mismatched),
            features,
            ", ".join(mismatched[:5]),
        )
    return out


class MapRetriever:
    """Global-descriptor retrieval against the map images, with :mod:`loftr_sfm.retrieval`.

    The map images' descriptors are those of the pairs stage (``map_dir/global_features.h5``,
    vocabulary ``map_dir/global_vocabulary.npz``); when the map was built without retrieval
    they are computed once and saved there. Descriptors are loaded once; each query is encoded
    in the map's space (same vocabulary) and ranked by cosine similarity.
    """

    def __init__(self, map_dir: Path, map_images: Path, names: Sequence[str], descriptor: str | None = None):
        from .. import retrieval as rt

        self.map_dir = Path(map_dir)
        if descriptor is None:
            descriptor = "vlad-sift"
            if (self.map_dir / rt.GLOBAL_FEATURES_FILE).is_file() and not (self.map_dir / rt.VOCABULARY_FILE).is_file():
                descriptor = "dinov2"  # the only descriptor without a vocabulary file
        self.config = rt.RetrievalConfig(descriptor=descriptor, num_workers=0)
        path = self.map_dir / rt.GLOBAL_FEATURES_FILE
        have = rt._existing_names(path) if path.is_file() else set()
        missing = [n for n in names if n not in have]
        if missing:
            logger.info("computing global descriptors (%s) of %d map image(s) into %s", descriptor, len(missing), path)
            # in-process decoding: forked DataLoader workers were seen to deadlock here after the
            # (multi-threaded) pycolmap stages ran in the same process
            rt.compute_global_descriptors(list(names), Path(map_images), self.map_dir, self.config)
        have = rt._existing_names(path)
        self.names = [n for n in names if n in have]
        if len(self.names) < len(names):
            logger.warning("%d map image(s) have no global descriptor (unreadable?): never retrieved", len(names) - len(self.names))
        _, self.desc = rt.load_descriptors(path, self.names)

    def query(self, query_path: Path, k: int) -> list[str]:
        """Map image names, best first (at most ``k``). Raises ImageReadError if unreadable."""
        from .. import retrieval as rt

        ok, qd = rt.encode_images(["query"], {"query": Path(query_path)}, self.map_dir, self.config)
        if not ok:
            raise ImageReadError(f"{query_path}: could not be read for retrieval")
        pairs = rt.topk_pairs(["query"], qd, self.names, self.desc, k, exclude_self=False)
        return [b for _, b in pairs]

