"""Transformers' keypoint-matching pipeline, for EfficientLoFTR: ``loftr_sfm.pipeline``.

The seed's example runs with the import changed only::

    from loftr_sfm import pipeline
    keypoint_matcher = pipeline(task="keypoint-matching", model="zju-community/efficientloftr")
    results = keypoint_matcher([url_0, url_1], threshold=0.9)
    print(results[0])
    # {'keypoint_image_0': {'x': ..., 'y': ...}, 'keypoint_image_1': {'x': ..., 'y': ...}, 'score': ...}

Output format (Transformers' ``KeypointMatchingPipeline``): one pair -> a list of matches; a list
of pairs -> one such list per pair. A match is ``{"keypoint_image_0": {"x", "y"},
"keypoint_image_1": {"x", "y"}, "score"}`` (Python floats), the list sorted by score, best first.
Coordinates are ORIGINAL-image pixels (after the EXIF orientation of files and URLs), OpenCV
convention (integer = pixel centre), sub-pixel floats; Transformers' post-processing truncates
them to integers and its pipeline passes (width, height) where (height, width) is expected
(x and y scaled by the wrong side on non-square images): neither happens here.

``threshold`` (default 0.0, like Transformers) keeps matches whose score is above it, among the
matches the model returns (its own coarse threshold, 0.2 for the released model, still applies;
lower it with ``model_kwargs={"coarse_matching_threshold": 0.1}``).
"""

from __future__ import annotations

import io
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from loftr_sfm.io import ImageReadError, InputError

logger = logging.getLogger(__name__)

SUPPORTED_TASKS = ("keypoint-matching",)
DEFAULT_MODEL = "zju-community/efficientloftr"
DEFAULT_TIMEOUT = 30.0  # seconds per URL (Transformers waits forever by default)


class Keypoint(TypedDict):
    x: float
    y: float


class Match(TypedDict):
    keypoint_image_0: Keypoint
    keypoint_image_1: Keypoint
    score: float


def _is_url(x: Any) -> bool:
    return isinstance(x, str) and x.lower().startswith(("http://", "https://"))


def _is_image(x: Any) -> bool:
    if isinstance(x, (str, Path)):
        return True
    from PIL import Image

    if isinstance(x, Image.Image):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    return hasattr(x, "detach") and getattr(x, "ndim", 0) in (2, 3)  # torch tensor


def validate_image_pairs(inputs: Any) -> tuple[list[tuple[Any, Any]], bool]:
    """``[img0, img1]`` or ``[[a, b], [c, d], ...]`` -> (list of pairs, whether one pair was given).

    An image is a URL, a path, a PIL image, a numpy array ((H, W), (H, W, C)) or a torch tensor
    ((H, W), (C, H, W)).
    """
    if inputs is None:
        raise InputError("Cannot call the keypoint-matching pipeline without inputs: pass a pair [image0, image1] "
                         "or a list of pairs")
    if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        if len(inputs) == 2 and all(_is_image(x) for x in inputs):
            return [(inputs[0], inputs[1])], True
        if len(inputs) and all(isinstance(p, Sequence) and not isinstance(p, (str, bytes)) and len(p) == 2
                               and all(_is_image(x) for x in p) for p in inputs):
            return [(p[0], p[1]) for p in inputs], False
    raise InputError("Input images must be a pair of images [image0, image1] or a list of pairs [[a, b], [c, d], ...]; "
                     "an image is a URL, a path, a PIL image, a numpy array or a torch tensor; got "
                     f"{type(inputs).__name__}" + (f" of length {len(inputs)}" if isinstance(inputs, Sequence) else ""))


