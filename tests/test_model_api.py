"""Convenience API (match_pair, visualize, model cache) on real image content with a calibrated
random-weight model: a translated copy of an image must be matched with the known shift, in
original-image pixels, through the resize path and through the different-size path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_scene
from loftr_sfm.io import ImageReadError, InputError
from loftr_sfm.model import api
from loftr_sfm.model.processing import EfficientLoFTRImageProcessor
from test_model_weights import calibrated_random_model

SHIFT = (64, 32)  # (dx, dy) in the 256x320 base image: multiples of the coarse stride 8


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A (256x320 gray crop of a real photo), B = A shifted by SHIFT (edge-padded, same size),
    C = A cropped (different size), the 2x enlarged A2/B2, and a checkpoint of a model calibrated on A."""
    root = shared_scene("sacre_coeur")
    tmp = tmp_path_factory.mktemp("api")
    from loftr_sfm.io import read_image

    img = read_image(root / "images" / "02928139_3448003521.jpg", grayscale=True)
    a = np.ascontiguousarray(img[300:556, 200:520])  # (256, 320)
    dx, dy = SHIFT
    b = np.pad(a[dy:, dx:], ((0, dy), (0, dx)), mode="edge")
    c = np.ascontiguousarray(a[dy:, dx:])  # (224, 256)
    paths = {}
    for name, arr in {"A": a, "B": b, "C": c}.items():
        paths[name] = tmp / f"{name}.png"
        Image.fromarray(arr).save(paths[name])
    for name, arr in {"A2": a, "B2": b}.items():  # nearest 2x enlargement: area /2 gives back A, B exactly
        paths[name] = tmp / f"{name}.png"
        Image.fromarray(np.repeat(np.repeat(arr, 2, 0), 2, 1)).save(paths[name])
    model = calibrated_random_model([torch.from_numpy(a)[None, None].float() / 255], seed=3)
    ckpt = tmp / "calibrated.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    paths["ckpt"] = ckpt
    return paths


def _check_shift(res, shift_px, tol):
    k0, k1 = res["keypoints0"], res["keypoints1"]
    assert k0.dtype == np.float32 and k0.shape == k1.shape and len(k0) == len(res["scores"])
    err = np.linalg.norm(k0 - (k1 + np.asarray(shift_px, np.float32)), axis=1)
    return err


def test_match_pair_recovers_known_shift_in_original_pixels(scene):
    api.clear_model_cache()
    # 512x640 originals resized by exactly 1/2 (max_side=320): the network sees A and B
    res = api.match_pair(scene["A2"], scene["B2"], scene["ckpt"], max_side=320, threshold=0.0, device="cpu")
    assert res["image_size0"] == (640, 512) and res["input_size0"] == (320, 256)
    assert len(res["scores"]) >= 100
    err = _check_shift(res, (2 * SHIFT[0], 2 * SHIFT[1]), None)
    # original pixels = 2x input pixels (measured: median 0.13 px, 95% <= 0.6 px; the rest are
    # wrong matches in the edge-padded strip)
    assert np.median(err) <= 0.5 and np.mean(err <= 1.0) >= 0.9, np.percentile(err, [50, 90, 99])
    assert np.abs(res["keypoints1"] % 1).max() > 0.01  # sub-pixel output
    # the model in the cache is reused: same object, no reload
    assert api.load_model(scene["ckpt"], "cpu") is api.load_model(scene["ckpt"], "cpu")
    assert len(api._MODEL_CACHE) == 1


@pytest.fixture(scope="module")
def diff_size_result(scene):
    # A (256x320) against its crop C (224x256): the image0/image1 path, no resizing
    proc = EfficientLoFTRImageProcessor(do_resize=False)
    return api.match_pair(scene["A"], scene["C"], scene["ckpt"], max_side=None, threshold=0.0, processor=proc, device="cpu")


def test_match_pair_images_of_different_sizes(scene, diff_size_result):
    res = diff_size_result
    proc = EfficientLoFTRImageProcessor(do_resize=False)
    assert res["image_size1"] == (256, 224) and res["input_size1"] == (256, 224)
    assert len(res["scores"]) >= 50
    err = _check_shift(res, SHIFT, None)
    # measured: median 0.06 px, 95% <= 0.24 px
    assert np.median(err) <= 0.25 and np.mean(err <= 0.5) >= 0.9, np.percentile(err, [50, 90, 99])
    # a higher threshold keeps a subset with scores above it
    res2 = api.match_pair(scene["A"], scene["C"], scene["ckpt"], max_side=None, threshold=0.05, processor=proc, device="cpu")
    assert len(res2["scores"]) < len(res["scores"]) and (res2["scores"] > 0.05).all()


def test_visualize_writes_png(scene, diff_size_result, tmp_path):
    res = diff_size_result
    out = api.visualize(scene["A"], scene["C"], res, tmp_path / "sub" / "viz.png", max_matches=20)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (320 + 256, 256)
    arr = np.asarray(img.convert("RGB")).astype(int)
    colored = (np.abs(arr[..., 0] - arr[..., 1]) > 60).sum()  # red/green line pixels (the photo is gray)
    assert colored > 100


def test_match_pair_bad_input(scene, tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg"):
        api.match_pair(tmp_path / "nope.jpg", scene["A"], scene["ckpt"], device="cpu")
    Image.fromarray(np.zeros((20, 400), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(InputError, match="thin.png.*too small"):
        api.match_pair(tmp_path / "thin.png", scene["A"], scene["ckpt"], device="cpu")
