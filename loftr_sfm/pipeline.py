"""``reconstruct``: nothing but the stages in order, each timed.

pairs -> matches -> keypoints -> database -> reconstruction. Every stage is resumable, so
rerunning the same command after an interruption recomputes only what is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loftr_sfm.utils import Timer

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
):
    """Run every stage on ``images`` and write the results into ``output``.

    Args:
        images: folder of photos (sub-folders allowed; image names are relative POSIX paths).
        output: output directory (pairs.txt, matches.h5, features.h5, database.db, model/, ...).
        pairs, matching, keypoints, database, mapping: the stages' configs (dataclass, dict or None).
    Returns:
        The mapping summary (registered/total images, points, track length, reprojection error,
        per-stage times; also saved as ``summary.json``). The model itself:
        ``loftr_sfm.reconstruction.load_model(output)``.
    """
    from loftr_sfm.database import DatabaseConfig, run_database
    from loftr_sfm.keypoints import PRESETS, KeypointsConfig, run_keypoints
    from loftr_sfm.matching import MatchingConfig, run_matching
    from loftr_sfm.pairs import PairsConfig, run_pairs
    from loftr_sfm.reconstruction import MappingConfig, run_mapping
    from loftr_sfm.utils import merge_config

    images, output = Path(images), Path(output)
    output.mkdir(parents=True, exist_ok=True)
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
