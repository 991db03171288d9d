"""``eloftr`` (default): the EfficientLoFTR semi-dense matcher of :mod:`loftr_sfm.model`.

Weights: ``EfficientLoFTRForKeypointMatching.from_pretrained(weights)`` (hub id, directory or
checkpoint file; re-parameterized at load). ``weights=None`` builds a RANDOMLY INITIALISED model
with a loud warning: its matches are meaningless and it exists only to test shapes and plumbing
on machines without the released weights.

Input: gray, longer side <= ``max_side`` and both sides multiples of 32 (the network requires it).
Image0 and image1 may have different sizes; all pairs of one batch share them (the matching stage
buckets pairs by size). Output keypoints are the model's input-pixel keypoints
(``keypoints * (W_in, H_in)``) mapped to the original image with pixel-centre alignment, see
:func:`loftr_sfm.matchers.to_original_pixels`; scores are the coarse confidences.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import InputSpec, MatcherBackend, PairMatches, empty_matches, to_original_pixels

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "zju-community/efficientloftr"


@dataclass
class EfficientLoFTROptions:
    weights: str | None = DEFAULT_WEIGHTS  # hub id, directory or checkpoint; None = random init (tests only!)
    max_side: int | None = 1024  # longer side of the network input (then rounded down to a multiple of 32)
    threshold: float | None = None  # coarse matching threshold override (None: the config's value)


def _load_model(weights: str | None, device: str):
    from ..model.efficientloftr import EfficientLoFTRForKeypointMatching

    if weights is None:
        from ..model.config import EfficientLoFTRConfig

        logger.warning(
            "!!! eloftr matcher built with RANDOM weights (weights=None): matches are meaningless, "
            "use this only to test plumbing. Pass weights=<hub id, directory or checkpoint> for real use. !!!"
        )
        model = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig())
        if hasattr(model, "reparameterize"):
            model.reparameterize()
        return model.to(device).eval()
    return EfficientLoFTRForKeypointMatching.from_pretrained(weights, device=device).eval()


class EfficientLoFTRMatcher(MatcherBackend):
    """EfficientLoFTR through the model contract (``image0``/``image1`` forward inputs)."""

    name = "eloftr"
    Options = EfficientLoFTROptions
    supports_batching = True

    def __init__(self, options: EfficientLoFTROptions | None = None, device: str = "cpu") -> None:
        super().__init__(device=device)
        self.options = options or EfficientLoFTROptions()
        self.spec = InputSpec(grayscale=True, max_side=self.options.max_side, multiple=32)
        self.model = _load_model(self.options.weights, device)

    @property
    def default_batch_size(self) -> int:
        # one 1024x768 pair needs ~3 GB on the CPU (dense coarse matrices): batch only on GPUs
        return 4 if str(self.device).startswith("cuda") else 1

    def match(self, image0, image1, size0, size1, names0: Sequence[str] | None = None, names1: Sequence[str] | None = None):
        import torch

        x0 = image0.to(self.device, non_blocking=True).float()
        x1 = image1.to(self.device, non_blocking=True).float()
        if x0.shape[1] != 1:
            x0 = x0.mean(dim=1, keepdim=True)
        if x1.shape[1] != 1:
            x1 = x1.mean(dim=1, keepdim=True)
        kwargs = {} if self.options.threshold is None else {"threshold": self.options.threshold}
        with torch.inference_mode():
            out = self.model(image0=x0, image1=x1, **kwargs)
        kpts = out["keypoints"].float().cpu().numpy()  # (B, 2, K, 2) normalised by each input's (W, H)
        valid = out["matches"][:, 0].cpu().numpy() >= 0  # (B, K)
        scores = out["matching_scores"][:, 0].float().cpu().numpy()  # (B, K)
        in0 = np.array([x0.shape[-1], x0.shape[-2]], np.float64)
        in1 = np.array([x1.shape[-1], x1.shape[-2]], np.float64)
        res: list[PairMatches] = []
        for b in range(x0.shape[0]):
            v = valid[b]
            if not v.any():
                res.append(empty_matches())
                continue
            res.append(
                PairMatches(
                    to_original_pixels(kpts[b, 0, v] * in0, in0, [int(s) for s in size0[b]]),
                    to_original_pixels(kpts[b, 1, v] * in1, in1, [int(s) for s in size1[b]]),
                    scores[b, v].astype(np.float32),
                )
            )
        return res
