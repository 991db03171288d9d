"""Mapping: database -> COLMAP model (incremental or global), PLY, summary.

Writes into the output folder:
  model/          the chosen reconstruction (the one with most registered images), COLMAP binary
  model_txt/      the same model as COLMAP text
  points.ply      the 3D points with colours
  summary.json    registered/total, points, mean track length (after removing repeated
                  observations of one image in one track), mean reprojection error, per-stage
                  times (``timings.json`` filled by earlier stages via :func:`record_stage_time`)

Coverage counts *supported* images: registered images that see at least ``min_image_points``
3D points and at least ``min_image_points_ratio`` times the model's median (an image that could
not have been registered by PnP against its model is not supported by it; the ratio is waived
for an image that a strong pair confirms, see :func:`unsupported_images`), and at least
``min_epipolar_agreement`` of whose verified two-view inlier matches agree with the model's
poses (:func:`epipolar_agreement`; over its strong pairs when it has any). A model broken by
wrong but verified pairs, e.g. repetitive facades matched across a courtyard, fails that test:
the global mapper on castle-P30 with XFeat* matches (every one of the 435 exhaustive pairs passes
verification, opposite views with 50-140 inliers) registers 30/30 images, 14 of them rotated by
40-172 degrees; 7 of those agree with 4-32 % of their inliers, while no image of a sound castle
model agrees with less than 62 %.
Nor is an image supported that is linked to the model's main part only through pairs of which
less than ``min_pair_agreement`` agree: the global mapper on fox (SIFT, sequential pairs) joins
the video's two halves through 54 weak pairs (15-24 inliers, 1 % of them agreeing) and turns the
second half by 122 degrees, while every image still agrees with at least 90 % of its inliers.
Pairs with at least ``min_link_inliers`` verified inliers weigh more than weak ones there (see
:meth:`Agreement.main_component`): on castle-P30 (SIFT, sequential pairs) the same mapper turns
images 0020-0029 by 84 degrees; two weak pairs between the blocks happen to agree, their strong
ones (63-185 inliers) do not. Strong pairs link images only when ``min_link_agreement`` (70 %) of
their inliers agree: the incremental mapper on fox (XFeat*, sequential pairs, GT intrinsics) turns
the second half by 115 degrees while its strong links to the first still agree 54-59 %. Nor does a
single link hold two parts together against strong pairs across that carry more inliers and
disagree: the global mapper on fox (XFeat*, sequential pairs, second pass) turns the second half
by 87 degrees with one strong pair across agreeing 79 % (75 inliers) and three disagreeing (174).
Low coverage (fewer than ``min_coverage`` of the database images supported) triggers the
documented fallback: retry the same mapper with ``retry_seeds`` other seeds, then the other
mapper (incremental <-> global) with as many seeds; the attempt with most supported images (then most points)
wins. A model that reaches the target but leaves more than ``fallback_unsupported`` (5 %) of its registered
images unsupported is partly wrong somewhere, so the other mapper gets one attempt too (castle-P30, XFeat*, the
global mapper first with ``global_tracks_per_view`` 1000: one run in three supported 27 of 30 images, the others
19-20; taken, that model ended at 0.148 deg median rotation error with an image 0.67 m off, where the incremental
mapper's supports all 30). Every
attempt is listed in summary.json, and so are the chosen model's unsupported images,
which are removed from it (``drop_unsupported``): a missing pose is better than a wrong one.

Second pass (``second_pass``, default ``global``): the verified pairs that the chosen model
contradicts (less than ``min_pair_agreement`` of their inliers agree; pairs of unsupported images
are kept) are removed from a copy of the database and the global mapper runs again on the rest;
if it supports fewer images than the first model, its unsupported images are removed and registered
again by the incremental mapper with the global model's poses fixed (:func:`complete_model`); the
result replaces the first model if it supports no fewer images, or fewer by at most
``second_pass_max_loss`` (5 %) of the images (castle-P30: 1 of 30, see :func:`_second_pass`; the
repair adds them back). Wrong but verified pairs are what
limits accuracy on scenes with repeated structure (castle-P30, GT intrinsics: median rotation
error 0.289 -> 0.059 deg with XFeat*, 0.170 -> 0.041 deg with SIFT), and what breaks the global
mapper when it runs first (castle-P30, XFeat*: 16 of 30 images supported).

Start model (``run_mapping(start=...)``, CLI ``map --start-model``): the poses of an earlier model
of some of the images are kept and the other images registered around them (points triangulated
from those poses with this database's matches, then the incremental mapper with the existing frames
fixed, :func:`extend_model`; four tries, two seeds and two registration thresholds, the one whose new
images agree best with their verified inliers kept); taken if it supports more images than the start
model and reaches ``min_coverage``, else the scene is mapped as usual. The start's poses and cameras
stay fixed through track refinement and filtering too (no second pass): freed, a bundle adjustment
over the freshly triangulated observations bends them. The repair of removed images uses it
(:func:`loftr_sfm.pipeline.repair_dropped_images`).

Principal point (``refine_principal_point``, default None = auto): refined when focal lengths are
refined and every camera is shared by at least 5 images, else fixed at the image centre as COLMAP
does. One image cannot tell a shifted principal point from a rotation; many images of one camera
can. Rendered scene with the principal point (18, -12) px off (``tests/test_synthetic_e2e.py``):
one camera per image 1.75 deg median rotation error, one shared camera 0.028 deg with the principal
point found within 0.4 px. herzjesu-P8 (XFeat*, principal point ~23 px off): 0.47 -> 0.057 deg,
SIFT 0.42 -> 0.18 (``camera_mode single``); castle-P30 exhaustive XFeat* 0.64 -> 0.047 deg.

Shared cameras (``share_cameras``, default on): images without EXIF get one camera each from the
database stage (COLMAP's default), so their principal points stay at the image centre. Once the
model is chosen, images of one size whose estimated focal lengths run together (consecutive values
within ``share_cameras_tolerance``, 3 %; at least 5 images) get one camera, bundle-adjusted with
its principal point refined by the auto rule; a group whose reprojection error rises by more than
10 % keeps its cameras (:func:`share_cameras`). It runs again after track refinement, whose
cleaner observations bring images whose focal length the mapper left off into the group
(castle-P30, retrieval pairs: two images 8-12 % off, held alone, kept the median rotation error at
0.30 deg; joined, 0.052). Track refinement and filtering refine the principal point if every
camera of the model is then shared by at least 5 images. Rendered scene with the principal point
(18, -12) px off: 1.77 -> 0.025 deg median rotation error; herzjesu-P8 XFeat* 0.463 -> 0.059 deg
(incremental), 0.541 -> 0.053 (global), SIFT 0.417 -> 0.168 and 0.390 -> 0.164. A repair or start
model hands its shared camera to the images it lacks as a prior (:func:`calibrate_new_images`).
A camera that many images share constrains more distortion than one image does: a shared
SIMPLE_RADIAL camera (COLMAP's default model, one radial term) becomes RADIAL (a second term, k2,
starting at 0; ``share_cameras_radial``). Fox (a phone video, OPENCV pseudo-GT k1 0.058, k2 -0.081;
retrieval pairs): XFeat* 0.277 -> 0.131 deg median rotation error, AUC@1 0.634 -> 0.813; SIFT 0.235
-> 0.160, 0.720 -> 0.831. Rendered scene with k1 0.15, k2 -0.2: found within 0.001, 0.076 -> 0.021
deg. Castle-P30 and herzjesu-P8 (little distortion): XFeat* unchanged. Not further: OPENCV (tangential
terms, two focal lengths) moved castle-P30 from 0.052 to 0.175 deg, its tangential terms trading
against the principal point.

Track refinement (``refine_tracks``, default ``auto``: on for semi-dense matches, off when
matches.h5 says ``sift``): the chosen model's observations are moved photometrically onto one
reference view per track, the model is bundle-adjusted and filtered at 1 px
(:mod:`loftr_sfm.track_refinement`); if that leaves an image with fewer points than
``min_image_points`` (and than before), the unrefined model is kept.

Relative filtering (``relative_filter``, default on): last, the model is filtered three times at a
multiple of its median reprojection error, with bundle adjustment after each round
(:func:`loftr_sfm.track_refinement.filter_observations`). The mappers keep observations up to
4 px, far beyond the noise of sub-pixel matches; bundle adjustment absorbs the wrong ones by
bending poses and points. The multiple (``relative_filter_factor``) is 3 (3.5 sigma of Gaussian
noise) when bundle adjustment keeps the intrinsics fixed (a known calibration) and 8 when it
refines them, because the residuals then also carry the camera model's misfit: at 3, herzjesu-P8
(principal point fixed at the centre, ~23 px off the truth) lost AUC@1 (XFeat* 0.798 -> 0.689,
SIFT 0.757 -> 0.712); at 8 it moves by 0.798 -> 0.796 and 0.757 -> 0.790.
Measured on finished models, median rotation error (deg) / AUC@1 before -> after:
- GT calibration (factor 3): rendered scenes with exact GT, XFeat* 0.097 -> 0.004 (tiled
  textures) and 0.051 -> 0.004 (unique textures), SIFT 0.034 -> 0.013 and 0.043 -> 0.013;
  castle-P30 XFeat* 0.037 / 0.910 -> 0.034 / 0.929, SIFT 0.040 / 0.922 -> 0.039 / 0.922;
  herzjesu-P8 XFeat* AUC@1 0.937 -> 0.946, SIFT 0.935 -> 0.945.
- estimated intrinsics (factor 8): rendered scenes XFeat* 0.340 -> 0.008 (tiled) and 0.068 ->
  0.003 (unique), SIFT 0.036 -> 0.043 and 0.063 -> 0.025; castle-P30 AUC@1 XFeat* 0.303 -> 0.302,
  SIFT 0.322 -> 0.304 (sequential pairs: 0.395 -> 0.417, 0.300 -> 0.378); fox SIFT 0.482 -> 0.492.
- Fox's pseudo-GT (a SIFT reconstruction mapped with COLMAP's 4 px) moves away from models
  filtered at 3 (GT calibration: XFeat* 0.075 -> 0.104 deg, SIFT 0.055 -> 0.077).
As for track refinement, the unfiltered model is kept if an image would be left with fewer than
``min_image_points`` points.

Speed (``ba_ignore_redundant_points``, opt-in): the incremental mapper's global bundle
adjustments first optimize poses, cameras and the points needed to cover every image, then the
other points with the rest held (COLMAP's ``ba_global_ignore_redundant_points3D``). Semi-dense
matches give 3-5 times SIFT's points, most of them redundant for the poses. Same database, one job
on the cores: fox (XFeat*, retrieval pairs) incremental mapper 140 -> 71 s, whole stage 326 -> 249
s, 0.130 / 0.813 -> 0.128 / 0.815 (median rotation error deg / AUC@1); castle-P30 (XFeat*,
exhaustive) 71-88 -> 39-46 s (runs of the multithreaded mapper vary: 0.052-0.073 / 0.890-0.907
off, 0.058-0.059 / 0.903-0.905 on); SIFT there 19 -> 14 s, 0.071 / 0.897 -> 0.070 / 0.898;
herzjesu-P8 unchanged. Not the default because the one weak cell came out worse: fox's sequential
pairs (XFeat*, the video's gap held by four weak pairs) 0.299 / 0.626 off, 0.367 / 0.613 on (two
runs each, equal to the third decimal; that cell moves with small changes, 0.286 / 0.695 in the
README's grid).
Opt-in too, ``global_tracks_per_view`` (default 0 = every track, pycolmap's default): the global
mapper (first attempt or second pass) places the cameras and bundle-adjusts with the longest tracks
until every image has that many of them, then triangulates all of them (GLOMAP's
``track_required_tracks_per_view``). At 1000, fox's (XFeat*, retrieval pairs) second pass took 58 s
instead of 123 and castle-P30's (XFeat*, exhaustive) 24 instead of 64 at equal accuracy, but over
the README's whole grid the global mapper's first attempts got worse: they pass the model check
where every track made them fail and fall back to the incremental mapper, and are less accurate
(fox, XFeat*, ``--mapper global``: sequential pairs 0.300 / 0.626 -> 0.461 / 0.491, retrieval
pairs 0.130 / 0.813 -> 0.225 / 0.768; castle-P30 exhaustive, one GLOMAP run in three supported 27
of 30 images against 19-20 in four runs with every track).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .database import database_fingerprint
from .io import InputError, matches_backend
from .utils import Timer, merge_config

logger = logging.getLogger(__name__)

MAPPERS = ("incremental", "global")
PRINCIPAL_POINT_MIN_IMAGES = 5  # refine_principal_point=None refines it when every camera has this many images


@dataclass
class MappingConfig:
    """Options of the mapping stage."""

    mapper: str = "incremental"  # incremental | global
    seed: int = 0
    min_coverage: float = 0.9  # below this registered fraction: retry / fallback
    retry_seeds: int = 1  # extra seeds tried with each mapper on low coverage
    fallback: bool = True  # then try the other mapper
    fallback_unsupported: float = 0.05  # other mapper once if a model over min_coverage has more images unsupported
    min_num_matches: int = 15  # pairs with fewer verified inliers are ignored
    min_image_points: int = 30  # a registered image with fewer 3D points is not supported (coverage)
    min_image_points_ratio: float = 0.1  # ... nor one with fewer than this times the median image's points
    min_epipolar_agreement: float = 0.4  # ... nor one whose verified inliers agree less with the model's poses
    min_pair_agreement: float = 0.5  # ... nor one linked to the model's main part only by pairs agreeing less
    min_link_inliers: int = 50  # pairs with this many verified inliers outweigh weaker ones in that link test
    min_link_agreement: float = 0.7  # ... and link images only when this share of their inliers agrees
    drop_unsupported: bool = True  # remove the chosen model's unsupported images (unreliable poses) from it
    agreement_max_error: float = 4.0  # px, Sampson distance under which an inlier agrees with the model
    second_pass: str = "global"  # none | global | incremental: map again without the pairs the model contradicts
    second_pass_max_loss: float = 0.05  # ... taken even if it supports up to this share of the images fewer
    max_model_overlap: int | None = None  # images an incremental sub-model may share with earlier ones (None: any)
    ba_ignore_redundant_points: bool = False  # incremental mapper's global BA: covering points first (module doc)
    global_tracks_per_view: int = 0  # global mapper: poses from the longest tracks, this many per image (0: all)
    refine_tracks: str = "auto"  # auto | on | off: multi-view track refinement (auto: off for sift matches)
    track_refinement: str | None = None  # TrackRefinementConfig options: 'key=value,key=value' or a JSON object
    relative_filter: bool = True  # last, drop observations beyond a multiple of the median reprojection error
    relative_filter_factor: float | None = None  # that multiple; None: 3 with fixed intrinsics, else 8 (module doc)
    relative_filter_rounds: int = 3  # rounds of filtering + bundle adjustment
    num_threads: int = -1
    refine_focal_length: bool = True
    refine_principal_point: bool | None = None  # None: auto, on for cameras shared by many images (module doc)
    refine_extra_params: bool = True
    share_cameras: bool = True  # images of one size whose estimated cameras agree get one camera (module doc)
    share_cameras_tolerance: float = 0.03  # ... their focal lengths in runs without relative gaps over this
    share_cameras_radial: bool = True  # ... and a shared SIMPLE_RADIAL camera gets a second radial term (RADIAL)
    verbose: bool = False
    overwrite: bool = False


# --------------------------------------------------------------------------- timings


def record_stage_time(output: Path, stage: str, seconds: float) -> None:
    """Store a stage's wall time in ``output/timings.json`` (read by the summary)."""
    path = Path(output) / "timings.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data[stage] = round(float(seconds), 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_stage_times(output: Path) -> dict[str, float]:
    path = Path(output) / "timings.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- statistics


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


