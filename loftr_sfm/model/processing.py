"""Image processor of the EfficientLoFTR matcher (Transformers-like API, original-model semantics).

:class:`EfficientLoFTRImageProcessor` turns image pairs into network inputs and the network's
fixed-length output back into per-pair float keypoints in original-image pixels.

Conventions:

* Input images: PIL images, numpy arrays ((H, W), (H, W, C) or (C, H, W) with C in 1/3/4),
  torch tensors ((H, W) or (C, H, W), Transformers' channel-first convention) or paths (read
  with :func:`loftr_sfm.io.read_image`: EXIF orientation applied, 16-bit scaled by 1/257,
  RGBA/LA composited on black, palette/CMYK converted). Pixel values are on the 0..255 scale
  (uint8, or float already on that scale; uint16 arrays are divided by 257). PIL images and
  arrays are used as given (no EXIF rotation: the keypoints refer to the pixels you pass).
* Grayscale: ``0.299 R + 0.587 G + 0.114 B`` in float (the NTSC/ITU-R 601 weights that OpenCV,
  PIL and Transformers use), alpha dropped after compositing on black.
* Resizing: ``size={"height": H, "width": W}`` (default 480x640, aspect ratio ignored, like
  Transformers) or the aspect-preserving mode ``size={"longest_edge": N}`` / ``max_side=N``: the
  long side is scaled to N (no upscaling unless ``allow_upscale``), then **each side is rounded
  to the nearest multiple of 32** (at least 32). Down-sampling uses area averaging
  (``cv2.INTER_AREA``, anti-aliased), up-sampling bilinear (``resample="auto"``).
  ``do_resize=False`` requires sides that are already multiples of 32.
* Output keypoints: x, y in ORIGINAL-image pixels, OpenCV convention (integer = pixel centre),
  sub-pixel floats: ``x_orig = x_normalized * W_orig`` (the original model's ``scale0/scale1``
  rescaling ``x_in * W_orig / W_in``, no half-pixel correction).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loftr_sfm.io import InputError, read_image

logger = logging.getLogger(__name__)

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
SIZE_MULTIPLE = 32
MIN_PROCESSED_SIDE = 64  # the network needs at least 2 x 32 px per side (see EfficientLoFTRForKeypointMatching)
PROCESSOR_CONFIG_NAME = "preprocessor_config.json"


class BatchFeature(dict):
    """A dict with attribute access and ``.to(device)`` (like Transformers' BatchFeature).

    Keys (tensors for ``return_tensors="pt"``, numpy arrays for ``"np"``):

    * ``pixel_values`` (B, 2, C, H, W) float32 in [0, 1] when every image of the batch has the
      same processed size (C = ``num_channels``, gray replicated). Otherwise
    * ``image0`` (B, 1, H0, W0) and ``image1`` (B, 1, H1, W1) when all first images share a size
      and all second images share a size (e.g. one portrait/landscape pair); otherwise
      ``image0``/``image1`` are lists of (1, 1, H, W) tensors: run the model per pair with
      ``batch.pair_inputs(i)``.
    * ``original_sizes`` (B, 2, 2) int64, (height, width) of each image before resizing (pass as
      ``target_sizes`` to :meth:`EfficientLoFTRImageProcessor.post_process_keypoint_matching`).
    * ``processed_sizes`` (B, 2, 2) int64, (height, width) fed to the network.
    * ``scales`` (B, 2, 2) float32, (w_orig / w_in, h_orig / h_in) per image (the original's
      ``scale0``/``scale1``).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> "BatchFeature":
        def move(v: Any) -> Any:
            if hasattr(v, "to") and not isinstance(v, np.ndarray):
                return v.to(device)
            if isinstance(v, list):
                return [move(x) for x in v]
            return v

        return BatchFeature({k: move(v) for k, v in self.items()})

    def model_inputs(self) -> dict[str, Any]:
        """The keyword arguments of the model's forward (``pixel_values`` or ``image0``/``image1``)."""
        if "pixel_values" in self:
            return {"pixel_values": self["pixel_values"]}
        if isinstance(self["image0"], list):
            raise ValueError("this batch mixes image sizes across pairs; run the model per pair with pair_inputs(i)")
        return {"image0": self["image0"], "image1": self["image1"]}

    def pair_inputs(self, i: int) -> dict[str, Any]:
        """Model inputs of pair ``i`` alone (works for every batch layout)."""
        if "pixel_values" in self:
            return {"pixel_values": self["pixel_values"][i : i + 1]}
        im0, im1 = self["image0"], self["image1"]
        if isinstance(im0, list):
            return {"image0": im0[i], "image1": im1[i]}
        return {"image0": im0[i : i + 1], "image1": im1[i : i + 1]}


def _is_image(x: Any) -> bool:
    if isinstance(x, (str, Path)):
        return True
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.ndim in (2, 3)
    except ImportError:  # pragma: no cover
        pass
    return False


def format_image_pairs(images: Any) -> list[tuple[Any, Any]]:
    """Normalize the accepted structures to a list of (image0, image1) pairs.

    Accepted: a pair ``[img0, img1]``, a list of pairs ``[[a, b], [c, d]]``, or a 5-D array/tensor
    (B, 2, C, H, W) / 4-D (2, C, H, W).
    """
    try:
        import torch

        tensor_types: tuple[type, ...] = (np.ndarray, torch.Tensor)
    except ImportError:  # pragma: no cover
        tensor_types = (np.ndarray,)
    if isinstance(images, tensor_types) and images.ndim in (4, 5):
        arr = images if images.ndim == 5 else images[None]
        if arr.shape[1] != 2:
            raise InputError(f"a batch of image pairs must have shape (B, 2, C, H, W), got {tuple(images.shape)}")
        return [(arr[i, 0], arr[i, 1]) for i in range(arr.shape[0])]
    if isinstance(images, (list, tuple)):
        if len(images) == 2 and all(_is_image(x) for x in images):
            return [(images[0], images[1])]
        if images and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_image(x) for x in p) for p in images):
            return [(p[0], p[1]) for p in images]
    raise InputError(
        "images must be a pair [image0, image1] or a list of pairs [[a, b], [c, d], ...] of PIL images, numpy "
        f"arrays, torch tensors or paths; got {type(images).__name__}"
        + (f" of length {len(images)}" if isinstance(images, (list, tuple)) else "")
    )


