"""Pydantic models of the catalog: every entry carries the sources of its numbers."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")

Dtype = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "fp6", "fp4", "int8", "int4"]
Vendor = Literal["nvidia", "amd", "intel", "apple", "google", "aws", "huawei", "other"]
DeviceType = Literal["gpu", "npu", "cpu", "soc"]
FormFactor = Literal["datacenter", "workstation", "consumer"]
Confidence = Literal["datasheet", "derived", "estimate"]
SupportLevel = Literal["yes", "partial", "experimental", "no"]
HardwareLevel = Literal["official", "experimental", "community", "unsupported"]
Maturity = Literal["mature", "maturing", "early"]
# Architecture families shared by accelerators, stacks and calibration (docs/CONTRIBUTING-IDS.md).
# A stack may name a family only if it is listed here or used by some accelerator in the catalog,
# so a typo ("Hoper") is an error instead of a silently unsupported device.
FAMILIES = (
    "Ampere", "Hopper", "Blackwell", "Ada", "Blackwell-consumer", "CDNA2", "CDNA3", "CDNA4",
    "RDNA3", "RDNA4", "Gaudi2", "Gaudi3", "Xe-HPC", "Xe-HPG", "Xe2", "Apple-M2", "Apple-M3",
    "Apple-M4", "Granite-Rapids", "Emerald-Rapids", "Zen4", "Zen5",
)
Feature = Literal[
    "continuous_batching",
    "paged_attention",
    "flash_attention",
    "chunked_prefill",
    "tensor_parallel",
    "pipeline_parallel",
    "speculative_decoding",
    "prefix_caching",
]
FEATURES: tuple[str, ...] = get_args(Feature)


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a user file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _date_text(v: Any) -> Any:
    """YAML reads an unquoted 2025-01-15 as a date and 2025 as an int; both mean the text."""
    if isinstance(v, dt.date):
        return v.isoformat()[:10]
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


class Source(Strict):
    """Where a number comes from: a URL or a document title, and the date it was published/read."""

    ref: Annotated[str, Field(min_length=3)]
    date: Annotated[str, Field(pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")]
    note: str = ""

    @field_validator("date", mode="before")
    @classmethod
    def _unquoted_yaml_date(cls, v: Any) -> Any:
        return _date_text(v)


Sources = Annotated[list[Source], Field(min_length=1)]


class Entry(Strict):
    id: str
    sources: Sources

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"'{v}' is not a valid id (lowercase letters, digits, . _ + -)")
        return v


class Accelerator(Entry):
    """Datasheet specification of one device. Peaks are dense (no sparsity), per device."""

    name: str
    vendor: Vendor
    device_type: DeviceType = "gpu"
    family: str  # architecture, e.g. Hopper, CDNA3, RDNA3, Gaudi3, Xe2, Apple-M3, Zen4
    form_factor: FormFactor
    memory_gb: PositiveFloat
    memory_bw_gbs: PositiveFloat
    # TFLOPS for float types, TOPS for integer types; dense.
    peak_tflops: dict[Dtype, PositiveFloat]
    # GeForce cards run FP16 tensor math with FP16 accumulation at twice the FP32-accumulate
    # rate that ``peak_tflops`` lists; engines that accumulate in FP16 reach this one instead.
    fp16_acc16_tflops: PositiveFloat | None = None
    tdp_w: PositiveFloat | None = None
    # Scale-up bandwidth per device, total bidirectional as vendors state it (NVLink 4: 900 GB/s).
    scaleup_gbs: Annotated[float, Field(ge=0)] | None = None
    scaleup_link: str = ""
    max_scaleup_devices: Annotated[int, Field(ge=1)] = 8
    year: Annotated[int, Field(ge=1990, le=2100)]
    price_usd: PositiveFloat | None = None
    price_date: str = ""
    price_note: str = ""
    confidence: Confidence
    notes: str = ""

    @field_validator("price_date", mode="before")
    @classmethod
    def _price_date(cls, v: Any) -> Any:
        return _date_text(v)

    @model_validator(mode="after")
    def _has_peak(self) -> Accelerator:
        if not self.peak_tflops:
            raise ValueError("peak_tflops: at least one dense peak is required")
        if self.price_usd is not None and not self.price_date:
            raise ValueError("price_date: a price needs the date it was quoted")
        return self


class ModelEntry(Entry):
    """An LLM as its Hugging Face config.json fields; totals are derived, never typed in."""

    hf_id: str
    published_params_b: PositiveFloat | None = None  # total the publisher states, billions
    published_active_params_b: PositiveFloat | None = None
    config: dict[str, Any]
    notes: str = ""


class Support(Strict):
    level: SupportLevel
    sources: Sources
    note: str = ""

    @field_validator("level", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        """Unquoted yes/no are booleans in YAML 1.1; read them as the words the user wrote."""
        return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


class FamilyClaim(Strict):
    """A statement about some accelerator families, with its sources."""

    families: Annotated[list[str], Field(min_length=1)]
    sources: Sources
    note: str = ""


class HardwareSupport(FamilyClaim):
    level: HardwareLevel


class VectorOnly(FamilyClaim):
    """Families on which a stack has no matrix-unit (tensor/XMX core) path for its GEMMs."""


class Fp16Accumulate(FamilyClaim):
    """Families on which a stack's 16-bit GEMMs accumulate in FP16 (the faster GeForce rate)."""