def _bridges(num_nodes: int, ia: np.ndarray, ib: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bridges of an undirected simple graph (edges ``ia[k]-ib[k]``), by an iterative depth-first search.

    Returns ``(edges, child, tin, tout, root)``: the indices of the bridge edges, the endpoint of
    each that lies deeper in the search tree, each node's entry and exit times (the nodes of the
    subtree below ``child[j]``, which removing bridge ``j`` cuts off, are those with
    ``tin[child[j]] <= tin < tout[child[j]]``) and the root of its tree (its connected
    component). O(nodes + edges).
    """
    m = len(ia)
    ends = np.concatenate([ia, ib])
    other = np.concatenate([ib, ia])
    eid = np.concatenate([np.arange(m), np.arange(m)])
    order = np.argsort(ends, kind="stable")
    start = np.searchsorted(ends[order], np.arange(num_nodes + 1))
    nbr, nbr_edge = other[order].tolist(), eid[order].tolist()
    start = start.tolist()
    tin = [-1] * num_nodes
    low = [0] * num_nodes
    tout = [0] * num_nodes
    root_of = [0] * num_nodes
    bridges: list[tuple[int, int]] = []
    timer = 0
    for root in range(num_nodes):
        if tin[root] >= 0:
            continue
        tin[root] = low[root] = timer
        root_of[root] = root
        timer += 1
        stack = [(root, -1, start[root])]  # (node, edge it was entered by, next neighbour slot)
        while stack:
            node, via, slot = stack[-1]
            if slot < start[node + 1]:
                stack[-1] = (node, via, slot + 1)
                nxt, e = nbr[slot], nbr_edge[slot]
                if e == via:
                    continue
                if tin[nxt] < 0:
                    tin[nxt] = low[nxt] = timer
                    root_of[nxt] = root
                    timer += 1
                    stack.append((nxt, e, start[nxt]))
                else:
                    low[node] = min(low[node], tin[nxt])
                continue
            stack.pop()
            tout[node] = timer
            if stack:
                parent = stack[-1][0]
                low[parent] = min(low[parent], low[node])
                if low[node] > tin[parent]:
                    bridges.append((via, node))
    edges = np.array([b[0] for b in bridges], np.int64)
    child = np.array([b[1] for b in bridges], np.int64)
    return edges, child, np.array(tin, np.int64), np.array(tout, np.int64), np.array(root_of, np.int64)


def _bridge_cuts(num_nodes: int, ia: np.ndarray, ib: np.ndarray, links: np.ndarray, weigh: np.ndarray,
                 values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bridges of the graph of the pairs ``links``, and sums over the pairs each of them cuts.

    Args:
        ia, ib: (P,) image indices of the pairs.
        links: (P,) bool, the pairs that form the graph.
        weigh: (P,) bool, the pairs to sum over across each cut.
        values: (P, K) numbers per pair.
    Returns:
        ``(bridges, sums)``: (B,) indices of the pairs that are bridges of the graph, and (B, K)
        sums of ``values`` over the ``weigh`` pairs between the two sides of each bridge (the
        bridge itself included when it is a ``weigh`` pair). O(B * P) time, O(P) memory.
    """
    sel = np.flatnonzero(links)
    edges, child, tin, tout, comp = _bridges(num_nodes, ia[sel], ib[sel])
    sums = np.zeros((len(edges), values.shape[1]), np.float64)
    if not len(edges):
        return edges, sums
    w = np.flatnonzero(weigh & (comp[ia] == comp[ib]))  # a pair between two components crosses no bridge
    ta, tb, vw = tin[ia[w]], tin[ib[w]], values[w]
    for j, v in enumerate(child):
        lo, hi = tin[v], tout[v]
        crossing = ((ta >= lo) & (ta < hi)) != ((tb >= lo) & (tb < hi))  # one end below the bridge
        sums[j] = vw[crossing].sum(0)
    return sel[edges], sums


