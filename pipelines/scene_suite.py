"""The scene suite: the yardstick of every default, against plain COLMAP and hloc on the same images.

Every scene is reconstructed with the library's DEFAULT options (only the pair selection of the
scene is given) and, beside it, by:
- ``colmap-sift``: plain COLMAP through pycolmap (SIFT extraction, exhaustive matching, incremental
  mapping, all with their defaults) on the same images;
- ``bare-pycolmap``: pycolmap's incremental mapper with its defaults on the very database our
  stages wrote (what our mapping stage adds; its time is the denominator of ``after/bare``);
- ``hloc``: hloc's dense pipeline (``aggregate_matches`` + ``assign_matches`` +
  ``reconstruction.main``, from ``../shared/refs/hloc-src``) on the same raw matches.

Scenes: every GT scene of ``../shared/data`` and synthetic scenes of ``datasets/synthetic.py``
with varied layouts (exact GT; their raw matches are the generator's EfficientLoFTR-shaped ones,
``matcher`` column ``oracle``). Each scene belongs to the ``tune`` or the ``confirm`` split: a
default is chosen on ``tune`` and must hold on ``confirm``; the table reports both.

Columns: registered/total, median rotation / position error after a Sim(3) on camera centres
(position in GT units), relative-pose AUC@1/2/5 deg, matching seconds, seconds after matching
(keypoints + database + mapping), and ``after/bare`` (our after-matching time over the bare
pycolmap mapper's on the same database, timed in the same run). Everything is resumable (work
folder per scene and method). ``--fresh`` redoes our stages after the matching (raw matches are
kept) and bare pycolmap beside them; ``hloc`` and ``colmap-sift`` are kept while their inputs are
unchanged (the raw matches and pairs; the image files and the pycolmap version).

Usage:
    python pipelines/scene_suite.py --work outputs/suite --out docs/suite   # the whole suite
    python pipelines/scene_suite.py --quick --work outputs/suite_quick      # the CI subset, checked
    python pipelines/scene_suite.py --scenes eth3d-pipes syn-ring --methods ours colmap-sift
    python pipelines/scene_suite.py --methods ours bare-pycolmap --variant tracks='{"refine_tracks": "on"}' \
        --variant filter='{"relative_filter": true}'   # opt-in options on the same databases
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluate_scenes import (
    copy_raw_matches,  # this folder is on sys.path when run as a script
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "datasets"))

logger = logging.getLogger("scene_suite")

COLUMNS = ["scene", "split", "method", "matcher", "pairs", "registered", "rot_med_deg", "pos_med", "AUC@1", "AUC@2",
           "AUC@5", "match_s", "after_s", "after/bare"]


@dataclass
class Scene:
    name: str
    split: str  # tune | confirm
    pairs: dict  # PairsConfig options
    data: str | None = None  # a scene of ../shared/data
    synthetic: dict = field(default_factory=dict)  # synthetic.SceneConfig options
    quick: bool = False  # in the --quick subset (CI)

    @property
    def images_and_gt(self) -> tuple[Path, Path]:
        if self.data:
            return DATA / self.data / "images", DATA / self.data / "gt"
        raise ValueError("synthetic scenes live in the work folder")


SEQ5 = {"method": "sequential", "num_neighbors": 5}
EXH = {"method": "exhaustive"}
SUITE = [
    Scene("herzjesu-P8", "tune", EXH, data="herzjesu-P8"),
    Scene("castle-P30", "tune", SEQ5, data="castle-P30"),
    Scene("fox", "tune", SEQ5, data="fox"),
    Scene("eth3d-pipes", "confirm", EXH, data="eth3d-pipes"),
    Scene("dtu-scan24", "confirm", SEQ5, data="dtu-scan24"),
    Scene("middlebury-dino-ring", "confirm", SEQ5, data="middlebury-dino-ring"),
    Scene("nerf-synthetic-lego", "confirm", {"method": "retrieval", "num_neighbors": 10}, data="nerf-synthetic-lego"),
    Scene("syn-arc", "tune", EXH, synthetic={"num_images": 10, "layout": "arc", "seed": 1}, quick=True),
    Scene("syn-two-cameras", "tune", EXH, synthetic={
        "num_images": 12, "layout": "arc", "seed": 2, "principal_offset": (12.0, -8.0),
        "second_camera": {"focal": 300.0, "width": 360, "height": 270, "distortion": [0.05, -0.02]}}, quick=True),
    Scene("syn-video-gap", "tune", {"method": "sequential", "num_neighbors": 4},
          synthetic={"num_images": 20, "layout": "video_gap", "arc_deg": 120, "seed": 3}),
    Scene("syn-ring", "confirm", EXH, synthetic={"num_images": 24, "layout": "ring", "seed": 4}),
    Scene("syn-turntable", "confirm", EXH, synthetic={"num_images": 24, "layout": "turntable", "seed": 5}),
    Scene("syn-walk-turn", "confirm", {"method": "sequential", "num_neighbors": 4},
          synthetic={"num_images": 18, "layout": "walk_turn", "seed": 6}, quick=True),
    Scene("syn-wide-baseline", "confirm", EXH, synthetic={"num_images": 8, "layout": "wide_baseline", "seed": 7},
          quick=True),
    # a long lens without EXIF: the focal length is 4.2x the database's guess from the image size
    Scene("syn-telephoto-ring", "tune", EXH, synthetic={"num_images": 24, "layout": "ring", "seed": 11,
                                                        "focal": 2400.0}),
    Scene("syn-telephoto-arc", "confirm", SEQ5, synthetic={"num_images": 20, "layout": "arc", "seed": 12,
                                                           "focal": 2000.0, "principal_offset": (6.0, -4.0)}),
    Scene("syn-repeated-100", "confirm", {"method": "sequential", "num_neighbors": 5},
          synthetic={"num_images": 100, "layout": "arc", "arc_deg": 150, "seed": 8, "width": 320, "height": 240,
                     "focal": 270.0}),
]
#: the suite's scenes with real photos and GT (in ../shared/data), for the programs that read a suite run
GT_SCENES = [s.name for s in SUITE if s.data]
METHODS = ["ours", "bare-pycolmap", "hloc", "colmap-sift"]
MATCHERS = ["xfeat-star", "sift"]
# --quick: every synthetic scene of the subset registers completely, within this median rotation error (deg)
QUICK_MAX_ROT_DEG = 0.5


def scene_inputs(scene: Scene, work: Path) -> tuple[Path, Path, Path | None]:
    """(images, gt, folder with pairs.txt + matches.h5 or None) of a scene.

    A synthetic scene's pairs are selected by the library's pairs stage with the scene's options and
    the library's defaults (as for a real scene), and the generator draws the raw matches of exactly
    those pairs.
    """
    if scene.data:
        return (*scene.images_and_gt, None)
    import synthetic

    from loftr_sfm.io import read_pairs
    from loftr_sfm.pairs import run_pairs

    root = work / scene.name / "scene"
    if not (root / "synthetic.json").is_file():
        opts = {"width": 480, "height": 360, "focal": 400.0, "antialias": 2, **scene.synthetic,
                "pairs": scene.pairs["method"], "num_neighbors": scene.pairs.get("num_neighbors", 3)}
        tmp = root.with_name(".scene.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        synthetic.generate(tmp, synthetic.SceneConfig(**opts))
        tmp.replace(root)
    served = work / scene.name / "served"
    served.mkdir(parents=True, exist_ok=True)
    pairs_text = run_pairs(served, root / "images", scene.pairs).read_text()
    stamp = served / "matches_of_pairs.txt"
    if not (served / "matches.h5").is_file() or not stamp.is_file() or stamp.read_text() != pairs_text:
        config = json.loads((root / "synthetic.json").read_text())["config"]
        synthetic.write_matches(served, synthetic.SceneConfig(**config), read_pairs(served / "pairs.txt"))
        stamp.write_text(pairs_text)
    return root / "images", root / "gt", served


def evaluate(model: Path, gt: Path, num_images: int) -> dict:
    from loftr_sfm.evaluation import evaluate_reconstruction

    if not (model / "images.bin").is_file() and not (model / "images.txt").is_file():
        return {"registered": f"0/{num_images}"}
    row = evaluate_reconstruction(model, gt).row()
    return {k: row[k] for k in ("registered", "rot_med_deg", "pos_med", "AUC@1", "AUC@2", "AUC@5")}


def run_ours(scene: Scene, matcher: str, images: Path, served: Path | None, out: Path) -> tuple[dict, float, float]:
    """Our stages with default options; (summary, matching s, after-matching s)."""
    from loftr_sfm import reconstruct
    from loftr_sfm.database import run_database
    from loftr_sfm.keypoints import run_keypoints
    from loftr_sfm.sfm import run_mapping

    if served is None:
        summary = reconstruct(images, out, pairs=scene.pairs, matching={"matcher": matcher})
        times = summary["times"]
        return summary, times.get("pairs", 0) + times.get("matching", 0), sum(
            v for k, v in times.items() if k not in ("pairs", "matching"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pairs.txt", "matches.h5"):
        if not (out / name).exists():
            shutil.copy2(served / name, out / name)
    run_keypoints(out, images)
    run_database(out, images)
    summary = run_mapping(out, images)
    return summary, 0.0, sum(summary["times"].values())


def inputs_digest(*paths: Path, extra: str = "") -> str:
    """Digest of files' contents (a folder: its files' names, sizes and modification times) and ``extra``."""
    from loftr_sfm.matching import _file_digest

    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for path in paths:
        if not path.is_dir():
            h.update(f"{path.name}:{_file_digest(path)};".encode())
            continue
        for f in sorted(f for f in path.rglob("*") if f.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def cached_seconds(out: Path, inputs: str) -> float | None:
    """The seconds of ``out``'s finished run if it was made from ``inputs`` (else its results are removed)."""
    done = out / "seconds.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("inputs") == inputs:
            return record["seconds"]
        logger.info("%s: its inputs changed, computing it again", out)
    for name in ("seconds.json", "model", "sparse", "sfm", "database.db", "matches.h5", "features.h5"):
        q = out / name
        shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
    return None


