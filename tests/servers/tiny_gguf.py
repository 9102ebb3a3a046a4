"""Write the catalog's `tiny-llama-test` as a random-weight Llama GGUF with a real tokenizer.

The SentencePiece tokenizer is trained here on local text (Python's own standard-library sources,
present on every machine that runs the tests), and the tensors and tokenizer metadata are written
with ``gguf.GGUFWriter`` directly, so no torch/transformers conversion step is needed.
"""

from __future__ import annotations

import io
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

STDLIB_TEXTS = ("argparse.py", "textwrap.py", "difflib.py", "pydoc.py", "inspect.py",
                "typing.py", "dataclasses.py", "subprocess.py", "pathlib.py", "tarfile.py")


def _sentences() -> Iterator[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_TEXTS:
        p = lib / name
        if p.is_file():
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line:
                    yield line


def train_tokenizer(vocab_size: int) -> Any:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, num_threads=1, minloglevel=2, input_sentence_size=200000,
        shuffle_input_sentence=False)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def write_tiny_llama(path: Path, config: dict[str, Any], seed: int = 0) -> Path:
    """Random weights, shapes from the HF-style ``config``; returns ``path``."""
    import gguf

    sp = train_tokenizer(int(config["vocab_size"]))
    vocab = sp.get_piece_size()
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, scores, types = [], [], []
    for i in range(vocab):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(hidden))
        w.add_tensor(p + "attn_q.weight", mat(heads * head_dim, hidden))
        w.add_tensor(p + "attn_k.weight", mat(kv_heads * head_dim, hidden))
        w.add_tensor(p + "attn_v.weight", mat(kv_heads * head_dim, hidden))
        w.add_tensor(p + "attn_output.weight", mat(hidden, heads * head_dim))
        w.add_tensor(p + "ffn_norm.weight", norm(hidden))
        w.add_tensor(p + "ffn_gate.weight", mat(inter, hidden))
        w.add_tensor(p + "ffn_up.weight", mat(inter, hidden))
        w.add_tensor(p + "ffn_down.weight", mat(hidden, inter))
    w.add_tensor("output_norm.weight", norm(hidden))
    w.add_tensor("output.weight", mat(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    import sys

    from moatmeter.catalog.load import load_catalog

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama-test.gguf")
    write_tiny_llama(out, load_catalog().model("tiny-llama-test").config)
    print(out, out.stat().st_size)
