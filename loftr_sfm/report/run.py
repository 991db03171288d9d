"""The report of a reconstruction: ``OUTPUT/report.html`` from a finished (or partly finished) output folder.

Reads, all read-only: ``summary.json``, ``timings.json``, ``pairs.txt``, ``matches.h5`` (raw match
counts, the matcher), ``features.h5`` (the keypoints options, images left out), ``database.db``
(keypoints, matches, two-view geometries; with sqlite3 read-only: pycolmap would rewrite the file),
``.database.json`` (weak links) and ``model/`` (pycolmap); photos from ``images`` for the match pictures.
A missing file leaves its part of the page empty, with a note.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import merge_config, progress
from .page import MAX_POINTS, scene_3d, write_html

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
#: pair status codes of the page's pair matrix
SELECTED, UNVERIFIED, REJECTED, VERIFIED = 0, 1, 2, 3


@dataclass(kw_only=True)
class ReportConfig:
    """Options of the report."""

    max_points: int = MAX_POINTS  # 3D points shown at most (a fixed random subsample beyond, noted on the page)
    max_pictures: int = 6  # match pictures: the strongest and weakest verified pairs, rejected ones, unregistered images
    picture_height: int = 360  # px


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _h5_info(output: Path, pairs: list[tuple[str, str]]) -> tuple[dict, dict, dict[str, str]]:
    """(raw matches per selected pair, options recorded by matching and keypoints, images left out: reason)."""
    import h5py

    from ..io import UNREADABLE_ATTR, find_pair

    raw: dict[tuple[str, str], int] = {}
    options: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    path = output / "matches.h5"
    if path.is_file():
        with h5py.File(path, "r") as f:
            options["matching"] = {k: f.attrs[k] for k in ("matcher", "matcher_options") if k in f.attrs}
            left_out.update(json.loads(f.attrs.get(UNREADABLE_ATTR, "{}")))
            for a, b in progress(pairs, desc="report: raw matches", unit="pair", leave=False):
                try:
                    key, _ = find_pair(f, a, b)
                    raw[a, b] = int(f[key]["scores"].shape[0])
                except KeyError:
                    continue
    path = output / "features.h5"
    if path.is_file():
        with h5py.File(path, "r") as f:
            if "loftr_sfm_config" in f.attrs:
                options["keypoints"] = json.loads(f.attrs["loftr_sfm_config"])
            left_out.update(json.loads(f.attrs.get(UNREADABLE_ATTR, "{}")))
    for part in options.values():
        for k, v in list(part.items()):
            part[k] = v.decode() if isinstance(v, bytes) else str(v) if not isinstance(v, (int, float, bool)) else v
    return raw, options, left_out


def model_points(rec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model's 3D points: ids (N,) int64 sorted, xyz (N, 3) float64 (world), colours (N, 3) uint8 RGB."""
    points = list(rec.points3D.items())
    ids = np.array([i for i, _ in points], np.int64)
    xyz = np.array([p.xyz for _, p in points], np.float64).reshape(-1, 3)
    rgb = np.array([p.color for _, p in points], np.uint8).reshape(-1, 3)
    order = np.argsort(ids)
    return ids[order], xyz[order], rgb[order]


def _model_tables(rec) -> tuple[dict[str, dict], np.ndarray, np.ndarray, list[dict]]:
    """Per registered image (points, mean reprojection error, camera), the points (xyz, rgb) and the 3D cameras."""
    from ..evaluation import rigid_to_pose

    ids, xyz, rgb = model_points(rec)
    sharing: dict[int, int] = {}
    for im in rec.images.values():
        if im.has_pose:
            sharing[im.camera_id] = sharing.get(im.camera_id, 0) + 1
    per_image: dict[str, dict] = {}
    cams3d = []
    posed = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    for im in progress(posed, desc="report: images", unit="image", leave=False):
        cam = rec.cameras[im.camera_id]
        R, t = rigid_to_pose(im.cam_from_world())
        obs = im.get_observation_points2D()
        err = None
        if len(obs) and len(ids):
            xy = np.array([p.xy for p in obs], np.float64).reshape(-1, 2)
            pid = np.fromiter((p.point3D_id for p in obs), np.int64, count=len(obs))
            X = xyz[np.searchsorted(ids, pid)] @ R.T + t
            err = float(np.mean(np.linalg.norm(np.asarray(cam.img_from_cam(X)) - xy, axis=1)))
        per_image[im.name] = {
            "points3D": int(len(obs)),
            "reprojection_error": err,
            "camera": f"#{im.camera_id} {cam.model.name} {cam.width}x{cam.height}, f {cam.mean_focal_length():.1f} px"
                      + (f" (shared by {sharing[im.camera_id]})" if sharing[im.camera_id] > 1 else ""),
        }
        cams3d.append({"name": im.name, "R": R, "t": t, "K": np.asarray(cam.calibration_matrix()),
                       "width": cam.width, "height": cam.height, "kind": "map"})
    return per_image, xyz, rgb, cams3d