@dataclass
class Agreement:
    """How well a model's poses explain the verified two-view inliers of its database.

    Attributes:
        pairs: (name0, name1, verified inliers, inliers that agree with the model) per pair of
            registered images with enough verified inliers.
    """

    pairs: list[tuple[str, str, int, int]]

    def per_image(self, min_inliers: int = 0) -> dict[str, float]:
        """{image name: agreeing inliers / verified inliers over its pairs}.

        Only pairs with at least ``min_inliers`` verified inliers count for an image that has
        such pairs (all its pairs otherwise): weak verified pairs are often wrong on repeated
        structure, and many of them can outvote the few strong pairs of a correctly placed image
        (castle-P30, XFeat* with the ratio test, sequential pairs: 0029 at its GT pose agrees
        with 40 % of its inliers over all its pairs, 58 % over its pairs of >= 50 inliers; placed
        76 deg off, with 32 % over its pairs, all of them strong).
        """
        agree: dict[str, int] = {}
        total: dict[str, int] = {}
        strong_agree: dict[str, int] = {}
        strong_total: dict[str, int] = {}
        for a, b, n, ok in self.pairs:
            for name in (a, b):
                agree[name] = agree.get(name, 0) + ok
                total[name] = total.get(name, 0) + n
                if n >= min_inliers:
                    strong_agree[name] = strong_agree.get(name, 0) + ok
                    strong_total[name] = strong_total.get(name, 0) + n
        return {n: (strong_agree[n] / strong_total[n] if strong_total.get(n) else agree[n] / total[n])
                for n in sorted(total)}

    @staticmethod
    def strong_links(num, agree, min_link_inliers: int = 50, min_link_agreement: float = 0.7):
        """Which pairs link their images: at least ``min_link_inliers`` verified inliers (``num``), of
        which at least ``min_link_agreement`` agree (``agree``); numbers or numpy arrays."""
        return (num >= min_link_inliers) & (agree >= min_link_agreement * num)

    def strongly_linked(self, min_link_inliers: int = 50, min_link_agreement: float = 0.7) -> set[str]:
        """Images with a pair that links them (:meth:`strong_links`)."""
        return {name for a, b, n, ok in self.pairs if self.strong_links(n, ok, min_link_inliers, min_link_agreement)
                for name in (a, b)}

    def main_component(
        self,
        min_pair_agreement: float = 0.5,
        exclude: set[str] | frozenset[str] = frozenset(),
        min_link_inliers: int = 50,
        min_link_agreement: float = 0.7,
    ) -> set[str]:
        """Images of the largest part of the model whose links agree with its poses.

        A pair is *strong* when it has at least ``min_link_inliers`` verified inliers. Images are
        grouped by strong pairs of which at least ``min_link_agreement`` of the inliers agree. Two
        groups with only weak pairs between them are then joined (in key order) when one of those
        agrees at least ``min_pair_agreement``; groups with strong pairs between them stay apart,
        since none of those agrees enough. Weak verified pairs are often wrong (repeated texture:
        fox, SIFT, sequential pairs, has ~50 pairs of 15-24 inliers between its halves that no
        correct pose explains, beside 3 that agree), so a cut made of weak pairs is judged by its
        best pair; a cut with strong pairs by those, so that a block hinged on the rest by a few
        weak pairs that happen to agree but contradicted by its strong ones stays apart
        (castle-P30, SIFT, sequential pairs, global mapper: images 0020-0029 turned by 84 deg;
        their strong links to 0018 have 63-185 inliers, none agreeing).

        Strong pairs need more than a majority: the incremental mapper on fox (XFeat*, sequential
        pairs, GT intrinsics) turned the video's second half by 115 deg and its three strong links
        to the first half still agreed 54, 59 and 35 % (83, 86 and 74 % under the GT poses);
        in the sound models of castle-P30, herzjesu-P8 and fox, the strong pairs that link the
        images agree at least 79 %.

        A link that alone holds two groups together (a bridge of the graph of links) must also
        outweigh the strong pairs across that contradict the model (less than ``min_pair_agreement``
        agreeing): if those carry more inliers than the links across, the bridge is cut, the most
        outweighed first. The global mapper on fox (XFeat*, sequential pairs, second pass) turned the
        second half by 87 deg and one strong pair across still agreed 79 % (75 inliers), while the
        other three agreed 25, 39 and 50 % (174 inliers; under the GT poses, every strong pair
        across agrees and none is a bridge). A wrong pair on repeated structure next to a right
        link weighs less than the link, and cuts held by several links are not weighed. Every
        strong pair across counts, however far from the bridge: a thin chain of links (a video
        with sequential pairs) crossed by many strong wrong pairs would be split. Under the GT
        poses, the databases of castle-P30 and fox (XFeat* and SIFT, sequential and retrieval
        pairs) have one bridge that the rule cuts: castle's last image with sequential pairs,
        XFeat*, which its own pairs already leave unsupported (28 % of its strong inliers agree).

        Images in ``exclude`` (already known to be unsupported) take no part: a camera without 3D
        points can sit between two blocks turned against each other and agree with both.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        names = sorted({n for a, b, _, _ in self.pairs for n in (a, b)} - set(exclude))
        if not names:
            return set()
        idx = {n: i for i, n in enumerate(names)}
        kept = [(idx[a], idx[b], n, ok) for a, b, n, ok in self.pairs if a in idx and b in idx]
        ia, ib, num, agree = np.array(kept, np.int64).reshape(-1, 4).T
        strong = num >= min_link_inliers
        seed = self.strong_links(num, agree, min_link_inliers, min_link_agreement)
        contradicted = strong & (agree < min_pair_agreement * num)
        while True:  # a link that alone holds two groups together must outweigh the strong pairs against it
            bridges, sums = _bridge_cuts(len(names), ia, ib, seed, strong,
                                         np.c_[num * seed, num * contradicted].astype(np.float64))
            against = sums[:, 1] / sums[:, 0]  # the bridge itself is a link: > 0
            if not len(bridges) or against.max() <= 1.0:
                break
            seed[bridges[np.argmax(against)]] = False
        weak_agrees = ~strong & (agree >= min_pair_agreement * num)
        graph = coo_matrix((np.ones(int(seed.sum())), (ia[seed], ib[seed])), shape=(len(names), len(names)))
        _, labels = connected_components(graph, directed=False)
        size = len(names)
        while True:
            la, lb = labels[ia], labels[ib]
            cross = la != lb
            if not cross.any():
                break
            key = np.minimum(la, lb)[cross] * size + np.maximum(la, lb)[cross]
            keys, inv = np.unique(key, return_inverse=True)
            has_strong = np.bincount(inv, strong[cross].astype(np.float64), len(keys)) > 0
            has_agreeing = np.bincount(inv, weak_agrees[cross].astype(np.float64), len(keys)) > 0
            joinable = ~has_strong & has_agreeing
            if not joinable.any():
                break
            best = int(keys[np.argmax(joinable)])  # first joinable cut in key order: deterministic
            labels[labels == best % size] = best // size
        main = np.bincount(labels).argmax()
        return {n for n, lab in zip(names, labels) if lab == main}


def epipolar_agreement(rec, db_path: Path, max_error: float = 4.0, min_inliers: int = 15) -> Agreement:
    """Which verified two-view inlier matches of the database the model's poses explain.

    For every pair of registered images with at least ``min_inliers`` verified inliers in the
    database, the Sampson distance of each inlier to the epipolar geometry of the model's relative
    pose is computed (normalized coordinates, so distortion is removed, times the pair's mean
    focal length: pixels, COLMAP convention) and compared with ``max_error``. A camera put in a
    wrong place contradicts the pairs with its true neighbours, which carry most of its inliers; a
    sound model leaves only wrong-but-verified pairs (repetitive structure) unexplained.
    """
    import functools

    import pycolmap

    posed = {im.name: im for im in rec.images.values() if im.has_pose}
    pairs: list[tuple[str, str, int, int]] = []
    with pycolmap.Database.open(str(db_path)) as db:
        names = {im.image_id: im.name for im in db.read_all_images()}

        @functools.lru_cache(maxsize=256)  # pairs come sorted by first image: memory stays bounded
        def keypoints(image_id: int) -> np.ndarray:
            return np.asarray(db.read_keypoints(image_id), np.float64)[:, :2]

        pair_ids, num_inliers = db.read_two_view_geometry_num_inliers()
        for pair_id, n in sorted(zip(pair_ids, num_inliers)):
            if n < min_inliers:
                continue
            ids = pycolmap.pair_id_to_image_pair(pair_id)
            ims = [posed.get(names.get(i, "")) for i in ids]
            if ims[0] is None or ims[1] is None:
                continue
            m = np.asarray(db.read_two_view_geometry(*ids).inlier_matches).reshape(-1, 2)
            cams = [rec.cameras[im.camera_id] for im in ims]
            x0, x1 = (np.c_[cam.cam_from_img(keypoints(i)[m[:, k]]), np.ones(len(m))]
                      for k, (i, cam) in enumerate(zip(ids, cams)))
            rel = ims[1].cam_from_world() * ims[0].cam_from_world().inverse()
            t = np.asarray(rel.translation, np.float64)
            t = t / max(float(np.linalg.norm(t)), 1e-12)
            E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rel.rotation.matrix()
            Ex0, Etx1 = x0 @ E.T, x1 @ E
            sampson = np.sum(x1 * Ex0, 1) ** 2 / np.maximum(
                Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2, 1e-300)
            focal = 0.5 * (cams[0].mean_focal_length() + cams[1].mean_focal_length())
            ok = int(np.count_nonzero(np.sqrt(sampson) * focal < max_error))
            pairs.append((ims[0].name, ims[1].name, len(m), ok))
    return Agreement(pairs)


def unsupported_images(
    rec,
    min_points: int = 30,
    min_ratio: float = 0.1,
    agreement: Agreement | None = None,
    min_agreement: float = 0.4,
    min_pair_agreement: float = 0.5,
    min_link_inliers: int = 50,
    min_link_agreement: float = 0.7,
) -> list[str]:
    """Names of the registered images of ``rec`` that the model does not support (sorted).

    An image is unsupported when it observes fewer than ``max(min_points, min_ratio * median)``
    3D points (median over the registered images; given ``agreement``, ``min_points`` suffice
    for an image with a strong pair that agrees, see :meth:`Agreement.strongly_linked`), or,
    given ``agreement`` (see :func:`epipolar_agreement`), when less than ``min_agreement`` of its
    verified inliers agree with the model (over its pairs of at least ``min_link_inliers``
    inliers when it has any, see :meth:`Agreement.per_image`), or when it is not connected to the
    model's main part through pairs of which at least ``min_pair_agreement`` agree (a block of the
    model attached by contradicted pairs only; ``min_link_inliers``, ``min_link_agreement``: see
    :meth:`Agreement.main_component`).
    """
    reg = [im for im in rec.images.values() if im.has_pose]
    if not reg:
        return []
    counts = np.array([im.num_points3D for im in reg])
    threshold = max(float(min_points), float(min_ratio) * float(np.median(counts)))
    weak = {im.name for im, c in zip(reg, counts) if c < threshold}
    if agreement is not None and agreement.pairs:
        # few points but at least min_points, and a strong pair that agrees: the image is confirmed by
        # its epipolar geometry (semi-dense matches make the median large; an image at the end of a
        # sequence with two right pairs has few points, castle-P30 0029: 65 against a median of 2,895)
        confirmed = agreement.strongly_linked(min_link_inliers, min_link_agreement)
        weak -= {im.name for im, c in zip(reg, counts) if c >= min_points and im.name in confirmed}
        shares = agreement.per_image(min_link_inliers)
        weak.update(n for n, share in shares.items() if share < min_agreement)
        main = agreement.main_component(min_pair_agreement, exclude=weak, min_link_inliers=min_link_inliers,
                                        min_link_agreement=min_link_agreement)
        weak.update(im.name for im in reg if im.name not in main)
    return sorted(weak)


def _unsupported(rec, db_path: Path, cfg: MappingConfig) -> tuple[list[str], Agreement | None]:
    """(unsupported image names, the agreement they were judged on, None if no rule needs it)."""
    wanted = (cfg.min_epipolar_agreement > 0 or cfg.min_pair_agreement > 0 or cfg.min_link_agreement > 0
              or cfg.second_pass != "none")
    agreement = epipolar_agreement(rec, db_path, cfg.agreement_max_error, cfg.min_num_matches) if wanted else None
    weak = unsupported_images(rec, cfg.min_image_points, cfg.min_image_points_ratio, agreement,
                              cfg.min_epipolar_agreement, cfg.min_pair_agreement, cfg.min_link_inliers,
                              cfg.min_link_agreement)
    return weak, agreement


def contradicted_pairs(agreement: Agreement, min_pair_agreement: float = 0.5,
                       exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Pairs of which less than ``min_pair_agreement`` of the verified inliers agree with the model.

    Pairs with an image in ``exclude`` (unsupported: its pose, not the pair, may be wrong) are kept.
    """
    return [(a, b) for a, b, n, ok in agreement.pairs
            if ok < min_pair_agreement * n and a not in exclude and b not in exclude]


