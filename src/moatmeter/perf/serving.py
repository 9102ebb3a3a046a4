"""Serving model: continuous batching with chunked prefill, closed loop, Poisson arrivals, goodput.

All functions take arrays (one element per replica) and return arrays; no Python loop per replica.

Closed loop (fixed concurrency B, the benchmark "max concurrency" mode), mean field: a request
lives c + O − 1 engine steps (c = ⌈I / ``CHUNK_TOKENS``⌉ prefill chunks, then O − 1 decodes), so
each of the other B − 1 requests contributes, per step, (O − 1)/(c + O − 1) decode tokens and
I/(c + O − 1) prompt tokens on average.
- TPOT(B) = a step holding this request's decode token plus the others' average mix (single
  stream: a pure decode step);
- TTFT(B) = c steps holding one chunk of this prompt plus the others' average mix (single
  stream: the prefill alone), after waiting ``step.SCHED_LAG`` decode steps for the engine to
  take the prompt in (``OVERLAP_LAG`` more under an overlap scheduler) when B > 1;
- throughput by Little's law, B requests every TTFT + (O − 1)·TPOT, and never below serving the
  requests one at a time.

Open loop (Poisson rate λ): the mean number of requests in the system N satisfies
N = λ·(TTFT(N) + (O−1)·TPOT(N)); we parametrise by N, so λ(N) is the closed-loop rate at N (it
grows with N) and λ_max = λ(B_cap), B_cap = min(engine max batch, KV-pool sequences). Queueing:
- a prompt may wait for a free slot: M/M/c with c = B_cap, Sakasegawa's approximation
  Lq ≈ ρ^√(2(c+1)) / (1 − ρ), ρ = λ/λ_max, Wq = Lq/λ;
- prompts also queue for prefill compute: M/D/1 with service time s = the compute time of one
  prompt (its marginal cost when batched), ρ_p = λ·s, Wq = ρ_p·s / (2(1 − ρ_p)).
- p95 of a waiting time ≈ its mean · ln 20 (exponential tail); p95 of the running batch is
  N + 1.645·√N (Poisson count), capped at B_cap, which sets p95 TPOT and the interference in TTFT.

Speculative decoding (``StepInputs.with_speculation``): a request's O − 1 decode tokens take
(O − 1) / E steps, E = ``step.spec_tokens`` tokens per step, each step a draft-and-verify step;
TPOT = step / E.

Goodput is the largest λ whose p95 TTFT and p95 TPOT meet the SLO. Both grow with N, so a
vectorised bisection on log N over (N_MIN, B_cap) finds it in ``BISECT_ITERS`` array passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moatmeter.perf.step import (
    CHUNK_TOKENS,
    OVERLAP_LAG,
    SCHED_LAG,
    StepInputs,
    StepTime,
    decode_step,
    prefill_time,
    spec_tokens,
)

N_MIN = 1e-3
BISECT_ITERS = 12
LN20 = float(np.log(20.0))
Z95 = 1.645


@dataclass
class ServingPoint:
    """Operating point arrays for one load level per replica."""

    concurrency: np.ndarray  # mean sequences in the system
    rate_rps: np.ndarray
    ttft_mean: np.ndarray
    ttft_p95: np.ndarray
    tpot_mean: np.ndarray
    tpot_p95: np.ndarray
    output_tps: np.ndarray
    step: StepTime  # the decode step at the mean batch (for the bottleneck)


def _chunks(inp: np.ndarray) -> np.ndarray:
    return np.ceil(np.maximum(inp, 1.0) / CHUNK_TOKENS)


def _decode_steps(s: StepInputs, out: np.ndarray) -> np.ndarray:
    """Decode steps after the first token: O − 1, fewer when speculation yields more per step."""
    return np.maximum(out - 1.0, 0.0) / spec_tokens(s)


def _decode(s: StepInputs, n: np.ndarray, inp: np.ndarray, out: np.ndarray) -> StepTime:
    """A step this request decodes in: itself plus the other n−1 requests' average mix."""
    c = _chunks(inp)
    d = _decode_steps(s, out)
    life = c + d
    others = np.maximum(n - 1.0, 0.0)
    dec = 1.0 + others * d / life
    pre_tok = others * inp / life
    return decode_step(s, dec, inp + out / 2.0, pre_tok, inp / 2.0)


