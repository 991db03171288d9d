"""EfficientLoFTR networks with the original release's semantics and Transformers' API.

* :class:`EfficientLoFTRModel`: RepVGG backbone + coarse transformer ("backbone features").
* :class:`EfficientLoFTRForKeypointMatching`: the full semi-dense matcher.

Parameter names = the original checkpoint's without ``matcher.`` (``backbone.*``,
``loftr_coarse.*``, ``fine_preprocess.*``), so ``model.load_state_dict(original_sd)`` works.
:meth:`reparameterize` folds the RepVGG branches (``rbr_reparam``) and the fine FPN BatchNorm.
``load_state_dict`` accepts both forms: a state dict with ``rbr_reparam`` keys re-parameterizes
the model first; a training-form FPN (``layerX_outconv2.1.*`` BatchNorm keys) loaded into a
re-parameterized model is folded on the fly; a training-form backbone cannot be loaded into a
re-parameterized model (clear error: build a fresh model, load, then reparameterize).

Inputs: ``pixel_values`` (B, 2, C, H, W) in [0, 1] (Transformers layout, channel 0 is used), or
``image0`` (B, 1, H0, W0) and ``image1`` (B, 1, H1, W1) that may differ in size. H and W must be
multiples of 32 (``config.size_multiple``); use ``EfficientLoFTRImageProcessor`` to resize
(resizing rather than padding: the original's padding masks only exist for training batches and
resized inputs keep every pixel in the attention; keypoints are rescaled by the processor).

Differences from the original's *implementation* (same numbers within float rounding):
coarse matching is blockwise (no L0 x L1 matrix; peak memory at 1600x1216 ~1.9 GB vs ~3.6 GB per
dense matrix copy in the original), the fine FPN runs one image side at a time and stops at its
1/2-resolution map, and the windows (8x8 / 10x10) are gathered at the matched cells only, the last
x2 bilinear upsampling being evaluated at those pixels (no unfold over all cells, no full-resolution
map). Precision: fp32 by default; ``mixed_precision`` ("fp16"/"bf16" on CUDA) autocasts backbone,
transformer and fine FPN while coarse and fine matching stay fp32; on CPU "bf16" (opt-in, changes
outputs) autocasts the backbone and fine FPN only, in channels_last (the only fast bf16 CPU conv path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import LocalFeatureTransformer
from .backbone import RepVGGBackbone, fuse_conv_bn
from .config import EfficientLoFTRConfig
from .matching import FinePreprocess, coarse_match, fine_match, gather_windows_upsampled

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- outputs



#: Keys of EfficientLoFTRImageProcessor's output that describe sizes, not network inputs: accepted
#: (and ignored) so that ``model(**processor(images))`` works as with Transformers.
PROCESSOR_METADATA_KEYS = frozenset({"original_sizes", "processed_sizes", "scales"})


def _check_processor_outputs(extra: dict) -> None:
    unknown = sorted(set(extra) - PROCESSOR_METADATA_KEYS)
    if unknown:
        raise TypeError(f"unexpected input(s) {unknown}; the model takes pixel_values or image0/image1")

class _ModelOutput:
    """Dataclass mixin giving attribute and dict-style access (like Transformers' ModelOutput)."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default


@dataclass
class EfficientLoFTRKeypointMatchingOutput(_ModelOutput):
    """Matches of a batch of B pairs, padded to K = max matches over the batch.

    * ``keypoints`` (B, 2, K, 2) float32: x, y normalized by each image's input width / height
      (x_px / W_in, y_px / H_in; x_px, y_px = the original model's ``mkpts`` in input pixels,
      integer = pixel centre). ``keypoints[b, 0, k]`` and ``keypoints[b, 1, k]`` are the two ends
      of match k. Padding = 0.
    * ``matches`` (B, 2, K) int64: k for valid slots, -1 for padding.
    * ``matching_scores`` (B, 2, K) float32: coarse confidence (probability, or logit with
      ``coarse_matching_skip_softmax``), same value in both rows, 0 for padding.
    * ``coarse_matches``: (b_ids, i_ids, j_ids) coarse cell indices (M,) of all matches (always set).
    * ``hidden_states``: per transformer layer (feat0, feat1) if ``output_hidden_states``.
    * ``image_sizes``: ((H0, W0), (H1, W1)) input sizes.
    """

    loss: torch.Tensor | None = None
    matches: torch.Tensor | None = None
    matching_scores: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    hidden_states: tuple[Any, ...] | None = None
    attentions: tuple[Any, ...] | None = None
    coarse_matches: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    image_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None


@dataclass
class EfficientLoFTRModelOutput(_ModelOutput):
    """Backbone + transformer features.

    * ``feature_maps``: like Transformers' ``BackboneOutput`` when both images have the same size:
      (coarse (B, 2, 256, H/8, W/8) after the transformer, x1 (2B, 64, H/2, W/2), x2 (2B, 128, H/4, W/4)),
      batch order of x1/x2 = (pair0 image0, pair0 image1, pair1 image0, ...). None if sizes differ.
    * ``coarse_features0/1`` (B, 256, h, w) after the transformer, ``backbone_features0/1``
      (x1, x2, coarse-before-transformer) per image; ``hidden_states`` per transformer layer.
    """

    feature_maps: tuple[torch.Tensor, ...] | None = None
    coarse_features0: torch.Tensor | None = None
    coarse_features1: torch.Tensor | None = None
    backbone_features0: tuple[torch.Tensor, ...] | None = None
    backbone_features1: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[Any, ...] | None = None


# --------------------------------------------------------------------------- shared base


def _autocast_context(device: torch.device, mode: str | None) -> contextlib.AbstractContextManager:
    if mode is None:
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    if device.type == "cpu" and dtype != torch.bfloat16:
        raise ValueError("mixed_precision='fp16' is only supported on CUDA; use 'bf16' on CPU (opt-in, changes outputs)")
    return torch.autocast(device_type=device.type, dtype=dtype)


class _EfficientLoFTRBase(nn.Module):
    config_class = EfficientLoFTRConfig

    def __init__(self, config: EfficientLoFTRConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = EfficientLoFTRConfig()
        elif isinstance(config, dict):
            config = EfficientLoFTRConfig.from_dict(config)
        elif not isinstance(config, EfficientLoFTRConfig):
            raise TypeError(f"config must be an EfficientLoFTRConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.backbone = RepVGGBackbone(config)
        self.loftr_coarse = LocalFeatureTransformer(config)
        self.eval()

    # ---- weights entry points (implemented in loftr_sfm.model.weights)
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: Any = None,
        *,
        config: EfficientLoFTRConfig | dict | None = None,
        reparameterize: bool = True,
        device: str | None = None,
        **overrides: Any,
    ) -> Any:
        """Load weights (Transformers directory, .safetensors, original .ckpt, state dict, hub id); see ``weights.from_pretrained``."""
        from . import weights

        args = () if path_or_hub_id is None else (path_or_hub_id,)
        return weights.from_pretrained(cls, *args, config=config, reparameterize=reparameterize, device=device, **overrides)

    def save_pretrained(self, directory: Any) -> Any:
        """Write ``config.json`` + ``model.safetensors`` (Transformers layout; training form only)."""
        from . import weights

        return weights.save_pretrained(self, directory)

    # ---- re-parameterization
    @property
    def is_reparameterized(self) -> bool:
        fine = getattr(self, "fine_preprocess", None)
        return self.backbone.is_reparameterized and (fine is None or fine.is_reparameterized)

    def reparameterize(self) -> "_EfficientLoFTRBase":
        """Fold RepVGG branches into ``rbr_reparam`` and the FPN BatchNorm into its conv (in place, idempotent)."""
        self.backbone.reparameterize()
        fine = getattr(self, "fine_preprocess", None)
        if fine is not None:
            fine.reparameterize()
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` accepting the training or the re-parameterized form (see module doc)."""
        sd = dict(state_dict)
        if any(k.startswith("matcher.") for k in sd):
            sd = {(k[len("matcher."):] if k.startswith("matcher.") else k): v for k, v in sd.items()}
        sd_fused_backbone = any(".rbr_reparam." in k for k in sd)
        sd_train_backbone = any(".rbr_dense." in k for k in sd)
        if sd_fused_backbone and not self.backbone.is_reparameterized:
            self.backbone.reparameterize()
        elif sd_train_backbone and self.backbone.is_reparameterized:
            raise ValueError(
                "this model is re-parameterized but the state dict has the training-form backbone (rbr_dense/rbr_1x1); "
                "load it into a fresh model, then call reparameterize()"
            )
        fine = getattr(self, "fine_preprocess", None)
        if fine is not None and not fine.is_reparameterized and any(
            k.startswith("fine_preprocess.layer") and k.endswith("outconv2.0.bias") for k in sd
        ):
            fine.reparameterize()  # the state dict has the folded FPN
        if fine is not None and fine.is_reparameterized:
            eps = self.config.batch_norm_eps
            for level in (1, 2):
                p = f"fine_preprocess.layer{level}_outconv2"
                if f"{p}.1.running_var" in sd:
                    bn = nn.BatchNorm2d(sd[f"{p}.1.running_var"].shape[0], eps=eps)
                    bn.load_state_dict({k[len(p) + 3:]: sd.pop(k) for k in list(sd) if k.startswith(f"{p}.1.")})
                    weight, bias = fuse_conv_bn(sd[f"{p}.0.weight"].float(), bn)
                    sd[f"{p}.0.weight"], sd[f"{p}.0.bias"] = weight.detach(), bias.detach()
        return super().load_state_dict(sd, strict=strict, assign=assign)

    # ---- input handling
    def _prepare_inputs(
        self, pixel_values: torch.Tensor | None, image0: torch.Tensor | None, image1: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if pixel_values is not None:
            if image0 is not None or image1 is not None:
                raise ValueError("pass either pixel_values or image0/image1, not both")
            if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
                raise ValueError(
                    f"pixel_values must have shape (batch, 2, channels, height, width), got {tuple(pixel_values.shape)}"
                )
            image0, image1 = pixel_values[:, 0, :1], pixel_values[:, 1, :1]
        if image0 is None or image1 is None:
            raise ValueError("EfficientLoFTR needs pixel_values (B, 2, C, H, W) or both image0 and image1 (B, 1, H, W)")
        for name, img in (("image0", image0), ("image1", image1)):
            if img.ndim != 4 or img.shape[1] != 1:
                raise ValueError(f"{name} must have shape (batch, 1, height, width) (grayscale in [0, 1]), got {tuple(img.shape)}")
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(f"image0 and image1 have different batch sizes ({image0.shape[0]} vs {image1.shape[0]})")
        m = self.config.size_multiple
        for name, img in (("image0", image0), ("image1", image1)):
            h, w = img.shape[-2:]
            if h % m or w % m or h < 2 * m or w < 2 * m:
                raise ValueError(
                    f"{name} has size {h}x{w} (HxW); EfficientLoFTR needs height and width that are multiples of {m} "
                    f"and at least {2 * m}. Resize with EfficientLoFTRImageProcessor (loftr_sfm.model.processing), "
                    f"which rounds sizes to multiples of {m} and remembers the scale."
                )
        param = next(self.parameters())
        image0 = image0.to(device=param.device, dtype=param.dtype)
        image1 = image1.to(device=param.device, dtype=param.dtype)
        return image0, image1

    def _use_channels_last(self, device: torch.device, precision: str | None) -> bool:
        # bf16 convolutions on CPU only have a fast kernel in channels_last (NCHW falls back to a ~10x slower path)
        return self.config.channels_last or (precision == "bf16" and device.type == "cpu")

    def _run_backbone(
        self, image0: torch.Tensor, image1: torch.Tensor, precision: str | None = None
    ) -> tuple[tuple, tuple]:
        """Backbone maps per image: ((x1, x2, c) of image0, (x1, x2, c) of image1); one batched run if sizes are equal."""
        B = image0.shape[0]
        cl = self._use_channels_last(image0.device, precision)
        if cl:
            self.backbone.to(memory_format=torch.channels_last)
        if image0.shape == image1.shape:
            feats = self.backbone(torch.cat([image0, image1], dim=0), channels_last=cl)
            return tuple(f[:B] for f in feats), tuple(f[B:] for f in feats)
        return self.backbone(image0, channels_last=cl), self.backbone(image1, channels_last=cl)

    def _precision(self, mixed_precision: str | None) -> str | None:
        """Forward override ("fp32", "fp16", "bf16") or the config's ``mixed_precision``."""
        if mixed_precision is None:
            return self.config.mixed_precision
        if mixed_precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'fp32', 'fp16', 'bf16' or None, got {mixed_precision!r}")
        return None if mixed_precision == "fp32" else mixed_precision

    def _features(
        self, image0: torch.Tensor, image1: torch.Tensor, output_hidden_states: bool, precision: str | None = None
    ) -> dict[str, Any]:
        with _autocast_context(image0.device, precision):
            bb0, bb1 = self._run_backbone(image0, image1, precision)
        # On CPU the transformer stays fp32 (bf16 attention / depthwise conv have no fast CPU kernels)
        tf_precision = precision if image0.device.type != "cpu" else None
        with _autocast_context(image0.device, tf_precision):
            c0, c1, hidden = self.loftr_coarse(
                bb0[2].contiguous().to(image0.dtype if tf_precision is None else bb0[2].dtype),
                bb1[2].contiguous().to(image0.dtype if tf_precision is None else bb1[2].dtype),
                output_hidden_states=output_hidden_states,
            )
        return {"bb0": bb0, "bb1": bb1, "c0": c0.float(), "c1": c1.float(), "hidden": hidden}


# --------------------------------------------------------------------------- models


class EfficientLoFTRModel(_EfficientLoFTRBase):
    """Backbone + coarse transformer of EfficientLoFTR (Transformers' ``EfficientLoFTRModel``)."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        *,
        image0: torch.Tensor | None = None,
        image1: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        mixed_precision: str | None = None,
        labels: Any = None,
        **processor_outputs: Any,
    ) -> EfficientLoFTRModelOutput:
        _check_processor_outputs(processor_outputs)
        if labels is not None:
            raise ValueError("EfficientLoFTR is inference-only; labels are not supported")
        image0, image1 = self._prepare_inputs(pixel_values, image0, image1)
        f = self._features(image0, image1, output_hidden_states, self._precision(mixed_precision))
        feature_maps = None
        if image0.shape == image1.shape:
            B = image0.shape[0]

            def inter(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return torch.stack([a, b], dim=1).reshape(2 * B, *a.shape[1:])

            feature_maps = (
                torch.stack([f["c0"], f["c1"]], dim=1),
                inter(f["bb0"][0], f["bb1"][0]),
                inter(f["bb0"][1], f["bb1"][1]),
            )
        return EfficientLoFTRModelOutput(
            feature_maps=feature_maps,
            coarse_features0=f["c0"],
            coarse_features1=f["c1"],
            backbone_features0=tuple(f["bb0"]),
            backbone_features1=tuple(f["bb1"]),
            hidden_states=tuple(f["hidden"]) if f["hidden"] is not None else None,
        )


class EfficientLoFTRForKeypointMatching(_EfficientLoFTRBase):
    """The EfficientLoFTR semi-dense matcher (original semantics, Transformers-style API).

    ``forward(pixel_values=None, *, image0=None, image1=None, threshold=None,
    output_hidden_states=False)`` -> :class:`EfficientLoFTRKeypointMatchingOutput`.
    """

    def __init__(self, config: EfficientLoFTRConfig | None = None) -> None:
        super().__init__(config)
        self.fine_preprocess = FinePreprocess(self.config)
        self.eval()

    @torch.inference_mode()
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        *,
        image0: torch.Tensor | None = None,
        image1: torch.Tensor | None = None,
        threshold: float | None = None,
        output_hidden_states: bool = False,
        mixed_precision: str | None = None,
        labels: Any = None,
        **processor_outputs: Any,
    ) -> EfficientLoFTRKeypointMatchingOutput:
        """Match B pairs. ``threshold`` overrides ``coarse_matching_threshold``; ``mixed_precision``
        ("fp32", "fp16" on CUDA, "bf16") overrides the config's; coarse and fine matching stay fp32."""
        _check_processor_outputs(processor_outputs)
        if labels is not None:
            raise ValueError("EfficientLoFTR is inference-only; labels are not supported")
        cfg = self.config
        precision = self._precision(mixed_precision)
        image0, image1 = self._prepare_inputs(pixel_values, image0, image1)
        B = image0.shape[0]
        (H0, W0), (H1, W1) = image0.shape[-2:], image1.shape[-2:]
        f = self._features(image0, image1, output_hidden_states, precision)
        c0, c1 = f["c0"], f["c1"]
        hw0, hw1 = tuple(c0.shape[-2:]), tuple(c1.shape[-2:])
        C = c0.shape[1]

        # 1. coarse matching (blockwise, fp32)
        thr = cfg.coarse_matching_threshold if threshold is None else float(threshold)
        b_ids, i_ids, j_ids, mconf = coarse_match(
            c0.flatten(2).transpose(1, 2),
            c1.flatten(2).transpose(1, 2),
            hw0,
            hw1,
            threshold=thr,
            temperature=cfg.coarse_matching_temperature,
            border=cfg.coarse_matching_border_removal,
            skip_softmax=cfg.coarse_matching_skip_softmax,
            block_size=cfg.coarse_matching_block_size,
        )
        stride = cfg.coarse_stride
        kc0 = torch.stack([i_ids % hw0[1], i_ids // hw0[1]], dim=1).float() * stride
        kc1 = torch.stack([j_ids % hw1[1], j_ids // hw1[1]], dim=1).float() * stride

        # 2. fine network (up to its 1/2-resolution map) and windows at the matched cells only; the
        #    last x2 bilinear upsampling is evaluated at the window pixels only
        M = b_ids.numel()
        if M:
            W = cfg.fine_kernel_size
            # one image side at a time (lower peak memory; the original batches both sides)
            with _autocast_context(image0.device, precision):
                fine0 = self._fine_map(c0 / C**0.5, f["bb0"][1], f["bb0"][0], precision)
            win0 = gather_windows_upsampled(fine0, b_ids, i_ids, hw0[1], W, 0)
            del fine0
            with _autocast_context(image0.device, precision):
                fine1 = self._fine_map(c1 / C**0.5, f["bb1"][1], f["bb1"][0], precision)
            win1 = gather_windows_upsampled(fine1, b_ids, j_ids, hw1[1], W, 1)
            del fine1
            # 3. two-stage fine matching
            off0, off1, expec, _, _ = fine_match(win0, win1, cfg.fine_matching_slice_dim, cfg.fine_matching_regress_temperature)
            kp0 = kc0 + off0
            kp1 = (kc1 + off1) + expec
        else:
            kp0, kp1 = kc0, kc1

        return self._pack(B, b_ids, i_ids, j_ids, mconf, kp0, kp1, (H0, W0), (H1, W1), f["hidden"])

    def _fine_map(
        self, feat_c: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor, precision: str | None = None
    ) -> torch.Tensor:
        if self._use_channels_last(feat_c.device, precision):
            self.fine_preprocess.to(memory_format=torch.channels_last)
            feat_c, x2, x1 = (t.contiguous(memory_format=torch.channels_last) for t in (feat_c, x2, x1))
        return self.fine_preprocess.forward_half(feat_c, x2, x1).float()

    @staticmethod
    def _pack(
        B: int,
        b_ids: torch.Tensor,
        i_ids: torch.Tensor,
        j_ids: torch.Tensor,
        mconf: torch.Tensor,
        kp0: torch.Tensor,
        kp1: torch.Tensor,
        size0: tuple[int, int],
        size1: tuple[int, int],
        hidden: Any,
    ) -> EfficientLoFTRKeypointMatchingOutput:
        device = kp0.device
        counts = torch.bincount(b_ids, minlength=B) if b_ids.numel() else torch.zeros(B, dtype=torch.long, device=device)
        K = int(counts.max()) if B else 0
        keypoints = torch.zeros(B, 2, K, 2, device=device)
        matches = torch.full((B, 2, K), -1, dtype=torch.long, device=device)
        scores = torch.zeros(B, 2, K, device=device)
        if b_ids.numel():
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(b_ids.numel(), device=device) - starts[b_ids]  # b_ids are sorted
            norm0 = torch.tensor([size0[1], size0[0]], dtype=torch.float32, device=device)
            norm1 = torch.tensor([size1[1], size1[0]], dtype=torch.float32, device=device)
            keypoints[b_ids, 0, slot] = kp0.float() / norm0
            keypoints[b_ids, 1, slot] = kp1.float() / norm1
            matches[b_ids, 0, slot] = slot
            matches[b_ids, 1, slot] = slot
            scores[b_ids, 0, slot] = mconf.float()
            scores[b_ids, 1, slot] = mconf.float()
        return EfficientLoFTRKeypointMatchingOutput(
            matches=matches,
            matching_scores=scores,
            keypoints=keypoints,
            hidden_states=tuple(hidden) if hidden is not None else None,
            coarse_matches=(b_ids, i_ids, j_ids),
            image_sizes=(tuple(size0), tuple(size1)),
        )
