"""Tests of the CLI: flags generated from the stage configs, aliases, clear errors on bad input."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from loftr_sfm import cli
from loftr_sfm.utils import config_leaves


def test_stage_flags_map_to_config_fields():
    parser = cli.build_parser()
    args = parser.parse_args(["pairs", "--images", "im", "--output", "out", "--num-neighbors", "7", "--pairs", "sequential"])
    cfg = cli.config_from_args(cli._config_class("pairs"), args)
    assert cfg.num_neighbors == 7 and cfg.method == "sequential"
    # flags not given keep the dataclass defaults
    defaults = cli._config_class("pairs")()
    for f in dataclasses.fields(cfg):
        if f.name not in ("num_neighbors", "method"):
            assert getattr(cfg, f.name) == getattr(defaults, f.name)


def test_every_config_field_has_a_flag():
    parser = cli.build_parser()
    for stage in ("pairs", "match", "keypoints", "database", "map", "localize"):
        sub = parser._subparsers._group_actions[0].choices[stage]
        dests = {a.dest for a in sub._actions}
        for name in config_leaves(cli._config_class(stage)):  # leaf fields: nested configs too
            if name in ("output", "images", "queries", "map_dir"):
                continue
            assert name in dests, f"{stage}: no flag for {name}"


def test_reconstruct_passes_only_given_options(monkeypatch, tmp_path):
    seen = {}

    def fake_reconstruct(images, output, **configs):
        seen.update(configs, images=images, output=output)

    import loftr_sfm.stages

    monkeypatch.setattr(loftr_sfm.stages, "reconstruct", fake_reconstruct)
    cli.run(["reconstruct", "--images", str(tmp_path), "--output", str(tmp_path / "o"), "--matcher", "sift",
             "--pairs", "exhaustive", "--mapper", "global", "--verify", "false"])
    assert seen["matching"] == {"matcher": "sift"}
    assert seen["pairs"] == {"method": "exhaustive"}
    assert seen["mapping"] == {"mapper": "global"}
    assert seen["database"] == {"verify": False}
    assert seen["keypoints"] == {}
    assert "bridge_weak_links" not in seen
    seen.clear()
    cli.run(["reconstruct", "--images", str(tmp_path), "--output", str(tmp_path / "o"), "--pairs", "sequential",
             "--loop-closure", "false", "--share-cameras", "false", "--refine-tracks", "on"])
    assert seen["pairs"] == {"method": "sequential", "loop_closure": False}
    assert seen["mapping"] == {"share_cameras": False, "refine_tracks": "on"}  # flat leaves of the nested config


def test_the_deprecated_bridge_flag_is_accepted_with_a_warning(monkeypatch, tmp_path, caplog):
    """``--bridge-weak-links`` (gone: loop closure is on by default) still parses, says it has no effect and
    reaches nothing."""
    seen = {}

    def fake_reconstruct(images, output, **configs):
        seen.update(configs)

    import loftr_sfm.stages

    monkeypatch.setattr(loftr_sfm.stages, "reconstruct", fake_reconstruct)
    with caplog.at_level("WARNING", logger="loftr_sfm"):
        cli.run(["reconstruct", "--images", str(tmp_path), "--output", str(tmp_path / "o"), "--bridge-weak-links",
                 "false"])
    assert "--bridge-weak-links has no effect" in caplog.text and "bridge_weak_links" not in seen


def test_bool_parsing_rejects_garbage():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["database", "--images", "a", "--output", "b", "--verify", "maybe"])


def test_missing_inputs_give_clear_error_and_exit_code(tmp_path, caplog):
    code = cli.main(["pairs", "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "nope" in caplog.text and "does not exist" in caplog.text


def test_bad_option_values_give_clear_error_and_exit_code(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "database.db").write_bytes(b"")
    code = cli.main(["map", "--images", str(tmp_path), "--output", str(out), "--track-refinement", "min_ncx=0.9"])
    assert code == 2 and "unknown TrackRefinementConfig option(s) ['min_ncx']" in caplog.text
    code = cli.main(["map", "--images", str(tmp_path), "--output", str(out), "--min-registered", "1.5"])
    assert code == 2 and "min_registered must be in [0, 1]" in caplog.text
    with pytest.raises(SystemExit):  # a Literal choice: argparse names the valid ones
        cli.build_parser().parse_args(["map", "--images", "a", "--output", "b", "--refine-tracks", "maybe"])


def test_map_builds_the_nested_config_from_flat_flags(monkeypatch, tmp_path, caplog):
    seen = {}

    import loftr_sfm.sfm

    monkeypatch.setattr(loftr_sfm.sfm, "run_mapping", lambda output, images, cfg: seen.update(cfg=cfg))
    cli.run(["map", "--images", str(tmp_path), "--output", str(tmp_path), "--mapper", "global",
             "--share-cameras-tolerance", "0.05", "--relative-filter"])
    cfg = seen["cfg"]
    assert (cfg.mapper, cfg.cameras.share_cameras_tolerance, cfg.refinement.relative_filter) == ("global", 0.05, True)
    monkeypatch.undo()
    out = tmp_path / "out"
    out.mkdir()
    (out / "database.db").write_bytes(b"")
    assert cli.main(["map", "--images", str(tmp_path), "--output", str(out)]) == 2
    assert f"{out / 'database.db'} is not a COLMAP database" in caplog.text


@dataclass
class _CameraOptions:
    """How cameras are shared between images."""

    share: bool = True  # one camera for all images
    model: Literal["PINHOLE", "SIMPLE_RADIAL"] = "SIMPLE_RADIAL"


@dataclass
class _BundleOptions:
    max_iterations: int | None = None


@dataclass
class _NestedStage:
    mapper: Literal["incremental", "global"] = "incremental"
    cameras: _CameraOptions = field(default_factory=_CameraOptions)
    bundle: _BundleOptions = field(default_factory=_BundleOptions)


def test_nested_config_flags_and_groups(capsys):
    parser = argparse.ArgumentParser(prog="nested")
    cli.add_config_arguments(parser, _NestedStage)
    args = parser.parse_args(["--share", "false", "--mapper", "global"])
    assert cli.given_options(_NestedStage, args) == {"share": False, "mapper": "global"}
    cfg = cli.config_from_args(_NestedStage, args)
    assert cfg == _NestedStage(mapper="global", cameras=_CameraOptions(share=False))
    assert cli.config_from_args(_NestedStage, parser.parse_args(["--max-iterations", "5", "--model", "PINHOLE"])) == (
        _NestedStage(cameras=_CameraOptions(model="PINHOLE"), bundle=_BundleOptions(max_iterations=5))
    )
    assert cli.config_from_args(_NestedStage, parser.parse_args([])) == _NestedStage()
    with pytest.raises(SystemExit):  # Literal -> choices, inside a part too
        parser.parse_args(["--model", "FISHEYE"])
    capsys.readouterr()

    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    # one group per part: the docstring's first line, else "<ClassName> options"
    top, rest = text.split("\n_NestedStage options:\n")[1].split("\nHow cameras are shared between images:\n")
    cams, bundle = rest.split("\n_BundleOptions options:\n")
    assert "--mapper" in top and "--share" not in top and "--max-iterations" not in top
    assert "--share" in cams and "--model" in cams and "one camera for all images (default: True)" in cams
    assert "--mapper" not in cams and "--max-iterations" not in cams
    assert "--max-iterations" in bundle and "--share" not in bundle
    assert "--cameras" not in text and "--bundle" not in text


def test_nested_config_flags_dedup_across_stages():
    @dataclass
    class Other:
        share: bool = False
        mapper: str = "x"

    parser = argparse.ArgumentParser()
    seen: set[str] = set()
    cli.add_config_arguments(parser, Other, seen=seen)
    cli.add_config_arguments(parser, _NestedStage, seen=seen, skip={"model"})
    dests = [a.dest for a in parser._actions]
    assert dests.count("share") == 1 and dests.count("mapper") == 1
    assert "model" not in dests and "max_iterations" in dests
    args = parser.parse_args(["--share", "--max-iterations", "2"])
    assert cli.config_from_args(_NestedStage, args) == _NestedStage(
        cameras=_CameraOptions(share=True), bundle=_BundleOptions(max_iterations=2)
    )


def test_exit_code_says_whether_a_model_or_a_pose_was_made(monkeypatch, caplog):
    import loftr_sfm.stages
    from loftr_sfm.localization import QueryResult

    results = {}
    monkeypatch.setattr(loftr_sfm.stages, "reconstruct", lambda images, output, **kw: results["summary"])
    argv = ["reconstruct", "--images", "x", "--output", "y"]
    results["summary"] = {"num_images": 1, "registered": 0}
    assert cli.main(argv) == 1 and "at least 2 overlapping images" in caplog.text
    results["summary"] = {"num_images": 7, "registered": 0}
    assert cli.main(argv) == 1 and "none of the 7 images could be mapped" in caplog.text
    results["summary"] = {"num_images": 7, "registered": 2}
    assert cli.main(argv) == 0
    import loftr_sfm.localization

    monkeypatch.setattr(loftr_sfm.localization, "localize", lambda *a, **k: results["queries"])
    argv = ["localize", "--map", "m", "--images", "i", "--queries", "q", "--output", "p.txt"]
    results["queries"] = [QueryResult(name="a.jpg"), QueryResult(name="b.jpg")]
    assert cli.main(argv) == 1 and "no query localized (0 of 2)" in caplog.text
    results["queries"][1].success = True
    assert cli.main(argv) == 0


def test_unwritable_output_gives_one_message_naming_the_path(tmp_path, caplog):
    import os

    images = tmp_path / "images"
    images.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["pairs", "--images", str(images), "--output", str(afile)]) == 2
    assert str(afile) in caplog.text and "Traceback" not in caplog.text
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        caplog.clear()
        assert cli.main(["pairs", "--images", str(images), "--output", str(ro)]) == 2
        assert str(ro) in caplog.text
