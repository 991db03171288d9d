"""The report of a localization run: ``localize_report.html`` beside the poses file.

Per query: localized or the reason it failed, matches, 2D-3D correspondences, PnP inliers,
the retrieved map images, the camera's source; a 3D view of the map with the localized queries'
cameras; and a picture of each localized query's inliers on the retrieved map image that sees
most of their 3D points (query pixel -> that image's keypoint of the same 3D point). The pictures
need the inliers of this run: queries reused from ``localize_log.json`` (``resume``) have none.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import merge_config
from .page import MAX_POINTS, scene_3d, write_html
from .run import model_points

logger = logging.getLogger(__name__)

LOCALIZE_REPORT_FILE = "localize_report.html"


@dataclass(kw_only=True)
class QueryReportConfig:
    """Options of the localization report."""

    max_points: int = MAX_POINTS  # map points shown at most (a fixed random subsample beyond)
    max_pictures: int = 50  # inlier pictures at most (the queries with fewest inliers first)
    picture_height: int = 300  # px


def _query_camera(r) -> dict | None:
    """A localized query's camera for the 3D view (frustum), or None without pose or calibration."""
    import pycolmap

    if not r.success or r.R is None or r.t is None:
        return None
    cam = r.camera_object
    if cam is None and r.camera:
        cam = pycolmap.Camera(model=r.camera["model"], width=r.camera["width"], height=r.camera["height"],
                              params=r.camera["params"])
    if cam is None:
        return None
    return {"name": r.name, "R": np.asarray(r.R, np.float64), "t": np.asarray(r.t, np.float64),
            "K": np.asarray(cam.calibration_matrix()), "width": int(cam.width), "height": int(cam.height),
            "kind": "query"}


def _inlier_picture(localizer, r, query_path: Path, height: int) -> tuple[str, str, int] | None:
    """(base64 JPEG, map image name, lines) of a query's inliers on its best retrieved map image, or None."""
    from .pictures import draw_matches

    if r.inlier_points2D is None or r.inlier_point3D_ids is None or not len(r.inlier_point3D_ids):
        return None
    best, best_n = None, 0
    for name in r.retrieved:
        mi = localizer.map.get(name)
        if mi is None:
            continue
        n = int(np.isin(r.inlier_point3D_ids, mi.point3D_ids).sum())
        if n > best_n:
            best, best_n = mi, n
    if best is None:
        return None
    order = np.argsort(best.point3D_ids, kind="stable")
    ids_sorted = best.point3D_ids[order]
    pos = np.clip(np.searchsorted(ids_sorted, r.inlier_point3D_ids), 0, len(ids_sorted) - 1)
    hit = ids_sorted[pos] == r.inlier_point3D_ids
    map_xy = best.keypoints[order[pos[hit]]]
    jpeg = draw_matches(query_path, localizer.map_images / best.name, r.inlier_points2D[hit], map_xy, height=height)
    return jpeg, best.name, int(hit.sum())


def write_localization_report(
    localizer,
    results: Sequence,
    query_paths: Mapping[str, Path | None],
    path: str | Path,
    config: QueryReportConfig | dict | None = None,
) -> Path:
    """Write the report of localized queries (one self-contained HTML file) to ``path``.

    Args:
        localizer: the :class:`loftr_sfm.localization.Localizer` that localized them (its map and options).
        results: its :class:`loftr_sfm.localization.QueryResult` list.
        query_paths: query name -> photo file (None: unreadable); pictures are drawn from these.
    Returns:
        ``path``.
    """
    from ..utils import progress

    cfg = merge_config(QueryReportConfig, config)
    rec = localizer.reconstruction
    ids, xyz, rgb = model_points(rec)
    from ..evaluation import rigid_to_pose

    cams = []
    for im in sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name):
        R, t = rigid_to_pose(im.cam_from_world())
        cam = rec.cameras[im.camera_id]
        cams.append({"name": im.name, "R": R, "t": t, "K": np.asarray(cam.calibration_matrix()),
                     "width": cam.width, "height": cam.height, "kind": "map"})
    cams += [c for c in (_query_camera(r) for r in results) if c is not None]
    scene = scene_3d(xyz, rgb, cams, cfg.max_points)
    notes = []
    if scene["points"]["shown"] < scene["points"]["count"]:
        notes.append(f"the 3D view shows {scene['points']['shown']:,} of the {scene['points']['count']:,} map points")
    rows, pictures = [], []
    drawable = sorted((r for r in results if r.success), key=lambda r: r.num_inliers)[: cfg.max_pictures]
    missing = 0
    for r in progress(drawable, desc="report: queries", unit="query", leave=False):
        qpath = query_paths.get(r.name)
        pic = None
        if qpath is not None:
            try:
                pic = _inlier_picture(localizer, r, Path(qpath), cfg.picture_height)
            except Exception as e:  # noqa: BLE001 - one picture less, never a failed report
                logger.warning("report: no picture of query %s (%s)", r.name, e)
        if pic is None:
            missing += 1
            continue
        pictures.append({"title": r.name, "names": [r.name, pic[1]], "inliers": r.num_inliers, "lines": pic[2],
                         "jpeg": pic[0]})
    if missing:
        notes.append(f"{missing} localized quer{'y has' if missing == 1 else 'ies have'} no inlier picture (results "
                     "reused from localize_log.json keep no inliers: rerun with --resume false)")
    for r in results:
        rows.append({"name": r.name, "success": bool(r.success), "message": r.message, "matches": r.num_matches,
                     "correspondences": r.num_2d3d, "inliers": r.num_inliers, "retrieved": list(r.retrieved)[:5],
                     "camera_source": r.camera_source, "time": round(float(r.time), 3)})
    ok = sum(r.success for r in results)
    data = {
        "kind": "localization",
        "title": f"Localization report: {Path(path).resolve().parent.name}",
        "output": str(Path(path).resolve()),
        "map": str(localizer.map_dir.resolve()),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "summary": {"queries": len(results), "localized": ok, "matcher": localizer.matcher_name,
                    "mean_time": float(np.mean([r.time for r in results])) if results else 0.0,
                    "map_images": len(localizer.names), "map_points": int(len(ids))},
        "options": {"localization": dataclasses.asdict(localizer.config)},
        "notes": notes,
        "queries": rows,
        "scene": scene,
        "pictures": pictures,
    }
    out = write_html(Path(path), data, data["title"])
    logger.info("report: %s", out)
    return out
