"""Every stage around matching at 250, 500, 1,000+ images, run as a user runs them (issue 27, section 2).

For each N of ``--sizes``: a synthetic scene of ``datasets/synthetic.py`` (N cameras on a ``--arc``-degree arc
around the box, exact GT poses; images rendered only for retrieval pairs, else flat grey), then, each as its
own ``loftr-sfm`` command in a child process:

1. ``pairs`` (``--pairs sequential`` or ``retrieval``, ``--neighbors`` per image; retrieval = VLAD over
   RootSIFT with a vocabulary fitted on the collection: descriptor extraction, vocabulary, top-k),
2. the matching stage's output written by the generator for exactly those pairs (not timed as a stage):
   EfficientLoFTR-shaped raw matches, image0 on the 1-px lattice, image1 sub-pixel with ``--noise`` px
   noise, ``--outliers`` random matches, about 2,600 per pair at 640x480,
3. ``keypoints`` (``--keypoints-args`` adds options), ``database``, ``map`` (``--mapper``, track refinement
   off: the images are blank or synthetic; ``--map-args`` adds options).

Per stage: wall time, CPU time (user + system of the child, ``wait4``) and peak resident memory (the
child's own VmHWM, see measure.py); then the model against the exact GT: registered / total, median
rotation error, AUC@1. With two sizes or more, each stage's growth exponent (log-log fit of time and of
memory against N) and its projection to ``--project`` images (10,000), and which stage limits.

Numbers taken on a shared machine are provisional: retake them on a quiet one. The scenes are cached under
``--work`` (one per configuration).

Run: ``python pipelines/bench_1000.py --sizes 250 500 1000 --map-args="--global-tracks-per-view 300"
[--pairs sequential|retrieval] [--neighbors 10] [--mapper global] [--keypoints-args="--max-keypoints 8192"
--tag _kp8192] [--json FILE]`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "datasets"))
sys.path.insert(0, str(ROOT / "pipelines"))

import synthetic  # noqa: E402
from measure import run_module  # noqa: E402

logger = logging.getLogger("bench_1000")
AFTER_MATCHING = ("keypoints", "database", "map")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def scene_config(a: argparse.Namespace, n: int) -> synthetic.SceneConfig:
    """N cameras on an arc around the box; no pairs of the generator's own (the pairs stage makes them)."""
    w, h = (int(v) for v in a.size.lower().split("x"))
    return synthetic.SceneConfig(num_images=n, width=w, height=h, focal=0.78 * w, arc_deg=a.arc, pairs="sequential",
                                 num_neighbors=0, render=a.pairs == "retrieval", noise=a.noise, outliers=a.outliers,
                                 seed=a.seed)


def make_scene(work: Path, cfg: synthetic.SceneConfig) -> Path:
    """Images + GT of ``cfg`` under ``work`` (reused when a scene of the same configuration is there)."""
    tag = f"n{cfg.num_images}_{cfg.width}x{cfg.height}_arc{cfg.arc_deg:g}_{'render' if cfg.render else 'blank'}_s{cfg.seed}"
    scene = work / f"scene_{tag}"
    return synthetic.generate_cached(scene, cfg)


def stage(name: str, args: list[str]) -> dict:
    """``loftr-sfm -q NAME ARGS`` in a child process, measured (see measure.py)."""
    return run_module("loftr_sfm.cli", ["-q", name, *args], env=ENV)


