"""``reconstruct``: the stages in order, each timed, then the repair of removed images.

pairs -> matches -> keypoints -> database -> reconstruction. Every stage is resumable, so
rerunning the same command after an interruption recomputes only what is missing. Sequential pairs
that leave the collection hanging on a few verified pairs (the database stage's weak links: a video
with a gap) are selected again with loop closure before mapping, and the stages after the pairs run
again (only the new pairs are matched). Images that the mapping check removes, and images the mapper
could not register, get one more chance: their pairs are matched again with the backend's stricter
options and they are registered into the model again (:func:`repair_dropped_images`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from loftr_sfm.database import STATS_FILE, read_stage_stats
from loftr_sfm.io import atomic_path
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
    repair: bool = True,
    bridge_weak_links: bool = True,
):
    """Run every stage on ``images`` and write the results into ``output``.

    Args:
        images: folder of photos (sub-folders allowed; image names are relative POSIX paths).
        output: output directory (pairs.txt, matches.h5, features.h5, database.db, model/, ...).
        pairs, matching, keypoints, database, mapping: the stages' configs (dataclass, dict or None).
        repair: match the pairs of images the mapping check removes (or the mapper does not register)
            again with the backend's stricter options and keep the result if it registers more images
            (:func:`repair_dropped_images`).
        bridge_weak_links: with sequential pairs without loop closure, if the database stage finds
            weak links (:func:`loftr_sfm.database.weak_links`: a video with a gap), select the pairs
            again with loop closure and run the stages after it again (matching only the new pairs);
            recorded in ``.bridged_weak_links.json`` (a rerun starts with loop closure) and in the
            summary (``bridged_weak_links``).
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
    if repair:
        summary = repair_dropped_images(output, images, summary, matching_cfg, keypoints_cfg, database_cfg,
                                        mapping_cfg)
    if bridged is not None and summary.get("bridged_weak_links") != bridged:
        summary["bridged_weak_links"] = bridged
        with atomic_path(output / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    return summary


BRIDGE_MARKER = ".bridged_weak_links.json"




REPAIR_DIR = "repair"
# what repair_dropped_images moves from repair/ into the output folder when it wins
_REPAIR_OUTPUTS = ("matches.h5", "features.h5", "database.db", STATS_FILE, "model", "model_txt", "points.ply",
                   "summary.json")


def repair_dropped_images(output: Path, images: Path, summary: dict, matching: Any = None, keypoints: Any = None,
                          database: Any = None, mapping: Any = None) -> dict:
    """Match the pairs of the images missing from the model again, stricter, and map again.

    An image that the check removes (``summary["dropped_images"]``) was placed where its verified
    matches contradict it, typically pulled by pairs of look-alike structure: castle-P30 with sequential
    pairs, XFeat*: image 0029 has eight wrong pairs with 1,203 inliers against 659 in its two right
    ones. The same pairs can keep it from being registered at all (the global mapper's second pass,
    completed incrementally, left 0029 out), so every image without a pose
    (``summary["unregistered_images"]``, the removed ones included) that has a pair is repaired. The
    matcher backend's :meth:`~loftr_sfm.matchers.MatcherBackend.repair_options` (XFeat*: the ratio test
    at 0.85) are applied to those images' pairs only, in ``output/repair/`` (a copy of pairs.txt and
    matches.h5), then keypoints, database and mapping run there with the same configs. The mapping
    starts from the output's model (``run_mapping(start=...)``): its poses are kept and the removed
    images registered around them, and only if that fails is the scene mapped from scratch (castle-P30,
    sequential pairs, GT calibration: 30/30 images at 0.063 deg median rotation error, AUC@1 0.895
    incremental-first, 0.050 / 0.909 global-first, where mapping from scratch gave 0.080 / 0.809 and
    0.078 / 0.829, and the 29-image models 0.052 / 0.852 and 0.056 / 0.849). If that registers more
    images, its files replace the output's (``summary.json`` gets a ``repair`` record, so a rerun does
    not repair again); otherwise the output is untouched and ``repair/`` stays for inspection (a rerun
    finds it up to date). Nothing is done for backends without stricter options (SIFT already has a
    ratio test).

    Returns the summary of the model now in ``output``.
    """
    from loftr_sfm.database import DatabaseConfig, run_database
    from loftr_sfm.io import read_pairs
    from loftr_sfm.keypoints import KeypointsConfig, run_keypoints
    from loftr_sfm.matchers import matcher_class
    from loftr_sfm.matching import MATCHES_FILE, PAIRS_FILE, MatchingConfig, backend_options, match_pairs
    from loftr_sfm.reconstruction import MappingConfig, run_mapping
    from loftr_sfm.utils import merge_config

    output, images = Path(output), Path(images)
    missing = set(summary.get("unregistered_images", summary.get("dropped_images")) or [])
    if not missing or summary.get("repair"):
        return summary
    pairs = [p for p in read_pairs(output / PAIRS_FILE) if p[0] in missing or p[1] in missing]
    dropped = sorted({n for p in pairs for n in p} & missing)  # images in no pair have nothing to match again
    if not dropped:
        return summary
    matching = merge_config(MatchingConfig, matching)
    options = backend_options(matching)
    strict = matcher_class(matching.matcher).repair_options(options)
    if strict is None:
        logger.info("repair: matcher %s has no stricter options, %d missing image(s) stay out", matching.matcher,
                    len(dropped))
        return summary
    work = output / REPAIR_DIR
    work.mkdir(exist_ok=True)
    shutil.copy2(output / PAIRS_FILE, work / PAIRS_FILE)
    st = (output / MATCHES_FILE).stat()
    made_from = {"images": dropped, "matcher_options": strict, "matches": f"{st.st_size}:{st.st_mtime_ns}"}
    marker = work / "repair.json"  # what repair/matches.h5 was made from: redone when any of it changes
    if (not marker.is_file() or not (work / MATCHES_FILE).is_file()
            or json.loads(marker.read_text()) != made_from):
        logger.info("repair: %d image(s) missing from the model (%s); matching their %d pairs again with %s",
                    len(dropped), ", ".join(dropped[:5]), len(pairs), strict)
        shutil.copy2(output / MATCHES_FILE, work / MATCHES_FILE)
        with Timer() as t:
            match_pairs(pairs, images, work / MATCHES_FILE,
                        replace(matching, matcher_options=json.dumps(strict), weights=None, max_side=None,
                                overwrite=True),
                        pair_attrs={"matcher_options": json.dumps(strict, sort_keys=True)})
        marker.write_text(json.dumps(made_from))
        record_time = t.seconds
    else:
        record_time = 0.0
    record = {"images": dropped, "matcher_options": strict}
    run_keypoints(work, images, merge_config(KeypointsConfig, keypoints))
    run_database(work, images, merge_config(DatabaseConfig, database))
    repaired = run_mapping(work, images, merge_config(MappingConfig, mapping), start=output / "model")
    record.update(pairs=len(pairs), matching_seconds=round(record_time, 3), registered_before=summary["registered"],
                  registered_after=repaired["registered"], dropped_after=repaired.get("dropped_images", []))
    if repaired["registered"] <= summary["registered"]:
        logger.warning("repair: %d/%d images registered after matching again (%d before): the model is kept",
                       repaired["registered"], repaired["num_images"], summary["registered"])
        return summary
    repaired["repair"] = record
    (work / "summary.json").write_text(json.dumps(repaired, indent=1))
    for name in _REPAIR_OUTPUTS:  # each replaced as a whole; summary.json last, it marks the repair done
        src, dst = work / name, output / name
        if not src.exists():
            continue
        if src.is_dir() and dst.exists():
            shutil.rmtree(dst)
        os.replace(src, dst)
    logger.info("repair: %d/%d images registered (%d before); the repaired model replaces the output's",
                repaired["registered"], repaired["num_images"], summary["registered"])
    return repaired