def calibrate_from_model(db_path: Path, rec) -> int:
    """Write the model's refined cameras into a database as priors (by image name); returns how many.

    The second pass then starts from the intrinsics the first one estimated instead of EXIF
    guesses (GLOMAP with per-image focal lengths from EXIF leaves 2 of castle-P30's 30 images
    unsupported where it does not with the first pass's cameras).
    """
    import pycolmap

    by_name = {im.name: rec.cameras[im.camera_id] for im in rec.images.values() if im.has_pose}
    k = 0
    with pycolmap.Database.open(str(db_path)) as db:
        for im in db.read_all_images():
            cam = by_name.get(im.name)
            if cam is None:
                continue
            current = db.read_camera(im.camera_id)
            if (camera_family(current.model.name) != camera_family(cam.model.name)
                    or (current.width, current.height) != (cam.width, cam.height)):
                continue
            db.update_camera(_prior(current.camera_id, cam))
            k += 1
    return k


def _prior(camera_id: int, cam):
    """A copy of camera ``cam`` (its model too: a shared camera may be RADIAL now) as database camera ``camera_id``,
    with a focal-length prior."""
    import pycolmap

    new = pycolmap.Camera(camera_id=camera_id, model=cam.model, width=cam.width, height=cam.height,
                          params=np.asarray(cam.params, np.float64))
    new.has_prior_focal_length = True
    return new


def calibrate_new_images(db_path: Path, rec, min_images: int = PRINCIPAL_POINT_MIN_IMAGES) -> int:
    """Give the database images that ``rec`` lacks the intrinsics of ``rec``'s shared camera; returns how many.

    An image without a focal-length prior whose camera has the model and size of exactly one
    camera of ``rec`` that at least ``min_images`` registered images share (:func:`share_cameras`)
    starts from that camera, as a prior: registered with few points, its own focal length is
    estimated poorly (castle-P30, image 0029: 1277 px against the 1380 px of the 29 others).
    """
    import pycolmap

    shared: dict[tuple, list] = {}
    for cid, n in model_images_per_camera(rec).items():
        if n >= min_images:
            cam = rec.cameras[cid]
            shared.setdefault((camera_family(cam.model.name), cam.width, cam.height), []).append(cam)
    if not shared:
        return 0
    posed = {im.name for im in rec.images.values() if im.has_pose}
    k = 0
    with pycolmap.Database.open(str(db_path)) as db:
        for im in db.read_all_images():
            if im.name in posed:
                continue
            current = db.read_camera(im.camera_id)
            alike = shared.get((camera_family(current.model.name), current.width, current.height), [])
            if current.has_prior_focal_length or len(alike) != 1:
                continue
            db.update_camera(_prior(current.camera_id, alike[0]))
            k += 1
    return k


def prune_pairs(db_path: Path, pairs: list[tuple[str, str]]) -> int:
    """Delete the two-view geometries of ``pairs`` (image names) from a database; returns how many."""
    import pycolmap

    k = 0
    with pycolmap.Database.open(str(db_path)) as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        for a, b in pairs:
            if a in ids and b in ids and db.exists_two_view_geometry(ids[a], ids[b]):
                db.delete_two_view_geometry(ids[a], ids[b])
                k += 1
    return k


# --------------------------------------------------------------------------- mapping


def _quiet(verbose: bool) -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2


def _map_once(db_path: Path, images: Path, work: Path, mapper: str, seed: int, cfg: MappingConfig):
    """One mapper run; returns the largest model (or None) and the number of models."""
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    if mapper == "incremental":
        recs = pycolmap.incremental_mapping(str(db_path), str(images), str(work), options=_incremental_options(cfg, seed))
    elif mapper == "global":
        recs = pycolmap.global_mapping(str(db_path), str(images), str(work), options=_global_options(cfg, seed))
    else:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {MAPPERS}")
    if not recs:
        return None, 0
    best = max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    return best, len(recs)


def _global_options(cfg: MappingConfig, seed: int):
    import pycolmap

    o = pycolmap.GlobalPipelineOptions()
    o.num_threads = cfg.num_threads
    o.random_seed = seed
    o.min_num_matches = cfg.min_num_matches
    ba = o.mapper.bundle_adjustment
    ba.refine_focal_length = cfg.refine_focal_length
    ba.refine_principal_point = cfg.refine_principal_point
    ba.refine_extra_params = cfg.refine_extra_params
    if cfg.global_tracks_per_view > 0:  # 0: pycolmap's default, every track
        o.mapper.track_required_tracks_per_view = int(cfg.global_tracks_per_view)
    return o


def _incremental_options(cfg: MappingConfig, seed: int):
    import pycolmap

    o = pycolmap.IncrementalPipelineOptions()
    o.num_threads = cfg.num_threads
    o.random_seed = seed
    o.min_num_matches = cfg.min_num_matches
    # pycolmap stops a sub-model once it shares 20 images with an earlier one; fox (XFeat*, sequential pairs
    # without the pairs under min_inlier_ratio): the first model ended at the video's gap (37 images), the
    # second grew from the far side across the gap and was stopped at 50 of 67; unlimited, it took all 67
    o.max_model_overlap = cfg.max_model_overlap if cfg.max_model_overlap is not None else 1 << 30
    o.ba_refine_focal_length = cfg.refine_focal_length
    o.ba_refine_principal_point = cfg.refine_principal_point
    o.ba_refine_extra_params = cfg.refine_extra_params
    o.mapper.ba_global_ignore_redundant_points3D = cfg.ba_ignore_redundant_points
    return o