class Stack(Entry):
    """An inference engine on one backend: what it runs on, what it serves, what it can do."""

    name: str
    engine: str
    backend: Literal[
        "CUDA", "ROCm", "HPU", "XPU", "SYCL", "Vulkan", "Metal", "CPU", "OpenVINO", "HIP"
    ]
    vendors: Annotated[list[Vendor], Field(min_length=1)]
    hardware: Annotated[list[HardwareSupport], Field(min_length=1)]
    weight_dtypes: Annotated[list[str], Field(min_length=1)]
    kv_dtypes: Annotated[list[str], Field(min_length=1)]
    quant_formats: list[str] = []
    precision_sources: Sources
    features: dict[Feature, Support]
    maturity: Maturity
    licence: str = ""
    notes: str = ""
    # GEMMs run on the vector ALUs there, so the compute peak is the device's fp32 rate
    vector_only: list[VectorOnly] = []
    # 16-bit GEMMs accumulate in FP16 there, so a card's ``fp16_acc16_tflops`` is the peak
    fp16_accumulate: list[Fp16Accumulate] = []

    @model_validator(mode="after")
    def _all_features(self) -> Stack:
        missing = [f for f in FEATURES if f not in self.features]
        if missing:
            raise ValueError(f"features: missing {', '.join(missing)}")
        return self

    def families(self, include_experimental: bool = True) -> set[str]:
        ok = {"official", "community"} | ({"experimental"} if include_experimental else set())
        return {f for h in self.hardware if h.level in ok for f in h.families}

    def vector_only_on(self, family: str) -> bool:
        return any(family in v.families for v in self.vector_only)

    def fp16_accumulate_on(self, family: str) -> bool:
        return any(family in v.families for v in self.fp16_accumulate)

    def has(self, feature: str) -> bool:
        s = self.features.get(feature)  # type: ignore[call-overload]
        return bool(s and s.level in ("yes", "partial", "experimental"))


UNITS = {
    "USD", "USD/GPU", "USD/node", "USD/kit", "USD/switch", "USD/GPU/year", "USD/GPU-hour",
    "USD/useful-GPU-hour", "USD/kWh", "EUR/kWh", "USD/kW-month", "USD/rack-month", "USD-million/MW",
    "USD/year", "USD/Mtok", "fraction", "fraction/year", "ratio", "x", "x/year", "years", "months",
    "weeks", "W", "kW", "FTE", "FTE/node", "nodes/FTE", "people", "U/node", "U/device",
}


class CostParameter(Entry):
    """One cost input with its Monte Carlo range [low, high]."""

    value: float
    unit: str
    low: float
    high: float
    notes: str = ""
    estimate: bool = False

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        if v not in UNITS:
            raise ValueError(f"unknown unit '{v}' (known: {', '.join(sorted(UNITS))})")
        return v

    @model_validator(mode="after")
    def _range(self) -> CostParameter:
        if not (self.low <= self.value <= self.high):
            raise ValueError(f"value {self.value} outside its range [{self.low}, {self.high}]")
        return self
