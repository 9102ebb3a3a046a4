"""A small autotuner of our own: time each launch configuration on the device, keep the fastest.

Triton's built-in ``triton.autotune`` benchmarks through the active GPU driver and therefore
cannot run under ``TRITON_INTERPRET=1``; this one times with :func:`timing.time_fn`, so the same
code path (config pruning, selection, cache) is exercised in CI on the interpreter and on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from moatmeter.bench.kernels.timing import time_fn


@dataclass(frozen=True)
class Config:
    """Compile-time block sizes plus launch options (ignored by the interpreter)."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def of(cls, num_warps: int = 4, num_stages: int = 2, **meta: int) -> Config:
        return cls(tuple(sorted(meta.items())), num_warps, num_stages)

    def kwargs(self) -> dict[str, int]:
        return dict(self.meta)

    def __str__(self) -> str:
        blocks = ",".join(f"{k}={v}" for k, v in self.meta)
        return f"{blocks},w={self.num_warps},s={self.num_stages}"


@dataclass
class Autotuner:
    """Chooses one :class:`Config` per key (shape bucket, dtype, device) and remembers it."""

    configs: Callable[[dict[str, Any]], Sequence[Config]]
    reps: int = 3
    cache: dict[Hashable, Config] = field(default_factory=dict)
    timings: dict[Hashable, dict[str, float]] = field(default_factory=dict)

    def choose(self, key: Hashable, problem: dict[str, Any], launch: Callable[[Config], Any],
               device: torch.device) -> Config:
        if key in self.cache:
            return self.cache[key]
        candidates = list(self.configs(problem))
        if not candidates:
            raise ValueError(f"no launch configuration fits problem {problem}")
        best: tuple[float, Config] | None = None
        seen: dict[str, float] = {}
        failures: list[str] = []
        # Interpreted kernels compile nothing and are slow: one timed run each is enough there.
        reps, warmup = (1, 0) if problem.get("interpret") else (self.reps, 1)
        for cfg in candidates:
            try:
                t = time_fn(lambda c=cfg: launch(c), device, warmup=warmup, min_reps=reps,
                            max_reps=reps, min_time_s=0.0, max_time_s=2.0)
            except Exception as exc:  # a config that exceeds shared memory/registers fails to build
                if "OutOfResources" not in type(exc).__name__ and "resources" not in str(exc):
                    raise
                failures.append(f"{cfg}: {type(exc).__name__}")
                continue
            seen[str(cfg)] = t
            if best is None or t < best[0]:
                best = (t, cfg)
        if best is None:
            raise RuntimeError("every launch configuration failed: " + "; ".join(failures))
        self.cache[key] = best[1]
        self.timings[key] = seen
        return best[1]
