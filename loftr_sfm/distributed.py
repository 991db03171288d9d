"""Matching on a Ray cluster: ``MatchingConfig.executor = "ray"`` (``loftr-sfm match --executor ray``).

:func:`loftr_sfm.matching.match_pairs` stays the driver: it selects the pairs still to match (image
stamps, pairs already in ``matches.h5``), reads the image headers and plans the batches exactly as a
local run does. :class:`RayMatchers` then takes the place of the batch loop:

* **shards**: the planned batches, in order, are cut into shards of whole batches (about
  ``ray_shard_size`` pairs). A shard is named by its index and a hash of everything its result depends
  on (its pairs and batches, the stamps of its images, the matcher, its options and input size), so the
  same inputs give the same shard names in every run;
* **workers**: Ray actors (:class:`ShardWorker`), one per GPU (when the cluster has GPUs and the
  device is ``auto``/``cuda``) or per ``ray_cpus_per_worker`` CPUs, each building the backend once
  (``torch.set_num_threads`` = its CPUs). A worker runs the local matching code on one shard and
  writes it as ``<matches stem>_shards/shard_<index>_<hash>.h5`` (hloc layout, the same groups as
  ``matches.h5``) by atomic rename: a shard file that exists is complete. It returns only counts;
  matches never travel through the driver;
* **rerun**: shards whose file exists (with its hash recorded inside) are skipped; files of other
  inputs are deleted. ``matches.h5`` is not touched until every shard is done, so the plan of a rerun
  after a kill is the plan of the killed run;
* **lost workers**: a worker that dies (its process, or its node) has its shard queued again for the
  other workers (at most ``MAX_ATTEMPTS`` times per shard), and a replacement actor is requested; it
  starts when the cluster has room for it (a node coming back or joining);
* **result**: when all shards are done they are handed to the matches writer and merged into
  ``matches.h5`` by the same streaming copy + atomic replace as the local batch journal (then deleted):
  the later stages read ``matches.h5`` as always.

Results are those of a local run of the same pairs: the batches are the same, and the workers run the
same code. Bit-identical on CPU when the workers have as many torch threads as the local run and the
same CPU type (float results of some CPU kernels depend on both); the backends' own per-image caches do
not change results (xfeat-star extracts every image alone).

Ray is optional: ``pip install "loftr_sfm[ray]"``. Without ``ray_address`` :func:`ray.init` joins the
cluster named by ``RAY_ADDRESS`` or started on this machine by ``ray start``, else starts a local one.
Images and the output folder must be on storage that every node sees under the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .matching import MatchesWriter, MatchingConfig, MatchingStats

logger = logging.getLogger(__name__)

SHARD_ATTR = "loftr_sfm_shard"  # the full hash of a shard's inputs, inside its file
WORKER_ATTR = "loftr_sfm_worker"  # JSON {"node": Ray node id, "host", "pid"} of the worker that wrote it
MAX_ATTEMPTS = 3  # a shard whose worker dies this many times stops the run (it is what kills them)
WAIT_LIMIT = 600.0  # seconds without any worker able to start before the run gives up


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise InputError(f"executor 'ray' needs the ray package: pip install 'loftr_sfm[ray]' ({e})") from None
    return ray


def shards_dir(matches_path: str | Path) -> Path:
    """The folder of a matches file's shards: ``matches.h5`` -> ``matches_shards/`` beside it."""
    matches_path = Path(matches_path)
    return matches_path.parent / f"{matches_path.stem}_shards"


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Shard:
    """One unit of work: whole batches of the local plan, in order."""

    index: int
    pairs: tuple[tuple[str, str], ...]  # in batch order
    batch_lengths: tuple[int, ...]
    signature: str  # sha1 of the inputs its result depends on

    @property
    def file_name(self) -> str:
        return f"shard_{self.index:06d}_{self.signature[:12]}.h5"


