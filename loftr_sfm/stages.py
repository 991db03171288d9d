"""``reconstruct``: the stages in order, each timed.

pairs -> matches -> keypoints -> database -> mapping. Every stage is resumable, so rerunning the
same command after an interruption recomputes only what is missing. Sequential pairs that leave
the collection hanging on a few verified pairs (the database stage's weak links: a video with a
gap) are selected again with loop closure before mapping, and the stages after the pairs run again
(only the new pairs are matched): pairs are added, never removed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from loftr_sfm.database import read_stage_stats
from loftr_sfm.io import atomic_path
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
    bridge_weak_links: bool = True,
    report: bool = True,
):
    """Run every stage on ``images`` and write the results into ``output``.

    Args:
        images: folder of photos (sub-folders allowed; image names are relative POSIX paths).
        output: output directory (pairs.txt, matches.h5, features.h5, database.db, model/, ...).
        pairs, matching, keypoints, database, mapping: the stages' configs (dataclass, dict or None).
        bridge_weak_links: with sequential pairs without loop closure, if the database stage finds
            weak links (:func:`loftr_sfm.database.weak_links`: a video with a gap), select the pairs
            again with loop closure and run the stages after it again (matching only the new pairs);
            recorded in ``.bridged_weak_links.json`` (a rerun starts with loop closure) and in the
            summary (``bridged_weak_links``).
        report: write ``output/report.html`` at the end (:func:`loftr_sfm.report.write_report`); a report that
            cannot be written is a warning, never a failed run.
    Returns:
        The mapping summary (registered/total images, points, track length, reprojection error,
        per-stage times; also saved as ``summary.json``). The model itself:
        ``loftr_sfm.sfm.load_model(output)``. One run per output folder at a time: a second one is
        refused at once (:func:`loftr_sfm.workspace.output_lock`).
    """
    images, output = Path(images), Path(output)
    with output_lock(output):  # one run per output folder
        summary = _reconstruct(images, output, pairs, matching, keypoints, database, mapping, bridge_weak_links)
        if report:
            try:
                from loftr_sfm.report import write_report

                write_report(output, images)
            except Exception as e:  # noqa: BLE001 - the model is made: a report that fails is only a warning
                logger.warning("the report (%s) could not be written: %s: %s", output / "report.html",
                               type(e).__name__, e)
                logger.debug("traceback", exc_info=True)
    return summary


def _reconstruct(images: Path, output: Path, pairs, matching, keypoints, database, mapping, bridge_weak_links: bool):
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
    pairs_cfg = merge_config(PairsConfig, pairs)
    marker = output / BRIDGE_MARKER
    bridge = bridge_weak_links and pairs_cfg.method == "sequential" and not pairs_cfg.loop_closure
    bridged = None
    if bridge and marker.is_file():  # an earlier run found weak links: start with loop closure
        try:
            bridged = json.loads(marker.read_text())
            pairs_cfg, bridge = replace(pairs_cfg, loop_closure=True), False
        except (OSError, ValueError):
            logger.warning("%s is unreadable: ignored", marker)
    database_cfg = merge_config(DatabaseConfig, database)

    def stages(pairs_cfg) -> None:
        steps = [
            ("pairs", run_pairs, pairs_cfg),
            ("matching", run_matching, matching_cfg),
            ("keypoints", run_keypoints, keypoints_cfg),
            ("database", run_database, database_cfg),
        ]
        for name, fn, cfg in steps:
            logger.info("stage %s ...", name)
            with Timer() as t:
                fn(output, images, cfg)
            times[name] = times.get(name, 0.0) + t.seconds
            logger.info("stage %s done in %.1f s", name, t.seconds)

    stages(pairs_cfg)
    if bridge:
        links = list(read_stage_stats(output).get("weak_links") or [])
        if links:
            logger.warning("weak link(s) in the sequential pairs (after %s): selecting the pairs again with loop "
                           "closure (retrieval top-%d per image) and matching the new ones",
                           ", ".join(x["after"] for x in links), pairs_cfg.loop_closure_neighbors)
            with atomic_path(marker) as tmp:
                tmp.write_text(json.dumps(links, indent=1))
            bridged = links
            stages(replace(pairs_cfg, loop_closure=True))
    mapping_cfg = merge_config(MappingConfig, mapping)
    summary = run_mapping(output, images, mapping_cfg, stage_times=times)
    if bridged is not None and summary.get("bridged_weak_links") != bridged:
        summary["bridged_weak_links"] = bridged
        with atomic_path(output / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    return summary


BRIDGE_MARKER = ".bridged_weak_links.json"

