"""Real matchers on rendered scenes with exact ground truth (no pseudo-GT, no calibration doubt).

``datasets/synthetic.py`` renders textured planes from known cameras (antialiased); this program
runs the whole pipeline on those images with each matcher (exhaustive pairs, incremental mapping,
the library's defaults otherwise) and evaluates the model against the exact cameras, with the
exact calibration fixed (``gt``) and with the default camera policy (``estimated``). Where the
real scenes' GT is itself a reconstruction (fox) or a calibration with its own conventions
(Strecha), this is the comparison that cannot favour one matcher through its GT.

Usage:
    python pipelines/evaluate_synthetic.py --work outputs/synthetic --seeds 0 \
        --matchers sift xfeat-star --table outputs/synthetic.md
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402
from evaluate_scenes import emit_row, known_intrinsics, model_row  # noqa: E402  (this folder is on sys.path)

from loftr_sfm.stages import reconstruct  # noqa: E402

COLUMNS = ["scene", "matcher", "intrinsics", "registered", "rot_med_deg", "rot_max_deg", "pos_med", "AUC@1", "AUC@2",
           "AUC@5", "points", "track", "reproj_px"]


def run(scene: Path, cfg: synthetic.SceneConfig, matcher: str, intrinsics: str) -> dict:
    """Reconstruct ``scene/images`` with ``matcher``; the evaluation row against ``scene/gt``."""
    out = scene / f"{matcher}_{intrinsics}"
    database, mapping = {}, {}
    if intrinsics == "gt":  # every rendered camera has the same PINHOLE calibration (COLMAP convention)
        database, mapping = known_intrinsics("PINHOLE", f"{cfg.focal},{cfg.focal},{cfg.width / 2},{cfg.height / 2}")
    summary = reconstruct(scene / "images", out, pairs={"method": "exhaustive"}, matching={"matcher": matcher},
                          keypoints={"preset": matcher}, database=database, mapping=mapping)
    return {"scene": scene.name, "matcher": matcher, "intrinsics": intrinsics, **model_row(summary, out, scene / "gt")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/synthetic"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--num-images", type=int, default=10)
    ap.add_argument("--matchers", nargs="+", default=["sift", "xfeat-star"])
    ap.add_argument("--intrinsics", nargs="+", default=["gt", "estimated"], choices=["gt", "estimated"])
    ap.add_argument("--textures", choices=["tiled", "unique"], default="tiled",
                    help="tiled: 3 m textures repeated over the planes (periodic structure, the generator's default); "
                         "unique: one texture per plane (scene folders seed<N>_unique)")
    ap.add_argument("--table", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    print("\n".join(lines), flush=True)
    for seed in args.seeds:
        cfg = synthetic.SceneConfig(num_images=args.num_images, width=640, height=480, focal=500.0, antialias=3,
                                    seed=seed, arc_deg=80.0, unique_textures=args.textures == "unique")
        scene = args.work / (f"seed{seed}" + ("_unique" if cfg.unique_textures else ""))
        if not (scene / "gt").is_dir():
            synthetic.generate(scene, cfg)
        for intrinsics in args.intrinsics:
            for matcher in args.matchers:
                emit_row(run(scene, cfg, matcher, intrinsics), COLUMNS, lines, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
