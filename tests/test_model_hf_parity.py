"""Parity with Transformers' ``EfficientLoFTRForKeypointMatching`` (test-only reference).

Setup: a calibrated random-weight model (seeded init, randomized BatchNorm/LayerNorm affines,
BatchNorm statistics calibrated on the pair; recipe of ../shared/notes/eloftr.md) is copied into
Transformers' model, Transformers' own ``save_pretrained`` writes it, and our ``from_pretrained``
reads that folder back (config.json included). Both get the identical ``pixel_values`` tensor
of a real ScanNet pair; the coarse threshold is 0 so every mutual nearest neighbour outside the
border is compared (a few hundred matches instead of a handful at 0.2).

What is equal: the coarse match set (identical) and the coarse scores. Transformers builds its RoPE
tables in fp32, the original rounds them to fp16; with our ``rope_fp16_tables=False`` the scores
agree to float precision (<= 1e-5 measured), with the default fp16 tables within ~1e-4.

Where results differ because of Transformers' bugs (../shared/notes/eloftr.md section 1.8), not
compared numerically here:

* keypoints: Transformers' fine stage pairs the window of image-0 cell ``matches[0, k]`` with the
  window of image-1 cell ``matches[1, k]`` (slot k mixes two different matches), takes the stage-1
  dual softmax across all cells (4-D softmax bug), gathers the stage-1 offset along the wrong axis
  (its keypoints0 are always coarse - 3.5 px), scales stage 1 by sqrt(56) instead of sqrt(64), and
  applies pair 0's sub-pixel offsets to every pair of a batch. Its fine keypoints are off by 4-7 px.
* post-processing: Transformers' ``post_process_keypoint_matching`` truncates keypoints to int32
  and pairs ``keypoints[0][valid0]`` (ordered by image-1 cell) with ``keypoints[1][valid1]``
  (ordered by image-0 cell): almost none of its returned pairs is a real match. Ours keeps float
  sub-pixel keypoints and row m of keypoints0/keypoints1 is the same match (checked below).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_scene
from loftr_sfm.model import weights as W
from loftr_sfm.model.processing import EfficientLoFTRImageProcessor
from test_model_weights import calibrated_random_model

transformers = pytest.importorskip("transformers")

PAIR = ("scene0711_00_frame-001680.jpg", "scene0711_00_frame-001995.jpg")


def _hf_coarse(out) -> tuple[set[tuple[int, int]], dict[tuple[int, int], float]]:
    """Transformers' coarse matches of pair 0: row 1 slot i holds the image-1 cell matched to image-0 cell i."""
    j_of_i = out.matches[0, 1]
    scores = out.matching_scores[0, 1]
    idx = torch.nonzero(j_of_i >= 0).flatten()
    pairs = {(int(i), int(j_of_i[i])): float(scores[i]) for i in idx}
    # consistency of the two rows (row 0 slot j holds i)
    assert all(int(out.matches[0, 0, j]) == i for i, j in pairs)
    return set(pairs), pairs


def _ours_coarse(out) -> tuple[set[tuple[int, int]], dict[tuple[int, int], float]]:
    b, i, j = out.coarse_matches
    s = out.matching_scores[0, 0, : len(i)]
    pairs = {(int(a), int(c)): float(v) for a, c, v in zip(i, j, s)}
    return set(pairs), pairs