def run_bare(db: Path, images: Path, out: Path, ours: Path) -> tuple[Path, float]:
    """pycolmap's incremental mapper, defaults, on a copy of ``db``; (model folder, seconds).

    Its time is the denominator of our ``after/bare``, so it is timed in the same run as ours: it is
    computed again whenever our run (``ours``: its summary.json) or the database changed.
    """
    import pycolmap

    from loftr_sfm.database import database_fingerprint

    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_digest(ours, extra=database_fingerprint(db))
    if (cached := cached_seconds(out, inputs)) is not None:
        return out / "model", cached
    done = out / "seconds.json"
    shutil.copy2(db, out / "database.db")
    pycolmap.logging.minloglevel = 2
    t0 = time.perf_counter()
    recs = pycolmap.incremental_mapping(out / "database.db", images, out / "sparse")
    seconds = time.perf_counter() - t0
    if recs:
        best = max(recs.values(), key=lambda r: r.num_reg_images())
        (out / "model").mkdir(exist_ok=True)
        best.write_binary(out / "model")
    done.write_text(json.dumps({"seconds": seconds, "inputs": inputs}))
    return out / "model", seconds


def run_colmap_sift(images: Path, out: Path) -> tuple[Path, float]:
    """Plain COLMAP: SIFT extraction, exhaustive matching, incremental mapping, pycolmap defaults."""
    import pycolmap

    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_digest(images, extra=f"pycolmap {pycolmap.__version__}")
    if (cached := cached_seconds(out, inputs)) is not None:
        return out / "model", cached
    done = out / "seconds.json"
    db = out / "database.db"
    pycolmap.logging.minloglevel = 2
    t0 = time.perf_counter()
    pycolmap.extract_features(db, images)
    pycolmap.match_exhaustive(db)
    recs = pycolmap.incremental_mapping(db, images, out / "sparse")
    seconds = time.perf_counter() - t0
    if recs:
        (out / "model").mkdir(exist_ok=True)
        max(recs.values(), key=lambda r: r.num_reg_images()).write_binary(out / "model")
    done.write_text(json.dumps({"seconds": seconds, "inputs": inputs}))
    return out / "model", seconds


