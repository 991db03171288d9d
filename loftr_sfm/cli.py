"""``loftr-sfm``: one subcommand per stage, plus ``reconstruct``, ``localize``, ``match-pair`` and ``convert``.

The CLI has no logic of its own: every stage flag is generated from the fields of that stage's
dataclass config (``--num-neighbors`` sets ``PairsConfig.num_neighbors``), and only the flags a
user gives override the config defaults. A few issue-level aliases exist (``--pairs`` for the
pair-selection method in ``reconstruct``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

logger = logging.getLogger("loftr_sfm")

# stage name -> (module, config class, {field: extra flag aliases})
STAGE_CONFIGS: dict[str, tuple[str, str, dict[str, list[str]]]] = {
    "pairs": ("loftr_sfm.pairs", "PairsConfig", {"method": ["--pairs"]}),
    "match": ("loftr_sfm.matching", "MatchingConfig", {}),
    "keypoints": ("loftr_sfm.keypoints", "KeypointsConfig", {}),
    "database": ("loftr_sfm.database", "DatabaseConfig", {}),
    "map": ("loftr_sfm.sfm", "MappingConfig", {}),
    "localize": ("loftr_sfm.localization", "LocalizationConfig", {}),
}


# the few options a user needs, per stage: listed first in --help (the others under "advanced" groups)
COMMON_OPTIONS: dict[str, tuple[str, ...]] = {
    "pairs": ("method", "num_neighbors", "loop_closure"),
    "match": ("matcher", "weights", "max_side", "device"),
    "keypoints": (),
    "database": ("camera_mode", "camera_model", "camera_params"),
    "map": ("mapper", "refine_tracks"),
    "localize": ("matcher", "num_retrieved", "camera_model", "camera_params", "device", "report"),
}


def _config_class(stage: str) -> type:
    module, cls, _ = STAGE_CONFIGS[stage]
    return getattr(importlib.import_module(module), cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _argument_spec(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a dataclass field type."""
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = list(typing.get_args(tp))
        return {"type": type(choices[0]), "choices": choices}
    if origin in (list, tuple, typing.List, typing.Tuple):  # noqa: UP006
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        return {"type": args[0] if args[0] in (int, float, str) else str, "nargs": "+"}
    if tp is bool:
        return {"type": _parse_bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    if tp in (int, float, str):
        return {"type": tp}
    if tp is Path:
        return {"type": Path}
    return {"type": str}


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, used as help when metadata has none."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M)}


def _part_title(part_cls: type) -> str:
    """An argument group's title: the first line of the part's docstring, else ``<ClassName> options``."""
    doc = part_cls.__dict__.get("__doc__") or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not first or first.startswith(f"{part_cls.__name__}("):  # dataclass's generated signature docstring
        return f"{part_cls.__name__} options"
    return first.rstrip(".")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    aliases: dict[str, list[str]] | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
    seen: set[str] | None = None,
    common: tuple[str, ...] | frozenset[str] = (),
    common_group: argparse._ArgumentGroup | None = None,
) -> None:
    """Add one ``--field-name`` flag per leaf field of a (possibly nested) dataclass config.

    Defaults are suppressed: only given flags count. The fields of ``cls`` go into a group
    ``<ClassName> options``; every part (a field whose type is a dataclass) gets a group of its own,
    with one flag per leaf field named after the leaf (``--share`` for ``cfg.cameras.share``).
    ``skip``, ``aliases`` and ``seen`` (flags already added by another stage) are by leaf name.
    With ``common_group``, the leaves named in ``common`` go into that group (the few options a user
    needs, shown first) and the groups of the others are titled ``advanced: ...``.
    """
    from loftr_sfm.utils import config_field_types, config_leaves, config_parts

    config_leaves(cls)  # fails loudly on ambiguous leaf names and on collisions with the parts
    try:
        defaults: Any = cls()
    except Exception:  # noqa: BLE001 - required fields, validation: fall back to the field defaults
        defaults = None
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}

    def walk(part_cls: type, prefix: tuple[str, ...], part_default: Any) -> None:
        hints = config_field_types(part_cls)
        comments = _field_comments(part_cls)
        parts = config_parts(part_cls)
        for field in dataclasses.fields(part_cls):
            default = getattr(part_default, field.name) if part_default is not None else (
                field.default if field.default is not dataclasses.MISSING else (
                    field.default_factory() if field.default_factory is not dataclasses.MISSING else None
                )
            )
            if field.name in parts:
                walk(parts[field.name], (*prefix, field.name), default)
                continue
            if field.name in skip or (seen is not None and field.name in seen):
                continue
            advanced = "advanced: " if common_group is not None else ""
            if common_group is not None and field.name in common:
                group = common_group
            else:
                if prefix not in groups:
                    if prefix:
                        groups[prefix] = parser.add_argument_group(
                            advanced + _part_title(part_cls), f"part `{'.'.join(prefix)}` of {cls.__name__}"
                        )
                    else:
                        groups[prefix] = parser.add_argument_group(f"{advanced}{cls.__name__} options")
                group = groups[prefix]
            flags = [f"--{field.name.replace('_', '-')}"] + list((aliases or {}).get(field.name, []))
            help_text = field.metadata.get("help", comments.get(field.name, ""))
            group.add_argument(
                *flags,
                dest=field.name,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default!r})".strip(),
                **_argument_spec(hints[field.name]),
            )
            if seen is not None:
                seen.add(field.name)

    walk(cls, (), defaults)