def _reason(name: str, left_out: dict, in_db: bool, pair_stats: dict, have_db: bool, have_model: bool) -> str:
    """Why an image has no pose, from the earliest stage that lost it."""
    if name in left_out:
        return f"left out: {left_out[name]}"
    if not have_db:
        return "no database yet (run the database stage)"
    if not in_db:
        return "not in the database"
    s = pair_stats.get(name, {})
    if not s.get("selected"):
        return "no pair (pair selection gave it none: more neighbours or retrieval pairs)"
    if not s.get("matched"):
        return f"no matches in its {s['selected']} pair(s)"
    if not s.get("verified"):
        parts = []
        if s.get("rejected"):
            parts.append(f"{s['rejected']} rejected by the inlier-ratio check")
        if s.get("unverified"):
            parts.append(f"{s['unverified']} failed geometric verification")
        return "no verified pair" + (f" ({', '.join(parts)})" if parts else "")
    if not have_model:
        return "no model (mapping has not run or made none)"
    return f"failed to register ({s['verified']} verified pair(s))"


def collect(output: Path, images: Path | None = None, config: ReportConfig | dict | None = None) -> dict[str, Any]:
    """The report's data of an output folder (JSON-ready; see the module docstring for what is read)."""
    from ..database import read_images_table, read_pairs_table, read_stage_stats
    from ..io import read_pairs
    from ..sfm.stage import focal_change_warning
    from ..workspace import read_stage_times

    cfg = merge_config(ReportConfig, config)
    output = Path(output)
    notes: list[str] = []
    summary = _json(output / "summary.json")
    if not summary:
        notes.append("summary.json is missing: the mapping stage has not finished")
    if warning := focal_change_warning(summary.get("focal_change")):
        notes.append(warning)
    selected = read_pairs(output / "pairs.txt") if (output / "pairs.txt").is_file() else []
    raw, options, left_out = _h5_info(output, selected)
    if summary.get("config"):
        options["mapping"] = summary["config"]
    db_path = output / "database.db"
    have_db = db_path.is_file()
    db_images = read_images_table(db_path) if have_db else []
    db_pairs = read_pairs_table(db_path) if have_db else []
    stats = read_stage_stats(output)
    if stats:
        options["database (counts)"] = {k: v for k, v in stats.items() if k != "weak_links"}
    rec = None
    if (output / "model").is_dir():
        from ..sfm import load_model

        rec = load_model(output)
    names = {n for p in selected for n in p} | {r["name"] for r in db_images} | set(left_out)
    if images is not None and Path(images).is_dir():
        from ..io import list_images

        names |= set(list_images(images))
    elif images is None:
        notes.append("no --images folder given: images never read and match pictures are left out")
    else:
        notes.append(f"the photo folder {images} does not exist: no match pictures")
        images = None
    names_sorted = sorted(names)
    index = {n: i for i, n in enumerate(names_sorted)}
    min_inliers = int((summary.get("config") or {}).get("min_num_matches", 15))

    # pairs: selected, raw matches, matches and inliers in the database, status
    table: dict[tuple[str, str], dict] = {}
    for a, b in selected:
        table[tuple(sorted((a, b)))] = {"selected": 1, "raw": raw.get((a, b), 0), "matches": 0, "inliers": -1}
    for p in db_pairs:
        row = table.setdefault(tuple(sorted((p["name0"], p["name1"]))), {"selected": 0, "raw": 0})
        row.update(matches=p["matches"], inliers=p["inliers"], config=p["config"])
    pair_stats: dict[str, dict[str, int]] = {}
    rows = []
    for (a, b), r in sorted(table.items()):
        inl = r.get("inliers", -1)
        if inl >= min_inliers:
            status = VERIFIED
        elif r.get("matches", 0) > 0 and inl < 0 and stats.get("rejected_pairs"):
            status = REJECTED
        elif r.get("matches", 0) > 0:
            status = UNVERIFIED
        else:
            status = SELECTED
        r["status"] = status
        for n in (a, b):
            s = pair_stats.setdefault(n, {})
            s["selected"] = s.get("selected", 0) + r["selected"]
            s["matched"] = s.get("matched", 0) + int(r.get("matches", 0) > 0)
            key = {VERIFIED: "verified", REJECTED: "rejected", UNVERIFIED: "unverified"}.get(status)
            if key:
                s[key] = s.get(key, 0) + 1
        rows.append([index[a], index[b], r["selected"], r["raw"], r.get("matches", 0), inl, status])

    per_image, xyz, rgb, cams3d = _model_tables(rec) if rec is not None else ({}, np.zeros((0, 3)), np.zeros((0, 3)), [])
    by_name = {r["name"]: r for r in db_images}
    image_rows = []
    for n in names_sorted:
        db = by_name.get(n)
        s = pair_stats.get(n, {})
        row = {"name": n, "registered": n in per_image, "keypoints": db["keypoints"] if db else None,
               "pairs": s.get("selected", 0), "verified_pairs": s.get("verified", 0)}
        if n in per_image:
            row.update(per_image[n], reason="")
        else:
            cam = (db or {}).get("camera")
            row.update(points3D=0, reprojection_error=None,
                       camera=f"{cam['model']} {cam['width']}x{cam['height']} (initial)" if cam else "",
                       reason=_reason(n, left_out, db is not None, pair_stats, have_db, rec is not None))
        image_rows.append(row)

    scene = scene_3d(xyz, rgb, cams3d, cfg.max_points)
    if scene["points"]["shown"] < scene["points"]["count"]:
        notes.append(f"the 3D view shows {scene['points']['shown']:,} of the {scene['points']['count']:,} points "
                     "(a fixed random subsample)")
    pictures = _pictures(db_path, images, rows, names_sorted, image_rows, cfg) if have_db and images else []
    return {
        "kind": "reconstruction",
        "title": f"Reconstruction report: {output.resolve().name}",
        "output": str(output.resolve()),
        "images_folder": str(Path(images).resolve()) if images else None,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "summary": {k: summary.get(k) for k in ("num_images", "registered", "points", "observations",
                                                 "mean_track_length", "mean_reprojection_error", "matcher", "mapper",
                                                 "attempts", "shared_cameras", "track_refinement", "relative_filter")
                    if k in summary},
        "times": read_stage_times(output),
        "options": options,
        "notes": notes,
        "images": image_rows,
        "pairs": {"names": names_sorted, "rows": rows, "min_inliers": min_inliers,
                  "weak_links": stats.get("weak_links") or []},
        "scene": scene,
        "pictures": pictures,
    }


