"""Benchmark: our EfficientLoFTR vs Transformers' port vs the original release (CPU, fp32).

Same weights (the original's init with randomized norm affines and BatchNorm statistics
calibrated on the pair, tests/eloftr_reference.py), same input (a real pair from
../shared/data, grayscale, resized), fp32, ``torch.set_num_threads(--threads)``:

* ``ours``: EfficientLoFTRForKeypointMatching, re-parameterized (``--channels-last`` adds a
  channels_last variant ``ours_cl``);
* ``original``: efficientloftr_inference.LoFTR after ``reparameter()``;
* ``transformers``: transformers.EfficientLoFTRForKeypointMatching (weights mapped with
  loftr_sfm.model.weights.canonical_to_hf; ``--no-transformers`` leaves it out).

Prints per size: median seconds over ``--repeats`` forwards run round-robin (interference hits
all variants alike), ratios to ours, GFLOPs (FlopCounterMode: 2 x MACs of conv/matmul/SDPA),
peak RSS of one forward in a fresh subprocess per variant (``--memory``), and a parity line
(ours vs original: coarse match set at threshold 0, share of keypoints within 1e-3 px, max score
difference; ours vs Transformers: common coarse matches). ``--peak-1600`` measures our peak RSS at
1600x1216 (1600x1200 rounded up to a multiple of 32; must stay < 3 GB). Timings on a shared machine are noisy: compare ratios.

    python pipelines/bench_matcher.py --repeats 5 --memory
    python pipelines/bench_matcher.py --sizes 640x480 --repeats 1 --no-transformers
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

logger = logging.getLogger("bench_matcher")
THRESHOLD = 0.0  # every mutual nearest neighbour outside the border: a realistic fine-stage workload


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (WxH) -> (H, W)."""
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def load_images(size_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    from eloftr_reference import DATA, load_gray

    root = DATA / "herzjesu-P8" / "images"
    if not root.is_dir():
        raise SystemExit(f"real data not found at {root} (../shared/data beside the repository)")
    return load_gray(root / "0003.jpg", size_hw), load_gray(root / "0004.jpg", size_hw)


def build_variants(state_dict: dict[str, torch.Tensor], names: list[str], channels_last: bool) -> dict[str, Any]:
    """name -> callable(image0, image1) running one forward (threshold 0)."""
    from efficientloftr_inference import LoFTR, full_config, reparameter

    from loftr_sfm.model.config import EfficientLoFTRConfig
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    variants: dict[str, Any] = {}
    if "ours" in names:
        ours = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig(coarse_matching_threshold=THRESHOLD))
        ours.load_state_dict(state_dict)
        ours.reparameterize().eval()
        variants["ours"] = ours
        if channels_last:
            cl = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig(coarse_matching_threshold=THRESHOLD, channels_last=True))
            cl.load_state_dict(ours.state_dict())
            variants["ours_cl"] = cl.eval()
    if "original" in names:
        orig = LoFTR(config=full_config(coarse_threshold=THRESHOLD))
        orig.load_state_dict(copy.deepcopy(state_dict))
        variants["original"] = reparameter(orig).eval()
    if "transformers" in names:
        try:
            import transformers

            from loftr_sfm.model import weights
        except ImportError as exc:  # pragma: no cover - optional
            logger.warning("transformers variant skipped: %s", exc)
        else:
            conv = getattr(weights, "canonical_to_hf", None)
            if conv is None:
                logger.warning("transformers variant skipped: loftr_sfm.model.weights.canonical_to_hf missing")
            else:
                cfg = transformers.EfficientLoFTRConfig(coarse_matching_threshold=THRESHOLD)
                hf = transformers.EfficientLoFTRForKeypointMatching(cfg).eval()
                hf_sd = conv({k: v for k, v in state_dict.items()})
                missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
                missing = [k for k in missing if not k.endswith("num_batches_tracked")]
                if missing or unexpected:
                    raise SystemExit(f"HF weight mapping failed: missing {missing[:5]} unexpected {unexpected[:5]}")
                variants["transformers"] = hf
    return variants


def run(name: str, model: Any, im0: torch.Tensor, im1: torch.Tensor) -> Any:
    with torch.inference_mode():
        if name.startswith("ours"):
            return model(image0=im0, image1=im1)
        if name == "original":
            data = {"image0": im0, "image1": im1}
            model(data)
            return data
        pix = torch.stack([torch.cat([im0, im1], 0)]).expand(-1, -1, 3, -1, -1)
        return model(pixel_values=pix)


