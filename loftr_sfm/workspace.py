"""The output folder below every stage: shared file names and stage wall times (``timings.json``).

A stage records how long it took with :func:`record_stage_time`; the mapping stage's summary
reports them all (:func:`read_stage_times`). No stage imports another stage for this.
"""

from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_path

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