def run_size(a: argparse.Namespace, n: int) -> dict:
    from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction
    from loftr_sfm.io import read_pairs

    cfg = scene_config(a, n)
    scene = make_scene(a.work, cfg)
    images = scene / "images"
    out = a.work / f"run_n{n}_{a.pairs}{a.neighbors}_{a.mapper}{a.tag}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    common = ["--output", str(out), "--images", str(images)]
    rows: dict[str, dict] = {}

    def report(name: str, m: dict, **extra) -> None:
        rows[name] = {**m, **extra}
        more = ", ".join(f"{k} {v}" for k, v in extra.items())
        print(f"  {name:<10} {m['wall_s']:8.1f} s wall {m['cpu_s']:8.1f} s CPU {m['peak_gb']:6.2f} GB peak  {more}",
              flush=True)

    print(f"{n} images ({a.pairs} pairs, {a.neighbors} neighbours, {cfg.width}x{cfg.height}):", flush=True)
    loop = ["--loop-closure", "false"] if a.pairs == "sequential" else []  # flat grey images: nothing to retrieve
    m = stage("pairs", [*common, "--pairs", a.pairs, "--num-neighbors", str(a.neighbors), *loop])
    pairs = read_pairs(out / "pairs.txt")
    report("pairs", m, pairs=len(pairs))
    t = time.perf_counter()
    counts = synthetic.write_matches(out, cfg, pairs)
    print(f"  (matches   {time.perf_counter() - t:8.1f} s to generate {sum(counts):,} raw matches, "
          f"{np.mean(counts):.0f} per pair: the matching stage's output)", flush=True)
    m = stage("keypoints", [*common, *shlex.split(a.keypoints_args)])
    with __import__("h5py").File(out / "features.h5", "r") as f:
        ks = json.loads(f.attrs["loftr_sfm_stats"])
    report("keypoints", m, keypoints=ks["keypoints"], matches=ks["matches"])
    m = stage("database", common)
    report("database", m)
    m = stage("map", [*common, "--mapper", a.mapper, "--refine-tracks", "off", *shlex.split(a.map_args)])
    ev = evaluate_reconstruction(out / "model", scene / "gt", EvaluationConfig()).row()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    report("map", m, registered=ev["registered"], rot_med_deg=round(float(ev["rot_med_deg"]), 4),
           auc1=round(float(ev["AUC@1"]), 3), points=summary.get("points"))
    after = {k: sum(rows[s][k] for s in AFTER_MATCHING) for k in ("wall_s", "cpu_s")}
    after["peak_gb"] = max(rows[s]["peak_gb"] for s in AFTER_MATCHING)
    reg, total = (int(v) for v in ev["registered"].split("/"))
    print(f"  after matching: {after['wall_s'] / 60:.1f} min wall, {after['cpu_s'] / 60:.1f} min CPU, "
          f"{after['peak_gb']:.2f} GB peak; registered {reg}/{total}", flush=True)
    return {"images": n, "pairs": len(pairs), "raw_matches": int(sum(counts)), "stages": rows, "after_matching": after,
            "registered": reg, "total": total, "rot_med_deg": float(ev["rot_med_deg"]), "auc1": float(ev["AUC@1"])}


def project(results: list[dict], target: int) -> dict:
    """Per stage: log-log growth exponents of wall time and peak memory against N, and their value at ``target``."""
    n = np.array([r["images"] for r in results], float)
    out = {}
    for s in ("pairs", *AFTER_MATCHING):
        row = {}
        for k in ("wall_s", "cpu_s", "peak_gb"):
            y = np.array([r["stages"][s][k] for r in results], float)
            b, a = np.polyfit(np.log(n), np.log(np.maximum(y, 1e-9)), 1)
            row[k.replace("_s", "_exponent").replace("_gb", "_exponent")] = float(b)
            row[f"{k}_at_{target}"] = float(np.exp(a) * target**b)
        out[s] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--pairs", choices=["sequential", "retrieval"], default="sequential")
    ap.add_argument("--neighbors", type=int, default=10, help="pairs per image (sequential window / retrieval top-k)")
    ap.add_argument("--mapper", choices=["incremental", "global"], default="global")
    ap.add_argument("--map-args", default="", help="more options of the map stage (--map-args='--flag value')")
    ap.add_argument("--keypoints-args", default="", help="more options of the keypoints stage")
    ap.add_argument("--tag", default="", help="suffix of the run folders (runs with other options side by side)")
    ap.add_argument("--size", default="640x480", help="image size WxH")
    ap.add_argument("--arc", type=float, default=180.0, help="degrees of the camera arc")
    ap.add_argument("--noise", type=float, default=0.5, help="px, noise of the sub-pixel side of every match")
    ap.add_argument("--outliers", type=float, default=0.1, help="fraction of random matches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--project", type=int, default=10_000, help="project every stage to this many images")
    ap.add_argument("--work", type=Path, default=Path("outputs/bench_1000"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    a.work.mkdir(parents=True, exist_ok=True)
    results = [run_size(a, n) for n in a.sizes]
    res: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "sizes": results}
    if len(results) >= 2:
        proj = project(results, a.project)
        res["projection"] = proj
        print(f"growth (log-log exponent of wall time / peak memory in N) and projection to {a.project:,} images:")
        for s, row in proj.items():
            print(f"  {s:<10} time ~ N^{row['wall_exponent']:.2f} -> {row[f'wall_s_at_{a.project}'] / 3600:7.1f} h wall; "
                  f"memory ~ N^{row['peak_exponent']:.2f} -> {row[f'peak_gb_at_{a.project}']:6.1f} GB")
        after = {s: proj[s][f"wall_s_at_{a.project}"] for s in AFTER_MATCHING}
        limit = max(after, key=after.get)
        print(f"  limiting stage at {a.project:,} images: {limit} ({after[limit] / 3600:.1f} h of "
              f"{sum(after.values()) / 3600:.1f} h after matching)")
        res["limiting_stage"] = limit
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
