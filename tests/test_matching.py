"""Matching stage: exact h5 layout, resume, simulated kill, bad images, bucketing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from loftr_sfm.io import InputError, names_to_pair, read_raw_matches, write_pairs
from loftr_sfm.matchers import InputSpec, MatcherBackend, PairMatches, to_original_pixels
from loftr_sfm.matching import MatchesWriter, bucket_batches, match_pairs, run_matching

TESTS = Path(__file__).resolve().parent


class FakeMatcher(MatcherBackend):
    """Deterministic matches that encode the pair: k0 = centres of the resized image's corners,
    mapped to the original frame; k1 likewise; scores = (index of pair call) / 1000."""

    name = "fake"
    supports_batching = True

    def __init__(self, max_side=64, sleep=0.0, device="cpu"):
        super().__init__(device)
        self.spec = InputSpec(grayscale=True, max_side=max_side, multiple=8)
        self.sleep = sleep
        self.calls: list[tuple[str, str]] = []
        self.batches: list[int] = []

    def match(self, image0, image1, size0, size1, names0=None, names1=None):
        assert image0.ndim == 4 and image0.shape[1] == 1 and float(image0.max()) <= 1.0
        self.batches.append(len(image0))
        out = []
        for b in range(len(image0)):
            h0, w0 = image0.shape[-2:]
            h1, w1 = image1.shape[-2:]
            n = 3 + len(names0[b]) % 3  # pair-dependent count
            k0 = np.stack([np.linspace(0, w0 - 1, n), np.linspace(0, h0 - 1, n)], 1)
            k1 = np.stack([np.linspace(w1 - 1, 0, n), np.linspace(0, h1 - 1, n)], 1)
            out.append(
                PairMatches(
                    to_original_pixels(k0, (w0, h0), size0[b].tolist()),
                    to_original_pixels(k1, (w1, h1), size1[b].tolist()),
                    np.full(n, 0.5, np.float32),
                )
            )
            self.calls.append((names0[b], names1[b]))
        if self.sleep:
            time.sleep(self.sleep)
        return out


def _make_images(root: Path, n: int = 6, portrait: tuple[int, ...] = ()) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"sub/img{i}.png" if i % 2 else f"img{i}.jpg"
        size = (60, 90) if i in portrait else (90, 60)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def _all_pairs(names):
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def test_exact_layout_and_original_pixels(tmp_path):
    images = tmp_path / "images"
    names = _make_images(images, 4, portrait=(3,))
    pairs = _all_pairs(names)
    out = tmp_path / "out"
    write_pairs(out / "pairs.txt", pairs)
    fake = FakeMatcher(max_side=48)
    stats = match_pairs(pairs, images, out / "matches.h5", {"num_workers": 0, "batch_size": 2}, matcher=fake)
    assert stats.num_matched == len(pairs) == 6 and stats.num_failed == 0
    with h5py.File(out / "matches.h5", "r") as f:
        groups = []
        f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) and "keypoints0" in o else None)
        assert sorted(groups) == sorted(names_to_pair(a, b) for a, b in pairs)
        assert all("/" not in g.split("/")[0] for g in groups)  # '/' inside names became '-'
        for a, b in pairs:
            g = f[names_to_pair(a, b)]
            assert set(g.keys()) == {"keypoints0", "keypoints1", "scores"}
            n = 3 + len(a) % 3
            assert g["keypoints0"].shape == (n, 2) and g["keypoints0"].dtype == np.float32
            assert g["keypoints1"].shape == (n, 2) and g["keypoints1"].dtype == np.float32
            assert g["scores"].shape == (n,) and g["scores"].dtype == np.float32
            # corner pixel centres of the resized image map to within the original image, and the
            # first/last keypoints to the original's corner regions (original pixels, not resized)
            w0, h0 = Image.open(images / a).size
            k0 = g["keypoints0"][:]
            assert -0.5 <= k0.min() and k0[-1, 0] <= w0 - 0.5 and k0[-1, 1] <= h0 - 0.5
            assert k0[-1, 0] > w0 - 3 and k0[-1, 1] > h0 - 3 and k0[0].max() < 2
    # same-size pairs were batched together (4 landscape-landscape... sizes differ for portrait img3)
    assert max(fake.batches) == 2


def test_resume_skips_done_pairs(tmp_path):
    images = tmp_path / "images"
    names = _make_images(images, 6)
    pairs = _all_pairs(names)
    path = tmp_path / "m.h5"
    fake = FakeMatcher()
    match_pairs(pairs[:7], images, path, {"num_workers": 0}, matcher=fake)
    assert len(fake.calls) == 7
    with h5py.File(path) as f:
        before = read_raw_matches(f, *pairs[0])
    fake.calls.clear()
    stats = match_pairs([(b, a) for a, b in pairs], images, path, {"num_workers": 0}, matcher=fake)  # reversed order
    assert stats.num_done_before == 7 and len(fake.calls) == len(pairs) - 7
    assert {frozenset(c) for c in fake.calls} == {frozenset(p) for p in pairs[7:]}
    fake.calls.clear()
    assert match_pairs(pairs, images, path, {"num_workers": 0}, matcher=fake).num_matched == 0
    assert fake.calls == []
    with h5py.File(path) as f:
        np.testing.assert_array_equal(read_raw_matches(f, *pairs[0])[0], before[0])  # untouched
    fake.calls.clear()
    match_pairs(pairs[:2], images, path, {"num_workers": 0, "overwrite": True}, matcher=fake)
    assert len(fake.calls) == 2


def test_worker_processes_and_stage_entry(tmp_path, monkeypatch):
    images = tmp_path / "images"
    names = _make_images(images, 5)
    out = tmp_path / "out"
    write_pairs(out / "pairs.txt", _all_pairs(names))
    fake = FakeMatcher()
    monkeypatch.setattr("loftr_sfm.matching.build_backend", lambda config: fake)
    path = run_matching(out, images, {"num_workers": 2, "batch_size": 3})
    assert path == out / "matches.h5" and len(fake.calls) == 10
    with h5py.File(path) as f:
        assert f.attrs["matcher"] == "fake"  # the backend that made them (read by the keypoints preset "auto")
        for a, b in _all_pairs(names):
            k0, k1, sc = read_raw_matches(f, a, b)
            assert len(k0) == len(k1) == len(sc) > 0
    assert not (out / ".matches.h5.journal").exists()  # merged and cleaned up


def test_stage_input_errors(tmp_path):
    images = tmp_path / "images"
    _make_images(images, 3)
    with pytest.raises(InputError, match="does not exist"):
        run_matching(tmp_path / "out", images, {"matcher": "sift"})
    write_pairs(tmp_path / "out" / "pairs.txt", [("img0.jpg", "ghost.jpg")])
    with pytest.raises(InputError, match="ghost.jpg"):
        run_matching(tmp_path / "out", images, {"matcher": "sift"})


def test_unreadable_images_are_reported_and_skipped(tmp_path, caplog):
    images = tmp_path / "images"
    names = _make_images(images, 4)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (images / "truncated.png").write_bytes((images / "sub/img1.png").read_bytes()[:200])
    names += ["broken.jpg", "truncated.png"]
    pairs = _all_pairs(names)
    fake = FakeMatcher()
    stats = match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert set(stats.failed_images) == {"broken.jpg", "truncated.png"}
    good = [p for p in pairs if "broken.jpg" not in p and "truncated.png" not in p]
    assert stats.num_matched == len(good) == 6 and stats.num_failed == len(pairs) - 6
    assert "broken.jpg" in caplog.text and "truncated.png" in caplog.text
    with h5py.File(tmp_path / "m.h5") as f:
        for a, b in good:
            read_raw_matches(f, a, b)


def test_images_below_the_backends_minimum_are_skipped_by_name(tmp_path, caplog):
    images = tmp_path / "images"
    names = _make_images(images, 3)
    Image.fromarray(np.zeros((15, 20, 3), np.uint8)).save(images / "tiny.png")  # 20x15 px
    pairs = _all_pairs(names + ["tiny.png"])
    fake = FakeMatcher()
    fake.spec = InputSpec(grayscale=True, max_side=64, multiple=8, min_side=32)
    stats = match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert stats.failed_images == ["tiny.png"] and stats.num_matched == 3 and stats.num_failed == 3
    assert "tiny.png" in caplog.text and "20x15 px is smaller than the fake backend's minimum of 32 px" in caplog.text
    assert all("tiny.png" not in p for p in fake.calls)
    from loftr_sfm.matching import build_backend

    assert build_backend({"matcher": "xfeat-star", "device": "cpu"}).spec.min_side == 64  # xfeat fails below


def test_a_replaced_photo_has_its_pairs_matched_again(tmp_path):
    images = tmp_path / "images"
    names = _make_images(images, 4)
    pairs = _all_pairs(names)
    fake = FakeMatcher()
    match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert len(fake.calls) == 6
    fake.calls.clear()
    match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert fake.calls == []  # unchanged: nothing matched again
    replaced = names[2]
    time.sleep(0.01)
    Image.fromarray(np.full((60, 90, 3), 7, np.uint8)).save(images / replaced)  # same name, new content
    stats = match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert sorted(fake.calls) == sorted(p for p in pairs if replaced in p) and stats.num_matched == 3
    fake.calls.clear()
    match_pairs(pairs, images, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert fake.calls == []
    # the folder copied without its modification times (cp, a sync tool): the same photos, nothing matched again
    copy = tmp_path / "copy"
    shutil.copytree(images, copy, copy_function=shutil.copyfile)
    assert (copy / replaced).stat().st_mtime_ns != (images / replaced).stat().st_mtime_ns
    stats = match_pairs(pairs, copy, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert fake.calls == [] and stats.num_done_before == 6
    # ... and a photo of the same size with new content still is matched again
    other = names[0]
    data = bytearray((copy / other).read_bytes())
    data[-3] ^= 0xFF
    (copy / other).write_bytes(bytes(data))
    match_pairs(pairs, copy, tmp_path / "m.h5", {"num_workers": 0}, matcher=fake)
    assert sorted(fake.calls) == sorted(p for p in pairs if other in p)


def test_bucket_batches():
    keys = ["a", "b", "a", "a", "b", "c", "a"]
    batches = bucket_batches(keys, 2)
    assert batches == [[0, 2], [3, 6], [1, 4], [5]]
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_matching import FakeMatcher, _all_pairs
from loftr_sfm.matching import match_pairs
names = {names!r}
match_pairs(_all_pairs(names), {images!r}, {path!r},
            {{"num_workers": 0, "batch_size": 1, "merge_interval": 0.0}}, matcher=FakeMatcher(sleep=0.15))
print("FINISHED")
"""


