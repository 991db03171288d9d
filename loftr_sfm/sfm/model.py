"""A mapped model: statistics, files, loading, and triangulation with known poses."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..io import ImageReadError, InputError, read_image, require_space, write_failure

logger = logging.getLogger(__name__)


def quiet_pycolmap(verbose: bool) -> None:
    """pycolmap's log: everything when ``verbose``, else errors only."""
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2


def model_stats(rec) -> dict:
    """Statistics of a pycolmap.Reconstruction.

    ``mean_track_length`` counts each image at most once per track; ``duplicate_observations``
    is the number of removed repeated observations (0 after a correct merge).
    """
    n_pts = rec.num_points3D()
    lengths, dups = [], 0
    for p in rec.points3D.values():
        ids = [el.image_id for el in p.track.elements]
        u = len(set(ids))
        lengths.append(u)
        dups += len(ids) - u
    return {
        "registered": rec.num_reg_images(),
        "points": n_pts,
        "observations": rec.compute_num_observations(),
        "mean_track_length": float(np.mean(lengths)) if lengths else 0.0,
        "duplicate_observations": int(dups),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if n_pts else 0.0,
    }


def color_points(rec, images: Path) -> int:
    """Give every 3D point of ``rec`` (in place) the mean RGB colour of its observations; returns the images read.

    The photos are read as the keypoints were made from them (:func:`loftr_sfm.io.read_image`: EXIF
    orientation applied; pycolmap's own colour extraction reads the stored pixels, which puts a rotated
    phone photo's colours in the wrong place). An observation at COLMAP (x, y) (pixel centre at +0.5)
    takes the colour of pixel (floor(y), floor(x)). A photo that cannot be read leaves its observations out.
    """
    from ..utils import progress
    from .track_refinement import track_table

    table = track_table(rec)
    total = np.zeros((len(table.point3D_id), 3))
    count = np.zeros(len(table.point3D_id))
    read = 0
    for image_id, rows in progress(table.by_image().items(), desc="point colours", unit="image", leave=False):
        name = rec.image(image_id).name
        try:
            pixels = read_image(Path(images) / name)
        except ImageReadError as e:
            logger.warning("point colours: %s", e)
            continue
        read += 1
        h, w = pixels.shape[:2]
        col = np.clip(np.floor(table.xy[rows, 0]).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(table.xy[rows, 1]).astype(np.int64), 0, h - 1)
        np.add.at(total, table.track[rows], pixels[row, col])
        np.add.at(count, table.track[rows], 1.0)
    seen = count > 0
    colors = np.zeros((len(count), 3), np.uint8)
    colors[seen] = np.clip(np.rint(total[seen] / count[seen, None]), 0, 255)
    for pid, color in zip(table.point3D_id[seen], colors[seen]):
        rec.point3D(int(pid)).color = color
    return read


#: an upper bound of the model files per database keypoint: binary (24 bytes per 2D point, at most one 3D point per
#: two keypoints at 43 + 16 bytes), text (about 1.7x binary), PLY
MODEL_BYTES_PER_KEYPOINT = 160


def model_bytes(rec) -> int:
    """An upper estimate of the bytes of model/ + model_txt/ + points.ply for ``rec``."""
    binary = sum(100 + len(im.name) + 24 * im.num_points2D() for im in rec.images.values())
    binary += sum(43 + 8 * p.track.length() for p in rec.points3D.values()) + 4096 * (rec.num_cameras() + 1)
    return 3 * binary + 32 * rec.num_points3D() + 4096