def gflops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def parity(outs: dict[str, Any], size_hw: tuple[int, int]) -> str:
    parts = []
    ours = outs.get("ours")
    if ours is None:
        return "parity: (ours not run)"
    _, i, j = ours.coarse_matches
    H, W = size_hw
    scale = torch.tensor([W, H], dtype=torch.float32)
    k0 = ours.keypoints[0, 0] * scale
    k1 = ours.keypoints[0, 1] * scale
    orig = outs.get("original")
    if orig is not None:
        same = torch.equal(i, orig["i_ids"]) and torch.equal(j, orig["j_ids"])
        text = f"ours vs original: {len(i)}/{len(orig['i_ids'])} coarse matches, identical set: {same}"
        if same and len(i):
            e0 = (k0 - orig["mkpts0_f"]).abs().max(1).values
            e1 = (k1 - orig["mkpts1_f"]).abs().max(1).values
            share = float(((e0 <= 1e-3) & (e1 <= 1e-3)).float().mean())
            ds = float((ours.matching_scores[0, 0] - orig["mconf"]).abs().max())
            text += f", keypoints within 1e-3 px: {share:.3f} (max {float(torch.maximum(e0, e1).max()):.2g} px), score diff {ds:.2g}"
        parts.append(text)
    hf = outs.get("transformers")
    if hf is not None:
        m1 = hf.matches[0, 1]  # slot k = image-0 cell k -> image-1 cell (HF slot semantics)
        k = torch.nonzero(m1 >= 0).reshape(-1)
        hf_pairs = set(zip(k.tolist(), m1[k].tolist()))
        ours_pairs = set(zip(i.tolist(), j.tolist()))
        parts.append(f"ours vs transformers: {len(ours_pairs & hf_pairs)} common coarse matches of {len(ours_pairs)}/{len(hf_pairs)}")
    return "parity: " + "; ".join(parts) if parts else "parity: n/a"


def _peak_rss_gb() -> float:
    """Peak resident memory of this process in GB: VmHWM (reset by exec, unlike ru_maxrss which a
    forked child inherits from its parent on Linux), falling back to ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_main(args: argparse.Namespace) -> None:
    """Fresh process: one forward of one variant, print JSON with peak RSS."""
    torch.set_num_threads(args.threads)
    state_dict = torch.load(args.weights, weights_only=True)
    name = args.child
    base = "ours" if name.startswith("ours") else name
    variants = build_variants(state_dict, [base], channels_last=name == "ours_cl")
    size = parse_size(args.child_size)
    im0, im1 = load_images(size)
    before = _peak_rss_gb()
    t = time.perf_counter()
    run(name, variants[name], im0, im1)
    seconds = time.perf_counter() - t
    print(json.dumps({"variant": name, "size": args.child_size, "peak_rss_gb": _peak_rss_gb(), "before_gb": before,
                      "seconds": seconds}))


def peak_rss(name: str, size: str, weights: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--child-size", size, "--weights", str(weights), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"variant": name, "size": size, "error": res.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1024x768"], help="WxH, multiples of 32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-transformers", action="store_true", help="leave Transformers' port out")
    ap.add_argument("--channels-last", action="store_true", help="also time ours with channels_last")
    ap.add_argument("--memory", action="store_true", help="peak RSS of one forward per variant (fresh subprocesses)")
    ap.add_argument("--peak-1600", action="store_true", help="peak RSS of ours at 1600x1200 (fresh subprocess)")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-size", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.child:
        child_main(args)
        return
    torch.set_num_threads(args.threads)
    from eloftr_reference import build_reference

    names = ["ours", "original"] + ([] if args.no_transformers else ["transformers"])
    calib = load_images((480, 640))
    ref = build_reference(*calib, seed=0, threshold=THRESHOLD)
    state_dict = {k: v.clone() for k, v in ref.state_dict().items()}
    del ref
    variants = build_variants(state_dict, names, args.channels_last)
    report: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        wpath = Path(tmp) / "weights.pt"
        torch.save(state_dict, wpath)
        for size in args.sizes:
            hw = parse_size(size)
            im0, im1 = load_images(hw)
            outs = {name: run(name, m, im0, im1) for name, m in variants.items()}  # warm-up + parity
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, m in variants.items():
                    t = time.perf_counter()
                    run(name, m, im0, im1)
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(v) for name, v in times.items()}
            flops = {} if args.no_flops else {name: gflops(lambda n=name, m=m: run(n, m, im0, im1)) for name, m in variants.items()}
            mem = {name: peak_rss(name, size, wpath, args.threads) for name in variants} if args.memory else {}
            print(f"\n== {size} (WxH), {args.threads} threads, fp32, median of {args.repeats} (noisy on a shared machine)")
            for name in variants:
                line = f"{name:>13}: {med[name]:7.3f} s  x{med[name] / med['ours']:.2f} of ours" if "ours" in med else f"{name}: {med[name]:.3f} s"
                if "ours" in med and name != "ours":
                    line += f"  (ours = {med['ours'] / med[name]:.2f}x {name})"
                if name in flops:
                    line += f"  {flops[name]:7.1f} GFLOP"
                if name in mem:
                    line += f"  peak RSS {mem[name].get('peak_rss_gb', float('nan')):.2f} GB"
                print(line)
            print(parity(outs, hw))
            report["sizes"][size] = {"median_s": med, "all_s": times, "gflops": flops, "memory": mem, "parity": parity(outs, hw)}
        if args.peak_1600:
            # 1200 is not a multiple of 32: 1216 (next multiple, conservative; the processor rounds down to 1184)
            res = peak_rss("ours", "1600x1216", wpath, args.threads)
            print(f"\nours at 1600x1216 (~1600x1200): peak RSS {res.get('peak_rss_gb', float('nan')):.2f} GB (limit 3 GB), "
                  f"{res.get('seconds', float('nan')):.1f} s {res.get('error', '')}")
            report["peak_1600"] = res
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
