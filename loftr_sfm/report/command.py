"""``loftr-sfm report``: write ``OUTPUT/report.html`` for an existing output folder (parser and runner)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_parser(sub) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand on the CLI's subparsers."""
    from ..cli import MAIN_GROUP, _short_usage, add_config_arguments
    from .run import ReportConfig

    p = sub.add_parser("report", help="write OUTPUT/report.html for an existing output folder",
                       description="Write OUTPUT/report.html (one self-contained page: 3D view, images, pairs, "
                                   "match pictures) for an output folder of `reconstruct` or of its stages.")
    main = p.add_argument_group(MAIN_GROUP)
    main.add_argument("--output", type=Path, required=True, help="output folder of `reconstruct`")
    main.add_argument("--images", type=Path, default=None,
                      help="the photo folder (match pictures, images no stage could read); without it no pictures")
    add_config_arguments(p, ReportConfig, common=(), common_group=main)
    p.usage = _short_usage(main)
    return p


def run_report_command(args: argparse.Namespace) -> Path:
    """Run ``loftr-sfm report`` from its parsed arguments; returns the report's path."""
    from ..cli import config_from_args
    from .run import ReportConfig, write_report

    return write_report(args.output, args.images, config_from_args(ReportConfig, args))
