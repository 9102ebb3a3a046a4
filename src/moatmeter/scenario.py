"""The planning scenario: what to serve, how much, how fast, where, for how long.

A scenario comes from a YAML file, from CLI flags, or both (flags override file fields). Unknown
keys are errors so that a typo never silently falls back to a default; every omitted key takes a
cited default (see ``DEFAULTS``) so the assumptions behind a plan are always on record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    model_validator,
)

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.schema import ModelEntry, Source
from moatmeter.errors import InputError

MLPERF_SLO_SOURCE = (
    "MLCommons inference loadgen/mlperf.conf (github.com/mlcommons/inference): "
    "llama2-70b.Server.ttft_latency = 2000 ms, tpot_latency = 200 ms (v4.0+, 2024)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """An uncertain number: its central value and the [low, high] range Monte Carlo samples."""

    value: NonNegativeFloat
    low: NonNegativeFloat
    high: NonNegativeFloat

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (self.low <= self.value <= self.high):
            raise ValueError(
                f"need low <= value <= high, got {self.low}, {self.value}, {self.high}")
        return self


# A number where a distribution is allowed means a fixed value.
Price = NonNegativeFloat | Range


def as_range(x: float | Range | None) -> Range | None:
    if x is None or isinstance(x, Range):
        return x
    return Range(value=float(x), low=float(x), high=float(x))


class Traffic(_Strict):
    requests_per_s: PositiveFloat | None = None  # average over the active hours
    tokens_per_day: PositiveFloat | None = None  # input + output tokens per day
    # Mean tokens per request; a range makes the length uncertain (sampled in Monte Carlo, with
    # the performance model evaluated at the range ends).
    input_tokens: PositiveFloat | Range = 1000.0
    output_tokens: PositiveFloat | Range = 200.0
    peak_to_average: Annotated[float, Field(ge=1.0)] = 1.0
    hours_per_day: Annotated[float, Field(gt=0.0, le=24.0)] = 24.0
    prefix_cache_hit: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _one_rate(self) -> Traffic:
        for name in ("input_tokens", "output_tokens"):
            r = getattr(self, name)
            if isinstance(r, Range) and r.low <= 0:
                raise ValueError(f"{name}: low must be greater than 0")
        if self.requests_per_s is None and self.tokens_per_day is None:
            raise ValueError("give requests_per_s or tokens_per_day")
        if self.requests_per_s is not None and self.tokens_per_day is not None:
            raise ValueError("give requests_per_s or tokens_per_day, not both")
        return self

    @property
    def avg_rps(self) -> float:
        """Average request rate during the active hours."""
        if self.requests_per_s is not None:
            return float(self.requests_per_s)
        per_req = self.in_tok + self.out_tok
        return float(self.tokens_per_day) / per_req / (self.hours_per_day * 3600.0)

    @property
    def in_tok(self) -> float:
        """Central prompt length (sizing and the perf model use it)."""
        return float(getattr(self.input_tokens, "value", self.input_tokens))

    @property
    def out_tok(self) -> float:
        return float(getattr(self.output_tokens, "value", self.output_tokens))

    @property
    def lengths_uncertain(self) -> bool:
        return any(isinstance(r, Range) and r.high > r.low
                   for r in (self.input_tokens, self.output_tokens))

    @property
    def peak_rps(self) -> float:
        return self.avg_rps * self.peak_to_average


class SLOSpec(_Strict):
    ttft_p95_s: PositiveFloat = 2.0
    tpot_p95_s: PositiveFloat = 0.2


class Site(_Strict):
    sovereign: bool = False
    electricity_usd_per_kwh: Price | None = None
    pue: Annotated[float, Field(ge=1.0)] | Range | None = None
    # 0 means an owned data centre whose floor space is already paid for.
    colocation_usd_per_kw_month: Price | None = None
    cost_of_capital: Annotated[float, Field(ge=0.0, le=1.0)] | Range | None = None


class Constraints(_Strict):
    vendors: list[str] | None = None
    max_power_kw: PositiveFloat | None = None
    max_rack_units: PositiveFloat | None = None  # server height budget, U (42U rack = 42)
    accelerators: list[str] | None = None  # restrict candidates to these catalog ids
    stacks: list[str] | None = None
    precisions: list[Literal["bf16", "fp16", "fp8", "int8", "int4", "fp4"]] = ["bf16", "fp8"]
    max_gpus: Annotated[int, Field(ge=1)] | None = None
    # Availability: serve peak load with this many replicas on top of the ones needed (N+k).
    redundancy_replicas: Annotated[int, Field(ge=0)] = 0


class Incumbency(_Strict):
    stack: str | None = None  # catalog stack id in production today, e.g. trtllm-cuda
    custom_cuda_kernels: Annotated[int, Field(ge=0)] = 0
    tensorrt_engines: Annotated[int, Field(ge=0)] = 0
    cuda_engineers: Annotated[int, Field(ge=0)] = 0


class Licences(_Strict):
    # Per-GPU enterprise software (NVIDIA AI Enterprise) on NVIDIA options; off by default because
    # the open-source engines run without it.
    nvidia_ai_enterprise: bool = False


class ApiPrice(_Strict):
    name: str
    input_usd_per_mtok: Price
    output_usd_per_mtok: Price
    source: str = Field(min_length=3)


class Speculation(_Strict):
    """Speculative decoding (MTP, EAGLE, a draft model) on the stacks that support it."""

    tokens: Annotated[int, Field(ge=1, le=16)]  # drafted tokens per step
    accept: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None  # per-token probability
    accept_len: Annotated[float, Field(ge=1.0)] | None = None  # or mean tokens per step
    draft_cost: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # of a decode step

    @model_validator(mode="after")
    def _one_acceptance(self) -> Speculation:
        if (self.accept is None) == (self.accept_len is None):
            raise ValueError("give exactly one of accept (per-token probability) and accept_len "
                             "(mean tokens per step)")
        if self.accept_len is not None and self.accept_len > self.tokens + 1:
            raise ValueError(f"accept_len {self.accept_len} exceeds tokens + 1 = "
                             f"{self.tokens + 1}")
        return self


class Scenario(_Strict):
    name: str = "scenario"
    model: str
    traffic: Traffic
    slo: SLOSpec = SLOSpec()
    speculative: Speculation | None = None
    horizon_years: Annotated[float, Field(gt=0.0, le=15.0)] = 3.0
    site: Site = Site()
    constraints: Constraints = Constraints()
    incumbency: Incumbency = Incumbency()
    licences: Licences = Licences()
    # Purchase price per accelerator id (USD per device), overriding the catalog.
    prices: dict[str, Price] = {}
    # Any catalog cost parameter by id, overriding its value/range.
    costs: dict[str, Price] = {}
    api: list[ApiPrice] = []


DEFAULTS_DOC = {
    "slo": MLPERF_SLO_SOURCE,
    "horizon_years": "tco_parameters depreciation_life_economic (3 years, range 2-5)",
    "site.electricity_usd_per_kwh": "cost parameter electricity_us_industrial_avg",
    "site.pue": "cost parameter pue_industry_average",
    "site.colocation_usd_per_kw_month": "cost parameter colocation_wholesale_na",
    "site.cost_of_capital": "cost parameter wacc_neocloud_debt_rate",
}


def _loc_msg(err: ValidationError) -> tuple[str, str]:
    errs = err.errors()
    # In a union (number | range) the branch that does not match the input's type reports a type
    # error; the other branch's complaint is the useful one.
    real = [e for e in errs if not e["type"].endswith(("_type", "_parsing"))]
    e = (real or errs)[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
    # pydantic adds the union member name ("float", "Range") to locations; drop it.
    loc = re.sub(r"\.(float|Range|constrained-float|bool|int|str|list\[[^\]]*\])(?=\.|$)", "", loc)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "extra_forbidden":
        msg = "unknown field"
    if e["type"] in ("greater_than", "greater_than_equal") and "input" in e:
        msg = f"{msg} (got {e['input']})"
    return loc, msg


def scenario_from_dict(raw: Any, *, file: str = "scenario") -> Scenario:
    if not isinstance(raw, dict):
        raise InputError("a scenario must be a YAML mapping of keys to values", file=file)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        loc, msg = _loc_msg(exc)
        raise InputError(msg, file=file, field=loc or None) from None


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read scenario file: {exc.strerror}", file=str(p)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"bad YAML{where}: {getattr(exc, 'problem', None) or 'invalid'}",
                         file=str(p)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("a scenario must be a YAML mapping of keys to values", file=str(p))
    return raw


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge CLI overrides (dotted keys already nested) into the file's mapping."""
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'traffic.input_tokens': 500} -> {'traffic': {'input_tokens': 500}}; None values dropped."""
    out: dict[str, Any] = {}
    for key, val in flat.items():
        if val is None:
            continue
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = val
    return out


def load_scenario(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario file (optional) and apply overrides given as dotted keys."""
    file = str(path) if path is not None else "command line"
    raw = read_scenario_file(path) if path is not None else {}
    if overrides:
        raw = merge(raw, nest(overrides))
    return scenario_from_dict(raw, file=file)


