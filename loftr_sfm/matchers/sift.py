"""``sift``: OpenCV SIFT (RootSIFT descriptors) with mutual nearest neighbour + Lowe's ratio test.

The baseline users compare against. Per-image features are cached by image name (small LRU), so
each image is described once per run even though it appears in many pairs. Runs on the CPU
(OpenCV); the device argument is ignored.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import InputSpec, MatcherBackend, PairMatches, empty_matches, to_original_pixels

logger = logging.getLogger(__name__)


OPENCV_SIFT_OFFSET = 0.25  # px, in x and y, added by OpenCV's first-octave upsampling (see extract_rootsift)


@dataclass
class SiftOptions:
    max_side: int | None = 1600  # resize so that the longer side is at most this (None: full size)
    max_keypoints: int = 4096  # strongest SIFT keypoints kept per image
    ratio: float = 0.85  # Lowe's ratio test threshold on descriptor distances (1 disables)
    mutual: bool = True  # keep only mutual nearest neighbours
    contrast_threshold: float = 0.02  # OpenCV SIFT contrastThreshold (lower -> more keypoints)
    cache_size: int = 128  # images whose features are kept in memory


def _as_uint8_gray(img: Any) -> np.ndarray:
    """(C, H, W) float tensor/array in [0, 1] -> (H, W) uint8."""
    arr = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=0) if arr.shape[0] > 1 else arr[0]
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def extract_rootsift(gray: np.ndarray, max_keypoints: int, contrast_threshold: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints and RootSIFT descriptors of a uint8 (H, W) image.

    Returns:
        keypoints (N, 2) float32 pixels of ``gray`` (OpenCV convention), descriptors (N, 128)
        float32, L2-normalised (RootSIFT: L1-normalise, sqrt, so L2 norm is 1).

    OpenCV doubles the image for its first octave by pixel-centre-aligned bilinear interpolation
    but maps a doubled pixel ``k`` back to ``k / 2`` instead of ``k / 2 - 0.25``, so its
    keypoints sit 0.25 px right of and below the feature in both axes (opencv/opencv#23123;
    detecting on an image and on its mirror shows it). The 0.25 px are subtracted. Uncorrected,
    the offset acts like a principal point 0.35 px off and costs rotation accuracy against exact
    GT (pipelines/evaluate_synthetic.py).
    """
    import cv2

    sift = cv2.SIFT_create(nfeatures=int(max_keypoints), contrastThreshold=float(contrast_threshold))
    kps, desc = sift.detectAndCompute(gray, None)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    if len(kps) > max_keypoints:  # OpenCV may return a few more (equal responses)
        order = np.argsort([-k.response for k in kps], kind="stable")[:max_keypoints]
        kps = [kps[i] for i in order]
        desc = desc[order]
    xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2) - OPENCV_SIFT_OFFSET
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-8)
    desc = np.sqrt(desc)
    return xy, desc


def mutual_ratio_match(
    desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.85, mutual: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour matching of L2-normalised descriptors (N0, D), (N1, D).

    Returns:
        idx0 (M,), idx1 (M,) int64 indices and scores (M,) float32 = 1 - d1/d2 (distance ratio
        of best to second best; 1 when image1 has a single descriptor).
    """
    import torch

    if len(desc0) == 0 or len(desc1) == 0:
        z = np.zeros((0,), np.int64)
        return z, z, np.zeros((0,), np.float32)
    d0 = torch.from_numpy(np.ascontiguousarray(desc0))
    d1 = torch.from_numpy(np.ascontiguousarray(desc1))
    sim = d0 @ d1.T  # (N0, N1)
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * sim, min=0.0))
    k = min(2, dist.shape[1])
    best, nn01 = torch.topk(dist, k, dim=1, largest=False)
    if k == 2:
        r = best[:, 0] / torch.clamp(best[:, 1], min=1e-8)
    else:
        r = torch.zeros(len(best))
    keep = r <= ratio
    if mutual:
        nn10 = torch.argmin(dist, dim=0)
        keep &= nn10[nn01[:, 0]] == torch.arange(len(d0))
    idx0 = torch.nonzero(keep).squeeze(1)
    idx1 = nn01[idx0, 0]
    return idx0.numpy(), idx1.numpy(), (1.0 - r[idx0]).numpy().astype(np.float32)


class SiftMatcher(MatcherBackend):
    """OpenCV RootSIFT + mutual NN + ratio test. Input: gray, longer side <= ``max_side``."""

    name = "sift"
    Options = SiftOptions
    supports_batching = False

    def __init__(self, options: SiftOptions | None = None, device: str = "cpu") -> None:
        super().__init__(device="cpu")
        self.options = options or SiftOptions()
        self.spec = InputSpec(grayscale=True, max_side=self.options.max_side, multiple=1)
        self._cache: OrderedDict[tuple[str, tuple[int, int]], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _features(self, img: Any, name: str | None) -> tuple[np.ndarray, np.ndarray]:
        shape = tuple(int(s) for s in img.shape[-2:])
        key = (name, shape) if name is not None else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        feats = extract_rootsift(_as_uint8_gray(img), self.options.max_keypoints, self.options.contrast_threshold)
        if key is not None and self.options.cache_size > 0:
            self._cache[key] = feats
            while len(self._cache) > self.options.cache_size:
                self._cache.popitem(last=False)
        return feats

    def match(self, image0, image1, size0, size1, names0: Sequence[str] | None = None, names1: Sequence[str] | None = None):
        out: list[PairMatches] = []
        for b in range(len(image0)):
            k0, d0 = self._features(image0[b], names0[b] if names0 is not None else None)
            k1, d1 = self._features(image1[b], names1[b] if names1 is not None else None)
            i0, i1, sc = mutual_ratio_match(d0, d1, self.options.ratio, self.options.mutual)
            if len(i0) == 0:
                out.append(empty_matches())
                continue
            in0 = (image0[b].shape[-1], image0[b].shape[-2])
            in1 = (image1[b].shape[-1], image1[b].shape[-2])
            out.append(
                PairMatches(
                    to_original_pixels(k0[i0], in0, [int(v) for v in size0[b]]),
                    to_original_pixels(k1[i1], in1, [int(v) for v in size1[b]]),
                    sc,
                )
            )
        return out
