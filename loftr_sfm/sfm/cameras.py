"""Cameras of a mapped model: the principal-point rule and cameras shared by images.

Without EXIF the database stage gives every image its own camera (COLMAP's default), whose
principal point one image cannot tell from a rotation, so it stays at the image centre. Once the
model is mapped, images of one size whose estimated focal lengths run together are taken for one
camera (:func:`camera_groups`) and bundle-adjusted as one, principal point and distortion
included; a group whose reprojection error rises by more than
:data:`SHARE_CAMERAS_MAX_ERROR_INCREASE` keeps its own cameras (:func:`share_cameras`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from .options import PRINCIPAL_POINT_MIN_IMAGES, CameraOptions

logger = logging.getLogger(__name__)

# a merge whose bundle adjustment raises the mean reprojection error by more than this fraction is undone
SHARE_CAMERAS_MAX_ERROR_INCREASE = 0.1

# a shared camera of the key's model gets one more radial distortion term (share_cameras_radial): the new
# model's parameters are the old ones followed by k2 (COLMAP: f, cx, cy, k -> f, cx, cy, k1, k2)
RADIAL_UPGRADE = {"SIMPLE_RADIAL": "RADIAL", "SIMPLE_RADIAL_FISHEYE": "RADIAL_FISHEYE"}


def model_images_per_camera(rec) -> dict[int, int]:
    """{camera_id: number of registered images} of a model (:func:`loftr_sfm.database.images_per_camera` for a database)."""
    ids, counts = np.unique([rec.image(i).camera_id for i in rec.reg_image_ids()], return_counts=True)
    return {int(c): int(n) for c, n in zip(ids, counts)}


def resolve_principal_point(cameras: CameraOptions, images_per_camera: Mapping[int, int]) -> CameraOptions:
    """``cameras`` with ``refine_principal_point`` decided when it is None (auto).

    Auto refines the principal point when focal lengths are refined and every camera is shared
    by at least :data:`PRINCIPAL_POINT_MIN_IMAGES` images (``camera_mode single`` / ``per_folder``,
    EXIF groups, or :func:`share_cameras`): one image cannot tell a shifted principal point from a
    rotation, many images of one camera can.
    """
    if cameras.refine_principal_point is not None:
        return cameras
    shared = bool(images_per_camera) and min(images_per_camera.values()) >= PRINCIPAL_POINT_MIN_IMAGES
    return replace(cameras, refine_principal_point=bool(cameras.refine_focal_length and shared))


def focal_change(rec, start: Mapping[str, float]) -> float | None:
    """Median over the registered images named in ``start`` of their model camera's mean focal length over
    ``start[name]`` (the focal length the mapper started from, :func:`loftr_sfm.database.start_focal_lengths`);
    None when no such image is registered."""
    ratios = [rec.cameras[im.camera_id].mean_focal_length() / start[im.name]
              for im in rec.images.values() if im.has_pose and im.name in start]
    return float(np.median(ratios)) if ratios else None


def guessed_focal_lengths(rec, start: Mapping[str, float]) -> dict[tuple[str, int, int], float]:
    """{(camera model, width, height): median focal length (px)} of the registered images of ``rec`` named in
    ``start`` (their database camera's focal length was guessed from the image size, see
    :func:`focal_change`), one entry per kind of database camera. Focal lengths are each image's own
    camera's mean focal length in the model (COLMAP pixels)."""
    by_key: dict[tuple[str, int, int], list[float]] = {}
    for im in rec.images.values():
        if im.has_pose and im.name in start:
            cam = rec.cameras[im.camera_id]
            by_key.setdefault((camera_family(cam.model.name), cam.width, cam.height), []).append(
                cam.mean_focal_length())
    return {key: float(np.median(f)) for key, f in sorted(by_key.items())}


