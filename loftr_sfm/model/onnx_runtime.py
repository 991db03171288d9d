"""Run an EfficientLoFTR graph exported by :mod:`loftr_sfm.model.onnx_export` with onnxruntime.

:class:`OnnxKeypointMatcher` is called like ``EfficientLoFTRForKeypointMatching`` (``pixel_values``
or ``image0``/``image1``, the processor's output accepted as is) and returns the same output
object, so :meth:`EfficientLoFTRImageProcessor.post_process_keypoint_matching` and
``loftr_sfm.pipeline("keypoint-matching", model="matcher.onnx")`` work unchanged. Its
:meth:`image_processor` resizes to the exported input size.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from loftr_sfm.io import InputError

logger = logging.getLogger(__name__)


class OnnxKeypointMatcher:
    """An exported EfficientLoFTR ``.onnx`` file in an onnxruntime session.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (default: onnxruntime's choice, all cores).
    Attributes:
        size: (width, height) of the network input, or None for a graph with dynamic sizes.
        threshold: the graph's default coarse threshold (``run`` and calls may pass another).
        config: the ``EfficientLoFTRConfig`` recorded at export (or None).
    """

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("running an ONNX matcher needs onnxruntime: pip install 'loftr_sfm[onnx]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: ONNX file does not exist")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: not the notice that the threshold input has a default (intended)
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
        names = [i.name for i in self.session.get_inputs()] + [i.name for i in self.session.get_overridable_initializers()]
        outs = [o.name for o in self.session.get_outputs()]
        from loftr_sfm.model.onnx_export import INPUT_NAMES, OUTPUT_NAMES

        if sorted(names) != sorted(INPUT_NAMES) or outs != list(OUTPUT_NAMES):
            raise InputError(f"{self.path}: not an EfficientLoFTR graph of loftr_sfm (inputs {names}, outputs {outs}); "
                             "export one with `loftr-sfm export-onnx`")
        meta = {k.removeprefix("loftr_sfm."): v for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        self.metadata = meta
        shape = self.session.get_inputs()[0].shape  # [batch, 1, H, W]; strings for dynamic dims
        self.size = (int(shape[3]), int(shape[2])) if all(isinstance(d, int) for d in shape[2:]) else None
        self.threshold = float(meta["threshold"]) if "threshold" in meta else None
        self.config = None
        if "config" in meta:
            from loftr_sfm.model.config import EfficientLoFTRConfig

            self.config = EfficientLoFTRConfig.from_dict(json.loads(meta["config"]))

    def __repr__(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "dynamic size"
        return f"OnnxKeypointMatcher({str(self.path)!r}, {size}, threshold={self.threshold})"

    def image_processor(self, **options: Any) -> Any:
        """An :class:`EfficientLoFTRImageProcessor` that resizes to the graph's input size
        (dynamic graphs: the processor's default, or ``options``)."""
        from loftr_sfm.model.processing import EfficientLoFTRImageProcessor

        if self.size is not None:
            if "max_side" in options or "size" in options:
                raise InputError(f"{self.path} takes {self.size[0]}x{self.size[1]} inputs only (fixed at export); "
                                 "export with --dynamic-size for other sizes")
            options["size"] = {"height": self.size[1], "width": self.size[0]}
        return EfficientLoFTRImageProcessor(**options)

    def run(self, image0: np.ndarray, image1: np.ndarray, threshold: float | None = None) -> dict[str, np.ndarray]:
        """Raw graph outputs (see :mod:`loftr_sfm.model.onnx_export`) for (B, 1, H, W) float32 inputs in
        [0, 1]; ``threshold``: the coarse threshold (default: the graph's)."""
        image0 = np.ascontiguousarray(image0, dtype=np.float32)
        image1 = np.ascontiguousarray(image1, dtype=np.float32)
        if image0.shape != image1.shape or image0.ndim != 4 or image0.shape[1] != 1:
            raise InputError(f"{self.path}: image0 and image1 must both be (B, 1, H, W) of one size, got "
                             f"{image0.shape} and {image1.shape}")
        h, w = image0.shape[2:]
        if self.size is not None and (w, h) != self.size:
            raise InputError(f"{self.path} takes {self.size[0]}x{self.size[1]} inputs (fixed at export), got {w}x{h}")
        if h % 32 or w % 32:
            raise InputError(f"{self.path}: input {w}x{h} is not a multiple of 32 in both sides")
        feeds = {"image0": image0, "image1": image1}
        if threshold is not None:
            feeds["threshold"] = np.asarray(threshold, dtype=np.float32)
        values = self.session.run(None, feeds)
        return dict(zip((o.name for o in self.session.get_outputs()), values))

    def __call__(self, pixel_values: Any = None, *, image0: Any = None, image1: Any = None, threshold: float | None = None,
                 **processor_outputs: Any) -> Any:
        """Like ``EfficientLoFTRForKeypointMatching.forward``: returns its output object (torch tensors);
        ``threshold`` overrides the graph's default coarse threshold."""
        import torch

        from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching, _check_processor_outputs

        _check_processor_outputs(processor_outputs)
        if pixel_values is not None:
            if image0 is not None or image1 is not None:
                raise ValueError("pass either pixel_values or image0/image1, not both")
            pv = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else np.asarray(pixel_values)
            image0, image1 = pv[:, 0, :1], pv[:, 1, :1]
        if image0 is None or image1 is None:
            raise ValueError("the matcher needs pixel_values (B, 2, C, H, W) or both image0 and image1 (B, 1, H, W)")
        to_np = lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # noqa: E731
        image0, image1 = to_np(image0), to_np(image1)
        out = self.run(image0, image1, threshold)
        b = torch.from_numpy(out["batch_indexes"])
        ij = torch.from_numpy(out["coarse_indexes"])
        kp0, kp1, sc = (torch.from_numpy(out[k]) for k in ("keypoints0", "keypoints1", "matching_scores"))
        size = tuple(image0.shape[2:])
        return EfficientLoFTRForKeypointMatching._pack(image0.shape[0], b, ij[:, 0], ij[:, 1], sc, kp0, kp1,
                                                        size, size, None)

    forward = __call__
