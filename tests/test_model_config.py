"""EfficientLoFTRConfig: Transformers defaults and config.json layout, validation, presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loftr_sfm.model.config import EfficientLoFTRConfig

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "notes" / "eloftr_keys" / "hf_config.json"

HF_DEFAULTS = {
    "stage_num_blocks": [1, 2, 4, 14],
    "out_features": [64, 64, 128, 256],
    "stage_stride": [2, 1, 2, 2],
    "hidden_size": 256,
    "activation_function": "relu",
    "q_aggregation_kernel_size": 4,
    "kv_aggregation_kernel_size": 4,
    "q_aggregation_stride": 4,
    "kv_aggregation_stride": 4,
    "num_attention_layers": 4,
    "num_attention_heads": 8,
    "attention_dropout": 0.0,
    "attention_bias": False,
    "mlp_activation_function": "leaky_relu",
    "coarse_matching_skip_softmax": False,
    "coarse_matching_threshold": 0.2,
    "coarse_matching_temperature": 0.1,
    "coarse_matching_border_removal": 2,
    "fine_kernel_size": 8,
    "batch_norm_eps": 1e-5,
    "fine_matching_slice_dim": 8,
    "fine_matching_regress_temperature": 10.0,
    "initializer_range": 0.02,
}


def test_defaults_match_transformers_issue_list():
    cfg = EfficientLoFTRConfig()
    for key, value in HF_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    assert cfg.rope_theta == 10000.0 and cfg.partial_rotary_factor == 4.0
    assert cfg.fine_fusion_dims == [256, 128, 64]
    assert cfg.intermediate_size == 512 and cfg.num_key_value_heads == 8
    assert cfg.stage_block_stride[3] == [2] + [1] * 13
    assert cfg.size_multiple == 32


def test_sample_hf_config_round_trips(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} not available")
    data = json.loads(SAMPLE.read_text())
    cfg = EfficientLoFTRConfig.from_dict(data)
    assert cfg.to_dict() == data
    path = cfg.save_pretrained(tmp_path / "m")
    assert json.loads(path.read_text()) == data
    assert EfficientLoFTRConfig.from_pretrained(tmp_path / "m") == cfg
    assert EfficientLoFTRConfig.from_pretrained(path) == cfg


def test_transformers_reads_our_config_and_we_read_theirs(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = EfficientLoFTRConfig(coarse_matching_threshold=0.1, coarse_matching_border_removal=1, rope_fp16_tables=False)
    ours.save_pretrained(tmp_path)
    theirs = transformers.EfficientLoFTRConfig.from_pretrained(tmp_path)
    assert theirs.coarse_matching_threshold == 0.1 and theirs.coarse_matching_border_removal == 1
    assert theirs.fine_fusion_dims == ours.fine_fusion_dims
    theirs.save_pretrained(tmp_path / "hf")
    back = EfficientLoFTRConfig.from_pretrained(tmp_path / "hf")
    # our extra survives in their file (they keep unknown keys); every Transformers field equal
    assert back == ours


def test_older_layout_and_extras():
    old = dict(HF_DEFAULTS, rope_theta=10000.0, partial_rotary_factor=4.0, rope_scaling=None, torch_dtype="float32")
    cfg = EfficientLoFTRConfig.from_dict(old)
    assert cfg == EfficientLoFTRConfig()
    cfg = EfficientLoFTRConfig(rope_npe=[832, 832, 1152, 1152], coarse_matching_block_size=64)
    d = cfg.to_dict()
    assert d["rope_npe"] == [832, 832, 1152, 1152] and d["coarse_matching_block_size"] == 64
    assert "channels_last" not in d  # default extras are not written
    assert EfficientLoFTRConfig.from_dict(d) == cfg


def test_optimized_preset():
    cfg = EfficientLoFTRConfig.optimized()
    assert cfg.coarse_matching_skip_softmax is True and cfg.coarse_matching_threshold == 25.0
    assert EfficientLoFTRConfig.optimized(threshold=20).coarse_matching_threshold == 20.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 128}, "hidden_size"),
        ({"num_attention_heads": 7}, "must divide hidden_size"),
        ({"fine_matching_slice_dim": 64}, "fine_matching_slice_dim"),
        ({"stage_num_blocks": [1, 2, 4]}, "same length"),
        ({"stage_stride": [2, 2, 2, 2]}, "cumulative"),
        ({"q_aggregation_kernel_size": 2}, "must equal q_aggregation_stride"),
        ({"fine_kernel_size": 6}, "fine_kernel_size"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"mlp_activation_function": "nope"}, "mlp_activation_function"),
    ],
)
def test_invalid_combinations_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EfficientLoFTRConfig(**kwargs)


def test_from_dict_rejects_contradicting_derived_keys_and_wrong_model_type():
    d = EfficientLoFTRConfig().to_dict()
    d["intermediate_size"] = 1024
    with pytest.raises(ValueError, match="intermediate_size"):
        EfficientLoFTRConfig.from_dict(d)
    d = EfficientLoFTRConfig().to_dict()
    d["model_type"] = "superglue"
    with pytest.raises(ValueError, match="model_type"):
        EfficientLoFTRConfig.from_dict(d)