def complete_model(rec, db_path: Path, images: Path, work: Path, cfg: MappingConfig, seed: int = 0,
                   abs_pose_max_error: float | None = None):
    """Register the database images that ``rec`` lacks, keeping its poses fixed; returns the new model or None.

    pycolmap's incremental mapper continues from ``rec`` (``fix_existing_frames``): the missing
    images are registered from their 2D-3D matches, new points are triangulated, and bundle
    adjustment moves only the new images and the points. ``rec`` itself is not modified. Fixed
    images are not guaranteed to stay: from fox's pruned database (XFeat*, sequential pairs) the
    mapper registered 30 new images and dropped 16 of the 36 it was given (why is not known); from
    the full database it kept all of them.
    ``abs_pose_max_error``: RANSAC threshold (px) of the registrations (None: pycolmap's 12 px).
    """
    import pycolmap

    start = work / "start"
    start.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(start))
    o = _incremental_options(cfg, seed)
    o.fix_existing_frames = True
    if abs_pose_max_error is not None:
        o.mapper.abs_pose_max_error = abs_pose_max_error
    recs = pycolmap.incremental_mapping(str(db_path), str(images), str(work / "out"), options=o, input_path=str(start))
    if not recs:
        return None
    return max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


# (seed offset, registration RANSAC threshold in px; None = pycolmap's 12) of the tries of extend_model
EXTEND_TRIES: tuple[tuple[int, float | None], ...] = ((0, None), (0, 4.0), (1, None), (1, 4.0))


def extend_model(start, db_path: Path, images: Path, work: Path, cfg: MappingConfig,
                 tries: Sequence[tuple[int, float | None]] = ((0, None),)):
    """Register the database images that ``start`` lacks around its poses, which stay fixed.

    ``start``'s images are matched to the database by name, so it may come from another database
    of the same images (the repair's keypoints are merged anew): points are triangulated from its
    poses with this database's matches (:func:`triangulate_from_poses`), then :func:`complete_model`
    registers the other images, once per try: (seed offset from ``cfg.seed``, registration RANSAC
    threshold). The database is not modified (a copy takes ``start``'s cameras, and the other
    images the camera ``start``'s images share, :func:`calibrate_new_images`). The incremental
    mapper refines intrinsics as ``cfg`` says (a new image's focal length is estimated only then),
    the start's cameras included; those are set back to the start's values afterwards. If every new
    image took the shared camera, intrinsics are held instead: registered from few points, castle-P30's
    0029 drifted from the shared 1379 px to 1265 (too far to share the camera again) and sat 0.91 deg
    off (AUC@1 0.834); held, it shares the camera, 0.31 deg (0.869), and every try registers it (one of four).

    Yields (seed, abs_pose_max_error, model or None) per try.
    """
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    calibrated = work / "start.db"
    shutil.copy2(db_path, calibrated)
    calibrate_from_model(calibrated, start)
    posed = {im.name for im in start.images.values() if im.has_pose}
    with pycolmap.Database.open(str(db_path)) as db:
        missing = sum(im.name not in posed for im in db.read_all_images())
    if missing and calibrate_new_images(calibrated, start) == missing:
        # every new image has the shared camera: held, so that few points cannot pull its focal length off
        cfg = replace(cfg, refine_focal_length=False, refine_principal_point=False, refine_extra_params=False)
    rec = triangulate_from_poses(start, calibrated, images, verbose=cfg.verbose)
    for k, (offset, max_error) in enumerate(tries):
        done = complete_model(rec, calibrated, images, work / str(k), cfg, cfg.seed + offset, max_error)
        if done is not None:
            for im in start.images.values():
                new = done.find_image_with_name(im.name) if im.has_pose else None
                if new is not None and new.has_pose:
                    done.camera(new.camera_id).params = start.cameras[im.camera_id].params
        yield cfg.seed + offset, max_error, done


def _attempt(map_db: Path, images: Path, work: Path, mapper: str, seed: int, cfg: MappingConfig, db_path: Path):
    """One mapper run on ``map_db``, judged on ``db_path``: (model or None, attempt record, agreement or None)."""
    t0 = time.perf_counter()
    rec, n_models = _map_once(map_db, images, work, mapper, seed, cfg)
    return (rec, *_judge(rec, n_models, mapper, seed, t0, cfg, db_path))


def _judge(rec, n_models: int, mapper: str, seed: int, t0: float, cfg: MappingConfig, db_path: Path):
    """(attempt record, agreement or None) of a mapper's model ``rec`` (or None), judged on ``db_path``."""
    reg = rec.num_reg_images() if rec is not None else 0
    weak, agreement = _unsupported(rec, db_path, cfg) if rec is not None else ([], None)
    attempt = {"mapper": mapper, "seed": seed, "models": n_models, "registered": reg, "supported": reg - len(weak),
               "points": rec.num_points3D() if rec is not None else 0, "unsupported_images": weak,
               "seconds": round(time.perf_counter() - t0, 3)}
    return attempt, agreement


def _rank(attempt: dict) -> tuple[int, int]:
    """Attempts compare by supported images, then points."""
    return attempt["supported"], attempt["points"]


def map_database(db_path: Path, images: Path, cfg: MappingConfig, num_images: int, start=None):
    """Run the mapper with the retry / fallback policy. Returns (best model or None, attempts).

    ``start`` (a pycolmap.Reconstruction of the same images, or None): first try to keep its poses
    and register the other images around them (:func:`extend_model` with :data:`EXTEND_TRIES`,
    attempts ``extend``). The registration of an image held by few points is fickle (castle-P30,
    sequential pairs, shared camera: image 0029 placed 0.19-2.7 deg off by different seeds and
    thresholds, with 51-59 % of its verified inliers agreeing, the best placed agreeing most), so
    every try is judged and the best kept: most supported images, then the highest agreement of
    the new images. It is taken without further attempts nor second pass if it supports more
    images than ``start`` has and reaches ``min_coverage``, otherwise it competes with the
    regular attempts.
    """
    # pycolmap's mappers are not deterministic with several threads even at a fixed seed (fox, XFeat*,
    # sequential pairs, same database: incremental seed 0 left 67/67 images supported in one run, 37/67
    # in another), so the fallback mapper gets the same retries as the first one
    mappers = [cfg.mapper] + (["global" if cfg.mapper == "incremental" else "incremental"] if cfg.fallback else [])
    order = [(m, cfg.seed + k) for m in mappers for k in range(cfg.retry_seeds + 1)]
    best, best_attempt, best_agreement, attempts = None, None, None, []
    with tempfile.TemporaryDirectory(prefix="loftr_sfm_map_") as tmpdir:
        if start is not None:
            rec, attempt = _extend(start, db_path, images, Path(tmpdir) / "extend", cfg, attempts, num_images)
            if rec is not None:
                if (attempt["supported"] > attempt["start_images"]
                        and attempt["supported"] >= cfg.min_coverage * num_images):
                    return rec, attempts
                best, best_attempt = rec, attempt
        near_miss, k = False, 0
        while k < len(order):
            mapper, seed = order[k]
            rec, attempt, agreement = _attempt(db_path, images, Path(tmpdir) / str(k), mapper, seed, cfg, db_path)
            if near_miss:
                attempt.update(near_miss=True, chosen=False)
            attempts.append(attempt)
            logger.info("mapping attempt %d (%s, seed %d): %d models, %d/%d images registered, %d supported",
                        k + 1, mapper, seed, attempt["models"], attempt["registered"], num_images, attempt["supported"])
            if rec is not None and (best_attempt is None or _rank(attempt) > _rank(best_attempt)):
                best, best_attempt, best_agreement = rec, attempt, agreement
                for a in attempts:
                    a["chosen"] = a is attempt
            if best is not None and best_attempt["supported"] >= cfg.min_coverage * num_images:
                unsupported = len(best_attempt["unsupported_images"])
                if (cfg.fallback and not near_miss and mapper == cfg.mapper
                        and unsupported > cfg.fallback_unsupported * best_attempt["registered"]):
                    # a near miss: the other mapper's first seed instead of the remaining retries
                    logger.info("mapping: %d of %d registered images unsupported, trying the %s mapper too",
                                unsupported, best_attempt["registered"], mappers[1])
                    order[k + 1:] = [(mappers[1], cfg.seed)]
                    near_miss, k = True, k + 1
                    continue
                break
            if k + 1 < len(order):
                logger.warning("mapping: low coverage (%d/%d images registered and supported by the model), "
                               "retrying with %s seed %d", attempt["supported"], num_images, *order[k + 1])
            k += 1
        if best is not None and best_agreement is not None and cfg.second_pass != "none":  # not after `extend`
            best = _second_pass(db_path, images, Path(tmpdir), cfg, best, best_attempt, best_agreement, attempts,
                                num_images)
    return best, attempts


def _extend(start, db_path: Path, images: Path, work: Path, cfg: MappingConfig, attempts: list[dict],
            num_images: int):
    """The tries of :func:`extend_model`, each judged and appended to ``attempts``; (best model or None, its record)."""
    tries = extend_model(start, db_path, images, work, cfg, EXTEND_TRIES)
    return _best_try(tries, start, "extend", cfg, db_path, attempts, num_images)


