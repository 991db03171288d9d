"""ONNX export of the matcher (``loftr-sfm export-onnx``), run with onnxruntime against our PyTorch model.

Real pairs: two ScanNet pairs of ../shared/data resized to 320x256, and a random-weight model with
BatchNorm statistics calibrated on them (the released weights cannot be downloaded here), written
as an original-layout checkpoint that the CLI exports. Parity: the same coarse matches and
keypoints within 1e-3 px. The dynamic-size graph and other opsets are slow tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from conftest import shared_scene  # noqa: E402
from loftr_sfm.cli import main  # noqa: E402
from loftr_sfm.io import InputError  # noqa: E402
from loftr_sfm.model import onnx_export as OE  # noqa: E402
from loftr_sfm.model.onnx_runtime import OnnxKeypointMatcher  # noqa: E402
from loftr_sfm.model.processing import EfficientLoFTRImageProcessor  # noqa: E402
from test_model_weights import calibrated_random_model  # noqa: E402

SIZE = (320, 256)  # (width, height)
PAIRS = [("scene0711_00_frame-001680.jpg", "scene0711_00_frame-001995.jpg"),
         ("scene0713_00_frame-001320.jpg", "scene0713_00_frame-002025.jpg")]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = shared_scene("scannet_pairs") / "images"
    paths = [[root / a, root / b] for a, b in PAIRS]
    proc = EfficientLoFTRImageProcessor(size={"height": SIZE[1], "width": SIZE[0]}, num_channels=1)
    pv = proc(paths)["pixel_values"]
    im0, im1 = pv[:, 0], pv[:, 1]
    model = calibrated_random_model([im0[:1], im1[:1]], seed=3).reparameterize()
    tmp = tmp_path_factory.mktemp("onnx")
    ckpt = tmp / "calibrated.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    return {"paths": paths, "im0": im0, "im1": im1, "model": model, "ckpt": ckpt, "dir": tmp}


@pytest.fixture(scope="module")
def exported(real):
    """The CLI's export (full preset, default threshold 0: every mutual nearest neighbour), checked by the CLI."""
    out = real["dir"] / "eloftr_320x256.onnx"
    rc = main(["export-onnx", "--weights", str(real["ckpt"]), "--size", f"{SIZE[0]}x{SIZE[1]}", "--threshold", "0", str(out)])
    assert rc == 0 and out.is_file()
    return OnnxKeypointMatcher(out)


def test_cli_export_writes_one_self_described_file(exported):
    import onnx

    proto = onnx.load(str(exported.path), load_external_data=False)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OE.DEFAULT_OPSET]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # weights inside
    assert exported.size == SIZE and exported.threshold == 0.0
    assert exported.metadata["preset"] == "full" and exported.metadata["size"] == "320x256"
    assert exported.config is not None and not exported.config.coarse_matching_skip_softmax
    inputs = {i.name: i.shape for i in exported.session.get_inputs()}
    assert inputs == {"image0": ["batch", 1, 256, 320], "image1": ["batch", 1, 256, 320]}
    assert [i.name for i in exported.session.get_overridable_initializers()] == ["threshold"]
    assert [(o.name, o.shape) for o in exported.session.get_outputs()] == [
        ("keypoints0", ["matches", 2]), ("keypoints1", ["matches", 2]), ("matching_scores", ["matches"]),
        ("batch_indexes", ["matches"]), ("coarse_indexes", ["matches", 2])]


def test_parity_on_real_pairs_one_by_one_and_batched(exported, real):
    model, im0, im1 = real["model"], real["im0"], real["im1"]
    cfg = model.config.replace(coarse_matching_threshold=0.0)
    for k in range(len(im0)):
        rep = OE.compare_with_pytorch(exported, model, im0[k : k + 1], im1[k : k + 1], config=cfg)
        assert rep.matches >= 20 and rep.same_coarse and rep.max_keypoint_diff <= 1e-3, rep
        assert rep.max_score_diff <= 1e-4, rep
    full = OE.compare_with_pytorch(exported, model, im0, im1, config=cfg)  # the dynamic batch axis
    assert full.matches >= 60 and full.same_coarse and full.max_keypoint_diff <= 1e-3, full
    # the threshold is a run-time input: a higher one keeps exactly PyTorch's matches at that threshold
    rep = OE.compare_with_pytorch(exported, model, im0, im1, config=cfg, threshold=0.2)
    assert 0 < rep.matches < full.matches and rep.same_coarse and rep.max_keypoint_diff <= 1e-3, rep


