"""merge_config on flat and nested (stage with parts) dataclass configs: routing, strictness, round trips."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field

import pytest

from loftr_sfm.utils import changed_options, config_leaves, config_parts, merge_config


@dataclass
class Flat:
    a: int = 1
    b: str = "x"
    items: list = field(default_factory=list)


@dataclass
class Intrinsics:
    focal: float = 1.0


@dataclass
class Cams:
    """Camera options."""

    share: bool = True
    model: str = "SIMPLE_RADIAL"
    intrinsics: Intrinsics = field(default_factory=Intrinsics)


@dataclass
class Bundle:
    iterations: int = 100
    refine_focal: bool = True


@dataclass
class Cfg:
    mapper: str = "incremental"
    cameras: Cams = field(default_factory=Cams)
    bundle: Bundle = field(default_factory=lambda: Bundle(iterations=50))


@dataclass
class Ambiguous:
    first: Bundle = field(default_factory=Bundle)
    second: Bundle = field(default_factory=Bundle)
    name: str = "n"


@dataclass
class Colliding:
    iterations: int = 3
    bundle: Bundle = field(default_factory=Bundle)


@dataclass
class ExtCams(Cams):
    extra: int = 0


# --------------------------------------------------------------------------- flat configs (unchanged)


def test_flat_config_defaults_base_and_overrides():
    assert merge_config(Flat) == Flat()
    assert merge_config(Flat, {"a": 2}) == Flat(a=2)
    base = Flat(a=5, items=[1])
    merged = merge_config(Flat, base, b="y")
    assert merged == Flat(a=5, b="y", items=[1])
    assert merged.items is not base.items  # a copy, as before
    assert base == Flat(a=5, items=[1])


def test_flat_config_unknown_keys_message():
    with pytest.raises(ValueError) as e:
        merge_config(Flat, {"c": 1}, d=2)
    assert str(e.value) == "unknown Flat option(s) ['c', 'd']; valid options: ['a', 'b', 'items']"
    with pytest.raises(TypeError, match="expected Flat, a dict or None, got int"):
        merge_config(Flat, 3)
    with pytest.raises(TypeError, match="is not a dataclass"):
        merge_config(dict)


# --------------------------------------------------------------------------- nested configs


def test_parts_and_leaves():
    assert config_parts(Cfg) == {"cameras": Cams, "bundle": Bundle}
    assert config_parts(Flat) == {}
    assert config_leaves(Cfg) == {
        "mapper": ("mapper",),
        "share": ("cameras", "share"),
        "model": ("cameras", "model"),
        "focal": ("cameras", "intrinsics", "focal"),
        "iterations": ("bundle", "iterations"),
        "refine_focal": ("bundle", "refine_focal"),
    }
    assert config_leaves(Flat) == {"a": ("a",), "b": ("b",), "items": ("items",)}


def test_defaults_keep_the_field_default_of_a_part():
    cfg = merge_config(Cfg)
    assert cfg == Cfg()
    assert cfg.bundle.iterations == 50  # from the default_factory, not Bundle()
    # a dict merges onto the field's default, not onto the part class's defaults
    assert merge_config(Cfg, {"bundle": {"refine_focal": False}}).bundle == Bundle(iterations=50, refine_focal=False)
    # None: the default
    assert merge_config(Cfg, {"bundle": None}).bundle == Bundle(iterations=50)
    assert merge_config(Cfg, Cfg(bundle=Bundle(iterations=7)), bundle=None).bundle == Bundle(iterations=50)


def test_flat_keys_are_routed_into_the_parts():
    expected = Cfg(cameras=Cams(share=False))
    assert merge_config(Cfg, share=False) == expected
    assert merge_config(Cfg, {"share": False}) == expected
    assert merge_config(Cfg, {"cameras": {"share": False}}) == expected
    # any depth, and several parts at once, alongside top-level fields
    cfg = merge_config(Cfg, mapper="global", focal=2.5, iterations=9, model="PINHOLE")
    assert cfg == Cfg(
        mapper="global",
        cameras=Cams(model="PINHOLE", intrinsics=Intrinsics(focal=2.5)),
        bundle=Bundle(iterations=9),
    )
    # a field of a part that is itself a part is routed too
    assert merge_config(Cfg, intrinsics={"focal": 3.0}).cameras.intrinsics == Intrinsics(focal=3.0)
    # a nested dict may itself use flat keys of deeper parts
    assert merge_config(Cfg, cameras={"focal": 4.0}).cameras.intrinsics.focal == 4.0


def test_instance_base_and_overrides_on_top():
    base = Cfg(mapper="global", cameras=Cams(share=False, model="PINHOLE"))
    assert merge_config(Cfg, base) == base
    assert merge_config(Cfg, base) is not base
    merged = merge_config(Cfg, base, share=True)
    assert merged == Cfg(mapper="global", cameras=Cams(share=True, model="PINHOLE"))
    assert base.cameras.share is False  # the base is not modified
    assert merge_config(Cfg, base, cameras={"model": "OPENCV"}).cameras == Cams(share=False, model="OPENCV")
    # an instance for a part replaces it (a copy); later flat keys apply on top
    part = Cams(model="FOV")
    merged = merge_config(Cfg, {"cameras": part, "share": False})
    assert merged.cameras == Cams(model="FOV", share=False)
    assert merged.cameras is not part and part.share is True
    # overrides beat the base in flat and in nested form
    assert merge_config(Cfg, {"share": False}, cameras={"share": True}).cameras.share is True
    assert merge_config(Cfg, {"cameras": {"share": False}}, share=True).cameras.share is True
    # a subclass instance of a part stays one
    merged = merge_config(Cfg, cameras=ExtCams(extra=3), share=False)
    assert type(merged.cameras) is ExtCams and merged.cameras.extra == 3 and merged.cameras.share is False


def test_round_trip_through_asdict():
    cfg = Cfg(mapper="global", cameras=Cams(share=False, intrinsics=Intrinsics(focal=7.0)), bundle=Bundle(1, False))
    assert merge_config(Cfg, dataclasses.asdict(cfg)) == cfg
    assert merge_config(Cfg, dataclasses.asdict(Cfg())) == Cfg()


def test_unknown_keys_list_the_valid_names():
    with pytest.raises(ValueError) as e:
        merge_config(Cfg, {"shar": False}, mappr="x")
    msg = str(e.value)
    assert msg.startswith("unknown Cfg option(s) ['mappr', 'shar']; valid options: [")
    valid = ast.literal_eval(msg.split("valid options: ")[1])
    assert set(config_leaves(Cfg)) <= set(valid)
    assert {"mapper", "cameras", "bundle", "intrinsics"} <= set(valid)
    # strict inside parts as well
    with pytest.raises(ValueError, match=r"unknown Cams option\(s\) \['shar'\]"):
        merge_config(Cfg, {"cameras": {"shar": False}})
    with pytest.raises(ValueError, match=r"unknown Intrinsics option\(s\) \['f'\]; valid options: \['focal'\]"):
        merge_config(Cfg, cameras={"intrinsics": {"f": 1.0}})
    with pytest.raises(TypeError, match=r"Cfg.cameras: expected Cams, a dict or None, got int"):
        merge_config(Cfg, cameras=3)


def test_ambiguous_leaf_names_fail_naming_both_paths():
    with pytest.raises(ValueError) as e:
        merge_config(Ambiguous, iterations=3)
    assert "ambiguous Ambiguous option 'iterations'" in str(e.value)
    assert "first.iterations" in str(e.value) and "second.iterations" in str(e.value)
    # the nested form is fine, and so are the unambiguous names
    cfg = merge_config(Ambiguous, {"first": {"iterations": 3}}, name="m")
    assert cfg == Ambiguous(first=Bundle(iterations=3), name="m")
    with pytest.raises(ValueError, match="ambiguous"):
        config_leaves(Ambiguous)


def test_a_top_level_field_colliding_with_a_part_leaf_is_a_type_error():
    with pytest.raises(TypeError, match=r"Colliding.*'iterations'.*bundle.iterations"):
        merge_config(Colliding)
    with pytest.raises(TypeError, match="collide"):
        config_leaves(Colliding)


def test_changed_options_leave_out_defaults_and_keep_what_the_defaults_lack():
    default = {"a": 1, "part": {"x": 0, "y": "m"}, "overwrite": False}
    assert changed_options({"a": 1, "part": {"x": 0, "y": "m"}}, default) == {}
    assert changed_options({"a": 2, "part": {"x": 0, "y": "n"}, "overwrite": True}, default, ignore=("overwrite",)) \
        == {"a": 2, "part": {"y": "n"}}
    # an old record lacking an option added since compares equal to a new one holding its default
    assert changed_options({"a": 1}, default) == changed_options(default, default) == {}
    # an option the defaults no longer have is a change
    assert changed_options({"a": 1, "gone": 3}, default) == {"gone": 3}
