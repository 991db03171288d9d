"""``loftr-sfm export-onnx``: parser and runner (torch-free until the command runs; the export itself
is :func:`loftr_sfm.model.onnx_export.export_onnx`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)


def add_export_onnx_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``loftr-sfm export-onnx`` on the subparsers ``sub``."""
    p = sub.add_parser("export-onnx", help="export the EfficientLoFTR matcher to ONNX (checked with onnxruntime)",
                       description="Export the whole matcher (image pair -> sub-pixel matches) to one ONNX file for a "
                                   "fixed input size, and check it against the PyTorch model with onnxruntime.")
    p.add_argument("output", type=Path, help="the .onnx file to write")
    p.add_argument("--weights", default="zju-community/efficientloftr",
                   help="hub id, Transformers folder, .safetensors or original .ckpt")
    p.add_argument("--size", default="640x480", help="input WIDTHxHEIGHT, multiples of 32 (default 640x480)")
    p.add_argument("--threshold", type=float, default=None,
                   help="the graph's default coarse threshold (default: the model's; 25 logits with --optimized); "
                        "callers may feed another one")
    p.add_argument("--optimized", action="store_true", help="the optimized preset (no dual softmax, logit scores)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=SUPPORTED_OPSETS, help="ONNX opset")
    p.add_argument("--dynamic-size", action="store_true",
                   help="height and width as graph dimensions (any multiples of 32; --size is then the traced size)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime check")
    return p


def run_export_onnx_command(args: argparse.Namespace) -> Path:
    from loftr_sfm.model.onnx_export import export_onnx

    path = export_onnx(args.weights, args.output, size=args.size, threshold=args.threshold, optimized=args.optimized,
                       opset=args.opset, dynamic_size=args.dynamic_size, check=args.check)
    print(f"wrote {path}")
    return path
