"""Weights: key maps between the three published layouts, readers for every container, the safe
unpickling fallback, the offline hub error, and (with the model) from_pretrained/save_pretrained.

Checkpoints are written here from random weights in the EXACT published key layouts; the writers
are checked against the key lists in ../shared/notes/eloftr_keys/ when those notes are present
(and against the shape table in ``weights.canonical_shapes`` otherwise).
"""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from loftr_sfm.model import weights as W

NOTES = Path(__file__).resolve().parents[2] / "shared" / "notes" / "eloftr_keys"
HAVE_MODEL = importlib.util.find_spec("loftr_sfm.model.efficientloftr") is not None


# --------------------------------------------------------------------------- writers (test helpers)


def random_canonical_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random training-form weights with canonical names (exact released shapes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in W.canonical_shapes().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000 + len(sd), dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


def write_original_ckpt(path: Path, sd: dict[str, torch.Tensor], pl13_callbacks: bool = False) -> Path:
    """The original release's Lightning container: ``state_dict`` with ``matcher.`` keys plus
    optimizer / scheduler state; with ``pl13_callbacks`` the ``callbacks`` dict is keyed by a class
    from a module that does not exist at load time (an unstripped PyTorch-Lightning 1.3 file)."""
    ckpt = {
        "epoch": 29,
        "global_step": 123456,
        "pytorch-lightning_version": "1.3.5",
        "state_dict": collections.OrderedDict((f"matcher.{k}", v) for k, v in sd.items()),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.004, "params": [0, 1]}]}],
        "lr_schedulers": [{"milestones": collections.Counter({8: 1, 12: 1}), "last_epoch": 29}],
    }
    if not pl13_callbacks:
        torch.save(ckpt, path)
        return path
    modname = "pytorch_lightning_fake_for_test.callbacks.model_checkpoint"
    mod = types.ModuleType(modname)

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = torch.tensor(0.5)

    class AttributeDict(dict):  # Lightning's hyper-parameter container (a dict subclass)
        pass

    class HookList(list):
        pass

    for cls, name in ((ModelCheckpoint, "ModelCheckpoint"), (AttributeDict, "AttributeDict"), (HookList, "HookList")):
        cls.__module__ = modname
        cls.__qualname__ = name
        setattr(mod, name, cls)
    parts = modname.split(".")
    added = [".".join(parts[: i + 1]) for i in range(len(parts))]
    for name in added[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[modname] = mod
    try:
        ckpt["callbacks"] = {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "monitor": "auc@10"}}
        ckpt["hparams_obj"] = ModelCheckpoint()
        ckpt["hyper_parameters"] = AttributeDict(lr=0.004, matcher={"thr": 0.2})
        ckpt["hooks"] = HookList([1, 2, 3])
        torch.save(ckpt, path)
    finally:
        for name in added:
            del sys.modules[name]
    return path


def write_hf_dir(directory: Path, sd: dict[str, torch.Tensor], prefix: str = "efficientloftr.") -> Path:
    """Transformers layout: config.json + model.safetensors (447 tensors incl. num_batches_tracked)."""
    from safetensors.torch import save_file

    from loftr_sfm.model.config import EfficientLoFTRConfig

    directory.mkdir(parents=True, exist_ok=True)
    hf = W.canonical_to_hf(sd, prefix=prefix)
    save_file(hf, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(EfficientLoFTRConfig().to_json_string())
    return directory


def reparam_key_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of an upstream ``reparameter()``-ed state dict: each block -> rbr_reparam.{weight,bias}."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.") and ".rbr_" in k:
            block = k.split(".rbr_")[0]
            if k.endswith("rbr_dense.conv.weight"):
                out[f"{block}.rbr_reparam.weight"] = torch.randn(v.shape) * 0.1
                out[f"{block}.rbr_reparam.bias"] = torch.randn(v.shape[0]) * 0.1
            continue
        out[k] = v
    return out


