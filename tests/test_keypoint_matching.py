"""``loftr_sfm.pipeline("keypoint-matching")``: Transformers' pipeline with the import changed.

Real image content (a crop of a ../shared/data photo, a shifted copy and 2x enlargements) and a
random-weight model calibrated on it, written as an original-layout checkpoint: the matches must
recover the known shift in ORIGINAL pixels; the output format is compared with Transformers'
own pipeline code; batches, input types, URLs and errors are checked.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_scene
from loftr_sfm.io import ImageReadError, InputError
from loftr_sfm.keypoint_matching import format_matches, pipeline
from test_model_weights import calibrated_random_model

SHIFT = (64, 32)  # (dx, dy) of B against A, in the 256x320 base image


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A (256x320 gray crop of a real photo), B = A shifted by SHIFT, C = a crop of A (224x256),
    A2/B2 = 2x enlargements (512x640), and a checkpoint of a model calibrated on A."""
    from loftr_sfm.io import read_image

    root = shared_scene("sacre_coeur")
    tmp = tmp_path_factory.mktemp("kpm")
    img = read_image(root / "images" / "02928139_3448003521.jpg", grayscale=True)
    a = np.ascontiguousarray(img[300:556, 200:520])
    dx, dy = SHIFT
    b = np.pad(a[dy:, dx:], ((0, dy), (0, dx)), mode="edge")
    c = np.ascontiguousarray(a[dy:, dx:])
    arrays = {"A": a, "B": b, "C": c, "A2": np.repeat(np.repeat(a, 2, 0), 2, 1), "B2": np.repeat(np.repeat(b, 2, 0), 2, 1)}
    paths = {}
    for name, arr in arrays.items():
        paths[name] = tmp / f"{name}.png"
        Image.fromarray(arr).save(paths[name])
    model = calibrated_random_model([torch.from_numpy(a)[None, None].float() / 255], seed=3)
    ckpt = tmp / "calibrated.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    return {"paths": paths, "arrays": arrays, "ckpt": ckpt, "dir": tmp}


@pytest.fixture(scope="module")
def matcher(scene):
    """The seed's call with our weights: the aspect-preserving resize to 320 px (A2/B2 -> exactly A/B)."""
    return pipeline(task="keypoint-matching", model=scene["ckpt"], device="cpu", max_side=320,
                    model_kwargs={"coarse_matching_threshold": 0.0})


def _as_array(matches: list[dict]) -> np.ndarray:
    return np.array([[m["keypoint_image_0"]["x"], m["keypoint_image_0"]["y"], m["keypoint_image_1"]["x"],
                      m["keypoint_image_1"]["y"], m["score"]] for m in matches]).reshape(-1, 5)


def _assert_same(a: list[dict], b: list[dict], atol: float = 1e-3) -> None:
    """Same matches up to float rounding (paths go through RGB and back to gray: ~1e-5 input differences)."""
    x, y = _as_array(a), _as_array(b)
    assert len(x) == len(y) > 10
    x, y = x[np.lexsort(x[:, :2].T)], y[np.lexsort(y[:, :2].T)]
    np.testing.assert_allclose(x[:, :4], y[:, :4], atol=atol)
    np.testing.assert_allclose(x[:, 4], y[:, 4], atol=1e-4)


def _shift_error(matches: list[dict], shift: tuple[float, float]) -> np.ndarray:
    arr = _as_array(matches)
    return np.linalg.norm(arr[:, 0:2] - (arr[:, 2:4] + np.asarray(shift)), axis=1)


def test_pipeline_recovers_known_shift_in_original_pixels(scene, matcher):
    p = scene["paths"]
    results = matcher([str(p["A2"]), str(p["B2"])], threshold=0.0)  # one pair -> a list of matches
    assert isinstance(results, list) and len(results) >= 100
    first = results[0]
    assert list(first) == ["keypoint_image_0", "keypoint_image_1", "score"]
    assert list(first["keypoint_image_0"]) == ["x", "y"] and list(first["keypoint_image_1"]) == ["x", "y"]
    assert all(type(v) is float for m in results[:20] for v in (*m["keypoint_image_0"].values(), m["score"]))
    scores = [m["score"] for m in results]
    assert scores == sorted(scores, reverse=True)
    # 512x640 originals, network input 256x320: original pixels = 2 x network pixels
    err = _shift_error(results, (2 * SHIFT[0], 2 * SHIFT[1]))
    assert np.median(err) <= 0.5 and np.mean(err <= 1.0) >= 0.9, np.percentile(err, [50, 90, 99])
    arr = _as_array(results)
    assert np.abs(arr[:, :4] % 1).max() > 0.01  # sub-pixel floats
    assert arr[:, [0, 2]].max() < 640 and arr[:, [1, 3]].max() < 512
    # the threshold keeps the matches above it only
    high = matcher([p["A2"], p["B2"]], threshold=0.5)
    assert 0 < len(high) < len(results) and min(m["score"] for m in high) > 0.5
    assert high == [m for m in results if m["score"] > 0.5]


