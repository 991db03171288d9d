"""Configuration of the EfficientLoFTR matcher, compatible with Transformers' ``EfficientLoFTRConfig``.

Every field name and default of Transformers 5.24's ``EfficientLoFTRConfig`` is kept, and
:meth:`EfficientLoFTRConfig.to_dict` / :meth:`EfficientLoFTRConfig.from_dict` read and write the
Transformers ``config.json`` layout (``rope_parameters`` dict, derived keys such as
``stage_block_*``, ``fine_fusion_dims``, ``intermediate_size``, ``num_key_value_heads``,
``model_type``, ``architectures``, ``transformers_version``, ``dtype``). Older files with
top-level ``rope_theta`` / ``partial_rotary_factor`` / ``rope_scaling`` are accepted too.

loftr_sfm extras (written to ``config.json`` only when they differ from their default;
Transformers ignores them):

* ``rope_fp16_tables`` (default ``True``): round the RoPE sin/cos tables to float16 exactly like
  the original release (``ropefp16=True``). This gives bit parity with the original through the
  coarse transformer; ``False`` gives fp32 tables (Transformers' behaviour, differences ~1e-3 on
  transformer features of magnitude ~45).
* ``rope_npe`` (default ``None`` = ``[832, 832, 832, 832]``): the original's
  ``[train_h, train_w, test_h, test_w]`` position scaling, positions are multiplied by
  ``train/test``. The paper evaluates MegaDepth with ``[832, 832, L, L]``, L = test long side.
* ``coarse_matching_block_size`` (default ``None`` = automatic): rows of the coarse similarity
  matrix processed per block by the blockwise dual softmax / mutual nearest neighbour (no
  ``L0 x L1`` matrix is ever materialized). ``None`` picks about 8 M elements per block.
* ``mixed_precision`` (default ``None`` = fp32): ``"fp16"`` or ``"bf16"`` autocast for the
  backbone, transformer and fine network (coarse and fine matching always in fp32). On CPU only
  ``"bf16"`` is allowed and it is an opt-in (it changes outputs, see the project notes).
* ``channels_last`` (default ``False``): run the convolutions in ``torch.channels_last`` memory
  format (about 5% faster on CPU, outputs equal within 1e-4).

Restrictions of this implementation (checked by :meth:`validate`, each with a clear message):
4 stages, a single block in stage 0 (the original's ``layer0``), cumulative strides 2/2/4/8
(the fine network fuses the 1/2, 1/4 and 1/8 maps), aggregation kernel == stride,
``fine_kernel_size == 8`` (== coarse stride), the original RoPE layout (4 channels per
frequency over the full hidden vector, i.e. ``head_dim * partial_rotary_factor * 2 ==
hidden_size``), ``rope_type == "default"``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODEL_TYPE = "efficientloftr"
TRANSFORMERS_VERSION = "5.24.0"
ARCHITECTURES = ["EfficientLoFTRForKeypointMatching"]
_ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "swish", "elu", "tanh", "sigmoid")
_DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 4.0}

# Keys of a Transformers config.json that are derived from the fields (recomputed, not read).
_DERIVED_KEYS = (
    "stage_in_channels",
    "stage_block_stride",
    "stage_block_out_channels",
    "stage_block_in_channels",
    "num_key_value_heads",
    "fine_fusion_dims",
    "intermediate_size",
)
# Generic PreTrainedConfig keys that carry nothing for this model (accepted and dropped on read).
_GENERIC_HF_KEYS = (
    "model_type",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
    "use_return_dict",
    "torchscript",
    "pruned_heads",
    "tie_word_embeddings",
    "tf_legacy_loss",
    "use_bfloat16",
)
_EXTRA_FIELDS = (
    "rope_fp16_tables",
    "rope_npe",
    "coarse_matching_block_size",
    "mixed_precision",
    "channels_last",
)


@dataclass
class EfficientLoFTRConfig:
    """Hyper-parameters of EfficientLoFTR (Transformers field names and defaults + loftr_sfm extras).

    ``stage_num_blocks``, ``out_features`` and ``stage_stride`` default to the released model
    ([1, 2, 4, 14], [64, 64, 128, 256], [2, 1, 2, 2]). ``attention_dropout`` and
    ``initializer_range`` are kept for compatibility (inference only: dropout is never applied;
    our random initialization follows the original release: kaiming for convolutions, xavier for
    the transformer). See the module docstring for the extras.
    """

    stage_num_blocks: list[int] | None = None
    out_features: list[int] | None = None
    stage_stride: list[int] | None = None
    hidden_size: int = 256
    activation_function: str = "relu"
    q_aggregation_kernel_size: int = 4
    kv_aggregation_kernel_size: int = 4
    q_aggregation_stride: int = 4
    kv_aggregation_stride: int = 4
    num_attention_layers: int = 4
    num_attention_heads: int = 8
    attention_dropout: float = 0.0
    attention_bias: bool = False
    mlp_activation_function: str = "leaky_relu"
    coarse_matching_skip_softmax: bool = False
    coarse_matching_threshold: float = 0.2
    coarse_matching_temperature: float = 0.1
    coarse_matching_border_removal: int = 2
    fine_kernel_size: int = 8
    batch_norm_eps: float = 1e-5
    rope_parameters: dict[str, Any] | None = None
    fine_matching_slice_dim: int = 8
    fine_matching_regress_temperature: float = 10.0
    initializer_range: float = 0.02
    # --- loftr_sfm extras (see module docstring)
    rope_fp16_tables: bool = True
    rope_npe: list[int] | None = None
    coarse_matching_block_size: int | None = None
    mixed_precision: str | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.stage_num_blocks = list(self.stage_num_blocks) if self.stage_num_blocks is not None else [1, 2, 4, 14]
        self.out_features = list(self.out_features) if self.out_features is not None else [64, 64, 128, 256]
        self.stage_stride = list(self.stage_stride) if self.stage_stride is not None else [2, 1, 2, 2]
        rope = dict(_DEFAULT_ROPE)
        if self.rope_parameters is not None:
            if not isinstance(self.rope_parameters, Mapping):
                raise ValueError(f"rope_parameters must be a dict, got {type(self.rope_parameters).__name__}")
            rope.update(self.rope_parameters)
        rope["rope_theta"] = float(rope["rope_theta"])
        rope["partial_rotary_factor"] = float(rope["partial_rotary_factor"])
        self.rope_parameters = rope
        if self.rope_npe is not None:
            self.rope_npe = [int(v) for v in self.rope_npe]
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def stage_in_channels(self) -> list[int]:
        return [1] + list(self.out_features[:-1])

    @property
    def stage_block_stride(self) -> list[list[int]]:
        return [[s] + [1] * (n - 1) for s, n in zip(self.stage_stride, self.stage_num_blocks)]

    @property
    def stage_block_out_channels(self) -> list[list[int]]:
        return [[self.out_features[i]] * n for i, n in enumerate(self.stage_num_blocks)]

    @property
    def stage_block_in_channels(self) -> list[list[int]]:
        outs = self.stage_block_out_channels
        return [[self.stage_in_channels[i]] + outs[i][:-1] for i in range(len(self.stage_num_blocks))]

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    @property
    def fine_fusion_dims(self) -> list[int]:
        return list(reversed(self.out_features))[:-1]

    @property
    def intermediate_size(self) -> int:
        return self.hidden_size * 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    @property
    def partial_rotary_factor(self) -> float:
        return float(self.rope_parameters["partial_rotary_factor"])

    @property
    def fine_dim(self) -> int:
        """Channels of the full-resolution fine feature map (out_features[1], 64)."""
        return self.out_features[1]

    @property
    def coarse_stride(self) -> int:
        """Downsampling of the coarse map (8)."""
        return math.prod(self.stage_stride)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (32 by default)."""
        agg = math.lcm(self.q_aggregation_stride, self.kv_aggregation_stride)
        return self.coarse_stride * agg

    @property
    def npe(self) -> list[int]:
        return list(self.rope_npe) if self.rope_npe is not None else [832, 832, 832, 832]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError with a clear message for combinations this network cannot build."""
        n = len(self.stage_num_blocks)
        if not (len(self.out_features) == len(self.stage_stride) == n):
            raise ValueError(
                "stage_num_blocks, out_features and stage_stride must have the same length (one entry per "
                f"backbone stage); got {self.stage_num_blocks}, {self.out_features}, {self.stage_stride}"
            )
        if n != 4:
            raise ValueError(f"the EfficientLoFTR backbone has exactly 4 stages, got {n} (stage_num_blocks={self.stage_num_blocks})")
        if any(int(b) < 1 for b in self.stage_num_blocks):
            raise ValueError(f"every stage needs at least one block, got stage_num_blocks={self.stage_num_blocks}")
        if self.stage_num_blocks[0] != 1:
            raise ValueError(
                f"stage 0 must have exactly one block (the original's backbone.layer0), got {self.stage_num_blocks[0]}"
            )
        if any(int(c) < 1 for c in self.out_features):
            raise ValueError(f"out_features must be positive, got {self.out_features}")
        cum, prod = [], 1
        for s in self.stage_stride:
            prod *= int(s)
            cum.append(prod)
        if cum != [2, 2, 4, 8]:
            raise ValueError(
                "stage_stride must give cumulative strides 2, 2, 4, 8 (1/2, 1/2, 1/4, 1/8 maps fused by the fine "
                f"network), got stage_stride={self.stage_stride} (cumulative {cum})"
            )
        if self.hidden_size != self.out_features[-1]:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must equal the last value of out_features ({self.out_features[-1]})"
            )
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.num_attention_layers < 1:
            raise ValueError(f"num_attention_layers must be >= 1, got {self.num_attention_layers}")
        for name in ("q", "kv"):
            k = getattr(self, f"{name}_aggregation_kernel_size")
            s = getattr(self, f"{name}_aggregation_stride")
            if k < 1 or k != s:
                raise ValueError(
                    f"{name}_aggregation_kernel_size ({k}) must equal {name}_aggregation_stride ({s}) and be >= 1 "
                    "(the aggregated attention upsamples its message by the stride)"
                )
        if self.q_aggregation_stride != self.kv_aggregation_stride:
            raise ValueError(
                "q_aggregation_stride and kv_aggregation_stride must be equal (self-attention layers attend "
                f"between the two aggregated grids), got {self.q_aggregation_stride} and {self.kv_aggregation_stride}"
            )
        for name in ("activation_function", "mlp_activation_function"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(f"{name} must be one of {list(_ACTIVATIONS)}, got {getattr(self, name)!r}")
        if self.fine_kernel_size != self.coarse_stride:
            raise ValueError(
                f"fine_kernel_size ({self.fine_kernel_size}) must equal the coarse stride ({self.coarse_stride}): "
                "the fine windows tile the image like the original's unfold(kernel 8, stride 8)"
            )
        if not 0 < self.fine_matching_slice_dim < self.fine_dim:
            raise ValueError(
                f"fine_matching_slice_dim ({self.fine_matching_slice_dim}) must be > 0 and smaller than the fine "
                f"feature dimension out_features[1] ({self.fine_dim})"
            )
        if self.coarse_matching_temperature <= 0:
            raise ValueError(f"coarse_matching_temperature must be > 0, got {self.coarse_matching_temperature}")
        if self.fine_matching_regress_temperature <= 0:
            raise ValueError(
                f"fine_matching_regress_temperature must be > 0, got {self.fine_matching_regress_temperature}"
            )
        if self.coarse_matching_border_removal < 0:
            raise ValueError(f"coarse_matching_border_removal must be >= 0, got {self.coarse_matching_border_removal}")
        rope = self.rope_parameters
        if rope.get("rope_type", "default") != "default" or rope.get("rope_scaling") not in (None, {}):
            raise ValueError(
                f"only rope_type 'default' without rope_scaling is supported (the original RoPE), got {rope}"
            )
        rot_dim = int(self.head_dim * self.partial_rotary_factor)
        if rot_dim % 2 or 2 * rot_dim != self.hidden_size:
            raise ValueError(
                "the original RoPE layout rotates the full hidden vector with 4 channels per frequency, which needs "
                f"head_dim * partial_rotary_factor * 2 == hidden_size; got head_dim {self.head_dim}, "
                f"partial_rotary_factor {self.partial_rotary_factor}, hidden_size {self.hidden_size}"
            )
        if self.rope_npe is not None and (len(self.rope_npe) != 4 or min(self.rope_npe) <= 0):
            raise ValueError(f"rope_npe must be 4 positive ints [train_h, train_w, test_h, test_w], got {self.rope_npe}")
        if self.coarse_matching_block_size is not None and self.coarse_matching_block_size < 1:
            raise ValueError(f"coarse_matching_block_size must be >= 1 or None, got {self.coarse_matching_block_size}")
        if self.mixed_precision not in (None, "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be None, 'fp16' or 'bf16', got {self.mixed_precision!r}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def optimized(cls, threshold: float = 25.0, **overrides: Any) -> "EfficientLoFTRConfig":
        """The paper's "optimized" mode: no dual softmax, the raw logit is thresholded.

        ``threshold`` is a logit (original code default 25; the paper's evaluation scripts use 20).
        Same weights as the full model.
        """
        overrides.setdefault("coarse_matching_skip_softmax", True)
        overrides.setdefault("coarse_matching_threshold", float(threshold))
        return cls(**overrides)

    def replace(self, **changes: Any) -> "EfficientLoFTRConfig":
        """A validated copy with some fields changed (unknown names raise ValueError)."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"unknown EfficientLoFTRConfig option(s) {unknown}; valid options: {sorted(valid)}")
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        values.update(changes)
        return type(self)(**values)

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """The Transformers ``config.json`` layout (plus non-default loftr_sfm extras)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = copy.deepcopy(getattr(self, f.name))
            if f.name in _EXTRA_FIELDS:
                if value != f.default:
                    out[f.name] = value
                continue
            out[f.name] = value
        out["rope_parameters"] = {k: self.rope_parameters[k] for k in sorted(self.rope_parameters)}
        for key in _DERIVED_KEYS:
            out[key] = copy.deepcopy(getattr(self, key))
        out["model_type"] = MODEL_TYPE
        out["architectures"] = list(ARCHITECTURES)
        out["dtype"] = "float32"
        out["transformers_version"] = TRANSFORMERS_VERSION
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> "EfficientLoFTRConfig":
        """Build from a Transformers ``config.json`` dict (current or older layout) or our own dict.

        Derived and generic Transformers keys are accepted and dropped; derived keys that
        contradict the fields raise ValueError; other unknown keys are ignored with a warning.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an EfficientLoFTR config must be a dict, got {type(data).__name__}")
        data = dict(data)
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config.json has model_type {model_type!r}, expected {MODEL_TYPE!r}")
        data.update(overrides)
        rope = dict(data.pop("rope_parameters", None) or {})
        for key in ("rope_theta", "partial_rotary_factor"):
            if key in data:
                rope.setdefault(key, data.pop(key))
        if data.get("rope_scaling") not in (None, {}):
            rope["rope_scaling"] = data.pop("rope_scaling")
        data.pop("rope_scaling", None)
        valid = {f.name for f in dataclasses.fields(cls)}
        derived = {k: data.pop(k) for k in _DERIVED_KEYS if k in data}
        for key in _GENERIC_HF_KEYS:
            data.pop(key, None)
        unknown = sorted(set(data) - valid)
        if unknown:
            logger.warning("ignoring unknown EfficientLoFTR config keys %s", unknown)
            for key in unknown:
                data.pop(key)
        config = cls(**data, rope_parameters=rope or None)
        for key, value in derived.items():
            if value != getattr(config, key):
                raise ValueError(
                    f"config key {key}={value} contradicts the other fields (they give {getattr(config, key)})"
                )
        return config

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/config.json`` (created if needed) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json_string())
        tmp.replace(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "EfficientLoFTRConfig":
        """Read a ``config.json`` file or a directory holding one (Transformers layout)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no EfficientLoFTR config at {file} (expected a config.json or a folder with one)")
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file} is not a readable JSON config: {exc}") from exc
        try:
            return cls.from_dict(data, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from exc