def write_model(rec, output: Path) -> None:
    """model/ (binary), model_txt/ (text) and points.ply, each replaced atomically.

    COLMAP's writers do not report a full disk (they leave truncated files), so the free space is checked first
    and each written model is read back (same images and points) before it replaces the old one; a failure raises
    :class:`~loftr_sfm.io.DiskFullError` naming the output and leaves the finished files as they were.
    """
    import pycolmap

    output = Path(output)
    require_space(output / "model", model_bytes(rec))
    counts = (rec.num_reg_images(), rec.num_points3D())
    for sub, writer in (("model", rec.write_binary), ("model_txt", rec.write_text)):
        final = output / sub
        tmp = Path(tempfile.mkdtemp(prefix=f".{sub}.", dir=output))
        try:
            writer(str(tmp))
            back = pycolmap.Reconstruction(str(tmp))
            if (back.num_reg_images(), back.num_points3D()) != counts:
                raise ValueError("the written model does not read back")
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(final, e) from e
        old = None
        if final.exists():  # swap: the old model is removed only once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{sub}.old.", dir=output))
            final.replace(old / sub)
        tmp.replace(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    tmp_ply = output / ".points.ply.tmp"
    rec.export_PLY(str(tmp_ply))
    if rec.num_points3D() and tmp_ply.stat().st_size < 12 * rec.num_points3D():  # x, y, z float32 per point at least
        tmp_ply.unlink()
        raise write_failure(output / "points.ply", ValueError("the written file is truncated"))
    tmp_ply.replace(output / "points.ply")


def _prior(camera_id: int, cam):
    """A copy of camera ``cam`` (its model too: a shared camera may be RADIAL now) as database camera ``camera_id``,
    with a focal-length prior."""
    import pycolmap

    new = pycolmap.Camera(camera_id=camera_id, model=cam.model, width=cam.width, height=cam.height,
                          params=np.asarray(cam.params, np.float64))
    new.has_prior_focal_length = True
    return new


def load_model(output: Path):
    """The chosen reconstruction of an output folder (``output/model``) as pycolmap.Reconstruction."""
    import pycolmap

    path = Path(output) / "model"
    if not path.is_dir():
        raise InputError(f"{path} does not exist: run the mapping stage first")
    return pycolmap.Reconstruction(str(path))


def triangulate_from_poses(
    poses,
    db_path: Path,
    images: Path,
    output: Path | None = None,
    refine_intrinsics: bool = False,
    verbose: bool = False,
):
    """Triangulate points with known, fixed camera poses (COLMAP's point_triangulator).

    Args:
        poses: a pycolmap.Reconstruction (or a path to one) whose registered images are matched
            to the database BY NAME; its cameras give the intrinsics (written into a temporary copy
            of the database, which itself is not modified). Images of the database that are
            not in the pose model are ignored.
        db_path: database with keypoints, matches and two-view geometries.
        images: image folder (colours).
        output: if given, the result is written there (COLMAP binary).
    Returns:
        the triangulated pycolmap.Reconstruction (poses unchanged).
    """
    import pycolmap

    quiet_pycolmap(verbose)
    src = poses if isinstance(poses, pycolmap.Reconstruction) else pycolmap.Reconstruction(str(poses))
    with tempfile.TemporaryDirectory(prefix="loftr_sfm_tri_") as tmp:
        # work on a copy of the database: its cameras take the known intrinsics of the pose
        # model (COLMAP requires the model's and the database's cameras to be identical)
        db_copy = Path(tmp) / "database.db"
        shutil.copyfile(db_path, db_copy)
        rec = pycolmap.Reconstruction()
        with pycolmap.Database.open(str(db_copy)) as db:
            db_images = {im.name: im for im in db.read_all_images()}
            db_cams = {c.camera_id: c for c in db.read_all_cameras()}
            added: dict[int, object] = {}
            for img in sorted((im for im in src.images.values() if im.has_pose), key=lambda im: im.name):
                dbi = db_images.get(img.name)
                if dbi is None:
                    logger.warning("triangulate_from_poses: image %s is not in the database, skipped", img.name)
                    continue
                cid = dbi.camera_id
                if cid not in added:
                    sc, dc = src.cameras[img.camera_id], db_cams[cid]
                    if (sc.width, sc.height) == (dc.width, dc.height):
                        cam = _prior(cid, sc)
                        db.update_camera(cam)
                    else:
                        logger.warning("triangulate_from_poses: camera of %s is %dx%d in the pose model but %dx%d in the "
                                       "database; keeping the database intrinsics", img.name, sc.width, sc.height,
                                       dc.width, dc.height)
                        cam = dc
                    rec.add_camera_with_trivial_rig(cam)
                    added[cid] = cam
                rec.add_image_with_trivial_frame(
                    pycolmap.Image(name=img.name, camera_id=cid, image_id=dbi.image_id), img.cam_from_world())
        if rec.num_images() == 0:
            raise InputError(f"no image of the pose model is in {db_path}")
        options = pycolmap.IncrementalPipelineOptions()
        options.extract_colors = False  # coloured below, from the photos as the keypoints saw them
        out = pycolmap.triangulate_points(rec, str(db_copy), str(images), tmp, clear_points=True,
                                          options=options, refine_intrinsics=refine_intrinsics)
    color_points(out, images)
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        out.write_binary(str(output))
    return out
