"""Tests of the CLI: flags generated from the stage configs, aliases, clear errors on bad input."""

from __future__ import annotations

import dataclasses

import pytest

from loftr_sfm import cli


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
        for f in dataclasses.fields(cli._config_class(stage)):
            if f.name in ("output", "images", "queries", "map_dir"):
                continue
            assert f.name in dests, f"{stage}: no flag for {f.name}"


def test_reconstruct_passes_only_given_options(monkeypatch, tmp_path):
    seen = {}

    def fake_reconstruct(images, output, **configs):
        seen.update(configs, images=images, output=output)

    import loftr_sfm.pipeline

    monkeypatch.setattr(loftr_sfm.pipeline, "reconstruct", fake_reconstruct)
    cli.run(["reconstruct", "--images", str(tmp_path), "--output", str(tmp_path / "o"), "--matcher", "sift",
             "--pairs", "exhaustive", "--mapper", "global", "--verify", "false"])
    assert seen["matching"] == {"matcher": "sift"}
    assert seen["pairs"] == {"method": "exhaustive"}
    assert seen["mapping"] == {"mapper": "global"}
    assert seen["database"] == {"verify": False}
    assert seen["keypoints"] == {}
    assert seen["repair"] is True
    cli.run(["reconstruct", "--images", str(tmp_path), "--output", str(tmp_path / "o"), "--repair", "false"])
    assert seen["repair"] is False


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
    code = cli.main(["map", "--images", str(tmp_path), "--output", str(out), "--refine-tracks", "maybe"])
    assert code == 2 and "unknown refine_tracks 'maybe'" in caplog.text


def test_map_passes_a_start_model(monkeypatch, tmp_path, caplog):
    seen = {}

    import loftr_sfm.reconstruction

    monkeypatch.setattr(loftr_sfm.reconstruction, "run_mapping",
                        lambda output, images, cfg, **kw: seen.update(kw, mapper=cfg.mapper))
    cli.run(["map", "--images", str(tmp_path), "--output", str(tmp_path), "--start-model", str(tmp_path / "old")])
    assert seen == {"start": tmp_path / "old", "mapper": "incremental"}
    seen.clear()
    cli.run(["map", "--images", str(tmp_path), "--output", str(tmp_path), "--mapper", "global"])
    assert seen == {"mapper": "global"}
    monkeypatch.undo()
    out = tmp_path / "out"
    out.mkdir()
    (out / "database.db").write_bytes(b"")
    assert cli.main(["map", "--images", str(tmp_path), "--output", str(out), "--start-model", str(tmp_path)]) == 2
    assert f"{out / 'database.db'} is not a COLMAP database" in caplog.text  # (a bad start: test_reconstruction)
