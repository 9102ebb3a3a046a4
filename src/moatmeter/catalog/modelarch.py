"""Derived architecture of a model from its Hugging Face config.json fields.

CONTRACT (used by perf/): ``arch_of(entry) -> ModelArch`` and ``arch_from_config(cfg)``. Totals are
computed from the config by counting every weight tensor the Hugging Face / vLLM implementation
creates, so a catalog entry never carries a hand-typed parameter count that could drift from its
config.

Architectures (``model_type``) and what changes between them:

- ``llama``, ``mistral``, ``mixtral``: gated MLP, no biases, 2 RMSNorms per layer.
- ``qwen2`` / ``qwen2_moe``: biases on q/k/v (not on o).
- ``qwen3`` / ``qwen3_moe``: per-head RMSNorm on q and k; MoE layers chosen by
  ``decoder_sparse_step`` and ``mlp_only_layers``.
- ``gemma2`` / ``gemma3``: ``head_dim`` independent of hidden/heads, 4 norms per layer, tied
  embeddings by default, sliding window on alternate layers (gemma3: ``sliding_window_pattern``).
- ``deepseek_v2`` / ``deepseek_v3``: MLA attention (latent KV of ``kv_lora_rank`` plus a shared
  rope key of ``qk_rope_head_dim``), ``n_shared_experts`` always-on experts, dense MLP on the first
  ``first_k_dense_replace`` layers. The multi-token-prediction (MTP) layer is NOT in
  ``total_params`` (DeepSeek's 671B excludes it); it is reported as ``mtp_params``.
- ``gpt_oss``: biases everywhere, one learned attention-sink logit per head, experts with biased
  gate/up and down projections, ``layer_types`` alternating a 128-token window with full attention,
  MXFP4 experts in the published checkpoint.

"Active" parameters (``active_params``) follow Mistral's and Qwen's convention: everything except
the routed experts a token does not use, embeddings included. ``active_compute_params`` drops the
input-embedding lookup (no matmul touches it); OpenAI (gpt-oss) and DeepSeek publish that figure,
and it is the right one for FLOPs and weight reads per token.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from moatmeter.catalog.schema import ModelEntry
from moatmeter.errors import CatalogError, InputError

DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
               "fp4": 0.5}
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16",
                "float": "fp32"}
MXFP4_BYTES = 4.25 / 8  # OCP MX: 32 fp4 values share one 8-bit scale
FP8_BLOCK_SCALE_BYTES = 4.0  # DeepSeek FP8 checkpoints: one fp32 scale per weight block

MLA_TYPES = {"deepseek_v2", "deepseek_v3", "kimi_k2"}
QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}
QK_NORM_TYPES = {"qwen3", "qwen3_moe"}
FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
ALTERNATING_SLIDING_TYPES = {"gemma2", "gpt_oss"}  # even layer indices slide when no layer_types
ALL_SLIDING_TYPES = {"mistral", "mixtral"}  # sliding_window, when set, applies to every layer
# Qwen: sliding only with use_sliding_window, on the layers from max_window_layers on
QWEN_SWA_TYPES = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
TOPK_KEYS = ("num_experts_per_tok", "experts_per_token", "num_experts_per_token")


@dataclass(frozen=True)
class ModelArch:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width (0 if every layer is MoE)
    vocab: int
    tied_embeddings: bool
    # MoE (n_experts == 0 means dense)
    n_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    n_shared_experts: int = 0
    moe_layers: int = 0  # number of layers whose MLP is MoE
    # MLA (DeepSeek): kv_lora_rank > 0 means the KV cache stores the latent + rope key
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    # Sliding-window attention: window tokens and how many layers use it
    sliding_window: int = 0
    sliding_layers: int = 0
    # Derived totals (parameters, not bytes)
    total_params: float = 0.0
    active_params: float = 0.0
    embedding_params: float = 0.0  # input embedding + untied LM head
    params_per_expert: float = 0.0  # one routed expert in one layer
    # Added by the models part (all derived):
    model_type: str = ""
    attention: str = ""  # mha | gqa | mqa | mla
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    max_context: int = 0  # max_position_embeddings
    active_compute_params: float = 0.0  # active minus the input-embedding lookup
    routed_expert_params: float = 0.0  # all routed experts of all layers
    attention_params: float = 0.0  # all attention blocks (incl. sinks, biases, MLA projections)
    mtp_params: float = 0.0  # DeepSeek MTP module as stored in the checkpoint; not in total_params
    native_dtype: str = ""  # checkpoint precision: bf16, fp16, fp32, fp8, mxfp4
    native_weight_bytes: float = 0.0  # bytes of the published checkpoint's weights (no MTP)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    def kv_elems_per_token(self, context: Any = None) -> Any:
        """KV elements stored per token over all layers (sliding layers cap at their window).

        With a context length (scalar or NumPy array) a sliding layer holds only ``window`` of the
        ``context`` tokens, so its share per token is ``min(1, window / context)``.
        """
        if self.is_mla:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.kv_heads * self.head_dim
        full_layers = self.layers - self.sliding_layers
        if context is None or self.sliding_layers == 0 or self.sliding_window == 0:
            if context is None or np.ndim(context) == 0:
                return float(per_layer * self.layers)
            return np.full(np.shape(context), float(per_layer * self.layers))
        ctx = np.maximum(np.asarray(context, dtype=float), 1.0)
        frac = np.minimum(1.0, self.sliding_window / ctx)
        out = per_layer * (full_layers + self.sliding_layers * frac)
        return float(out) if np.ndim(out) == 0 else out

    def kv_bytes_per_token(self, dtype: str = "bf16", context: Any = None) -> Any:
        return self.kv_elems_per_token(context) * DTYPE_BYTES[dtype]

    def weight_bytes(self, dtype: str | None = None) -> float:
        """Weight bytes at one uniform precision, or of the published checkpoint when ``None``."""
        if dtype is None:
            return self.native_weight_bytes
        return self.total_params * DTYPE_BYTES[dtype]


# ----------------------------------------------------------------------------- config reading


class _Cfg:
    """Typed access to config fields; errors name the file, the entry and ``config.<field>``."""

    def __init__(self, cfg: dict[str, Any], name: str, file: str | None, prefix: str = "config"):
        self.cfg, self.name, self.file, self.prefix = cfg, name, file, prefix

    def err(self, key: str, msg: str) -> CatalogError:
        return CatalogError(msg, file=self.file, entry=self.name, field=f"{self.prefix}.{key}")

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def int(self, key: str, default: int | None = None, *, positive: bool = True) -> int:
        v = self.cfg.get(key)
        if v is None:
            if default is None:
                raise self.err(key, "config.json is missing this field")
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
            raise self.err(key, f"must be an integer, got {v!r}")
        if int(v) < (1 if positive else 0):
            raise self.err(key, f"must be {'positive' if positive else '>= 0'}, got {v!r}")
        return int(v)

    def first_int(self, keys: tuple[str, ...], default: int) -> tuple[str, int]:
        for k in keys:
            if self.has(k):
                return k, self.int(k, positive=False)
        return keys[0], default

    def bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {v!r}")
        return v


def _unwrap(cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Multimodal configs nest the language model under ``text_config``; count that part."""
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        inner = dict(cfg["text_config"])
        inner.setdefault("model_type", cfg.get("model_type", ""))
        for k in ("torch_dtype", "quantization_config", "tie_word_embeddings"):
            if k in cfg and k not in inner:
                inner[k] = cfg[k]
        return inner, "config.text_config"
    return cfg, "config"