def _ttft(s: StepInputs, n: np.ndarray, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The steps that carry this request's prompt chunks, beside the others' average mix."""
    c = _chunks(inp)
    d = _decode_steps(s, out)
    life = c + d
    others = np.maximum(n - 1.0, 0.0)
    dec = others * d / life
    pre_tok = others * inp / life + inp / c
    return c * decode_step(s, dec, inp + out / 2.0, pre_tok, inp / 2.0, eager=1.0).total


def _sched_lag(s: StepInputs, st: StepTime, busy: np.ndarray | bool = True,
               arrival: float = 0.0, queued: bool = False) -> np.ndarray | float:
    """Mean wait of a new request for a step to take its prompt in, with a batch running
    (``busy``): ``SCHED_LAG`` steps, ``OVERLAP_LAG`` more under an overlap scheduler, less
    ``arrival`` (0.5 for a Poisson arrival, which lands mid-step). A request already ``queued``
    in the engine (a burst's refills) has no client round trip to wait for: it takes the slot a
    finished request frees in the next step, one step later under an overlap scheduler (that
    step was planned before the slot freed)."""
    if queued:
        lag: np.ndarray | float = 0.0 if s.overlap is None else 1.0 * s.overlap
    else:
        lag = max(SCHED_LAG - arrival, 0.0)
        if s.overlap is not None:
            lag = lag + OVERLAP_LAG * s.overlap
    return np.where(busy, lag * st.total, 0.0)


def _poll_wait(s: StepInputs, st: StepTime, busy: np.ndarray | bool = True
               ) -> np.ndarray | float:
    """Mean wait of a new request for the scheduler's next look at its queue: with a batch
    running (``busy``), SGLang's ``--scheduler-recv-interval R`` polls every R decode steps (at
    once after a prompt step or when idle), so an arrival waits (R − 1) / 2 steps more than with
    R = 1."""
    if s.poll_steps is None:
        return 0.0
    return np.where(busy, 0.5 * (s.poll_steps - 1.0) * st.total, 0.0)


def _batch_wait(s: StepInputs, lam: np.ndarray, inp: np.ndarray, st: StepTime,
                busy: np.ndarray | bool = True) -> np.ndarray | float:
    """Mean wait of a new prompt under TensorRT-LLM's delayed batching.

    The first prompt to arrive opens a window of W steps; the window closes at W or once the
    prompts gathered hold r x max_num_tokens tokens (k prompts). With ``lam`` prompts arriving
    per step a window lasts W' = min(W, (k − 1) / lam) and gathers 1 + lam W' prompts: the first
    waits W', the others W'/2 on average. With nothing decoding (not ``busy``) no prompt is held."""
    if s.batch_wait_iters is None or s.batch_wait_tokens is None:
        return 0.0
    w = s.batch_wait_iters
    k = np.maximum(np.ceil(s.batch_wait_tokens / np.maximum(inp, 1.0)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_eff = np.where(lam > 0, np.minimum(w, (k - 1.0) / lam), w)
    m = lam * w_eff
    return np.where((w > 0) & busy, w_eff * (1.0 + 0.5 * m) / (1.0 + m) * st.total, 0.0)


def closed_loop(s: StepInputs, concurrency: np.ndarray, inp: np.ndarray, out: np.ndarray,
                queued: bool = False) -> ServingPoint:
    """Fixed concurrency B (B ≥ 1 requests always in flight): B clients, each sending its next
    request when the last one ends, or (``queued``) B slots refilled from the engine's own
    queue, as in a burst of more prompts than slots."""
    b = np.maximum(np.asarray(concurrency, float), 1.0)
    inp = np.asarray(inp, float)
    out = np.asarray(out, float)
    st = _decode(s, b, inp, out)
    dec = _decode_steps(s, out)
    busy = b > 1.0
    # a queued request was received with the burst: no polling interval to wait out
    ttft = (_ttft(s, b, inp, out) + (0.0 if queued else _poll_wait(s, st, busy))
            + _sched_lag(s, st, busy, queued=queued))
    if s.batch_wait_iters is not None:
        # in a closed loop each of the b slots sends a new prompt once per request lifetime
        per_step = b / np.maximum(_chunks(inp) + dec, 1.0)
        ttft = ttft + _batch_wait(s, per_step, inp, st, busy)
    rps = b / (ttft + dec * st.total)
    # A scheduler can always serve one request at a time: never below single stream.
    one = np.ones_like(b)
    rps1 = 1.0 / (_ttft(s, one, inp, out) + dec * _decode(s, one, inp, out).total)
    rps = np.maximum(rps, rps1)
    tpot = st.total / spec_tokens(s)
    return ServingPoint(concurrency=b, rate_rps=rps, ttft_mean=ttft, ttft_p95=ttft,
                        tpot_mean=tpot, tpot_p95=tpot, output_tps=rps * out, step=st)


def queue_wait(clients: np.ndarray, cap: np.ndarray, rps: np.ndarray) -> np.ndarray:
    """Mean wait in the server's queue of a closed loop with more clients than it runs at once
    (its batch cap or KV pool): (clients - cap) / throughput, by Little's law; 0 within the cap."""
    return np.maximum(np.asarray(clients, float) - cap, 0.0) / np.maximum(rps, 1e-12)


@dataclass
class _Ctx:
    s: StepInputs
    inp: np.ndarray
    out: np.ndarray
    pre: np.ndarray
    bcap: np.ndarray
    lam_max: np.ndarray


def _context(s: StepInputs, inp: np.ndarray, out: np.ndarray, bcap: np.ndarray) -> _Ctx:
    inp = np.broadcast_to(np.asarray(inp, float), (len(s),))
    out = np.broadcast_to(np.asarray(out, float), (len(s),))
    pre = prefill_time(s, inp).compute  # marginal cost of a prompt batched with others
    bcap = np.maximum(np.asarray(bcap, float), 1.0)
    lam_max = closed_loop(s, bcap, inp, out).rate_rps
    return _Ctx(s, inp, out, pre, bcap, lam_max)


def _open_at(c: _Ctx, n: np.ndarray) -> ServingPoint:
    """Metrics when the mean number of requests in the system is ``n`` (0 < n ≤ B_cap)."""
    s, inp, out = c.s, c.inp, c.out
    n = np.clip(n, N_MIN, c.bcap)
    n1 = np.maximum(n, 1.0)
    st = _decode(s, n1, inp, out)
    ttft0 = _ttft(s, n1, inp, out)
    # below one request in the system on average, requests mostly run alone
    lam = n / (ttft0 + _decode_steps(s, out) * st.total)
    rho = np.clip(lam / c.lam_max, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lq = rho ** np.sqrt(2.0 * (c.bcap + 1.0)) / (1.0 - rho)
        wq_slot = np.where(rho < 1.0, lq / np.maximum(lam, 1e-30), np.inf)
        rho_p = lam * c.pre
        wq_pre = np.where(rho_p < 1.0, rho_p * c.pre / (2.0 * (1.0 - rho_p)), np.inf)
    n95 = np.minimum(c.bcap, n + Z95 * np.sqrt(n))
    st95 = _decode(s, np.maximum(n95, 1.0), inp, out)
    # an arrival also waits for the step in progress (half of it on average) and, under an
    # overlap scheduler, one more
    hold = _poll_wait(s, st) + _batch_wait(s, lam * st.total, inp, st)
    ttft_mean = ttft0 + _sched_lag(s, st, arrival=0.5) + hold + wq_slot + wq_pre
    ttft95 = (_ttft(s, np.maximum(n95, 1.0), inp, out) + _sched_lag(s, st95) + 2.0 * hold
              + LN20 * (wq_slot + wq_pre))
    per = spec_tokens(s)
    return ServingPoint(concurrency=n, rate_rps=lam, ttft_mean=ttft_mean, ttft_p95=ttft95,
                        tpot_mean=st.total / per, tpot_p95=st95.total / per,
                        output_tps=lam * out, step=st)


def open_loop(s: StepInputs, rate: np.ndarray, inp: np.ndarray, out: np.ndarray,
              bcap: np.ndarray) -> ServingPoint:
    """Poisson arrivals at ``rate`` req/s; rates at or above λ_max give infinite TTFT."""
    c = _context(s, inp, out, bcap)
    rate = np.broadcast_to(np.asarray(rate, float), (len(s),))
    lo = np.full(len(s), np.log(N_MIN))
    hi = np.log(c.bcap)
    for _ in range(BISECT_ITERS + 6):
        mid = 0.5 * (lo + hi)
        lam = _open_at(c, np.exp(mid)).rate_rps
        below = lam < rate
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    p = _open_at(c, np.exp(0.5 * (lo + hi)))
    over = rate >= c.lam_max
    p.rate_rps = np.where(over, c.lam_max, rate)
    p.output_tps = p.rate_rps * c.out
    p.ttft_mean = np.where(over, np.inf, p.ttft_mean)
    p.ttft_p95 = np.where(over, np.inf, p.ttft_p95)
    return p


@dataclass
class Goodput:
    rate_rps: np.ndarray
    point: ServingPoint
    lam_max: np.ndarray  # saturation rate (no SLO)


def goodput(s: StepInputs, inp: np.ndarray, out: np.ndarray, bcap: np.ndarray,
            ttft_slo: float | np.ndarray, tpot_slo: float | np.ndarray) -> Goodput:
    """Highest Poisson rate meeting both p95 SLOs (0 where even a lone request misses them)."""
    c = _context(s, inp, out, bcap)
    lo = np.full(len(s), np.log(N_MIN))
    hi = np.log(c.bcap)

    def ok(p: ServingPoint) -> np.ndarray:
        return (p.ttft_p95 <= ttft_slo) & (p.tpot_p95 <= tpot_slo)

    feasible0 = ok(_open_at(c, np.exp(lo)))
    for _ in range(BISECT_ITERS):
        mid = 0.5 * (lo + hi)
        good = ok(_open_at(c, np.exp(mid)))
        lo = np.where(good, mid, lo)
        hi = np.where(good, hi, mid)
    p = _open_at(c, np.exp(lo))
    rate = np.where(feasible0, p.rate_rps, 0.0)
    p.output_tps = rate * c.out
    return Goodput(rate_rps=rate, point=p, lam_max=c.lam_max)
