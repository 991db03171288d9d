"""Hold-out localization benchmark: queries never part of the map, from its viewpoints or new ones.

Queries: every third image of a GT scene (default), pairs of neighbouring images (``--split blocks``:
viewpoints the map lacks), the same at another resolution (``--query-scale 0.5``), or the synthetic
scene ``syn-ring-newpos`` whose queries are rendered from new positions (closer, other heights).

For each scene and matcher:

1. split the images: image ``i`` (in name order) is a query when ``i % 3 == 1`` (so the first
   and last images belong to the map), the others form the map (symlinked into
   ``WORK/<scene>/map_images`` and ``WORK/<scene>/queries``);
2. build the map from the map images with the library's stages (``reconstruct``: pairs ->
   matching -> keypoints -> database -> mapping), resumable, in ``WORK/<scene>/map_<matcher>``;
3. localize the queries (``Localizer``: retrieval, matching, 2D-3D, PnP) -> ``poses.txt`` and
   ``localize_log.json`` in ``WORK/<scene>/loc_<matcher>``;
4. evaluate against GT: the map is first aligned to GT with a Sim(3) on the MAP images' camera
   centres (our maps have an arbitrary gauge; fox's GT is itself only defined up to a
   similarity), then recall at (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg), median errors,
   seconds per query and the matching share of that time.

Intrinsics policy (printed in the table): by default the map uses one shared camera per scene
(``camera_mode=single``, SIMPLE_RADIAL, focal estimated by the mapper) and queries reuse the
map's camera (``camera_source=map``: same device). ``--gt-intrinsics`` gives both the map and
the queries the GT calibration instead (PINHOLE / OPENCV parameters from ``gt/cameras.txt``).

Usage:
    python pipelines/evaluate_localization.py --scenes castle-P30 fox --matchers xfeat-star sift \
        --work /tmp/loc_eval [--data ../shared/data] [--max-queries N] [--table results.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loftr_sfm.evaluation import (  # noqa: E402
    DEFAULT_RECALL_THRESHOLDS,
    camera_centers,
    scene_extent,
    evaluate_localization,
    evaluate_reconstruction,
    gt_camera_params,
    recall_key,
    save_json,
)
from loftr_sfm.io import list_images  # noqa: E402

logger = logging.getLogger("evaluate_localization")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

#: per scene: pairs method and options for the map (fox is a video: sequential + loop closure), and
#: ``unit``: metres per GT unit where the GT is metric and the thresholds in metres mean something (a
#: building). Other scenes (fox, lego, the dino ring, synthetic; dtu's tabletop object, whose GT is in mm and
#: whose cameras are 0.5 m away) are judged with position thresholds relative to their extent (``REL_UNIT``).
SCENES = {
    "castle-P30": {"pairs": {"method": "exhaustive"}, "unit": 1.0},
    "herzjesu-P8": {"pairs": {"method": "exhaustive"}, "unit": 1.0},
    "eth3d-pipes": {"pairs": {"method": "exhaustive"}, "unit": 1.0},
    "dtu-scan24": {"pairs": {"method": "exhaustive"}},
    "fox": {"pairs": {"method": "sequential", "num_neighbors": 6, "loop_closure": True}},
    "middlebury-dino-ring": {"pairs": {"method": "sequential", "num_neighbors": 5, "loop_closure": True}},
    "nerf-synthetic-lego": {"pairs": {"method": "retrieval", "num_neighbors": 10}},
    "syn-ring-newpos": {"pairs": {"method": "retrieval", "num_neighbors": 8}},
}
#: without a metric GT, one "metre" of the thresholds is this fraction of the scene's GT extent (median
#: camera distance to the median centre): castle-P30's 1 m over its 20.7 m extent, so that (0.25 m, 2 deg)
#: asks the same relative precision of every scene.
REL_UNIT = 1.0 / 20.7


def split(names: list[str], how: str = "every3") -> tuple[list[str], list[str]]:
    """(map names, query names) by name order.

    ``every3``: a query when ``index % 3 == 1`` (each query between two map neighbours);
    ``blocks``: a query when ``index % 6`` is 2 or 3 (queries come in pairs, so a query's nearest map
    images are two steps away: viewpoints the map does not have); ``prefix``: names starting with
    ``q_`` are queries (synthetic scenes whose queries were rendered from new positions).
    """
    if how == "prefix":
        queries = [n for n in names if n.startswith("q_")]
    elif how == "blocks":
        queries = [n for i, n in enumerate(names) if i % 6 in (2, 3)]
    elif how == "every3":
        queries = [n for i, n in enumerate(names) if i % 3 == 1]
    else:
        raise ValueError(f"unknown split {how!r}")
    qs = set(queries)
    return [n for n in names if n not in qs], queries


def synthetic_newpos(root: Path, num_map: int = 24, num_queries: int = 8) -> Path:
    """A synthetic ring scene whose queries are rendered from new positions -> ``root`` (images/, gt/).

    The map: ``num_map`` cameras on a ring of radius 6 around the scene (``img_*``); the queries: ``num_queries``
    cameras on a ring of radius 4.5 (closer, other heights: ``q_*``), same planes and textures (same seed; one
    texture per face: no repeated structure).
    """
    import shutil

    import pycolmap

    sys.path.insert(0, str(REPO / "datasets"))
    import synthetic

    if (root / "gt" / "images.txt").is_file():
        return root
    base = dict(layout="ring", width=640, height=480, focal=520.0, seed=11, unique_textures=True)
    synthetic.generate(root / "map", synthetic.SceneConfig(num_images=num_map, radius=6.0, **base))
    synthetic.generate(root / "q", synthetic.SceneConfig(num_images=num_queries, radius=4.5, **base))
    (root / "images").mkdir(parents=True, exist_ok=True)
    gt = pycolmap.Reconstruction()
    for part, prefix in (("map", ""), ("q", "q_")):
        rec = pycolmap.Reconstruction(str(root / part / "gt"))
        for im in rec.images.values():
            shutil.copy(root / part / "images" / im.name, root / "images" / (prefix + im.name))
            cam = rec.cameras[im.camera_id]
            cam_id = len(gt.cameras) + 1
            gt.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=cam_id, model=cam.model, width=cam.width,
                                                           height=cam.height, params=cam.params))
            gt.add_image_with_trivial_frame(pycolmap.Image(name=prefix + im.name, camera_id=cam_id,
                                                           image_id=len(gt.images) + 1), im.cam_from_world())
    (root / "gt").mkdir(exist_ok=True)
    gt.write_text(str(root / "gt"))
    return root


def link_queries(src: Path, dst: Path, names: list[str], scale: float, crop: float = 1.0) -> None:
    """The queries in ``dst``: links to the originals, or copies (PNG, same names) cropped to their central
    ``crop`` share (a longer focal length: another device of the same aspect ratio) and resized by ``scale``."""
    if scale == 1.0 and crop == 1.0:
        return link_images(src, dst, names)
    from PIL import Image

    for n in names:
        target = dst / n
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with Image.open(src / n) as im:
                w, h = im.size
                cw, ch = round(w * crop), round(h * crop)
                box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
                im.convert("RGB").crop(box).resize((round(w * scale), round(h * scale)), Image.LANCZOS).save(
                    target, format="PNG")


SYNTHETIC_NEWPOS = "syn-ring-newpos"  # generated in WORK (synthetic_newpos): queries from new positions


def link_images(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        target = dst / n
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink((src / n).resolve(), target)


def build_map(images: Path, output: Path, **configs) -> dict:
    """The reconstruction stages in order (each resumable); returns the mapping summary."""
    from loftr_sfm.database import run_database
    from loftr_sfm.keypoints import run_keypoints
    from loftr_sfm.matching import run_matching
    from loftr_sfm.pairs import run_pairs
    from loftr_sfm.sfm import run_mapping

    output.mkdir(parents=True, exist_ok=True)
    for name, fn in (("pairs", run_pairs), ("matching", run_matching), ("keypoints", run_keypoints),
                     ("database", run_database)):
        t = time.perf_counter()
        fn(output, images, configs.get(name))
        logger.info("map stage %s: %.1f s", name, time.perf_counter() - t)
    return run_mapping(output, images, configs.get("mapping"))


def run_one(scene: str, matcher: str, args) -> dict:
    from loftr_sfm.localization import Localizer

    work = args.work / scene
    data = synthetic_newpos(work / "data") if scene == SYNTHETIC_NEWPOS else args.data / scene
    names = list_images(data / "images")
    how = "prefix" if scene == SYNTHETIC_NEWPOS else args.split
    map_names, queries = split(names, how)
    if args.max_queries:
        queries = queries[: args.max_queries]
    map_images = work / ("map_images" if how in ("every3", "prefix") else f"map_images_{how}")
    crop = f"_crop{args.query_crop:g}" if args.query_crop != 1.0 else ""
    query_images = work / ("queries" if how == "every3" and args.query_scale == 1.0 and not crop
                           else f"queries_{how}_x{args.query_scale:g}{crop}")
    link_images(data / "images", map_images, map_names)
    link_queries(data / "images", query_images, queries, args.query_scale, args.query_crop)
    tag = matcher + ("_gtK" if args.gt_intrinsics else "_defaults" if args.defaults else "")
    if how not in ("every3", "prefix"):
        tag += f"_{how}"  # another map
    map_dir = work / f"map_{tag}"
    loc_dir = work / (f"loc_{tag}" if args.query_scale == 1.0 and not crop else f"loc_{tag}_x{args.query_scale:g}{crop}")

    database = {"camera_mode": "single"}
    loc_cfg = {"matcher": matcher, "num_retrieved": args.num_retrieved, "camera_source": "map"}
    if args.defaults:  # what a user gets: one camera per image in the database, the query camera by the auto rule
        database, loc_cfg = {}, {"matcher": matcher, "num_retrieved": args.num_retrieved}
    if args.gt_intrinsics:
        model, params = gt_camera_params(data / "gt")
        database.update(camera_model=model, camera_params=params)
        loc_cfg.update(camera_source="auto", camera_model=model, camera_params=params)
    pairs = dict(SCENES.get(scene, {"pairs": {"method": "exhaustive"}})["pairs"])
    t0 = time.perf_counter()
    summary = build_map(
        map_images,
        map_dir,
        pairs=pairs,
        matching={"matcher": matcher, "num_workers": args.num_workers},
        keypoints={"preset": matcher},
        database=database,
        mapping={"mapper": args.mapper},
    )
    map_seconds = time.perf_counter() - t0
    rec_eval = evaluate_reconstruction(map_dir / "model", {n: p for n, p in _gt(data).items() if n in set(map_names)})
    logger.info("%s / %s map: %s", scene, matcher, rec_eval.row())

    loc = Localizer(map_dir, map_images, loc_cfg)
    # a fresh log each run: timings must be measured, not resumed
    log = loc_dir / "localize_log.json"
    if log.exists() and not args.resume:
        log.unlink()
    t1 = time.perf_counter()
    results = loc.localize([query_images / q for q in queries], loc_dir / "poses.txt", query_root=query_images)
    loc_seconds = time.perf_counter() - t1
    gt = _gt(data)
    unit = SCENES.get(scene, {}).get("unit")
    scale = 1.0 / unit if unit else REL_UNIT * scene_extent(camera_centers(gt, sorted(gt)))  # GT units per "metre"
    thresholds = tuple((p * scale, r) for p, r in DEFAULT_RECALL_THRESHOLDS)
    ev = evaluate_localization(loc_dir / "poses.txt", gt, queries=queries, map_reconstruction=map_dir / "model",
                               config={"recall_thresholds": thresholds})
    times = [r.time for r in results]
    mtimes = [r.matching_time for r in results]
    # photos of other places: every pose given to one of them is a false pose
    negatives = [(other, n) for other in args.negatives if other != scene
                 for n in list_images(args.data / other / "images")[: args.num_negatives]]
    false_poses = 0
    if negatives:
        neg_dir = work / f"negatives_{tag}"
        link_images(args.data, neg_dir / "images", [f"{o}/images/{n}" for o, n in negatives])
        neg = loc.localize(neg_dir / "images", neg_dir / "poses.txt")
        false_poses = sum(r.success for r in neg)
        logger.info("%s / %s: %d of %d photos of other scenes got a pose (%s)", scene, matcher, false_poses,
                    len(neg), ", ".join(f"{r.name}: {r.num_inliers} inliers" for r in neg if r.success))
    row = {
        "scene": scene,
        "split": how + (f", queries x{args.query_scale:g}" if args.query_scale != 1.0 else "")
                 + (f", cropped to {args.query_crop:g}" if crop else ""),
        "matcher": matcher,
        "intrinsics": "GT" if args.gt_intrinsics else "defaults" if args.defaults else "map (estimated)",
        "map_registered": rec_eval.row()["registered"],
        "map_rot_med_deg": rec_eval.rotation_error["median"],
        "queries": ev.num_queries,
        "localized": ev.num_localized,
        **{f"recall@{recall_key(p, r)}": ev.recall[recall_key(p * scale, r)] for p, r in DEFAULT_RECALL_THRESHOLDS},
        "rot_med_deg": ev.rotation_error_median,
        "pos_med": ev.position_error_median,
        "units": "m" if unit else "relative",
        "pos_med_m": ev.position_error_median / scale if ev.position_error_median is not None else None,
        # GT units (metres for Strecha; arbitrary for fox): median camera distance to the median centre
        "gt_extent": scene_extent(camera_centers(gt, sorted(gt))),
        "s_per_query": sum(times) / max(len(times), 1),
        "false_poses": f"{false_poses}/{len(negatives)}",
        "matching_share": sum(mtimes) / max(sum(times), 1e-9),
        "map_seconds": map_seconds,
        "localize_seconds": loc_seconds,
    }
    save_json(loc_dir / "evaluation.json", {"row": row, "localization": ev.to_dict(), "map": rec_eval.to_dict(),
                                            "map_summary": summary if isinstance(summary, dict) else None})
    return row


def _gt(data: Path):
    from loftr_sfm.evaluation import poses_from_reconstruction

    return poses_from_reconstruction(data / "gt")


COLUMNS = [
    ("scene", "scene"), ("split", "queries"), ("matcher", "matcher"), ("intrinsics", "intrinsics"), ("map_registered", "map reg."),
    ("localized", "localized"), ("queries", "queries"),
    ("recall@0.25m,2deg", "0.25m,2°"), ("recall@0.5m,5deg", "0.5m,5°"), ("recall@5m,10deg", "5m,10°"),
    ("units", "thresholds"), ("rot_med_deg", "med rot [°]"), ("pos_med_m", "med pos [m or rel. m]"),
    ("gt_extent", "GT extent"),
    ("s_per_query", "s/query"), ("false_poses", "false poses"),
    ("matching_share", "matching share"),
]


def format_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    lines = []
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            v = r.get(k, "")
            if k.startswith("recall") or k == "matching_share":
                v = f"{100 * v:.1f}%"
            elif isinstance(v, float):
                v = f"{v:.3f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["castle-P30", "fox"])
    ap.add_argument("--matchers", nargs="+", default=["xfeat-star", "sift"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, required=True, help="work folder (maps, logs, results)")
    ap.add_argument("--num-retrieved", type=int, default=10)
    ap.add_argument("--mapper", default="incremental")
    ap.add_argument("--num-workers", type=int, default=2, help="image decoding workers of the map matching")
    ap.add_argument("--max-queries", type=int, default=0, help="evaluate only the first N queries (0 = all)")
    ap.add_argument("--gt-intrinsics", action="store_true", help="map and queries use the GT calibration")
    ap.add_argument("--defaults", action="store_true",
                    help="the library's default camera policy for map and queries (else one shared map camera, reused)")
    ap.add_argument("--negatives", nargs="*", default=[],
                    help="other scenes whose photos are localized too: each pose given to one is a false pose")
    ap.add_argument("--num-negatives", type=int, default=4, help="photos per negative scene")
    ap.add_argument("--resume", action="store_true", help="reuse queries already in the localization log")
    ap.add_argument("--table", type=Path, default=None, help="append rows to this markdown file")
    ap.add_argument("--split", choices=("every3", "blocks"), default="every3",
                    help="queries: every third image, or pairs of neighbours (viewpoints the map lacks); the scene "
                         f"{SYNTHETIC_NEWPOS} always has its own queries, rendered from new positions")
    ap.add_argument("--query-scale", type=float, default=1.0, help="queries resized by this factor (another resolution)")
    ap.add_argument("--query-crop", type=float, default=1.0,
                    help="queries cropped to this central share first (a longer focal length: another device)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    rows = []
    for scene in args.scenes:
        for matcher in args.matchers:
            row = run_one(scene, matcher, args)
            rows.append(row)
            print(json.dumps(row, indent=1))
    table = format_table(rows)
    print(table)
    save_json(args.work / "localization_results.json", rows)
    if args.table:
        with open(args.table, "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
