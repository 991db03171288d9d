"""EfficientLoFTRImageProcessor: input structures and types, gray/rescale/resize conventions,
aspect-preserving mode, bad input, post-processing to original pixels, visualization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loftr_sfm.io import ImageReadError, InputError
from loftr_sfm.model.processing import BatchFeature, EfficientLoFTRImageProcessor, target_size


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_default_resize_pair_of_pil_images_matches_manual_gray():
    a, b = _rgb(600, 800, 0), _rgb(300, 400, 1)
    proc = EfficientLoFTRImageProcessor()
    out = proc([Image.fromarray(a), Image.fromarray(b)])
    assert isinstance(out, BatchFeature)
    pv = out.pixel_values
    assert pv.shape == (1, 2, 3, 480, 640) and pv.dtype == torch.float32
    assert torch.equal(pv[:, :, 0], pv[:, :, 2])  # gray replicated
    assert 0 <= float(pv.min()) and float(pv.max()) <= 1
    # image1 is upscaled bilinearly from 300x400, image0 shrunk by area averaging from 600x800
    import cv2

    gray_b = (b.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    ref_b = cv2.resize(gray_b, (640, 480), interpolation=cv2.INTER_LINEAR) / 255.0
    np.testing.assert_allclose(pv[0, 1, 0].numpy(), ref_b, atol=1e-5)
    gray_a = (a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    ref_a = cv2.resize(gray_a, (640, 480), interpolation=cv2.INTER_AREA) / 255.0
    np.testing.assert_allclose(pv[0, 0, 0].numpy(), ref_a, atol=1e-5)
    assert out.original_sizes.tolist() == [[[600, 800], [300, 400]]]
    np.testing.assert_allclose(out.scales[0].numpy(), [[800 / 640, 600 / 480], [400 / 640, 300 / 480]])


def test_input_types_agree_numpy_torch_pil_uint16_gray():
    a = _rgb(64, 96, 2)
    gray = (a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    proc = EfficientLoFTRImageProcessor(do_resize=False, num_channels=1)
    ref = proc([a, a]).pixel_values
    assert ref.shape == (1, 2, 1, 64, 96)
    np.testing.assert_allclose(ref[0, 0, 0].numpy(), gray / 255, atol=1e-6)
    variants = [
        [Image.fromarray(a), a],
        [torch.from_numpy(a).permute(2, 0, 1), np.moveaxis(a, -1, 0)],  # channel-first
        [a.astype(np.uint16) * 257, a.astype(np.float32)],  # 16-bit, float on 0..255
    ]
    for v in variants:
        np.testing.assert_allclose(proc(v).pixel_values.numpy(), ref.numpy(), atol=1e-4)
    g8 = np.round(gray).astype(np.uint8)
    out = proc([g8, Image.fromarray(g8)]).pixel_values  # (H, W) arrays and mode "L"
    assert torch.equal(out[0, 0], out[0, 1])
    rgba = np.concatenate([a, np.full((64, 96, 1), 255, np.uint8)], axis=2)
    np.testing.assert_allclose(proc([rgba, Image.fromarray(rgba)]).pixel_values.numpy(), ref.numpy(), atol=1e-4)


def test_list_of_pairs_and_heterogeneous_sizes():
    proc = EfficientLoFTRImageProcessor(max_side=640)
    land, port = _rgb(480, 640, 3), _rgb(960, 540, 4)
    # one portrait/landscape pair: image0/image1 tensors of their own sizes
    out = proc([port, land])
    assert "pixel_values" not in out
    assert out.image0.shape == (1, 1, 640, 352)  # 960x540 -> 640x360 -> width rounded to 352
    assert out.image1.shape == (1, 1, 480, 640)
    np.testing.assert_allclose(out.scales[0, 0].numpy(), [540 / 352, 960 / 640])
    assert set(out.model_inputs()) == {"image0", "image1"}
    # two pairs with identical sizes: pixel_values (B, 2, C, H, W)
    out = proc([[land, land], [land, land]])
    assert out.pixel_values.shape == (2, 2, 3, 480, 640)
    # mixed across pairs: lists of per-pair tensors, run per pair
    out = proc([[port, land], [land, land]])
    assert isinstance(out.image0, list) and out.image0[0].shape == (1, 1, 640, 352)
    assert out.pair_inputs(1)["image1"].shape == (1, 1, 480, 640)
    with pytest.raises(ValueError, match="per pair"):
        out.model_inputs()


def test_target_size_rounding_and_upscale():
    assert target_size(1024, 1536, size={"longest_edge": 1024}, max_side=None) == (672, 1024)  # 682.7 -> 672
    assert target_size(480, 640, size=None, max_side=1024) == (480, 640)  # no upscaling by default
    assert target_size(480, 640, size=None, max_side=1024, allow_upscale=True) == (768, 1024)
    assert target_size(500, 650, size=None, max_side=2000) == (512, 640)  # rounded to multiples of 32
    with pytest.raises(InputError, match="too small"):
        target_size(40, 4000, size=None, max_side=640)  # height would be 6 px
    with pytest.raises(InputError, match="at least 64"):
        target_size(40, 60, size=None, max_side=640)  # 40 px rounds to 32 < the network's 64
    assert target_size(50, 60, size=None, max_side=640) == (64, 64)
    with pytest.raises(InputError, match="multiples of 32"):
        target_size(100, 100, size={"height": 481, "width": 640}, max_side=None)


def test_bad_inputs_give_clear_errors(tmp_path):
    proc = EfficientLoFTRImageProcessor()
    with pytest.raises(InputError, match="too small"):
        proc([_rgb(20, 640), _rgb(480, 640)])
    with pytest.raises(InputError, match="multiples of 32"):
        proc([_rgb(100, 650), _rgb(480, 640)], do_resize=False)
    with pytest.raises(InputError, match="pair"):
        proc([_rgb(64, 64)])
    with pytest.raises(InputError, match="shape"):
        proc([np.zeros((64, 64, 7)), np.zeros((64, 64))])
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        proc([bad, bad])
    with pytest.raises(ImageReadError, match="missing.png"):
        proc([tmp_path / "missing.png", bad])


def test_paths_use_read_image_conversions(tmp_path):
    # 16-bit PNG, palette and an EXIF-rotated JPEG (orientation 6 = rotate 90 CW for display)
    a = _rgb(64, 96, 5)
    Image.fromarray((a[..., 0].astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    Image.fromarray(a).convert("P").save(tmp_path / "pal.png")
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    proc = EfficientLoFTRImageProcessor(do_resize=False)
    out = proc([tmp_path / "g16.png", tmp_path / "pal.png"])
    np.testing.assert_allclose(out.pixel_values[0, 0, 0].numpy(), a[..., 0] / 255.0, atol=1e-6)
    out = EfficientLoFTRImageProcessor(max_side=96)([tmp_path / "rot.jpg", tmp_path / "g16.png"])
    assert out.original_sizes[0, 0].tolist() == [96, 64]  # (h, w) after applying the EXIF rotation


def _fake_outputs(kpts_px, in_sizes, scores, pad=3):
    """Model-contract outputs for one pair per entry: keypoints normalized by the INPUT size."""
    B = len(kpts_px)
    K = max(len(k[0]) for k in kpts_px) + pad
    kp = torch.zeros(B, 2, K, 2)
    matches = torch.full((B, 2, K), -1, dtype=torch.int64)
    sc = torch.zeros(B, 2, K)
    for b, ((k0, k1), ((h0, w0), (h1, w1)), s) in enumerate(zip(kpts_px, in_sizes, scores)):
        m = len(k0)
        kp[b, 0, :m] = torch.as_tensor(k0) / torch.tensor([w0, h0])
        kp[b, 1, :m] = torch.as_tensor(k1) / torch.tensor([w1, h1])
        matches[b, :, :m] = torch.arange(m)
        sc[b, :, :m] = torch.as_tensor(s)
    return {"keypoints": kp, "matches": matches, "matching_scores": sc}


def test_post_process_float_keypoints_in_original_pixels_portrait_and_landscape():
    proc = EfficientLoFTRImageProcessor(max_side=640)
    port, land = _rgb(960, 540, 6), _rgb(600, 800, 7)
    batch = proc([port, land])
    (h0, w0), (h1, w1) = batch.processed_sizes[0].tolist()
    rng = np.random.default_rng(0)
    k0 = rng.uniform(0, [w0, h0], (7, 2)).astype(np.float32)  # input pixels of image0 (352x640)
    k1 = rng.uniform(0, [w1, h1], (7, 2)).astype(np.float32)
    s = np.array([0.9, 0.1, 0.5, 0.3, 0.95, 0.25, 0.7], np.float32)
    outs = _fake_outputs([(k0, k1)], [((h0, w0), (h1, w1))], [s])
    res = proc.post_process_keypoint_matching(outs, batch, threshold=0.2)  # BatchFeature as target sizes
    keep = s > 0.2
    assert len(res) == 1 and res[0]["keypoints0"].dtype == torch.float32
    exp0 = k0[keep] * batch.scales[0, 0].numpy()  # x * w_orig / w_in, y * h_orig / h_in
    exp1 = k1[keep] * batch.scales[0, 1].numpy()
    np.testing.assert_allclose(res[0]["keypoints0"].numpy(), exp0, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(res[0]["keypoints1"].numpy(), exp1, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(res[0]["matching_scores"].numpy(), s[keep])
    assert np.abs(res[0]["keypoints0"].numpy() % 1).max() > 0.01  # sub-pixel kept, no int cast
    # list target sizes and threshold=None keep everything valid (padding dropped)
    res = proc.post_process_keypoint_matching(outs, [[(960, 540), (600, 800)]], threshold=None)
    assert res[0]["keypoints0"].shape == (7, 2)
    with pytest.raises(ValueError, match="target sizes"):
        proc.post_process_keypoint_matching(outs, [[(960, 540), (600, 800)]] * 2)


def test_post_process_batch_of_two_pairs_keeps_pairs_apart():
    proc = EfficientLoFTRImageProcessor()
    k = [(np.array([[10.25, 20.5]]), np.array([[30.75, 40.125]])),
         (np.array([[1.5, 2.5], [100.0, 200.0]]), np.array([[3.5, 4.5], [300.0, 400.0]]))]
    outs = _fake_outputs(k, [((480, 640), (480, 640))] * 2, [[0.5], [0.6, 0.7]])
    res = proc.post_process_keypoint_matching(outs, [[(480, 640), (480, 640)], [(960, 1280), (240, 320)]])
    np.testing.assert_allclose(res[0]["keypoints0"].numpy(), [[10.25, 20.5]], atol=1e-4)
    np.testing.assert_allclose(res[1]["keypoints0"].numpy(), [[3.0, 5.0], [200.0, 400.0]], atol=1e-4)
    np.testing.assert_allclose(res[1]["keypoints1"].numpy(), [[1.75, 2.25], [150.0, 200.0]], atol=1e-4)


def test_visualize_side_by_side_colored_by_score():
    proc = EfficientLoFTRImageProcessor()
    a, b = np.zeros((100, 120, 3), np.uint8), np.zeros((80, 90), np.uint8)
    res = [{"keypoints0": torch.tensor([[10.0, 50.0], [10.0, 10.0]]),
            "keypoints1": torch.tensor([[80.0, 50.0], [80.0, 70.0]]),
            "matching_scores": torch.tensor([1.0, 0.0])}]
    (img,) = proc.visualize_keypoint_matching([a, b], res)
    assert img.size == (120 + 90, 100) and img.mode == "RGB"
    arr = np.asarray(img)
    assert tuple(arr[50, 150]) == (0, 255, 0)  # horizontal line of the score-1 match: green
    # the score-0 match goes from (10,10) to (200,70): midpoint (105, 40) is red
    assert tuple(arr[40, 105]) == (255, 0, 0)
    assert arr[5:9, 30:100].sum() == 0  # background untouched away from the lines
    np.testing.assert_array_equal(EfficientLoFTRImageProcessor.score_colors(np.array([-5.0, 5.0])),
                                  [[255, 0, 0], [0, 255, 0]])


def test_processor_config_roundtrip(tmp_path):
    proc = EfficientLoFTRImageProcessor(max_side=1024, num_channels=1)
    proc.save_pretrained(tmp_path)
    again = EfficientLoFTRImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict()
    with pytest.raises(ValueError, match="unknown"):
        EfficientLoFTRImageProcessor(sise=3)


def test_tensor_batch_input_numpy_output_and_to():
    a = torch.from_numpy(_rgb(64, 96, 8)).permute(2, 0, 1).float()  # (3, H, W) on 0..255
    pairs = torch.stack([torch.stack([a, a.flip(-1)]), torch.stack([a.flip(-2), a])])  # (2, 2, 3, 64, 96)
    proc = EfficientLoFTRImageProcessor(do_resize=False)
    out = proc(pairs, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (2, 2, 3, 64, 96)
    ref = proc([[a, a.flip(-1)], [a.flip(-2), a]]).to("cpu")
    assert isinstance(ref, BatchFeature)
    np.testing.assert_allclose(out["pixel_values"], ref.pixel_values.numpy(), atol=1e-6)
    np.testing.assert_allclose(out["pixel_values"][0, 1, 0], out["pixel_values"][0, 0, 0][:, ::-1], atol=1e-6)


def test_model_accepts_processor_output_directly():
    """``model(**processor(images))`` works as with Transformers; unknown inputs still fail."""
    import torch

    from loftr_sfm import EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching

    rng = np.random.default_rng(0)
    im0 = (rng.random((200, 260)) * 255).astype(np.uint8)
    im1 = (rng.random((260, 200)) * 255).astype(np.uint8)
    proc = EfficientLoFTRImageProcessor(size={"height": 128, "width": 160})
    torch.manual_seed(0)
    model = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig()).eval()
    inputs = proc([im0, im1], return_tensors="pt")
    assert "original_sizes" in inputs
    with torch.inference_mode():
        out = model(**inputs, threshold=0.0)
        with pytest.raises(TypeError, match="bogus"):
            model(**inputs, bogus=1)
    res = proc.post_process_keypoint_matching(out, target_sizes=inputs, threshold=None)
    k0, k1 = res[0]["keypoints0"], res[0]["keypoints1"]
    assert len(k0) == len(k1) == len(res[0]["matching_scores"]) == int((out.matches[0, 0] >= 0).sum())
    # keypoints are in original pixels of each image (image1 is portrait)
    assert float(k0[:, 0].max()) < 260 and float(k0[:, 1].max()) < 200
    assert float(k1[:, 0].max()) < 200 and float(k1[:, 1].max()) < 260
