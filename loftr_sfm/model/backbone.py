"""RepVGG backbone of EfficientLoFTR (1/2, 1/4 and 1/8 feature maps) with re-parameterization.

Module and parameter names follow the original release (``layer0``, ``layer1.{b}``, ...,
``rbr_dense.{conv,bn}``, ``rbr_1x1.{conv,bn}``, ``rbr_identity``, after fusion ``rbr_reparam``),
so the original state dict (without ``matcher.``) loads directly.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .config import EfficientLoFTRConfig

logger = logging.getLogger(__name__)


def make_activation(name: str) -> nn.Module:
    """Activation module by Transformers name (``leaky_relu`` uses PyTorch's slope 0.01, like the original)."""
    if name in ("relu", "leaky_relu"):  # in place: always applied to a fresh conv/linear output here
        return nn.ReLU(inplace=True) if name == "relu" else nn.LeakyReLU(inplace=True)
    table = {
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "elu": nn.ELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(table)}")
    return table[name]()


def fuse_conv_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding (bias-free) conv: returns (weight', bias')."""
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    return weight * t, bn.bias - bn.running_mean * bn.weight / std


class _ConvBN(nn.Sequential):
    """``conv`` (no bias) followed by ``bn``; names as in the original ``conv_bn``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, eps: float) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=eps))


class RepVGGBlock(nn.Module):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)) + [BN(x)])``; after :meth:`reparameterize`: ``act(conv3x3'(x))``.

    Input (N, Cin, H, W) -> output (N, Cout, H/stride, W/stride). The identity branch exists when
    Cin == Cout and stride == 1.
    """

    def __init__(self, cin: int, cout: int, stride: int, eps: float = 1e-5, activation: str = "relu") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = cin, cout, stride
        self.nonlinearity = make_activation(activation)
        self.rbr_identity = nn.BatchNorm2d(cin, eps=eps) if cin == cout and stride == 1 else None
        self.rbr_dense = _ConvBN(cin, cout, 3, stride, 1, eps)
        self.rbr_1x1 = _ConvBN(cin, cout, 1, stride, 0, eps)
        self.rbr_reparam: nn.Conv2d | None = None

    @property
    def is_reparameterized(self) -> bool:
        return self.rbr_reparam is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel (Cout, Cin, 3, 3) and bias (Cout,) equal to the three branches in eval mode."""
        k3, b3 = fuse_conv_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = fuse_conv_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            ident = torch.zeros_like(k3)
            idx = torch.arange(self.in_channels, device=k3.device)
            ident[idx, idx, 1, 1] = 1.0
            kid, bid = fuse_conv_bn(ident, self.rbr_identity)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the branches into ``rbr_reparam`` (in place, idempotent)."""
        if self.rbr_reparam is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1, bias=True)
        conv = conv.to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.rbr_reparam = conv
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class RepVGGBackbone(nn.Module):
    """RepVGG stages: ``layer0`` (one block) and ``layer1..3`` (ModuleLists).

    forward(x: (N, 1, H, W)) -> (x1 (N, C1, H/2, W/2), x2 (N, C2, H/4, W/4), feat_c (N, C3, H/8, W/8))
    with C = out_features[1:] (64, 128, 256).
    """

    def __init__(self, config: EfficientLoFTRConfig) -> None:
        super().__init__()
        eps, act = config.batch_norm_eps, config.activation_function
        cins, couts, strides = config.stage_block_in_channels, config.stage_block_out_channels, config.stage_block_stride
        self.layer0 = RepVGGBlock(cins[0][0], couts[0][0], strides[0][0], eps, act)
        for s in (1, 2, 3):
            blocks = [RepVGGBlock(ci, co, st, eps, act) for ci, co, st in zip(cins[s], couts[s], strides[s])]
            setattr(self, f"layer{s}", nn.ModuleList(blocks))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[RepVGGBlock]:
        return [self.layer0, *self.layer1, *self.layer2, *self.layer3]

    @property
    def is_reparameterized(self) -> bool:
        return all(b.is_reparameterized for b in self.blocks())

    def reparameterize(self) -> None:
        for block in self.blocks():
            block.reparameterize()

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``channels_last`` keeps every activation in that memory format (a 1-channel input cannot carry it)."""

        def fmt(t: torch.Tensor) -> torch.Tensor:
            return t.contiguous(memory_format=torch.channels_last) if channels_last else t

        out = fmt(self.layer0(x))
        for block in self.layer1:
            out = fmt(block(out))
        x1 = out
        for block in self.layer2:
            out = fmt(block(out))
        x2 = out
        for block in self.layer3:
            out = fmt(block(out))
        return x1, x2, out
