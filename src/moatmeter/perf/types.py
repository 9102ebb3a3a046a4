"""The data contract between the performance model (perf/) and its users (plan, predict, bench).

Plain data in, plain data out. ``evaluate_grid`` (implemented in perf/, exported from
``moatmeter.perf``) takes a struct-of-arrays of candidate *replicas* and returns arrays of results,
one element per candidate, so the planner can evaluate many thousands per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Workload:
    input_tokens: float  # mean prompt length per request
    output_tokens: float  # mean generated length per request
    prefix_cache_hit: float = 0.0  # fraction of prompt tokens served from the prefix cache


@dataclass(frozen=True)
class SLO:
    ttft_p95_s: float
    tpot_p95_s: float


@dataclass
class DeploymentGrid:
    """Candidate replicas, struct of arrays (all the same length N).

    One replica = ``tp * pp`` devices of one accelerator running one engine instance.
    Data parallelism (replica count) is the planner's job, not the perf model's.
    """

    accelerator: np.ndarray  # str ids, catalog accelerators
    stack: np.ndarray  # str ids, catalog stacks
    tp: np.ndarray  # int
    pp: np.ndarray  # int
    weight_dtype: np.ndarray  # str: bf16, fp16, fp8, int8, int4, fp4
    kv_dtype: np.ndarray  # str: bf16, fp16, fp8
    # engine limit on concurrent sequences (None: each engine's default, deploy.default_max_batch)
    max_batch: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.accelerator)

    @property
    def devices(self) -> np.ndarray:
        return np.asarray(self.tp) * np.asarray(self.pp)


@dataclass
class GridResult:
    """Per-candidate predictions for one replica. Infeasible rows have ``reason`` set."""

    feasible: np.ndarray  # bool
    reason: list[str]  # '' when feasible, else a short human reason ("weights do not fit ...")
    bottleneck: np.ndarray  # str: compute | memory | interconnect | overhead | kv_capacity
    max_sequences: np.ndarray  # KV-pool limited concurrent sequences at in+out context
    # Goodput: the highest Poisson arrival rate (req/s) at which p95 TTFT and p95 TPOT meet the
    # SLO; 0 when not even one request meets it.
    goodput_rps: np.ndarray
    output_tokens_per_s: np.ndarray  # at goodput
    ttft_p95_s: np.ndarray  # at goodput
    tpot_p95_s: np.ndarray  # at goodput
    single_ttft_s: np.ndarray  # one request alone
    single_tpot_s: np.ndarray
    max_output_tokens_per_s: np.ndarray  # offline (max throughput), no SLO
    # Log-space standard deviation of realised performance for (stack, family): the measured
    # software gap's uncertainty, widened by the prompt's share of the request time at goodput
    # (calibrate.metric_sigma). Monte Carlo multiplies throughput by lognormal(0, eff_sigma).
    eff_sigma: np.ndarray
    # Mean realised efficiency multipliers used, for reporting (compute, memory).
    eff_compute: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eff_memory: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_note: list[str] = field(default_factory=list)  # e.g. "fallback from CDNA3"
    # bool per row: speculative decoding was asked for, the stack ships it, and it raised goodput
    speculating: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