def _best_try(tries, start, mapper: str, cfg: MappingConfig, db_path: Path, attempts: list[dict], num_images: int):
    """Judge each ``(seed, abs_pose_max_error, model or None)`` of ``tries`` (models that register images
    around the fixed poses of ``start``) on ``db_path``, append its record to ``attempts``; returns
    (best model or None, its record, marked chosen): most supported images, then the highest mean
    agreement of the images ``start`` lacks (:meth:`Agreement.per_image`)."""
    kept = {im.name for im in start.images.values() if im.has_pose}
    best, best_attempt, best_key = None, None, None
    t0 = time.perf_counter()
    for seed, max_error, rec in tries:
        attempt, agreement = _judge(rec, int(rec is not None), mapper, seed, t0, cfg, db_path)
        new = sorted({im.name for im in rec.images.values() if im.has_pose} - kept) if rec is not None else []
        per_image = agreement.per_image(cfg.min_link_inliers) if agreement is not None else {}
        score = float(np.mean([per_image.get(n, 0.0) for n in new])) if new else 0.0
        attempt.update(start_images=len(kept), abs_pose_max_error=max_error, new_images_agreement=round(score, 4),
                       chosen=False)
        attempts.append(attempt)
        logger.info("mapping (%s): %d/%d images registered around the fixed poses of a %d-image model (seed %d, "
                    "threshold %s px), %d supported, the new ones agreeing %.1f %%", mapper, attempt["registered"],
                    num_images, len(kept), seed, max_error or 12, attempt["supported"], 100 * score)
        key = (attempt["supported"], score)
        if rec is not None and (best_key is None or key > best_key):
            best, best_attempt, best_key = rec, attempt, key
        t0 = time.perf_counter()
    if best_attempt is not None:
        best_attempt["chosen"] = True
    return best, best_attempt


def _second_pass(db_path: Path, images: Path, tmpdir: Path, cfg: MappingConfig, best, best_attempt: dict,
                 agreement: Agreement, attempts: list[dict], num_images: int):
    """Map again (``cfg.second_pass``) without the verified pairs that the chosen model contradicts.

    Wrong but verified pairs (repeated facades, opposite views of a symmetric courtyard) survive
    geometric verification with up to hundreds of inliers; the incremental mapper copes with them
    but settles less accurately, and they break rotation averaging in the global mapper. Once a
    model is found, the pairs whose inliers it contradicts are known, and the global mapper on the
    remaining view graph is the most accurate mapper here (castle-P30 with GT intrinsics, XFeat*:
    median rotation error 0.289 deg incremental -> 0.059 deg; SIFT: 0.170 -> 0.041). The new model
    replaces the chosen one if it leaves no fewer images supported (judged on the full database),
    after registering the images it lost into it (:func:`_complete_second_pass`), or fewer by at most
    ``cfg.second_pass_max_loss`` of the database's images (rounded down): an image that only the
    first model supports may be one whose place rests on the contradicted pairs, and the first model
    then bends its other poses to them too. Castle-P30 (XFeat*, sequential pairs, one run in seven):
    the incremental mapper placed 0029 7.9 m off where its own camera let 54 % of its inliers agree,
    the second pass left it unsupported (29 of 30); the first model measured 0.414 deg median rotation
    error after refinement, 0.451 with 0029 removed, where the runs that took the second pass and let
    the repair (:func:`loftr_sfm.pipeline.repair_dropped_images`) add 0029 back reached 0.071-0.081
    (a bad run with this rule: 0.082, the repair placing 0029 itself 2 deg off).
    Cameras whose intrinsics are refined start from the first model's values (:func:`calibrate_from_model`).
    """
    bad = contradicted_pairs(agreement, cfg.min_pair_agreement, exclude=set(best_attempt["unsupported_images"]))
    if not bad:
        logger.info("mapping: the model contradicts no verified pair, no second pass")
        return best
    pruned = tmpdir / "pruned.db"
    shutil.copy2(db_path, pruned)
    n_pruned = prune_pairs(pruned, bad)
    if cfg.refine_focal_length or cfg.refine_principal_point or cfg.refine_extra_params:
        calibrate_from_model(pruned, best)
    rec, attempt, _ = _attempt(pruned, images, tmpdir / "second", cfg.second_pass, cfg.seed, cfg, db_path)
    attempt.update(pruned_pairs=n_pruned, chosen=False)
    attempts.append(attempt)
    logger.info("mapping second pass (%s without %d contradicted pairs): %d models, %d/%d images registered, "
                "%d supported", cfg.second_pass, n_pruned, attempt["models"], attempt["registered"], num_images,
                attempt["supported"])
    if rec is not None and attempt["supported"] < best_attempt["supported"]:
        rec, attempt = _complete_second_pass(rec, attempt, pruned, images, tmpdir, cfg, db_path, attempts, num_images)
    allowed = int(cfg.second_pass_max_loss * num_images)
    if rec is None or attempt["supported"] < best_attempt["supported"] - allowed:
        logger.info("mapping: the second pass supports fewer images (%d < %d), keeping the first model",
                    attempt["supported"], best_attempt["supported"])
        return best
    if attempt["supported"] < best_attempt["supported"]:
        logger.info("mapping: the second pass supports %d image(s) fewer than the first model (%d, at most %d "
                    "allowed: second_pass_max_loss), taking it; its unsupported images are left out",
                    best_attempt["supported"] - attempt["supported"], best_attempt["supported"], allowed)
    for a in attempts:
        a["chosen"] = a is attempt
    return rec


def _complete_second_pass(rec, attempt: dict, pruned: Path, images: Path, tmpdir: Path, cfg: MappingConfig,
                          db_path: Path, attempts: list[dict], num_images: int):
    """The second pass supports fewer images than the first model: register them again (:func:`complete_model`).

    The global mapper places an image held by few pairs badly, or not at all: castle-P30 with the
    ratio test, image 0029 keeps two right pairs after pruning (91 and 168 inliers) and GLOMAP puts
    it where 5 of its points agree with nothing; on fox (XFeat*, sequential pairs) it turns the
    video's second half. Its unsupported images are removed and the incremental mapper registers
    them from the pruned database with the global model's poses fixed, once per try of
    :data:`EXTEND_TRIES` (seeds and registration thresholds, as :func:`extend_model`), the best
    kept (:func:`_best_try`). Returns the completed model and its attempt record if it supports
    more images, else the input.
    """
    import pycolmap

    base = pycolmap.Reconstruction(rec)  # a copy: the second-pass model stays as it was if completion fails
    drop_images(base, attempt["unsupported_images"])
    tries = ((cfg.seed + offset, max_error,
              complete_model(base, pruned, images, tmpdir / f"complete{k}", cfg, cfg.seed + offset, max_error))
             for k, (offset, max_error) in enumerate(EXTEND_TRIES))
    done, completed = _best_try(tries, base, f"{cfg.second_pass}+incremental", cfg, db_path, attempts, num_images)
    if done is None:  # no try gave a model
        return rec, attempt
    completed.update(pruned_pairs=attempt["pruned_pairs"], chosen=False)
    logger.info("mapping: second pass completed incrementally (its poses fixed): %d/%d images registered, %d supported",
                completed["registered"], num_images, completed["supported"])
    if completed["supported"] <= attempt["supported"]:
        return rec, attempt
    return done, completed


def track_refinement_wanted(cfg: MappingConfig, output: Path) -> bool:
    """``refine_tracks``: on / off, or auto = on unless the matches come from a detector (sift).

    The backend is the ``matcher`` attribute of matches.h5 (written by the matching stage), else
    the keypoints preset features.h5 was merged with (raw matches from elsewhere), else unknown:
    semi-dense is assumed, as by the keypoints preset ``auto``.
    """
    if cfg.refine_tracks != "auto":
        return cfg.refine_tracks == "on"
    return matches_backend(output) != "sift"


def keep_unless_images_starve(before, after, stats: dict, min_points: int, step: str):
    """``after``, or ``before`` if ``after`` leaves an image with fewer 3D points than ``min_points``
    (and than before); sets ``stats["reverted"]``. Returns (model, stats)."""
    lost = [before.image(i).name for i in before.reg_image_ids()
            if after.image(i).num_points3D < min(min_points, before.image(i).num_points3D)]
    stats["reverted"] = bool(lost)
    if lost:
        logger.warning("%s left %d image(s) with fewer than %d points (%s): keeping the model from before it", step,
                       len(lost), min_points, ", ".join(lost[:5]))
        return before, stats
    return after, stats


def refine_model_tracks(rec, images: Path, cfg: MappingConfig, fixed_images: Collection[int] = ()):
    """:func:`loftr_sfm.track_refinement.refine_tracks` on a copy of ``rec``; (model, statistics).

    ``fixed_images``: ids of images whose poses and cameras bundle adjustment keeps.
    The refined model is returned unless it leaves a registered image with fewer 3D points than
    ``cfg.min_image_points`` (and than before), in which case ``rec`` itself is (``reverted``).
    """
    import pycolmap

    from .matchers import parse_options
    from .track_refinement import refine_tracks

    refined = pycolmap.Reconstruction(rec)
    stats = refine_tracks(refined, images, parse_options(cfg.track_refinement), cfg.refine_focal_length,
                          cfg.refine_principal_point, cfg.refine_extra_params, cfg.num_threads, fixed_images)
    return keep_unless_images_starve(rec, refined, stats, cfg.min_image_points, "track refinement")


def model_images_per_camera(rec) -> dict[int, int]:
    """{camera_id: number of registered images} of a model (:func:`images_per_camera` for a database)."""
    ids, counts = np.unique([rec.image(i).camera_id for i in rec.reg_image_ids()], return_counts=True)
    return {int(c): int(n) for c, n in zip(ids, counts)}


def images_per_camera(db_path: Path) -> dict[int, int]:
    """{camera_id: number of images} of a COLMAP database, read-only (opening it with pycolmap touches the file)."""
    import sqlite3

    con = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT camera_id, COUNT(*) FROM images GROUP BY camera_id").fetchall())
    except sqlite3.DatabaseError as e:
        raise InputError(f"{db_path} is not a COLMAP database ({e}): run the database stage again") from None
    finally:
        con.close()


