"""The mapping stage as a package: options, the mapper run, cameras, refinement, the model, the stage.

Public names: :func:`run_mapping` (the stage), :class:`MappingConfig` and its parts,
:func:`load_model`, :func:`triangulate_from_poses`, :func:`model_stats`.
"""

from .model import load_model, model_stats, triangulate_from_poses, write_model
from .options import MAPPERS, CameraOptions, MappingConfig, RefinementOptions
from .stage import SUMMARY_FILE, run_mapping

__all__ = ["MAPPERS", "CameraOptions", "MappingConfig", "RefinementOptions", "SUMMARY_FILE", "load_model",
           "model_stats", "run_mapping", "triangulate_from_poses", "write_model"]