def write_start_cameras(db_path, focal_of: Mapping[tuple[str, int, int], float], start: Mapping[str, float]) -> int:
    """Give the images of the database ``db_path`` named in ``start`` one camera per key of ``focal_of``.

    Each new camera has the key's model and size, the key's focal length, the principal point at the
    image centre and no distortion, and ``has_prior_focal_length`` set (the mappers start from it). Images
    of a kind missing from ``focal_of`` keep their cameras. Edits ``db_path`` in place: give it a copy.
    A database with rigs and frames (COLMAP's ``import_images``; the database stage writes none), whose
    frames name their cameras, is left as it is.
    Returns the number of images moved to a new camera.
    """
    import pycolmap

    moved = 0
    with pycolmap.Database.open(str(db_path)) as db:
        if db.num_frames():
            return 0
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        new_id: dict[tuple[str, int, int], int] = {}
        for image in db.read_all_images():
            old = cameras[image.camera_id]
            key = (old.model.name, old.width, old.height)
            if image.name not in start or key not in focal_of:
                continue
            if key not in new_id:
                cam = pycolmap.Camera.create_from_model_name(0, key[0], focal_of[key], key[1], key[2])
                cam.has_prior_focal_length = True
                new_id[key] = db.write_camera(cam)
            image.camera_id = new_id[key]
            db.update_image(image)
            moved += 1
    return moved


def camera_family(model: str) -> str:
    """The model a camera of ``model`` was estimated as before :data:`RADIAL_UPGRADE` (RADIAL -> SIMPLE_RADIAL)."""
    return next((k for k, v in RADIAL_UPGRADE.items() if v == model), model)


def params_as(camera, model: str) -> np.ndarray:
    """``camera``'s parameters in ``model``'s layout: its own, or with k2 = 0 appended (:data:`RADIAL_UPGRADE`)."""
    params = np.asarray(camera.params, np.float64)
    if camera.model.name == model:
        return params
    if RADIAL_UPGRADE.get(camera.model.name) == model:
        return np.r_[params, 0.0]
    raise ValueError(f"camera model {camera.model.name} cannot be expressed as {model}")


def camera_groups(rec, tolerance: float = 0.03, min_images: int = PRINCIPAL_POINT_MIN_IMAGES) -> list[list[int]]:
    """Groups of registered images of ``rec`` whose cameras may be one camera.

    Images are grouped by camera family (:func:`camera_family`) and size; within that, sorted by
    focal length and split where consecutive focal lengths differ by more than ``tolerance``
    (relative); runs of at least ``min_images`` images are groups. Deterministic.
    Returns: lists of image ids (ascending), groups in order of (model, width, height, focal).
    """
    by_key: dict[tuple, list[int]] = {}
    for iid in sorted(rec.reg_image_ids()):
        cam = rec.image(iid).camera
        by_key.setdefault((camera_family(cam.model.name), cam.width, cam.height), []).append(iid)
    groups: list[list[int]] = []
    for key in sorted(by_key):
        ids = np.array(by_key[key])
        f = np.array([rec.image(int(i)).camera.mean_focal_length() for i in ids])
        order = np.argsort(f, kind="stable")
        ids, f = ids[order], f[order]
        cuts = np.flatnonzero(f[1:] / f[:-1] - 1 > tolerance) + 1
        groups += [sorted(int(i) for i in run) for run in np.split(ids, cuts) if len(run) >= min_images]
    return groups


def with_cameras(rec, camera_of: Mapping[int, object]):
    """A copy of ``rec`` whose registered images use the cameras ``camera_of[image_id]`` (pycolmap.Camera;
    several images may share one); poses, keypoints, points and tracks unchanged. Unregistered images
    are left out (a model's images keep their ids, which are the database's)."""
    import pycolmap

    new = pycolmap.Reconstruction()
    added: set[int] = set()
    for iid in sorted(rec.reg_image_ids()):
        im = rec.image(iid)
        cam = camera_of[iid]
        if cam.camera_id not in added:
            new.add_camera_with_trivial_rig(cam)
            added.add(cam.camera_id)
        xy = np.array([p.xy for p in im.points2D], np.float64).reshape(-1, 2)
        new.add_image_with_trivial_frame(pycolmap.Image(name=im.name, keypoints=xy, camera_id=cam.camera_id,
                                                        image_id=iid), im.cam_from_world())
    for pid, point in rec.points3D.items():
        new.add_point3D_with_id(pid, point)
    return new


