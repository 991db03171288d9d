"""loftr_sfm: Structure-from-Motion and visual localization with EfficientLoFTR.

The public names are imported lazily so that ``import loftr_sfm`` and the stages that do not
run a network (keypoints, database, mapping) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # the matcher (Transformers-compatible API)
    "EfficientLoFTRConfig": "loftr_sfm.model.config",
    "EfficientLoFTRModel": "loftr_sfm.model.efficientloftr",
    "EfficientLoFTRForKeypointMatching": "loftr_sfm.model.efficientloftr",
    "EfficientLoFTRImageProcessor": "loftr_sfm.model.processing",
    "match_pair": "loftr_sfm.model.api",
    "pipeline": "loftr_sfm.keypoint_matching",  # Transformers' pipeline("keypoint-matching", ...)
    # the stages, in data-flow order
    "run_pairs": "loftr_sfm.pairs",
    "run_matching": "loftr_sfm.matching",
    "run_keypoints": "loftr_sfm.keypoints",
    "run_database": "loftr_sfm.database",
    "run_mapping": "loftr_sfm.sfm",
    "reconstruct": "loftr_sfm.stages",
    "localize": "loftr_sfm.localization",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loftr_sfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
