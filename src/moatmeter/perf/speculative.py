"""Speculative-decoding settings: checked once, turned into the per-token acceptance the step
model uses (``StepInputs.with_speculation``, ``step.spec_tokens``).

Engines report acceptance as a mean acceptance length (tokens per verify step, TensorRT-LLM's
"acceptance rate" of its MTP blogs, SGLang's "accept length"); the step model needs the per-token
probability a with (1 − a^(k+1)) / (1 − a) = length (drafts accepted independently until the
first rejection).
"""

from __future__ import annotations

from scipy.optimize import brentq

from moatmeter.errors import InputError


def acceptance_from_length(k: int, length: float) -> float:
    """Per-token acceptance a with (1 − a^(k+1)) / (1 − a) = ``length`` tokens per step."""
    if length <= 1.0:
        return 0.0
    if length >= k + 1:
        return 0.999999
    return float(brentq(lambda a: (1.0 - a ** (k + 1)) / (1.0 - a) - length, 0.0, 0.999999))


def speculation(k: int, accept: float | None, accept_len: float | None,
                draft_cost: float | None) -> float:
    """Check speculative-decoding settings; the per-token acceptance they imply (0 when off)."""
    if not isinstance(k, int) or k < 0:
        raise InputError(f"drafted tokens per step must be an integer ≥ 0, got {k}",
                         field="spec-tokens")
    if accept is not None and accept_len is not None:
        raise InputError("give either an acceptance probability or an acceptance length, "
                         "not both", field="spec-accept")
    if k == 0:
        if accept is not None or accept_len is not None or draft_cost is not None:
            raise InputError("speculative-decoding settings need --spec-tokens ≥ 1",
                             field="spec-tokens")
        return 0.0
    if accept is None and accept_len is None:
        raise InputError("speculative decoding needs --spec-accept (per-token probability) or "
                         "--spec-accept-len (mean tokens per step)", field="spec-accept")
    if accept is not None and not (0.0 <= accept < 1.0):
        raise InputError(f"acceptance probability must be in [0, 1), got {accept}",
                         field="spec-accept")
    if accept_len is not None and not (1.0 <= accept_len <= k + 1):
        raise InputError(f"acceptance length must be between 1 and spec tokens + 1 = {k + 1}, "
                         f"got {accept_len}", field="spec-accept-len")
    if draft_cost is not None and not (0.0 <= draft_cost <= 1.0):
        raise InputError(f"draft cost must be a fraction of a decode step in [0, 1], got "
                         f"{draft_cost}", field="spec-draft-cost")
    return float(accept) if accept is not None else acceptance_from_length(k, float(accept_len))
