"""Tests of loftr_sfm.io: image reading conversions, pairs files, h5 layouts, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from loftr_sfm import io


def _gradient(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 4 + y) % 256).astype(np.uint8)


def test_read_image_modes(tmp_path):
    g = _gradient()
    Image.fromarray(g).save(tmp_path / "gray.png")
    rgb = np.stack([g, 255 - g, g // 2], axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert io.read_image(tmp_path / "gray.png", grayscale=True).tolist() == g.tolist()
    out = io.read_image(tmp_path / "rgb.png")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)

    # 16-bit PNG: scaled by 1/257 to 8 bit
    g16 = (g.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "g16.png", grayscale=True), g)

    # RGBA: composited on black (fully transparent -> 0, opaque -> colour)
    rgba = np.dstack([rgb, np.full(g.shape, 255, np.uint8)])
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = io.read_image(tmp_path / "rgba.png")
    assert (out[:10] == 0).all()
    np.testing.assert_array_equal(out[10:], rgb[10:])

    # palette image
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert io.read_image(tmp_path / "pal.png").shape == (40, 60, 3)


def test_read_image_exif_orientation(tmp_path):
    g = _gradient(30, 50)
    img = Image.fromarray(g)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = io.read_image(tmp_path / "rot.jpg", grayscale=True)
    assert out.shape == (50, 30)
    assert io.image_size(tmp_path / "rot.jpg") == (30, 50)
    # orientation 6: displayed image = stored image rotated 90 degrees clockwise
    np.testing.assert_allclose(out.astype(float), np.rot90(g, k=-1).astype(float), atol=6)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(io.ImageReadError, match="missing.png.*does not exist"):
        io.read_image(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(io.ImageReadError, match="bad.jpg"):
        io.read_image(tmp_path / "bad.jpg")
    # truncated JPEG
    Image.fromarray(_gradient(200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(io.ImageReadError, match="trunc.jpg"):
        io.read_image(tmp_path / "trunc.jpg")


def test_list_images(tmp_path):
    with pytest.raises(io.InputError, match="does not exist"):
        io.list_images(tmp_path / "nope")
    with pytest.raises(io.InputError, match="no images"):
        io.list_images(tmp_path)
    (tmp_path / "b").mkdir()
    for name in ["z.jpg", "a.PNG", "b/x.jpg", "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"")
    assert io.list_images(tmp_path) == ["a.PNG", "b/x.jpg", "z.jpg"]


def test_pairs_roundtrip_and_validation(tmp_path):
    path = tmp_path / "pairs.txt"
    io.write_pairs(path, [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg"), ("c.jpg", "c.jpg"), ("a.jpg", "c.jpg")])
    assert io.read_pairs(path) == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")]
    with pytest.raises(io.InputError, match="not in the image folder: c.jpg"):
        io.read_pairs(path, known_names=["a.jpg", "b.jpg"])
    with pytest.raises(io.InputError, match="does not exist"):
        io.read_pairs(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a.jpg\n")
    with pytest.raises(io.InputError, match="bad.txt:1"):
        io.read_pairs(tmp_path / "bad.txt")


def test_raw_matches_layout_and_reverse_lookup(tmp_path):
    k0 = np.random.default_rng(0).random((5, 2)).astype(np.float32) * 100
    k1 = k0 + 3
    sc = np.linspace(0, 1, 5, dtype=np.float32)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        io.write_raw_matches(f, "sub/a.jpg", "b.jpg", k0, k1, sc)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert list(f.keys()) == ["sub-a.jpg"] and list(f["sub-a.jpg"].keys()) == ["b.jpg"]
        g = f["sub-a.jpg/b.jpg"]
        assert g["keypoints0"].dtype == np.float32 and g["keypoints0"].shape == (5, 2)
        a, b, s = io.read_raw_matches(f, "sub/a.jpg", "b.jpg")
        np.testing.assert_array_equal(a, k0)
        a, b, s = io.read_raw_matches(f, "b.jpg", "sub/a.jpg")  # reversed lookup swaps the sides
        np.testing.assert_array_equal(a, k1)
        np.testing.assert_array_equal(b, k0)
        with pytest.raises(KeyError, match="c.jpg"):
            io.read_raw_matches(f, "b.jpg", "c.jpg")


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
    with io.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_pairs_with_spaces_round_trip_and_plain_names_stay_hloc_readable(tmp_path):
    from loftr_sfm.io import read_pairs, write_pairs

    pairs = [("my photo 1.jpg", "b.jpg"), ("b.jpg", "it's.jpg"), ("a/x.jpg", "c.jpg")]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(tmp_path / "pairs.txt") == pairs
    assert "a/x.jpg c.jpg\n" in (tmp_path / "pairs.txt").read_text()  # plain names as hloc writes them


def test_colliding_hdf5_keys_are_refused_before_any_work(tmp_path):
    from loftr_sfm.io import InputError, read_pairs, write_pairs

    with pytest.raises(InputError, match="a-0001.jpg and a/0001.jpg"):
        write_pairs(tmp_path / "pairs.txt", [("a/0001.jpg", "b.jpg"), ("a-0001.jpg", "b.jpg")])
    assert not (tmp_path / "pairs.txt").exists()
    (tmp_path / "pairs.txt").write_text("a/0001.jpg b.jpg\na-0001.jpg b.jpg\n")
    with pytest.raises(InputError, match="share an HDF5 key"):
        read_pairs(tmp_path / "pairs.txt")


def test_photos_in_unread_formats_are_named_in_a_warning(tmp_path, caplog):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "b.HEIC").write_bytes(b"ftypheic")
    (tmp_path / "notes.txt").write_text("x")
    assert io.list_images(tmp_path) == ["a.jpg"]
    assert "b.HEIC" in caplog.text and "convert them" in caplog.text and "notes.txt" not in caplog.text