def resolve_model(scn: Scenario, catalog: Catalog, *, file: str = "scenario") -> ModelEntry:
    """A catalog model id, or a Hugging Face ``config.json`` path."""
    ref = scn.model
    if ref in catalog.models:
        return catalog.models[ref]
    p = Path(ref)
    if ref.endswith(".json") or p.is_file():
        if not p.is_file():
            raise InputError(f"model config file not found: {ref}", file=file, field="model")
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read model config {ref}: {exc}", file=file,
                             field="model") from None
        if not isinstance(cfg, dict):
            raise InputError(f"model config {ref} is not a JSON object", file=file, field="model")
        slug = re.sub(r"[^a-z0-9._+-]+", "-", p.parent.name.lower() or "custom").strip("-")
        from datetime import date

        from moatmeter.catalog.modelarch import arch_from_config
        from moatmeter.errors import CatalogError

        try:
            arch_from_config(cfg, name=slug or "custom", file=str(p))
        except CatalogError as exc:
            raise InputError(exc.detail, file=str(p), field=exc.field) from None
        mid = slug or "custom"
        return ModelEntry(id=mid, hf_id=str(cfg.get("_name_or_path", mid)),
                          sources=[Source(ref=str(p), date=date.today().isoformat())], config=cfg)
    near = sorted(k for k in catalog.models if ref.lower() in k or k in ref.lower())[:5]
    hint = (f" (did you mean: {', '.join(near)})" if near
            else " (see `moatmeter catalog list models`)")
    raise InputError(f"unknown model '{ref}'{hint}", file=file, field="model")


def check_ids(scn: Scenario, catalog: Catalog, *, file: str = "scenario") -> None:
    """Every catalog id the scenario names must exist: a typo must not silently drop options."""
    c = scn.constraints
    for acc in c.accelerators or []:
        if acc not in catalog.accelerators:
            raise InputError(f"unknown accelerator id '{acc}'", file=file,
                             field="constraints.accelerators")
    for st in c.stacks or []:
        if st not in catalog.stacks:
            raise InputError(f"unknown stack id '{st}'", file=file, field="constraints.stacks")
    vendors = {a.vendor for a in catalog.accelerators.values()}
    for v in c.vendors or []:
        if v.lower() not in vendors:
            raise InputError(f"unknown vendor '{v}' (known: {', '.join(sorted(vendors))})",
                             file=file, field="constraints.vendors")
    if scn.incumbency.stack and scn.incumbency.stack not in catalog.stacks:
        raise InputError(f"unknown stack id '{scn.incumbency.stack}'", file=file,
                         field="incumbency.stack")
    for acc in scn.prices:
        if acc not in catalog.accelerators:
            raise InputError(f"unknown accelerator id '{acc}'", file=file, field=f"prices.{acc}")
