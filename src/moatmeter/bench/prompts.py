"""Synthetic and dataset prompts with controlled input/output length distributions.

Prompts are a pure function of (settings, seed): ``--resume`` regenerates exactly the prompts of
the interrupted run, so request ``idx`` always means the same request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moatmeter.errors import InputError

# Common English words: most tokenizers encode each (with its leading space) as one token, so a
# prompt of N words is close to N tokens. The server's `usage` gives the exact count afterwards.
_WORD_TEXT = (
    "the of and to in is was he for it with as his on be at by had are but from or have an"
    " they which one you were all her she there would their we him been has when who will no"
    " more if out so up said what its about than into them can only other time new some could"
    " these two may first then do any like my now over such our man me even most made after"
    " also did many before must through back years where much your way well down should"
    " because each just those people how too little state good very make world still own see"
    " men work long get here between both life being under never day same another know while"
    " last might us great old year off come since against go came right used take three"
)
_WORDS = tuple(_WORD_TEXT.split())

DISTRIBUTIONS = ("fixed", "uniform", "normal")


@dataclass(frozen=True)
class LengthSpec:
    """Token-count distribution: fixed N, uniform [N-spread, N+spread], or normal(N, spread)."""

    mean: int
    dist: str = "fixed"
    spread: float = 0.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.dist == "fixed":
            out = np.full(n, float(self.mean))
        elif self.dist == "uniform":
            out = rng.uniform(self.mean - self.spread, self.mean + self.spread, n)
        elif self.dist == "normal":
            out = rng.normal(self.mean, self.spread, n)
        else:
            raise InputError(f"unknown length distribution '{self.dist}' "
                             f"(choose {', '.join(DISTRIBUTIONS)})")
        return np.maximum(1, np.rint(out)).astype(np.int64)


@dataclass(frozen=True)
class Prompt:
    text: str
    input_tokens: int  # intended (synthetic) or dataset-estimated prompt length
    max_tokens: int


def synthetic(n: int, inp: LengthSpec, out: LengthSpec, seed: int) -> list[Prompt]:
    """n prompts of random common words; each starts with its index so no two share a prefix."""
    rng = np.random.default_rng(seed)
    in_lens = inp.sample(rng, n)
    out_lens = out.sample(rng, n)
    words = np.array(_WORDS)
    prompts = []
    for i in range(n):
        k = int(in_lens[i])
        body = words[rng.integers(0, len(words), max(k - 1, 0))]
        prompts.append(Prompt(f"{i} " + " ".join(body), k, int(out_lens[i])))
    return prompts


def _turns(item: Any) -> tuple[str, str] | None:
    conv = item.get("conversations") or item.get("conversation") if isinstance(item, dict) else None
    if isinstance(conv, list) and len(conv) >= 2:
        first, second = conv[0], conv[1]
        if isinstance(first, dict) and isinstance(second, dict):
            q = first.get("value", first.get("content"))
            a = second.get("value", second.get("content"))
            if isinstance(q, str) and isinstance(a, str) and q.strip():
                return q, a
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return item["prompt"], str(item.get("completion", item.get("response", "")))
    return None


def from_dataset(path: str | Path, n: int, out: LengthSpec | None, seed: int) -> list[Prompt]:
    """Prompts from a local ShareGPT-style JSON file (list of {"conversations": [human, gpt]}).

    Output length is the reference answer's word count unless ``out`` overrides it; lengths are
    word counts (an estimate of tokens) until the server's `usage` reports the real ones.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("dataset file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a readable JSON file ({exc})", file=str(p)) from None
    if not isinstance(data, list):
        raise InputError("expected a JSON list of conversations (ShareGPT format)", file=str(p))
    pairs = [t for t in (_turns(x) for x in data) if t is not None]
    if not pairs:
        raise InputError("no usable entries: each needs 'conversations' with a human and an "
                         "assistant turn, or 'prompt'", file=str(p))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    out_lens = out.sample(rng, n) if out is not None else None
    prompts = []
    for i in range(n):
        q, a = pairs[int(order[i % len(pairs)])]
        mt = int(out_lens[i]) if out_lens is not None else max(1, len(a.split()))
        prompts.append(Prompt(q, max(1, len(q.split())), mt))
    return prompts
