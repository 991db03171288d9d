"""Kill a stage at a random moment, run it again, and check that nothing finished was lost.

On a small rendered synthetic scene (``datasets/synthetic.py``), the stages run as the CLI
commands a user runs (``loftr-sfm match``, ``keypoints``, ``database``, ``map``). A reference
folder runs them to the end once. Then, ``--trials`` times per stage, a copy of the reference
folder as it was before that stage gets the stage started and killed with SIGKILL after a random
share of the stage's reference time; the stage and all later ones are run again, and the program
counts:
- reruns that ended with the reference model (same registered images; median rotation difference
  to the reference model under ``--tolerance`` deg, the mappers being multithreaded),
- pairs matched again by the rerun of the matching stage although they were finished before the
  kill (in matches.h5 or its journal; goal: none),
- reruns that failed (exit code) or left a file unreadable.

Usage:
    python pipelines/kill_rerun.py --work outputs/kill --trials 5 [--stages match keypoints database map]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))

STAGES = ["match", "keypoints", "database", "map"]
# one mapper thread: pycolmap's multithreaded mappers are not deterministic, a rerun could not be compared
COMMON = {"match": ["--matcher", "xfeat-star", "--num-workers", "0"], "map": ["--num-threads", "1"]}


def run_stage(stage: str, out: Path, images: Path) -> subprocess.Popen:
    """``loftr-sfm STAGE`` as a child process (its INFO log on stderr)."""
    cmd = [sys.executable, "-m", "loftr_sfm.cli", stage, "--output", str(out), "--images", str(images),
           *COMMON.get(stage, [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(stages: list[str], out: Path, images: Path) -> tuple[int, dict, int | None]:
    """Run ``stages`` in order to the end; (exit code of the first failing one or 0, seconds per stage,
    pairs the matching stage skipped as finished, from its log; None if it did not run)."""
    seconds, skipped = {}, None
    for stage in stages:
        t0 = time.perf_counter()
        proc = run_stage(stage, out, images)
        _, err = proc.communicate()
        seconds[stage] = time.perf_counter() - t0
        if stage == "match":
            found = re.search(r"(\d+) of \d+ pairs already in", err or "")
            skipped = int(found.group(1)) if found else 0
        if proc.returncode != 0:
            print(f"  {stage} failed ({proc.returncode}): {err.strip().splitlines()[-1:] if err else ''}")
            return proc.returncode, seconds, skipped
    return 0, seconds, skipped


def matched_pairs(out: Path) -> set[str]:
    """Pair keys in matches.h5 and its journal (what matching has finished)."""
    import h5py

    keys: set[str] = set()
    files = [out / "matches.h5"] + sorted((out / ".matches.h5.journal").glob("batch_*.h5"))
    for p in files:
        if p.is_file():
            with h5py.File(p, "r") as f:
                f.visititems(lambda n, o: keys.add(n) if hasattr(o, "keys") and "keypoints0" in o else None)
    return keys


def rotation_difference(model: Path, reference: Path) -> float:
    from loftr_sfm.evaluation import evaluate_reconstruction

    if not (model / "images.bin").is_file():
        return float("inf")
    return float(evaluate_reconstruction(model, reference).rotation_error["median"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/kill"))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=0.05, help="deg, median rotation difference to the reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import synthetic

    rng = random.Random(args.seed)
    scene = args.work / "scene"
    if not (scene / "synthetic.json").is_file():
        synthetic.generate(scene, synthetic.SceneConfig(num_images=args.images, width=480, height=360, focal=400.0,
                                                        seed=args.seed, antialias=2))
    images = scene / "images"
    # reference: a snapshot of the folder before each stage, and the finished model
    ref = args.work / "reference"
    snapshots: dict[str, Path] = {}
    if ref.exists():
        shutil.rmtree(ref)
    ref.mkdir(parents=True)
    shutil.copy2(scene / "pairs.txt", ref / "pairs.txt")
    times = {}
    for stage in STAGES:
        snap = args.work / f"before-{stage}"
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(ref, snap)
        snapshots[stage] = snap
        code, sec, _ = finish([stage], ref, images)
        if code:
            print(f"reference run failed at {stage}")
            return 1
        times.update(sec)
    print("reference:", ", ".join(f"{s} {t:.1f} s" for s, t in times.items()))
    results = []
    for stage in args.stages:
        later = STAGES[STAGES.index(stage):]
        for trial in range(args.trials):
            out = args.work / f"kill-{stage}-{trial}"
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(snapshots[stage], out)
            delay = rng.uniform(0.1, 0.95) * times[stage]  # the stage's whole process time, start-up included
            proc = run_stage(stage, out, images)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            done_before = matched_pairs(out) if stage == "match" else set()
            t0 = time.perf_counter()
            code, _, skipped = finish(later, out, images)
            # pairs finished before the kill that the rerun matched again (its log counts what it skipped)
            again = len(done_before) - skipped if stage == "match" and skipped is not None else 0
            diff = rotation_difference(out / "model", ref / "model") if code == 0 else float("inf")
            summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
            same = code == 0 and summary.get("registered") == json.loads((ref / "summary.json").read_text())[
                "registered"] and diff <= args.tolerance
            results.append({"stage": stage, "trial": trial, "killed": killed, "delay_s": round(delay, 2),
                            "exit": code, "same_model": same, "rotation_diff_deg": diff,
                            "finished_pairs": len(done_before), "matched_again": again,
                            "rerun_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(results[-1]))
    print("\n| stage | kills | reruns with the reference model | failed reruns | finished pairs matched again |")
    print("|---|---|---|---|---|")
    for stage in args.stages:
        rows = [r for r in results if r["stage"] == stage]
        print(f"| {stage} | {sum(r['killed'] for r in rows)}/{len(rows)} | {sum(r['same_model'] for r in rows)} | "
              f"{sum(r['exit'] != 0 for r in rows)} | {sum(r['matched_again'] for r in rows)} |")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r["same_model"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
