"""Compare a reconstruction with a ground-truth COLMAP model and print / save one table row.

Usage:
    python pipelines/evaluate_reconstruction.py --model OUT/model --gt ../shared/data/castle-P30/gt \
        [--label "castle xfeat-star exhaustive glomap"] [--output eval.json] [--table results.md]

Metrics (see loftr_sfm.evaluation): registered fraction; Sim(3) on camera centres (robust);
median / max rotation and position error (GT units: metres for Strecha); relative-pose AUC at
1/2/5 deg (SuperGlue/LoFTR style: max(rotation, translation-direction) error over all GT image
pairs, unregistered images count as failures).
``--model`` may also be an output folder of ``loftr-sfm reconstruct`` (its ``model/`` is used).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction, save_json  # noqa: E402
from loftr_sfm.io import InputError  # noqa: E402

COLUMNS = ["label", "registered", "rot_med_deg", "rot_max_deg", "pos_med", "pos_max", "AUC@1", "AUC@2", "AUC@5"]


def format_row(row: dict) -> str:
    cells = []
    for c in COLUMNS:
        v = row.get(c, "")
        if isinstance(v, float):
            v = "nan" if v != v else (f"{v:.3f}" if c.startswith("AUC") or "deg" in c else f"{v:.4f}")
        cells.append(str(v))
    return "| " + " | ".join(cells) + " |"


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="COLMAP model folder (or a reconstruct output dir)")
    ap.add_argument("--gt", type=Path, required=True, help="ground-truth COLMAP model folder")
    ap.add_argument("--label", default=None, help="row label (default: the model path)")
    ap.add_argument("--output", type=Path, default=None, help="save the full evaluation as JSON")
    ap.add_argument("--table", type=Path, default=None, help="append the row to this markdown table")
    ap.add_argument("--align-threshold", type=float, default=0.05, help="RANSAC threshold, fraction of GT extent")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model = args.model
    if (model / "model").is_dir():
        model = model / "model"
    try:
        ev = evaluate_reconstruction(model, args.gt, EvaluationConfig(align_threshold=args.align_threshold))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    row = {"label": args.label or str(args.model), **ev.row()}
    line = format_row(row)
    print(table_header())
    print(line)
    if ev.message:
        print(f"note: {ev.message}")
    if args.output:
        save_json(args.output, {"label": row["label"], "model": str(model), "gt": str(args.gt), **ev.to_dict()})
    if args.table:
        new = not args.table.exists()
        with open(args.table, "a") as f:
            if new:
                f.write(table_header() + "\n")
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