def resolve_principal_point(cfg: MappingConfig, images_per_camera: Mapping[int, int]) -> MappingConfig:
    """``cfg`` with ``refine_principal_point`` decided when it is None (auto).

    Auto refines the principal point when focal lengths are refined and every camera of the
    database is shared by at least :data:`PRINCIPAL_POINT_MIN_IMAGES` images (``camera_mode
    single`` / ``per_folder``, or EXIF groups): one image cannot tell a shifted principal point
    from a rotation, many images of one camera can. Fixed at the image centre it costs herzjesu-P8
    (true principal point ~23 px off) a 0.5 deg median rotation error (see the module doc).
    """
    if cfg.refine_principal_point is not None:
        return cfg
    shared = bool(images_per_camera) and min(images_per_camera.values()) >= PRINCIPAL_POINT_MIN_IMAGES
    return replace(cfg, refine_principal_point=bool(cfg.refine_focal_length and shared))


# a merge whose bundle adjustment raises the mean reprojection error by more than this fraction is undone
SHARE_CAMERAS_MAX_ERROR_INCREASE = 0.1


# a shared camera of the key's model gets one more radial distortion term (share_cameras_radial): the new
# model's parameters are the old ones followed by k2 (COLMAP: f, cx, cy, k -> f, cx, cy, k1, k2)
RADIAL_UPGRADE = {"SIMPLE_RADIAL": "RADIAL", "SIMPLE_RADIAL_FISHEYE": "RADIAL_FISHEYE"}


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

    Images are grouped by camera model (:func:`camera_family`: a shared RADIAL camera and the
    SIMPLE_RADIAL ones of images left alone are one family) and size; within that, sorted by focal
    length and split where consecutive focal lengths differ by more than ``tolerance`` (relative);
    runs of at least ``min_images`` images are groups. Per-image focal lengths of one camera scatter
    (a principal point off the centre biases them, 7 % over 8 images in
    ``tests/test_synthetic_e2e.py``), two cameras rarely fill the gap between their focal lengths;
    :func:`share_cameras` judges each group by its reprojection error. Deterministic.
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


def _shared_groups(rec, cfg: MappingConfig, fixed: set[int]) -> list[tuple[list[int], object]]:
    """The :func:`camera_groups` of ``rec`` that are not one camera yet, each with its starting camera.

    The camera starts from the median of the members' parameters; if fixed images are among them,
    from the parameters most of those have, and fixed images with other parameters leave the group
    (sharing would move them). Its model is the members' :data:`RADIAL_UPGRADE` when
    ``cfg.share_cameras_radial`` says so (and extra parameters are refined) or a member has it already
    (k2 starts at 0 for the others); with fixed images, theirs.
    """
    import pycolmap

    out = []
    for group in camera_groups(rec, cfg.share_cameras_tolerance):
        cams = {i: rec.image(i).camera for i in group}
        family = camera_family(cams[group[0]].model.name)
        upgrade = RADIAL_UPGRADE.get(family)
        wanted = cfg.share_cameras_radial and cfg.refine_extra_params
        model = upgrade if upgrade and (wanted or any(c.model.name == upgrade for c in cams.values())) else family
        held_models = [cams[i].model.name for i in group if i in fixed]
        if held_models:  # fixed cameras keep their model
            names, counts = np.unique(held_models, return_counts=True)
            model = str(names[np.argmax(counts)])
            group = [i for i in group if cams[i].model.name in (model, camera_family(model))]
        params_of = {i: params_as(cams[i], model) for i in group}
        held = [tuple(params_of[i]) for i in group if i in fixed]
        if held:
            values, counts = np.unique(np.array(held), axis=0, return_counts=True)
            params = values[np.argmax(counts)]
            group = [i for i in group if i not in fixed or np.array_equal(params_of[i], params)]
        else:
            params = np.median(np.array([params_of[i] for i in group]), axis=0)
        if len(group) < PRINCIPAL_POINT_MIN_IMAGES or len({cams[i].camera_id for i in group}) == 1:
            continue
        ref = cams[group[0]]
        cam = pycolmap.Camera(camera_id=ref.camera_id, model=model, width=ref.width, height=ref.height,
                              params=np.asarray(params, np.float64))
        cam.has_prior_focal_length = any(cams[i].has_prior_focal_length for i in group)
        out.append((group, cam))
    return out


def share_cameras(rec, cfg: MappingConfig, principal_point: bool | None = None, fixed_images: Collection[int] = ()):
    """Give the images of each :func:`camera_groups` group one camera and bundle-adjust; (model, statistics).

    Without EXIF every image has its own camera (COLMAP's default), whose principal point cannot be
    refined (:func:`resolve_principal_point`); photos of one camera are then mapped with the principal
    point at the image centre, which bends the poses (herzjesu-P8, ~23 px off: 0.47 deg median
    rotation error with XFeat*). Once mapped, images of one size whose focal lengths run together
    (``cfg.share_cameras_tolerance``) are taken for one camera (:func:`_shared_groups`), and bundle
    adjustment refines its intrinsics as ``cfg`` says, the principal point as ``principal_point``
    says (the user's ``refine_principal_point``; None = auto: refined, and the cameras of images in
    no group then held, their principal point being ill-posed). A group whose images' mean
    reprojection error rises by more than :data:`SHARE_CAMERAS_MAX_ERROR_INCREASE` is not one
    camera: it keeps its cameras and the others are adjusted again (``rejected``). ``rec`` is not
    modified. A shared SIMPLE_RADIAL camera becomes RADIAL (``cfg.share_cameras_radial``, k2 from 0).
    Returns (model, {"groups": [image counts of the model's shared cameras], "models": [their COLMAP
    models], "rejected": [image counts], "principal_point_refined", "reprojection_error": [before,
    after]}), or (``rec``, None) when no group is found.
    """
    from .track_refinement import bundle_adjust, observation_errors, track_table

    if not (cfg.refine_focal_length or cfg.refine_extra_params or principal_point):
        return rec, None  # a known calibration: nothing to estimate
    refine_pp = cfg.refine_focal_length if principal_point is None else bool(principal_point)
    fixed = {i for i in fixed_images if rec.exists_image(i) and rec.image(i).has_pose}
    groups = _shared_groups(rec, cfg, fixed)
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
        held = ({i for i, c in camera_of.items() if users[c.camera_id] < PRINCIPAL_POINT_MIN_IMAGES} - fixed
                if (principal_point is None and refine_pp) else set())
        bundle_adjust(shared, cfg.refine_focal_length, refine_pp, cfg.refine_extra_params, cfg.num_threads, 1.0,
                      fixed, held_intrinsics=held)
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


def relative_filter_factor(cfg: MappingConfig) -> float:
    """``relative_filter_factor``, or by default 3 when bundle adjustment refines no intrinsics, else 8."""
    if cfg.relative_filter_factor is not None:
        return float(cfg.relative_filter_factor)
    fixed = not (cfg.refine_focal_length or cfg.refine_principal_point or cfg.refine_extra_params)
    return 3.0 if fixed else 8.0


def filter_model(rec, cfg: MappingConfig, fixed_images: Collection[int] = ()):
    """:func:`loftr_sfm.track_refinement.filter_observations` on a copy of ``rec``; (model, statistics).

    ``fixed_images``: ids of images whose poses and cameras bundle adjustment keeps.
    As :func:`refine_model_tracks`, ``rec`` itself is returned (``reverted``) if the filtered model
    leaves a registered image with fewer 3D points than ``cfg.min_image_points`` (and than before).
    """
    import pycolmap

    from .track_refinement import TrackRefinementConfig, filter_observations

    filtered = pycolmap.Reconstruction(rec)
    stats = filter_observations(filtered, relative_filter_factor(cfg), cfg.relative_filter_rounds,
                                TrackRefinementConfig.min_tri_angle, cfg.refine_focal_length,
                                cfg.refine_principal_point, cfg.refine_extra_params, cfg.num_threads, fixed_images)
    return keep_unless_images_starve(rec, filtered, stats, cfg.min_image_points, "relative filtering")


def model_fingerprint(rec) -> str:
    """A short hash of a model's registered images and poses (names, rotations, translations to 1e-9)."""
    import hashlib

    h = hashlib.sha1()
    for im in sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name):
        pose = im.cam_from_world()
        h.update(im.name.encode())
        h.update(np.round(np.concatenate([pose.rotation.quat, pose.translation]), 9).tobytes())
    return f"{rec.num_reg_images()}:{h.hexdigest()[:16]}"


def drop_images(rec, names) -> None:
    """De-register the images ``names`` of ``rec`` (their observations go; points keep >= 2 views)."""
    names = set(names)
    for im in list(rec.images.values()):
        if im.name in names and im.has_pose:
            rec.deregister_frame(im.frame_id)