def test_simulated_kill_leaves_readable_file_and_resumes(tmp_path):
    """SIGKILL a matching run mid-way (merges after every batch, so the kill may hit a merge):
    matches.h5 stays a readable HDF5 file, the rerun matches only what is missing and the final
    file holds every pair exactly as an uninterrupted run."""
    images = tmp_path / "images"
    names = _make_images(images, 8)
    pairs = _all_pairs(names)  # 28 pairs, ~0.15 s each
    path = tmp_path / "out" / "matches.h5"
    script = _KILL_SCRIPT.format(tests=str(TESTS), names=names, images=str(images), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    writer = MatchesWriter(path)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(writer.existing_keys()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert b"FINISHED" not in proc.stdout.read()

    with h5py.File(path, "r") as f:  # readable after the kill
        f.visit(lambda n: None)
    done = len(writer.existing_keys())
    assert 6 <= done < len(pairs)

    fake = FakeMatcher()
    stats = match_pairs(pairs, images, path, {"num_workers": 0}, matcher=fake)
    assert stats.num_done_before == done and len(fake.calls) == len(pairs) - done

    ref = tmp_path / "ref.h5"
    match_pairs(pairs, images, ref, {"num_workers": 0}, matcher=FakeMatcher())
    with h5py.File(path) as f, h5py.File(ref) as g:
        for a, b in pairs:
            for x, y in zip(read_raw_matches(f, a, b), read_raw_matches(g, a, b)):
                np.testing.assert_array_equal(x, y)
    assert not writer.journal.exists()
    assert not list(path.parent.glob(".*.tmp"))  # temporaries of the killed run removed


def test_rerun_with_other_matcher_options_warns(tmp_path, monkeypatch, caplog):
    """Pairs already in matches.h5 are kept on a rerun; if they were made with other options, say so."""
    images = tmp_path / "images"
    names = _make_images(images, 3)
    out = tmp_path / "out"
    write_pairs(out / "pairs.txt", _all_pairs(names))
    monkeypatch.setattr("loftr_sfm.matching.build_backend", lambda config: FakeMatcher())
    run_matching(out, images, {"matcher": "fake", "num_workers": 0, "matcher_options": "max_ratio=0.85"})
    with h5py.File(out / "matches.h5") as f:
        assert json.loads(f.attrs["matcher_options"]) == {"max_ratio": 0.85}
    with caplog.at_level(logging.WARNING, logger="loftr_sfm.matching"):
        run_matching(out, images, {"matcher": "fake", "num_workers": 0, "matcher_options": "max_ratio=0.85"})
        assert not caplog.records  # same settings: nothing to say
        run_matching(out, images, {"matcher": "fake", "num_workers": 0})
    assert any("matcher_options" in r.getMessage() and "max_ratio" in r.getMessage() and "3 pairs" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
