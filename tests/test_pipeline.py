"""``reconstruct`` end to end, and its repair of images removed by the mapping check."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from loftr_sfm.io import find_pair, names_to_pair
from loftr_sfm.matchers import InputSpec, MatcherBackend, PairMatches, register_matcher
from loftr_sfm.pipeline import reconstruct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402

WEAK = "img_002.png"


@dataclass
class ServedOptions:
    source: str = ""  # raw matches file to serve
    weak: str | None = None  # this image's pairs keep only `keep` matches
    keep: int = 25
    chance: str = ""  # "a b;c d": these pairs get random matches (images that do not overlap)


class ServedMatcher(MatcherBackend):
    """Test double: serves a synthetic scene's exact raw matches; ``weak`` names an image whose pairs get
    only ``keep`` of them, so that it is registered on few points and removed by the mapping check.
    Its "stricter" repair options serve every match (the mechanics are what is tested here)."""

    name = "served"
    Options = ServedOptions
    calls: list[tuple[str, str]] = []

    def __init__(self, options: ServedOptions | None = None, device: str = "cpu") -> None:
        super().__init__(device)
        self.options = options or ServedOptions()
        self.spec = InputSpec(grayscale=True, max_side=None)

    @classmethod
    def repair_options(cls, options):
        return {**options, "weak": None} if options.get("weak") else None

    def match(self, image0, image1, size0, size1, names0=None, names1=None):
        out = []
        with h5py.File(self.options.source, "r") as f:
            for a, b in zip(names0, names1):
                key, rev = find_pair(f, a, b)
                k0, k1, sc = (f[key][d][()] for d in ("keypoints0", "keypoints1", "scores"))
                if rev:
                    k0, k1 = k1, k0
                if self.options.weak in (a, b):
                    k0, k1, sc = k0[: self.options.keep], k1[: self.options.keep], sc[: self.options.keep]
                chance = {tuple(sorted(p.split())) for p in self.options.chance.split(";") if p}
                if tuple(sorted((a, b))) in chance:
                    rng = np.random.default_rng(len(ServedMatcher.calls))
                    k1 = (rng.random(k1.shape) * np.asarray(size1[0], np.float32)).astype(np.float32)
                out.append(PairMatches(k0, k1, sc))
                ServedMatcher.calls.append((a, b))
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    register_matcher("served", ServedMatcher, overwrite=True)
    root = tmp_path_factory.mktemp("served")
    synthetic.generate(root, synthetic.SceneConfig(num_images=6, width=320, height=240, focal=280, arc_deg=50, seed=5))
    return root


def _run(served: Path, out: Path, repair: bool = True, **options) -> dict:
    opts = {"source": str(served / "matches.h5"), "weak": WEAK, **options}
    return reconstruct(served / "images", out, pairs={"method": "exhaustive"},
                       matching={"matcher": "served", "matcher_options": json.dumps(opts), "num_workers": 0},
                       mapping={"refine_tracks": "off", "retry_seeds": 0}, repair=repair)


def test_repair_matches_the_removed_images_pairs_again_and_keeps_the_better_model(served, tmp_path):
    ServedMatcher.calls.clear()
    before = _run(served, tmp_path / "off", repair=False)
    assert before["registered"] == 5 and before["dropped_images"] == [WEAK] and "repair" not in before
    assert not (tmp_path / "off" / "repair").exists()

    ServedMatcher.calls.clear()
    out = tmp_path / "on"
    s = _run(served, out)
    assert len(ServedMatcher.calls) == 15 + 5 and all(WEAK in p for p in ServedMatcher.calls[15:])  # its 5 pairs
    assert s["registered"] == 6 and s["dropped_images"] == []
    rep = s["repair"]
    assert rep["images"] == [WEAK] and rep["pairs"] == 5 and rep["registered_before"] == 5
    assert rep["registered_after"] == 6 and rep["matcher_options"]["weak"] is None
    # registered around the poses of the model it was removed from (no new mapping from scratch)
    assert {(a["mapper"], a["start_images"]) for a in s["attempts"]} == {("extend", 5)}
    assert sum(a["chosen"] for a in s["attempts"]) == 1
    # the repaired files are the output's now, and consistent
    assert json.loads((out / "summary.json").read_text())["repair"] == rep
    assert pycolmap.Reconstruction(str(out / "model")).num_reg_images() == 6
    with h5py.File(out / "matches.h5", "r") as f:
        assert json.loads(f.attrs["matcher_options"])["weak"] == WEAK  # the file keeps what made most pairs
        for a, b in (("img_000.png", WEAK), (WEAK, "img_005.png")):
            g = f[names_to_pair(a, b)]
            assert json.loads(g.attrs["matcher_options"])["weak"] is None and len(g["keypoints0"]) > 100
        assert "matcher_options" not in f[names_to_pair("img_000.png", "img_001.png")].attrs
    with h5py.File(out / "features.h5", "r") as f:
        assert len(f[WEAK]["keypoints"]) > 500
    # a rerun finds everything done: nothing matched, same model
    ServedMatcher.calls.clear()
    again = _run(served, out)
    assert ServedMatcher.calls == [] and again["repair"] == rep and again["registered"] == 6


def test_repair_keeps_the_model_when_the_stricter_matches_do_not_help(served, tmp_path):
    # stricter options that change nothing (keep stays 25): the repaired model is no better, the output stays
    ServedMatcher.calls.clear()
    original = ServedMatcher.repair_options
    ServedMatcher.repair_options = classmethod(lambda cls, o: {**o, "keep": 24})
    try:
        s = _run(served, tmp_path)
        assert len(ServedMatcher.calls) == 15 + 5
        ServedMatcher.calls.clear()
        again = _run(served, tmp_path)  # the repair folder is up to date: nothing matched again
        assert ServedMatcher.calls == [] and again["registered"] == 5
    finally:
        ServedMatcher.repair_options = original
    assert s["registered"] == 5 and s["dropped_images"] == [WEAK] and "repair" not in s
    assert "repair" not in json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "repair" / "summary.json").is_file()  # left for inspection
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        assert len(f[names_to_pair("img_000.png", WEAK)]["keypoints0"]) == 25


def test_repair_also_registers_an_image_the_mapper_left_out(served, tmp_path):
    """Too few matches to verify any of its pairs: never registered, not dropped; the repair matches it again."""
    before = _run(served, tmp_path / "off", repair=False, keep=8)
    assert before["registered"] == 5 and before["dropped_images"] == [] and before["unregistered_images"] == [WEAK]
    ServedMatcher.calls.clear()
    s = _run(served, tmp_path / "on", keep=8)
    assert len(ServedMatcher.calls) == 15 + 5 and all(WEAK in p for p in ServedMatcher.calls[15:])
    assert s["registered"] == 6 and s["unregistered_images"] == [] and s["repair"]["images"] == [WEAK]
    assert pycolmap.Reconstruction(str(tmp_path / "on" / "model")).num_reg_images() == 6


def test_sequential_pairs_with_a_weak_link_get_loop_closure(tmp_path):
    """A "video" whose sequential pairs across img_007 | img_008 are chance matches but one: the database stage
    finds the weak link, ``reconstruct`` selects the pairs again with loop closure, matches only the new pairs
    and records it; a rerun starts there; ``bridge_weak_links=False`` keeps the sequential pairs."""
    from loftr_sfm.io import read_pairs

    register_matcher("served", ServedMatcher, overwrite=True)
    root = tmp_path / "scene"
    synthetic.generate(root, synthetic.SceneConfig(num_images=16, width=320, height=240, focal=280, arc_deg=60, seed=6))
    across = [(f"img_{i:03d}.png", f"img_{j:03d}.png") for i in range(4, 8) for j in range(8, 12) if j - i <= 4]
    chance = [p for p in across if p != ("img_007.png", "img_008.png")]  # the one right pair left across
    opts = {"source": str(root / "matches.h5"), "chance": ";".join(f"{a} {b}" for a, b in chance)}

    def run(out, **kw):
        return reconstruct(root / "images", out, pairs={"method": "sequential", "num_neighbors": 4},
                           matching={"matcher": "served", "matcher_options": json.dumps(opts), "num_workers": 0},
                           mapping={"refine_tracks": "off", "retry_seeds": 0}, repair=False, **kw)

    sequential = sum(min(4, 15 - i) for i in range(16))  # 16 images, 4 neighbours: 54 pairs
    ServedMatcher.calls.clear()
    plain = run(tmp_path / "plain", bridge_weak_links=False)
    assert len(read_pairs(tmp_path / "plain" / "pairs.txt")) == len(ServedMatcher.calls) == sequential
    assert "bridged_weak_links" not in plain and not (tmp_path / "plain" / ".bridged_weak_links.json").exists()
    links = json.loads((tmp_path / "plain" / ".database.json").read_text())["stats"]["weak_links"]
    assert [(x["after"], x["verified_pairs"]) for x in links] == [("img_007.png", 1)]

    ServedMatcher.calls.clear()
    out = tmp_path / "bridged"
    s = run(out)
    pairs = read_pairs(out / "pairs.txt")
    assert len(pairs) > sequential and len(ServedMatcher.calls) == len(pairs)  # the new pairs matched once
    assert s["bridged_weak_links"] == links
    assert json.loads((out / ".bridged_weak_links.json").read_text()) == links
    assert json.loads((out / "summary.json").read_text())["bridged_weak_links"] == links
    assert s["registered"] == 16
    # the incremental mapper crosses the gap: one model of every image at the first attempt, where the
    # sequential pairs alone gave it two models and left the registration to the global fallback
    assert plain["attempts"][0]["mapper"] == "incremental" and plain["attempts"][0]["registered"] < 16
    assert [(a["mapper"], a["models"], a["registered"]) for a in s["attempts"]] == [("incremental", 1, 16)]
    ServedMatcher.calls.clear()
    again = run(out)  # starts with loop closure: nothing to match, the same pairs and model
    assert ServedMatcher.calls == [] and read_pairs(out / "pairs.txt") == pairs
    assert again["bridged_weak_links"] == links and again["registered"] == 16