def _pil_to_array(img: Any) -> np.ndarray:
    """PIL image -> float32 (H, W) or (H, W, 3) on the 0..255 scale (io.read_image's conversions)."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float32)
        if mode == "F":
            return np.clip(arr, 0.0, 1.0) * 255.0
        if mode == "I" and arr.max(initial=0) > 65535:
            return (arr.astype(np.float64) / float(2**32 - 1) * 255.0).astype(np.float32)
        return arr / 257.0
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, rgba)
    if mode == "L":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def to_float_image(image: Any, name: str = "image") -> np.ndarray:
    """Any accepted image -> float32 array (H, W) or (H, W, 3), values on the 0..255 scale.

    Raises:
        InputError / ImageReadError naming the image for unsupported shapes or types.
    """
    if isinstance(image, (str, Path)):
        return read_image(image).astype(np.float32)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return _pil_to_array(image)
    except ImportError:  # pragma: no cover
        pass
    channel_first = False
    if not isinstance(image, np.ndarray):
        import torch

        if not isinstance(image, torch.Tensor):
            raise InputError(f"{name}: unsupported image type {type(image).__name__}")
        image = image.detach().to("cpu")
        if image.dtype == torch.bfloat16 or image.dtype == torch.float16:
            image = image.float()
        image = image.numpy()
        channel_first = image.ndim == 3  # torch images are (C, H, W)
    arr = np.asarray(image)
    if arr.ndim == 3 and not channel_first and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        channel_first = True
    if arr.ndim == 3 and channel_first:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise InputError(f"{name}: expected an (H, W), (H, W, C) or (C, H, W) image with C in 1/3/4, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 257.0
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.float32) * 255.0
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:  # composite on black, like io.read_image
            arr = arr[..., :3] * (arr[..., 3:4] / 255.0)
        elif arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.size == 0:
        raise InputError(f"{name}: empty image of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    return arr


def rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) float -> (H, W) float32 with the NTSC weights."""
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    w = np.asarray(GRAY_WEIGHTS, np.float32)
    return (arr[..., :3] @ w).astype(np.float32)