def run_hloc(raw: Path, pairs: Path, images: Path, out: Path) -> tuple[Path, float]:
    """hloc's dense pipeline on the raw matches ``raw`` (its loftr configuration: 1 px cells)."""
    from collections import defaultdict

    from hloc_ref import import_match_dense

    from loftr_sfm.io import read_pairs

    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_digest(raw, pairs)
    if (cached := cached_seconds(out, inputs)) is not None:
        return out / "model", cached
    done = out / "seconds.json"
    match_dense = import_match_dense()
    from hloc import reconstruction

    pair_list = read_pairs(pairs)
    copy_raw_matches(raw, out / "matches.h5", pair_list)  # hloc writes its matches0 into the copy
    conf = match_dense.confs["loftr"]
    t0 = time.perf_counter()
    cpdict = match_dense.aggregate_matches(conf, pair_list, out / "matches.h5", out / "features.h5",
                                           required_queries={n for p in pair_list for n in p}, max_kps=8192,
                                           cpdict=defaultdict(list), bindict=defaultdict(list))
    match_dense.assign_matches(pair_list, out / "matches.h5", cpdict, max_error=conf["max_error"])
    rec = reconstruction.main(out / "sfm", images, pairs, out / "features.h5", out / "matches.h5")
    seconds = time.perf_counter() - t0
    if rec is not None:
        (out / "model").mkdir(exist_ok=True)
        rec.write_binary(out / "model")
    done.write_text(json.dumps({"seconds": seconds, "inputs": inputs}))
    return out / "model", seconds


