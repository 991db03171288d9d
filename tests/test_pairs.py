"""Pairs stage: counts and properties of every generator, covisibility on a model with known tracks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import shared_scene

from loftr_sfm.io import InputError, read_pairs
from loftr_sfm.pairs import (
    PairsConfig,
    canonical_pairs,
    covisibility_counts,
    pairs_from_covisibility,
    pairs_from_exhaustive,
    pairs_from_retrieval,
    pairs_from_sequential,
    run_pairs,
)


def _check_properties(pairs, names):
    """No self-pair, no duplicate in either order, only known names, oriented by list position."""
    pos = {n: i for i, n in enumerate(names)}
    keys = [frozenset(p) for p in pairs]
    assert all(a != b for a, b in pairs)
    assert len(set(keys)) == len(keys)
    assert all(pos[a] < pos[b] for a, b in pairs)
    assert pairs == sorted(pairs, key=lambda p: (pos[p[0]], pos[p[1]]))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 30])
def test_exhaustive_counts(n):
    names = [f"img{i:03d}.jpg" for i in range(n)]
    pairs = pairs_from_exhaustive(names)
    assert len(pairs) == n * (n - 1) // 2
    _check_properties(pairs, names)
    assert set(map(frozenset, pairs)) == set(map(frozenset, itertools.combinations(names, 2)))


@pytest.mark.parametrize("n,k", [(17, 3), (10, 1), (5, 10), (30, 5)])
def test_sequential_counts(n, k):
    names = [f"f{i:04d}.png" for i in range(n)]
    pairs = pairs_from_sequential(names, k)
    assert len(pairs) == sum(min(k, n - 1 - i) for i in range(n))
    _check_properties(pairs, names)
    pos = {x: i for i, x in enumerate(names)}
    assert all(1 <= pos[b] - pos[a] <= k for a, b in pairs)


def test_sequential_quadratic_and_loop():
    names = [f"f{i:04d}.png" for i in range(17)]
    pairs = pairs_from_sequential(names, 3, quadratic=True)
    steps = {int(b[1:5]) - int(a[1:5]) for a, b in pairs}
    assert steps == {1, 2, 3, 4}  # window 1..3 plus 2^0, 2^1, 2^2
    assert len(pairs) == 16 + 15 + 14 + 13
    loop = [("f0016.png", "f0000.png"), ("f0000.png", "f0016.png"), ("f0001.png", "f0001.png"), ("f0000.png", "f0001.png")]
    with_loop = pairs_from_sequential(names, 3, quadratic=True, loop_pairs=loop)
    assert len(with_loop) == len(pairs) + 1  # one new pair; reversed duplicate, self-pair, existing pair dropped
    assert ("f0000.png", "f0016.png") in with_loop
    _check_properties(with_loop, names)


def test_canonical_pairs_rejects_unknown():
    with pytest.raises(InputError, match="not in the image list"):
        canonical_pairs([("a", "zzz")], ["a", "b"])


def test_retrieval_pairs_from_descriptors():
    rng = np.random.default_rng(0)
    # 4 clusters of 5 images: top-4 neighbours must be exactly the own cluster
    centers = rng.normal(size=(4, 32))
    desc = np.repeat(centers, 5, axis=0) + 0.05 * rng.normal(size=(20, 32))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    names = [f"c{i // 5}_{i % 5}.jpg" for i in range(20)]
    pairs = pairs_from_retrieval(names, desc.astype(np.float32), 4)
    _check_properties(pairs, names)
    assert len(pairs) == 4 * 10
    assert all(a[:2] == b[:2] for a, b in pairs)


def _model_with_tracks():
    """herzjesu-P8 GT cameras + synthetic 3D points projected into every image that sees them."""
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction(str(shared_scene("herzjesu-P8") / "gt"))
    ids = sorted(rec.images)
    rng = np.random.default_rng(0)
    pts = np.concatenate(
        [rec.images[i].projection_center() + 8 * rec.images[i].viewing_direction() + 2 * rng.normal(size=(60, 3)) for i in ids]
    )
    obs = {i: [] for i in ids}
    tracks = []
    for p in pts:
        els = []
        for i in ids:
            img = rec.images[i]
            xy = img.project_point(p)
            if xy is not None and 0 <= xy[0] < img.camera.width and 0 <= xy[1] < img.camera.height:
                els.append((i, len(obs[i])))
                obs[i].append(np.asarray(xy, float))
        tracks.append(els)
    for i in ids:
        rec.images[i].points2D = pycolmap.Point2DList([pycolmap.Point2D(x) for x in obs[i]])
    kept = []
    for p, els in zip(pts, tracks):
        if len(els) >= 2:
            t = pycolmap.Track()
            for i, j in els:
                t.add_element(i, j)
            rec.add_point3D(p, t)
            kept.append({rec.images[i].name for i, _ in els})
    return rec, kept


def test_covisibility_counts_and_pairs():
    rec, tracks = _model_with_tracks()
    names, C = covisibility_counts(rec)
    assert names == sorted(img.name for img in rec.images.values())
    for a, b in itertools.combinations(range(len(names)), 2):  # brute-force count from the tracks
        expected = sum(1 for t in tracks if names[a] in t and names[b] in t)
        assert C[a, b] == C[b, a] == expected
    pairs = pairs_from_covisibility(rec, 2)
    _check_properties(pairs, names)
    for i, n in enumerate(names):  # each image's 2 best partners are in the pairs
        best = np.argsort(-C[i], kind="stable")[:2]
        for j in best:
            assert tuple(sorted((n, names[j]))) in pairs


def test_run_pairs_stage(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(images / ("sub" if i % 2 else ".") / f"im{i}.png")
    out = tmp_path / "out"
    p = run_pairs(out, images, {"method": "sequential", "num_neighbors": 2, "loop_closure": False})
    pairs = read_pairs(p)
    assert p == out / "pairs.txt" and len(pairs) == 5 + 4
    p = run_pairs(out, images, PairsConfig(method="exhaustive"))
    assert len(read_pairs(p)) == 15
    mtime = p.stat().st_mtime_ns
    assert run_pairs(out, images, PairsConfig(method="exhaustive")) == p
    assert p.stat().st_mtime_ns == mtime  # same pairs: file untouched, later stages stay up to date
    assert any("sub/" in a or "sub/" in b for a, b in read_pairs(p))
    with pytest.raises(ValueError, match="unknown PairsConfig option"):
        run_pairs(out, images, {"methd": "exhaustive"})
    with pytest.raises(InputError):
        run_pairs(out, tmp_path / "missing", None)


def test_run_pairs_retrieval_and_loop_closure(tmp_path, caplog):
    """Retrieval through the stage on 3 scenes x 3 views (random textures, shifted crops): every
    image's top-2 are the other views of its scene; descriptors are reused on rerun."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for s in range(3):
        tex = cv2.GaussianBlur(rng.integers(0, 255, (260, 330), dtype=np.uint8), (3, 3), 0)
        for v in range(3):
            Image.fromarray(tex[10 * v : 10 * v + 200, 15 * v : 15 * v + 280]).save(images / f"s{s}_v{v}.png")
    out = tmp_path / "out"
    path = run_pairs(out, images, {"method": "retrieval", "num_neighbors": 2, "vocabulary_size": 16, "num_workers": 0})
    pairs = read_pairs(path)
    names = sorted(p.name for p in images.iterdir())
    _check_properties(pairs, names)
    assert len(pairs) == 9 and all(a[:2] == b[:2] for a, b in pairs)
    feats = out / "global_features.h5"
    mtime = feats.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="loftr_sfm"):
        seq = read_pairs(
            run_pairs(out, images, {"method": "sequential", "num_neighbors": 1, "loop_closure": True,
                                    "loop_closure_neighbors": 2, "vocabulary_size": 16, "num_workers": 0})
        )  # fmt: skip
    assert feats.stat().st_mtime_ns == mtime  # descriptors reused
    assert set(pairs) <= set(seq) and set(pairs_from_sequential(names, 1)) <= set(seq)
    assert len(seq) == len(set(pairs) | set(pairs_from_sequential(names, 1)))
    assert f"8 in the window, {len(seq) - 8} more from loop closure (retrieval top-2)" in caplog.text


def test_loop_closure_is_the_default_and_featureless_photos_keep_the_sequential_pairs(tmp_path, caplog):
    """Sequential pairs get loop closure unless told otherwise; photos without local features (no vocabulary can
    be fitted) keep the sequential pairs, with a warning instead of a failed stage."""
    from PIL import Image

    assert PairsConfig(method="sequential").loop_closure is True
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 48), (i * 40, 0, 0)).save(images / f"im{i}.png")
    with caplog.at_level("WARNING", logger="loftr_sfm"):
        p = run_pairs(tmp_path / "out", images, {"method": "sequential", "num_neighbors": 2, "num_workers": 0})
    assert len(read_pairs(p)) == 5 + 4
    assert "sequential pairs without loop closure: cannot fit a vocabulary" in caplog.text
