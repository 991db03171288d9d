"""Reconstruction accuracy grid: scenes x matchers x pair selection x mappers, against GT.

Runs the library's stages (nothing of its own) for every combination and prints one table row
per run (registered fraction, rotation / position errors after Sim(3) alignment on camera
centres, relative-pose AUC, and stage times), in the format of
``pipelines/evaluate_reconstruction.py``. Every stage is resumable, so an interrupted grid
continues where it stopped.

Matching is done once per (scene, matcher): on the exhaustive pairs when ``exhaustive`` is
requested, else on the union of the requested methods' pairs; every run takes its pairs' raw
matches from there (the matching stage then has nothing left to do), so all pair-selection
methods see identical matches. ``--pairs sequential`` is the sequential window alone and
``sequential+loop`` adds the loop-closure pairs (what ``reconstruct`` does by default).

``--intrinsics gt`` adds runs with the GT calibration (one camera, fixed in bundle adjustment):
with the default policy (principal point fixed at the image centre) Strecha scenes carry a
~0.5 degree rotation bias that hides the differences between matchers. ``--intrinsics shared``
estimates one camera for all images (``camera_mode single``; focal length, distortion and, by
the mapping stage's auto rule, the principal point refined), what a user states for photos
taken with one camera.

Usage:
    python pipelines/evaluate_scenes.py --scenes herzjesu-P8 castle-P30 --matchers xfeat-star sift \
        --pairs exhaustive sequential retrieval --mappers incremental global --work outputs/eval \
        --table outputs/eval/results.md
    python pipelines/evaluate_scenes.py --scenes fox --pairs sequential retrieval   # no exhaustive matching
    python pipelines/evaluate_scenes.py --scenes fox --pairs sequential+loop   # with retrieval loop closure
    python pipelines/evaluate_scenes.py --scenes castle-P30 --pairs exhaustive --intrinsics estimated gt
    python pipelines/evaluate_scenes.py --scenes fox --pairs retrieval --mappers incremental --repeats 3

``--repeats N`` maps every cell N times (mapper seeds 0..N-1, each run in its own folder
``<mapper>``, ``<mapper>_run1``, ...) and adds a row ``<mapper>, N runs`` with the median and the
range of each column: pycolmap's mappers depend on their seed (and, multithreaded, are not always
deterministic), and one database of castle-P30 maps to models whose AUC@1 differs by up to 0.02,
more than some of the differences between matchers a single run shows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import h5py

from loftr_sfm.database import run_database
from loftr_sfm.evaluation import EvaluationConfig, evaluate_reconstruction, gt_camera_params
from loftr_sfm.io import atomic_path, find_pair, read_pairs, write_pairs
from loftr_sfm.keypoints import run_keypoints
from loftr_sfm.matching import run_matching
from loftr_sfm.pairs import run_pairs
from loftr_sfm.sfm import run_mapping

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
logger = logging.getLogger("evaluate_scenes")

COLUMNS = ["scene", "matcher", "pairs", "intrinsics", "mapper", "registered", "rot_med_deg", "rot_max_deg", "pos_med",
           "AUC@1", "AUC@2", "AUC@5", "points", "track", "reproj_px", "match_s", "map_s"]
HEADER = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def copy_raw_matches(src: Path, dst: Path, pairs: list[tuple[str, str]]) -> None:
    """Copy the raw datasets of ``pairs`` from ``src`` matches.h5 into a new ``dst`` (atomically)."""
    if dst.exists():
        return
    with atomic_path(dst) as tmp, h5py.File(src, "r") as fi, h5py.File(tmp, "w") as fo:
        if "matcher" in fi.attrs:
            fo.attrs["matcher"] = fi.attrs["matcher"]
        for n0, n1 in pairs:
            key, _ = find_pair(fi, n0, n1)
            g = fo.require_group(key)
            for ds in ("keypoints0", "keypoints1", "scores"):
                g.create_dataset(ds, data=fi[key][ds][()])


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.4f}"
    return str(v)


KEY_COLUMNS = 5  # scene, matcher, pairs, intrinsics, mapper: what identifies a cell of the grid


def table_rows(table: Path | None) -> dict[tuple[str, ...], str]:
    """The rows of an existing ``--table`` file, keyed by their cell (first :data:`KEY_COLUMNS` cells)."""
    if table is None or not table.is_file():
        return {}
    rows = {}
    for line in table.read_text().splitlines()[2:]:  # after the header and its rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= KEY_COLUMNS:
            rows[tuple(cells[:KEY_COLUMNS])] = line
    return rows


def emit_row(row: dict, columns: list[str], rows: dict[tuple[str, ...], str], table: Path | None) -> None:
    """Print one markdown table row, put it into ``rows`` (replacing the same cell's) and rewrite ``table``.

    ``rows`` starts with the rows already in ``table``, so a grid run in several invocations (one
    scene at a time, say) ends with one table of every cell; a cell run again replaces its row.
    """
    cells = [fmt(row.get(c, "")) for c in columns]
    line = "| " + " | ".join(cells) + " |"
    rows[tuple(cells[:KEY_COLUMNS])] = line
    print(line, flush=True)
    if table:
        with atomic_path(table) as tmp:
            tmp.write_text(HEADER + "\n" + "\n".join(rows.values()) + "\n")


def aggregate_rows(rows: list[dict], label: str) -> dict:
    """One row summarizing repeated runs of a cell: ``median (min-max)`` of every numeric column.

    The key columns come from the first row, with ``mapper`` replaced by ``label``; ``registered``
    ("k/n") is the fewest registered of the runs, with the range when the runs differ.
    """
    out = {c: rows[0][c] for c in ("scene", "matcher", "pairs", "intrinsics")}
    out["mapper"] = label
    regs = sorted({r["registered"] for r in rows if "registered" in r}, key=lambda v: int(str(v).split("/")[0]))
    if regs:
        out["registered"] = regs[0] if len(regs) == 1 else f"{regs[0]} ({regs[0]}-{regs[-1]})"
    for c in COLUMNS[KEY_COLUMNS:]:
        values = [r[c] for r in rows if isinstance(r.get(c), (int, float))]  # registered ("k/n") is done above
        if not values:
            continue
        counts = all(isinstance(v, int) for v in values)  # points: printed as integers
        values = [v for v in values if v == v]  # nan: a run without a model
        if len(values) == 1:
            out[c] = values[0]
        elif values:
            med = statistics.median(values)
            out[c] = f"{fmt(round(med) if counts else med)} ({fmt(min(values))}-{fmt(max(values))})"
    return out


def known_intrinsics(model: str, params: str) -> tuple[dict, dict]:
    """(database, mapping) options of a run with a known calibration: one camera, fixed in bundle adjustment."""
    return ({"camera_mode": "single", "camera_model": model, "camera_params": params},
            {"refine_focal_length": False, "refine_extra_params": False})


def model_row(summary: dict, output: Path, gt: Path) -> dict:
    """Table columns of a mapping ``summary`` whose model is in ``output/model``, evaluated against ``gt``."""
    row = {"points": summary.get("points", 0), "track": summary.get("mean_track_length", 0.0),
           "reproj_px": summary.get("mean_reprojection_error", 0.0)}
    if summary.get("registered", 0) and (output / "model").is_dir():
        row.update(evaluate_reconstruction(output / "model", gt, EvaluationConfig()).row())
    else:
        row["registered"] = f"0/{summary.get('num_images', '?')}"
    return row


def pairs_options(method: str, num_neighbors: int) -> dict:
    """The pairs stage's options for a method of the grid: a PairsConfig method (``sequential`` without loop
    closure), or ``sequential+loop`` (sequential pairs plus retrieval loop closure, the library's default)."""
    if method.startswith("sequential"):
        return {"method": "sequential", "num_neighbors": num_neighbors, "loop_closure": method == "sequential+loop"}
    return {"method": method, "num_neighbors": num_neighbors}


def match_source(scene: str, matcher: str, methods: list[str], work: Path, num_neighbors: int,
                 matcher_options: str | None = None) -> tuple[Path, float]:
    """Match once per (scene, matcher); returns (folder with the raw matches, seconds spent).

    With ``exhaustive`` among the methods the exhaustive pairs are matched (every other method's
    pairs are a subset); otherwise only the union of the requested methods' pairs (``union/``),
    which keeps large scenes such as fox (67 images, 2,211 exhaustive pairs) affordable.
    """
    images = DATA / scene / "images"
    base = work / scene / matcher
    t0 = time.perf_counter()
    if "exhaustive" in methods:
        src = base / "exhaustive"
        run_pairs(src, images, {"method": "exhaustive"})
    else:
        src = base / "union"
        pairs: set[tuple[str, str]] = set()
        for method in methods:
            run_pairs(base / method, images, pairs_options(method, num_neighbors))
            pairs.update(read_pairs(base / method / "pairs.txt"))
        write_pairs(src / "pairs.txt", sorted(pairs))  # untouched when unchanged
    run_matching(src, images, {"matcher": matcher, "matcher_options": matcher_options})
    return src, time.perf_counter() - t0


def run_one(scene: str, matcher: str, method: str, mappers: list[str], work: Path, num_neighbors: int,
            source: Path, match_s: float, intrinsics: str = "estimated",
            matcher_options: str | None = None,
            camera_model: str = "SIMPLE_RADIAL", repeats: int = 1) -> list[dict]:
    """Keypoints, database, mapping and evaluation of one (scene, matcher, pairs, intrinsics) cell.

    ``intrinsics``: ``estimated`` (the library's default camera policy: one SIMPLE_RADIAL camera
    per image, focal refined, principal point fixed at the centre), ``shared`` (one SIMPLE_RADIAL
    camera for all images, principal point refined too) or ``gt`` (one camera with the GT
    calibration, kept fixed in bundle adjustment), which removes the principal-point bias and
    leaves the matches as the only difference between matchers.
    ``camera_model``: the COLMAP model of the estimated cameras (``estimated`` and ``shared``); runs
    with another model than SIMPLE_RADIAL go to their own folders (``<pairs>_shared_radial``, ...).
    ``repeats``: map each mapper this many times (seeds 0..repeats-1, folders ``<mapper>``,
    ``<mapper>_run1``, ...); rows ``<mapper> run k`` for k >= 1 and, after them, the
    :func:`aggregate_rows` row ``<mapper>, <repeats> runs``.
    """
    images = DATA / scene / "images"
    gt = DATA / scene / "gt"
    base = work / scene / matcher
    out = base / {"estimated": method, "gt": f"{method}_gtK", "shared": f"{method}_shared"}[intrinsics]
    if intrinsics != "gt" and camera_model != "SIMPLE_RADIAL":
        out = out.with_name(f"{out.name}_{camera_model.lower()}")
    run_pairs(out, images, pairs_options(method, num_neighbors))
    if out != source:
        copy_raw_matches(source / "matches.h5", out / "matches.h5", read_pairs(out / "pairs.txt"))
        run_matching(out, images, {"matcher": matcher, "matcher_options": matcher_options})  # nothing left: resumes
    run_keypoints(out, images, {"preset": matcher})
    database: dict = {}
    mapping_extra: dict = {}
    if intrinsics == "gt":
        database, fixed = known_intrinsics(*gt_camera_params(gt))
        mapping_extra.update(fixed)
    elif intrinsics == "shared":
        database = {"camera_mode": "single", "camera_model": camera_model}
    else:
        database = {"camera_model": camera_model}
    run_database(out, images, database)
    rows = []
    label = intrinsics if intrinsics == "gt" or camera_model == "SIMPLE_RADIAL" else f"{intrinsics} {camera_model}"
    for mapper in mappers:
        runs = []
        for run in range(repeats):
            mdir = out / (mapper if run == 0 else f"{mapper}_run{run}")
            mdir.mkdir(parents=True, exist_ok=True)
            if not (mdir / "database.db").exists() or (mdir / "database.db").stat().st_mtime < (out / "database.db").stat().st_mtime:
                shutil.copy2(out / "database.db", mdir / "database.db")
            mapping = {"mapper": mapper, **mapping_extra, **({"seed": run} if run else {})}
            t1 = time.perf_counter()
            summary = run_mapping(mdir, images, mapping)
            map_s = time.perf_counter() - t1
            row = {"scene": scene, "matcher": matcher, "pairs": method, "intrinsics": label,
                   "mapper": mapper if run == 0 else f"{mapper} run {run}",
                   **model_row(summary, mdir, gt), "match_s": match_s, "map_s": map_s}
            runs.append(row)
            (mdir / "evaluation.json").write_text(json.dumps(row, indent=1, default=str))
        rows += runs
        if repeats > 1:
            rows.append(aggregate_rows(runs, f"{mapper}, {repeats} runs"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["herzjesu-P8", "castle-P30"])
    ap.add_argument("--matchers", nargs="+", default=["xfeat-star", "sift"])
    ap.add_argument("--pairs", nargs="+", default=["exhaustive", "sequential", "retrieval"],
                    choices=["exhaustive", "sequential", "retrieval", "sequential+loop"],
                    help="pair selection methods (sequential+loop: sequential with retrieval loop closure)")
    ap.add_argument("--mappers", nargs="+", default=["incremental", "global"])
    ap.add_argument("--intrinsics", nargs="+", default=["estimated"], choices=["estimated", "shared", "gt"],
                    help="camera policy: estimated (library default), shared (one estimated camera) and/or gt "
                         "(GT calibration, fixed)")
    ap.add_argument("--camera-model", default="SIMPLE_RADIAL",
                    help="COLMAP model of the estimated cameras (estimated and shared intrinsics), e.g. RADIAL")
    ap.add_argument("--num-neighbors", type=int, default=10)
    ap.add_argument("--matcher-options", default=None,
                    help="backend options for every matcher, 'key=value,...' (use a separate --work per setting)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="map every cell this many times (mapper seeds 0..N-1) and add a row with the median and "
                         "range of the runs")
    ap.add_argument("--work", type=Path, default=Path("outputs/eval"))
    ap.add_argument("--table", type=Path, default=None,
                    help="write the markdown table here too; rows already in the file are kept (a cell run "
                         "again replaces its row), so a grid run scene by scene ends in one table")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    if not DATA.is_dir():
        print(f"error: {DATA} not found", file=sys.stderr)
        return 2
    rows = table_rows(args.table)  # earlier invocations' rows stay in the table
    print(HEADER, flush=True)
    for scene in args.scenes:
        for matcher in args.matchers:
            source, match_s = match_source(scene, matcher, args.pairs, args.work, args.num_neighbors,
                                           args.matcher_options)
            for method, intrinsics in itertools.product(args.pairs, args.intrinsics):
                # the pair methods other than the matched one reuse its matches: no matching time
                spent = match_s if args.work / scene / matcher / method == source else 0.0
                for row in run_one(scene, matcher, method, args.mappers, args.work, args.num_neighbors,
                                   source, spent, intrinsics, args.matcher_options, args.camera_model, args.repeats):
                    emit_row(row, COLUMNS, rows, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
