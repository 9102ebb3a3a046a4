"""Derived architecture of a model from its Hugging Face config.json fields.

CONTRACT (used by perf/): ``arch_of(entry) -> ModelArch``. The models helper owns the full
implementation (every architecture in the catalog); this first version covers Llama-style dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moatmeter.catalog.schema import ModelEntry
from moatmeter.errors import CatalogError

DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
               "fp4": 0.5}


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

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    def kv_elems_per_token(self, context: float | None = None) -> float:
        """KV elements stored per token over all layers (sliding layers cap at their window)."""
        if self.is_mla:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.kv_heads * self.head_dim
        full_layers = self.layers - self.sliding_layers
        if context is None or self.sliding_layers == 0 or self.sliding_window == 0:
            return float(per_layer * self.layers)
        frac = min(1.0, self.sliding_window / max(context, 1.0))
        return float(per_layer * (full_layers + self.sliding_layers * frac))

    def kv_bytes_per_token(self, dtype: str = "bf16", context: float | None = None) -> float:
        return self.kv_elems_per_token(context) * DTYPE_BYTES[dtype]


def _need(cfg: dict[str, Any], key: str, file: str | None, entry: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise CatalogError("config.json is missing this field", file=file, entry=entry,
                           field=f"config.{key}")
    return cfg[key]


def arch_of(entry: ModelEntry, file: str | None = None) -> ModelArch:
    return arch_from_config(entry.config, name=entry.id, file=file)


def arch_from_config(cfg: dict[str, Any], name: str = "model", file: str | None = None) -> ModelArch:
    h = int(_need(cfg, "hidden_size", file, name))
    layers = int(_need(cfg, "num_hidden_layers", file, name))
    heads = int(_need(cfg, "num_attention_heads", file, name))
    kvh = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(_need(cfg, "intermediate_size", file, name))
    vocab = int(_need(cfg, "vocab_size", file, name))
    tied = bool(cfg.get("tie_word_embeddings", False))
    attn = h * heads * hd + 2 * h * kvh * hd + heads * hd * h
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    emb = vocab * h * (1 if tied else 2)
    total = layers * per_layer + emb + h
    return ModelArch(name=name, layers=layers, hidden=h, heads=heads, kv_heads=kvh, head_dim=hd,
                     intermediate=inter, vocab=vocab, tied_embeddings=tied, total_params=total,
                     active_params=total, embedding_params=emb)
