"""The lock-in channels that are decided per option (the dollar arithmetic lives in costs.py).

1. realised performance per stack: perf's efficiency mean and its sigma (sampled in Monte Carlo);
2. one-off migration and validation when leaving the incumbent stack, from the CUDA-only inventory;
3. extra ops/debug effort and bring-up for less mature stacks;
4. resale liquidity per vendor (residual value relative to NVIDIA);
5. licence-price scenarios (per-GPU enterprise licences and their multiplier).
"""

from __future__ import annotations

from dataclasses import dataclass

from moatmeter.catalog.schema import Stack

CUDA_BACKENDS = {"CUDA"}


@dataclass(frozen=True)
class Migration:
    """Effort drivers of leaving the incumbent stack for ``target`` (counts, not dollars)."""

    port_kernels: float = 0.0
    revalidate_engines: float = 0.0
    retrain_engineers: float = 0.0
    validate: float = 0.0

    @property
    def any(self) -> bool:
        return (self.port_kernels + self.revalidate_engines + self.retrain_engineers
                + self.validate) > 0

    def describe(self) -> str:
        parts = []
        if self.port_kernels:
            parts.append(f"port {self.port_kernels:g} custom CUDA kernels")
        if self.revalidate_engines:
            parts.append(f"rebuild {self.revalidate_engines:g} TensorRT engines")
        if self.retrain_engineers:
            parts.append(f"retrain {self.retrain_engineers:g} CUDA engineers")
        if self.validate:
            parts.append("validate the new serving stack")
        return "; ".join(parts) or "none"


def migration(incumbent: Stack | None, target: Stack | None, *, kernels: int, engines: int,
              engineers: int) -> Migration:
    """What moving from ``incumbent`` to ``target`` involves; an API option has target None."""
    if incumbent is None:
        return Migration()
    if target is None:  # hosted API: only the validation of a different serving path
        return Migration(validate=1.0)
    if target.id == incumbent.id:
        return Migration()
    leaves_cuda = incumbent.backend in CUDA_BACKENDS and target.backend not in CUDA_BACKENDS
    leaves_trt = incumbent.engine == "TensorRT-LLM" and target.engine != "TensorRT-LLM"
    return Migration(
        port_kernels=float(kernels) if leaves_cuda else 0.0,
        revalidate_engines=float(engines) if leaves_trt else 0.0,
        retrain_engineers=float(engineers) if leaves_cuda else 0.0,
        validate=1.0,
    )


def liquidity_param(vendor: str) -> str | None:
    """Parameter id of the vendor's resale haircut; None means the NVIDIA reference (1.0)."""
    if vendor == "nvidia":
        return None
    if vendor in ("amd", "intel"):
        return f"liquidity_{vendor}"
    return "liquidity_other"


def maturity_params(maturity: str) -> tuple[str | None, str | None]:
    """(extra ops fraction, one-off bring-up months) parameter ids; None for mature stacks."""
    if maturity == "mature":
        return None, None
    return f"maturity_ops_{maturity}", f"maturity_setup_months_{maturity}"


def licence_applies(vendor: str, enterprise: bool) -> bool:
    return enterprise and vendor == "nvidia"
