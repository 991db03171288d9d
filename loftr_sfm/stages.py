"""``reconstruct``: the stages in order, each timed.

pairs -> matches -> keypoints -> database -> mapping. Every stage is resumable, so rerunning the
same command after an interruption recomputes only what is missing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from loftr_sfm.utils import Timer
from loftr_sfm.workspace import output_lock

logger = logging.getLogger(__name__)


def reconstruct(
    images: str | Path,
    output: str | Path,
    *,
    pairs: Any = None,
    matching: Any = None,
    keypoints: Any = None,
    database: Any = None,
    mapping: Any = None,
    report: bool = True,
    bridge_weak_links: bool | None = None,
):
    """Run every stage on ``images`` and write the results into ``output``.

    Args:
        images: folder of photos (sub-folders allowed; image names are relative POSIX paths).
        output: output directory (pairs.txt, matches.h5, features.h5, database.db, model/, ...).
        pairs, matching, keypoints, database, mapping: the stages' configs (dataclass, dict or None).
        report: write ``output/report.html`` at the end (:func:`loftr_sfm.report.write_report`); a report that
            cannot be written is a warning, never a failed run.
        bridge_weak_links: deprecated, no effect: sequential pairs get loop-closure pairs from the start
            (``PairsConfig.loop_closure``, on by default).
    Returns:
        The mapping summary (registered/total images, points, track length, reprojection error,
        per-stage times; also saved as ``summary.json``). The model itself:
        ``loftr_sfm.sfm.load_model(output)``. One run per output folder at a time: a second one is
        refused at once (:func:`loftr_sfm.workspace.output_lock`).
    """
    if bridge_weak_links is not None:
        warnings.warn("reconstruct(bridge_weak_links=...) has no effect any more: sequential pairs get loop-closure "
                      "pairs from the start (PairsConfig.loop_closure, on by default)", DeprecationWarning, stacklevel=2)
    images, output = Path(images), Path(output)
    with output_lock(output):  # one run per output folder
        summary = _reconstruct(images, output, pairs, matching, keypoints, database, mapping)
        if report:
            try:
                from loftr_sfm.report import write_report

                write_report(output, images)
            except Exception as e:  # noqa: BLE001 - the model is made: a report that fails is only a warning
                logger.warning("the report (%s) could not be written: %s: %s", output / "report.html",
                               type(e).__name__, e)
                logger.debug("traceback", exc_info=True)
    return summary


def _reconstruct(images: Path, output: Path, pairs, matching, keypoints, database, mapping):
    from loftr_sfm.database import DatabaseConfig, run_database
    from loftr_sfm.keypoints import PRESETS, KeypointsConfig, run_keypoints
    from loftr_sfm.matching import MatchingConfig, run_matching
    from loftr_sfm.pairs import PairsConfig, run_pairs
    from loftr_sfm.sfm import MappingConfig, run_mapping
    from loftr_sfm.utils import merge_config

    times: dict[str, float] = {}
    matching_cfg = merge_config(MatchingConfig, matching)
    keypoints_cfg = merge_config(KeypointsConfig, keypoints)
    if keypoints_cfg.preset == "auto" and matching_cfg.matcher in PRESETS:  # the merge preset follows the matcher
        keypoints_cfg = merge_config(KeypointsConfig, keypoints_cfg, preset=matching_cfg.matcher)
    steps = [
        ("pairs", run_pairs, merge_config(PairsConfig, pairs)),
        ("matching", run_matching, matching_cfg),
        ("keypoints", run_keypoints, keypoints_cfg),
        ("database", run_database, merge_config(DatabaseConfig, database)),
    ]
    for name, fn, cfg in steps:
        logger.info("stage %s ...", name)
        with Timer() as t:
            fn(output, images, cfg)
        times[name] = t.seconds
        logger.info("stage %s done in %.1f s", name, t.seconds)
    return run_mapping(output, images, merge_config(MappingConfig, mapping), stage_times=times)