def target_size(height: int, width: int, *, size: Mapping[str, int] | None, max_side: int | None,
                allow_upscale: bool = False, multiple: int = SIZE_MULTIPLE, name: str = "image") -> tuple[int, int]:
    """Processed (height, width) of an image for the resize settings (see module docstring).

    Raises:
        InputError: if a side would be smaller than 64 px (the network's minimum).
    """
    if max_side is None and size is not None and "longest_edge" in size:
        max_side = int(size["longest_edge"])
    if max_side is not None:
        if max_side < MIN_PROCESSED_SIDE:
            raise InputError(f"max_side {max_side} is smaller than the network's minimum side {MIN_PROCESSED_SIDE}")
        scale = max_side / max(height, width)
        if not allow_upscale:
            scale = min(scale, 1.0)
        new = []
        for side in (height, width):
            n = int(math.floor(side * scale / multiple + 0.5))
            if n * multiple < MIN_PROCESSED_SIDE:
                raise InputError(
                    f"{name} ({width}x{height} px) is too small for EfficientLoFTR: resized to max side {max_side} "
                    f"its {'height' if side == height else 'width'} would be {side * scale:.0f} px, but every side "
                    f"must be at least {MIN_PROCESSED_SIDE} px after resizing"
                )
            new.append(n * multiple)
        return new[0], new[1]
    if size is None:
        return height, width
    h, w = int(size["height"]), int(size["width"])
    if h % multiple or w % multiple or h < MIN_PROCESSED_SIDE or w < MIN_PROCESSED_SIDE:
        raise InputError(f"size {h}x{w} (HxW) must be multiples of {multiple} and at least {MIN_PROCESSED_SIDE} for EfficientLoFTR")
    return h, w


def resize_image(arr: np.ndarray, height: int, width: int, resample: str = "auto") -> np.ndarray:
    """Resize a float (H, W) image; "auto" = area averaging when shrinking, bilinear otherwise."""
    import cv2

    h, w = arr.shape[:2]
    if (h, w) == (height, width):
        return arr
    if resample == "auto":
        interp = cv2.INTER_AREA if (height <= h and width <= w) else cv2.INTER_LINEAR
    else:
        table = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                 "nearest": cv2.INTER_NEAREST}
        if resample not in table:
            raise ValueError(f"resample must be one of {['auto', *table]}, got {resample!r}")
        interp = table[resample]
    return cv2.resize(arr, (width, height), interpolation=interp)