def _true_pair_mask(k0_px: np.ndarray, k1_px: np.ndarray, matches: list[tuple[int, int]], w_c: int,
                    tol: float) -> np.ndarray:
    """(N,) bool: keypoint pair n lies within ``tol`` px (max norm) of the coarse centres 8*cell of
    some true coarse match (i, j) in both images (keypoints in input pixels)."""
    ij = np.asarray(matches, np.int64).reshape(-1, 2)
    c0 = np.stack([ij[:, 0] % w_c, ij[:, 0] // w_c], 1) * 8.0
    c1 = np.stack([ij[:, 1] % w_c, ij[:, 1] // w_c], 1) * 8.0
    d0 = np.abs(k0_px[:, None, :] - c0[None]).max(-1)
    d1 = np.abs(k1_px[:, None, :] - c1[None]).max(-1)
    return ((d0 <= tol) & (d1 <= tol)).any(1)


def _run_parity(tmp_path, size_hw):
    root = shared_scene("scannet_pairs")
    from transformers import EfficientLoFTRConfig as HFConfig
    from transformers import EfficientLoFTRForKeypointMatching as HFModel

    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    proc = EfficientLoFTRImageProcessor(size={"height": size_hw[0], "width": size_hw[1]})
    paths = [root / "images" / n for n in PAIR]
    batch = proc(paths)
    pv = batch.pixel_values  # (1, 2, 3, H, W)
    ours_train = calibrated_random_model([pv[0, :, :1]], seed=7)

    hf = HFModel(HFConfig(coarse_matching_threshold=0.0)).eval()
    hf_sd = W.canonical_to_hf(ours_train.state_dict())
    missing, unexpected = hf.load_state_dict(hf_sd, strict=True)
    assert not missing and not unexpected
    hf_dir = tmp_path / "hf_saved"
    hf.save_pretrained(hf_dir)

    with torch.inference_mode():
        hf_out = hf(pixel_values=pv)
    ours = EfficientLoFTRForKeypointMatching.from_pretrained(hf_dir, reparameterize=False, rope_fp16_tables=False)
    assert ours.config.coarse_matching_threshold == 0.0  # read from Transformers' config.json
    out = ours(pixel_values=pv)
    return proc, batch, hf, hf_out, ours, out, hf_dir


@pytest.fixture(scope="module")
def parity_small(tmp_path_factory):
    return _run_parity(tmp_path_factory.mktemp("hf"), (256, 320))


def _check_coarse(hf_out, out, score_tol):
    hf_set, hf_scores = _hf_coarse(hf_out)
    our_set, our_scores = _ours_coarse(out)
    assert len(hf_set) >= 50, len(hf_set)
    assert our_set == hf_set
    diff = max(abs(our_scores[m] - hf_scores[m]) for m in hf_set)
    assert diff <= score_tol, diff
    return len(hf_set), diff


def test_same_coarse_matches_and_scores_fp32_rope(parity_small):
    _, _, _, hf_out, _, out, _ = parity_small
    _check_coarse(hf_out, out, 1e-5)


def test_same_coarse_matches_with_fp16_rope_and_reparameterized(parity_small):
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    _, batch, _, hf_out, _, _, hf_dir = parity_small
    ours = EfficientLoFTRForKeypointMatching.from_pretrained(hf_dir)  # defaults: fp16 tables, re-parameterized
    assert ours.is_reparameterized and ours.config.rope_fp16_tables
    _check_coarse(hf_out, ours(pixel_values=batch.pixel_values), 2e-4)


def test_post_processing_pairs_and_subpixel_vs_transformers(parity_small):
    from transformers import EfficientLoFTRImageProcessor as HFProcessor

    proc, batch, _, hf_out, _, out, _ = parity_small
    H, W = batch.processed_sizes[0, 0].tolist()
    w_c = W // 8
    sizes = batch.original_sizes  # (1, 2, 2) (h, w)
    hf_set, _ = _hf_coarse(hf_out)
    scale = batch.scales[0].numpy()  # (2, 2): (w_o / w_in, h_o / h_in)

    ours = proc.post_process_keypoint_matching(out, batch, threshold=None)[0]
    k0 = ours["keypoints0"].numpy() / scale[0]
    k1 = ours["keypoints1"].numpy() / scale[1]
    _, i_ids, j_ids = out.coarse_matches
    assert len(k0) == len(hf_set) == len(i_ids)
    # row m of keypoints0/keypoints1 is coarse match m: image0 within 3.5 px of 8*i (stage 1 only),
    # image1 within 3.5 + 1 px of 8*j (stage 1 + sub-pixel step)
    c0 = torch.stack([i_ids % w_c, i_ids // w_c], 1).numpy() * 8.0
    c1 = torch.stack([j_ids % w_c, j_ids // w_c], 1).numpy() * 8.0
    assert np.abs(k0 - c0).max() <= 3.5 + 1e-3 and np.abs(k1 - c1).max() <= 4.5 + 1e-3
    assert set(zip(i_ids.tolist(), j_ids.tolist())) == hf_set
    assert _true_pair_mask(k0, k1, sorted(hf_set), w_c, 4.5 + 1e-3).all()
    assert ours["keypoints0"].dtype == torch.float32
    assert np.abs(ours["keypoints1"].numpy() % 1).max() > 0.01  # sub-pixel kept

    hf_pp = HFProcessor().post_process_keypoint_matching(hf_out, sizes.tolist(), threshold=0.0)[0]
    assert hf_pp["keypoints0"].dtype == torch.int32  # Transformers truncates
    assert len(hf_pp["keypoints0"]) == len(hf_set)
    hk0 = hf_pp["keypoints0"].numpy() / scale[0]
    hk1 = hf_pp["keypoints1"].numpy() / scale[1]
    # generous tolerance (its fine offsets are buggy and truncated): still almost no true pairs
    true_share = _true_pair_mask(hk0, hk1, sorted(hf_set), w_c, 8.0 + 1e-3).mean()
    print(f"Transformers post-processing: {true_share:.3f} of {len(hk0)} pairs are true matches")
    assert true_share < 0.2, true_share  # measured: see the report; Transformers mis-pairs its two lists


@pytest.mark.slow
def test_same_coarse_matches_480x640(tmp_path):
    _, _, _, hf_out, _, out, _ = _run_parity(tmp_path, (480, 640))
    _check_coarse(hf_out, out, 1e-5)
