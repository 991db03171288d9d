"""The localizer: a map loaded once, and each query through retrieval, matching, 2D-3D assembly
and pose; a run over many queries writes ``poses.txt`` and its log (see the package docstring)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import rigid_to_pose, rotation_to_qvec, write_poses
from ..io import ImageReadError, InputError, image_size, matches_backend, read_raw_matches
from ..utils import Timer, merge_config
from .cameras import SCALED_FOCAL_TOLERANCE, SCALED_MAP_CAMERA, bogus_camera, camera_dict, query_camera
from .config import FEATURES_FILE, LOG_FILE, MODEL_DIR, QUERY_PREFIX, LocalizationConfig, QueryResult, _validate
from .geometry import correspondences_2d3d, covisibility_clusters, estimate_pose, merge_correspondences
from .map import MapRetriever, load_map_images, map_matcher
from .queries import query_items, read_log, run_signature, write_log
from .register import free_matches, register_queries

logger = logging.getLogger(__package__)  # one logger for the stage: loftr_sfm.localization


class Localizer:
    """A map loaded once; :meth:`localize` / :meth:`localize_path` localize queries against it.

    Args:
        map_dir: output folder of the reconstruction (``model/``, ``features.h5``, ...).
        map_images: the map's photo folder (the images are matched against queries).
        config: :class:`LocalizationConfig` (or dict).
    Raises:
        InputError: the map folder lacks ``model/`` or ``features.h5`` or the model is empty.
    """

    def __init__(self, map_dir: str | Path, map_images: str | Path, config: LocalizationConfig | Mapping | None = None):
        import pycolmap

        self.config = merge_config(LocalizationConfig, config)
        _validate(self.config)
        self.map_dir = Path(map_dir)
        self.map_images = Path(map_images)
        if not self.map_dir.is_dir():
            raise InputError(f"map folder {self.map_dir} does not exist")
        model_dir = self.map_dir / MODEL_DIR
        if not model_dir.is_dir():
            raise InputError(f"map folder {self.map_dir} has no {MODEL_DIR}/ (run `loftr-sfm reconstruct` or `map` first)")
        features = self.map_dir / FEATURES_FILE
        if not features.is_file():
            raise InputError(f"map folder {self.map_dir} has no {FEATURES_FILE} (the keypoints stage's output)")
        if not self.map_images.is_dir():
            raise InputError(f"map image folder {self.map_images} does not exist")
        pycolmap.logging.minloglevel = 2
        from ..evaluation import load_reconstruction

        with Timer() as t:
            self.reconstruction = load_reconstruction(model_dir)
            self.map = load_map_images(self.reconstruction, features, keep_free=self.config.register)
        if not self.map:
            raise InputError(f"the model in {model_dir} has no registered image with 3D points")
        self.names = sorted(self.map)
        self._point_ids = np.array(sorted(self.reconstruction.point3D_ids()), np.int64)
        self._point_xyz = np.array([self.reconstruction.points3D[int(i)].xyz for i in self._point_ids], np.float64).reshape(-1, 3)
        self._covis = None
        self.matcher_name = self.config.matcher or map_matcher(self.map_dir) or matches_backend(self.map_dir) or "eloftr"
        self._matcher = None
        self.retriever = None
        if len(self.names) > self.config.num_retrieved:
            self.retriever = MapRetriever(self.map_dir, self.map_images, self.names, self.config.retrieval)
        else:
            logger.info("map has %d <= num_retrieved images: every map image is matched", len(self.names))
        logger.info(
            "map loaded in %.2f s: %d images, %d 3D points, matcher %s",
            t.seconds,
            len(self.names),
            len(self._point_ids),
            self.matcher_name,
        )

    def points3D(self, ids: np.ndarray) -> np.ndarray:
        """(N, 3) coordinates of 3D point ids (vectorized lookup)."""
        pos = np.searchsorted(self._point_ids, ids)
        return self._point_xyz[pos]

    # ------------------------------------------------------------------ covisibility

    def covisible(self, names: Sequence[str], k: int) -> list[str]:
        """Up to ``k`` map images not in ``names`` sharing the most 3D points with them."""
        if k <= 0:
            return []
        if self._covis is None:
            from scipy.sparse import coo_matrix

            rows = np.concatenate([np.full(len(self.map[n].point3D_ids), i) for i, n in enumerate(self.names)])
            cols = np.searchsorted(self._point_ids, np.concatenate([self.map[n].point3D_ids for n in self.names]))
            self._covis = coo_matrix(
                (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self.names), len(self._point_ids))
            ).tocsr()
        idx = {n: i for i, n in enumerate(self.names)}
        sel = [idx[n] for n in names if n in idx]
        if not sel:
            return []
        counts = np.asarray((self._covis[sel] @ self._covis.T).sum(axis=0)).ravel()
        counts[sel] = 0
        order = np.argsort(-counts, kind="stable")
        return [self.names[i] for i in order[:k] if counts[i] > 0]

    # ------------------------------------------------------------------ stages

    @property
    def matcher(self):
        if self._matcher is None:
            from ..matching import build_backend

            self._matcher = build_backend(self._matching_config())
        return self._matcher

    def _matching_config(self):
        from ..matching import MatchingConfig

        c = self.config
        return MatchingConfig(
            matcher=self.matcher_name,
            weights=c.weights,
            max_side=c.max_side,
            matcher_options=c.matcher_options,
            batch_size=c.batch_size,
            num_workers=0,
            device=c.device,
        )

    def retrieve(self, query_path: Path) -> list[str]:
        """Top ``num_retrieved`` map images for a query (all map images without an index)."""
        if self.retriever is None:
            return list(self.names)
        ranked = self.retriever.query(query_path, self.config.num_retrieved)
        return [n for n in ranked if n in self.map][: self.config.num_retrieved]

    def query_camera(self, query_path: Path, name: str, retrieved: Sequence[str]) -> tuple[Any, str, bool]:
        """(camera, source, focal known) for a query; raises ImageReadError for unreadable files.

        The rule (``camera_source``) is :func:`loftr_sfm.localization.cameras.query_camera`'s, with
        this map's cameras (those of ``retrieved``, best first).
        """
        return query_camera(self.config, query_path, name, retrieved, self.reconstruction, self.map)

    def match(self, query_path: Path, qname: str, map_names: Sequence[str], workdir: Path):
        """Match a query with map images. Returns ({map name: (kq, km, scores)}, seconds)."""
        from ..matching import match_pairs

        qkey = QUERY_PREFIX + qname
        paths = {qkey: query_path, **{n: self.map_images / n for n in map_names}}
        h5path = workdir / "matches.h5"
        if h5path.exists():
            h5path.unlink()
        with Timer() as t:
            match_pairs([(qkey, n) for n in map_names], paths, h5path, self._matching_config(), matcher=self.matcher)
        out = {}
        import h5py

        if h5path.exists():
            with h5py.File(h5path, "r") as f:
                for n in map_names:
                    try:
                        out[n] = read_raw_matches(f, qkey, n)
                    except KeyError:  # unreadable map image: reported by match_pairs
                        continue
        return out, t.seconds

    def localize_from_matches(
        self,
        result: QueryResult,
        matches: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        camera,
        focal_known: bool,
    ) -> QueryResult:
        """2D-3D assembly + pose for one query whose matches are given (fills ``result``).

        Args:
            matches: map image name -> (query points (N, 2), map points (N, 2), scores (N,)),
                OpenCV convention.
        """
        c = self.config
        t0 = time.perf_counter()
        result.num_matches = int(sum(len(m[2]) for m in matches.values()))
        per_image = {
            n: correspondences_2d3d(kq, km, sc, self.map[n], c.max_keypoint_error)
            for n, (kq, km, sc) in matches.items()
            if n in self.map
        }
        names = [n for n in per_image if len(per_image[n][1])]
        groups = [names]
        if c.covisibility_clustering and len(names) > 1:
            groups = [[names[i] for i in g] for g in covisibility_clusters([self.map[n].point3D_ids for n in names])]
        # a scaled map camera is a start, not a calibration: RANSAC uses it, the refinement adjusts it
        refine = (c.refine_intrinsics if c.refine_intrinsics is not None
                  else not focal_known or result.camera_source == SCALED_MAP_CAMERA)
        best = None
        bogus = 0  # most inliers of a pose whose refined camera is bogus (such a pose is no candidate)
        total = merge_correspondences([per_image[n] for n in names])
        result.num_2d3d = int(len(total[1]))
        for group in groups:
            q, ids, _ = merge_correspondences([per_image[n] for n in group])
            if len(ids) < max(c.min_inliers, 4):
                continue
            ret = estimate_pose(q, self.points3D(ids), camera, c.ransac_max_error, not focal_known, refine, c.seed)
            if ret is not None and (refine or not focal_known) and bogus_camera(ret["camera"]):
                bogus, ret = max(bogus, int(ret["num_inliers"])), None
            if ret is not None and (best is None or ret["num_inliers"] > best[0]["num_inliers"]):
                best = (ret, q, ids, group)
        result.pose_time = time.perf_counter() - t0
        # a pose must beat chance: RANSAC finds a few percent of the 2D-3D matches of an unrelated photo consistent
        need = c.min_inliers if best is None else max(c.min_inliers, int(np.ceil(c.min_inlier_ratio * len(best[2]))))
        if best is None or best[0]["num_inliers"] < need:
            n_in = 0 if best is None else int(best[0]["num_inliers"])
            result.success = False
            result.num_inliers = max(n_in, bogus)
            result.message = (
                f"pose estimation failed ({result.num_2d3d} 2D-3D correspondences, {result.num_inliers} inliers"
                f"{' for a camera refined to intrinsics no lens has' if bogus > n_in else ''}, need {need}"
                f"{'' if need == c.min_inliers else f' = {c.min_inlier_ratio:g} of them'}: not this place?)"
            )
            return result
        ret, q, ids, group = best
        if refine and c.refine_intrinsics is None and result.camera_source == SCALED_MAP_CAMERA:
            start, refined = camera.mean_focal_length(), ret["camera"].mean_focal_length()
            if abs(refined / start - 1.0) < SCALED_FOCAL_TOLERANCE:  # the map's device: hold its scaled camera
                held = estimate_pose(q, self.points3D(ids), camera, c.ransac_max_error, False, False, c.seed)
                if held is not None and held["num_inliers"] >= need:
                    ret = held
        R, t = rigid_to_pose(ret["cam_from_world"])
        result.success = True
        result.num_inliers = int(ret["num_inliers"])
        result.R, result.t = R, t
        result.qvec, result.tvec = rotation_to_qvec(R).tolist(), t.tolist()
        result.camera = camera_dict(ret["camera"])
        result.camera_object = ret["camera"]
        result.cluster = list(group) if c.covisibility_clustering else None
        mask = ret["inlier_mask"]
        result.inlier_points2D, result.inlier_point3D_ids = q[mask], ids[mask]
        if c.register:
            result.free_matches = free_matches(self.map, matches, c.max_keypoint_error)
        return result

    def localize_path(self, query_path: str | Path, name: str | None = None, workdir: Path | None = None) -> QueryResult:
        """Localize one query image file. Never raises for bad input: the result says why."""
        query_path = Path(query_path)
        name = name or query_path.name
        res = QueryResult(name=name)
        t0 = time.perf_counter()
        own_tmp = workdir is None
        if own_tmp:
            workdir = Path(tempfile.mkdtemp(prefix="loftr_sfm_localize_"))
        try:
            image_size(query_path)  # unreadable / missing file: ImageReadError naming it
            with Timer() as tr:
                retrieved = self.retrieve(query_path)
                retrieved = retrieved + self.covisible(retrieved, self.config.num_covisible)
            res.retrieval_time = tr.seconds
            res.retrieved = retrieved
            if not retrieved:
                res.message = "no map image retrieved"
                return res
            camera, res.camera_source, focal_known = self.query_camera(query_path, name, retrieved)
            matches, res.matching_time = self.match(query_path, name, retrieved, workdir)
            if not matches:
                res.message = "no matches with any retrieved map image (unreadable images?)"
                return res
            self.localize_from_matches(res, matches, camera, focal_known)
        except (ImageReadError, InputError) as e:
            res.success = False
            res.message = str(e)
            logger.warning("query %s: %s", name, e)
        finally:
            res.time = time.perf_counter() - t0
            if own_tmp:
                shutil.rmtree(workdir, ignore_errors=True)
        focal = f", focal {res.camera['params'][0]:.1f} px" if res.camera else ""  # held or refined: the one used
        logger.info("query %s: %s (camera: %s%s; %d inliers; %.1f s)", name,
                    "localized" if res.success else f"failed, {res.message or 'no pose'}", res.camera_source or "-",
                    focal, res.num_inliers, res.time)
        return res

    # ------------------------------------------------------------------ registration

    def register_queries(
        self,
        results: Sequence[QueryResult],
        output_model: str | Path,
        max_reprojection_error: float = 4.0,
        min_angle: float = 1.5,
    ) -> Path:
        """Add localized queries to a copy of the map, saved in ``output_model`` (see
        :func:`loftr_sfm.localization.register.register_queries`). The map itself is not modified."""
        return register_queries(self.reconstruction, results, output_model, max_reprojection_error, min_angle)

    # ------------------------------------------------------------------ many queries

    def signature(self) -> str:
        """The run's signature (options and map files, see :func:`~loftr_sfm.localization.queries.run_signature`)."""
        return run_signature(self.config, self.matcher_name, self.map_dir)

    def localize(
        self, queries: str | Path | Sequence[str | Path], output: str | Path, query_root: str | Path | None = None
    ) -> list[QueryResult]:
        """Localize a folder of queries (or a list of files) and write ``poses.txt`` + the log.

        Args:
            queries: a folder (every image below it; names relative to it) or a list of paths
                (names relative to ``query_root`` if given, else file names).
            output: the poses file; the log ``localize_log.json`` is written beside it.
        Returns:
            one :class:`QueryResult` per query, in name order.
        """
        from ..utils import progress as tqdm  # follows set_progress (-q)

        output = Path(output)
        if output.is_dir():
            raise InputError(f"output {output} is a directory; give the poses file path (e.g. {output / 'poses.txt'})")
        items = self._query_items(queries, query_root)
        log_path = output.parent / LOG_FILE
        sig = self.signature()
        previous = read_log(log_path, sig) if self.config.resume else {}
        results: list[QueryResult] = []
        output.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".localize_", dir=output.parent))
        try:
            for name, path in tqdm(items, unit="query", desc="localizing"):
                if name in previous and previous[name].success:  # failures are retried
                    results.append(previous[name])
                    continue
                if path is None:
                    res = QueryResult(name=name, message=f"{name}: not a readable image file")
                elif any(ch.isspace() for ch in name):
                    res = QueryResult(name=name, message=f"{name!r}: whitespace in the name cannot be written to poses.txt")
                else:
                    res = self.localize_path(path, name, workdir)
                results.append(res)
                level = logging.INFO if res.success else logging.WARNING
                logger.log(
                    level,
                    "%s: %s (%d 2D-3D, %d inliers, %.2f s, matching %.2f s)%s",
                    name,
                    "localized" if res.success else "FAILED",
                    res.num_2d3d,
                    res.num_inliers,
                    res.time,
                    res.matching_time,
                    "" if res.success else f": {res.message}",
                )
                self._write_log(log_path, sig, results, previous)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        results.sort(key=lambda r: r.name)
        poses = {r.name: (r.R, r.t) for r in results if r.success}
        write_poses(output, poses)
        self._write_log(log_path, sig, results, {})
        ok = sum(r.success for r in results)
        logger.info("localized %d / %d queries -> %s (log: %s)", ok, len(results), output, log_path)
        if self.config.report:
            try:
                from ..report import LOCALIZE_REPORT_FILE, write_localization_report

                write_localization_report(self, results, dict(items), output.parent / LOCALIZE_REPORT_FILE)
            except Exception as e:  # noqa: BLE001 - the poses are written: a report that fails is only a warning
                logger.warning("the localization report could not be written: %s: %s", type(e).__name__, e)
                logger.debug("traceback", exc_info=True)
        if self.config.register:
            target = Path(self.config.register_dir) if self.config.register_dir else output.parent / "model_with_queries"
            fresh = [r for r in results if r.success and r.inlier_points2D is not None]
            if len(fresh) < ok:
                logger.warning("register: %d queries reused from the log lack 2D-3D data; rerun with --resume false", ok - len(fresh))
            self.register_queries(fresh, target)
        return results

    def _query_items(self, queries, query_root) -> list[tuple[str, Path | None]]:
        return query_items(queries, query_root)

    def _write_log(self, path: Path, sig: str, results: Sequence[QueryResult], previous: Mapping[str, QueryResult]) -> None:
        write_log(path, sig, results, previous, map_dir=self.map_dir, map_images=self.map_images,
                  matcher_name=self.matcher_name, config=self.config)


def localize(
    map_dir: Path,
    map_images: Path,
    queries: Path,
    output: Path,
    config: LocalizationConfig | Mapping | None = None,
) -> list[QueryResult]:
    """Localize every image of ``queries`` against the map in ``map_dir``; write ``output``.

    See the package docstring (:mod:`loftr_sfm.localization`). Returns one :class:`QueryResult` per query (name order).
    """
    localizer = Localizer(map_dir, map_images, config)
    return localizer.localize(queries, output)
