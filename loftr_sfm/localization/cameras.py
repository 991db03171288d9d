"""The query camera rule of localization: which intrinsics a query's pose starts from, and the
log's view of a camera.

The rule (``camera_source``): ``auto`` takes the user's intrinsics (``camera_model`` +
``camera_params``, COLMAP convention), else the EXIF focal length (both through
:func:`loftr_sfm.database.make_cameras`), else the camera of the best retrieved map image of the
query's size (a photo of the map's own device, whose calibration the map estimated from many
images), else that of the best retrieved map image of the query's aspect ratio rescaled to its size
(``map-scaled``: a start for the intrinsics refinement, not a calibration; when the refinement moves its focal
length by less than :data:`SCALED_FOCAL_TOLERANCE`, the query is taken for the map's device at another
resolution and its pose is estimated again with the scaled camera held), else a focal length
to estimate (``SIMPLE_RADIAL`` start with ``f = 1.2 max(w, h)``). ``map`` skips user and EXIF;
``estimate`` always estimates.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import image_size
from .config import LocalizationConfig
from .map import MapImage

logger = logging.getLogger(__package__)  # one logger for the stage: loftr_sfm.localization

SCALED_MAP_CAMERA = "map-scaled"  # camera source: a map camera of the query's aspect ratio, rescaled
#: a refined focal length within this share of the scaled map camera's confirms that camera: it is held (a single
#: query's focal length moves by about 1 % with thousands of inliers, and trades against the depth)
SCALED_FOCAL_TOLERANCE = 0.03


def bogus_camera(camera) -> bool:
    """Whether a (refined) camera has intrinsics no lens gives, by the bounds COLMAP's incremental mapper
    applies to the cameras it refines (``IncrementalMapperOptions``: focal length between 0.1 and 10 times
    the larger image side, distortion parameters within +-1): a pose whose intrinsics refinement lands
    there fitted chance matches, not the photo."""
    import pycolmap

    o = pycolmap.IncrementalMapperOptions()
    return bool(camera.has_bogus_params(o.min_focal_length_ratio, o.max_focal_length_ratio, o.max_extra_param))


def query_camera(
    config: LocalizationConfig,
    query_path: Path,
    name: str,
    retrieved: Sequence[str],
    reconstruction,
    map_images: Mapping[str, MapImage],
) -> tuple[Any, str, bool]:
    """(camera, source, focal known) for a query; raises ImageReadError for unreadable files.

    Args:
        config: its ``camera_source``, ``camera_model`` and ``camera_params`` apply.
        query_path: the query image (its size; its EXIF for ``auto``).
        name: the query's name (messages only).
        retrieved: map image names, best first: the map cameras tried, in this order.
        reconstruction: the map's ``pycolmap.Reconstruction``; map_images: its images by name.
    Returns:
        a ``pycolmap.Camera`` (a copy where it comes from the map), the source (``user``,
        ``exif``, ``map``, ``map-scaled`` or ``estimated``) and whether the focal length is known.
    """
    from ..database import DatabaseConfig, make_cameras

    w, h = image_size(query_path)
    c = config
    if c.camera_source == "auto":
        fname = query_path.name  # make_cameras reads EXIF from folder / name
        cams, _ = make_cameras(
            [fname],
            {fname: (w, h)},
            query_path.parent if c.camera_params is None else None,
            DatabaseConfig(camera_mode="per_image", camera_model=c.camera_model, camera_params=c.camera_params),
        )
        cam = cams[0]
        if cam.has_prior_focal_length:
            return cam, ("user" if c.camera_params else "exif"), True
    if c.camera_source != "estimate":
        for n in retrieved:
            cam = reconstruction.images[map_images[n].image_id].camera
            if (cam.width, cam.height) == (w, h):
                return copy.deepcopy(cam), "map", True
        for n in retrieved:  # maybe the map's device at another resolution: its camera scaled, focal refined
            cam = reconstruction.images[map_images[n].image_id].camera
            if cam.width * h == cam.height * w:
                scaled = copy.deepcopy(cam)
                scaled.rescale(w, h)
                return scaled, SCALED_MAP_CAMERA, True
        if c.camera_source == "map":
            logger.warning("%s: no retrieved map camera of size %dx%d; its focal length is estimated", name, w, h)
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(
        camera_id=1, model_name="SIMPLE_RADIAL", focal_length=1.2 * max(w, h), width=w, height=h
    )
    return cam, "estimated", False


def camera_dict(cam) -> dict[str, Any]:
    """A ``pycolmap.Camera`` as the log writes it: model, width, height, params."""
    return {"model": cam.model_name, "width": int(cam.width), "height": int(cam.height), "params": [float(v) for v in cam.params]}
