"""Completing an incremental model with pycolmap's own registration, counted against GT.

The experiment behind docs/accuracy.md ("Registering the images the incremental mapper left out"). For each
database (with its image folder and GT model), pycolmap's incremental mapper runs with the mapping stage's
options; then every image its largest model left out is offered to pycolmap's ``IncrementalMapper`` on
that model: registration from 2D-3D matches (``register_next_image``), and where that fails, structure-less
registration from 2D-2D matches to registered images (``register_next_structure_less_image``); each image
registered is triangulated and locally adjusted, until a round adds none, then the model is globally refined.
Each added image's verified pairs with the model's other images vote (:func:`loftr_sfm.sfm.checks.epipolar_errors`,
4 px on most inliers: explained or contradicted), at registration and after refinement. With ``--check``, an
added image is dropped after refinement unless the model explains at least 2 of its pairs and more than it
contradicts, and the model is refined again.

Each image added is printed with how it was registered, its votes, and its median relative-rotation error
to the other registered images against GT (right: at most 2 deg).

    python pipelines/complete_model.py --db outputs/suite/eth3d-pipes/xfeat-star/database.db \
        --images ../shared/data/eth3d-pipes/images --gt ../shared/data/eth3d-pipes/gt [--check] [--db ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_choice import relative_rotation_errors  # noqa: E402

from loftr_sfm.evaluation import poses_from_reconstruction  # noqa: E402
from loftr_sfm.sfm.checks import explains, verified_geometries  # noqa: E402
from loftr_sfm.sfm.mappers import run_mapper  # noqa: E402
from loftr_sfm.sfm.options import CameraOptions, MappingConfig  # noqa: E402


def verified_pairs(db_path: Path) -> tuple[dict, dict]:
    """(keypoints per image id, image id -> [(other id, (M, 2) inlier match indices, own first)])."""
    _ids, kp, geometries = verified_geometries(db_path)
    pairs: dict[int, list] = {}
    for a, b, m in geometries:
        pairs.setdefault(a, []).append((b, m))
        pairs.setdefault(b, []).append((a, m[:, ::-1]))
    return kp, pairs


def votes(rec, iid: int, kp, pairs) -> tuple[int, int]:
    """(explained, contradicted) verified pairs of image ``iid`` with the model's other posed images."""
    ia = rec.images[iid]
    verdicts = [explains(rec, ia, rec.images[b], kp[iid][m[:, 0]], kp[b][m[:, 1]])
                for b, m in pairs.get(iid, []) if rec.images[b].has_pose]
    return sum(verdicts), len(verdicts) - sum(verdicts)


def complete(rec, db_path: Path, check: bool, gt) -> list[dict]:
    """Offer every unregistered image of ``db_path`` to ``rec`` (changed in place); one record per image added."""
    import pycolmap

    kp, pairs = verified_pairs(db_path)
    db = pycolmap.Database.open(str(db_path))
    cache_options = pycolmap.DatabaseCacheOptions()
    cache_options.min_num_matches = MappingConfig().min_num_matches
    mapper = pycolmap.IncrementalMapper(pycolmap.DatabaseCache.create(db, cache_options))
    mapper.begin_reconstruction(rec)
    options, tri = pycolmap.IncrementalMapperOptions(), pycolmap.IncrementalTriangulatorOptions()
    ba = pycolmap.BundleAdjustmentOptions()
    names = {im.image_id: im.name for im in db.read_all_images()}
    added: dict[int, dict] = {}
    progress = True
    while progress:
        progress = False
        for iid in names:
            if rec.images[iid].has_pose:
                continue
            how = "2d-3d"
            ok = mapper.register_next_image(options, iid)
            if not ok:
                how, ok = "structure-less", mapper.register_next_structure_less_image(options, iid)
            if not ok:
                continue
            e, c = votes(rec, iid, kp, pairs)
            err = relative_rotation_errors(poses_from_reconstruction(rec), gt).get(names[iid], float("nan"))
            added[iid] = {"image": names[iid], "how": how, "votes_at_registration": (e, c),
                          "error_at_registration": round(err, 2), "kept": True}
            mapper.triangulate_image(tri, iid)
            mapper.adjust_local_bundle(options, ba, tri, iid, mapper.get_modified_points3D())
            progress = True
    mapper.iterative_global_refinement(5, 0.0005, options, ba, tri)
    for iid, record in added.items():
        record["votes_refined"] = votes(rec, iid, kp, pairs)
    if check:  # an added image stays when, refined, the model explains at least 2 of its pairs and more than it contradicts
        dropped = [iid for iid, r in added.items() if not (r["votes_refined"][0] >= 2
                                                           and r["votes_refined"][0] > r["votes_refined"][1])]
        for iid in dropped:
            mapper.observation_manager.deregister_frame(rec.images[iid].frame_id)
            added[iid]["kept"] = False
        if dropped:
            mapper.iterative_global_refinement(5, 0.0005, options, ba, tri)
    return list(added.values())


def main(argv: list[str] | None = None) -> int:
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, action="append", required=True)
    ap.add_argument("--images", type=Path, action="append", required=True)
    ap.add_argument("--gt", type=Path, action="append", required=True)
    ap.add_argument("--check", action="store_true",
                    help="after refinement, drop an added image unless its verified pairs vote for it")
    ap.add_argument("--right-deg", type=float, default=2.0)
    args = ap.parse_args(argv)
    if not len(args.db) == len(args.images) == len(args.gt):
        ap.error("give --db, --images and --gt once per database")
    pycolmap.logging.minloglevel = 2
    cfg = MappingConfig(mapper="incremental", fallback=False)
    cameras = CameraOptions(refine_principal_point=False)
    for db_path, images, gt_dir in zip(args.db, args.images, args.gt):
        gt = poses_from_reconstruction(pycolmap.Reconstruction(str(gt_dir)))
        with tempfile.TemporaryDirectory() as tmp:
            rec, _ = run_mapper(db_path, images, Path(tmp), "incremental", cfg, cameras)
        before = set(rec.reg_image_ids())
        t0 = time.perf_counter()
        tried = complete(rec, db_path, args.check, gt)
        seconds = time.perf_counter() - t0
        final = relative_rotation_errors(poses_from_reconstruction(rec), gt)
        print(f"== {db_path}: {len(before)} -> {rec.num_reg_images()} registered in {seconds:.1f} s"
              f"{' (with the check)' if args.check else ''}")
        for t in tried:
            final_err = final.get(t["image"]) if t["kept"] else None
            verdict = "" if final_err is None else ("right" if final_err <= args.right_deg else "WRONG")
            e0, c0 = t["votes_at_registration"]
            e1, c1 = t["votes_refined"]
            print(f"  {t['image']}: {t['how']}; at registration {t['error_at_registration']} deg, pairs explained/"
                  f"contradicted {e0}/{c0}; refined {e1}/{c1}: "
                  + (f"{final_err:.2f} deg ({verdict})" if t["kept"] else "dropped"))
        old = [e for n, e in final.items() if rec.find_image_with_name(n).image_id in before]
        print(f"  images of the mapper's model: {sum(e <= args.right_deg for e in old)}/{len(old)} right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