def _shared_groups(rec, cameras: CameraOptions) -> list[tuple[list[int], object]]:
    """The :func:`camera_groups` of ``rec`` that are not one camera yet, each with its starting camera:
    the median of the members' parameters, in the members' :data:`RADIAL_UPGRADE` model when
    ``share_cameras_radial`` says so (and distortion is refined) or a member has it already."""
    import pycolmap

    out = []
    for group in camera_groups(rec, cameras.share_cameras_tolerance):
        cams = {i: rec.image(i).camera for i in group}
        if len({c.camera_id for c in cams.values()}) == 1:
            continue
        family = camera_family(cams[group[0]].model.name)
        upgrade = RADIAL_UPGRADE.get(family)
        wanted = cameras.share_cameras_radial and cameras.refine_extra_params
        model = upgrade if upgrade and (wanted or any(c.model.name == upgrade for c in cams.values())) else family
        params = np.median(np.array([params_as(cams[i], model) for i in group]), axis=0)
        ref = cams[group[0]]
        cam = pycolmap.Camera(camera_id=ref.camera_id, model=model, width=ref.width, height=ref.height,
                              params=np.asarray(params, np.float64))
        cam.has_prior_focal_length = any(cams[i].has_prior_focal_length for i in group)
        out.append((group, cam))
    return out


def share_cameras(rec, cameras: CameraOptions, num_threads: int = -1):
    """Give the images of each :func:`camera_groups` group one camera and bundle-adjust; (model, statistics).

    Bundle adjustment refines the intrinsics as ``cameras`` says, the principal point as
    ``cameras.refine_principal_point`` says (None = auto: refined, and the cameras of images in no
    group then held, their principal point being ill-posed). A group whose images' mean
    reprojection error rises by more than :data:`SHARE_CAMERAS_MAX_ERROR_INCREASE` is not one
    camera: it keeps its cameras and the others are adjusted again (``rejected``). ``rec`` is not
    modified.
    Returns (model, {"groups": [image counts of the model's shared cameras], "models": [their COLMAP
    models], "rejected": [image counts], "principal_point_refined", "reprojection_error": [before,
    after]}), or (``rec``, None) when no group is found or nothing is refined.
    """
    from .track_refinement import bundle_adjust, observation_errors, track_table

    principal_point = cameras.refine_principal_point
    if not (cameras.refine_focal_length or cameras.refine_extra_params or principal_point):
        return rec, None  # a known calibration: nothing to estimate
    refine_pp = cameras.refine_focal_length if principal_point is None else bool(principal_point)
    groups = _shared_groups(rec, cameras)
    if not groups:
        return rec, None
    table = track_table(rec)
    before = observation_errors(rec, table)
    own = {iid: rec.image(iid).camera for iid in rec.reg_image_ids()}
    rejected: list[list[int]] = []
    while groups:
        camera_of = dict(own)
        for group, cam in groups:
            camera_of.update({i: cam for i in group})
        shared = with_cameras(rec, camera_of)
        users: dict[int, int] = {}
        for cam in camera_of.values():
            users[cam.camera_id] = users.get(cam.camera_id, 0) + 1
        # a lone camera's principal point is ill-posed: hold its intrinsics while the shared ones move
        held = ({i for i, c in camera_of.items() if users[c.camera_id] < PRINCIPAL_POINT_MIN_IMAGES}
                if (principal_point is None and refine_pp) else set())
        bundle_adjust(shared, cameras.refine_focal_length, refine_pp, cameras.refine_extra_params, num_threads, 1.0,
                      (), held_intrinsics=held)
        after = observation_errors(shared, table)
        worse = []
        for group, _cam in groups:
            rows = np.isin(table.image_id, group)
            if np.mean(after[rows]) > (1 + SHARE_CAMERAS_MAX_ERROR_INCREASE) * np.mean(before[rows]):
                logger.warning("shared cameras: %d images of one size (%s, ...) fit one camera worse (reprojection "
                               "error %.3f -> %.3f px), they keep their own", len(group), rec.image(group[0]).name,
                               np.mean(before[rows]), np.mean(after[rows]))
                worse.append(group)
        if not worse:
            break
        rejected += worse
        groups = [(g, c) for g, c in groups if g not in worse]
    stats = {"groups": sorted((n for n in users.values() if n >= PRINCIPAL_POINT_MIN_IMAGES), reverse=True)
             if groups else [], "models": sorted({c.model.name for _g, c in groups}),
             "rejected": [len(g) for g in rejected],
             "principal_point_refined": bool(refine_pp and groups),
             "reprojection_error": [round(float(np.mean(before)), 4),
                                    round(float(np.mean(after if groups else before)), 4)]}
    if not groups:
        return rec, stats
    shared.update_point_3d_errors()
    logger.info("shared cameras: %s image(s) share %d %s camera(s)%s, reprojection error %.3f -> %.3f px",
                "+".join(map(str, stats["groups"])), len(stats["groups"]), "/".join(stats["models"]),
                " (principal points refined)" if refine_pp else "", *stats["reprojection_error"])
    return shared, stats
