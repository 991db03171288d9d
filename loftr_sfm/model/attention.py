"""Coarse transformer of EfficientLoFTR: aggregated attention with the original 2-D RoPE layout.

Names follow the original release: ``loftr_coarse.layers.{0..2n-1}.{aggregate, norm1, q_proj,
k_proj, v_proj, merge, mlp.0, mlp.2, norm2}``; even layers are self-attention (with RoPE),
odd layers cross-attention (no RoPE), and the cross update is sequential
(``f0 = L(f0, f1); f1 = L(f1, f0_new)``) exactly like the original.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import make_activation
from .config import EfficientLoFTRConfig

logger = logging.getLogger(__name__)


class RoPE2D(nn.Module):
    """The original's ``RoPEPositionEncodingSine`` without its 256x256 cap and 64 MB buffers.

    Positions on the aggregated grid are 1-based, ``i = 1..h`` (row) and ``j = 1..w`` (col),
    scaled by ``npe[0]/npe[2]`` and ``npe[1]/npe[3]``. Frequencies ``w_k = theta^(-k/K)``,
    ``K = hidden/4``. Over the full hidden vector (before the head split) channels (4k, 4k+1)
    rotate by ``i*w_k`` and (4k+2, 4k+3) by ``j*w_k``; rotation ``(a, b) -> (a cos - b sin,
    b cos + a sin)``. With ``fp16_tables`` the sin/cos values are rounded to float16 (original).
    """

    def __init__(self, hidden_size: int, theta: float, npe: list[int], fp16_tables: bool) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_freq = hidden_size // 4
        self.theta = float(theta)
        self.npe = list(npe)
        self.fp16_tables = fp16_tables
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _axis_tables(self, n: int, train: int, test: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Computed on >= 256 positions like the original's table (identical float ops -> identical values).
        rows = max(256, n)
        pos = torch.ones(rows, 1, device=device).cumsum(0).float()
        pos = pos * train / test
        div = torch.exp(torch.arange(0, self.num_freq, 1, device=device).float() * (-math.log(self.theta) / self.num_freq))
        ang = pos * div[None, :]  # (rows, K)
        sin, cos = torch.sin(ang), torch.cos(ang)
        if self.fp16_tables:
            sin, cos = sin.half().float(), cos.half().float()
        return sin[:n], cos[:n]

    def tables(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (h, w, hidden) in ``dtype``."""
        key = (h, w, str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        si, ci = self._axis_tables(h, self.npe[0], self.npe[2], device)  # (h, K)
        sj, cj = self._axis_tables(w, self.npe[1], self.npe[3], device)  # (w, K)
        K = self.num_freq

        def interleave(ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
            full = torch.empty(h, w, K, 4, device=device)
            full[..., 0] = ti[:, None, :]
            full[..., 1] = ti[:, None, :]
            full[..., 2] = tj[None, :, :]
            full[..., 3] = tj[None, :, :]
            return full.reshape(h, w, 4 * K).to(dtype)

        out = (interleave(ci, cj), interleave(si, sj))
        if len(self._cache) > 32:
            self._cache.clear()
        self._cache[key] = out
        return out

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(-1, (-1, 2))
        x1, x2 = x.unbind(dim=-1)
        return torch.stack((-x2, x1), dim=-1).flatten(start_dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, hidden) -> same shape, rotated."""
        cos, sin = self.tables(x.shape[1], x.shape[2], x.device, x.dtype)
        return (x * cos) + (self.rotate_half(x) * sin)


class AggregatedAttentionLayer(nn.Module):
    """One EfficientLoFTR encoder layer ``L(x, source)``; x, source: (N, C, H, W) at 1/8, H, W multiples of the stride.

    q from a depthwise 4x4/stride-4 conv of x, k/v from a 4x4 max-pool of source (both through
    ``norm1``), multi-head attention on the aggregated grids, message upsampled x4 (bilinear,
    align_corners=False), ``out = x + norm2(mlp(cat[x, m]))``.
    """

    def __init__(self, config: EfficientLoFTRConfig, rope: RoPE2D | None) -> None:
        super().__init__()
        C = config.hidden_size
        self.nhead = config.num_attention_heads
        self.head_dim = config.head_dim
        self.agg_q = config.q_aggregation_stride
        self.agg_kv = config.kv_aggregation_stride
        bias = config.attention_bias
        self.aggregate = (
            nn.Conv2d(C, C, kernel_size=self.agg_q, stride=self.agg_q, padding=0, bias=False, groups=C)
            if self.agg_q != 1
            else nn.Identity()
        )
        self.max_pool = nn.MaxPool2d(self.agg_kv, self.agg_kv) if self.agg_kv != 1 else nn.Identity()
        self.rope = rope
        self.q_proj = nn.Linear(C, C, bias=bias)
        self.k_proj = nn.Linear(C, C, bias=bias)
        self.v_proj = nn.Linear(C, C, bias=bias)
        self.merge = nn.Linear(C, C, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(2 * C, config.intermediate_size, bias=False),
            make_activation(config.mlp_activation_function),
            nn.Linear(config.intermediate_size, C, bias=False),
        )
        self.norm1 = nn.LayerNorm(C)
        self.norm2 = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        N, C, H0, W0 = x.shape
        query = self.norm1(self.aggregate(x).permute(0, 2, 3, 1))  # (N, h, w, C)
        src = self.norm1(self.max_pool(source).permute(0, 2, 3, 1))
        q, k, v = self.q_proj(query), self.k_proj(src), self.v_proj(src)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        h, w = q.shape[1], q.shape[2]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, h, w, C) -> (N, nhead, h*w, d)
            return t.reshape(t.shape[0], -1, self.nhead, self.head_dim).permute(0, 2, 1, 3).contiguous()

        m = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (N, nhead, L, d)
        m = self.merge(m.permute(0, 2, 1, 3).reshape(N, -1, self.nhead * self.head_dim))  # (N, L, C)
        m = m.reshape(N, h, w, C).permute(0, 3, 1, 2)
        if self.agg_q != 1:
            m = F.interpolate(m, scale_factor=self.agg_q, mode="bilinear", align_corners=False)
        m = self.mlp(torch.cat([x, m], dim=1).permute(0, 2, 3, 1))  # (N, H0, W0, C)
        m = self.norm2(m).permute(0, 3, 1, 2)
        return x + m


class LocalFeatureTransformer(nn.Module):
    """``2 * num_attention_layers`` layers alternating self / cross; forward(f0, f1) -> (f0', f1'), (N, C, H/8, W/8) each."""

    def __init__(self, config: EfficientLoFTRConfig) -> None:
        super().__init__()
        rope = RoPE2D(config.hidden_size, config.rope_theta, config.npe, config.rope_fp16_tables)
        self.layers = nn.ModuleList(
            [AggregatedAttentionLayer(config, rope if i % 2 == 0 else None) for i in range(2 * config.num_attention_layers)]
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, feat0: torch.Tensor, feat1: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        hidden = [] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if i % 2 == 0:  # self
                feat0 = layer(feat0, feat0)
                feat1 = layer(feat1, feat1)
            else:  # cross, sequential update (original semantics)
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
            if hidden is not None:
                hidden.append((feat0, feat1))
        return feat0, feat1, hidden