def write_model(rec, output: Path) -> None:
    """model/ (binary), model_txt/ (text) and points.ply, each replaced atomically."""
    output = Path(output)
    for sub, writer in (("model", rec.write_binary), ("model_txt", rec.write_text)):
        final = output / sub
        tmp = Path(tempfile.mkdtemp(prefix=f".{sub}.", dir=output))
        writer(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
    tmp_ply = output / ".points.ply.tmp"
    rec.export_PLY(str(tmp_ply))
    tmp_ply.replace(output / "points.ply")


def _same_database(summary: dict, db_path: Path) -> bool:
    """Whether ``db_path`` holds the database an earlier ``summary`` was mapped from: same mtime, or
    same content (:func:`loftr_sfm.database.database_fingerprint`; pycolmap rewrites a database's file
    whenever it opens it, so a read alone changes the mtime)."""
    if summary.get("database_mtime_ns") == db_path.stat().st_mtime_ns:
        return True
    return summary.get("database_fingerprint") == database_fingerprint(db_path)


def run_mapping(
    output: Path,
    images: Path,
    config: MappingConfig | None = None,
    stage_times: Mapping[str, float] | None = None,
    start=None,
) -> dict:
    """Map ``output/database.db``; write model/, model_txt/, points.ply, summary.json.

    Args:
        stage_times: wall times (s) of earlier stages measured by the caller (e.g.
            ``reconstruct``); stored in ``timings.json`` and reported in the summary.
        start: a model of (some of) the same images, pycolmap.Reconstruction or COLMAP folder,
            whose poses are kept if the other images can be registered around them
            (:func:`map_database`); how the repair adds an image to the model it was removed from.
    Returns:
        the summary dict (also in ``summary.json``); the model itself is in ``output/model``
        (:func:`load_model`). Raises InputError if the database is missing; if no model could
        be built the summary says so (registered 0) and no model is written.

    Resumable: an existing model is reused when the database's content (not its mtime, which any
    pycolmap reader changes: :func:`_same_database`), the options and the start model are those it
    was made from; ``overwrite`` maps again.
    """
    import pycolmap

    cfg = merge_config(MappingConfig, config)
    for stage, seconds in (stage_times or {}).items():
        record_stage_time(output, stage, seconds)
    if cfg.mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {cfg.mapper!r}; choose one of {MAPPERS}")
    if cfg.refine_tracks not in ("auto", "on", "off"):
        raise ValueError(f"unknown refine_tracks {cfg.refine_tracks!r}; choose one of ('auto', 'on', 'off')")
    from .matchers import parse_options
    from .track_refinement import TrackRefinementConfig

    merge_config(TrackRefinementConfig, parse_options(cfg.track_refinement))  # typos fail now, not after mapping
    if cfg.second_pass not in ("none", *MAPPERS):
        raise ValueError(f"unknown second_pass {cfg.second_pass!r}; choose one of {('none', *MAPPERS)}")
    if cfg.global_tracks_per_view < 0:
        raise ValueError(f"global_tracks_per_view must be >= 0 (0: every track), got {cfg.global_tracks_per_view}")
    if not 0.0 <= cfg.fallback_unsupported <= 1.0:
        raise ValueError(f"fallback_unsupported must be in [0, 1] (a share of the registered images, 1: off), got "
                         f"{cfg.fallback_unsupported}")
    if not 0.0 <= cfg.second_pass_max_loss < 1.0:
        raise ValueError(f"second_pass_max_loss must be in [0, 1) (a share of the images), got "
                         f"{cfg.second_pass_max_loss}")
    if cfg.relative_filter_factor is not None and cfg.relative_filter_factor <= 1.0:
        raise ValueError(f"relative_filter_factor must be > 1 (a multiple of the median error), got "
                         f"{cfg.relative_filter_factor}")
    _quiet(cfg.verbose)
    output = Path(output)
    db_path = output / "database.db"
    if not db_path.is_file():
        raise InputError(f"{db_path} does not exist: run the database stage first")
    images = Path(images)
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist")
    principal_point = cfg.refine_principal_point  # the user's (None: auto), for the shared cameras
    cfg = resolve_principal_point(cfg, images_per_camera(db_path))
    if start is not None and not isinstance(start, pycolmap.Reconstruction):
        if not (Path(start) / "images.bin").is_file() and not (Path(start) / "images.txt").is_file():
            raise InputError(f"start model {start} is not a COLMAP model folder (no images.bin / images.txt)")
        start = pycolmap.Reconstruction(str(start))
    start_key = model_fingerprint(start) if start is not None else None
    summary_path = output / "summary.json"
    if not cfg.overwrite and summary_path.is_file() and (output / "model").is_dir():
        try:
            old = json.loads(summary_path.read_text())
            # a model made from a start model stays valid when none is given (a rerun of the stage after a repair)
            if start_key in (None, old.get("start")) and old.get("config") == {**asdict(cfg), "overwrite": False,
                                                                                 "verbose": False} \
                    and _same_database(old, db_path):
                logger.info("mapping: %s is up to date, skipping (use overwrite to recompute)", output / "model")
                old["times"] = read_stage_times(output)
                return old
        except (OSError, ValueError, sqlite3.Error):
            pass
    with pycolmap.Database.open(str(db_path)) as db:
        db_names = sorted(im.name for im in db.read_all_images())
    num_images = len(db_names)
    with Timer() as t:
        rec, attempts = map_database(db_path, images, cfg, num_images, start)
        weak = next((a["unsupported_images"] for a in attempts if a.get("chosen")), [])
        if weak:
            logger.warning("mapping: %d registered image(s) are not supported by the model (few 3D points, or verified "
                           "matches that contradict their poses), their poses are unreliable%s: %s", len(weak),
                           ": removed from the model" if cfg.drop_unsupported else "", ", ".join(weak[:10]))
            if cfg.drop_unsupported:
                drop_images(rec, weak)
    record_stage_time(output, "mapping", t.seconds)
    track_stats = None
    # a model extended around a start model keeps the start's poses and cameras through refinement and
    # filtering too: a bundle adjustment of everything over the freshly triangulated observations bends
    # them (castle-P30, sequential pairs, GT calibration: 0.057 -> 0.259 deg after track refinement)
    fixed: list[int] = []
    if rec is not None and any(a.get("chosen") and a["mapper"] == "extend" for a in attempts):
        kept = {im.name for im in start.images.values() if im.has_pose}
        fixed = [im.image_id for im in rec.images.values() if im.has_pose and im.name in kept]
    share_stats: list = []
    share_seconds = 0.0
    refine_cfg = cfg  # the intrinsics the bundle adjustments after mapping refine

    def share(rec):
        """:func:`share_cameras` if on; then ``refine_cfg`` refines the principal point if every camera is shared."""
        nonlocal refine_cfg, share_seconds
        if rec is None or not cfg.share_cameras:
            return rec
        with Timer() as ts:
            rec, stats = share_cameras(rec, cfg, principal_point, fixed)
        share_seconds += ts.seconds
        share_stats.append(stats)
        if stats is not None and stats["groups"] and principal_point is None:
            refine_cfg = resolve_principal_point(replace(cfg, refine_principal_point=None),
                                                 model_images_per_camera(rec))
        return rec

    rec = share(rec)
    if rec is not None and track_refinement_wanted(cfg, output):
        with Timer() as tt:
            rec, track_stats = refine_model_tracks(rec, images, refine_cfg, fixed)
        record_stage_time(output, "track_refinement", tt.seconds)
        # refined observations estimate the cameras left alone better: images whose focal length was off join
        # now (castle-P30, retrieval pairs: 0007 and 0008 at 1214 and 1493 px, against 1377 shared)
        rec = share(rec)
    if cfg.share_cameras:
        record_stage_time(output, "share_cameras", share_seconds)
    filter_stats = None
    if rec is not None and cfg.relative_filter:
        with Timer() as tf:
            rec, filter_stats = filter_model(rec, refine_cfg, fixed)
        record_stage_time(output, "relative_filter", tf.seconds)
    if rec is not None:
        write_model(rec, output)
    stats = model_stats(rec) if rec is not None else {"registered": 0, "points": 0, "observations": 0,
                                                      "mean_track_length": 0.0, "duplicate_observations": 0,
                                                      "mean_reprojection_error": 0.0}
    summary = {
        "num_images": num_images,
        **stats,
        "unsupported_images": weak,
        "dropped_images": weak if cfg.drop_unsupported else [],
        # every database image without a pose in the written model (the dropped ones included)
        "unregistered_images": sorted(set(db_names) - ({im.name for im in rec.images.values() if im.has_pose}
                                                       if rec is not None else set())),
        "registered_fraction": stats["registered"] / max(num_images, 1),
        "mapper": cfg.mapper,
        "attempts": attempts,
        # one record per pass (after mapping, after track refinement), None where nothing was shared anew
        "shared_cameras": share_stats,
        "track_refinement": track_stats,
        "relative_filter": filter_stats,
        "times": read_stage_times(output),
        "config": {**asdict(cfg), "overwrite": False, "verbose": False},
        "database_mtime_ns": db_path.stat().st_mtime_ns,
        "database_fingerprint": database_fingerprint(db_path),
        "start": start_key,
    }
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(summary_path)
    logger.info(
        "reconstruction: %d/%d images registered, %d points, mean track length %.2f, reprojection error %.3f px "
        "(mapping %.1f s)", stats["registered"], num_images, stats["points"], stats["mean_track_length"],
        stats["mean_reprojection_error"], t.seconds,
    )
    if rec is None:
        logger.error("mapping failed: no model could be built from %s", db_path)
    return summary


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

    _quiet(verbose)
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
        out = pycolmap.triangulate_points(rec, str(db_copy), str(images), tmp, clear_points=True,
                                          options=pycolmap.IncrementalPipelineOptions(), refine_intrinsics=refine_intrinsics)
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        out.write_binary(str(output))
    return out


__all__ = ["MappingConfig", "MAPPERS", "run_mapping", "load_model", "map_database", "model_stats", "complete_model",
           "extend_model", "model_fingerprint", "unsupported_images", "drop_images", "Agreement", "epipolar_agreement",
           "contradicted_pairs", "prune_pairs", "calibrate_from_model", "calibrate_new_images", "write_model",
           "triangulate_from_poses", "camera_groups", "share_cameras", "with_cameras",
           "record_stage_time", "read_stage_times"]
