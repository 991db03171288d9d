"""Convenience API: match two image files with EfficientLoFTR in one call, draw the result.

>>> from loftr_sfm import match_pair
>>> res = match_pair("a.jpg", "b.jpg", weights="eloftr_outdoor.ckpt", max_side=1024)
>>> res["keypoints0"].shape, res["keypoints1"].shape, res["scores"].shape   # (M, 2), (M, 2), (M,)

Keypoints are float32 x, y in ORIGINAL-image pixels (after EXIF orientation), OpenCV convention
(integer = pixel centre), sub-pixel. The loaded model is cached (a few entries, keyed by weights,
device and config overrides), so repeated calls do not reload the weights.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from loftr_sfm.model.processing import EfficientLoFTRImageProcessor
from loftr_sfm.utils import Timer, resolve_device

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "zju-community/efficientloftr"
DEFAULT_MAX_SIDE = 1024
_CACHE_SIZE = 2
_MODEL_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()


def _cache_key(weights: Any, device: str, overrides: dict[str, Any]) -> tuple:
    w = weights
    if isinstance(weights, (str, os.PathLike)):
        p = Path(weights).expanduser()
        if p.exists():
            st = p.stat()
            w = (str(p.resolve()), st.st_mtime_ns, st.st_size)
        else:
            w = str(weights)
    return (w, device, tuple(sorted((k, repr(v)) for k, v in overrides.items())))


def load_model(weights: str | os.PathLike = DEFAULT_WEIGHTS, device: str = "auto", **config_overrides: Any) -> Any:
    """The re-parameterized matcher for ``weights`` on ``device``, loaded once and cached.

    ``weights``: anything :func:`loftr_sfm.model.weights.from_pretrained` accepts (original
    ``.ckpt``, Transformers folder, ``.safetensors``, hub id).
    """
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    dev = resolve_device(device)
    key = _cache_key(weights, dev, config_overrides)
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = EfficientLoFTRForKeypointMatching.from_pretrained(weights, device=dev, **config_overrides)
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    else:
        _MODEL_CACHE.move_to_end(key)
    return model


def clear_model_cache() -> None:
    """Drop the cached models (frees their memory)."""
    _MODEL_CACHE.clear()


def match_pair(path0: str | os.PathLike | Any, path1: str | os.PathLike | Any, weights: str | os.PathLike = DEFAULT_WEIGHTS, *,
               max_side: int | None = DEFAULT_MAX_SIDE, threshold: float | None = None, device: str = "auto",
               model: Any = None, processor: EfficientLoFTRImageProcessor | None = None) -> dict[str, Any]:
    """Match two images with EfficientLoFTR.

    Args:
        path0, path1: image paths (read with :func:`loftr_sfm.io.read_image`: EXIF orientation,
            16-bit, RGBA, palette handled), or PIL images / arrays.
        weights: weights to load (ignored when ``model`` is given). Default: the hub id
            ``zju-community/efficientloftr`` (needs hub access; else pass a local file).
        max_side: long side of the network input (aspect preserved, sides rounded to
            multiples of 32, no upscaling). ``None``: the ``processor``'s own settings if one is
            given (e.g. Transformers' fixed 480x640 with ``EfficientLoFTRImageProcessor()``),
            else the default 1024.
        threshold: coarse confidence threshold (``None``: the model config's, 0.2 for the full
            model). Every match above it is returned.
        device: "auto", "cpu", "cuda", ...
        model: an already loaded ``EfficientLoFTRForKeypointMatching`` (skips loading).
        processor: a custom :class:`EfficientLoFTRImageProcessor` (``max_side`` still applies
            if given).
    Returns:
        dict with ``keypoints0`` (M, 2) float32 and ``keypoints1`` (M, 2) float32 in original
        pixels, ``scores`` (M,) float32 (coarse confidence; also under Transformers' name
        ``matching_scores``), ``image_size0`` / ``image_size1``
        (width, height) of the originals, ``input_size0`` / ``input_size1`` (width, height) fed
        to the network, and ``seconds`` (wall time of the forward pass).
    Raises:
        ImageReadError / InputError: unreadable or too small images (message names the file);
        CheckpointError: weights that cannot be loaded.
    """
    import torch

    if model is None:
        model = load_model(weights, device)
    if processor is None:
        proc = EfficientLoFTRImageProcessor()
        max_side = DEFAULT_MAX_SIDE if max_side is None else max_side
    else:
        proc = processor
    batch = proc.preprocess([path0, path1], max_side=max_side)
    dev = next(model.parameters()).device
    inputs = {k: v.to(dev) for k, v in batch.model_inputs().items()}
    with torch.inference_mode(), Timer() as t:
        out = model(**inputs, threshold=threshold)
    res = proc.post_process_keypoint_matching(out, batch.original_sizes, threshold=None)[0]
    osz, psz = batch.original_sizes[0].tolist(), batch.processed_sizes[0].tolist()
    scores = res["matching_scores"].cpu().numpy().astype(np.float32)
    result = {
        "keypoints0": res["keypoints0"].cpu().numpy().astype(np.float32),
        "keypoints1": res["keypoints1"].cpu().numpy().astype(np.float32),
        "scores": scores,
        "matching_scores": scores,  # same array, Transformers' name
        "image_size0": (int(osz[0][1]), int(osz[0][0])),
        "image_size1": (int(osz[1][1]), int(osz[1][0])),
        "input_size0": (int(psz[0][1]), int(psz[0][0])),
        "input_size1": (int(psz[1][1]), int(psz[1][0])),
        "seconds": t.seconds,
    }
    logger.info("matched %s - %s: %d matches in %.2f s (inputs %s, %s)", path0 if isinstance(path0, (str, Path)) else "image0",
                path1 if isinstance(path1, (str, Path)) else "image1", len(result["scores"]), t.seconds,
                result["input_size0"], result["input_size1"])
    return result


def visualize(path0: str | os.PathLike | Any, path1: str | os.PathLike | Any, result: dict[str, Any],
              out_path: str | os.PathLike, *, max_matches: int | None = None) -> Path:
    """Write a PNG with the two images side by side and the matches of ``result`` (from
    :func:`match_pair`) as lines coloured by score (red = low, green = high).

    ``max_matches`` keeps the best-scored matches only (for readability). Written atomically.
    """
    from loftr_sfm.io import atomic_path

    k0, k1 = np.asarray(result["keypoints0"]), np.asarray(result["keypoints1"])
    sc = np.asarray(result["scores"] if "scores" in result else result["matching_scores"])
    if max_matches is not None and len(sc) > max_matches:
        keep = np.argsort(-sc, kind="stable")[:max_matches]
        k0, k1, sc = k0[keep], k1[keep], sc[keep]
    proc = EfficientLoFTRImageProcessor()
    (img,) = proc.visualize_keypoint_matching([path0, path1], [{"keypoints0": k0, "keypoints1": k1, "matching_scores": sc}])
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        img.save(tmp, format="PNG")
    logger.info("wrote %s (%d matches)", out_path, len(sc))
    return out_path


visualize_pair = visualize  # name used by ``loftr-sfm match-pair --out``
