"""Localization of new photos (queries) against a map built by ``loftr-sfm reconstruct``.

``localize(map_dir, map_images, queries, output, config)`` and :class:`Localizer` (load the
map once, then localize many queries).

The map (``map_dir``) is an output folder of the reconstruction: ``model/`` (COLMAP model),
``features.h5`` (the shared keypoints whose indices are the model's ``points2D`` indices) and,
when the pairs stage used retrieval, its saved global descriptors. Nothing of the map is re-read
or re-merged per query.

Per query:

1. **camera**: user intrinsics (``camera_model`` + ``camera_params``, COLMAP convention), else
   the EXIF focal length (both through :func:`loftr_sfm.database.make_cameras`), else the camera
   of the best retrieved map image of the query's size (photos from the map's own device, whose
   calibration the map estimated from many images), else the focal length is estimated by the
   absolute-pose solver and refined (``SIMPLE_RADIAL`` start with ``f = 1.2 max(w, h)``). The log
   names each query's source (``camera_source``).
2. **retrieval**: top ``num_retrieved`` map images by global descriptor similarity, with the
   descriptors of the pairs stage (:mod:`loftr_sfm.retrieval`), optionally expanded by
   ``num_covisible`` images that share the most 3D points with the retrieved ones.
3. **matching** query <-> retrieved map images with any backend, through
   :func:`loftr_sfm.matching.match_pairs` (the backend is built once).
4. **2D-3D**: each match's map-side point is assigned to the nearest map keypoint that has a 3D
   point, within ``max_keypoint_error`` px (one ``scipy.spatial.cKDTree`` per map image, built
   once); query-side points are kept as matched (not quantized). Per pair, a 3D point keeps its
   best-scoring match; exact duplicates across pairs are removed.
5. **pose**: ``pycolmap.estimate_and_refine_absolute_pose`` on the 2D points + 0.5 (OpenCV ->
   COLMAP pixel convention) with a deep copy of the camera. Optional covisibility clustering
   (as in hloc): the retrieved images are split into groups connected through shared 3D points,
   each group is tried and the pose with most inliers wins.

Outputs: ``output`` (``poses.txt``: ``name qw qx qy qz tx ty tz``, world-to-camera
``cam_from_world``, COLMAP convention; written atomically) and ``localize_log.json`` beside it:
per query the retrieved images, number of matches, 2D-3D correspondences, inliers, times and
success. A query that fails is absent from ``poses.txt`` and marked failed in the log, with the
reason; it never receives a retrieved image's pose. Reruns resume: queries already in the log
(same map, same options) are not recomputed. With ``register=True`` the localized queries are
added to a copy of the map (see :meth:`Localizer.register_queries`).

Modules (dependencies flow down the list, none back): :mod:`.config` (options, the per-query
result, file names), :mod:`.map` (the map images, their loading, retrieval against them),
:mod:`.geometry` (2D-3D assembly, pose, triangulation, covisibility clusters), :mod:`.cameras`
(the query camera rule), :mod:`.queries` (the query list and the run's log), :mod:`.register`
(registration into a copy of the map), :mod:`.localizer` (:class:`Localizer` and
:func:`localize`).
"""

from __future__ import annotations

from .cameras import SCALED_MAP_CAMERA, camera_dict, query_camera
from .config import FEATURES_FILE, INVALID_POINT3D, LOG_FILE, MODEL_DIR, QUERY_PREFIX, LocalizationConfig, QueryResult
from .geometry import (
    assign_map_points,
    correspondences_2d3d,
    covisibility_clusters,
    estimate_pose,
    merge_correspondences,
    triangulate_two_view,
)
from .localizer import Localizer, localize
from .map import MapImage, MapRetriever, load_map_images, map_matcher
from .queries import query_items, read_log, run_signature, write_log
from .register import free_matches, register_queries, triangulate_new

__all__ = [
    "FEATURES_FILE", "INVALID_POINT3D", "LOG_FILE", "MODEL_DIR", "QUERY_PREFIX", "SCALED_MAP_CAMERA",
    "LocalizationConfig", "Localizer", "MapImage", "MapRetriever", "QueryResult", "assign_map_points",
    "camera_dict", "correspondences_2d3d", "covisibility_clusters", "estimate_pose", "free_matches",
    "load_map_images", "localize", "map_matcher", "merge_correspondences", "query_camera", "query_items",
    "read_log", "register_queries", "run_signature", "triangulate_new", "triangulate_two_view", "write_log",
]