def calibrated_random_model(images, seed: int = 0, config=None):
    """Random-weight matcher (training form) that behaves like a trained one numerically
    (recipe of ../shared/notes/eloftr.md): seeded init, randomized BatchNorm/LayerNorm affines,
    BatchNorm statistics calibrated by one cumulative train-mode pass of the backbone and the fine
    FPN on ``images`` (list of (1, 1, H, W) tensors in [0, 1], e.g. the pair under test).
    """
    from torch import nn

    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    torch.manual_seed(seed)
    model = EfficientLoFTRForKeypointMatching(config)
    g = torch.Generator().manual_seed(seed + 1)
    bns = []
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None  # cumulative average
                bns.append(mod)
        model.train()
        for img in images:
            x1, x2, c = model.backbone(img)
            model.eval()
            c0, _, _ = model.loftr_coarse(c.contiguous(), c.contiguous())
            model.train()
            model.fine_preprocess(c0 / c0.shape[1] ** 0.5, x2, x1)
        for mod in bns:
            mod.momentum = 0.1
    return model.eval()


# --------------------------------------------------------------------------- key maps


def _note_keys(name: str) -> list[str]:
    path = NOTES / name
    if not path.is_file():
        pytest.skip(f"key list {path} not available")
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_canonical_shapes_equal_original_key_list():
    rows = [line.split("\t") for line in _note_keys("original_ckpt_state_dict.txt")]
    expected = {k[len("matcher."):]: tuple(ast.literal_eval(s)) for k, s in rows}
    shapes = W.canonical_shapes()
    assert len(shapes) == 447
    assert list(shapes) == list(expected)  # same keys in the same order
    assert shapes == expected  # same shapes
    n_params = sum(int(torch.tensor(s).prod()) for k, s in shapes.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == 16_025_216


def test_hf_key_map_is_a_bijection_onto_published_list():
    hf_keys = _note_keys("hf_model_safetensors.txt")
    shapes = W.canonical_shapes()
    mapped = [W.canonical_key_to_hf(k) for k in shapes]
    assert len(set(mapped)) == 447
    assert set(mapped) == set(hf_keys)
    # inverse, with both prefixes
    assert {W.hf_key_to_canonical(k) for k in hf_keys} == set(shapes)
    old = [("model." + k[len("efficientloftr."):]) if k.startswith("efficientloftr.") else k for k in hf_keys]
    assert {W.hf_key_to_canonical(k) for k in old} == set(shapes)


def test_key_map_examples():
    assert W.canonical_key_to_hf("loftr_coarse.layers.3.merge.weight") == \
        "efficientloftr.local_feature_transformer.layers.1.cross_attention.attention.o_proj.weight"
    assert W.canonical_key_to_hf("backbone.layer0.rbr_1x1.bn.running_var") == \
        "efficientloftr.backbone.stages.0.blocks.0.conv2.norm.running_var"
    assert W.canonical_key_to_hf("fine_preprocess.layer1_outconv2.1.weight") == \
        "refinement_layer.out_conv_layers.1.batch_norm.weight"
    assert W.hf_key_to_canonical("efficientloftr.backbone.stages.3.blocks.13.identity.bias") == \
        "backbone.layer3.13.rbr_identity.bias"
    with pytest.raises(KeyError):
        W.canonical_key_to_hf("backbone.layer3.13.rbr_reparam.weight")


# --------------------------------------------------------------------------- readers


def _check_canonical(sd_loaded, sd_ref):
    ref = {k: v for k, v in sd_ref.items() if not k.endswith("num_batches_tracked")}
    assert set(sd_loaded) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd_loaded[k], v), k


def test_read_original_ckpt_weights_only(tmp_path):
    sd = random_canonical_state_dict(1)
    path = write_original_ckpt(tmp_path / "eloftr_outdoor.ckpt", sd)
    raw, cfg = W.read_weights_file(path)
    assert cfg is None and len(raw) == 447 and all(k.startswith("matcher.") for k in raw)
    canon, form = W.to_canonical(raw)
    assert form == "training"
    _check_canonical(canon, sd)