def test_no_match_gives_empty_outputs_without_crashing(exported, real):
    """A threshold above every probability: M = 0. Run in a subprocess, as onnxruntime kernels that
    crash on empty tensors (Einsum: SIGFPE) would take the test process down."""
    np.save(real["dir"] / "im0.npy", real["im0"].numpy())
    np.save(real["dir"] / "im1.npy", real["im1"].numpy())
    code = textwrap.dedent(f"""
        import numpy as np
        from loftr_sfm.model.onnx_runtime import OnnxKeypointMatcher
        m = OnnxKeypointMatcher({str(exported.path)!r})
        d = {str(real["dir"])!r}
        out = m.run(np.load(d + "/im0.npy"), np.load(d + "/im1.npy"), threshold=2.0)
        print({{k: v.shape for k, v in sorted(out.items())}})
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == ("{'batch_indexes': (0,), 'coarse_indexes': (0, 2), 'keypoints0': (0, 2), "
                                "'keypoints1': (0, 2), 'matching_scores': (0,)}")


def test_keypoint_matching_pipeline_runs_the_onnx_file(exported, real):
    """``pipeline(model="x.onnx")``: resized to the graph's size, matches in original pixels, the same
    as the PyTorch pipeline with the same fixed-size processor."""
    from loftr_sfm import pipeline

    onnx_km = pipeline("keypoint-matching", model=exported.path)
    assert onnx_km.image_processor.size == {"height": SIZE[1], "width": SIZE[0]}
    torch_km = pipeline("keypoint-matching", model=real["ckpt"], device="cpu", model_kwargs={"coarse_matching_threshold": 0.0},
                        image_processor=EfficientLoFTRImageProcessor(size={"height": SIZE[1], "width": SIZE[0]}))
    pair = [str(p) for p in real["paths"][0]]
    ours, ref = onnx_km(pair, threshold=0.0), torch_km(pair, threshold=0.0)
    assert len(ours) >= 20 and len(ours) == len(ref)
    a = np.array([[m["keypoint_image_0"]["x"], m["keypoint_image_0"]["y"], m["keypoint_image_1"]["x"],
                   m["keypoint_image_1"]["y"], m["score"]] for m in ours])
    b = np.array([[m["keypoint_image_0"]["x"], m["keypoint_image_0"]["y"], m["keypoint_image_1"]["x"],
                   m["keypoint_image_1"]["y"], m["score"]] for m in ref])
    a, b = a[np.lexsort(a[:, :2].T)], b[np.lexsort(b[:, :2].T)]
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=5e-3)  # 1e-3 input px x ~4 (1296x968 originals)
    np.testing.assert_allclose(a[:, 4], b[:, 4], atol=1e-4)
    with pytest.raises(InputError, match="320x256 inputs only"):
        pipeline("keypoint-matching", model=exported.path, max_side=640)


def test_optimized_preset_parity(real, tmp_path):
    """The optimized preset (logits, no dual softmax, default threshold 25) from the Python call."""
    model = real["model"]
    path = OE.export_onnx(model, tmp_path / "opt.onnx", size=SIZE, optimized=True, check=False)
    m = OnnxKeypointMatcher(path)
    assert m.metadata["preset"] == "optimized" and m.threshold == 25.0 and m.config.coarse_matching_skip_softmax
    cfg = OE._export_config(model, True, None)
    rep = OE.compare_with_pytorch(m, model, real["im0"], real["im1"], config=cfg)
    assert rep.matches >= 3 and rep.same_coarse and rep.max_keypoint_diff <= 1e-3, rep
    assert rep.max_score_diff <= 1e-3, rep  # logits of magnitude ~100


def test_bad_export_options_fail_clearly(real, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export-onnx", "--weights", str(real["ckpt"]), "--size", "640x470", str(out)]) == 2
    assert main(["export-onnx", "--weights", str(real["ckpt"]), "--size", "big", str(out)]) == 2
    assert main(["export-onnx", "--weights", str(tmp_path / "none.ckpt"), str(out)]) == 2
    assert not out.exists()
    with pytest.raises(InputError, match="multiples of 32"):
        OE.parse_size((100, 64))
    with pytest.raises(InputError, match="ONNX file does not exist"):
        OnnxKeypointMatcher(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        OnnxKeypointMatcher(tmp_path / "bad.onnx")


@pytest.mark.slow
def test_dynamic_size_graph_at_several_sizes(real, tmp_path):
    """One graph for every size (multiples of 32): portrait, landscape, tiny (no match), 640x480."""
    model = real["model"]
    path = OE.export_onnx(model, tmp_path / "dyn.onnx", size=SIZE, threshold=0.0, dynamic_size=True)
    m = OnnxKeypointMatcher(path)
    assert m.size is None
    cfg = model.config.replace(coarse_matching_threshold=0.0)
    for h, w in ((480, 640), (640, 480), (64, 96), (256, 320)):
        pv = EfficientLoFTRImageProcessor(size={"height": h, "width": w}, num_channels=1)(real["paths"][0])["pixel_values"]
        rep = OE.compare_with_pytorch(m, model, pv[:, 0], pv[:, 1], config=cfg)
        assert rep.same_coarse and rep.max_keypoint_diff <= 1e-3, (h, w, rep)
        assert rep.matches >= (20 if h >= 256 else 0)


@pytest.mark.slow
@pytest.mark.parametrize("opset", [20, 23])
def test_other_opsets(real, tmp_path, opset):
    model = real["model"]
    path = OE.export_onnx(model, tmp_path / f"o{opset}.onnx", size=SIZE, threshold=0.0, opset=opset)
    cfg = model.config.replace(coarse_matching_threshold=0.0)
    rep = OE.compare_with_pytorch(OnnxKeypointMatcher(path), model, real["im0"], real["im1"], config=cfg)
    assert rep.matches >= 60 and rep.same_coarse and rep.max_keypoint_diff <= 1e-3, rep