def arch_of(entry: ModelEntry, file: str | None = None) -> ModelArch:
    return arch_from_config(entry.config, name=entry.id, file=file)


def arch_from_config(cfg: dict[str, Any], name: str = "model", file: str | None = None
                     ) -> ModelArch:
    """Count the weights a config describes; raises CatalogError naming ``config.<field>``."""
    if not isinstance(cfg, dict):
        raise CatalogError("config must be a mapping of config.json fields", file=file,
                           entry=name, field="config")
    raw, prefix = _unwrap(cfg)
    c = _Cfg(raw, name, file, prefix)
    mt = str(raw.get("model_type") or "").lower()

    h = c.int("hidden_size")
    layers = c.int("num_hidden_layers")
    heads = c.int("num_attention_heads")
    vocab = c.int("vocab_size")
    kvh = c.int("num_key_value_heads", heads)
    if heads % kvh:
        raise c.err("num_key_value_heads", f"{kvh} does not divide num_attention_heads={heads}")
    tied = c.bool("tie_word_embeddings", mt in TIED_BY_DEFAULT)
    max_ctx = c.int("max_position_embeddings", 0, positive=False)

    # ---- attention, per layer
    mla = mt in MLA_TYPES or c.int("kv_lora_rank", 0, positive=False) > 0
    q_lora = kv_lora = rope = nope = v_hd = 0
    if mla:
        kv_lora = c.int("kv_lora_rank")
        rope = c.int("qk_rope_head_dim")
        nope = c.int("qk_nope_head_dim")
        v_hd = c.int("v_head_dim")
        q_lora = c.int("q_lora_rank", 0, positive=False)
        qk = nope + rope
        q = (h * q_lora + q_lora + q_lora * heads * qk) if q_lora else h * heads * qk
        kv_a = h * (kv_lora + rope) + kv_lora  # latent + shared rope key, and the latent norm
        attn = q + kv_a + kv_lora * heads * (nope + v_hd) + heads * v_hd * h
        hd, kv_heads, kind = qk, heads, "mla"
    else:
        hd = c.int("head_dim", h // heads)
        bias = c.bool("attention_bias", False)
        attn = h * heads * hd + 2 * h * kvh * hd + heads * hd * h
        if bias or mt in QKV_BIAS_TYPES:
            attn += heads * hd + 2 * kvh * hd  # q, k, v biases
        if bias:
            attn += h  # o_proj bias
        if mt in QK_NORM_TYPES:
            attn += 2 * hd
        if mt == "gpt_oss":
            attn += heads  # attention sinks: one learned logit per head
        kv_heads = kvh
        kind = "mha" if kvh == heads else ("mqa" if kvh == 1 else "gqa")
    norms = (4 if mt in FOUR_NORM_TYPES else 2) * h

    # ---- MLP: which layers are MoE, and the size of each part
    ekey, n_exp = c.first_int(EXPERT_COUNT_KEYS, 0)
    moe_flags = [False] * layers
    topk = moe_i = n_shared = 0
    per_expert = router = shared = 0
    if n_exp > 0:
        _, topk = c.first_int(TOPK_KEYS, 0)
        if topk <= 0:
            raise c.err(TOPK_KEYS[0], f"config.json is missing this field (MoE with {ekey})")
        if topk > n_exp:
            raise c.err(TOPK_KEYS[0], f"{topk} experts per token exceeds {ekey}={n_exp}")
        moe_i = c.int("moe_intermediate_size") if mt in MLA_TYPES | QK_NORM_TYPES | {"qwen2_moe"} \
            else c.int("moe_intermediate_size", 0, positive=False) or c.int("intermediate_size")
        first_dense = c.int("first_k_dense_replace", 0, positive=False)
        step = c.int("decoder_sparse_step", 1)
        only = raw.get("mlp_only_layers") or []
        if not isinstance(only, list):
            raise c.err("mlp_only_layers", f"must be a list of layer indices, got {only!r}")
        freq_raw = raw.get("moe_layer_freq")
        freq_list = freq_raw if isinstance(freq_raw, list) else None
        freq = 1 if freq_list is not None else c.int("moe_layer_freq", 1)
        for i in range(layers):
            if freq_list is not None:
                moe_flags[i] = bool(freq_list[i]) if i < len(freq_list) else False
            else:
                moe_flags[i] = i >= first_dense and i % freq == 0 and (i + 1) % step == 0 \
                    and i not in only
        n_shared = c.int("n_shared_experts", 0, positive=False)
        gpt = mt == "gpt_oss"
        per_expert = 3 * h * moe_i + ((2 * moe_i + h) if gpt else 0)
        router = h * n_exp + (n_exp if gpt or raw.get("topk_method") == "noaux_tc" else 0)
        shared = n_shared * 3 * h * moe_i
        if c.has("shared_expert_intermediate_size"):  # qwen2_moe: one wide shared expert + gate
            shared = 3 * h * c.int("shared_expert_intermediate_size") + h
    n_moe = sum(moe_flags)
    n_dense = layers - n_moe
    inter = c.int("intermediate_size") if n_dense else 0
    dense_mlp = 3 * h * inter

    # ---- totals
    emb = vocab * h * (1 if tied else 2)
    moe_block_all = n_exp * per_expert + router + shared
    moe_block_active = topk * per_expert + router + shared
    per_layer_common = attn + norms
    total = layers * per_layer_common + n_dense * dense_mlp + n_moe * moe_block_all + emb + h
    active = layers * per_layer_common + n_dense * dense_mlp + n_moe * moe_block_active + emb + h
    active_compute = active - (0 if tied else vocab * h)
    routed_all = n_moe * n_exp * per_expert

    # ---- sliding-window layers
    window = c.int("sliding_window", 0, positive=False)
    sliding = 0
    lt = raw.get("layer_types")
    if window:
        if lt is not None:
            if not isinstance(lt, list) or len(lt) != layers:
                raise c.err("layer_types", f"must list one type per layer ({layers}), got "
                            f"{len(lt) if isinstance(lt, list) else type(lt).__name__}")
            sliding = sum(1 for t in lt if "sliding" in str(t))
        elif mt in ALTERNATING_SLIDING_TYPES:
            sliding = (layers + 1) // 2
        elif mt in {"gemma3", "gemma3_text"}:
            pattern = c.int("sliding_window_pattern", 6)
            sliding = layers - layers // pattern
        elif mt in ALL_SLIDING_TYPES:
            sliding = layers
        elif mt in QWEN_SWA_TYPES and c.bool("use_sliding_window", False):
            sliding = max(0, layers - c.int("max_window_layers", layers, positive=False))
        if max_ctx and window >= max_ctx:
            sliding = 0  # the window never binds
    if not sliding:
        window = 0

    # ---- DeepSeek multi-token prediction module (not part of the published main-model total)
    mtp = 0
    n_mtp = c.int("num_nextn_predict_layers", 0, positive=False) if mla else 0
    if n_mtp:
        mtp_layer = per_layer_common + (moe_block_all if n_moe else dense_mlp)
        # + eh_proj (2h -> h), enorm, hnorm, shared_head norm, and the embedding + head copies
        mtp = n_mtp * (mtp_layer + 2 * h * h + 3 * h + 2 * vocab * h)

    native, native_bytes = _native_bytes(raw, c, total, routed_all, n_moe, n_exp, h, moe_i,
                                         emb, layers, norms)
    return ModelArch(
        name=name, layers=layers, hidden=h, heads=heads, kv_heads=kv_heads, head_dim=hd,
        intermediate=inter, vocab=vocab, tied_embeddings=tied, n_experts=n_exp,
        experts_per_token=topk, moe_intermediate=moe_i, n_shared_experts=n_shared,
        moe_layers=n_moe, kv_lora_rank=kv_lora, qk_rope_head_dim=rope, sliding_window=window,
        sliding_layers=sliding, total_params=float(total), active_params=float(active),
        embedding_params=float(emb), params_per_expert=float(per_expert), model_type=mt,
        attention=kind, q_lora_rank=q_lora, qk_nope_head_dim=nope, v_head_dim=v_hd,
        max_context=max_ctx, active_compute_params=float(active_compute),
        routed_expert_params=float(routed_all), attention_params=float(layers * attn),
        mtp_params=float(mtp), native_dtype=native, native_weight_bytes=float(native_bytes),
    )


def _native_bytes(raw: dict[str, Any], c: _Cfg, total: int, routed_all: int, n_moe: int,
                  n_exp: int, h: int, moe_i: int, emb: int, layers: int, norms: int
                  ) -> tuple[str, float]:
    """Checkpoint weight bytes: what a server must load before any KV cache."""
    base = TORCH_DTYPES.get(str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"), "bf16")
    q = raw.get("quantization_config")
    method = str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""
    bb = DTYPE_BYTES[base]
    if method == "mxfp4":
        # Expert matrices (not their biases) are MXFP4; attention, router, embeddings stay bf16.
        expert_mats = n_moe * n_exp * 3 * h * moe_i
        return "mxfp4", expert_mats * MXFP4_BYTES + (total - expert_mats) * bb
    if method == "fp8":
        # Every linear layer is fp8 with a fp32 scale per block; embeddings, head, norms stay bf16.
        blk = q.get("weight_block_size") or [128, 128]
        try:
            per_block = float(blk[0]) * float(blk[1])
        except (TypeError, ValueError, IndexError):
            raise c.err("quantization_config.weight_block_size",
                        f"must be two integers, got {blk!r}") from None
        keep = emb + layers * norms + h
        linear = total - keep
        return "fp8", linear * (1.0 + FP8_BLOCK_SCALE_BYTES / per_block) + keep * 2.0
    return base, total * bb


# ----------------------------------------------------------------------------- import-hf (edge)

_BAD_ID_CHARS = re.compile(r"[^a-z0-9._+-]+")


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """Read a local config.json (or a model folder holding one) into a dict, offline."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", file=str(p)) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (expected a JSON config.json)", file=str(p)) from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                         file=str(p)) from None
    if not isinstance(cfg, dict):
        raise InputError(f"expected a JSON object of config fields, got {type(cfg).__name__}",
                         file=str(p))
    return cfg


def model_id_for(path: str | Path, model_id: str | None = None) -> str:
    """A valid catalog id from ``--id`` or the model folder (``Llama-3.1-8B`` -> llama-3.1-8b)."""
    p = Path(path).resolve()
    raw = model_id or (p.name if p.is_dir() else p.parent.name) or "model"
    mid = _BAD_ID_CHARS.sub("-", raw.strip().lower()).strip("-._+")
    if not mid:
        raise InputError(f"cannot make a catalog id from '{raw}'; pass --id")
    return mid


def entry_from_hf_config(cfg: dict[str, Any], *, model_id: str, source: str, date: str,
                         hf_id: str | None = None, file: str | None = None) -> ModelEntry:
    """A validated catalog model entry for a config; derivation errors name ``config.<field>``."""
    arch_from_config(cfg, name=model_id, file=file)
    raw = {"id": model_id, "hf_id": hf_id or str(cfg.get("_name_or_path") or model_id),
           "sources": [{"ref": source, "date": date}], "config": cfg}
    try:
        return ModelEntry.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise CatalogError(e["msg"], file=file, entry=model_id, field=loc) from None


def add_model_to_dir(entry: ModelEntry, catalog_dir: str | Path) -> Path:
    """Add or replace ``entry`` in ``catalog_dir/models.yaml`` (created if needed)."""
    from moatmeter.catalog.load import read_yaml

    d = Path(catalog_dir)
    if d.exists() and not d.is_dir():
        raise InputError(f"catalog directory is a file: {d}")
    d.mkdir(parents=True, exist_ok=True)
    path = d / "models.yaml"
    existing: Any = read_yaml(path) if path.exists() else None
    if isinstance(existing, dict) and "models" in existing:
        existing = existing["models"]
    if existing is None:
        existing = []
    if not isinstance(existing, list):
        raise CatalogError("expected a list of models entries", file=str(path))
    keep = [e for e in existing if not (isinstance(e, dict) and e.get("id") == entry.id)]
    keep.append(entry.model_dump(mode="json", exclude_defaults=True))
    path.write_text(yaml.safe_dump(keep, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def import_hf(config_path: str | Path, catalog_dir: str | Path, *, model_id: str | None = None,
              hf_id: str | None = None, today: str | None = None) -> tuple[ModelEntry, ModelArch]:
    """Python API of ``moatmeter catalog import-hf``: read, derive, validate, write."""
    p = Path(config_path)
    cfg_file = p / "config.json" if p.is_dir() else p
    cfg = read_hf_config(cfg_file)
    mid = model_id_for(p, model_id)
    day = today or dt.date.today().isoformat()
    entry = entry_from_hf_config(cfg, model_id=mid, hf_id=hf_id, date=day, file=str(cfg_file),
                                 source=f"local file {cfg_file.resolve()}")
    add_model_to_dir(entry, catalog_dir)
    return entry, arch_of(entry, file=str(cfg_file))
