"""What track refinement (or the relative filter) does to the models of a reconstruction grid, against GT.

For every model that ``pipelines/evaluate_scenes.py`` left in ``--work``
(``<scene>/<matcher>/<pairs>[_gtK]/<mapper>/model``), applies the mapping stage's own track
refinement (:func:`loftr_sfm.sfm.refine.refine_model_tracks`, with the mapping options that
model was built with) to a copy and prints one row: the model as mapped without refinement, and
after it (rotation / position errors after Sim(3), relative-pose AUC, reprojection error, points,
seconds). The refined row is what the mapping stage gives with ``refine_tracks=on`` when its
mapper returns that model (pycolmap's multithreaded mappers are not deterministic, so a rerun may
map differently); same models before and after is what an ablation needs, and it avoids re-running
the mappers (minutes per model).
Pass ``--options`` (``key=value,...``) to try other :class:`TrackRefinementConfig` settings.

``--step filter`` applies the mapping stage's last step instead, the relative filter
(:func:`loftr_sfm.sfm.refine.filter_model`; ``--factor`` overrides its multiple), to the
models that were mapped without it (their summary.json says ``relative_filter`` null).

Usage:
    python pipelines/evaluate_track_refinement.py --work outputs/eval_refined --scenes castle-P30 \
        --matchers xfeat-star sift --table outputs/track_refinement.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction  # noqa: E402
from loftr_sfm.sfm import MappingConfig, load_model  # noqa: E402
from loftr_sfm.sfm.refine import filter_model, refine_model_tracks, relative_filter_factor  # noqa: E402
from loftr_sfm.utils import merge_config  # noqa: E402
from evaluate_scenes import emit_row  # noqa: E402  (this folder is on sys.path when run as a script)

COLUMNS = ["scene", "matcher", "pairs", "intrinsics", "mapper", "applied", "registered", "rot_med_deg",
           "rot_max_deg", "pos_med", "AUC@1", "AUC@2", "AUC@5", "points", "reproj_px", "seconds"]


def evaluate(rec, scene: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rec.write_binary(tmp)
        return evaluate_reconstruction(tmp, DATA / scene / "gt", EvaluationConfig()).row()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/eval"))
    ap.add_argument("--scenes", nargs="+", default=["herzjesu-P8", "castle-P30", "fox"])
    ap.add_argument("--matchers", nargs="+", default=["xfeat-star", "sift"])
    ap.add_argument("--mappers", nargs="+", default=["incremental", "global"])
    ap.add_argument("--options", default=None, help="TrackRefinementConfig options, 'key=value,key=value'")
    ap.add_argument("--step", choices=["tracks", "filter"], default="tracks",
                    help="tracks: track refinement; filter: the relative filter")
    ap.add_argument("--factor", type=float, default=None, help="--step filter: relative_filter_factor")
    ap.add_argument("--table", type=Path, default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    if not DATA.is_dir():
        print(f"error: {DATA} not found", file=sys.stderr)
        return 2
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    print("\n".join(lines), flush=True)
    for scene in args.scenes:
        for matcher in args.matchers:
            for mdir in sorted((args.work / scene / matcher).glob("*/*/model")):
                cell, mapper = mdir.parent.parent.name, mdir.parent.name
                if mapper not in args.mappers or not (mdir.parent / "summary.json").is_file():
                    continue
                summary = json.loads((mdir.parent / "summary.json").read_text())
                if args.step == "filter" and summary.get("relative_filter"):
                    continue  # filtered when mapped already
                cfg = merge_config(MappingConfig, summary.get("config", {}), track_refinement=args.options,
                                   relative_filter_factor=args.factor)
                rec = load_model(mdir.parent)
                base = {"scene": scene, "matcher": matcher, "pairs": cell.removesuffix("_gtK"),
                        "intrinsics": "gt" if cell.endswith("_gtK") else "estimated", "mapper": mapper}
                rows = [{**base, "applied": "no", **evaluate(rec, scene), "points": rec.num_points3D(),
                         "reproj_px": rec.compute_mean_reprojection_error(), "seconds": ""}]
                t0 = time.perf_counter()
                if args.step == "filter":
                    refined, stats = filter_model(rec, cfg.refinement, cfg.cameras, cfg.num_threads)
                    done = f"filter x{relative_filter_factor(cfg.refinement, cfg.cameras):g}"
                else:
                    refined, stats = refine_model_tracks(rec, DATA / scene / "images", cfg.refinement, cfg.cameras,
                                                         cfg.num_threads)
                    done = "tracks"
                seconds = time.perf_counter() - t0
                rows.append({**base, "applied": "reverted" if stats["reverted"] else done, **evaluate(refined, scene),
                             "points": refined.num_points3D(), "reproj_px": refined.compute_mean_reprojection_error(),
                             "seconds": seconds})
                for row in rows:
                    emit_row(row, COLUMNS, lines, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
