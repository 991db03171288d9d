"""Options of the mapping stage: the mapper run, then the parts that act on its model.

``MappingConfig`` holds the choices of the mapper run; ``cameras`` and ``refinement`` are the
parts applied to the chosen model afterwards. Every leaf option is also a flat keyword of
:func:`loftr_sfm.utils.merge_config` and a flag of ``loftr-sfm map`` (``--share-cameras false``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Mapper = Literal["incremental", "global"]
MAPPERS: tuple[str, ...] = ("incremental", "global")

# cameras of at least this many images may have their principal point refined (see CameraOptions)
PRINCIPAL_POINT_MIN_IMAGES = 5
# the mapped focal lengths over the guess from the image size (no EXIF) beyond which (or below its inverse) the
# guess counts as far off: the log warns, and beyond it a model that leaves images out is mapped again
# (CameraOptions.remap_far_focal)
FAR_FOCAL_CHANGE = 3.0


@dataclass
class CameraOptions:
    """Intrinsics: what bundle adjustment refines, and cameras shared by images after mapping."""

    refine_focal_length: bool = True  # bundle adjustment refines focal lengths (False: a known calibration)
    refine_principal_point: bool | None = None  # None: auto, refined for cameras shared by >= 5 images
    refine_extra_params: bool = True  # distortion
    share_cameras: bool = True  # images of one size whose estimated cameras agree get one camera
    share_cameras_tolerance: float = 0.03  # ... their focal lengths in runs without relative gaps over this
    share_cameras_radial: bool = True  # ... and a shared SIMPLE_RADIAL camera gets a second radial term (RADIAL)
    hold_known_calibration: bool = True  # cameras given to the database stage (camera_params) are held as given
    remap_far_focal: bool = True  # images left out, focal > 3x the guess (no EXIF): map again, one camera per size


@dataclass
class RefinementOptions:
    """Optional refinement of the model after mapping (both opt-in, see docs/accuracy.md)."""

    refine_tracks: Literal["auto", "on", "off"] = "off"  # photometric track refinement: on, off, or auto (on unless sift)
    track_refinement: str | None = None  # TrackRefinementConfig options: 'key=value,key=value' or a JSON object
    relative_filter: bool = False  # drop observations beyond a multiple of the median reprojection error
    relative_filter_factor: float | None = None  # that multiple; None: 3 with fixed intrinsics, else 8
    relative_filter_rounds: int = 3  # rounds of filtering + bundle adjustment


@dataclass
class MappingConfig:
    """Options of the mapping stage (``run_mapping``)."""

    mapper: Mapper = "incremental"  # pycolmap mapper: incremental | global
    fallback: bool = False  # run the other mapper once if the first registers fewer than min_registered of the images
    min_registered: float = 0.9  # share of the database's images under which the fallback runs
    seed: int = 0  # the mappers' random seed
    min_num_matches: int = 15  # pairs with fewer verified inliers are ignored by the mapper
    global_tracks_per_view: int = 0  # global mapper: cameras placed from the longest tracks, this many per image (0: all)
    num_threads: int = -1  # -1: every core
    cameras: CameraOptions = field(default_factory=CameraOptions)
    refinement: RefinementOptions = field(default_factory=RefinementOptions)
    verbose: bool = False  # pycolmap's own log
    overwrite: bool = False  # map again even if model/ is up to date

    def __post_init__(self) -> None:
        if self.mapper not in MAPPERS:
            raise ValueError(f"unknown mapper {self.mapper!r}; choose one of {MAPPERS}")
        if not 0.0 <= self.min_registered <= 1.0:
            raise ValueError(f"min_registered must be in [0, 1] (a share of the images), got {self.min_registered}")
        if self.global_tracks_per_view < 0:
            raise ValueError(f"global_tracks_per_view must be >= 0 (0: every track), got {self.global_tracks_per_view}")
        refinement = self.refinement
        if isinstance(refinement, RefinementOptions):
            if refinement.refine_tracks not in ("auto", "on", "off"):
                raise ValueError(f"unknown refine_tracks {refinement.refine_tracks!r}; choose one of "
                                 "('auto', 'on', 'off')")
            factor = refinement.relative_filter_factor
            if factor is not None and factor <= 1.0:
                raise ValueError(f"relative_filter_factor must be > 1 (a multiple of the median error), got {factor}")