def test_read_pl13_checkpoint_through_safe_fallback(tmp_path, caplog):
    sd = random_canonical_state_dict(2)
    path = write_original_ckpt(tmp_path / "pl13.ckpt", sd, pl13_callbacks=True)
    # weights_only refuses it, and the class's module does not exist
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)
    with caplog.at_level("INFO", logger="loftr_sfm.model.weights"):
        raw, _ = W.read_weights_file(path)
    assert "restricted unpickler" in caplog.text and "pytorch_lightning_fake_for_test" in caplog.text
    canon, form = W.to_canonical(raw)
    assert form == "training"
    _check_canonical(canon, sd)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    sd = {f"matcher.{k}": v for k, v in random_canonical_state_dict(3).items()}
    for i, payload in enumerate([_Evil(marker), _EvalEvil()]):
        path = tmp_path / f"evil{i}.ckpt"
        torch.save({"state_dict": sd, "callbacks": {"x": payload}, "hook": payload}, path)
        raw, _ = W.read_weights_file(path)  # loads the weights, the payload becomes an inert stub
        assert len(raw) == 447
    # a pure pickle (no torch zip container) whose only content is the payload
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_Evil(marker), f)
    with pytest.raises(W.CheckpointError, match="evil.pkl"):
        W.read_weights_file(path)
    assert not marker.exists()
    obj = W.safe_torch_load(tmp_path / "evil0.ckpt")
    assert isinstance(obj["hook"], W._InertStub) and "system" in repr(obj["hook"])


