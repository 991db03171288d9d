"""Loading and saving EfficientLoFTR weights in every published layout.

Three key layouts exist (details: ``../shared/notes/eloftr.md`` section 4):

* **original** (``eloftr_outdoor.ckpt``): a PyTorch-Lightning container whose ``state_dict``
  keys start with ``matcher.``; RepVGG blocks in *training form* (``rbr_dense``, ``rbr_1x1``,
  ``rbr_identity``); 447 entries including 62 ``num_batches_tracked``.
* **Transformers** (``zju-community/efficientloftr``: ``config.json`` + ``model.safetensors``):
  ``efficientloftr.`` (or, from the older conversion script, ``model.``) prefix for the
  backbone and transformer, ``refinement_layer.`` for the fine FPN; 447 tensors.
* **re-parameterized original** (saved after upstream's ``reparameter()``): every backbone block
  is one ``rbr_reparam`` conv with bias (147 entries).

loftr_sfm's *canonical* names are the original ones without ``matcher.`` (the parameter names
of :class:`~loftr_sfm.model.efficientloftr.EfficientLoFTRForKeypointMatching`).
:func:`to_canonical` maps any layout to them, :func:`canonical_to_hf` maps the training form to
the Transformers layout. ``num_batches_tracked`` is ignored on load (it has no effect at
inference) and written on save (Transformers' ``save_pretrained`` writes it too).

Unsafe pickles: checkpoints are read with ``torch.load(weights_only=True)``. An unstripped
PyTorch-Lightning 1.3 checkpoint keys its ``callbacks`` dict by a *class* (a pickled global),
which ``weights_only`` refuses; the fallback then re-reads the file with a restricted unpickler
that resolves only torch's own weights-only allowlist plus numpy's array reconstruction, and
turns every other global into an inert stub class. No pickled callable is ever executed: a
stubbed ``os.system`` is an empty class whose "call" only records its arguments.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loftr_sfm.io import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

HF_PREFIX = "efficientloftr."
HF_PREFIXES = ("efficientloftr.", "model.")
ORIGINAL_PREFIX = "matcher."
DEFAULT_HUB_ID = "zju-community/efficientloftr"
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors", ".tar")


class CheckpointError(InputError):
    """A weights file could not be read or does not fit the model; the message names the file."""


# =========================================================================== key maps

# transformer sub-module names: original (canonical) <-> Transformers
_LAYER_ORIG_TO_HF = {
    "aggregate": "aggregation.q_aggregation",
    "norm1": "aggregation.norm",
    "q_proj": "attention.q_proj",
    "k_proj": "attention.k_proj",
    "v_proj": "attention.v_proj",
    "merge": "attention.o_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
    "norm2": "mlp.layer_norm",
}
_LAYER_HF_TO_ORIG = {v: k for k, v in _LAYER_ORIG_TO_HF.items()}
_BRANCH_ORIG_TO_HF = {"rbr_dense.conv": "conv1.conv", "rbr_dense.bn": "conv1.norm",
                      "rbr_1x1.conv": "conv2.conv", "rbr_1x1.bn": "conv2.norm", "rbr_identity": "identity"}
_BRANCH_HF_TO_ORIG = {v: k for k, v in _BRANCH_ORIG_TO_HF.items()}
_FPN_ORIG_TO_HF = {"outconv": "out_conv1", "outconv2.0": "out_conv2", "outconv2.1": "batch_norm", "outconv2.3": "out_conv3"}
_FPN_HF_TO_ORIG = {v: k for k, v in _FPN_ORIG_TO_HF.items()}

_RE_HF_BACKBONE = re.compile(r"^backbone\.stages\.(\d+)\.blocks\.(\d+)\.(conv1\.conv|conv1\.norm|conv2\.conv|conv2\.norm|identity)\.(.+)$")
_RE_HF_TRANSFORMER = re.compile(r"^local_feature_transformer\.layers\.(\d+)\.(self_attention|cross_attention)\.(.+)\.(weight|bias)$")
_RE_HF_FPN_TOP = re.compile(r"^refinement_layer\.out_conv\.(.+)$")
_RE_HF_FPN = re.compile(r"^refinement_layer\.out_conv_layers\.(\d+)\.(out_conv1|out_conv2|batch_norm|out_conv3)\.(.+)$")

_RE_OR_BACKBONE = re.compile(r"^backbone\.layer(\d+)\.(?:(\d+)\.)?(rbr_dense\.conv|rbr_dense\.bn|rbr_1x1\.conv|rbr_1x1\.bn|rbr_identity)\.(.+)$")
_RE_OR_TRANSFORMER = re.compile(r"^loftr_coarse\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_RE_OR_FPN = re.compile(r"^fine_preprocess\.layer(\d+)_(outconv|outconv2\.0|outconv2\.1|outconv2\.3)\.(.+)$")


def hf_key_to_canonical(key: str) -> str:
    """Map one Transformers key (with ``efficientloftr.``/``model.`` prefix or ``refinement_layer.``)
    to the canonical (original without ``matcher.``) name. Unknown keys are returned unchanged
    (they then show up as "unexpected" in the loader's error)."""
    body = key
    for p in HF_PREFIXES:
        if key.startswith(p):
            body = key[len(p):]
            break
    m = _RE_HF_BACKBONE.match(body)
    if m:
        s, b, branch, rest = int(m[1]), int(m[2]), m[3], m[4]
        block = "backbone.layer0." if (s == 0 and b == 0) else f"backbone.layer{s}.{b}."
        return f"{block}{_BRANCH_HF_TO_ORIG[branch]}.{rest}"
    m = _RE_HF_TRANSFORMER.match(body)
    if m and m[3] in _LAYER_HF_TO_ORIG:
        idx = 2 * int(m[1]) + (1 if m[2] == "cross_attention" else 0)
        return f"loftr_coarse.layers.{idx}.{_LAYER_HF_TO_ORIG[m[3]]}.{m[4]}"
    m = _RE_HF_FPN_TOP.match(key)
    if m:
        return f"fine_preprocess.layer3_outconv.{m[1]}"
    m = _RE_HF_FPN.match(key)
    if m:
        level = 2 - int(m[1])
        return f"fine_preprocess.layer{level}_{_FPN_HF_TO_ORIG[m[2]]}.{m[3]}"
    return key


def canonical_key_to_hf(key: str, prefix: str = HF_PREFIX) -> str:
    """Map one canonical training-form key to its Transformers name.

    Raises:
        KeyError: for keys without a Transformers equivalent (``rbr_reparam``, folded FPN
            biases, anything unknown).
    """
    m = _RE_OR_BACKBONE.match(key)
    if m:
        s, b = int(m[1]), int(m[2]) if m[2] is not None else 0
        return f"{prefix}backbone.stages.{s}.blocks.{b}.{_BRANCH_ORIG_TO_HF[m[3]]}.{m[4]}"
    m = _RE_OR_TRANSFORMER.match(key)
    if m and m[2] in _LAYER_ORIG_TO_HF:
        n = int(m[1])
        kind = "cross_attention" if n % 2 else "self_attention"
        return f"{prefix}local_feature_transformer.layers.{n // 2}.{kind}.{_LAYER_ORIG_TO_HF[m[2]]}.{m[3]}"
    m = _RE_OR_FPN.match(key)
    if m:
        level, part, rest = int(m[1]), m[2], m[3]
        if level == 3 and part == "outconv":
            return f"refinement_layer.out_conv.{rest}"
        if level in (1, 2) and not (part == "outconv2.0" and rest == "bias"):
            return f"refinement_layer.out_conv_layers.{2 - level}.{_FPN_ORIG_TO_HF[part]}.{rest}"
    raise KeyError(f"{key!r} has no Transformers equivalent (only the training form can be saved in that layout)")


def _get(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def canonical_shapes(config: Any = None, *, with_num_batches_tracked: bool = True) -> dict[str, tuple[int, ...]]:
    """Canonical training-form key -> shape for a config (default: the released model).

    Used to validate files and by the tests to write checkpoints in the exact published layouts.
    The order follows the original checkpoint (``eloftr_keys/original_ckpt_state_dict.txt``).
    """
    out_features = list(_get(config, "out_features", [64, 64, 128, 256]))
    num_blocks = list(_get(config, "stage_num_blocks", [1, 2, 4, 14]))
    strides = list(_get(config, "stage_stride", [2, 1, 2, 2]))
    hidden = int(_get(config, "hidden_size", 256))
    inter = int(_get(config, "intermediate_size", 2 * hidden))
    qk = int(_get(config, "q_aggregation_kernel_size", 4))
    n_layers = int(_get(config, "num_attention_layers", 4))
    fuse = list(_get(config, "fine_fusion_dims", [hidden, out_features[-2], out_features[-3]]))
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{n}"] = (c,)
        if with_num_batches_tracked:
            shapes[f"{prefix}.num_batches_tracked"] = ()

    cin = 1
    for s, (nb, cout, st) in enumerate(zip(num_blocks, out_features, strides)):
        for b in range(nb):
            stride = st if b == 0 else 1
            p = "backbone.layer0" if (s == 0 and nb == 1) else f"backbone.layer{s}.{b}"
            if cin == cout and stride == 1:
                bn(f"{p}.rbr_identity", cin)
            shapes[f"{p}.rbr_dense.conv.weight"] = (cout, cin, 3, 3)
            bn(f"{p}.rbr_dense.bn", cout)
            shapes[f"{p}.rbr_1x1.conv.weight"] = (cout, cin, 1, 1)
            bn(f"{p}.rbr_1x1.bn", cout)
            cin = cout
    for n in range(2 * n_layers):
        p = f"loftr_coarse.layers.{n}"
        shapes[f"{p}.aggregate.weight"] = (hidden, 1, qk, qk)
        for name in ("q_proj", "k_proj", "v_proj", "merge"):
            shapes[f"{p}.{name}.weight"] = (hidden, hidden)
        shapes[f"{p}.mlp.0.weight"] = (inter, 2 * hidden)
        shapes[f"{p}.mlp.2.weight"] = (hidden, inter)
        shapes[f"{p}.norm1.weight"] = (hidden,)
        shapes[f"{p}.norm1.bias"] = (hidden,)
        shapes[f"{p}.norm2.weight"] = (hidden,)
        shapes[f"{p}.norm2.bias"] = (hidden,)
    p = "fine_preprocess"
    shapes[f"{p}.layer3_outconv.weight"] = (fuse[0], fuse[0], 1, 1)
    shapes[f"{p}.layer2_outconv.weight"] = (fuse[0], out_features[-2], 1, 1)
    shapes[f"{p}.layer2_outconv2.0.weight"] = (fuse[0], fuse[0], 3, 3)
    bn(f"{p}.layer2_outconv2.1", fuse[0])
    shapes[f"{p}.layer2_outconv2.3.weight"] = (fuse[1], fuse[0], 3, 3)
    shapes[f"{p}.layer1_outconv.weight"] = (fuse[1], out_features[-3], 1, 1)
    shapes[f"{p}.layer1_outconv2.0.weight"] = (fuse[1], fuse[1], 3, 3)
    bn(f"{p}.layer1_outconv2.1", fuse[1])
    shapes[f"{p}.layer1_outconv2.3.weight"] = (fuse[2], fuse[1], 3, 3)
    return shapes


_HF_MARKERS = tuple(f"{p}{body}" for p in ("", *HF_PREFIXES) for body in ("backbone.stages.", "local_feature_transformer."))


def is_hf_layout(keys: Any) -> bool:
    """True if the keys look like the Transformers layout (``efficientloftr.``/``model.`` prefix, or
    none for a bare Transformers ``EfficientLoFTRModel``)."""
    return any(k.startswith("refinement_layer.") or k.startswith(_HF_MARKERS) for k in keys)


def to_canonical(state_dict: Mapping[str, Any], source: str = "state dict") -> tuple[dict[str, Any], str]:
    """Map a state dict in any supported layout to canonical names.

    Strips ``matcher.`` (original) or ``module.`` (DataParallel), maps Transformers names, and
    drops ``num_batches_tracked``.

    Returns:
        (canonical state dict, form) with form ``"training"`` or ``"reparameterized"``
        (the latter if any backbone key is an ``rbr_reparam`` one).
    Raises:
        CheckpointError: if a value is not a tensor.
    """
    import torch

    keys = list(state_dict)
    hf = is_hf_layout(keys)
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; is this a weights file?")
        name = k
        for p in ("module.", ORIGINAL_PREFIX):
            if name.startswith(p):
                name = name[len(p):]
        if hf:
            name = hf_key_to_canonical(name)
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = v
    form = "reparameterized" if any(".rbr_reparam." in k for k in out) else "training"
    return out, form


def canonical_to_hf(state_dict: Mapping[str, Any], prefix: str = HF_PREFIX,
                    add_num_batches_tracked: bool = True) -> dict[str, Any]:
    """Canonical training-form state dict -> Transformers names (contiguous CPU tensors).

    Missing ``num_batches_tracked`` buffers are added as int64 zeros (Transformers writes them).

    Raises:
        CheckpointError: for a re-parameterized state dict (Transformers has no fused form).
    """
    import torch

    bad = [k for k in state_dict if ".rbr_reparam." in k or re.search(r"outconv2\.0\.bias$", k)]
    if bad:
        raise CheckpointError(
            "the Transformers layout only holds the training form (three RepVGG branches, unfolded FPN "
            f"BatchNorm); got re-parameterized weights ({bad[0]}...). Load the model with reparameterize=False "
            "and save before calling reparameterize()."
        )
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        out[canonical_key_to_hf(k, prefix)] = v.detach().to("cpu").contiguous()
    if add_num_batches_tracked:
        for k in list(out):
            if k.endswith(".running_var"):
                nbt = k[: -len("running_var")] + "num_batches_tracked"
                out.setdefault(nbt, torch.zeros((), dtype=torch.int64))
    return out


# =========================================================================== safe unpickling


def _allowed_globals() -> dict[str, Any]:
    import torch._weights_only_unpickler as wou

    allowed = dict(wou._get_allowed_globals())
    try:  # numpy arrays inside Lightning containers (e.g. in callbacks' state)
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed.update({
            "numpy.core.multiarray._reconstruct": core.multiarray._reconstruct,
            "numpy._core.multiarray._reconstruct": core.multiarray._reconstruct,
            "numpy.core.multiarray.scalar": core.multiarray.scalar,
            "numpy._core.multiarray.scalar": core.multiarray.scalar,
            "numpy.ndarray": np.ndarray,
            "numpy.dtype": np.dtype,
        })
        for name in dir(np.dtypes):
            if name.endswith("DType"):
                allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    except Exception:  # pragma: no cover - numpy always present here
        pass
    return allowed


class _InertStub:
    """Stand-in for a pickled global that is not on the allowlist. Never runs anything."""

    _stub_target = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_InertStub":
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_stub_state"] = state

    # containers: pickled dict / list subclasses (e.g. Lightning's AttributeDict) fill themselves
    # through SETITEMS / APPENDS; the items are kept as plain data, nothing is called
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<inert stub for {self._stub_target}>"


def _make_restricted_pickle_module() -> types.ModuleType:
    allowed = _allowed_globals()
    stubbed: list[str] = []

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # noqa: D401
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            stubbed.append(full)
            return type(name, (_InertStub,), {"_stub_target": full, "__module__": "loftr_sfm.model.weights._stubs"})

    mod = types.ModuleType("loftr_sfm_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.Pickler = pickle.Pickler  # type: ignore[attr-defined]
    mod.__version__ = getattr(pickle, "format_version", "4.0")  # type: ignore[attr-defined]

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    def dump(*args: Any, **kwargs: Any) -> None:  # pragma: no cover - never used for loading
        raise RuntimeError("restricted pickle module cannot write")

    mod.load = load  # type: ignore[attr-defined]
    mod.dump = dump  # type: ignore[attr-defined]
    mod.stubbed = stubbed  # type: ignore[attr-defined]
    return mod


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` that never executes pickled code.

    First ``weights_only=True``; if that refuses a global (e.g. an unstripped PyTorch-Lightning
    1.3 checkpoint whose ``callbacks`` dict is keyed by a class), re-read with the restricted
    unpickler (non-allowlisted globals become inert stubs, logged at INFO level).

    Raises:
        CheckpointError: naming the file if it cannot be read at all.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_error = e
    except Exception as e:  # corrupt zip, truncated file, not a pickle at all...
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {_short(e)})") from None
    mod = _make_restricted_pickle_module()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=mod)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint (weights_only load: {_short(first_error)}; "
            f"restricted load: {type(e).__name__}: {_short(e)})"
        ) from None
    logger.info("%s: loaded with the restricted unpickler; %d non-weight global(s) replaced by inert stubs: %s",
                path, len(mod.stubbed), ", ".join(sorted(set(mod.stubbed))[:5]))
    return obj


def _short(e: BaseException, n: int = 300) -> str:
    s = str(e).strip().splitlines()
    s = s[0] if s else repr(e)
    return s if len(s) <= n else s[:n] + "..."


# =========================================================================== reading files


def _extract_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        keys = [str(k) for k in list(obj)[:8]]
        raise CheckpointError(f"{path}: no state dict found (top-level keys: {keys}); expected a Lightning checkpoint "
                              "with 'state_dict', a bare state dict or a .safetensors file")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read raw tensors (original names, any layout) and the ``config.json`` dict if any.

    Accepts a Transformers directory (``config.json`` + ``model.safetensors``), a
    ``.safetensors`` file (a ``config.json`` beside it is used), or a torch pickle (Lightning
    container, bare state dict; loaded with :func:`safe_torch_load`).
    """
    path = Path(path)
    config_dict = None
    if path.is_dir():
        st = path / SAFETENSORS_NAME
        if not st.is_file():
            cands = sorted(path.glob("*.safetensors")) or sorted(
                p for p in path.iterdir() if p.suffix in (".ckpt", ".pth", ".pt", ".bin"))
            if len(cands) != 1:
                raise CheckpointError(f"{path}: directory without {SAFETENSORS_NAME} (found: "
                                      f"{[p.name for p in path.iterdir()][:8]}); expected the Transformers layout "
                                      f"({CONFIG_NAME} + {SAFETENSORS_NAME}) or pass the weights file itself")
            st = cands[0]
        cfg = path / CONFIG_NAME
        config_dict = _read_json(cfg) if cfg.is_file() else None
        sd, _ = read_weights_file(st)
        return sd, config_dict
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_short(e)})") from None
        cfg = path.parent / CONFIG_NAME
        if cfg.is_file():
            config_dict = _read_json(cfg)
        return dict(sd), config_dict
    obj = safe_torch_load(path)
    return dict(_extract_state_dict(obj, path)), None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({_short(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def looks_like_hub_id(s: str) -> bool:
    """``owner/name`` without a checkpoint suffix (and not an existing path)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and not s.lower().endswith(CHECKPOINT_SUFFIXES) \
        and not Path(s).exists()


def resolve_weights_path(path_or_id: str | os.PathLike, revision: str | None = None, *,
                         cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """A local file/directory, or a hub id downloaded (or found in the cache) with huggingface_hub.

    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` use the hub cache only.

    Raises:
        CheckpointError: one clear message when the path does not exist and the hub is not
            reachable, saying how to pass a local file instead.
    """
    p = Path(path_or_id).expanduser()
    if p.exists():
        return p
    s = str(path_or_id)
    if not looks_like_hub_id(s):
        raise CheckpointError(f"{s}: weights file or directory does not exist")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(s, revision=revision, allow_patterns=[CONFIG_NAME, SAFETENSORS_NAME],
                                  cache_dir=cache_dir, local_files_only=local_files_only)
    except Exception as e:
        raise CheckpointError(
            f"could not get the weights {s!r} from the Hugging Face hub ({type(e).__name__}: {_short(e, 160)}). "
            "Without hub access, pass a local file instead: the original release checkpoint "
            "(from_pretrained('/path/to/eloftr_outdoor.ckpt')), a directory with config.json + model.safetensors "
            "(a copy of the hub repository), or a .safetensors file; `loftr-sfm convert` turns the original "
            "checkpoint into the Transformers layout."
        ) from None
    return Path(local)


# =========================================================================== model I/O


def _config_class() -> Any:
    from loftr_sfm.model.config import EfficientLoFTRConfig

    return EfficientLoFTRConfig


def _config_from_dict(cfg_cls: Any, data: dict[str, Any]) -> Any:
    for name in ("from_dict", "from_hf_dict", "from_json_dict"):
        fn = getattr(cfg_cls, name, None)
        if fn is not None:
            return fn(data)
    raise CheckpointError("EfficientLoFTRConfig has no from_dict reader")  # pragma: no cover


def _config_to_dict(config: Any) -> dict[str, Any]:
    for name in ("to_dict", "to_hf_dict", "to_json_dict"):
        fn = getattr(config, name, None)
        if fn is not None:
            return fn()
    import dataclasses

    return dataclasses.asdict(config)  # pragma: no cover


def _with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    if not overrides:
        return config
    replace = getattr(config, "replace", None)
    if replace is not None:
        return replace(**overrides)
    import dataclasses  # pragma: no cover - EfficientLoFTRConfig has replace()

    from loftr_sfm.utils import merge_config

    return merge_config(type(config), dataclasses.asdict(config), **overrides)


def _fold_fpn_bn_in_state_dict(sd: dict[str, Any], eps: float) -> dict[str, Any]:
    """Fold ``layerX_outconv2.1`` BatchNorm entries into ``layerX_outconv2.0`` (weight + new bias)."""
    import torch

    out = dict(sd)
    for level in (1, 2):
        p = f"fine_preprocess.layer{level}_outconv2"
        if f"{p}.1.running_var" not in out:
            continue
        w = out[f"{p}.0.weight"]
        gamma, beta = out.pop(f"{p}.1.weight"), out.pop(f"{p}.1.bias")
        mean, var = out.pop(f"{p}.1.running_mean"), out.pop(f"{p}.1.running_var")
        std = torch.sqrt(var.double() + eps)
        scale = gamma.double() / std
        out[f"{p}.0.weight"] = (w.double() * scale[:, None, None, None]).to(w.dtype)
        bias = out.get(f"{p}.0.bias")
        b0 = bias.double() if bias is not None else torch.zeros_like(scale)
        out[f"{p}.0.bias"] = ((b0 - mean.double()) * scale + beta.double()).to(w.dtype)
    return out


def _expected_keys(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_canonical_into(model: Any, sd: dict[str, Any], form: str, source: str) -> Any:
    """Load a canonical state dict into ``model`` (re-parameterizing first if ``form`` says so).

    Raises:
        CheckpointError: listing the first missing / unexpected keys and shape mismatches.
    """
    if form == "reparameterized" and not getattr(model, "is_reparameterized", False):
        model.reparameterize()
    expected = _expected_keys(model)
    if getattr(model, "is_reparameterized", False) and any(k.startswith("fine_preprocess.layer") and k.endswith("outconv2.0.bias")
                                                          for k in expected):
        # the model folded its FPN BatchNorm: fold the file's too (no-op if already folded)
        eps = float(_get(getattr(model, "config", None), "batch_norm_eps", 1e-5))
        sd = _fold_fpn_bn_in_state_dict(sd, eps)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def fmt(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" ... (+{len(xs) - 5})" if len(xs) > 5 else "")
        parts = [f"{source}: weights do not fit EfficientLoFTR ({form} form, {len(sd)} tensors, model expects {len(expected)})"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch for {len(mismatched)} key(s): {fmt(mismatched)}")
        raise CheckpointError("; ".join(parts))
    result = model.load_state_dict(sd, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded above
        raise CheckpointError(f"{source}: load_state_dict reported missing {leftover[:5]} unexpected {result.unexpected_keys[:5]}")
    return model


def from_pretrained(cls: Any, path_or_id: str | os.PathLike = DEFAULT_HUB_ID, *, config: Any = None,
                    reparameterize: bool = True, device: str | None = None, revision: str | None = None,
                    **config_overrides: Any) -> Any:
    """Build ``cls`` (an EfficientLoFTR model class) and load weights from any supported source.

    Args:
        path_or_id: Transformers directory (``config.json`` + ``model.safetensors``, prefix
            ``efficientloftr.`` or ``model.``), a ``.safetensors`` file, the original
            ``eloftr_outdoor.ckpt`` (Lightning container), a bare or re-parameterized state dict
            file, or a hub id such as ``zju-community/efficientloftr``.
        config: an ``EfficientLoFTRConfig`` (or dict); default: the directory's ``config.json``
            if present, else the released model's defaults.
        reparameterize: fold RepVGG branches and the FPN BatchNorm after loading (inference
            form, faster, equal outputs within ~1e-4). A re-parameterized file always yields a
            re-parameterized model.
        device: move the model there (``"auto"`` picks cuda/mps/cpu); default: stay on CPU.
        **config_overrides: config fields to change (e.g. ``coarse_matching_threshold=0.1``).

    Returns:
        the model in eval mode.
    Raises:
        CheckpointError: unreadable file, wrong keys (lists missing/unexpected), hub unreachable.
    """
    path = resolve_weights_path(path_or_id, revision=revision)
    raw, file_cfg = read_weights_file(path)
    sd, form = to_canonical(raw, source=str(path))
    cfg_cls = getattr(cls, "config_class", None) or _config_class()
    try:
        if config is None:
            config = _config_from_dict(cfg_cls, file_cfg) if file_cfg is not None else cfg_cls()
        elif isinstance(config, Mapping):
            config = _config_from_dict(cfg_cls, dict(config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid EfficientLoFTR config ({e})") from None
    config = _with_overrides(config, config_overrides)
    model = cls(config)
    if not hasattr(model, "fine_preprocess"):  # EfficientLoFTRModel: backbone + transformer only
        sd = {k: v for k, v in sd.items() if not k.startswith("fine_preprocess.")}
    load_canonical_into(model, sd, form, str(path))
    if reparameterize and not getattr(model, "is_reparameterized", False):
        model.reparameterize()
    model.eval()
    if device is not None:
        from loftr_sfm.utils import resolve_device

        model.to(resolve_device(device))
    logger.info("loaded EfficientLoFTR weights from %s (%s form%s)", path, form,
                ", re-parameterized" if getattr(model, "is_reparameterized", False) else "")
    return model


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the Transformers layout (447 tensors for
    the released architecture, ``num_batches_tracked`` included). Only from the training form.

    Returns:
        the directory.
    Raises:
        CheckpointError: if the model was re-parameterized.
    """
    from safetensors.torch import save_file

    from loftr_sfm.io import atomic_path

    if getattr(model, "is_reparameterized", False):
        raise CheckpointError("save_pretrained needs the training form, but this model was re-parameterized; "
                              "load it with from_pretrained(..., reparameterize=False) to save it in the Transformers layout")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items()}
    hf = canonical_to_hf(sd)
    writer = getattr(model.config, "to_json_string", None)
    cfg_text = writer() if writer is not None else json.dumps(_config_to_dict(model.config), indent=2, sort_keys=True) + "\n"
    with atomic_path(directory / SAFETENSORS_NAME) as tmp:
        save_file(hf, str(tmp), metadata={"format": "pt"})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        Path(tmp).write_text(cfg_text)
    logger.info("saved %d tensors to %s", len(hf), directory)
    return directory


def convert_original_checkpoint(src_ckpt: str | os.PathLike, dst_dir: str | os.PathLike, *, config: Any = None) -> Path:
    """Convert the original ``eloftr_outdoor.ckpt`` (or any training-form weights file) to the
    Transformers layout in ``dst_dir`` (``config.json`` + ``model.safetensors``).

    The weights are checked by loading them into the model first (wrong files fail with the
    missing/unexpected key lists).
    """
    from loftr_sfm.model.efficientloftr import EfficientLoFTRForKeypointMatching

    path = Path(src_ckpt)
    raw, _ = read_weights_file(resolve_weights_path(path))
    _, form = to_canonical(raw, source=str(path))
    if form != "training":
        raise CheckpointError(f"{path}: re-parameterized weights cannot be converted to the Transformers layout "
                              "(it has no fused RepVGG form); convert the training-form checkpoint instead")
    model = from_pretrained(EfficientLoFTRForKeypointMatching, path, config=config, reparameterize=False)
    return save_pretrained(model, dst_dir)
