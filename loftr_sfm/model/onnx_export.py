"""Export the EfficientLoFTR matcher to ONNX (``loftr-sfm export-onnx``) and check it with onnxruntime.

The exported graph is the whole matcher, backbone to sub-pixel keypoints, with the original
model's semantics (the same numbers as :class:`EfficientLoFTRForKeypointMatching`):

* **inputs** ``image0``, ``image1``: (B, 1, H, W) float32 grayscale in [0, 1] (what
  :class:`EfficientLoFTRImageProcessor` makes, channel 0). H and W are fixed at export (multiples
  of 32); the batch size B is dynamic. With ``dynamic_size=True`` H and W are free too (any
  multiples of 32, up to 8192 px; the RoPE tables are then computed inside the graph).
  ``threshold``: optional 0-d float32, the coarse threshold (an input with a default stored in the
  graph, i.e. an overridable initializer: onnxruntime uses the default when it is not fed).
* **outputs**, M = number of matches over the batch (variable):
  ``keypoints0``, ``keypoints1`` (M, 2) float32: x, y in INPUT pixels (integer = pixel centre,
  sub-pixel; multiply by original/input size to get original pixels);
  ``matching_scores`` (M,) float32: coarse confidence (a logit with the optimized preset);
  ``batch_indexes`` (M,) int64, sorted; ``coarse_indexes`` (M, 2) int64: the (i, j) coarse cells
  (row * (W/8) + col) of each match.

Differences from the PyTorch module (same results): coarse matching is dense (the (B, L0, L1)
matrix, L = H/8 * W/8, exists in the graph: ~92 MB per copy at 640x480, ~600 MB at 1024x768),
with the same log-domain mutual-nearest-neighbour rule and tie rule (first j); both images go
through the backbone and the fine FPN as one batch. The preset (full: dual-softmax probabilities;
optimized: logits) is fixed at export, the threshold is not. Precision: fp32 only.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loftr_sfm.io import InputError, atomic_path
from loftr_sfm.model.attention import RoPE2D
from loftr_sfm.model.config import EfficientLoFTRConfig
from loftr_sfm.model.matching import _border_valid, fine_match, gather_windows_upsampled
from loftr_sfm.model.onnx_cli import DEFAULT_OPSET, SUPPORTED_OPSETS

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image0", "image1", "threshold")
OUTPUT_NAMES = ("keypoints0", "keypoints1", "matching_scores", "batch_indexes", "coarse_indexes")
METADATA_PREFIX = "loftr_sfm."
MAX_SIDE = 8192  # the RoPE tables of the original cover a 256 x 256 aggregated grid


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"ONNX export needs {' and '.join(missing)}: pip install 'loftr_sfm[onnx]'")


def parse_size(size: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"640x480"`` or (640, 480) -> (width, height), both multiples of 32 and at least 64."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InputError(f"size {size!r}: expected WIDTHxHEIGHT, e.g. 640x480")
        w, h = int(parts[0]), int(parts[1])
    else:
        w, h = (int(v) for v in size)
    if w % 32 or h % 32 or min(w, h) < 64 or max(w, h) > MAX_SIDE:
        raise InputError(f"size {w}x{h}: EfficientLoFTR needs width and height that are multiples of 32, "
                         f"between 64 and {MAX_SIDE} (e.g. 640x480, 320x256, 1024x768)")
    return w, h


class _GraphRoPE(RoPE2D):
    """RoPE2D whose tables are built without Python-side caching (traceable with symbolic sizes)."""

    def tables(self, h: Any, w: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        def axis(n: Any, train: int, test: int) -> tuple[torch.Tensor, torch.Tensor]:
            # the same float ops as RoPE2D._axis_tables on positions 1..n (identical values)
            pos = torch.arange(1, n + 1, device=device).float()[:, None] * train / test
            div = torch.exp(torch.arange(0, self.num_freq, 1, device=device).float() * (-math.log(self.theta) / self.num_freq))
            ang = pos * div[None, :]
            sin, cos = torch.sin(ang), torch.cos(ang)
            if self.fp16_tables:
                sin, cos = sin.half().float(), cos.half().float()
            return sin, cos

        si, ci = axis(h, self.npe[0], self.npe[2])  # (h, K)
        sj, cj = axis(w, self.npe[1], self.npe[3])  # (w, K)

        def interleave(ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
            a = ti[:, None, :].expand(-1, w, -1)  # (h, w, K)
            b = tj[None, :, :].expand(h, -1, -1)
            return torch.stack([a, a, b, b], dim=-1).reshape(h, w, 4 * self.num_freq).to(dtype)

        return interleave(ci, cj), interleave(si, sj)


class EfficientLoFTRMatchingGraph(nn.Module):
    """The exportable matcher: ``forward(image0, image1, threshold)`` -> the five outputs of the module doc.

    Shares the parameters of ``model`` (a re-parameterized ``EfficientLoFTRForKeypointMatching``);
    ``config`` (default: the model's) sets the coarse rule (softmax or the optimized preset's
    logits, temperature, border); ``threshold`` is a 0-d tensor.
    """

    def __init__(self, model: nn.Module, config: EfficientLoFTRConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = config or model.config

    def forward(self, image0: torch.Tensor, image1: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, cfg = self.model, self.cfg
        B = image0.shape[0]
        x1, x2, c = m.backbone(torch.cat([image0, image1], dim=0))
        c0, c1, _ = m.loftr_coarse(c[:B], c[B:])
        h, w = c0.shape[-2], c0.shape[-1]
        C = c0.shape[1]

        # coarse matching, dense: log P = (S - lse_row) + (S - lse_col) (monotonic in P), the mutual
        # nearest neighbour on log P, the first j on ties, P > threshold at the chosen entry
        f0 = c0.flatten(2).transpose(1, 2) / C**0.5
        f1 = c1.flatten(2).transpose(1, 2) / C**0.5
        s = torch.matmul(f0, f1.transpose(1, 2)) / cfg.coarse_matching_temperature  # (B, L0, L1)
        if cfg.coarse_matching_skip_softmax:
            lp = s
        else:
            row_max, col_max = s.amax(2, keepdim=True), s.amax(1, keepdim=True)
            row_log = torch.log((s - row_max).exp().sum(2, keepdim=True))
            col_log = torch.log((s - col_max).exp().sum(1, keepdim=True))
            lp = (s - (row_max + row_log)) + (s - (col_max + col_log))
        valid = _border_valid(h, w, cfg.coarse_matching_border_removal, s.device)
        mnn = (lp == lp.amax(2, keepdim=True)) & (lp == lp.amax(1, keepdim=True)) & valid[None, :, None] & valid[None, None, :]
        has, j = mnn.to(torch.float32).max(dim=2)  # first j of each row (ONNX ArgMax: first index)
        sb = s.gather(2, j[..., None])[..., 0]  # (B, L0)
        if cfg.coarse_matching_skip_softmax:
            conf = sb
        else:
            cm, cl = col_max[:, 0].gather(1, j), col_log[:, 0].gather(1, j)
            conf = torch.exp((sb - row_max[..., 0]) - row_log[..., 0]) * torch.exp((sb - cm) - cl)
        ok = (has > 0) & (conf > threshold)
        b_ids, i_ids = torch.nonzero(ok, as_tuple=True)
        j_ids = j[b_ids, i_ids]
        mconf = conf[b_ids, i_ids]
        stride = cfg.coarse_stride
        wt = torch.full((), w, dtype=torch.long, device=s.device)  # a tensor: symbolic widths stay graph values
        kc0 = torch.stack([i_ids % wt, i_ids // wt], dim=1).float() * stride
        kc1 = torch.stack([j_ids % wt, j_ids // wt], dim=1).float() * stride

        # fine stage at the matched cells only (both images' FPN as one batch). One dummy match (cell 0
        # of pair 0) is appended and dropped at the end: the fine tensors are never empty, as
        # onnxruntime's Einsum crashes (SIGFPE) on an empty batch, and the graph needs no branch for M = 0.
        fine = m.fine_preprocess.forward_half(torch.cat([c0, c1], dim=0) / C**0.5, x2, x1)
        zero = torch.zeros(1, dtype=b_ids.dtype, device=b_ids.device)
        bf, i_f, jf = torch.cat([b_ids, zero]), torch.cat([i_ids, zero]), torch.cat([j_ids, zero])
        win0 = gather_windows_upsampled(fine[:B], bf, i_f, wt, cfg.fine_kernel_size, 0)
        win1 = gather_windows_upsampled(fine[B:], bf, jf, wt, cfg.fine_kernel_size, 1)
        off0, off1, expec, _, _ = fine_match(win0, win1, cfg.fine_matching_slice_dim, cfg.fine_matching_regress_temperature)
        kp0 = kc0 + off0[:-1]
        kp1 = (kc1 + off1[:-1]) + expec[:-1]
        return kp0, kp1, mconf, b_ids, torch.stack([i_ids, j_ids], dim=1)


@contextlib.contextmanager
def graph_rope(model: nn.Module) -> Iterator[None]:
    """Within the block, the transformer's self-attention layers build their RoPE tables as graph
    ops (no cache keyed by Python ints), so that height and width can be symbolic when tracing."""
    c = model.config
    rope = _GraphRoPE(c.hidden_size, c.rope_theta, c.npe, c.rope_fp16_tables)
    layers = list(model.loftr_coarse.layers)
    saved = [layer.rope for layer in layers]
    try:
        for layer in layers:
            if layer.rope is not None:
                layer.rope = rope
        yield
    finally:
        for layer, old in zip(layers, saved):
            layer.rope = old


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.export / onnxscript log every folding decision at INFO and warn about things that are fine
    here (no torchvision, axis names): keep their warnings and errors only, and hide those warnings."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _rename_dim(proto: Any, old: str, new: str) -> None:
    """Rename a symbolic dimension (e.g. torch.export's ``u0`` for the number of matches) in the graph's values."""
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = new


def _load_model(weights: Any, device: str = "cpu") -> nn.Module:
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    if isinstance(weights, nn.Module):
        model = weights
    else:
        model = EfficientLoFTRForKeypointMatching.from_pretrained(weights, device=device)
    if not getattr(model, "is_reparameterized", True):
        raise InputError("export a re-parameterized model (model.reparameterize(); from_pretrained does it)")
    return model.eval()


def _export_config(model: nn.Module, optimized: bool, threshold: float | None) -> EfficientLoFTRConfig:
    cfg = model.config
    if optimized and not cfg.coarse_matching_skip_softmax:
        cfg = cfg.replace(coarse_matching_skip_softmax=True, coarse_matching_threshold=25.0)
    if threshold is not None:
        cfg = cfg.replace(coarse_matching_threshold=float(threshold))
    return cfg


def textured_pair(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic pair (uint8, (H, W) each) with texture at every scale: image1 is image0 shifted
    by (+13, +7) px (edge-padded). For export checks when no real pair is given."""
    rng = np.random.default_rng(seed)
    import cv2

    base = np.zeros((height + 7, width + 13), np.float32)
    for k in (4, 8, 16, 32, 64):
        noise = rng.random((base.shape[0] // k + 2, base.shape[1] // k + 2)).astype(np.float32)
        base += cv2.resize(noise, (base.shape[1] + 2 * k, base.shape[0] + 2 * k), interpolation=cv2.INTER_CUBIC)[k:-k, k:-k] * k
    base = (base - base.min()) / (base.max() - base.min()) * 255
    img = base.astype(np.uint8)
    return np.ascontiguousarray(img[7:, 13:]), np.ascontiguousarray(img[:height, :width])


def export_onnx(
    weights: Any,
    output: str | os.PathLike,
    *,
    size: str | tuple[int, int] = (640, 480),
    threshold: float | None = None,
    optimized: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = False,
    check: bool = True,
) -> Path:
    """Export the matcher to one ``.onnx`` file (weights inside; written atomically).

    Args:
        weights: anything ``from_pretrained`` takes (hub id, Transformers folder, ``.safetensors``,
            original ``.ckpt``) or a loaded re-parameterized ``EfficientLoFTRForKeypointMatching``.
        size: input (width, height) or ``"WIDTHxHEIGHT"``, multiples of 32 (with ``dynamic_size``:
            the size used for tracing and the check).
        threshold: the graph's default coarse threshold (default: the config's; 25 logits with
            ``optimized``); callers may feed another one at run time.
        optimized: the paper's optimized preset (no dual softmax; scores are logits).
        opset: ONNX opset (18 to 23).
        dynamic_size: H and W as graph dimensions (any multiples of 32).
        check: run the graph with onnxruntime on a synthetic textured pair and compare with PyTorch
            (logged; raises if the coarse matches differ or keypoints differ by more than 1e-3 px).
    Returns:
        the output path. Metadata (``loftr_sfm.size``, ``.threshold``, ``.config``, ...) is stored in the model.
    """
    _require_onnx()
    import onnx
    import onnx.numpy_helper

    if opset not in SUPPORTED_OPSETS:
        raise InputError(f"opset {opset} is not supported; choose one of {list(SUPPORTED_OPSETS)}")
    w, h = parse_size(size)
    output = Path(output)
    model = _load_model(weights)
    cfg = _export_config(model, optimized, threshold)
    graph = EfficientLoFTRMatchingGraph(model, cfg).eval()
    for layer in model.loftr_coarse.layers:  # RoPE tables cached by earlier (inference-mode) runs are rebuilt in the trace
        if layer.rope is not None:
            layer.rope._cache.clear()
    device = next(model.parameters()).device
    a, b = textured_pair(w, h)
    example = tuple(torch.from_numpy(x.astype(np.float32) / 255)[None, None].to(device) for x in (a, b))
    thr = torch.tensor(cfg.coarse_matching_threshold, dtype=torch.float32, device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    dims: dict[int, Any] = {0: batch}
    if dynamic_size:
        dims[2] = 32 * torch.export.Dim("h32", min=2, max=MAX_SIDE // 32)
        dims[3] = 32 * torch.export.Dim("w32", min=2, max=MAX_SIDE // 32)
    logger.info("exporting EfficientLoFTR to ONNX (%dx%d%s, opset %d, %s, threshold %g)", w, h,
                ", dynamic size" if dynamic_size else "", opset,
                "optimized" if cfg.coarse_matching_skip_softmax else "full", cfg.coarse_matching_threshold)
    with torch.no_grad(), _quiet_exporter(), (graph_rope(model) if dynamic_size else contextlib.nullcontext()):
        program = torch.onnx.export(graph, (*example, thr), None, dynamo=True, opset_version=opset,
                                    input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes={"image0": dims, "image1": dims, "threshold": None},
                                    external_data=False, verbose=False)
    proto = program.model_proto
    # the threshold input gets a default: an initializer of the same name (ONNX IR >= 4, "overridable")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(cfg.coarse_matching_threshold, np.float32),
                                                                "threshold"))
    out_dims = {d.dim_param for o in proto.graph.output for d in o.type.tensor_type.shape.dim if d.dim_param}
    for name in out_dims:  # the one data-dependent size: the number of matches
        _rename_dim(proto, name, "matches")
    meta = {
        "size": f"{w}x{h}",
        "dynamic_size": str(bool(dynamic_size)).lower(),
        "threshold": repr(float(cfg.coarse_matching_threshold)),
        "preset": "optimized" if cfg.coarse_matching_skip_softmax else "full",
        "config": json.dumps(cfg.to_dict()),
        "outputs": "keypoints in input pixels (x, y), integer = pixel centre",
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + k, v
    proto.producer_name = "loftr_sfm"
    with atomic_path(output) as tmp:
        onnx.save_model(proto, str(tmp))
    logger.info("wrote %s (%.1f MB)", output, output.stat().st_size / 1e6)
    if check:
        from loftr_sfm.model.onnx_runtime import OnnxKeypointMatcher

        report = compare_with_pytorch(OnnxKeypointMatcher(output), model, example[0], example[1], config=cfg)
        logger.info("onnxruntime vs PyTorch on a synthetic %dx%d pair: %d matches, same coarse matches: %s, "
                    "max keypoint difference %.2e px", w, h, report.matches, report.same_coarse, report.max_keypoint_diff)
        if not report.ok():
            raise RuntimeError(f"{output}: the exported graph does not reproduce the PyTorch model ({report})")
    return output


@dataclass(frozen=True)
class ParityReport:
    """onnxruntime vs PyTorch on one batch: match counts, identical coarse matches, max differences."""

    matches: int
    matches_onnx: int
    same_coarse: bool
    max_keypoint_diff: float  # px, input pixels (inf if the coarse matches differ)
    max_score_diff: float

    def ok(self, tol_px: float = 1e-3) -> bool:
        return self.same_coarse and self.max_keypoint_diff <= tol_px


def compare_with_pytorch(onnx_matcher: Any, model: nn.Module, image0: torch.Tensor, image1: torch.Tensor, *,
                         config: EfficientLoFTRConfig | None = None, threshold: float | None = None) -> ParityReport:
    """Run ``model`` (PyTorch, with ``config``'s coarse rule) and ``onnx_matcher`` (an
    :class:`~loftr_sfm.model.onnx_runtime.OnnxKeypointMatcher`) on (B, 1, H, W) inputs in [0, 1] at
    ``threshold`` (default: the config's) and compare."""
    cfg = config or model.config
    if cfg != model.config:  # e.g. the optimized preset: same weights, another coarse rule
        model = copy.copy(model)  # shares the submodules
        model.config = cfg
    thr = cfg.coarse_matching_threshold if threshold is None else float(threshold)
    with torch.inference_mode():
        ref = model(image0=image0, image1=image1, threshold=thr)
    out = onnx_matcher.run(image0.cpu().numpy(), image1.cpu().numpy(), threshold=thr)
    b, i, j = (t.cpu().numpy() for t in ref.coarse_matches)
    H, W = image0.shape[-2:]
    counts = np.bincount(b, minlength=image0.shape[0])
    slot = np.arange(len(b)) - (np.cumsum(counts) - counts)[b]  # position of each match in its pair
    kp = ref.keypoints.cpu().numpy()
    wh = np.array([W, H], np.float32)
    k0, k1 = kp[b, 0, slot] * wh, kp[b, 1, slot] * wh
    sc = ref.matching_scores.cpu().numpy()[b, 0, slot]
    same = (len(b) == len(out["batch_indexes"]) and np.array_equal(b, out["batch_indexes"])
            and np.array_equal(np.stack([i, j], 1), out["coarse_indexes"]))
    kdiff = sdiff = math.inf
    if same:
        kdiff = float(max(np.abs(k0 - out["keypoints0"]).max(initial=0), np.abs(k1 - out["keypoints1"]).max(initial=0)))
        sdiff = float(np.abs(sc - out["matching_scores"]).max(initial=0))
    return ParityReport(len(b), len(out["batch_indexes"]), bool(same), kdiff, sdiff)