def plan_shards(
    pairs: Sequence[tuple[str, str]],
    batches: Sequence[Sequence[int]],
    shard_size: int,
    stamps: Mapping[str, str],
    backend_signature: str,
) -> list[Shard]:
    """Cut the batch plan into shards of whole batches, about ``shard_size`` pairs each.

    Args:
        pairs: the pairs the batches index.
        batches: the local batch plan (:func:`loftr_sfm.matching.bucket_batches`): lists of indices
            into ``pairs``, batches of one (size0, size1) bucket consecutive.
        shard_size: a shard ends at the first batch boundary at or after this many pairs.
        stamps: {image name: "size:mtime_ns"}; part of each shard's signature.
        backend_signature: the matcher, its options and input spec, batch size (one string).
    Returns:
        the shards in plan order. Matched alone in this order, a shard's pairs fall into the same
        batches again (buckets are consecutive and only a bucket's last batch may be short).
    """
    shards: list[Shard] = []
    current: list[Sequence[int]] = []

    def emit() -> None:
        sp = tuple(pairs[i] for b in current for i in b)
        lengths = tuple(len(b) for b in current)
        names = sorted({n for p in sp for n in p})
        key = json.dumps([backend_signature, [list(p) for p in sp], lengths, [[n, stamps.get(n)] for n in names]])
        shards.append(Shard(len(shards), sp, lengths, hashlib.sha1(key.encode()).hexdigest()))
        current.clear()

    count = 0
    for b in batches:
        current.append(b)
        count += len(b)
        if count >= max(int(shard_size), 1):
            emit()
            count = 0
    if current:
        emit()
    return shards


def shard_is_complete(path: Path, signature: str) -> bool:
    """Whether ``path`` is a finished shard of these inputs (files appear only complete; the hash is checked)."""
    import h5py

    with contextlib.suppress(OSError, KeyError, ValueError, TypeError):
        with h5py.File(path, "r") as f:
            value = f.attrs[SHARD_ATTR]
        return (value.decode() if isinstance(value, bytes) else str(value)) == signature
    return False


# --------------------------------------------------------------------------- worker (a Ray actor)


class ShardWorker:
    """Holds one backend and matches shards with the local code (wrapped by ``ray.remote`` at run time)."""

    def __init__(self, config: dict[str, Any], num_threads: int, num_workers: int) -> None:
        import torch

        from .matching import MatchingConfig, build_backend
        from .utils import merge_config, set_progress

        torch.set_num_threads(max(int(num_threads), 1))
        set_progress(False)  # no progress bars in the workers: the driver shows one
        device = str(config.get("device", "auto"))
        if device.startswith("cuda"):  # Ray shows the actor only its own GPU(s)
            device = "cuda"
        self.config = merge_config(MatchingConfig, config, executor="local", device=device,
                                   num_workers=max(int(num_workers), 0))
        self.backend = build_backend(self.config)

    @staticmethod
    def _identity() -> dict[str, Any]:
        import socket

        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def info(self) -> dict[str, Any]:
        import torch

        b = self.backend
        return {"name": b.name, "spec": b.spec, "supports_batching": b.supports_batching,
                "default_batch_size": b.default_batch_size, "device": str(b.device),
                "threads": torch.get_num_threads(), **self._identity()}

    def run_shard(self, shard: dict[str, Any]) -> dict[str, Any]:
        """Match one shard into ``shard["path"]`` (atomic: a temporary folder, then a rename); return counts."""
        import h5py

        from .matching import match_pairs

        final = Path(shard["path"])
        work = final.parent / f".work_{final.stem}_{uuid.uuid4().hex[:8]}"
        try:
            work.mkdir(parents=True)
            tmp = work / final.name
            cfg = dataclasses.replace(self.config, batch_size=int(shard["batch_size"]), overwrite=True)
            stats = match_pairs([tuple(p) for p in shard["pairs"]], shard["paths"], tmp, cfg, matcher=self.backend)
            with h5py.File(tmp, "a") as f:
                f.attrs[SHARD_ATTR] = shard["signature"]
                f.attrs[WORKER_ATTR] = json.dumps(self._identity())
            os.replace(tmp, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"name": final.name, "num_matched": stats.num_matched, "num_failed": stats.num_failed,
                "failed_images": list(stats.failed_images), "num_matches": stats.num_matches,
                "seconds": stats.seconds, "pid": os.getpid()}


# --------------------------------------------------------------------------- driver side