def test_read_hf_directory_both_prefixes_and_safetensors_file(tmp_path):
    sd = random_canonical_state_dict(4)
    for prefix in ("efficientloftr.", "model."):
        d = write_hf_dir(tmp_path / prefix.strip("."), sd, prefix=prefix)
        from safetensors import safe_open

        with safe_open(str(d / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
            assert len(keys) == 447
            assert sum(k.endswith("num_batches_tracked") for k in keys) == 62
        raw, cfg = W.read_weights_file(d)
        assert cfg["model_type"] == "efficientloftr"
        canon, form = W.to_canonical(raw)
        assert form == "training"
        _check_canonical(canon, sd)
        raw2, cfg2 = W.read_weights_file(d / "model.safetensors")  # file directly (config beside it)
        assert set(raw2) == set(raw) and cfg2 == cfg


def test_hf_writer_matches_published_key_list(tmp_path):
    hf_keys = _note_keys("hf_model_safetensors.txt")
    d = write_hf_dir(tmp_path / "hf", random_canonical_state_dict(5))
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert keys == set(hf_keys)
    for k, s in W.canonical_shapes().items():
        assert shapes[W.canonical_key_to_hf(k)] == s


def test_read_bare_and_reparameterized_state_dicts(tmp_path):
    sd = random_canonical_state_dict(6)
    torch.save(sd, tmp_path / "bare.pth")
    canon, form = W.to_canonical(W.read_weights_file(tmp_path / "bare.pth")[0])
    assert form == "training"
    _check_canonical(canon, sd)
    rep = {f"matcher.{k}": v for k, v in reparam_key_layout(sd).items()}
    assert len(rep) == 147  # the published count of a re-parameterized original state dict
    torch.save({"state_dict": rep}, tmp_path / "reparam.ckpt")
    canon, form = W.to_canonical(W.read_weights_file(tmp_path / "reparam.ckpt")[0])
    assert form == "reparameterized"
    assert sum(".rbr_reparam." in k for k in canon) == 2 * 21
    with pytest.raises(W.CheckpointError, match="training form"):
        W.canonical_to_hf(canon)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(W.CheckpointError, match="garbage.ckpt"):
        W.read_weights_file(tmp_path / "garbage.ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(W.CheckpointError, match="bad.safetensors"):
        W.read_weights_file(tmp_path / "bad.safetensors")
    torch.save({"epoch": 3, "something": [1, 2]}, tmp_path / "nostate.ckpt")
    with pytest.raises(W.CheckpointError, match="no state dict"):
        W.read_weights_file(tmp_path / "nostate.ckpt")
    with pytest.raises(W.CheckpointError, match="does not exist"):
        W.resolve_weights_path(tmp_path / "missing.ckpt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(W.CheckpointError, match="emptydir"):
        W.read_weights_file(tmp_path / "emptydir")


def test_hub_id_offline_gives_one_clear_error(tmp_path):
    # offline (forced, with an empty cache, so the test is the same on machines with hub access)
    with pytest.raises(W.CheckpointError) as exc:
        W.resolve_weights_path("zju-community/efficientloftr", cache_dir=tmp_path, local_files_only=True)
    msg = str(exc.value)
    assert "zju-community/efficientloftr" in msg and "pass a local file" in msg and "eloftr_outdoor.ckpt" in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    # a real hub request (unreachable here; a missing repository elsewhere): the same single error
    with pytest.raises(W.CheckpointError, match="pass a local file"):
        W.resolve_weights_path("loftr-sfm-tests/no-such-weights-repo", cache_dir=tmp_path)
    assert W.looks_like_hub_id("zju-community/efficientloftr")
    assert not W.looks_like_hub_id("weights/eloftr_outdoor.ckpt")


# --------------------------------------------------------------------------- with the model


needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="loftr_sfm.model.efficientloftr not written yet")


def _model_cls():
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    return EfficientLoFTRForKeypointMatching


def _assert_model_holds(model, sd):
    msd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(msd[k], v), k


def _upstream_reparam_state_dict(sd):
    """What upstream saves after ``reparameter(matcher)``: fused backbone, FPN BatchNorm NOT folded."""
    m = _model_cls()()
    m.load_state_dict({k: v for k, v in sd.items()})
    m.reparameterize()
    fused = {k: v for k, v in m.state_dict().items() if k.startswith("backbone.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**fused, **rest}


@pytest.fixture(scope="module")
def rand_sd():
    return random_canonical_state_dict(11)


@needs_model
def test_from_pretrained_every_layout_gives_the_same_model(tmp_path, rand_sd):
    cls = _model_cls()
    # (every container was read at the state-dict level above; here one file per family goes into the model)
    files = {
        "ckpt": write_original_ckpt(tmp_path / "eloftr_outdoor.ckpt", rand_sd),
        "pl13": write_original_ckpt(tmp_path / "pl13.ckpt", rand_sd, pl13_callbacks=True),
        "hf_old_st_file": write_hf_dir(tmp_path / "hf_old", rand_sd, prefix="model.") / "model.safetensors",
    }
    torch.save(rand_sd, tmp_path / "bare.pth")
    files["bare"] = tmp_path / "bare.pth"
    for name in ("pl13", "hf_old_st_file", "bare"):
        path = files[name]
        m = cls.from_pretrained(path, reparameterize=False)
        assert not m.is_reparameterized and not m.training, name
        _assert_model_holds(m, rand_sd)
    # re-parameterized at load == re-parameterized file (upstream layout, unfolded FPN BN)
    ref = cls.from_pretrained(files["ckpt"])  # default reparameterize=True
    assert ref.is_reparameterized
    rep = _upstream_reparam_state_dict(rand_sd)
    assert sum(not k.endswith("num_batches_tracked") for k in rep) == 147 - 2  # upstream's 147 minus 2 nbt
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in rep.items()}}, tmp_path / "reparam.ckpt")
    torch.save(ref.state_dict(), tmp_path / "ours_fused.pth")  # our own fused form (FPN BatchNorm folded)
    m = cls.from_pretrained(tmp_path / "ours_fused.pth", reparameterize=False)
    assert m.is_reparameterized
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    for reparam in (True, False):  # a fused file always gives a fused model
        m = cls.from_pretrained(tmp_path / "reparam.ckpt", reparameterize=reparam)
        assert m.is_reparameterized
        a, b = ref.state_dict(), m.state_dict()
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)


@needs_model
def test_save_pretrained_writes_exact_transformers_layout(tmp_path, rand_sd):
    from safetensors import safe_open

    from loftr_sfm.model.config import EfficientLoFTRConfig

    cls = _model_cls()
    m = cls.from_pretrained(write_original_ckpt(tmp_path / "e.ckpt", rand_sd), reparameterize=False,
                            coarse_matching_threshold=0.1)
    out = m.save_pretrained(tmp_path / "saved")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    assert len(keys) == 447 and sum(k.endswith("num_batches_tracked") for k in keys) == 62
    if (NOTES / "hf_model_safetensors.txt").is_file():
        assert keys == set(_note_keys("hf_model_safetensors.txt"))
    for k, v in rand_sd.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(tensors[W.canonical_key_to_hf(k)], v), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "efficientloftr" and cfg["coarse_matching_threshold"] == 0.1
    assert EfficientLoFTRConfig.from_dict(cfg).coarse_matching_threshold == 0.1
    again = cls.from_pretrained(out, reparameterize=False)  # config.json is read back
    assert again.config.coarse_matching_threshold == 0.1
    _assert_model_holds(again, rand_sd)
    with pytest.raises(W.CheckpointError, match="training form"):
        cls.from_pretrained(out).save_pretrained(tmp_path / "fails")


@needs_model
def test_convert_original_checkpoint(tmp_path, rand_sd):
    src = write_original_ckpt(tmp_path / "eloftr_outdoor.ckpt", rand_sd, pl13_callbacks=True)
    dst = W.convert_original_checkpoint(src, tmp_path / "converted")
    assert (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    raw, cfg = W.read_weights_file(dst)
    assert len(raw) == 447 and all(k.startswith(("efficientloftr.", "refinement_layer.")) for k in raw)
    _assert_model_holds(_model_cls().from_pretrained(dst, reparameterize=False), rand_sd)
    rep = {f"matcher.{k}": v for k, v in _upstream_reparam_state_dict(rand_sd).items()}
    torch.save({"state_dict": rep}, tmp_path / "reparam.ckpt")
    with pytest.raises(W.CheckpointError, match="re-parameterized"):
        W.convert_original_checkpoint(tmp_path / "reparam.ckpt", tmp_path / "nope")


@needs_model
def test_wrong_files_list_missing_and_unexpected_keys(tmp_path, rand_sd):
    cls = _model_cls()
    sd = dict(rand_sd)
    del sd["loftr_coarse.layers.5.merge.weight"]
    sd["loftr_coarse.layers.9.merge.weight"] = torch.zeros(256, 256)
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in sd.items()}}, tmp_path / "wrong.ckpt")
    with pytest.raises(W.CheckpointError) as exc:
        cls.from_pretrained(tmp_path / "wrong.ckpt")
    msg = str(exc.value)
    assert "wrong.ckpt" in msg and "missing 1 key(s): loftr_coarse.layers.5.merge.weight" in msg
    assert "unexpected 1 key(s): loftr_coarse.layers.9.merge.weight" in msg
    sd = dict(rand_sd)
    sd["fine_preprocess.layer3_outconv.weight"] = torch.zeros(128, 256, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(W.CheckpointError, match=r"shape.pth.*shape mismatch.*layer3_outconv"):
        cls.from_pretrained(tmp_path / "shape.pth")
    with pytest.raises(W.CheckpointError, match="local file"):
        cls.from_pretrained("loftr-sfm-tests/no-such-weights-repo")
    with pytest.raises(ValueError, match="unknown"):
        cls.from_pretrained(write_original_ckpt(tmp_path / "ok.ckpt", rand_sd), coarse_matching_treshold=0.1)


@needs_model
def test_backbone_model_loads_from_full_checkpoints(tmp_path, rand_sd):
    """EfficientLoFTRModel (backbone + transformer) takes the matcher's files and ignores the fine part;
    a bare Transformers EfficientLoFTRModel state dict (no prefix) is recognized too."""
    from loftr_sfm.model.efficientloftr import EfficientLoFTRModel

    m = EfficientLoFTRModel.from_pretrained(write_hf_dir(tmp_path / "hf", rand_sd), reparameterize=False)
    assert not any(k.startswith("fine_preprocess.") for k in m.state_dict())
    _assert_model_holds(m, {k: v for k, v in rand_sd.items() if not k.startswith("fine_preprocess.")})
    bare = {k[len("efficientloftr."):]: v for k, v in W.canonical_to_hf(rand_sd).items() if k.startswith("efficientloftr.")}
    assert W.is_hf_layout(bare)
    canon, form = W.to_canonical(bare)
    assert form == "training" and set(canon) == {k for k in rand_sd if not k.startswith("fine_preprocess.")
                                                 and not k.endswith("num_batches_tracked")}