def load_url_image(url: str, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """Fetch an image over HTTP(S) -> RGB PIL image with its EXIF orientation applied.

    Raises:
        InputError naming the URL when it cannot be fetched (offline, HTTP error) or decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        req = urllib.request.Request(url, headers={"User-Agent": "loftr_sfm"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise InputError(f"{url}: could not fetch the image ({reason}). Without network access, download it and "
                         "pass the local path (or a PIL image) instead") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{url}: the downloaded data is not a readable image ({e})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # malformed EXIF: keep the pixels as stored
        logger.warning("%s: ignoring malformed EXIF orientation (%s)", url, e)
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img


def _resolve_device(device: Any) -> str:
    from loftr_sfm.utils import resolve_device

    if device is None:
        return resolve_device("auto")
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu" if device < 0 else f"cuda:{device}"
    return resolve_device(str(device))


class KeypointMatchingPipeline:
    """Matches image pairs with EfficientLoFTR and returns Transformers' pipeline format.

    Built by :func:`pipeline`. Attributes: ``task``, ``model`` (an
    ``EfficientLoFTRForKeypointMatching`` or an :class:`~loftr_sfm.model.onnx_runtime.OnnxKeypointMatcher`),
    ``image_processor``, ``device``, ``batch_size``.
    """

    task = "keypoint-matching"

    def __init__(self, model: Any, image_processor: Any, device: str, batch_size: int) -> None:
        self.model = model
        self.image_processor = image_processor
        self.device = device
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"KeypointMatchingPipeline(model={type(self.model).__name__}, device={self.device!r}, batch_size={self.batch_size})"

    def __call__(self, inputs: Any, threshold: float = 0.0, *, timeout: float | None = DEFAULT_TIMEOUT,
                 batch_size: int | None = None) -> list[Match] | list[list[Match]]:
        """Match one pair (-> list of matches) or a list of pairs (-> a list of matches per pair).

        Args:
            inputs: ``[image0, image1]`` or ``[[a, b], [c, d], ...]``; images are URLs (fetched,
                ``timeout`` seconds each), paths, PIL images, numpy arrays or torch tensors.
            threshold: keep matches with a score above it (0.0: every match the model returns).
            batch_size: pairs per forward pass (default: the pipeline's); pairs whose network
                inputs have the same sizes are batched, with the same results as one by one.
        """
        pairs, single = validate_image_pairs(inputs)
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be at least 1, got {bs}")
        from loftr_sfm.utils import progress

        results: list[list[Match]] = []
        chunks = range(0, len(pairs), bs)
        for start in progress(chunks, unit="batch", desc="keypoint matching", disable=len(chunks) <= 1):
            results.extend(self._match_chunk(pairs[start : start + bs], float(threshold), timeout))
        return results[0] if single else results

    # ------------------------------------------------------------------ steps (Transformers' names)
    def preprocess(self, pair: tuple[Any, Any], timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """One pair -> ``{"image0", "image1"}`` (1, 1, H, W) network inputs and ``original_sizes`` (1, 2, 2)."""
        images = [load_url_image(x, timeout) if _is_url(x) else x for x in pair]
        feats = self.image_processor.preprocess(images, return_tensors="pt")
        if "pixel_values" in feats:
            pv = feats["pixel_values"]
            im0, im1 = pv[:, 0, :1], pv[:, 1, :1]
        else:
            im0, im1 = feats["image0"], feats["image1"]
        return {"image0": im0, "image1": im1, "original_sizes": feats["original_sizes"]}

    def _forward(self, image0: Any, image1: Any) -> Any:
        import torch

        if isinstance(self.model, torch.nn.Module):
            dev = next(self.model.parameters()).device
            image0, image1 = image0.to(dev), image1.to(dev)
            with torch.inference_mode():
                return self.model(image0=image0, image1=image1)
        return self.model(image0=image0, image1=image1)

    def postprocess(self, outputs: Any, original_sizes: Any, threshold: float = 0.0) -> list[list[Match]]:
        """Model outputs of a batch -> per pair, the matches sorted by score (best first)."""
        per_pair = self.image_processor.post_process_keypoint_matching(outputs, target_sizes=original_sizes,
                                                                      threshold=threshold)
        return [format_matches(r["keypoints0"], r["keypoints1"], r["matching_scores"]) for r in per_pair]

    def _match_chunk(self, pairs: list[tuple[Any, Any]], threshold: float, timeout: float | None) -> list[list[Match]]:
        import torch

        prepared = [self.preprocess(p, timeout) for p in pairs]
        groups: dict[tuple, list[int]] = {}
        for k, p in enumerate(prepared):  # batch the pairs whose network inputs have the same sizes
            groups.setdefault((tuple(p["image0"].shape), tuple(p["image1"].shape)), []).append(k)
        out: list[list[Match] | None] = [None] * len(pairs)
        for idx in groups.values():
            im0 = torch.cat([prepared[k]["image0"] for k in idx])
            im1 = torch.cat([prepared[k]["image1"] for k in idx])
            sizes = torch.cat([prepared[k]["original_sizes"] for k in idx])
            for k, matches in zip(idx, self.postprocess(self._forward(im0, im1), sizes, threshold)):
                out[k] = matches
        return out  # type: ignore[return-value]


def format_matches(keypoints0: Any, keypoints1: Any, scores: Any) -> list[Match]:
    """(M, 2), (M, 2), (M,) arrays or tensors -> Transformers' list of matches, best score first
    (stable order among equal scores, like Transformers' ``sorted(..., reverse=True)``)."""
    as_np = lambda t: t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)  # noqa: E731
    k0, k1, sc = as_np(keypoints0).astype(np.float64), as_np(keypoints1).astype(np.float64), as_np(scores).astype(np.float64)
    order = np.argsort(-sc, kind="stable")
    return [
        {"keypoint_image_0": {"x": x0, "y": y0}, "keypoint_image_1": {"x": x1, "y": y1}, "score": s}
        for (x0, y0), (x1, y1), s in zip(k0[order].tolist(), k1[order].tolist(), sc[order].tolist())
    ]


def pipeline(task: str | None = None, model: Any = None, *, image_processor: Any = None, device: Any = None,
             batch_size: int = 4, max_side: int | None = None, revision: str | None = None,
             model_kwargs: dict[str, Any] | None = None) -> KeypointMatchingPipeline:
    """Transformers' ``pipeline`` for the one task of this library, ``"keypoint-matching"``.

    Args:
        task: ``"keypoint-matching"`` (or None). Other tasks raise ValueError.
        model: a hub id (default ``zju-community/efficientloftr``; downloaded when online, else
            one error saying how to pass a local file), a Transformers folder, a ``.safetensors``
            file, the original ``.ckpt``, an exported ``.onnx`` file (run with onnxruntime), or a
            loaded ``EfficientLoFTRForKeypointMatching`` / ``OnnxKeypointMatcher``.
        image_processor: an ``EfficientLoFTRImageProcessor`` or a folder / ``preprocessor_config.json``.
            Default: the model folder's ``preprocessor_config.json``, else Transformers' 480x640
            resize (aspect ratio not kept); an ``.onnx`` model resizes to its exported size.
        device: "cpu", "cuda", "cuda:1", a torch.device, an int (-1 = CPU, k = cuda:k) or None
            (weights are loaded on the GPU when there is one; a loaded model stays where it is).
        batch_size: pairs per forward pass.
        max_side: resize with the aspect ratio kept, longest side to this (sides rounded to
            multiples of 32) instead of the processor's size.
        revision: hub revision of ``model``.
        model_kwargs: config overrides when loading (e.g. ``{"coarse_matching_threshold": 0.1}``).
    """
    if task is None:
        task = "keypoint-matching"
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"Unknown task {task!r}: loftr_sfm.pipeline supports {list(SUPPORTED_TASKS)} only")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    from loftr_sfm.model.onnx_runtime import OnnxKeypointMatcher
    from loftr_sfm.model.processing import PROCESSOR_CONFIG_NAME, EfficientLoFTRImageProcessor

    model = DEFAULT_MODEL if model is None else model
    model_kwargs = dict(model_kwargs or {})
    dev = _resolve_device(device)  # for weights to load; a loaded model stays where it is unless device is given
    folder = None
    if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
        if model_kwargs:
            raise InputError(f"model_kwargs {sorted(model_kwargs)} cannot change an exported ONNX graph; export it again")
        model = OnnxKeypointMatcher(model)
        dev = "cpu"
    elif isinstance(model, (str, os.PathLike)):
        from loftr_sfm.model.weights import from_pretrained
        from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

        p = Path(model).expanduser()
        folder = p if p.is_dir() else None
        model = from_pretrained(EfficientLoFTRForKeypointMatching, model, device=dev, revision=revision, **model_kwargs)
    elif model_kwargs:
        raise InputError("model_kwargs apply when loading weights; change a loaded model's config instead")
    elif hasattr(model, "parameters"):
        if device is not None:
            model = model.to(dev)
        model = model.eval()
        dev = str(next(model.parameters()).device)
    elif not isinstance(model, OnnxKeypointMatcher):
        raise InputError(f"model must be a hub id, a path or a loaded EfficientLoFTR model, got {type(model).__name__}")

    if isinstance(image_processor, (str, os.PathLike)):
        image_processor = EfficientLoFTRImageProcessor.from_pretrained(image_processor)
    if image_processor is None:
        if isinstance(model, OnnxKeypointMatcher):
            image_processor = model.image_processor(**({"max_side": max_side} if max_side else {}))
            max_side = None
        elif folder is not None and (folder / PROCESSOR_CONFIG_NAME).is_file():
            image_processor = EfficientLoFTRImageProcessor.from_pretrained(folder)
        else:
            image_processor = EfficientLoFTRImageProcessor()
    if max_side is not None:
        image_processor = EfficientLoFTRImageProcessor(**{**image_processor.to_dict(), "size": {"longest_edge": int(max_side)}})
    if isinstance(model, OnnxKeypointMatcher) and model.size is not None and \
            image_processor.size != {"height": model.size[1], "width": model.size[0]}:
        raise InputError(f"{model.path} takes {model.size[0]}x{model.size[1]} inputs only; use its own image processor")
    return KeypointMatchingPipeline(model, image_processor, dev, batch_size)