def _node_capacity(ray, config: MatchingConfig) -> tuple[int, dict[str, float], bool]:
    """(number of workers the alive nodes hold, actor resources, GPU workers?) for ``config``."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(float(r.get("GPU", 0)) for r in nodes)
    device = str(config.device)
    if device.startswith("cuda") and total_gpus < 1:
        raise InputError(f"device {device!r} asked for, but the Ray cluster has no GPU ({len(nodes)} node(s))")
    use_gpu = total_gpus >= 1 and (device == "auto" or device.startswith("cuda"))
    max_cpus = max((float(r.get("CPU", 0)) for r in nodes), default=0.0)
    cpus = float(min(max(int(config.ray_cpus_per_worker), 1), int(max_cpus))) if max_cpus >= 1 else 0.0
    if cpus < 1:
        raise InputError(f"the Ray cluster has no node with a CPU ({len(nodes)} alive node(s)): nothing can run "
                         "the matching workers")
    if use_gpu:
        capacity = sum(min(int(float(r.get("GPU", 0))), int(float(r.get("CPU", 0)) // cpus)) for r in nodes)
    else:
        capacity = sum(int(float(r.get("CPU", 0)) // cpus) for r in nodes)
    return capacity, {"num_cpus": cpus, "num_gpus": 1 if use_gpu else 0}, use_gpu


class RayMatchers:
    """The matching workers of a Ray cluster, standing in for the backend inside ``match_pairs``.

    Exposes what ``match_pairs`` reads of a backend (``name``, ``spec``, ``supports_batching``,
    ``default_batch_size``, ``device``, asked from the first worker), :meth:`run` in place of the
    batch loop and :meth:`close`.
    """

    runs_remotely = True

    def __init__(self, config: MatchingConfig) -> None:
        from .matching import backend_options

        self.ray = ray = _import_ray()
        self.config = config
        self._own_init = False
        if not ray.is_initialized():
            ray.init(address=config.ray_address, logging_level=logging.WARNING, configure_logging=False)
            self._own_init = True
        elif config.ray_address:
            logger.info("already connected to a Ray cluster: ray_address %s not used", config.ray_address)
        self._actors: list[Any] = []
        try:
            self.capacity, self._resources, use_gpu = _node_capacity(ray, config)
            cpus = int(self._resources["num_cpus"])
            self._threads = cpus
            self._loader_workers = min(int(config.num_workers), cpus if use_gpu else cpus - 1)
            first = self._new_actor()
            info = self._wait_ready(first)
        except BaseException:
            self.close()
            raise
        self._idle = [first]
        self.name, self.spec = info["name"], info["spec"]
        self.supports_batching, self.default_batch_size = info["supports_batching"], info["default_batch_size"]
        self.device = f"ray:{info['device']}"
        self.backend_options = json.dumps(backend_options(config), sort_keys=True)
        logger.info("Ray cluster: room for %d matching worker(s) of %d CPU(s)%s; backend %s on %s",
                    self.capacity, cpus, " and 1 GPU" if use_gpu else "", self.name, info["device"])

    # ----------------------------------------------------------------- actors

    def _new_actor(self):
        cls = self.ray.remote(ShardWorker)
        actor = cls.options(max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD",
                            **self._resources).remote(dataclasses.asdict(self.config), self._threads,
                                                      self._loader_workers)
        self._actors.append(actor)
        return actor

    def _drop(self, actor) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)
        with contextlib.suppress(ValueError):
            self._actors.remove(actor)

    def _wait_ready(self, actor) -> dict[str, Any]:
        ray = self.ray
        ref = actor.info.remote()
        ready, _ = ray.wait([ref], timeout=WAIT_LIMIT)
        if not ready:
            raise RuntimeError(f"no matching worker could start on the Ray cluster within {WAIT_LIMIT:.0f} s "
                               f"(it needs {self._resources}; the cluster has {ray.cluster_resources()}, "
                               f"free {ray.available_resources()})")
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the matching worker failed to start on the Ray cluster: {e}") from None

    def close(self) -> None:
        """Stop the workers; leave the cluster if this object joined it."""
        for actor in list(self._actors):
            self._drop(actor)
        if self._own_init:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            self._own_init = False

    # ----------------------------------------------------------------- run

    def run(
        self,
        pairs: Sequence[tuple[str, str]],
        batches: Sequence[Sequence[int]],
        batch_size: int,
        paths: Mapping[str, Path],
        stamps: Mapping[str, str],
        writer: MatchesWriter,
        stats: MatchingStats,
        bad: dict[str, str],
    ) -> None:
        """Match the planned batches as shards on the workers; hand the finished shards to ``writer``.

        ``stats`` and ``bad`` (image name -> reason) are updated in place; the shard files are merged
        into the matches file by the writer's next merge (then deleted).
        """
        from .utils import progress

        folder = shards_dir(writer.path)
        folder.mkdir(parents=True, exist_ok=True)
        for p in list(folder.glob(".work_*")) + list(folder.glob(".*.tmp")):  # an interrupted attempt's
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        signature = json.dumps([self.name, self.backend_options, dataclasses.asdict(self.spec), int(batch_size)])
        shards = plan_shards(pairs, batches, self.config.ray_shard_size, stamps, signature)
        planned = {s.file_name for s in shards}
        for p in folder.glob("shard_*.h5"):  # made for other inputs (or --overwrite): never reused
            if self.config.overwrite or p.name not in planned:
                p.unlink(missing_ok=True)
        todo = [s for s in shards if not shard_is_complete(folder / s.file_name, s.signature)]
        done_before = len(shards) - len(todo)
        if done_before:
            stats.num_done_before += sum(len(s.pairs) for s in shards) - sum(len(s.pairs) for s in todo)
            logger.info("%d of %d shards already finished in %s: skipped", done_before, len(shards), folder)
        absolute = {n: str(Path(p).resolve()) for n, p in paths.items()}
        payloads = {s.index: {"path": str((folder / s.file_name).resolve()), "signature": s.signature,
                              "pairs": [list(p) for p in s.pairs], "batch_size": int(batch_size),
                              "paths": {n: absolute[n] for p in s.pairs for n in p}} for s in todo}
        if todo:
            with progress(total=sum(len(s.pairs) for s in todo), unit="pair", smoothing=0.1,
                          desc=f"matching on Ray ({self.name})") as bar:
                self._schedule(todo, payloads, stats, bad, bar)
        writer.adopt([folder / s.file_name for s in shards])

    def _schedule(self, todo: list[Shard], payloads: dict[int, dict], stats: MatchingStats, bad: dict[str, str],
                  bar) -> None:
        ray = self.ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)
        queue: deque[Shard] = deque(todo)
        attempts: Counter[int] = Counter()
        idle = [a for a in self._idle if a in self._actors]
        pending: dict[Any, Any] = {}  # info() ref -> actor not yet started
        running: dict[Any, tuple[Any, Shard]] = {}  # run_shard ref -> (actor, shard)

        def request(n: int) -> None:
            for _ in range(max(n, 0)):
                actor = self._new_actor()
                pending[actor.info.remote()] = actor

        request(min(self.capacity, len(queue)) - len(self._actors))
        waiting_since = time.monotonic()
        while queue or running:
            while idle and queue:
                actor, shard = idle.pop(), queue.popleft()
                attempts[shard.index] += 1
                running[actor.run_shard.remote(payloads[shard.index])] = (actor, shard)
            if not running and not pending:
                request(min(self.capacity, len(queue)) or 1)
            ready, _ = ray.wait(list(running) + list(pending), num_returns=1, timeout=10.0)
            if not ready:
                if not running and time.monotonic() - waiting_since > WAIT_LIMIT:
                    raise RuntimeError(f"no matching worker could start on the Ray cluster for {WAIT_LIMIT:.0f} s "
                                       f"(it needs {self._resources}; free: {ray.available_resources()}); "
                                       f"{len(queue)} shard(s) left, the finished ones are kept for a rerun")
                continue
            ref = ready[0]
            waiting_since = time.monotonic()
            if ref in pending:
                actor = pending.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(actor)
                except lost as e:
                    logger.warning("a matching worker could not start: %s", _first_line(e))
                    self._drop(actor)
                continue
            actor, shard = running.pop(ref)
            try:
                result = ray.get(ref)
            except lost as e:
                self._drop(actor)
                if attempts[shard.index] >= MAX_ATTEMPTS:
                    raise RuntimeError(f"shard {shard.file_name} ({len(shard.pairs)} pairs, first {shard.pairs[0]}) "
                                       f"lost its worker {attempts[shard.index]} times; last: {_first_line(e)}") from None
                logger.warning("Ray worker lost while matching shard %s (%s): it runs again on another worker",
                               shard.file_name, _first_line(e))
                queue.appendleft(shard)
                request(1)  # a replacement, started when the cluster has room for it
                continue
            idle.append(actor)
            stats.num_matched += result["num_matched"]
            stats.num_failed += result["num_failed"]
            stats.num_matches += result["num_matches"]
            for name in result["failed_images"]:
                bad.setdefault(name, "could not be read on a Ray worker (see the worker's log)")
            bar.update(len(shard.pairs))
            logger.debug("shard %s done by worker pid %s in %.1f s", result["name"], result["pid"], result["seconds"])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


__all__ = ["RayMatchers", "Shard", "ShardWorker", "plan_shards", "shard_is_complete", "shards_dir"]
