"""Coarse matching (blockwise dual softmax + mutual nearest neighbour), fine FPN and two-stage fine matching.

Index conventions (as the original release): a coarse cell index ``i`` of an (h, w) grid at
1/8 resolution is ``row * w + col``; its coarse keypoint is ``8 * (col, row)`` in input pixels
(integer = pixel centre). Fine windows: image 0 uses the 8x8 pixels ``8*row + 0..7``, image 1
the 10x10 pixels ``8*row - 1 .. 8*row + 8`` (zero outside the image); window position ``k``
(row-major) is at offset ``(k % 8, k // 8) - 3.5`` from the coarse keypoint.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import fuse_conv_bn
from .config import EfficientLoFTRConfig

logger = logging.getLogger(__name__)

_BLOCK_ELEMENTS = 1 << 23  # default coarse block: about 8 M similarity entries (32 MB in fp32)
_CACHE_ELEMENTS = 1 << 26  # keep the similarity blocks between passes up to 64 M entries (256 MB)


# --------------------------------------------------------------------------- coarse matching


def _border_valid(h: int, w: int, border: int, device: torch.device) -> torch.Tensor:
    """(h*w,) bool: cell is at least ``border`` cells away from every edge (original ``mask_border``)."""
    valid = torch.ones(h, w, dtype=torch.bool, device=device)
    if border > 0:
        valid[:border] = False
        valid[-border:] = False
        valid[:, :border] = False
        valid[:, -border:] = False
    return valid.reshape(-1)


def coarse_match(
    feat0: torch.Tensor,
    feat1: torch.Tensor,
    hw0: tuple[int, int],
    hw1: tuple[int, int],
    *,
    threshold: float,
    temperature: float,
    border: int,
    skip_softmax: bool,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse matches of one batch, computed blockwise (no L0 x L1 matrix is kept).

    Args:
        feat0: (B, L0, C) transformer features of image 0 (not yet divided by sqrt(C)).
        feat1: (B, L1, C) of image 1. hw0/hw1: coarse grid sizes, L = h * w.
    Semantics (original ``CoarseMatching``): ``S = (f0/sqrt(C)) (f1/sqrt(C))^T / temperature``,
    ``P = softmax(S, dim=1) * softmax(S, dim=2)`` (or ``P = S`` with ``skip_softmax``); a match
    (i, j) needs ``P > threshold``, i and j outside the border, ``P[i, j]`` equal to the max of
    its row and of its column; per row the first such j is kept.
    The selection is exactly the dense rule applied to the similarity values computed here. Caveat:
    a float matmul may round the last bit differently for different block shapes, which can only
    matter for exact ties between *identical* feature rows falling into blocks of different shapes
    (automatic blocks are multiples of 16 rows to keep block shapes uniform).
    Row / column maxima are taken on ``log P = (S - lse_row) + (S - lse_col)`` (monotonic in P, no
    exponential over the whole matrix); P itself is only evaluated at the selected entries.
    Returns ``b_ids, i_ids, j_ids`` (M,) int64 sorted by (b, i), and ``mconf`` (M,) float32 = P[b, i, j].
    """
    B, L0, C = feat0.shape
    L1 = feat1.shape[1]
    device = feat0.device
    f0 = feat0.float() / C**0.5
    f1 = feat1.float() / C**0.5
    rows = block_size or max(16, min(L0, _BLOCK_ELEMENTS // max(L1, 1)) // 16 * 16)  # multiple of 16 rows
    valid0 = _border_valid(hw0[0], hw0[1], border, device)
    valid1 = _border_valid(hw1[0], hw1[1], border, device)
    out_b, out_i, out_j, out_c = [], [], [], []

    for b in range(B):
        a, c = f0[b], f1[b]

        def sim(lo: int, hi: int) -> torch.Tensor:
            return torch.einsum("lc,sc->ls", a[lo:hi], c) / temperature

        blocks = [(lo, min(lo + rows, L0)) for lo in range(0, L0, rows)]
        cache: dict[int, torch.Tensor] | None = {} if L0 * L1 <= _CACHE_ELEMENTS else None

        def block_sim(lo: int, hi: int) -> torch.Tensor:
            if cache is not None and lo in cache:
                return cache[lo]
            s = sim(lo, hi)
            if cache is not None:
                cache[lo] = s
            return s

        # max and log-sum kept apart: P = exp((S - max) - log sum) does not round S - lse at the magnitude
        # of the max (logits reach the hundreds; the original's softmax subtracts the max first, as here)
        row_max = torch.zeros(L0, device=device)
        row_log = torch.zeros(L0, device=device)
        col_max = torch.zeros(L1, device=device)
        col_log = torch.zeros(L1, device=device)
        if not skip_softmax:
            # pass 1: row log-sum-exp (complete per block), column log-sum-exp (online over blocks)
            col_max = torch.full((L1,), -math.inf, device=device)
            col_sum = torch.zeros(L1, device=device)
            for lo, hi in blocks:
                s = block_sim(lo, hi)
                rm = s.amax(dim=1)
                row_max[lo:hi] = rm
                row_log[lo:hi] = torch.log((s - rm[:, None]).exp_().sum(dim=1))
                new_max = torch.maximum(col_max, s.amax(dim=0))
                col_sum = col_sum * torch.exp(col_max - new_max) + (s - new_max[None, :]).exp_().sum(dim=0)
                col_max = new_max
            col_log = torch.log(col_sum)
        row_lse, col_lse = row_max + row_log, col_max + col_log  # the log-sum-exps, for the selection in log P

        def log_conf(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(log P, S) of rows lo:hi; log P = (S - lse_row) + (S - lse_col) (P = S with skip_softmax)."""
            s = block_sim(lo, hi)
            if skip_softmax:
                return s, s
            return (s - row_lse[lo:hi, None]).add_(s).sub_(col_lse[None, :]), s

        def conf_from(s: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            if skip_softmax:
                return s
            return torch.exp((s - row_max[i]) - row_log[i]) * torch.exp((s - col_max[j]) - col_log[j])

        # pass 2 (log domain, monotonic): row max + first argmax, column max, rows whose max is tied
        best = torch.empty(L0, device=device)
        best_j = torch.empty(L0, dtype=torch.long, device=device)
        best_s = torch.empty(L0, device=device)
        cmax = torch.full((L1,), -math.inf, device=device)
        tied = torch.zeros(L0, dtype=torch.bool, device=device)
        for lo, hi in blocks:
            lp, s = log_conf(lo, hi)
            v, j = lp.max(dim=1)
            best[lo:hi], best_j[lo:hi] = v, j
            best_s[lo:hi] = s.gather(1, j[:, None])[:, 0]
            cmax = torch.maximum(cmax, lp.amax(dim=0))
            if L1 > 1:  # a second maximum exists iff the max without the first argmax is still v
                lp2 = lp if lp is not s else lp.clone()
                lp2.scatter_(1, j[:, None], -math.inf)
                tied[lo:hi] = lp2.amax(dim=1) == v
        cache = None

        all_i = torch.arange(L0, device=device)
        conf_best = conf_from(best_s, all_i, best_j)
        ok = (conf_best > threshold) & valid0 & valid1[best_j] & (best == cmax[best_j])
        i_ids = torch.nonzero(ok & ~tied).reshape(-1)
        j_ids = best_j[i_ids]
        mconf = conf_best[i_ids]
        tied_rows = torch.nonzero(tied & valid0).reshape(-1)
        if tied_rows.numel():
            # exact rule for rows with several maxima: the first j passing every test
            ti, tj, tc = [i_ids], [j_ids], [mconf]
            for lo, hi in blocks:
                sel = tied_rows[(tied_rows >= lo) & (tied_rows < hi)]
                if not sel.numel():
                    continue
                lp, s = log_conf(lo, hi)
                lp, s = lp[sel - lo], s[sel - lo]
                cols = torch.arange(L1, device=device)
                cf = conf_from(s, sel[:, None], cols[None, :])
                mask = (cf > threshold) & (lp == best[sel, None]) & (lp == cmax[None, :]) & valid1[None, :]
                has, jj = mask.max(dim=1)
                rows_has = has.nonzero().reshape(-1)
                ti.append(sel[rows_has])
                tj.append(jj[rows_has])
                tc.append(cf[rows_has, jj[rows_has]])
            i_ids, j_ids, mconf = torch.cat(ti), torch.cat(tj), torch.cat(tc)
            order = torch.argsort(i_ids)
            i_ids, j_ids, mconf = i_ids[order], j_ids[order], mconf[order]
        out_b.append(torch.full_like(i_ids, b))
        out_i.append(i_ids)
        out_j.append(j_ids)
        out_c.append(mconf)
    return torch.cat(out_b), torch.cat(out_i), torch.cat(out_j), torch.cat(out_c)


def coarse_confidence_dense(feat0: torch.Tensor, feat1: torch.Tensor, temperature: float, skip_softmax: bool) -> torch.Tensor:
    """The dense (B, L0, L1) confidence matrix of the original (for tests and small inputs only)."""
    C = feat0.shape[-1]
    s = torch.einsum("nlc,nsc->nls", feat0.float() / C**0.5, feat1.float() / C**0.5) / temperature
    return s if skip_softmax else F.softmax(s, 1) * F.softmax(s, 2)


# --------------------------------------------------------------------------- fine preprocessing


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0, bias=False)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class FinePreprocess(nn.Module):
    """Fine FPN: fuses the coarse (1/8), x2 (1/4) and x1 (1/2) maps into a full-resolution 64-channel map.

    Names as the original: ``layer3_outconv``, ``layer2_outconv``, ``layer2_outconv2.{0,1,3}``,
    ``layer1_outconv``, ``layer1_outconv2.{0,1,3}``. :meth:`reparameterize` folds the BatchNorm
    ``layerX_outconv2.1`` into the 3x3 conv ``layerX_outconv2.0`` (which gets a bias) and
    replaces it by ``nn.Identity``; a state dict in either form loads after the matching call
    (see ``EfficientLoFTRForKeypointMatching.load_state_dict``).
    """

    def __init__(self, config: EfficientLoFTRConfig) -> None:
        super().__init__()
        d1, d2, d3 = config.out_features[1], config.out_features[2], config.out_features[3]
        eps = config.batch_norm_eps
        self.layer3_outconv = _conv1x1(d3, d3)
        self.layer2_outconv = _conv1x1(d2, d3)
        self.layer2_outconv2 = nn.Sequential(_conv3x3(d3, d3), nn.BatchNorm2d(d3, eps=eps), nn.LeakyReLU(inplace=True), _conv3x3(d3, d2))
        self.layer1_outconv = _conv1x1(d1, d2)
        self.layer1_outconv2 = nn.Sequential(_conv3x3(d2, d2), nn.BatchNorm2d(d2, eps=eps), nn.LeakyReLU(inplace=True), _conv3x3(d2, d1))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")

    @property
    def is_reparameterized(self) -> bool:
        return isinstance(self.layer2_outconv2[1], nn.Identity) and isinstance(self.layer1_outconv2[1], nn.Identity)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each FPN BatchNorm into the preceding 3x3 conv (in place, idempotent)."""
        for seq in (self.layer2_outconv2, self.layer1_outconv2):
            if isinstance(seq[1], nn.Identity):
                continue
            conv, bn = seq[0], seq[1]
            weight, bias = fuse_conv_bn(conv.weight, bn)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True).to(weight.device, weight.dtype)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            seq[0] = fused
            seq[1] = nn.Identity()

    def forward_half(self, feat_c: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The fine map before its last x2 upsampling: (N, 64, H/2, W/2) (see :func:`gather_windows_upsampled`)."""
        c = F.interpolate(self.layer3_outconv(feat_c), scale_factor=2.0, mode="bilinear", align_corners=False)
        y2 = self.layer2_outconv(x2)
        y2 += c  # in place (same value as the original's out-of-place sum; frees memory early)
        del c
        y2 = F.interpolate(self.layer2_outconv2(y2), scale_factor=2.0, mode="bilinear", align_corners=False)
        y1 = self.layer1_outconv(x1)
        y1 += y2
        del y2
        return self.layer1_outconv2(y1)

    def forward(self, feat_c: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """feat_c (N, 256, H/8, W/8) already divided by 16, x2 (N, 128, H/4, W/4), x1 (N, 64, H/2, W/2) -> (N, 64, H, W)."""
        y1 = self.forward_half(feat_c, x2, x1)
        return F.interpolate(y1, scale_factor=2.0, mode="bilinear", align_corners=False)


def gather_windows(
    feat_f: torch.Tensor, b_ids: torch.Tensor, cells: torch.Tensor, w_c: int, window: int, pad: int
) -> torch.Tensor:
    """Fine windows at the given coarse cells only (no unfold over all cells).

    feat_f: (N, C, H, W) full-resolution map; b_ids, cells: (M,) batch index and coarse cell
    index (row * w_c + col). Returns (M, (window + 2*pad)^2, C): the pixels
    ``8*row - pad + 0..window+2*pad-1`` (row-major, zeros outside the image), exactly like
    ``F.unfold(kernel=window + 2*pad, stride=8, padding=pad)`` followed by selection.
    """
    N, C, H, W = feat_f.shape
    size = window + 2 * pad
    stride = window
    if pad:
        feat_f = F.pad(feat_f, [pad, pad, pad, pad])
    hwc = feat_f.permute(0, 2, 3, 1)  # (N, H', W', C) view
    r0 = (cells // w_c) * stride
    c0 = (cells % w_c) * stride
    off = torch.arange(size, device=feat_f.device)
    rows = (r0[:, None] + off[None, :])[:, :, None]  # (M, size, 1)
    cols = (c0[:, None] + off[None, :])[:, None, :]  # (M, 1, size)
    win = hwc[b_ids[:, None, None], rows, cols]  # (M, size, size, C)
    return win.reshape(-1, size * size, C)


def _upsample_taps(p: torch.Tensor, n_in: int) -> tuple[torch.Tensor, ...]:
    """Source rows and weights of output positions p for a x2 bilinear upsampling (align_corners=False).

    Same arithmetic as PyTorch: ``src = max((p + 0.5) * 0.5 - 0.5, 0)``, ``i0 = floor(src)``,
    ``i1 = i0 + (i0 < n_in - 1)``, ``l1 = src - i0``, ``l0 = 1 - l1``; ``valid`` = inside the output.
    """
    valid = (p >= 0) & (p < 2 * n_in)
    src = ((p.float() + 0.5) * 0.5 - 0.5).clamp(min=0.0)
    i0 = src.long().clamp(max=n_in - 1)
    l1 = (src - i0.float()).clamp(0.0, 1.0)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, 1.0 - l1, l1, valid


def gather_windows_upsampled(
    feat_half: torch.Tensor, b_ids: torch.Tensor, cells: torch.Tensor, w_c: int, window: int, pad: int
) -> torch.Tensor:
    """Like :func:`gather_windows` on ``F.interpolate(feat_half, scale_factor=2, bilinear)``, without building it.

    feat_half: (N, C, H/2, W/2). Only the 4 source taps of each window pixel are read, so the
    full-resolution map (the largest tensor of the network: 2 x 64 x H x W floats) never exists.
    Returns (M, (window + 2*pad)^2, C); pixels outside the image are 0 (unfold's zero padding).
    Equal to the dense path up to float rounding (~1e-7 relative).
    """
    N, C, Hh, Wh = feat_half.shape
    size = window + 2 * pad
    M = cells.numel()
    if M == 0:
        return feat_half.new_zeros(0, size * size, C)
    hwc = feat_half.permute(0, 2, 3, 1).contiguous()  # (N, Hh, Wh, C)
    off = torch.arange(size, device=feat_half.device)
    ys = ((cells // w_c) * window - pad)[:, None] + off[None, :]  # (M, size) full-resolution rows
    xs = ((cells % w_c) * window - pad)[:, None] + off[None, :]
    y0, y1, wy0, wy1, vy = _upsample_taps(ys, Hh)
    x0, x1, wx0, wx1, vx = _upsample_taps(xs, Wh)
    b = b_ids[:, None, None]

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return hwc[b, yy[:, :, None], xx[:, None, :]]  # (M, size, size, C)

    wx0, wx1 = wx0[:, None, :, None].to(hwc.dtype), wx1[:, None, :, None].to(hwc.dtype)
    t0 = tap(y0, x0) * wx0 + tap(y0, x1) * wx1
    t1 = tap(y1, x0) * wx0 + tap(y1, x1) * wx1
    out = t0 * wy0[:, :, None, None].to(hwc.dtype) + t1 * wy1[:, :, None, None].to(hwc.dtype)
    valid = (vy[:, :, None] & vx[:, None, :])[..., None]
    out = torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.reshape(M, size * size, C)


# --------------------------------------------------------------------------- fine matching


def fine_match(
    win0: torch.Tensor,
    win1: torch.Tensor,
    slice_dim: int,
    regress_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-stage fine matching of the original (``FineMatching``).

    Args:
        win0: (M, W*W, C) windows of image 0, win1: (M, (W+2)^2, C) windows of image 1 (W = 8, C = 64).
    Stage 1: ``F = (a0/sqrt(C)) (a1/sqrt(C))^T`` on the first C - slice_dim channels (note sqrt(C),
    not sqrt(C - slice_dim)), dual softmax over both window axes, window 1 cropped to its 8x8
    interior, argmax -> ``idx_l`` (window-0 position), ``idx_r`` (interior position of window 1).
    Stage 2 (image 1 only): ``G = b0 (b1/sqrt(slice_dim))^T`` on the last slice_dim channels, the
    3x3 block of row ``idx_l`` at rows ``r-1..r+1`` and cols ``c-1..c+1`` of the 10x10 grid with
    ``(r, c) = (idx_r // W, idx_r % W)`` (interior indices, negative index wraps like torch
    indexing in the original), softmax(G / regress_temperature), spatial expectation over {-1,0,1}^2.
    Returns ``off0`` (M, 2) = g(idx_l), ``off1`` (M, 2) = g(idx_r), ``expec`` (M, 2) in [-1, 1]^2,
    all (x, y) pixel offsets (g(k) = (k % W, k // W) - W/2 + 0.5), and ``idx_l``, ``idx_r`` (M,).
    Final keypoints: ``kpt0 = coarse0 + off0``, ``kpt1 = (coarse1 + off1) + expec`` (this order).
    """
    M, WW, C = win0.shape
    W = int(round(math.sqrt(WW)))
    W2 = W + 2
    device = win0.device
    if M == 0:
        z = torch.zeros(0, 2, device=device)
        e = torch.zeros(0, dtype=torch.long, device=device)
        return z, z.clone(), z.clone(), e, e.clone()
    win0, win1 = win0.float(), win1.float()
    a0, a1 = win0[..., :-slice_dim] / C**0.5, win1[..., :-slice_dim] / C**0.5
    f = torch.einsum("mlc,mrc->mlr", a0, a1)  # (M, WW, W2*W2)
    p = F.softmax(f, 1) * F.softmax(f, 2)
    p = p.reshape(M, WW, W2, W2)[..., 1:-1, 1:-1].reshape(M, WW * WW)
    idx = p.argmax(dim=-1)
    idx_l, idx_r = idx // WW, idx % WW

    r, c = idx_r // W, idx_r % W
    d = torch.arange(-1, 2, device=device)
    rr = (r[:, None, None] + d[None, :, None]).expand(-1, 3, 3)  # (M, 3, 3), dy along dim 1
    cc = (c[:, None, None] + d[None, None, :]).expand(-1, 3, 3)  # dx along dim 2
    rr = torch.where(rr < 0, rr + W2, rr)  # torch negative indexing of the original
    cc = torch.where(cc < 0, cc + W2, cc)
    b0 = win0[torch.arange(M, device=device), idx_l, -slice_dim:]  # (M, s)
    b1 = win1[..., -slice_dim:] / slice_dim**0.5  # (M, W2*W2, s)
    b1 = b1[torch.arange(M, device=device)[:, None, None], rr * W2 + cc]  # (M, 3, 3, s)
    g = (b0[:, None, None, :] * b1).sum(-1).reshape(M, 9)
    heat = F.softmax(g / regress_temperature, dim=-1)  # (M, 9), row-major over (dy, dx)
    pos_x = torch.tensor([-1.0, 0.0, 1.0] * 3, device=device)
    pos_y = torch.tensor([-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], device=device)
    expec = torch.stack([(pos_x * heat).sum(-1), (pos_y * heat).sum(-1)], dim=-1)

    half = W // 2 - 0.5
    g_l = torch.stack([idx_l % W, idx_l // W], dim=-1).float() - half
    g_r = torch.stack([idx_r % W, idx_r // W], dim=-1).float() - half
    return g_l, g_r, expec, idx_l, idx_r
