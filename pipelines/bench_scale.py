"""Scale benchmark of the stages after matching: keypoints -> database -> mapping on N images.

Input: a synthetic scene of ``datasets/synthetic.py`` with ``--images`` cameras on a half circle
around the box (exact GT poses, images not rendered: flat grey of the right size), sequential
pairs with ``--neighbors`` neighbours, and EfficientLoFTR-shaped raw matches (image0 on the 1-px
lattice, image1 sub-pixel with 0.3 px noise, 5 % outliers; about 1,500 per pair at 640x480).
The scene is generated once per configuration under ``--work`` and reused.

Every stage runs as its own ``loftr-sfm`` command (what a user runs), in a child process whose
wall time, CPU time (user + system) and peak resident memory (``wait4``) are reported. Mapping
runs once per ``--mappers`` entry, each on its own copy of the database, with track refinement
off (it aligns image patches, and the images here are blank; its cost grows with the
observations, see the README). The model is then evaluated against the exact GT (registered
fraction, median rotation error, AUC@1), so a stage that gets faster by getting worse shows.

Run: ``python pipelines/bench_scale.py --images 300 [--neighbors 10] [--mappers incremental global]``
(``--map-args "--global-tracks-per-view 1000"`` passes options to the map stage, ``--json FILE`` also writes
the rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "datasets"))

import h5py  # noqa: E402
import synthetic  # noqa: E402

from loftr_sfm.database import read_stage_stats  # noqa: E402
from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction  # noqa: E402

logger = logging.getLogger("bench_scale")


def scene_config(n: int, neighbors: int, width: int, height: int, seed: int) -> synthetic.SceneConfig:
    """Cameras on a half circle (180 deg) around the box, sequential pairs, blank images."""
    return synthetic.SceneConfig(num_images=n, width=width, height=height, focal=0.78 * width, arc_deg=180.0,
                                 pairs="sequential", num_neighbors=neighbors, render=False, seed=seed)


def make_scene(work: Path, cfg: synthetic.SceneConfig) -> Path:
    """Generate the scene under ``work`` unless a scene of the same configuration is there."""
    scene = work / f"scene_n{cfg.num_images}_k{cfg.num_neighbors}_{cfg.width}x{cfg.height}_s{cfg.seed}"
    return synthetic.generate_cached(scene, cfg)


def run_stage(args: list[str]) -> dict:
    """Run ``loftr-sfm ARGS`` in a child process: wall s, CPU s, peak RSS GB (raises if it fails)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "loftr_sfm.cli", "-q", *args], env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"loftr-sfm {' '.join(args)} failed (exit {proc.returncode})")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_gb": ru.ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--size", default="640x480", help="image size WxH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mappers", nargs="+", default=["incremental", "global"], choices=["incremental", "global"])
    ap.add_argument("--map-args", default="", help="more options of the map stage, e.g. '--global-tracks-per-view 1000'")
    ap.add_argument("--work", type=Path, default=Path("outputs/bench_scale"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    width, height = (int(v) for v in args.size.lower().split("x"))
    scene = make_scene(args.work, scene_config(args.images, args.neighbors, width, height, args.seed))
    manifest = json.loads((scene / "synthetic.json").read_text())
    raw = sum(manifest["matches_per_pair"])
    out = args.work / f"{scene.name}_run"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("pairs.txt", "matches.h5"):
        shutil.copy2(scene / name, out / name)
    images = scene / "images"
    common = ["--output", str(out), "--images", str(images)]
    print(f"{args.images} images, {manifest['pairs']} pairs, {raw:,} raw matches ({raw / manifest['pairs']:.0f} per pair)")
    rows = []

    def report(stage: str, m: dict, **extra) -> None:
        row = {"stage": stage, **m, **extra}
        rows.append(row)
        more = ", ".join(f"{k} {v}" for k, v in extra.items())
        print(f"{stage:<22} {m['wall_s']:8.1f} s wall {m['cpu_s']:8.1f} s CPU {m['peak_gb']:6.2f} GB peak  {more}",
              flush=True)

    m = run_stage(["keypoints", *common])
    with h5py.File(out / "features.h5", "r") as f:
        stats = json.loads(f.attrs["loftr_sfm_stats"])
    report("keypoints", m, keypoints=stats["keypoints"], matches=stats["matches"])
    m = run_stage(["database", *common])
    dstats = read_stage_stats(out)
    report("database", m, verified_pairs=dstats.get("verified_pairs"), rejected_pairs=dstats.get("rejected_pairs"))
    for mapper in args.mappers:
        mdir = out / mapper
        mdir.mkdir()
        shutil.copy2(out / "database.db", mdir / "database.db")
        m = run_stage(["map", "--output", str(mdir), "--images", str(images), "--mapper", mapper,
                       "--refine-tracks", "off", *shlex.split(args.map_args)])
        summary = json.loads((mdir / "summary.json").read_text())
        ev = evaluate_reconstruction(mdir / "model", scene / "gt", EvaluationConfig()).row()
        report(f"map ({mapper})", m, registered=ev["registered"], points=summary.get("points"),
               track=round(summary.get("mean_track_length", 0.0), 2),
               rot_med_deg=round(ev["rot_med_deg"], 4), auc1=round(ev["AUC@1"], 3),
               stage_times={k: round(v, 1) for k, v in summary.get("times", {}).items()})
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "pairs": manifest["pairs"], "raw_matches": raw,
                                         "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
