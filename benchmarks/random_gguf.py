"""Write a random-weight GGUF with a catalog model's shapes, for llama.cpp speed measurements.

Speed does not depend on the weights' values, so a machine with no network (or no licence to a
model) can still time llama.cpp on the exact shapes of a catalog model: ``llama-bench`` reads the
file like a converted checkpoint. Q4_0 and Q8_0 blocks are written directly (an fp16 scale and
random 4-bit or 8-bit values: llama.cpp's 18- and 34-byte layouts for 32 weights); F16 tensors hold
small random values. The
vocabulary is a placeholder of the model's size (control tokens, the 256 byte tokens, the word
pieces `bench serve` builds its prompts from, then ``tN`` fillers), so a synthetic prompt of N words
is about N tokens and any other text still tokenizes (byte fallback).

    python benchmarks/random_gguf.py --model llama-2-7b --type q4_0 --out llama-2-7b-q4_0.gguf
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from moatmeter.catalog.load import load_catalog
from moatmeter.catalog.modelarch import arch_of
from moatmeter.errors import MoatError

TYPES = ("q4_0", "q8_0", "f16")
_RNG = np.random.default_rng(0)
_POOL = _RNG.integers(0, 256, size=1 << 22, dtype=np.uint8)  # 4 MiB of random bytes, tiled


def _random_bytes(n: int) -> np.ndarray:
    reps = -(-n // _POOL.size)
    return np.tile(_POOL, reps)[:n]


def _word_pieces() -> list[str]:
    """Every prefix of "▁word" for the words `bench serve` builds prompts from, and the letters:
    SentencePiece merges a word up through its prefixes, so each word then costs one token and a
    prompt of N words is about N tokens, as with a real vocabulary."""
    from moatmeter.bench.prompts import _WORDS

    out: dict[str, None] = {"▁": None}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        out[ch] = None
    for word in _WORDS:
        piece = "▁" + word
        for k in range(2, len(piece) + 1):
            out[piece[:k]] = None
    return list(out)


def _blocks(kind: str, rows: int, cols: int, block_bytes: int, scale: float) -> np.ndarray:
    """llama.cpp blocks of 32 weights as raw bytes: an fp16 ``scale``, then random values."""
    if cols % 32:
        raise ValueError(f"{kind} needs a multiple of 32 columns, got {cols}")
    blocks = rows * (cols // 32)
    out = _random_bytes(blocks * block_bytes).reshape(blocks, block_bytes)
    out[:, 0:2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
    return out.reshape(rows, cols // 32 * block_bytes)


def q4_0(rows: int, cols: int) -> np.ndarray:
    """Q4_0: 18 bytes per 32 weights (scale 2^-7, random nibbles)."""
    return _blocks("Q4_0", rows, cols, 18, 2.0 ** -7)


def q8_0(rows: int, cols: int) -> np.ndarray:
    """Q8_0: 34 bytes per 32 weights (scale 2^-10, random int8 values)."""
    return _blocks("Q8_0", rows, cols, 34, 2.0 ** -10)


def f16(rows: int, cols: int) -> np.ndarray:
    vals = (_random_bytes(rows * cols).astype(np.float16) - 128.0) * np.float16(2.0 ** -10)
    return vals.reshape(rows, cols)


def write(path: Path, model: str, qtype: str, vocab: int | None = None) -> Path:
    """``vocab`` replaces the model's vocabulary size (embedding and output rows), to isolate
    what the vocabulary costs: the same layers with 32,000 logits instead of 128,256, say."""
    import gguf

    entry = load_catalog().model(model)
    a = arch_of(entry)
    if vocab is not None:
        a = replace(a, vocab=vocab)
    if a.n_experts or a.kv_lora_rank or a.sliding_window:
        raise ValueError(f"{model}: only dense models without sliding windows are written")
    cfg: dict[str, Any] = entry.config
    hd = a.head_dim
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"{model} (random weights)")
    w.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    w.add_embedding_length(a.hidden)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.intermediate)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(a.vocab)
    file_types = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(file_types.get(qtype, gguf.LlamaFileType.MOSTLY_F16))
    words = _word_pieces()
    if len(words) + 259 > a.vocab:
        raise ValueError(f"{model}: vocabulary of {a.vocab} is too small for the word pieces")
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [w_.encode() for w_ in words]
    scores = [0.0] * len(tokens)
    scores[259:] = [float(len(w_)) for w_ in words]  # longer pieces merge first
    filler = a.vocab - len(tokens)
    tokens += [f"t{i}".encode() for i in range(filler)]
    scores += [-1.0] * filler
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (a.vocab - 259))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def mat(name: str, rows: int, cols: int) -> None:
        if qtype == "q4_0":
            w.add_tensor(name, q4_0(rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        elif qtype == "q8_0":
            w.add_tensor(name, q8_0(rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, f16(rows, cols))

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(a.hidden, dtype=np.float32))

    mat("token_embd.weight", a.vocab, a.hidden)
    for i in range(a.layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        mat(p + "attn_q.weight", a.heads * hd, a.hidden)
        mat(p + "attn_k.weight", a.kv_heads * hd, a.hidden)
        mat(p + "attn_v.weight", a.kv_heads * hd, a.hidden)
        mat(p + "attn_output.weight", a.hidden, a.heads * hd)
        norm(p + "ffn_norm.weight")
        mat(p + "ffn_gate.weight", a.intermediate, a.hidden)
        mat(p + "ffn_up.weight", a.intermediate, a.hidden)
        mat(p + "ffn_down.weight", a.hidden, a.intermediate)
    norm("output_norm.weight")
    mat("output.weight", a.vocab, a.hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-2-7b", help="dense catalog model id")
    ap.add_argument("--type", default="q4_0", choices=TYPES)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab", type=int, help="vocabulary size instead of the model's")
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        write(args.out, args.model, args.type, args.vocab)
    except (MoatError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.out.stat().st_size / 2**30:.2f} GiB in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
