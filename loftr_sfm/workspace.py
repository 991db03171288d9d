"""The output folder below every stage: shared file names and stage wall times (``timings.json``).

A stage records how long it took with :func:`record_stage_time`; the mapping stage's summary
reports them all (:func:`read_stage_times`). No stage imports another stage for this.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from .io import InputError, atomic_path

TIMINGS_FILE = "timings.json"
# the keypoints stage's index matches: matches0 / matching_scores0 per pair (hloc layout); matches.h5 stays raw
MERGED_MATCHES_FILE = "merged_matches.h5"


def record_stage_time(output: Path, stage: str, seconds: float) -> None:
    """Store a stage's wall time (s) in ``output/timings.json``, replacing the file atomically."""
    path = Path(output) / TIMINGS_FILE
    data = read_stage_times(output)
    data[stage] = round(float(seconds), 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def read_stage_times(output: Path) -> dict[str, float]:
    """{stage: seconds} recorded in ``output/timings.json`` ({} when absent or unreadable)."""
    path = Path(output) / TIMINGS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


LOCK_FILE = ".loftr_sfm.lock"
# temporaries of atomic writes (io.atomic_path: ".<name>.<random>.tmp") and of the mapping stage's folders
STALE_PATTERNS = (".*.tmp", ".mapping.*", ".model.*", ".model_txt.*")


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold ``output`` for one run: a second run on the same folder is refused at once, naming the first.

    The lock is an ``fcntl`` lock on ``output/.loftr_sfm.lock``: the system releases it when its process
    ends, a kill -9 included. Once held, temporaries that a killed run left (never finished results)
    are removed.
    """
    import fcntl
    import os

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise InputError(f"{output} is in use by another loftr-sfm run (pid {holder}); wait for it to end or "
                             "use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        remove_stale_temporaries(output)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(output: Path) -> int:
    """Delete the temporaries of interrupted runs directly in ``output``; returns how many (call under the lock)."""
    import shutil

    n = 0
    for pattern in STALE_PATTERNS:
        for p in Path(output).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n
