"""Our keypoints and database stages against hloc's, with the same mapping stage after them.

For every scene of a finished suite run (``pipelines/scene_suite.py --work WORK``), our mapping stage
with its defaults maps hloc's database (``WORK/<scene>/hloc-*/sfm/database.db``: hloc's
``aggregate_matches`` + ``assign_matches`` keypoints and its geometric verification, from the same raw
matches as ours) in ``OUT/<scene>``. Beside it, the suite's own rows: ours (our keypoints and database
stages, then the same mapping stage) and hloc (its keypoints, then its own mapping). What the rows differ
in is the keypoints and database stages alone.

    python pipelines/database_vs_hloc.py --work outputs/suite --out outputs/database_vs_hloc [--scenes ...]

Prints one Markdown row per scene: registered, median rotation error deg / AUC@1 / AUC@5 of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_suite import SUITE, scene_inputs

from loftr_sfm.evaluation import evaluate_reconstruction
from loftr_sfm.sfm import run_mapping


def cell(row: dict) -> str:
    if "rot_med_deg" not in row:
        return f"{row['registered']}"
    return f"{row['registered']}, {row['rot_med_deg']:.3f} / {row['AUC@1']:.3f} / {row['AUC@5']:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder of a finished scene_suite.py run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", nargs="+", default=None)
    args = ap.parse_args(argv)
    suite = {(r["scene"], r["method"]): r for r in json.loads((args.work / "suite.json").read_text())}
    print("| scene | our keypoints + database, our mapping | hloc's keypoints + database, our mapping | hloc |")
    print("|---|---|---|---|")
    for scene in SUITE:
        if args.scenes and scene.name not in args.scenes:
            continue
        hloc_db = next((p / "sfm" / "database.db" for p in sorted((args.work / scene.name).glob("hloc-*"))
                        if (p / "sfm" / "database.db").is_file()), None)
        if hloc_db is None or (scene.name, "ours") not in suite:
            print(f"| {scene.name} | (no suite run or hloc database in {args.work / scene.name}) |||")
            continue
        images, gt, _served = scene_inputs(scene, args.work)  # the suite's own (already made) inputs
        out = args.out / scene.name
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(hloc_db, out / "database.db")
        run_mapping(out, images, {"overwrite": True})
        ours_on_hloc = (evaluate_reconstruction(out / "model", gt).row() if (out / "model").is_dir()
                        else {"registered": "0"})
        print(f"| {scene.name} | {cell(suite[(scene.name, 'ours')])} | {cell(ours_on_hloc)} | "
              f"{cell(suite.get((scene.name, 'hloc'), {'registered': '-'}))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