def given_options(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The leaf fields of ``cls`` given on the command line, by flat leaf name (the others are absent:
    defaults apply); ``merge_config`` routes them into the parts."""
    from loftr_sfm.utils import config_leaves

    names = config_leaves(cls)
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build the config from the flags given on the command line (others keep their defaults)."""
    from loftr_sfm.utils import merge_config

    return merge_config(cls, **given_options(cls, args))


# --------------------------------------------------------------------------- subcommands

_DIR_ARGS = {"output", "images"}


MAIN_GROUP = "main options (every other option has a default)"


def _short_usage(group: argparse._ArgumentGroup) -> str:
    """A usage line naming only the options of ``group`` (the main ones), then ``[advanced options]``."""
    parts = []
    for a in group._group_actions:
        arg = "{" + ",".join(map(str, a.choices)) + "}" if a.choices else (a.metavar or a.dest.upper())
        arg = f"[{arg}]" if a.nargs == "?" else arg
        text = f"{a.option_strings[-1]} {arg}"
        parts.append(text if a.required else f"[{text}]")
    lines = ["%(prog)s"]
    for part in [*parts, "[advanced options]"]:  # wrapped at ~100 columns, never inside an option
        if len(lines[-1]) + 1 + len(part) > 100:
            lines.append("   ")
        lines[-1] += " " + part
    return "\n".join(lines)


def _add_stage(sub, name: str, help_text: str, needs_images: bool) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    main = p.add_argument_group(MAIN_GROUP)
    main.add_argument("--output", type=Path, required=True, help="output directory shared by all stages")
    main.add_argument("--images", type=Path, required=needs_images, default=None, help="folder of the photos")
    module, cls_name, aliases = STAGE_CONFIGS[name]
    add_config_arguments(p, _config_class(name), aliases, skip=_DIR_ARGS, common=COMMON_OPTIONS[name],
                         common_group=main)
    p.usage = _short_usage(main)
    p.set_defaults(_stage=name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-sfm",
        description="Structure-from-Motion and localization with the EfficientLoFTR semi-dense matcher.",
    )
    parser.add_argument("-v", action="count", default=0, dest="_verbosity", help="more logging (-vv: debug)")
    parser.add_argument("-q", action="store_const", const=-1, dest="_verbosity",
                        help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("reconstruct", help="all stages: photos -> COLMAP model (+ report.html)",
                       description="All stages: photos -> COLMAP model, summary.json and report.html.")
    main = p.add_argument_group(MAIN_GROUP)
    main.add_argument("--images", type=Path, required=True, help="folder of the photos")
    main.add_argument("--output", type=Path, required=True, help="output directory")
    seen: set[str] = set()
    for stage in ("pairs", "match", "keypoints", "database", "map"):
        _, _, aliases = STAGE_CONFIGS[stage]
        add_config_arguments(p, _config_class(stage), aliases, skip=_DIR_ARGS, seen=seen,
                             common=COMMON_OPTIONS[stage], common_group=main)
    main.add_argument("--report", type=_parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                      help="write OUTPUT/report.html at the end (default: true)")
    p.usage = _short_usage(main)
    p.add_argument("--bridge-weak-links", type=_parse_bool, nargs="?", const=True, default=None,
                   help=argparse.SUPPRESS)  # deprecated, no effect: loop closure is on by default

    _add_stage(sub, "pairs", "select image pairs -> pairs.txt", True)
    _add_stage(sub, "match", "match the pairs -> matches.h5 (raw, per pair)", True)
    _add_stage(sub, "keypoints", "merge semi-dense matches into shared keypoints -> features.h5 + merged_matches.h5", False)
    _add_stage(sub, "database", "write the COLMAP database and verify geometry -> database.db", True)
    _add_stage(sub, "map", "incremental or global mapping -> model/, points.ply, summary.json", True)

    p = sub.add_parser("localize", help="localize new photos against a map -> poses.txt (+ localize_report.html)")
    main = p.add_argument_group(MAIN_GROUP)
    main.add_argument("--map", type=Path, required=True, dest="map_dir", help="output directory of `reconstruct`")
    main.add_argument("--images", type=Path, required=True, help="the map's photo folder")
    main.add_argument("--queries", type=Path, required=True, help="folder of the photos to localize")
    main.add_argument("--output", type=Path, required=True, help="poses file to write (poses.txt)")
    add_config_arguments(p, _config_class("localize"), STAGE_CONFIGS["localize"][2],
                         skip={"output", "images", "queries", "map_dir"}, common=COMMON_OPTIONS["localize"],
                         common_group=main)
    p.usage = _short_usage(main)

    p = sub.add_parser("match-pair", help="match two photos and draw the matches")
    p.add_argument("image0", type=Path)
    p.add_argument("image1", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG with the matches drawn")
    p.add_argument("--weights", default="zju-community/efficientloftr", help="hub id, directory or checkpoint file")
    p.add_argument("--max-side", type=int, default=1024, help="resize so the longer side is at most this (sides rounded to multiples of 32)")
    p.add_argument("--threshold", type=float, default=None, help="coarse matching threshold")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("convert", help="convert the original eloftr_outdoor.ckpt to the Transformers layout")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output_dir", type=Path)
    from loftr_sfm.report.command import add_report_parser

    add_report_parser(sub)
    from loftr_sfm.model.onnx_cli import add_export_onnx_parser

    add_export_onnx_parser(sub)
    for sp in sub.choices.values():  # -q / -v also after the subcommand
        sp.add_argument("-v", action="count", default=argparse.SUPPRESS, dest="_verbosity", help=argparse.SUPPRESS)
        sp.add_argument("-q", action="store_const", const=-1, default=argparse.SUPPRESS, dest="_verbosity",
                        help="warnings and errors only, no progress bars")
    return parser


def _setup_logging(verbosity: int) -> None:
    from loftr_sfm.utils import set_progress

    level = logging.WARNING if verbosity < 0 else (logging.INFO if verbosity <= 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    set_progress(verbosity >= 0)  # -q: no progress bars either


def run(argv: list[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    _setup_logging(args._verbosity)
    cmd = args.command
    if cmd == "reconstruct":
        from loftr_sfm.stages import reconstruct

        if args.bridge_weak_links is not None:
            logger.warning("--bridge-weak-links has no effect any more: sequential pairs get loop-closure pairs from "
                           "the start (--loop-closure, on by default)")
        configs = {stage: given_options(_config_class(stage), args) for stage in ("pairs", "match", "keypoints", "database", "map")}
        return reconstruct(
            args.images, args.output,
            pairs=configs["pairs"], matching=configs["match"], keypoints=configs["keypoints"],
            database=configs["database"], mapping=configs["map"], report=args.report,
        )
    if cmd in ("pairs", "match", "keypoints", "database", "map"):
        module, cls_name, _ = STAGE_CONFIGS[cmd]
        fn_name = {"pairs": "run_pairs", "match": "run_matching", "keypoints": "run_keypoints",
                   "database": "run_database", "map": "run_mapping"}[cmd]
        fn = getattr(importlib.import_module(module), fn_name)
        from loftr_sfm.workspace import output_lock

        with output_lock(args.output):
            return fn(args.output, args.images, config_from_args(_config_class(cmd), args))
    if cmd == "localize":
        from loftr_sfm.localization import localize

        return localize(args.map_dir, args.images, args.queries, args.output, config_from_args(_config_class("localize"), args))
    if cmd == "export-onnx":
        from loftr_sfm.model.onnx_cli import run_export_onnx_command

        return run_export_onnx_command(args)
    if cmd == "report":
        from loftr_sfm.report.command import run_report_command

        return run_report_command(args)
    if cmd == "match-pair":
        from loftr_sfm.model.api import match_pair, visualize_pair

        result = match_pair(args.image0, args.image1, weights=args.weights, max_side=args.max_side,
                            threshold=args.threshold, device=args.device)
        print(f"{len(result['matching_scores'])} matches between {args.image0} and {args.image1}")
        if args.out is not None:
            visualize_pair(args.image0, args.image1, result, args.out)
            print(f"wrote {args.out}")
        return result
    if cmd == "convert":
        from loftr_sfm.model.weights import convert_original_checkpoint

        convert_original_checkpoint(args.checkpoint, args.output_dir)
        print(f"wrote {args.output_dir}")
        return args.output_dir
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    from loftr_sfm.io import ImageReadError, InputError, disk_full_error, is_disk_full

    try:
        result = run(argv)
    except (InputError, ImageReadError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    except ValueError as e:  # invalid option values (unknown mapper, typo in an options string, ...)
        logger.error("%s", e)
        logger.debug("traceback", exc_info=True)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: finished work is kept; rerun the same command to resume")
        return 130
    except OSError as e:  # unwritable or full output, a file where a folder is expected, ...
        where = e.filename if e.filename is not None else "a file of the run"
        if is_disk_full(e):
            logger.error("%s", disk_full_error(where))
        else:
            logger.error("cannot use %s: %s (finished files are left as they were)", where, e.strerror or e)
        logger.debug("traceback", exc_info=True)
        return 2
    failure = job_failure(result)
    if failure:
        logger.error("%s", failure)
        return 1
    return 0


def job_failure(result: Any) -> str | None:
    """One sentence when a finished command produced nothing usable (exit code 1), else None.

    A mapping summary without a model (``registered`` 0), or a localization that placed no query.
    """
    if isinstance(result, dict) and "registered" in result and "num_images" in result and not result["registered"]:
        n = result["num_images"]
        if n < 2:
            return f"no model: {n} image(s) in the database; mapping needs at least 2 overlapping images"
        return (f"no model: none of the {n} images could be mapped (too few verified pairs; try more pairs, "
                "e.g. --pairs exhaustive or retrieval, or more overlapping photos)")
    if isinstance(result, list) and result and all(hasattr(r, "success") for r in result):
        if not any(r.success for r in result):
            return f"no query localized (0 of {len(result)}): see localize_log.json for each query's reason"
    return None


if __name__ == "__main__":
    sys.exit(main())
