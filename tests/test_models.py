"""Models catalog: configs -> derived totals, checked against the publishers' own figures.

Hand-computed expectations are written out as arithmetic so a reader can check them without
running anything.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from moatmeter.catalog.load import load_catalog, validate_dir
from moatmeter.catalog.modelarch import (
    ModelArch,
    arch_from_config,
    arch_of,
    entry_from_hf_config,
    import_hf,
)
from moatmeter.errors import CatalogError, InputError

ROOT = Path(__file__).resolve().parents[1]
CAT = load_catalog()
MODELS = CAT.models

# Publishers count "active" differently. Mistral and Qwen count every parameter a token uses
# including the input embedding (ModelArch.active_params); OpenAI's gpt-oss model card (Table 1)
# counts the unembedding but not the embedding lookup (ModelArch.active_compute_params), and so
# does DeepSeek (V2: 21B, V2-Lite: 2.4B only match that way; see test_deepseek_v2_lite_...).
ACTIVE_EXCLUDES_EMBEDDING = {"gpt-oss-20b", "gpt-oss-120b", "deepseek-v3", "deepseek-r1"}


def arch(mid: str) -> ModelArch:
    return arch_of(MODELS[mid])


def cfg(mid: str) -> dict:
    return dict(MODELS[mid].config)


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moatmeter", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ----------------------------------------------------------------------------- the catalog


def test_every_shared_model_id_is_in_the_catalog():
    doc = (ROOT / "docs" / "CONTRIBUTING-IDS.md").read_text(encoding="utf-8")
    block = doc.split("Models (")[1].split("\n\n")[0].split(":", 1)[1]
    ids = {s.strip(" .\n") for s in block.replace("\n", " ").split(",") if s.strip(" .\n")}
    assert len(ids) >= 22
    assert ids <= set(MODELS), sorted(ids - set(MODELS))
    assert len(MODELS) >= 14


@pytest.mark.parametrize("mid", sorted(m for m in MODELS if MODELS[m].published_params_b))
def test_total_within_2pct_of_published(mid):
    e = MODELS[mid]
    a = arch_of(e)
    assert a.total_params / 1e9 == pytest.approx(e.published_params_b, rel=0.02), mid
    # the published figure has its own source, beside the config's
    assert len(e.sources) >= 2 and all(s.date for s in e.sources)
    assert "config.json" in e.sources[0].ref


@pytest.mark.parametrize("mid", sorted(m for m in MODELS if MODELS[m].published_active_params_b))
def test_active_within_2pct_of_published(mid):
    e = MODELS[mid]
    a = arch_of(e)
    got = a.active_compute_params if mid in ACTIVE_EXCLUDES_EMBEDDING else a.active_params
    assert got / 1e9 == pytest.approx(e.published_active_params_b, rel=0.02), mid
    assert a.is_moe and a.active_params < a.total_params


def test_dense_models_are_all_active_and_embeddings_counted_once_when_tied():
    a = arch("llama-3.1-8b")
    assert a.active_params == a.total_params and not a.is_moe
    assert a.embedding_params == 2 * 128256 * 4096  # untied: embedding + LM head
    g = arch("gemma-2-27b")
    assert g.tied_embeddings and g.embedding_params == 256000 * 4608
    assert g.active_compute_params == g.active_params  # the tied matrix is the LM head


# ----------------------------------------------------------------------------- hand-computed


def test_llama_3_1_8b_exact_count():
    per_layer = (4096 * 4096 * 2 + 4096 * 1024 * 2) + 3 * 4096 * 14336 + 2 * 4096
    assert per_layer == 218_112_000
    expected = 32 * per_layer + 2 * 128256 * 4096 + 4096
    assert expected == 8_030_261_248
    assert arch("llama-3.1-8b").total_params == expected


def test_llama_3_1_70b_kv_bytes_per_token_bf16():
    a = arch("llama-3.1-70b")
    assert a.attention == "gqa"
    assert a.kv_bytes_per_token("bf16") == 2 * 80 * 8 * 128 * 2 == 327_680
    assert a.kv_bytes_per_token("fp8") == 163_840
    # no sliding layers: context does not change the per-token figure
    assert a.kv_bytes_per_token("bf16", context=100_000) == 327_680


def test_deepseek_v3_mla_kv_and_mtp():
    a = arch("deepseek-v3")
    assert a.is_mla and a.attention == "mla"
    assert a.kv_elems_per_token() == 61 * (512 + 64) == 35_136
    assert a.kv_bytes_per_token("bf16") == 70_272
    assert (a.moe_layers, a.dense_layers) == (58, 3)
    # The published 671B excludes the 14B multi-token-prediction module; the Hugging Face
    # checkpoint holds both (685B), the MTP layer storing its own embedding and head copies.
    assert a.total_params / 1e9 == pytest.approx(671.0, rel=0.001)
    assert a.mtp_params / 1e9 == pytest.approx(13.46, abs=0.01)
    assert (a.total_params + a.mtp_params) / 1e9 == pytest.approx(685.0, rel=0.005)
    # attention per layer: q_a + q_a_norm + q_b, kv_a(+rope) + kv_a_norm, kv_b, o
    attn = (7168 * 1536 + 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 + 512 * 128 * 256
            + 128 * 128 * 7168)
    assert a.attention_params == 61 * attn
    assert a.params_per_expert == 3 * 7168 * 2048


def test_deepseek_v2_lite_mla_without_q_lora():
    """deepseek-ai/DeepSeek-V2-Lite config.json (q_lora_rank null: q is a plain projection);
    model card: 15.7B total, 2.4B activated (DeepSeek counts active without the embedding)."""
    c = {"model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944,
         "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
         "num_key_value_heads": 16, "kv_lora_rank": 512, "q_lora_rank": None,
         "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
         "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
         "first_k_dense_replace": 1, "moe_layer_freq": 1, "vocab_size": 102400,
         "topk_method": "greedy"}
    a = arch_from_config(c)
    assert a.q_lora_rank == 0 and a.moe_layers == 26
    assert a.total_params / 1e9 == pytest.approx(15.7, rel=0.005)
    assert a.active_compute_params / 1e9 == pytest.approx(2.4, rel=0.03)
    assert a.kv_elems_per_token() == 27 * (512 + 64)


def test_mixtral_active_about_12_9b():
    a = arch("mixtral-8x7b")
    assert a.active_params / 1e9 == pytest.approx(12.9, abs=0.05)
    assert (a.n_experts, a.experts_per_token, a.moe_layers, a.intermediate) == (8, 2, 32, 0)
    # active = total - (8 - 2) unused experts in each of the 32 layers
    assert a.total_params - a.active_params == 32 * 6 * 3 * 4096 * 14336


def test_gemma2_head_dim_sliding_window_and_exact_published_count():
    a = arch("gemma-2-27b")
    assert a.head_dim == 128 != 4608 // 32
    assert (a.sliding_layers, a.sliding_window) == (23, 4096)
    # Gemma 2 report, Table 2: 1,179,648,000 embedding + 26,047,480,320 non-embedding
    assert a.total_params == 1_179_648_000 + 26_047_480_320
    per_layer = 2 * 16 * 128
    assert a.kv_elems_per_token() == 46 * per_layer
    assert a.kv_elems_per_token(context=8192) == per_layer * (23 + 23 * 4096 / 8192)
    assert a.kv_elems_per_token(context=2048) == 46 * per_layer  # window not reached


def test_qwen2_biases_and_qwen3_qk_norms_are_counted():
    q = cfg("qwen2.5-7b")
    as_llama = arch_from_config({**q, "model_type": "llama"})
    assert arch("qwen2.5-7b").total_params - as_llama.total_params == 28 * (3584 + 2 * 512)
    q3 = cfg("qwen3-30b-a3b")
    assert (arch("qwen3-30b-a3b").total_params
            - arch_from_config({**q3, "model_type": "mixtral_like"}).total_params) == 48 * 2 * 128


def test_gpt_oss_sinks_biases_window_and_mxfp4_checkpoint():
    a = arch("gpt-oss-120b")
    assert (a.sliding_layers, a.sliding_window, a.moe_layers) == (18, 128, 36)
    # expert: gate_up (2880 -> 2*2880) + bias, down (2880 -> 2880) + bias
    assert a.params_per_expert == 2880 * 5760 + 5760 + 2880 * 2880 + 2880
    # model card Table 1: checkpoint 60.8 GiB (120b) and 12.8 GiB (20b) with MXFP4 experts
    assert a.native_dtype == "mxfp4"
    assert a.weight_bytes() / 2**30 == pytest.approx(60.8, rel=0.005)
    assert arch("gpt-oss-20b").weight_bytes() / 2**30 == pytest.approx(12.8, rel=0.005)
    assert a.weight_bytes("bf16") == a.total_params * 2
    per_layer = 2 * 8 * 64
    assert a.kv_elems_per_token(context=131072) == per_layer * (18 + 18 * 128 / 131072)


def test_mistral_window_applies_to_every_layer():
    a = arch("mistral-7b")
    assert (a.sliding_layers, a.sliding_window) == (32, 4096)
    assert a.kv_bytes_per_token("bf16", context=32768) == 2 * 32 * 8 * 128 * 2 * 4096 / 32768


def test_kv_is_vectorised_over_context():
    a = arch("gpt-oss-20b")
    ctx = np.array([64.0, 128.0, 1024.0, 65536.0])
    got = a.kv_bytes_per_token("bf16", context=ctx)
    assert isinstance(got, np.ndarray) and got.shape == (4,)
    assert np.allclose(got, [a.kv_bytes_per_token("bf16", context=float(c)) for c in ctx])
    assert got[0] == got[1] > got[2] > got[3]
    dense = arch("llama-3-8b").kv_bytes_per_token("bf16", context=ctx)
    assert np.all(dense == 131072)


def test_tiny_llama_test_keeps_its_numbers():
    a = arch("tiny-llama-test")
    assert (a.vocab, a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate) == (
        2000, 128, 2, 4, 2, 352)
    assert a.total_params == 2 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 352 + 256) \
        + 2 * 2000 * 128 + 128 == 881_280


def test_moe_layer_selection_rules():
    q3 = cfg("qwen3-30b-a3b")
    a = arch_from_config({**q3, "mlp_only_layers": [0, 1]})
    assert (a.moe_layers, a.dense_layers, a.intermediate) == (46, 2, 6144)
    b = arch_from_config({**q3, "decoder_sparse_step": 2})
    assert b.moe_layers == 24
    ds = cfg("deepseek-v3")
    assert arch_from_config({**ds, "first_k_dense_replace": 0}).moe_layers == 61


def test_multimodal_text_config_is_unwrapped():
    inner = cfg("llama-3.1-8b")
    wrapped = {"model_type": "llava", "text_config": inner, "vision_config": {"hidden_size": 1}}
    assert arch_from_config(wrapped).total_params == arch("llama-3.1-8b").total_params
    with pytest.raises(CatalogError, match=r"config\.text_config\.vocab_size"):
        arch_from_config({"text_config": {**{k: v for k, v in inner.items()
                                            if k != "vocab_size"}}})


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(("mutate", "field", "words"), [
    (lambda c: c.pop("hidden_size"), "config.hidden_size", "missing"),
    (lambda c: c.pop("num_hidden_layers"), "config.num_hidden_layers", "missing"),
    (lambda c: c.update(hidden_size="4096x"), "config.hidden_size", "integer"),
    (lambda c: c.update(num_key_value_heads=7), "config.num_key_value_heads", "divide"),
    (lambda c: c.update(tie_word_embeddings="no"), "config.tie_word_embeddings", "true or false"),
])
def test_bad_dense_config_names_file_entry_field(mutate, field, words):
    c = cfg("llama-3.1-8b")
    mutate(c)
    with pytest.raises(CatalogError) as ei:
        arch_from_config(c, name="my-model", file="/x/config.json")
    msg = str(ei.value)
    assert "/x/config.json" in msg and "my-model" in msg and field in msg and words in msg
    assert "\n" not in msg


def test_bad_moe_configs():
    c = cfg("mixtral-8x7b")
    c.pop("num_experts_per_tok")
    with pytest.raises(CatalogError, match=r"config\.num_experts_per_tok"):
        arch_from_config(c)
    d = cfg("deepseek-v3")
    d.pop("kv_lora_rank")
    with pytest.raises(CatalogError, match=r"config\.kv_lora_rank"):
        arch_from_config(d)
    g = cfg("gpt-oss-20b")
    g["layer_types"] = g["layer_types"][:-1]
    with pytest.raises(CatalogError, match=r"config\.layer_types.*24"):
        arch_from_config(g)
    q = cfg("qwen3-30b-a3b")
    q["num_experts_per_tok"] = 129
    with pytest.raises(CatalogError, match="exceeds"):
        arch_from_config(q)


def test_user_catalog_model_missing_field_fails_at_load(tmp_path):
    c = cfg("llama-3.1-8b")
    c.pop("num_hidden_layers")
    entry = {"id": "broken", "hf_id": "x/broken", "config": c,
             "sources": [{"ref": "local test", "date": "2026-11-26"}]}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump([entry]), encoding="utf-8")
    with pytest.raises(CatalogError) as ei:
        validate_dir(tmp_path)  # the loader's own per-directory check, without the bundled files
    msg = str(ei.value)
    assert str(tmp_path / "models.yaml") in msg and "broken" in msg
    assert "config.num_hidden_layers" in msg


def test_entry_from_config_validates_the_entry():
    with pytest.raises(CatalogError, match=r"config\.hidden_size"):
        entry_from_hf_config({"num_hidden_layers": 2}, model_id="m", source="s",
                             date="2026-11-26", file="f.json")
    e = entry_from_hf_config(cfg("tiny-llama-test"), model_id="t", source="local",
                             date="2026-11-26")
    assert e.hf_id == "t" and arch_of(e).total_params == 881_280


# ----------------------------------------------------------------------------- import-hf


def test_import_hf_python_api_replaces_by_id(tmp_path):
    src = tmp_path / "Qwen3-30B-A3B"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg("qwen3-30b-a3b")), encoding="utf-8")
    e1, a1 = import_hf(src / "config.json", tmp_path / "cat", today="2026-11-26")
    assert e1.id == "qwen3-30b-a3b" and a1.total_params == arch("qwen3-30b-a3b").total_params
    import_hf(src, tmp_path / "cat", hf_id="Qwen/Qwen3-30B-A3B")  # folder works too
    rows = yaml.safe_load((tmp_path / "cat" / "models.yaml").read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == ["qwen3-30b-a3b"] and rows[0]["hf_id"] == "Qwen/Qwen3-30B-A3B"
    assert validate_dir(tmp_path / "cat")["models"] == 1
    with pytest.raises(InputError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
        import_hf(tmp_path / "bad.json", tmp_path / "cat")


def test_import_hf_cli_then_list_and_bad_inputs(tmp_path):
    model_dir = tmp_path / "My Model_v2"
    model_dir.mkdir()
    good = cfg("mixtral-8x7b")
    (model_dir / "config.json").write_text(json.dumps(good), encoding="utf-8")
    missing = tmp_path / "missing"
    missing.mkdir()
    m = dict(good)
    m.pop("hidden_size")
    (missing / "config.json").write_text(json.dumps(m), encoding="utf-8")
    notjson = tmp_path / "notjson.json"
    notjson.write_text("architectures: [LlamaForCausalLM]\n", encoding="utf-8")
    cat = tmp_path / "cat"

    # the bad inputs run concurrently with the good import (2 cores; keeps the test fast)
    p_missing = run_cli("catalog", "import-hf", str(missing / "config.json"), "--catalog", str(cat))
    p_import = run_cli("catalog", "import-hf", str(model_dir / "config.json"), "--catalog",
                       str(cat), "--hf-id", "me/my-model")
    out, err = p_import.communicate(timeout=60)
    assert p_import.returncode == 0, err
    assert "my-model_v2" in out and "46.70 B params" in out

    p_list = run_cli("catalog", "list", "models", "--json", "--catalog", str(cat))
    o, e = p_missing.communicate(timeout=60)
    assert p_missing.returncode == 2, (o, e)
    assert len(e.strip().splitlines()) == 1, e
    assert str(missing / "config.json") in e and "config.hidden_size" in e and "Traceback" not in e
    o, e = p_list.communicate(timeout=60)
    assert p_list.returncode == 0, e
    rows = {r["id"]: r for r in json.loads(o)}
    assert "llama-3.1-70b" in rows  # bundled entries still there
    mine = rows["my-model_v2"]
    assert mine["hf_id"] == "me/my-model" and mine["sources"]
    assert mine["total_params"] == arch("mixtral-8x7b").total_params
    assert mine["active_params"] == pytest.approx(12.88e9, rel=0.001)
    assert re.match(r"local file .*config\.json", mine["sources"][0]["ref"])


def test_import_hf_non_json_through_main(tmp_path, monkeypatch, capsys):
    """The real entry point (moatmeter.cli.main), in-process to keep the suite fast."""
    from moatmeter.cli import main

    notjson = tmp_path / "config.json"
    notjson.write_text("architectures: [LlamaForCausalLM]\n", encoding="utf-8")
    for args, words in (([str(notjson), "--catalog", str(tmp_path / "c")], "not valid JSON"),
                        ([str(tmp_path / "nope.json"), "--catalog", str(tmp_path / "c")],
                         "cannot read file")):
        monkeypatch.setattr(sys, "argv", ["moatmeter", "catalog", "import-hf", *args])
        with pytest.raises(SystemExit) as ei:
            main()
        assert ei.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and args[0] in err
    assert not (tmp_path / "c" / "models.yaml").exists()