def test_fixed_size_processor_maps_back_anisotropically(scene):
    """Transformers' resize to a fixed size (aspect ignored; 480x640 by default): 512x320 originals
    (A and B with every row doubled) resized to 256x320 give A and B exactly; the keypoints come back
    in the original pixels, y scaled by 2 and x by 1."""
    from loftr_sfm.model.processing import EfficientLoFTRImageProcessor

    default = pipeline("keypoint-matching", model=scene["ckpt"], device="cpu")
    assert default.image_processor.size == {"height": 480, "width": 640}
    tall = {}
    for name in ("A", "B"):
        tall[name] = scene["dir"] / f"{name}_tall.png"
        Image.fromarray(np.repeat(scene["arrays"][name], 2, axis=0)).save(tall[name])
    km = pipeline("keypoint-matching", model=scene["ckpt"], device="cpu", model_kwargs={"coarse_matching_threshold": 0.0},
                  image_processor=EfficientLoFTRImageProcessor(size={"height": 256, "width": 320}))
    res = km([tall["A"], tall["B"]])
    err = _shift_error(res, (SHIFT[0], 2 * SHIFT[1]))
    assert len(res) >= 100 and np.median(err) <= 0.5, (len(res), np.percentile(err, [50, 90]))
    assert _as_array(res)[:, [1, 3]].max() > 256  # y in the 512-row originals


def test_format_equals_transformers_pipeline_postprocess(scene, matcher):
    """Transformers' own KeypointMatchingPipeline.postprocess on our model's output gives the same
    list (same order, same scores); its x and y are the int32 truncation of ours."""
    pytest.importorskip("transformers")
    from transformers import EfficientLoFTRImageProcessorPil
    from transformers.pipelines.keypoint_matching import KeypointMatchingPipeline

    p = scene["paths"]
    feats = matcher.preprocess((p["A2"], p["B2"]))
    outputs = matcher._forward(feats["image0"], feats["image1"])
    sizes = [tuple(map(tuple, feats["original_sizes"][0].tolist()))]  # (h, w) per image
    hf_self = types.SimpleNamespace(image_processor=EfficientLoFTRImageProcessorPil())
    theirs = KeypointMatchingPipeline.postprocess(hf_self, {"model_outputs": outputs, "target_sizes": sizes}, threshold=0.3)
    ours = matcher([p["A2"], p["B2"]], threshold=0.3)
    assert len(ours) == len(theirs) > 10
    for o, t in zip(ours, theirs):
        assert o.keys() == t.keys() and o["keypoint_image_0"].keys() == t["keypoint_image_0"].keys()
        assert o["score"] == pytest.approx(t["score"], abs=1e-6)
        for k in ("keypoint_image_0", "keypoint_image_1"):
            assert int(o[k]["x"]) == t[k]["x"] and int(o[k]["y"]) == t[k]["y"]


def test_structure_equals_transformers_pipeline_for_one_pair_and_a_list(scene, matcher):
    """Transformers' pipeline end to end (random tiny-input model): one pair -> list of dicts, a list
    of pairs -> list of lists; ours has the same nesting."""
    transformers = pytest.importorskip("transformers")
    from transformers import EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching, EfficientLoFTRImageProcessorPil

    torch.manual_seed(0)
    hf = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig(coarse_matching_threshold=0.0)).eval()
    hf_km = transformers.pipeline("keypoint-matching", model=hf, device="cpu",
                                  image_processor=EfficientLoFTRImageProcessorPil(size={"height": 128, "width": 160}))
    a, b = (Image.open(scene["paths"][n]) for n in ("A", "B"))
    for inputs in ([a, b], [[a, b], [b, a]]):
        theirs, ours = hf_km(inputs), matcher(inputs)
        assert type(theirs) is type(ours) is list and len(theirs[0]) > 0 and len(ours[0]) > 0
        if isinstance(theirs[0], list):
            assert len(ours) == len(theirs) == 2 and all(isinstance(r, list) for r in ours)
            theirs, ours = theirs[0], ours[0]
        assert theirs[0].keys() == ours[0].keys()
        assert {k: v.keys() for k, v in theirs[0].items() if isinstance(v, dict)} == \
            {k: v.keys() for k, v in ours[0].items() if isinstance(v, dict)}


def test_batches_give_the_same_matches_as_one_by_one(scene, matcher):
    p = scene["paths"]
    pairs = [[p["A2"], p["B2"]], [p["A"], p["C"]], [p["B"], p["A"]]]  # two groups of network input sizes
    batched = matcher(pairs, batch_size=3)
    assert len(batched) == 3
    for pair, result in zip(pairs, batched):
        _assert_same(result, matcher(pair, batch_size=1), atol=1e-4)
    # A against its crop C (different sizes): the crop starts at SHIFT in A
    assert np.median(_shift_error(batched[1], SHIFT)) <= 0.5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass


def test_input_types_agree_paths_pil_arrays_tensors_urls(scene, matcher):
    p, arr = scene["paths"], scene["arrays"]
    ref = matcher([str(p["A"]), str(p["B"])])
    handler = functools.partial(_QuietHandler, directory=str(scene["dir"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        variants = {
            "path": [p["A"], p["B"]],
            "pil": [Image.open(p["A"]), Image.open(p["B"])],
            "numpy": [arr["A"], arr["B"]],
            "torch": [torch.from_numpy(arr["A"]), torch.from_numpy(arr["B"])],
            "url": [f"{base}/A.png", f"{base}/B.png"],
            "mixed": (f"{base}/A.png", Image.open(p["B"])),
        }
        for name, inputs in variants.items():
            _assert_same(matcher(inputs), ref)
        with pytest.raises(InputError, match=r"missing\.png.*HTTP Error 404|404.*missing\.png|missing\.png"):
            matcher([f"{base}/missing.png", p["B"]])
    finally:
        server.shutdown()
        server.server_close()


def test_offline_url_gives_a_clear_error(matcher, scene):
    # nothing listens on port 9 of localhost: the same "could not fetch" path as without network
    with pytest.raises(InputError, match=r"http://127\.0\.0\.1:9/a\.jpg: could not fetch .*local path"):
        matcher(["http://127.0.0.1:9/a.jpg", scene["paths"]["B"]], timeout=5)


def test_unknown_task_and_bad_inputs(scene, matcher, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown task 'image-classification'.*keypoint-matching"):
        pipeline("image-classification", model=scene["ckpt"])
    with pytest.raises(InputError, match="without inputs"):
        matcher(None)
    with pytest.raises(InputError, match="pair of images"):
        matcher([scene["paths"]["A"]])
    with pytest.raises(InputError, match="pair of images"):
        matcher([scene["paths"]["A"], scene["paths"]["B"], scene["paths"]["C"]])
    with pytest.raises(InputError, match="pair of images"):
        matcher([[scene["paths"]["A"], 3]])
    with pytest.raises(ImageReadError, match=r"nope\.jpg: file does not exist"):
        matcher([tmp_path / "nope.jpg", scene["paths"]["B"]])
    with pytest.raises(InputError, match="batch_size"):
        matcher([scene["paths"]["A"], scene["paths"]["B"]], batch_size=0)
    with pytest.raises(InputError, match="model must be"):
        pipeline("keypoint-matching", model=123)
    with pytest.raises(InputError, match=r"no_weights\.ckpt.*does not exist"):
        pipeline("keypoint-matching", model=tmp_path / "no_weights.ckpt")


def test_a_loaded_model_and_format_matches_helper(scene):
    from loftr_sfm.model.api import load_model

    model = load_model(scene["ckpt"], "cpu", coarse_matching_threshold=0.0)
    km = pipeline("keypoint-matching", model, max_side=320)
    assert km.model is model
    res = km([scene["paths"]["A"], scene["paths"]["B"]])
    assert np.median(_shift_error(res, SHIFT)) <= 0.5
    out = format_matches(np.array([[1.5, 2.0], [3.0, 4.0]]), np.array([[5.0, 6.0], [7.0, 8.25]]), np.array([0.2, 0.9]))
    assert out == [
        {"keypoint_image_0": {"x": 3.0, "y": 4.0}, "keypoint_image_1": {"x": 7.0, "y": 8.25}, "score": 0.9},
        {"keypoint_image_0": {"x": 1.5, "y": 2.0}, "keypoint_image_1": {"x": 5.0, "y": 6.0}, "score": 0.2},
    ]


def test_from_loftr_sfm_import_pipeline_whatever_was_imported_before():
    """``loftr_sfm.pipeline`` is the function in every import order (no module of the package has its name)."""
    code = (
        "import {first}\n"
        "from loftr_sfm import pipeline\n"
        "from loftr_sfm import reconstruct\n"
        "import loftr_sfm, loftr_sfm.stages, loftr_sfm.keypoint_matching\n"
        "assert callable(pipeline) and pipeline is loftr_sfm.pipeline and callable(reconstruct)\n"
        "try:\n"
        "    loftr_sfm.pipeline('text-generation')\n"
        "except ValueError as e:\n"
        "    assert 'keypoint-matching' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    for first in ("loftr_sfm", "loftr_sfm.stages", "loftr_sfm.keypoint_matching"):
        r = subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True)
        assert r.returncode == 0, (first, r.stderr[-2000:])