class EfficientLoFTRImageProcessor:
    """Pre- and post-processing for :class:`~loftr_sfm.model.efficientloftr.EfficientLoFTRForKeypointMatching`.

    Args:
        do_resize: resize images (default True).
        size: ``{"height": 480, "width": 640}`` (default, aspect ignored like Transformers) or
            ``{"longest_edge": N}`` (aspect-preserving, sides rounded to multiples of 32).
        max_side: shortcut for ``size={"longest_edge": max_side}``.
        allow_upscale: in the longest-edge mode, also enlarge images smaller than ``max_side``.
        resample: "auto" (area when shrinking, bilinear when enlarging), "area", "bilinear",
            "bicubic" or "nearest".
        do_rescale, rescale_factor: multiply by 1/255 (default).
        do_grayscale: convert to gray (the network is grayscale; default True).
        num_channels: channels of ``pixel_values`` (3 = gray replicated, like Transformers; 1).
        min_side: images whose original height or width is below this fail with a clear error.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, do_resize: bool = True, size: Mapping[str, int] | None = None, max_side: int | None = None,
                 allow_upscale: bool = False, resample: str = "auto", do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_grayscale: bool = True, num_channels: int = 3,
                 min_side: int = SIZE_MULTIPLE, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - {"image_processor_type", "processor_class", "resample_filter"})
        if unknown:
            raise ValueError(f"unknown EfficientLoFTRImageProcessor option(s) {unknown}")
        self.do_resize = bool(do_resize)
        self.size = dict(size) if size is not None else ({"longest_edge": int(max_side)} if max_side else {"height": 480, "width": 640})
        self.max_side = max_side
        self.allow_upscale = bool(allow_upscale)
        self.resample = resample
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_grayscale = bool(do_grayscale)
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        self.num_channels = int(num_channels)
        self.min_side = int(min_side)

    # ------------------------------------------------------------------ config I/O
    def to_dict(self) -> dict[str, Any]:
        return {"image_processor_type": type(self).__name__, "do_resize": self.do_resize, "size": self.size,
                "allow_upscale": self.allow_upscale, "resample": self.resample, "do_rescale": self.do_rescale,
                "rescale_factor": self.rescale_factor, "do_grayscale": self.do_grayscale,
                "num_channels": self.num_channels, "min_side": self.min_side}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PROCESSOR_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "EfficientLoFTRImageProcessor":
        """Read ``preprocessor_config.json`` (ours or Transformers'); defaults if the folder has none."""
        path = Path(path)
        file = path / PROCESSOR_CONFIG_NAME if path.is_dir() else path
        data: dict[str, Any] = {}
        if file.is_file():
            data = json.loads(file.read_text())
        keep = {"do_resize", "size", "allow_upscale", "do_rescale", "rescale_factor", "do_grayscale",
                "num_channels", "min_side"}
        if isinstance(data.get("resample"), str):
            keep.add("resample")
        data = {k: v for k, v in data.items() if k in keep}
        data.update(overrides)
        return cls(**data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    # ------------------------------------------------------------------ preprocess
    def preprocess(self, images: Any, do_resize: bool | None = None, size: Mapping[str, int] | None = None,
                   max_side: int | None = None, resample: str | None = None, do_rescale: bool | None = None,
                   rescale_factor: float | None = None, do_grayscale: bool | None = None,
                   return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """Image pairs -> network inputs (see :class:`BatchFeature` for the keys and shapes).

        Args:
            images: a pair ``[img0, img1]`` or a list of pairs (PIL / numpy / torch / path).
            return_tensors: "pt" (torch) or "np".
            others: override the processor's settings for this call.
        Raises:
            InputError / ImageReadError: unreadable or too small images, unsupported structures.
        """
        if kwargs:
            raise ValueError(f"unknown preprocess option(s) {sorted(kwargs)}")
        do_resize = self.do_resize if do_resize is None else do_resize
        if max_side is not None:
            size = {"longest_edge": int(max_side)}
        size = self.size if size is None else dict(size)
        resample = self.resample if resample is None else resample
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_grayscale = self.do_grayscale if do_grayscale is None else do_grayscale
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")

        pairs = format_image_pairs(images)
        processed: list[list[np.ndarray]] = []
        orig_sizes, new_sizes = [], []
        for i, pair in enumerate(pairs):
            row, osz, nsz = [], [], []
            for j, img in enumerate(pair):
                name = str(img) if isinstance(img, (str, Path)) else f"image{j} of pair {i}"
                arr = to_float_image(img, name)
                if arr.ndim == 3 and not do_grayscale:
                    raise InputError(f"{name}: EfficientLoFTR needs grayscale input; keep do_grayscale=True for colour images")
                gray = rgb_to_gray(arr)
                h, w = gray.shape
                if min(h, w) < self.min_side:
                    raise InputError(f"{name} ({w}x{h} px) is too small for EfficientLoFTR: every side must be at least "
                                     f"{self.min_side} px")
                if do_resize:
                    nh, nw = target_size(h, w, size=size, max_side=None, allow_upscale=self.allow_upscale, name=name)
                    gray = resize_image(gray, nh, nw, resample)
                elif h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < MIN_PROCESSED_SIDE:
                    raise InputError(f"{name} is {w}x{h} px but with do_resize=False both sides must be multiples of "
                                     f"{SIZE_MULTIPLE} and at least {MIN_PROCESSED_SIDE}; use do_resize=True (size= or max_side=)")
                if do_rescale:
                    if _is_float_input(img) and 0.0 < gray.max(initial=0.0) <= 1.0:
                        logger.warning("%s: values are already in [0, 1] but do_rescale=True divides by 255 again "
                                       "(pass 0..255 images or do_rescale=False)", name)
                    gray = gray * np.float32(factor)
                row.append(np.ascontiguousarray(gray, dtype=np.float32))
                osz.append((h, w))
                nsz.append(gray.shape)
            processed.append(row)
            orig_sizes.append(osz)
            new_sizes.append(nsz)

        orig = np.asarray(orig_sizes, np.int64)  # (B, 2, 2) (h, w)
        new = np.asarray(new_sizes, np.int64)
        scales = (orig[..., ::-1] / new[..., ::-1]).astype(np.float32)  # (w_o/w_in, h_o/h_in)
        out: dict[str, Any] = {}
        if len({s for row in new_sizes for s in row}) == 1:
            pv = np.stack([np.stack(row) for row in processed])[:, :, None]  # (B, 2, 1, H, W)
            if self.num_channels == 3:
                pv = np.repeat(pv, 3, axis=2)
            out["pixel_values"] = pv
        elif len({row[0] for row in new_sizes}) == 1 and len({row[1] for row in new_sizes}) == 1:
            out["image0"] = np.stack([row[0] for row in processed])[:, None]
            out["image1"] = np.stack([row[1] for row in processed])[:, None]
        else:
            out["image0"] = [row[0][None, None] for row in processed]
            out["image1"] = [row[1][None, None] for row in processed]
        out["original_sizes"] = orig
        out["processed_sizes"] = new
        out["scales"] = scales
        if return_tensors == "pt":
            import torch

            out = {k: ([torch.from_numpy(x) for x in v] if isinstance(v, list) else torch.from_numpy(v)) for k, v in out.items()}
        return BatchFeature(out)

    # ------------------------------------------------------------------ post-process
    @staticmethod
    def _target_sizes(target_sizes: Any, batch: int) -> np.ndarray:
        if isinstance(target_sizes, Mapping) and "original_sizes" in target_sizes:
            target_sizes = target_sizes["original_sizes"]
        if hasattr(target_sizes, "detach"):
            target_sizes = target_sizes.detach().cpu().numpy()
        ts = np.asarray(target_sizes, dtype=np.float64)
        if ts.ndim == 2 and ts.shape == (2, 2) and batch == 1:
            ts = ts[None]
        if ts.ndim != 3 or ts.shape[1:] != (2, 2):
            raise ValueError("target_sizes must hold, per pair, the original sizes [(h0, w0), (h1, w1)] "
                             f"(shape (B, 2, 2)); got shape {ts.shape}")
        if ts.shape[0] != batch:
            raise ValueError(f"got {ts.shape[0]} target sizes for a batch of {batch} pairs")
        return ts

    def post_process_keypoint_matching(self, outputs: Any, target_sizes: Any, threshold: float | None = 0.0) -> list[dict[str, Any]]:
        """Model outputs -> per-pair matches in original-image pixels.

        Args:
            outputs: the model output (``keypoints`` (B, 2, K, 2) normalized x/W_in, y/H_in;
                ``matches`` (B, 2, K) with -1 for padding; ``matching_scores`` (B, 2, K)), or a
                list of such outputs (one per pair, e.g. from per-pair runs).
            target_sizes: per pair ``[(h0, w0), (h1, w1)]`` of the ORIGINAL images: a list, a
                (B, 2, 2) tensor, or the :class:`BatchFeature` from :meth:`preprocess` (its
                ``original_sizes``).
            threshold: keep matches with score > threshold (``None`` keeps every valid slot,
                e.g. for the optimized mode's logits which may be negative).
        Returns:
            list of dicts per pair: ``keypoints0`` (M, 2) float32, ``keypoints1`` (M, 2) float32
            (x, y in original pixels, integer = pixel centre, sub-pixel), ``matching_scores`` (M,).
            Row m of ``keypoints0`` and ``keypoints1`` are the two ends of the same match.
        """
        import torch

        if isinstance(outputs, (list, tuple)):
            ts = self._target_sizes(target_sizes, len(outputs))
            res = []
            for i, o in enumerate(outputs):
                res.extend(self.post_process_keypoint_matching(o, ts[i : i + 1], threshold))
            return res
        kp, matches, scores = outputs["keypoints"], outputs["matches"], outputs["matching_scores"]
        batch = kp.shape[0]
        ts = torch.as_tensor(self._target_sizes(target_sizes, batch), dtype=torch.float32, device=kp.device)
        wh = ts.flip(-1)  # (B, 2, 2) as (w, h)
        kp_px = kp.float() * wh[:, :, None, :]  # (B, 2, K, 2), stays float (no int truncation)
        results = []
        for b in range(batch):  # per pair, vectorized over matches
            valid = (matches[b, 0] >= 0) & (matches[b, 1] >= 0)
            sc = scores[b, 0]
            if threshold is not None:
                valid = valid & (sc > threshold)
            results.append({
                "keypoints0": kp_px[b, 0][valid],
                "keypoints1": kp_px[b, 1][valid],
                "matching_scores": sc[valid].float(),
            })
        return results

    # ------------------------------------------------------------------ visualization
    @staticmethod
    def score_colors(scores: np.ndarray) -> np.ndarray:
        """(M,) scores -> (M, 3) uint8 RGB, red (low) to green (high). Scores in [0, 1] are used
        as is; other ranges (e.g. logits of the optimized mode) are min-max normalized."""
        s = np.asarray(scores, np.float64).reshape(-1)
        if s.size and (s.min() < 0 or s.max() > 1):
            lo, hi = s.min(), s.max()
            s = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
        s = np.clip(s, 0.0, 1.0)
        return np.stack([255 * (1 - s), 255 * s, np.zeros_like(s)], axis=1).round().astype(np.uint8)

    def visualize_keypoint_matching(self, images: Any, keypoint_matching_output: Sequence[Mapping[str, Any]],
                                    line_width: int = 2, point_radius: int = 2) -> list[Any]:
        """Draw each pair side by side (image0 left, image1 right, original resolution) with its
        matches as lines coloured by score (red = low, green = high).

        Args:
            images: the same structure as for :meth:`preprocess` (original images).
            keypoint_matching_output: the list from :meth:`post_process_keypoint_matching`.
        Returns:
            list of RGB PIL images, one per pair.
        """
        from PIL import Image, ImageDraw

        pairs = format_image_pairs(images)
        if len(pairs) != len(keypoint_matching_output):
            raise ValueError(f"{len(pairs)} image pairs but {len(keypoint_matching_output)} match results")
        out = []
        for (im0, im1), res in zip(pairs, keypoint_matching_output):
            a0 = np.clip(to_float_image(im0), 0, 255).astype(np.uint8)
            a1 = np.clip(to_float_image(im1), 0, 255).astype(np.uint8)
            a0 = a0 if a0.ndim == 3 else np.repeat(a0[..., None], 3, axis=2)
            a1 = a1 if a1.ndim == 3 else np.repeat(a1[..., None], 3, axis=2)
            h0, w0 = a0.shape[:2]
            h1, w1 = a1.shape[:2]
            canvas = np.zeros((max(h0, h1), w0 + w1, 3), np.uint8)
            canvas[:h0, :w0] = a0
            canvas[:h1, w0:] = a1
            pil = Image.fromarray(canvas)
            draw = ImageDraw.Draw(pil)
            k0 = _to_numpy(res["keypoints0"]).reshape(-1, 2)
            k1 = _to_numpy(res["keypoints1"]).reshape(-1, 2) + np.array([w0, 0.0])
            colors = self.score_colors(_to_numpy(res["matching_scores"]))
            order = np.argsort(_to_numpy(res["matching_scores"]).reshape(-1), kind="stable")  # best drawn last
            r = point_radius
            for m in order:
                c = tuple(int(v) for v in colors[m])
                x0, y0 = k0[m]
                x1, y1 = k1[m]
                draw.line((x0, y0, x1, y1), fill=c, width=line_width)
                draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=c)
                draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=c)
            out.append(pil)
        return out


def _is_float_input(img: Any) -> bool:
    dtype = getattr(img, "dtype", None)
    if dtype is None:
        return False
    if isinstance(img, np.ndarray):
        return np.issubdtype(dtype, np.floating)
    return bool(getattr(dtype, "is_floating_point", False))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, np.float64)
