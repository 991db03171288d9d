"""Test helper: the ORIGINAL EfficientLoFTR (``efficientloftr_inference``) with meaningful random weights.

Random weights are made meaningful like in the project notes (eloftr.md, "Method"):
seeded original initialization (kaiming / xavier), randomized BatchNorm and LayerNorm affines,
and BatchNorm running statistics calibrated on the image pair with one cumulative train-mode
pass (momentum=None) of the backbone and of the fine FPN, so activations stay O(1) instead of
blowing up through 21 residual sums. The weights are then copied into our model
(parameter names are identical). Test-only: the library never imports the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_gray(path: str | Path, size_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) float32 in [0, 1]: PIL grayscale, bilinear resize to size_hw = (H, W)."""
    from PIL import Image

    img = Image.open(path).convert("L").resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]


def load_pair(
    size0: tuple[int, int] = (480, 640),
    size1: tuple[int, int] | None = None,
    scene: str = "herzjesu-P8",
    names: tuple[str, str] = ("0003.jpg", "0004.jpg"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """A real pair from ../shared/data/<scene>/images (skips the test if absent)."""
    from conftest import shared_scene

    root = shared_scene(scene) / "images"
    return load_gray(root / names[0], size0), load_gray(root / names[1], size1 or size0)


def _randomize_norm_affines(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))


def build_reference(
    image0: torch.Tensor,
    image1: torch.Tensor,
    *,
    seed: int = 0,
    threshold: float = 0.2,
    skip_softmax: bool = False,
    npe_long_side: int = 832,
    calib_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> nn.Module:
    """The original LoFTR (training form, eval mode) with calibrated random weights.

    ``calib_pairs`` (default: the given pair) are the images of the cumulative calibration pass.
    """
    from efficientloftr_inference import LoFTR, full_config

    torch.manual_seed(seed)
    cfg = full_config(coarse_threshold=threshold, npe_long_side=npe_long_side)
    cfg["match_coarse"]["skip_softmax"] = skip_softmax
    ref = LoFTR(config=cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    _randomize_norm_affines(ref, gen)
    calib_pairs = calib_pairs or [(image0, image1)]
    bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    ref.eval()
    with torch.no_grad():
        # backbone BN statistics, train mode (batch statistics) over every calibration image
        ref.backbone.train()
        for im0, im1 in calib_pairs:
            if im0.shape == im1.shape:
                ref.backbone(torch.cat([im0, im1]))
            else:
                ref.backbone(im0)
                ref.backbone(im1)
        ref.backbone.eval()
        # fine FPN BN statistics on eval-mode backbone + transformer features
        ref.fine_preprocess.train()
        for im0, im1 in calib_pairs:
            out0, out1 = ref.backbone(im0), ref.backbone(im1)
            f0, f1 = ref.loftr_coarse(out0["feats_c"], out1["feats_c"])
            if im0.shape == im1.shape:
                ref.fine_preprocess.inter_fpn(
                    torch.cat([f0, f1]) / 16.0,
                    torch.cat([out0["feats_x2"], out1["feats_x2"]]),
                    torch.cat([out0["feats_x1"], out1["feats_x1"]]),
                    8,
                )
            else:
                ref.fine_preprocess.inter_fpn(f0 / 16.0, out0["feats_x2"], out0["feats_x1"], 8)
                ref.fine_preprocess.inter_fpn(f1 / 16.0, out1["feats_x2"], out1["feats_x1"], 8)
        ref.fine_preprocess.eval()
    ref.eval()
    return ref


def copy_to_ours(ref: nn.Module, config: Any = None) -> nn.Module:
    """Our EfficientLoFTRForKeypointMatching (training form) with the reference's weights."""
    from loftr_sfm.model.config import EfficientLoFTRConfig
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    cfg = config or EfficientLoFTRConfig(
        coarse_matching_threshold=ref.config["match_coarse"]["thr"],
        coarse_matching_skip_softmax=ref.config["match_coarse"]["skip_softmax"],
        rope_npe=list(ref.config["coarse"]["npe"]),
    )
    ours = EfficientLoFTRForKeypointMatching(cfg)
    ours.load_state_dict(ref.state_dict())
    return ours.eval()


def run_reference(ref: nn.Module, image0: torch.Tensor, image1: torch.Tensor, threshold: float | None = None) -> dict:
    """Run the original; returns its data dict (mkpts0_f, mkpts1_f, mconf, b_ids, i_ids, j_ids, conf_matrix, ...)."""
    if threshold is not None:
        ref.coarse_matching.thr = threshold
    data = {"image0": image0, "image1": image1}
    with torch.no_grad():
        ref(data)
    return data


def reference_backbone(ref: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x1, x2, feat_c) of the original backbone."""
    with torch.no_grad():
        out = ref.backbone(image)
    return out["feats_x1"], out["feats_x2"], out["feats_c"]