def run_scene(scene: Scene, work: Path, methods: list[str], matchers: list[str],
              variants: dict[str, dict] | None = None) -> list[dict]:
    images, gt, served = scene_inputs(scene, work)
    import pycolmap

    num = pycolmap.Reconstruction(str(gt)).num_images()
    base = {"scene": scene.name, "split": scene.split, "pairs": scene.pairs["method"]}
    rows = []
    bare_s: dict[str, float] = {}
    for matcher in (["oracle"] if served else matchers):
        out = work / scene.name / ("ours" if served else matcher)
        summary, match_s, after_s = run_ours(scene, matcher, images, served, out)
        row = {**base, "method": "ours", "matcher": matcher, **evaluate(out / "model", gt, num),
               "match_s": round(match_s, 1), "after_s": round(after_s, 1)}
        if "bare-pycolmap" in methods:
            model, seconds = run_bare(out / "database.db", images, work / scene.name / f"bare-{matcher}",
                                      out / "summary.json")
            bare_s[matcher] = seconds
            row["after/bare"] = round(after_s / max(seconds, 1e-6), 2)
            rows.append({**base, "method": "bare-pycolmap", "matcher": matcher, **evaluate(model, gt, num),
                         "after_s": round(seconds, 1)})
        rows.insert(len(rows) - ("bare-pycolmap" in methods), row)
        for name, options in (variants or {}).items():  # other mapping options on the very same database
            vdir = work / scene.name / f"variant-{name}-{matcher}"
            vdir.mkdir(parents=True, exist_ok=True)
            if not (vdir / "database.db").is_file():
                shutil.copy2(out / "database.db", vdir / "database.db")
                for f in ("matches.h5",):  # the matcher the options' 'auto' values look at
                    if (out / f).is_file() and not (vdir / f).exists():
                        (vdir / f).symlink_to((out / f).resolve())
            from loftr_sfm.sfm import run_mapping

            vs = run_mapping(vdir, images, options)
            seconds = sum(vs["times"].get(k, 0.0) for k in vs["times"]) + after_s - summary["times"].get("mapping", 0) \
                - summary["times"].get("share_cameras", 0)
            rows.append({**base, "method": f"ours+{name}", "matcher": matcher, **evaluate(vdir / "model", gt, num),
                         "after_s": round(seconds, 1),
                         "after/bare": round(seconds / bare_s[matcher], 2) if matcher in bare_s else None})
        if "hloc" in methods and matcher != "sift":
            model, seconds = run_hloc(out / "matches.h5", out / "pairs.txt", images, work / scene.name / f"hloc-{matcher}")
            rows.append({**base, "method": "hloc", "matcher": matcher, **evaluate(model, gt, num),
                         "after_s": round(seconds, 1)})
    if "colmap-sift" in methods:
        model, seconds = run_colmap_sift(images, work / scene.name / "colmap-sift")
        rows.append({**base, "method": "colmap-sift", "matcher": "sift", "pairs": "exhaustive",
                     **evaluate(model, gt, num), "after_s": round(seconds, 1)})
    return rows


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def quick_failures(rows: list[dict]) -> list[str]:
    """What the --quick subset must show: ours registers every image within QUICK_MAX_ROT_DEG."""
    bad = []
    for r in rows:
        if r["method"] != "ours":
            continue
        done, total = map(int, r["registered"].split("/"))
        if done < total or not r.get("rot_med_deg", float("inf")) <= QUICK_MAX_ROT_DEG:
            bad.append(f"{r['scene']} ({r['matcher']}): {r['registered']} registered, median rotation error "
                       f"{r.get('rot_med_deg', float('nan')):.3f} deg (needs all, <= {QUICK_MAX_ROT_DEG})")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/suite"))
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md (default: WORK/suite)")
    ap.add_argument("--scenes", nargs="+", default=None, help="scene names (default: all, or the quick subset)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--matchers", nargs="+", default=MATCHERS)
    ap.add_argument("--split", choices=["tune", "confirm"], default=None)
    ap.add_argument("--quick", action="store_true", help="the small synthetic subset, checked against thresholds")
    ap.add_argument("--fresh", action="store_true",
                    help="run our stages after the matching and bare pycolmap again (raw matches are kept; hloc "
                         "and COLMAP SIFT are computed again where their inputs changed)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="also map our database with these mapping options (rows 'ours+NAME'), e.g. "
                         "tracks='{\"refine_tracks\": \"on\"}'")
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant:
        name, _, text = v.partition("=")
        try:
            variants[name] = json.loads(text)
        except ValueError as e:
            ap.error(f"--variant {v!r}: {e}")
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S")
    scenes = [s for s in SUITE if (args.scenes is None or s.name in args.scenes) and (not args.quick or s.quick)
              and (args.split is None or s.split == args.split)]
    unknown = set(args.scenes or []) - {s.name for s in SUITE}
    if unknown:
        ap.error(f"unknown scene(s) {sorted(unknown)}; known: {[s.name for s in SUITE]}")
    rows: list[dict] = []
    for scene in scenes:
        if scene.data and not (DATA / scene.data).is_dir():
            logger.warning("%s: %s is missing, skipped", scene.name, DATA / scene.data)
            continue
        if args.fresh:
            for p in (args.work / scene.name).glob("*"):
                if p.name.startswith("variant-"):
                    shutil.rmtree(p)
                elif p.name != "scene" and not p.name.startswith(("bare-", "hloc-", "colmap-sift")):
                    for name in ("model", "model_txt", "summary.json", "database.db", ".database.json",
                                 "features.h5", "seconds.json", "sparse", "sfm"):
                        q = p / name
                        shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
        new = run_scene(scene, args.work, args.methods, args.matchers, variants)
        for r in new:
            print(" | ".join(fmt(r.get(c)) for c in COLUMNS), flush=True)
        rows += new
    out = args.out or args.work / "suite"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    if args.quick:
        bad = quick_failures(rows)
        for line in bad:
            print(f"FAILED: {line}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