def _pictures(db_path: Path, images: Path, rows: list, names: list[str], image_rows: list[dict],
              cfg: ReportConfig) -> list[dict]:
    """Match pictures: the strongest and the weakest verified pair, rejected ones, pairs of unregistered images."""
    from ..database import read_pair_matches
    from .pictures import draw_matches

    verified = sorted((r for r in rows if r[6] == VERIFIED), key=lambda r: r[5])
    rejected = sorted((r for r in rows if r[6] in (REJECTED, UNVERIFIED)), key=lambda r: -r[4])
    chosen: list[tuple[str, list]] = []
    if verified:
        chosen.append(("strongest verified pair", verified[-1]))
        chosen.append(("weakest verified pair", verified[0]))
    for r in rejected[:2]:
        chosen.append(("rejected by the inlier-ratio check" if r[6] == REJECTED else "failed geometric verification", r))
    unregistered = {i for i, r in enumerate(image_rows) if not r["registered"]}  # image_rows are in names order
    for r in sorted((r for r in rows if r[4] > 0 and {r[0], r[1]} & unregistered), key=lambda r: -max(r[5], 0)):
        chosen.append(("best pair of an unregistered image", r))
    out, seen = [], set()
    for title, r in chosen:
        if (r[0], r[1]) in seen or len(out) >= cfg.max_pictures:
            continue
        seen.add((r[0], r[1]))
        a, b = names[r[0]], names[r[1]]
        try:
            k0, k1, matches, inliers = read_pair_matches(db_path, a, b)
            code = lambda m: m[:, 0].astype(np.int64) * (len(k1) + 1) + m[:, 1]  # noqa: E731
            mask = np.isin(code(matches), code(inliers))
            jpeg = draw_matches(images / a, images / b, k0[matches[:, 0]], k1[matches[:, 1]], mask,
                                height=cfg.picture_height)
        except Exception as e:  # noqa: BLE001 - a missing photo costs one picture, never the report
            logger.warning("report: no picture of %s %s (%s)", a, b, e)
            continue
        out.append({"title": title, "pair": [r[0], r[1]], "names": [a, b], "matches": int(len(matches)),
                    "inliers": int(len(inliers)), "jpeg": jpeg})
    return out


def write_report(output: str | Path, images: str | Path | None = None,
                 config: ReportConfig | dict | None = None) -> Path:
    """Write ``output/report.html`` for an output folder of ``reconstruct`` (or of some of its stages).

    Args:
        output: the output folder. images: the photo folder (match pictures; images no stage could read);
        None leaves the pictures out. config: :class:`ReportConfig` or a dict of its options.
    Returns:
        the path of the report (one self-contained HTML file: opens offline in any browser).
    """
    output = Path(output)
    if not output.is_dir():
        from ..io import InputError

        raise InputError(f"output folder {output} does not exist")
    data = collect(output, Path(images) if images is not None else None, config)
    path = write_html(output / REPORT_FILE, data, data["title"])
    logger.info("report: %s", path)
    return path
