"""Photometric sub-pixel refinement: exact recovery of known warps, rejection of wrong matches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from loftr_sfm.matchers.refine import RefineOptions, image_gradients, refine_matches


def _texture(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Smooth random texture in [0, 1] (blurred noise at two scales)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    img += 0.5 * cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 6.0)
    return (img - img.min()) / (img.max() - img.min())


def _warp(img: np.ndarray, A: np.ndarray) -> np.ndarray:
    """image0(x) = image1(A^-1 x): a point x1 of image1 is at A x1 in image0 (pixel centres at integers)."""
    return cv2.warpAffine(img, A, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _grid(h: int, w: int, margin: int = 30, step: int = 8) -> np.ndarray:
    ys, xs = np.mgrid[margin:h - margin:step, margin:w - margin:step]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)


@pytest.mark.parametrize("angle,scale,gain,bias", [(0.0, 1.0, 1.0, 0.0), (4.0, 1.05, 0.6, 0.25), (10.0, 1.1, 1.0, 0.0)])
def test_recovers_a_known_subpixel_warp(angle, scale, gain, bias):
    img1 = _texture()
    A = cv2.getRotationMatrix2D((160.0, 120.0), angle, scale)
    A[:, 2] += (0.37, -0.61)
    img0 = gain * _warp(img1, A) + bias  # refinement works on normalized patches: gain and bias do not matter
    k1 = _grid(*img1.shape)
    truth = k1 @ A[:, :2].T + A[:, 2]
    rng = np.random.default_rng(1)
    start = truth + rng.uniform(-1.0, 1.0, truth.shape).astype(np.float32)  # a regressor's ~1 px error
    k0, ok = refine_matches(torch.from_numpy(img0), torch.from_numpy(img1), torch.from_numpy(start), torch.from_numpy(k1))
    err_before = np.linalg.norm(start - truth, axis=1)
    err = np.linalg.norm(k0.numpy() - truth, axis=1)
    assert ok.float().mean() > 0.95
    assert np.median(err[ok.numpy()]) < 0.05 * np.median(err_before), (np.median(err), np.median(err_before))
    assert np.percentile(err[ok.numpy()], 95) < 0.15
    if angle:  # a translation alone cannot follow the patch's rotation and scale
        k0t, okt = refine_matches(torch.from_numpy(img0), torch.from_numpy(img1), torch.from_numpy(start),
                                  torch.from_numpy(k1), RefineOptions(affine=False))
        assert np.median(np.linalg.norm(k0t.numpy() - truth, axis=1)[okt.numpy()]) > 2 * np.median(err[ok.numpy()])


def test_wrong_matches_are_not_refined_and_stay_put():
    img1 = _texture(seed=2)
    img0 = _warp(img1, np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.2]], np.float32))
    k1 = _grid(*img1.shape)
    rng = np.random.default_rng(3)
    wrong = rng.uniform((30, 30), (290, 210), k1.shape).astype(np.float32)  # random points: not matches
    far = k1 + np.float32([6.0, 0.0])  # the right texture, but too far for a sub-pixel refinement
    for start in (wrong, far):
        k0, ok = refine_matches(torch.from_numpy(img0), torch.from_numpy(img1), torch.from_numpy(start), torch.from_numpy(k1))
        assert ok.float().mean() < 0.1
        np.testing.assert_array_equal(k0.numpy()[~ok.numpy()], start[~ok.numpy()])


def test_flat_patches_are_not_refined_and_inputs_can_be_precomputed():
    img1 = _texture(seed=4)
    img1[:, :120] = 0.5  # a textureless left part
    img0 = _warp(img1, np.array([[1.0, 0.0, 0.4], [0.0, 1.0, 0.0]], np.float32))
    k1 = _grid(*img1.shape)
    start = k1 + np.float32([0.9, 0.3])
    s0, s1 = image_gradients(torch.from_numpy(img0)), image_gradients(torch.from_numpy(img1)[None])
    assert s0.shape == (3, *img0.shape)
    k0, ok = refine_matches(s0, s1, torch.from_numpy(start), torch.from_numpy(k1), RefineOptions(radius=4, iterations=6))
    flat = k1[:, 0] < 110
    assert not ok.numpy()[flat].any()
    assert ok.numpy()[k1[:, 0] > 140].mean() > 0.95
    err = np.linalg.norm(k0.numpy() - (k1 + np.float32([0.4, 0.0])), axis=1)
    assert np.median(err[ok.numpy()]) < 0.08
    empty, none = refine_matches(s0, s1, torch.zeros(0, 2), torch.zeros(0, 2))
    assert empty.shape == (0, 2) and none.shape == (0,)


def test_degenerate_patches_do_not_raise():
    """Constant images and straight edges (rank-deficient systems) are reported as not refined."""
    flat = torch.full((60, 80), 0.3)
    edge = torch.zeros(60, 80)
    edge[:, 40:] = 1.0  # a vertical edge: no information along y
    pts = torch.tensor([[20.0, 30.0], [40.0, 30.0], [39.5, 20.0]])
    for img in (flat, edge):
        for affine in (True, False):
            k0, ok = refine_matches(img, img, pts + 0.3, pts, RefineOptions(affine=affine))
            assert torch.isfinite(k0).all()
            np.testing.assert_array_equal(k0.numpy()[~ok.numpy()], (pts + 0.3).numpy()[~ok.numpy()])
    _, ok = refine_matches(flat, flat, pts + 0.3, pts)
    assert not ok.any()
