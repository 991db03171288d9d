"""False poses: photos of other places localized against every map of the scene suite.

Every GT scene's map from a finished suite run (``pipelines/scene_suite.py --work WORK``: our output
folder ``WORK/<scene>/<matcher>``, default options) is asked to localize ``--per-scene`` photos of every
other scene (the first ones in name order). None of them sees the map, so every pose given is a false
pose. Prints the false poses per map and per query scene, and the strongest evidence a negative got
(most PnP inliers), against which the localization's pose rule is judged.

    python pipelines/false_poses.py --work outputs/suite [--matcher xfeat-star] [--per-scene 3]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_suite import DATA, GT_SCENES  # noqa: E402

from loftr_sfm.io import list_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from loftr_sfm.localization import Localizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder of a finished scene_suite.py run")
    ap.add_argument("--matcher", default="xfeat-star")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--scenes", nargs="+", default=GT_SCENES)
    ap.add_argument("--per-scene", type=int, default=3, help="photos of each other scene")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default WORK/false_poses)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    out = args.out or args.work / "false_poses"
    rows = []
    for scene in args.scenes:
        map_dir = args.work / scene / args.matcher
        if not (map_dir / "model").is_dir():
            print(f"{scene}: no map in {map_dir}, skipped")
            continue
        negatives = out / scene / "images"
        negatives.mkdir(parents=True, exist_ok=True)
        for other in args.scenes:
            if other == scene:
                continue
            for n in list_images(args.data / other / "images")[: args.per_scene]:
                link = negatives / f"{other}__{n.replace('/', '__')}"
                if not link.exists():
                    os.symlink((args.data / other / "images" / n).resolve(), link)
        loc = Localizer(map_dir, args.data / scene / "images", {"matcher": args.matcher})
        t0 = time.perf_counter()
        results = loc.localize(negatives, out / scene / "poses.txt")
        seconds = time.perf_counter() - t0
        for r in results:
            rows.append({"map": scene, "query": r.name, "query_scene": r.name.split("__")[0], "posed": bool(r.success),
                         "inliers": int(r.num_inliers), "matches_2d3d": int(r.num_2d3d), "message": r.message})
        posed = [r for r in results if r.success]
        print(f"{scene}: {len(posed)} of {len(results)} photos of other scenes got a pose"
              f"{' (' + ', '.join(f'{r.name}: {r.num_inliers} inliers' for r in posed) + ')' if posed else ''}; "
              f"most inliers among the refused: {max((r.num_inliers for r in results if not r.success), default=0)}; "
              f"{seconds / max(len(results), 1):.1f} s/query", flush=True)
    (out / "false_poses.json").write_text(json.dumps(rows, indent=1))
    total, posed = len(rows), sum(r["posed"] for r in rows)
    print(f"\nall maps: {posed} false poses of {total} queries of other scenes")
    print("| map | queries | false poses | most inliers of a refused query |\n|---|---|---|---|")
    for scene in args.scenes:
        mine = [r for r in rows if r["map"] == scene]
        if mine:
            print(f"| {scene} | {len(mine)} | {sum(r['posed'] for r in mine)} | "
                  f"{max((r['inliers'] for r in mine if not r['posed']), default=0)} |")
    return 0 if total else 1


if __name__ == "__main__":
    sys.exit(main())
