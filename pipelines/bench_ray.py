"""Benchmark: matching on a Ray cluster vs in one process, on the same pairs, with and without a node lost.

A ``ray.cluster_utils.Cluster`` on this machine (a head without CPUs, ``--nodes`` worker nodes of
``--cpus-per-node`` CPUs; one matching worker per node), xfeat-star on a real scene from ../shared/data
(exhaustive pairs). Runs, in this order, each into a fresh output folder:

* ``local x1``: ``loftr-sfm match`` in this process with as many torch threads as one Ray worker
  (the reference: the Ray runs must be bit-identical to it);
* ``local xN``: in this process with the threads of all nodes together (the one-machine alternative);
* ``ray``: ``--executor ray`` on the cluster (workers started by the run: their start-up counts);
* ``ray, node lost``: the same, a worker node killed (``remove_node``, not graceful) once
  ``--kill-after`` shards are written; its shard runs again on the others.

Prints wall-time ratios to ``local x1`` (no absolute times: the machine may be shared; retake the
numbers on a quiet machine) and whether each run's matches equal the reference bit for bit.

    python pipelines/bench_ray.py
    python pipelines/bench_ray.py --scene castle-P30 --images 12 --max-side 640 --nodes 2 --cpus-per-node 1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

logger = logging.getLogger("bench_ray")


def read_all(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if hasattr(obj, "keys") and "keypoints0" in obj:
                out[name] = {k: obj[k][()] for k in obj}
        f.visititems(visit)
    return out


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(np.array_equal(a[k][d], b[k][d]) for d in a[k]) for k in a
    )


class NodeKiller(threading.Thread):
    """Removes ``node`` from ``cluster`` once ``count`` shard files exist in ``folder``."""

    def __init__(self, cluster, node, folder: Path, count: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node, self.folder, self.count = cluster, node, folder, count
        self.killed_after: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            n = len(list(self.folder.glob("shard_*.h5"))) if self.folder.is_dir() else 0
            if n >= self.count:
                self.cluster.remove_node(self.node, allow_graceful=False)
                self.killed_after = n
                return
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="herzjesu-P8")
    ap.add_argument("--images", type=int, default=8, help="first N images of the scene (exhaustive pairs)")
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=2, help="shards written before a node is killed")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the four runs (round-robin); median ratios")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(name)s %(levelname)s] %(message)s")

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from loftr_sfm.distributed import shards_dir
    from loftr_sfm.io import write_pairs
    from loftr_sfm.matching import run_matching
    from loftr_sfm.utils import set_progress

    set_progress(False)
    images = DATA / args.scene / "images"
    if not images.is_dir():
        raise SystemExit(f"real data not found at {images} (../shared/data beside the repository)")
    names = sorted(p.name for p in images.iterdir())[: args.images]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    options = {"matcher": "xfeat-star", "max_side": args.max_side, "batch_size": args.batch_size,
               "num_workers": 0, "device": "cpu"}
    ray_options = {**options, "executor": "ray", "ray_cpus_per_worker": args.cpus_per_node,
                   "ray_shard_size": args.shard_size}
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))

    def run(tag: str, config: dict, threads: int | None = None, out: Path | None = None) -> tuple[float, dict]:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
        out = out or Path(tempfile.mkdtemp(prefix=f"{tag}_", dir=work))
        out.mkdir(parents=True, exist_ok=True)
        write_pairs(out / "pairs.txt", pairs)
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            t0 = time.perf_counter()
            run_matching(out, images, config)
            seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(before)
        return seconds, read_all(out / "matches.h5")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    names_ = ["local x1 (reference)", f"local x{args.nodes * args.cpus_per_node}", f"ray, {args.nodes} nodes",
              f"ray, {args.nodes} nodes, 1 lost"]
    ratios: dict[str, list[float]] = {n: [] for n in names_}
    same: dict[str, bool] = dict.fromkeys(names_, True)
    kills: list[int | None] = []
    ref = None
    try:
        for _ in range(max(args.repeats, 1)):
            t_ref, m = run("local_x1", options, threads=args.cpus_per_node)
            ref = m if ref is None else ref
            same[names_[0]] &= identical(m, ref)
            runs = [("local_xN", options, args.nodes * args.cpus_per_node), ("ray", ray_options, None)]
            for name, (tag, config, threads) in zip(names_[1:3], runs):
                t, m = run(tag, config, threads)
                ratios[name].append(t / t_ref)
                same[name] &= identical(m, ref)
            while len(cluster.worker_nodes) < args.nodes:  # the node killed in the previous round
                cluster.add_node(num_cpus=args.cpus_per_node)
            cluster.wait_for_nodes()
            folder = work / "lost"
            killer = NodeKiller(cluster, list(cluster.worker_nodes)[0], shards_dir(folder / "matches.h5"),
                                args.kill_after)
            killer.start()
            t, m = run("ray_lost", ray_options, out=folder)
            killer.stop.set()
            killer.join()
            kills.append(killer.killed_after)
            ratios[names_[3]].append(t / t_ref)
            same[names_[3]] &= identical(m, ref)
            ratios[names_[0]].append(1.0)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    num_shards = -(-len(pairs) // args.shard_size)
    print(f"\n{args.scene}: {len(names)} images, {len(pairs)} exhaustive pairs, xfeat-star max_side {args.max_side}, "
          f"batch {args.batch_size}, about {num_shards} shards of {args.shard_size} pairs; {args.nodes} worker nodes "
          f"x {args.cpus_per_node} CPU (1 Ray worker each)\n")
    notes = {names_[1]: "more threads in one process: other float results",
             names_[3]: "node killed after " + ", ".join("-" if k is None else str(k) for k in kills)
             + " shard files" + ("" if all(k is not None for k in kills)
                                 else " (-: the run ended first; raise --images or --max-side)")}
    print(f"| run | wall time / local x1 (median of {max(args.repeats, 1)}) | matches identical to local x1 | note |")
    print("|---|---|---|---|")
    for name in names_:
        print(f"| {name} | {statistics.median(ratios[name]):.2f} | {'yes' if same[name] else 'no'} | "
              f"{notes.get(name, '')} |")
    print("\nWall-time ratios from a shared machine: retake them on a quiet one before quoting.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
