"""Benchmark: the ONNX export of EfficientLoFTR in onnxruntime vs our PyTorch model (CPU, fp32).

Exports the matcher at ``--size`` (``loftr_sfm.model.onnx_export.export_onnx``), then runs both on
real pairs from ../shared/data (ScanNet pairs resized to the size; synthetic textured pairs when
the data is absent), round-robin over ``--repeats`` rounds so that interference from other
processes hits both alike. Prints, per preset:

* parity per pair: the same coarse matches, max keypoint difference (px, input pixels), max score
  difference;
* median seconds of one forward for each runtime and the ratio onnxruntime / PyTorch (< 1 means
  onnxruntime is faster). Timings on a shared machine are noisy: compare the ratios, retake the
  numbers on a quiet machine before publishing them.

Weights: ``--weights`` (anything ``from_pretrained`` takes); default: random weights with
calibrated BatchNorm statistics (tests/test_model_weights.py), as the released weights cannot be
downloaded here.

    python pipelines/bench_onnx.py --size 640x480 --repeats 5
    python pipelines/bench_onnx.py --size 640x480 --presets full optimized --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from loftr_sfm.model import onnx_export as OE  # noqa: E402
from loftr_sfm.model.onnx_runtime import OnnxKeypointMatcher  # noqa: E402
from loftr_sfm.model.processing import EfficientLoFTRImageProcessor  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "scannet_pairs"
logger = logging.getLogger("bench_onnx")


def load_pairs(n: int, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(n, 1, H, W) image0 and image1 in [0, 1], and where they come from."""
    proc = EfficientLoFTRImageProcessor(size={"height": height, "width": width}, num_channels=1)
    pairs_file = DATA / "pairs_with_gt.txt"
    if pairs_file.is_file():
        names = [line.split()[:2] for line in pairs_file.read_text().splitlines() if line.strip()][:n]
        pv = proc([[DATA / "images" / a, DATA / "images" / b] for a, b in names])["pixel_values"]
        return pv[:, 0], pv[:, 1], f"{len(names)} ScanNet pairs from {DATA}"
    logger.warning("%s not found: synthetic textured pairs", DATA)
    pairs = [OE.textured_pair(width, height, seed=k) for k in range(n)]
    pv = proc([[a, b] for a, b in pairs])["pixel_values"]
    return pv[:, 0], pv[:, 1], f"{n} synthetic textured pairs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (multiples of 32)")
    ap.add_argument("--weights", default=None, help="weights (default: calibrated random weights)")
    ap.add_argument("--pairs", type=int, default=3, help="number of pairs")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--presets", nargs="+", default=["full"], choices=["full", "optimized"])
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="coarse threshold of the full preset (0: every mutual nearest neighbour, a realistic fine-stage load)")
    ap.add_argument("--opset", type=int, default=OE.DEFAULT_OPSET)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = OE.parse_size(args.size)
    im0, im1, source = load_pairs(args.pairs, w, h)
    if args.weights:
        from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

        model = EfficientLoFTRForKeypointMatching.from_pretrained(args.weights)
    else:
        from test_model_weights import calibrated_random_model

        model = calibrated_random_model([im0[:1], im1[:1]], seed=3).reparameterize()
    results = {"size": f"{w}x{h}", "source": source, "threads": args.threads or torch.get_num_threads(), "presets": {}}
    print(f"{source}, {w}x{h}, {results['threads']} threads, {args.repeats} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            optimized = preset == "optimized"
            thr = None if optimized else args.threshold
            path = OE.export_onnx(model, Path(tmp) / f"{preset}.onnx", size=(w, h), threshold=thr, optimized=optimized,
                                  opset=args.opset, check=False)
            cfg = OE._export_config(model, optimized, thr)
            ort_model = OnnxKeypointMatcher(path, threads=args.threads)
            parity = [OE.compare_with_pytorch(ort_model, model, im0[k : k + 1], im1[k : k + 1], config=cfg)
                      for k in range(len(im0))]
            twin = model if cfg == model.config else _with_config(model, cfg)
            times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
            for _ in range(args.repeats):
                for k in range(len(im0)):
                    a, b = im0[k : k + 1], im1[k : k + 1]
                    t = time.perf_counter()
                    with torch.inference_mode():
                        twin(image0=a, image1=b)
                    times["pytorch"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    ort_model.run(a.numpy(), b.numpy())
                    times["onnxruntime"].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = med["onnxruntime"] / med["pytorch"]
            print(f"\n[{preset}] threshold {cfg.coarse_matching_threshold:g}, opset {args.opset}")
            for k, r in enumerate(parity):
                print(f"  pair {k}: {r.matches} matches, same coarse matches: {r.same_coarse}, "
                      f"max keypoint diff {r.max_keypoint_diff:.2e} px, max score diff {r.max_score_diff:.2e}")
            print(f"  onnxruntime / PyTorch time: {ratio:.2f} (median of {len(times['pytorch'])} forwards each)")
            results["presets"][preset] = {
                "threshold": cfg.coarse_matching_threshold,
                "parity": [r.__dict__ for r in parity],
                "median_seconds": med,
                "ratio_onnxruntime_over_pytorch": ratio,
            }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


def _with_config(model: torch.nn.Module, cfg: object) -> torch.nn.Module:
    import copy

    twin = copy.copy(model)
    twin.config = cfg
    return twin


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
