"""`bench device`: how much of the datasheet vendor libraries and a portable Triton kernel deliver.

Functional core (plain data, no torch): the benchmark plan built from a catalog model's weight
shapes, roofline peaks and efficiencies, and matching a detected device to a catalog accelerator.
Edge: :func:`detect` and :func:`run_benchmark` import PyTorch lazily, so ``import moatmeter`` and
every other command stay free of it (PyTorch and Triton are the optional ``[bench]`` extra).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.modelarch import ModelArch, arch_of
from moatmeter.catalog.schema import Accelerator
from moatmeter.errors import InputError

BENCH_EXTRA_HINT = "pip install 'moatmeter[bench]' (or: bash scripts/deps/torch.sh)"
DTYPES = ("bf16", "fp16", "fp32", "fp8")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}
DECODE_M = (1, 8, 32, 64, 128, 256)
PREFILL_M = (512, 1024, 2048, 4096, 8192)
QUICK_DECODE_M = (1, 32)
QUICK_PREFILL_M = (512,)
DEFAULT_MODEL = "llama-3.1-8b"
VENDOR_LIB = {"cuda": "cuBLAS", "rocm": "hipBLASLt/rocBLAS", "xpu": "oneDNN", "mps": "MPS",
              "cpu": "MKL/oneDNN"}  # PyTorch's CPU fp32 GEMM goes to MKL, bf16/fp16 to oneDNN


# ---------------------------------------------------------------- plain data


@dataclass(frozen=True)
class DeviceInfo:
    """What PyTorch reports about the measured device (one of possibly several of its kind)."""

    device: str  # torch device string: cpu, cuda:0, xpu:0, mps
    backend: str  # cuda | rocm | xpu | mps | cpu
    name: str
    vendor: str  # nvidia | amd | intel | apple | other (catalog vendor vocabulary)
    device_type: str  # gpu | cpu | soc (catalog vocabulary)
    count: int  # devices of this backend visible to the process
    memory_bytes: int
    free_bytes: int
    llc_bytes: int  # GPU L2 / CPU L3; 0 when unknown
    units: int  # SMs / CUs / Xe cores, or CPU cores this process may use
    arch: str  # sm_90, gfx942, CPU ISA level
    torch_version: str
    runtime_version: str  # CUDA / HIP / oneAPI / oneDNN
    driver_version: str
    vendor_library: str
    triton: str  # "device" when Triton compiles for it, else why not
    fp8: bool


@dataclass(frozen=True)
class GemmCase:
    """One LLM linear layer, ``x (M, K) @ W.T`` with W (N, K) as stored in a checkpoint."""

    op: str  # qkv_proj | o_proj | gate_up_proj | down_proj | custom
    phase: str  # decode | prefill | custom
    m: int
    n: int
    k: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def bytes(self, dtype: str) -> float:
        return float(self.m * self.k + self.n * self.k + self.m * self.n) * DTYPE_BYTES[dtype]

    @property
    def shape(self) -> str:
        return f"M={self.m} N={self.n} K={self.k}"


@dataclass(frozen=True)
class AttnCase:
    """Attention forward: q (B, H, Sq, D) over a cache k, v (B, Hkv, Skv, D)."""

    phase: str  # prefill (Sq == Skv, causal) | decode (Sq == 1)
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int

    @property
    def causal(self) -> bool:
        return self.phase == "prefill"

    @property
    def flops(self) -> float:
        pairs = float(self.q_len) * self.kv_len
        if self.causal:  # bottom-right triangle of visible (query, key) pairs
            pairs -= self.q_len * (self.q_len - 1) / 2.0
        return 4.0 * self.batch * self.heads * pairs * self.head_dim

    def bytes(self, dtype: str) -> float:
        q_o = 2.0 * self.batch * self.heads * self.q_len * self.head_dim
        kv = 2.0 * self.batch * self.kv_heads * self.kv_len * self.head_dim
        return (q_o + kv) * DTYPE_BYTES[dtype]

    @property
    def shape(self) -> str:
        return (f"B={self.batch} H={self.heads} Hkv={self.kv_heads} Sq={self.q_len} "
                f"Skv={self.kv_len} D={self.head_dim}")


@dataclass
class Plan:
    """Everything one run will measure; built without touching the device."""

    dtypes: list[str]
    gemms: list[GemmCase]
    attns: list[AttnCase]
    bw_bytes: int  # per array for copy/triad
    xfer_bytes: int  # host<->device and peer copies
    quick: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    """One measurement. ``efficiency`` is against the roof that binds (compute or memory)."""

    suite: str  # gemm | attention | bandwidth | transfer | p2p | triton_check
    impl: str  # e.g. "torch.matmul (cuBLAS)", "triton", "torch SDPA"
    library: str  # vendor | triton (what calibration groups by)
    op: str
    dtype: str
    phase: str
    shape: str
    seconds: float | None
    tflops: float | None
    gbs: float | None
    bound: str  # compute | memory | link | ""
    achieved: float | None  # in ``unit`` (the bound's)
    unit: str  # TFLOP/s | GB/s
    peak: float | None  # datasheet peak of that roof
    efficiency: float | None
    note: str = ""


@dataclass
class Report:
    run_id: str
    started_at: str
    elapsed_s: float
    device: DeviceInfo
    accelerator: str
    accelerator_name: str
    family: str
    match: str  # how the accelerator was chosen: user | auto
    model: str
    quick: bool
    results: list[Result]
    summary: dict[str, float | None]
    notes: list[str]
    db: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- functional core


def parse_dtypes(text: str | None, info: DeviceInfo, quick: bool) -> list[str]:
    """Default: bf16 (quick) or bf16+fp16, plus fp8 on devices with fp8 matrix units."""
    if text is None:
        out = ["bf16"] if quick else ["bf16", "fp16"]
        if info.fp8 and not quick:
            out.append("fp8")
        return out
    out = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not out:
        raise InputError("--dtype: empty list (choose from bf16, fp16, fp32, fp8)")
    for t in out:
        if t not in DTYPES:
            raise InputError(f"--dtype: unknown dtype '{t}' (choose from {', '.join(DTYPES)})")
    if "fp8" in out and not info.fp8:
        raise InputError(f"--dtype: fp8 GEMM needs an fp8-capable GPU; {info.name} "
                         f"({info.device}) has none")
    return out


def parse_ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated integers, got '{text}'") from None
    if not vals or any(v <= 0 for v in vals):
        raise InputError(f"{option}: values must be positive integers, got '{text}'")
    return vals


def parse_gemm(spec: str) -> GemmCase:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise InputError(f"--gemm: '{spec}' is not MxNxK with positive integers (e.g. 1x4096x4096)")
    return GemmCase("custom", "custom", int(m[1]), int(m[2]), int(m[3]))


def weight_shapes(arch: ModelArch) -> list[tuple[str, int, int]]:
    """(name, N, K) of the linear layers of one transformer block, as stored (out, in)."""
    q_out = arch.heads * arch.head_dim
    kv_out = 2 * arch.kv_heads * arch.head_dim
    inter = arch.intermediate or arch.moe_intermediate  # all-MoE models: one expert's MLP
    shapes = [("qkv_proj", q_out + kv_out, arch.hidden), ("o_proj", arch.hidden, q_out)]
    if inter:
        shapes += [("gate_up_proj", 2 * inter, arch.hidden), ("down_proj", arch.hidden, inter)]
    return shapes


def build_plan(arch: ModelArch, info: DeviceInfo, *, quick: bool, dtypes: list[str],
               decode_m: Sequence[int] | None = None, prefill_m: Sequence[int] | None = None,
               custom: Sequence[GemmCase] = (), seq_len: int | None = None,
               kv_len: int | None = None, decode_batch: int | None = None,
               bw_mib: int | None = None) -> Plan:
    """The cases to run. Quick: a few shapes that still show both roofs in ~30 s on a CPU."""
    shapes = weight_shapes(arch)
    notes: list[str] = []
    dm = list(decode_m) if decode_m else list(QUICK_DECODE_M if quick else DECODE_M)
    pm = list(prefill_m) if prefill_m else list(QUICK_PREFILL_M if quick else PREFILL_M)
    gemms: list[GemmCase] = []
    if quick:  # decode M=1 on the smallest and the largest weight, the rest on the smallest
        small = min(shapes, key=lambda s: s[1] * s[2])
        large = max(shapes, key=lambda s: s[1] * s[2])
        for i, m in enumerate(dm):
            for name, n, k in dict.fromkeys([small, large] if i == 0 else [small]):
                gemms.append(GemmCase(name, "decode", m, n, k))
        gemms += [GemmCase(small[0], "prefill", m, small[1], small[2]) for m in pm]
    else:
        for phase, ms in (("decode", dm), ("prefill", pm)):
            gemms += [GemmCase(name, phase, m, n, k) for m in ms for name, n, k in shapes]
    gemms += list(custom)
    if arch.is_moe and not arch.intermediate:
        notes.append(f"{arch.name} is MoE: MLP shapes are one expert's")
    if arch.is_mla:
        notes.append(f"{arch.name} uses MLA: attention is timed as GQA with its head_dim")
    heads, kvh, d = arch.heads, arch.kv_heads, arch.head_dim
    seq = seq_len or (512 if quick and info.backend == "cpu" else 2048 if quick else 4096)
    kv = kv_len or (4096 if quick else 8192)
    batches = [decode_batch] if decode_batch else ([1] if quick else [1, 32])
    attns = [AttnCase("prefill", 1, heads, kvh, seq, seq, d)]
    attns += [AttnCase("decode", b, heads, kvh, 1, kv, d) for b in batches]
    if bw_mib is not None:
        bw = bw_mib << 20
        if bw < 4 * info.llc_bytes:
            notes.append(f"--bw-mib {bw_mib} is under 4x the {info.llc_bytes >> 20} MiB "
                         "last-level cache: copy/triad partly measure the cache, not memory")
    else:  # each array several times the last-level cache, so every pass goes to memory
        floor = (128 << 20) if quick else (512 << 20)
        bw = max(floor, 8 * info.llc_bytes)
    xfer = (64 << 20) if quick else (512 << 20)
    return Plan(dtypes, gemms, attns, bw, xfer, quick, notes)


def gemm_bytes_needed(case: GemmCase, dtype: str) -> float:
    """Inputs, output and the Triton output buffer (fp8 results are bf16)."""
    out_b = 2 if dtype == "fp8" else DTYPE_BYTES[dtype]
    return (case.m * case.k + case.n * case.k) * DTYPE_BYTES[dtype] + 2 * case.m * case.n * out_b


def attn_bytes_needed(case: AttnCase, dtype: str) -> float:
    return case.bytes(dtype) + case.batch * case.heads * case.q_len * case.head_dim * 2 * 2


def fit_plan(plan: Plan, info: DeviceInfo, *, user_gemms: Iterable[GemmCase] = (),
             user_attn: bool = False, user_bw: bool = False) -> Plan:
    """Shapes that cannot fit the device are an error when the user asked for them, and are
    dropped with a note when they come from the defaults (a small GPU, a 7B model's 8k prefill)."""
    budget = 0.8 * info.free_bytes
    gib = 1 << 30
    user_set = set(user_gemms)
    where = f"{info.device} ({info.name}) has {info.free_bytes / gib:.1f} GiB free"
    keep: list[GemmCase] = []
    for g in plan.gemms:
        need = max(gemm_bytes_needed(g, dt) for dt in plan.dtypes)
        if need <= budget:
            keep.append(g)
        elif g in user_set:
            raise InputError(f"--gemm {g.m}x{g.n}x{g.k} needs {need / gib:.1f} GiB but {where}")
        else:
            plan.notes.append(f"skipped GEMM {g.op} {g.shape}: needs {need / gib:.1f} GiB")
    plan.gemms = keep
    keep_a: list[AttnCase] = []
    for a in plan.attns:
        need = max(attn_bytes_needed(a, dt) for dt in plan.dtypes if dt != "fp8") \
            if any(dt != "fp8" for dt in plan.dtypes) else attn_bytes_needed(a, "bf16")
        if need <= budget:
            keep_a.append(a)
        elif user_attn:
            raise InputError(f"attention {a.phase} {a.shape} needs {need / gib:.1f} GiB but "
                             f"{where} (lower --seq, --kv-len or --decode-batch)")
        else:
            plan.notes.append(f"skipped attention {a.phase} {a.shape}: needs {need / gib:.1f} GiB")
    plan.attns = keep_a
    if 3 * plan.bw_bytes > budget:
        if user_bw:
            raise InputError(f"--bw-mib {plan.bw_bytes >> 20} needs three arrays "
                             f"({3 * plan.bw_bytes / gib:.1f} GiB) but {where}")
        plan.bw_bytes = max(1 << 20, int(budget / 3) >> 20 << 20)
        plan.notes.append(f"bandwidth arrays reduced to {plan.bw_bytes >> 20} MiB to fit memory")
    return plan


def roofline(flops: float, nbytes: float, seconds: float, peak_tflops: float | None,
             peak_gbs: float | None) -> tuple[str, float | None, str, float | None, float | None]:
    """(bound, achieved, unit, peak, efficiency): the roof that limits this shape decides which
    datasheet figure the measurement is held against, so decode GEMMs are judged on bandwidth."""
    t_c = flops / (peak_tflops * 1e12) if peak_tflops else 0.0
    t_m = nbytes / (peak_gbs * 1e9) if peak_gbs else 0.0
    tflops, gbs = flops / seconds / 1e12, nbytes / seconds / 1e9
    if peak_tflops and t_c >= t_m:
        return "compute", tflops, "TFLOP/s", peak_tflops, tflops / peak_tflops
    if peak_gbs and t_m > t_c:
        return "memory", gbs, "GB/s", peak_gbs, gbs / peak_gbs
    return "compute", tflops, "TFLOP/s", None, None


def compute_result(suite: str, impl: str, library: str, op: str, dtype: str, phase: str,
                   shape: str, flops: float, nbytes: float, seconds: float,
                   acc: Accelerator, note: str = "") -> Result:
    peak_c = acc.peak_tflops.get(dtype)  # type: ignore[call-overload]
    bound, achieved, unit, peak, eff = roofline(flops, nbytes, seconds, peak_c, acc.memory_bw_gbs)
    if peak_c is None and bound == "compute":
        note = (note + "; " if note else "") + f"catalog has no {dtype} peak for {acc.id}"
    return Result(suite, impl, library, op, dtype, phase, shape, seconds, flops / seconds / 1e12,
                  nbytes / seconds / 1e9, bound, achieved, unit, peak, eff, note)


def bandwidth_result(op: str, impl: str, nbytes: float, seconds: float, peak: float | None,
                     suite: str = "bandwidth", shape: str = "", note: str = "") -> Result:
    gbs = nbytes / seconds / 1e9
    eff = gbs / peak if peak else None
    bound = "memory" if suite == "bandwidth" else "link"
    return Result(suite, impl, "vendor", op, "fp32" if suite == "bandwidth" else "", "", shape,
                  seconds, None, gbs, bound, gbs, "GB/s", peak, eff, note)


def summarize(results: Sequence[Result]) -> dict[str, float | None]:
    """Medians per (suite, library, phase): the figures calibration and the closing table use."""

    def med(vals: list[float]) -> float | None:
        return statistics.median(vals) if vals else None

    def effs(**kw: str) -> list[float]:
        return [r.efficiency for r in results if r.efficiency is not None
                and all(getattr(r, k) == v for k, v in kw.items())]

    out: dict[str, float | None] = {}
    for lib in ("vendor", "triton"):
        for phase in ("decode", "prefill"):
            out[f"gemm_{lib}_{phase}_eff"] = med(effs(suite="gemm", library=lib, phase=phase))
            out[f"attention_{lib}_{phase}_eff"] = med(effs(suite="attention", library=lib,
                                                          phase=phase))
    bw = effs(suite="bandwidth")
    out["bandwidth_eff"] = max(bw) if bw else None
    return out


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def match_accelerator(info: DeviceInfo, catalog: Catalog) -> tuple[str | None, list[str]]:
    """Catalog id whose model number appears in the device name, and the ids compared.

    Every id token containing a digit (``h100``, ``9654``, ``mi300x``) must appear in the device
    name; ties go to the entry sharing more name tokens, then the closest memory size.
    """
    dev = _tokens(info.name)
    compared = [a for a in catalog.accelerators.values()
                if a.device_type == info.device_type and a.vendor == info.vendor]
    scored: list[tuple[int, float, str]] = []
    for a in compared:
        model_tokens = {t for t in a.id.split("-") if any(c.isdigit() for c in t)
                        and not re.fullmatch(r"\d+gb", t)}
        if not model_tokens or not model_tokens <= dev:
            continue
        overlap = len(_tokens(a.name + " " + a.id) & dev)
        mem_gap = abs(a.memory_gb - info.memory_bytes / 1e9) if info.device_type != "cpu" else 0
        scored.append((overlap, -mem_gap, a.id))
    ids = sorted(a.id for a in compared)
    if not scored:
        return None, ids
    return max(scored)[2], ids


def choose_accelerator(info: DeviceInfo, catalog: Catalog, accelerator: str | None) -> tuple[
        Accelerator, str]:
    if accelerator is not None:
        acc = catalog.accelerator(accelerator)  # CatalogError (exit 2) if unknown
        if acc.device_type != info.device_type and {acc.device_type, info.device_type} != {
                "gpu", "soc"}:
            raise InputError(f"--accelerator {acc.id} is a {acc.device_type} but the measured "
                             f"device {info.device} ({info.name}) is a {info.device_type}; name "
                             f"a {info.device_type} entry or pick another --device")
        return acc, "user"
    found, compared = match_accelerator(info, catalog)
    if found is None:
        listed = ", ".join(compared) if compared else "none of that vendor and type"
        raise InputError(f"cannot match device '{info.name}' ({info.device}) to a catalog "
                         f"accelerator (compared {info.vendor} {info.device_type} entries: "
                         f"{listed}); name one with --accelerator ID")
    return catalog.accelerator(found), "auto"


# ---------------------------------------------------------------- edge: the device


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InputError(f"`bench device` needs PyTorch, which is not installed: "
                         f"{BENCH_EXTRA_HINT}") from None
    return torch


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_llc_bytes() -> int:
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        size = _read(str(idx / "size")).strip()
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if m:
            mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[2]]
            best = max(best, int(m[1]) * mult)
    return best


def _nvml_driver() -> str:
    """The driver release through NVML, for VMs and containers that hide /proc/driver/nvidia."""
    try:
        import pynvml  # nvidia-ml-py: installed beside most CUDA builds of PyTorch

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return f"NVIDIA {version.decode() if isinstance(version, bytes) else version}"
    except Exception:
        return "NVIDIA (version not exposed)"


def _meminfo() -> tuple[int, int]:
    vals: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            vals[parts[0].rstrip(":")] = int(parts[1]) * 1024
    total = vals.get("MemTotal", 0)
    if not total and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, vals.get("MemAvailable", total)


def _cpu_name() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _vendor_of(name: str) -> str:
    low = name.lower()
    for key, vendor in (("nvidia", "nvidia"), ("geforce", "nvidia"), ("tesla", "nvidia"),
                        ("amd", "amd"), ("radeon", "amd"), ("instinct", "amd"), ("epyc", "amd"),
                        ("ryzen", "amd"), ("intel", "intel"), ("xeon", "intel"),
                        ("apple", "apple")):
        if key in low:
            return vendor
    return "other"


def _cpu_libs_version(torch: Any) -> str:
    """'oneDNN 3.12.0, MKL 2024.2' from the build configuration (oneDNN was called MKL-DNN)."""
    cfg = torch.__config__.show()
    parts = []
    m = re.search(r"(?:oneDNN|MKL-DNN) v?([\d.]+)", cfg)
    if m:
        parts.append(f"oneDNN {m[1]}")
    m = re.search(r"Math Kernel Library Version ([\d.]+)", cfg)
    if m:
        parts.append(f"MKL {m[1]}")
    return ", ".join(parts) or "ATen CPU kernels"


def _triton_status(torch: Any, dev: Any, backend: str) -> str:
    if backend in ("cpu", "mps"):
        return (f"no Triton backend for {backend.upper()} in the PyPI build; kernels are checked "
                "under TRITON_INTERPRET=1 instead")
    try:
        import triton  # noqa: F401

        from moatmeter.bench.kernels import gemm
    except Exception as exc:  # missing wheel, broken install: report, don't fail the run
        return f"Triton unavailable ({type(exc).__name__}: {exc})"
    if gemm.interpreting():
        return "Triton is in interpreter mode (TRITON_INTERPRET=1): device timing would be wrong"
    try:
        a = torch.randn(32, 32, device=dev, dtype=torch.float16)
        from moatmeter.bench.kernels.timing import synchronize

        gemm.matmul(a, a, config=gemm.gemm_configs({"M": 32, "interpret": True})[0])
        synchronize(dev)
    except Exception as exc:
        return f"Triton failed on {dev} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return "device"


def resolve_device(torch: Any, device: str | None) -> Any:
    """A torch.device that exists here, or a one-line error saying why not."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if hasattr(torch, "xpu") and torch.xpu.is_available():
            return torch.device("xpu", 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device: '{device}' is not a device (examples: cpu, cuda, cuda:1, "
                         "xpu:0, mps)") from None
    build = f"torch {torch.__version__}"
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA/ROCm support" if not (
                torch.version.cuda or torch.version.hip) else "no CUDA/ROCm device is visible"
            raise InputError(f"--device {device}: device not available: {why} ({build})")
        n = torch.cuda.device_count()
        idx = 0 if dev.index is None else dev.index
        if idx >= n:
            raise InputError(f"--device {device}: device not available: only {n} CUDA/ROCm "
                             f"device(s) visible (cuda:0..cuda:{n - 1})")
        return torch.device("cuda", idx)
    if dev.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise InputError(f"--device {device}: device not available: no Intel XPU ({build})")
        n = torch.xpu.device_count()
        idx = 0 if dev.index is None else dev.index
        if idx >= n:
            raise InputError(f"--device {device}: device not available: only {n} XPU device(s)")
        return torch.device("xpu", idx)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: device not available: MPS needs Apple silicon "
                             f"and a macOS build of PyTorch ({build})")
        return dev
    raise InputError(f"--device {device}: unsupported device type '{dev.type}' "
                     "(cpu, cuda, xpu, mps)")


def detect(device: str | None = None) -> DeviceInfo:
    """Identify the device through PyTorch: name, memory, cache, versions, Triton, fp8."""
    torch = _torch()
    dev = resolve_device(torch, device)
    tv = torch.__version__
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        hip = bool(torch.version.hip)
        backend = "rocm" if hip else "cuda"
        free, total = torch.cuda.mem_get_info(dev)
        arch = (getattr(p, "gcnArchName", "") or "gfx?") if hip else f"sm_{p.major}{p.minor}"
        if hip:
            runtime = f"HIP {torch.version.hip}"
            driver = _read("/sys/module/amdgpu/version").strip() or "amdgpu (version not exposed)"
            fp8 = arch.startswith(("gfx94", "gfx95", "gfx12"))
        else:
            runtime = f"CUDA {torch.version.cuda}"
            m = re.search(r"Kernel Module\s+([\d.]+)", _read("/proc/driver/nvidia/version"))
            driver = f"NVIDIA {m[1]}" if m else _nvml_driver()
            fp8 = (p.major, p.minor) >= (8, 9)
        name = p.name
        vendor = "amd" if hip else "nvidia"
        info = dict(memory_bytes=int(total), free_bytes=int(free),
                    llc_bytes=int(getattr(p, "L2_cache_size", 0) or 0),
                    units=int(p.multi_processor_count), count=torch.cuda.device_count())
        dtype = "gpu"
        fp8 = fp8 and hasattr(torch, "_scaled_mm")
    elif dev.type == "xpu":
        p = torch.xpu.get_device_properties(dev)
        backend, name, vendor, dtype, fp8 = "xpu", p.name, "intel", "gpu", False
        total = int(p.total_memory)
        runtime = f"oneAPI/SYCL (torch.version.xpu {getattr(torch.version, 'xpu', '?')})"
        driver = str(getattr(p, "driver_version", "") or "not exposed")
        arch = str(getattr(p, "platform_name", "") or "Xe")
        info = dict(memory_bytes=total, free_bytes=int(0.9 * total), llc_bytes=0,
                    units=int(getattr(p, "gpu_subslice_count", 0) or 0),
                    count=torch.xpu.device_count())
    elif dev.type == "mps":
        backend, vendor, dtype, fp8 = "mps", "apple", "soc", False
        name = "Apple " + platform.machine()
        with contextlib.suppress(Exception):
            import subprocess

            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip() or name
        total = int(torch.mps.recommended_max_memory()) if hasattr(
            torch.mps, "recommended_max_memory") else _meminfo()[0]
        runtime, driver, arch = f"macOS {platform.mac_ver()[0]}", "Metal", platform.machine()
        info = dict(memory_bytes=total, free_bytes=int(0.8 * total), llc_bytes=0, units=0,
                    count=1)
    else:
        backend, dtype, fp8 = "cpu", "cpu", False
        name = _cpu_name()
        vendor = _vendor_of(name)
        total, avail = _meminfo()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        runtime = _cpu_libs_version(torch)
        driver = f"{platform.system()} {platform.release()}"
        arch = str(torch.backends.cpu.get_cpu_capability())
        info = dict(memory_bytes=total, free_bytes=avail, llc_bytes=_cpu_llc_bytes(), units=cores,
                    count=1)
    vendor_lib = VENDOR_LIB[backend]
    if backend == "cpu" and not torch.backends.mkldnn.is_available():
        vendor_lib = "ATen CPU"
    return DeviceInfo(device=str(dev), backend=backend, name=name, vendor=vendor,
                      device_type=dtype, torch_version=tv, runtime_version=runtime,
                      driver_version=driver, arch=arch, vendor_library=vendor_lib,
                      triton=_triton_status(torch, dev, backend), fp8=fp8, **info)


# ---------------------------------------------------------------- edge: measuring


@dataclass
class _Ctx:
    torch: Any
    dev: Any
    info: DeviceInfo
    acc: Accelerator
    quick: bool
    flush: Any
    tick: Callable[[str], None]
    graphed: int = 0
    eager: list[str] = field(default_factory=list)

    def time(self, fn: Callable[[], Any], *, flush: bool = True,
             warm: Callable[[], Any] | None = None, what: str = "", graph: bool = True) -> float:
        """Kernels on CUDA/ROCm are timed as graph replays; the rest (and failures) eagerly."""
        from moatmeter.bench.kernels.timing import graphed, time_fn

        if graph and self.dev.type == "cuda":
            replay = graphed(fn, self.dev)
            if replay is None:
                self.eager.append(what or "a kernel")
            else:
                fn, warm = replay, None
                self.graphed += 1
        fl = self.flush if flush else None
        if self.quick:
            return time_fn(fn, self.dev, flush=fl, warm=warm, min_reps=2, max_reps=20,
                           min_time_s=0.1, max_time_s=1.0)
        return time_fn(fn, self.dev, flush=fl, warm=warm, min_reps=5, max_reps=100,
                       min_time_s=0.5, max_time_s=10.0)


def _tdtype(torch: Any, name: str) -> Any:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _rand(torch: Any, shape: tuple[int, ...], dtype: Any, dev: Any, scale: float = 1.0) -> Any:
    """Normal values, but only 1 Mi of them drawn and the rest tiled: drawing 100 M+ samples
    takes seconds on a CPU, and the repetition changes no kernel's speed."""
    n = math.prod(shape)
    base = torch.randn(min(n, 1 << 20), device=dev, dtype=torch.float32).mul_(scale).to(dtype)
    reps = -(-n // base.numel())
    return base.repeat(reps)[:n].view(shape).clone() if reps > 1 else base[:n].view(shape)


def _gemms(ctx: _Ctx, plan: Plan, triton_ok: bool) -> list[Result]:
    torch = ctx.torch
    out: list[Result] = []
    lib = f"torch.matmul ({ctx.info.vendor_library})"
    fp8_done: set[tuple[int, int, int]] = set()
    for dt in plan.dtypes:
        for g in plan.gemms:
            ctx.tick(f"GEMM {dt} {g.op} {g.phase} M={g.m}")
            if dt == "fp8":
                padded = (max(16, g.m), g.n, g.k)  # M=1 and M=8 both run as M=16: time it once
                if padded not in fp8_done:
                    fp8_done.add(padded)
                    out += _fp8_gemm(ctx, g)
                continue
            td = _tdtype(torch, dt)
            x = _rand(torch, (g.m, g.k), td, ctx.dev)
            w = _rand(torch, (g.n, g.k), td, ctx.dev, 1.0 / math.sqrt(g.k))
            y = torch.empty(g.m, g.n, device=ctx.dev, dtype=td)
            wt = w.t()
            # A slow CPU spends seconds on one prefill GEMM: warm the library up on a few rows
            # instead of a full extra call (quick mode only; GPUs always warm up on the call).
            few = x[: min(g.m, 16)]
            warm = (lambda few=few, wt=wt: torch.matmul(few, wt)) if (
                ctx.quick and ctx.info.backend == "cpu") else None
            secs = ctx.time(lambda x=x, wt=wt, y=y: torch.matmul(x, wt, out=y), warm=warm,
                            what=f"{lib} {dt} {g.shape}")
            out.append(compute_result("gemm", lib, "vendor", g.op, dt, g.phase, g.shape, g.flops,
                                      g.bytes(dt), secs, ctx.acc))
            if triton_ok:
                from moatmeter.bench.kernels import gemm as tg

                y2 = torch.empty_like(y)
                tg.matmul(x, wt, out=y2)  # autotunes once per shape bucket
                err = (y2.float() - y.float()).abs().max().item()
                secs = ctx.time(lambda x=x, wt=wt, y2=y2: tg.matmul(x, wt, out=y2),
                                what=f"triton GEMM {dt} {g.shape}")
                out.append(compute_result("gemm", "triton", "triton", g.op, dt, g.phase, g.shape,
                                          g.flops, g.bytes(dt), secs, ctx.acc,
                                          note=f"max |diff| vs torch {err:.3g}"))
            del x, w, y, wt
    return out


def _fp8_gemm(ctx: _Ctx, g: GemmCase) -> list[Result]:
    """fp8 (e4m3) through ``torch._scaled_mm`` (cuBLASLt / hipBLASLt), bf16 output."""
    torch = ctx.torch
    f8 = torch.float8_e4m3fnuz if ctx.info.backend == "rocm" and ctx.info.arch.startswith(
        "gfx94") else torch.float8_e4m3fn
    m = max(16, g.m)  # the fp8 kernels need M a multiple of 16
    try:
        x = torch.randn(m, g.k, device=ctx.dev).to(f8)
        w = torch.randn(g.n, g.k, device=ctx.dev).to(f8)
        one = torch.ones((), device=ctx.dev)
        fn = lambda: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one,  # noqa: E731
                                      out_dtype=torch.bfloat16)
        secs = ctx.time(fn, what=f"fp8 GEMM {g.shape}")
    except Exception as exc:
        return [Result("gemm", "torch._scaled_mm", "vendor", g.op, "fp8", g.phase, g.shape, None,
                       None, None, "", None, "", None, None,
                       f"fp8 GEMM failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")]
    case = GemmCase(g.op, g.phase, m, g.n, g.k)
    nbytes = float(m * g.k + g.n * g.k) + 2.0 * m * g.n
    note = f"M padded to {m}" if m != g.m else ""
    return [compute_result("gemm", f"torch._scaled_mm ({ctx.info.vendor_library})", "vendor",
                           g.op, "fp8", g.phase, case.shape, case.flops, nbytes, secs, ctx.acc,
                           note)]


def _attention(ctx: _Ctx, plan: Plan, triton_ok: bool) -> list[Result]:
    torch = ctx.torch
    import torch.nn.functional as F

    out: list[Result] = []
    for dt in [d for d in plan.dtypes if d != "fp8"] or ["bf16"]:
        td = _tdtype(torch, dt)
        for a in plan.attns:
            ctx.tick(f"attention {dt} {a.phase} {a.shape}")
            q = _rand(torch, (a.batch, a.heads, a.q_len, a.head_dim), td, ctx.dev)
            k = _rand(torch, (a.batch, a.kv_heads, a.kv_len, a.head_dim), td, ctx.dev)
            v = _rand(torch, (a.batch, a.kv_heads, a.kv_len, a.head_dim), td, ctx.dev, 0.5)
            gqa = a.heads != a.kv_heads

            def sdpa(q=q, k=k, v=v, causal=a.causal, gqa=gqa) -> Any:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

            ref = sdpa()
            secs = ctx.time(sdpa, what=f"SDPA {dt} {a.shape}")
            out.append(compute_result("attention", "torch SDPA", "vendor", "attention", dt,
                                      a.phase, a.shape, a.flops, a.bytes(dt), secs, ctx.acc))
            if triton_ok:
                from moatmeter.bench.kernels.attention import flash_attention

                def fa(q=q, k=k, v=v, causal=a.causal) -> Any:
                    return flash_attention(q, k, v, causal=causal)

                err = (fa().float() - ref.float()).abs().max().item()
                secs = ctx.time(fa, what=f"triton attention {dt} {a.shape}")
                out.append(compute_result("attention", "triton flash-attention", "triton",
                                          "attention", dt, a.phase, a.shape, a.flops,
                                          a.bytes(dt), secs, ctx.acc,
                                          note=f"max |diff| vs SDPA {err:.3g}"))
            del q, k, v, ref
    return out


def _bandwidth(ctx: _Ctx, plan: Plan) -> list[Result]:
    torch = ctx.torch
    n = plan.bw_bytes // 4
    a = torch.empty(n, device=ctx.dev, dtype=torch.float32)
    b = torch.ones(n, device=ctx.dev, dtype=torch.float32)
    c = torch.full((n,), 2.0, device=ctx.dev, dtype=torch.float32)
    shape = f"{n * 4 / 2**20:.0f} MiB/array (LLC {ctx.info.llc_bytes / 2**20:.0f} MiB)"
    peak = ctx.acc.memory_bw_gbs
    ctx.tick("bandwidth copy")
    secs = ctx.time(lambda: a.copy_(b), flush=False)
    out = [bandwidth_result("copy", "torch copy_", 2.0 * n * 4, secs, peak, shape=shape)]
    ctx.tick("bandwidth triad")
    secs = ctx.time(lambda: torch.add(b, c, alpha=3.0, out=a), flush=False)
    out.append(bandwidth_result("triad", "torch add(alpha) a=b+s*c", 3.0 * n * 4, secs, peak,
                                shape=shape))
    return out


def _transfers(ctx: _Ctx, plan: Plan) -> list[Result]:
    """Host<->device over PCIe/the host link, pinned host memory; peer copies with 2+ devices."""
    torch = ctx.torch
    from moatmeter.bench.kernels.timing import synchronize

    n = plan.xfer_bytes // 4
    pin = ctx.dev.type in ("cuda", "xpu")
    host = torch.empty(n, dtype=torch.float32, pin_memory=pin)
    devbuf = torch.empty(n, device=ctx.dev, dtype=torch.float32)
    shape = f"{plan.xfer_bytes / 2**20:.0f} MiB" + (" pinned" if pin else "")
    out: list[Result] = []
    note = "catalog has no host-link peak"
    ctx.tick("host to device")
    secs = ctx.time(lambda: devbuf.copy_(host, non_blocking=pin), flush=False, graph=False)
    out.append(bandwidth_result("h2d", "tensor.copy_", n * 4.0, secs, None, "transfer", shape,
                                note))
    ctx.tick("device to host")
    secs = ctx.time(lambda: host.copy_(devbuf, non_blocking=pin), flush=False, graph=False)
    out.append(bandwidth_result("d2h", "tensor.copy_", n * 4.0, secs, None, "transfer", shape,
                                note))
    if ctx.info.count >= 2 and ctx.dev.type in ("cuda", "xpu"):
        other = torch.device(ctx.dev.type, (ctx.dev.index or 0) + 1 if (
            ctx.dev.index or 0) + 1 < ctx.info.count else 0)
        peer = torch.empty(n, device=other, dtype=torch.float32)
        ctx.tick(f"peer {ctx.dev} -> {other}")

        def p2p() -> None:
            peer.copy_(devbuf)
            synchronize(other)

        secs = ctx.time(p2p, flush=False, graph=False)
        peak = ctx.acc.scaleup_gbs / 2 if ctx.acc.scaleup_gbs else None
        out.append(bandwidth_result("p2p", f"copy {ctx.dev}->{other}", n * 4.0, secs, peak,
                                    "p2p", shape, "peak = half the bidirectional scale-up figure"))
    return out


def _triton_check(quick: bool) -> tuple[list[Result], str]:
    """Correctness of our Triton kernels under the interpreter, for devices Triton cannot target.

    ``@triton.jit`` picks interpreted or compiled when the kernel module is imported: if it is not
    imported yet, this process switches to the interpreter; otherwise a child process does it.
    """
    rows: list[dict[str, Any]]
    try:
        if "moatmeter.bench.kernels.gemm" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        from moatmeter.bench.kernels import gemm

        if gemm.interpreting():
            from moatmeter.bench.kernels.selfcheck import check

            rows = check(quick=quick)
        else:
            import json
            import subprocess

            args = [sys.executable, "-m", "moatmeter.bench.kernels.selfcheck"]
            proc = subprocess.run(args + (["--quick"] if quick else []), capture_output=True,
                                  text=True, timeout=600, check=True)
            rows = json.loads(proc.stdout)
    except Exception as exc:  # Triton missing or broken: the measurement still stands
        return [], f"Triton interpreter check not run ({type(exc).__name__}: {exc})"
    out = []
    for r in rows:
        verdict = "ok" if r["ok"] else "MISMATCH"
        out.append(Result("triton_check", "triton (interpreter)", "triton", r["kernel"],
                          r["dtype"], "", r["shape"], None, None, None, "", None, "", None, None,
                          f"max |err| {r['max_abs_err']:.3g} vs tolerance {r['tol']:.3g}: "
                          f"{verdict}"))
    bad = [r for r in rows if not r["ok"]]
    return out, (f"Triton interpreter check: {len(rows) - len(bad)}/{len(rows)} kernels match "
                 "PyTorch")


def count_steps(plan: Plan, info: DeviceInfo, triton_ok: bool, suites: Sequence[str]) -> int:
    """Progress-bar total: one step per GEMM (dtype, shape), attention case, stream, copy."""
    gemm = len(plan.dtypes) * len(plan.gemms)
    attn = max(1, len([d for d in plan.dtypes if d != "fp8"])) * len(plan.attns)
    bw = 2 if "bandwidth" in suites else 0
    xfer = 2 + (1 if info.count >= 2 else 0) if "transfer" in suites and info.backend != "cpu" \
        else 0
    check = int(not triton_ok and info.backend in ("cpu", "mps") and bool(plan.gemms or
                                                                           plan.attns))
    return gemm + attn + bw + xfer + check


def run_benchmark(catalog: Catalog, *, device: str | None = None, accelerator: str | None = None,
                  model: str = DEFAULT_MODEL, quick: bool = False, dtypes: str | None = None,
                  decode_m: str | None = None, prefill_m: str | None = None,
                  gemm: Sequence[str] = (), seq_len: int | None = None,
                  kv_len: int | None = None, decode_batch: int | None = None,
                  bw_mib: int | None = None, suites: Sequence[str] | None = None,
                  db: str | Path | None = None,
                  progress: Callable[[str, int], None] | None = None) -> Report:
    """Detect, plan, measure, store. ``progress(description, total_steps)`` is called per step."""
    for name, val in (("--seq", seq_len), ("--kv-len", kv_len), ("--decode-batch", decode_batch),
                      ("--bw-mib", bw_mib)):
        if val is not None and val <= 0:
            raise InputError(f"{name}: must be a positive integer, got {val}")
    all_suites = ("gemm", "attention", "bandwidth", "transfer")
    chosen = list(suites) if suites else list(all_suites)
    for s in chosen:
        if s not in all_suites:
            raise InputError(f"--only: unknown suite '{s}' (choose from {', '.join(all_suites)})")
    mentry = catalog.model(model)
    arch = arch_of(mentry)
    if accelerator is not None:
        catalog.accelerator(accelerator)  # an unknown id fails before PyTorch is even imported
    if db is not None:  # an unusable store fails now, not after minutes of measuring
        from moatmeter.bench.device_store import check_store

        check_store(db)
    custom = [parse_gemm(s) for s in gemm]
    dm, pm = parse_ints(decode_m, "--decode-m"), parse_ints(prefill_m, "--prefill-m")
    info = detect(device)
    acc, how = choose_accelerator(info, catalog, accelerator)
    dts = parse_dtypes(dtypes, info, quick)
    plan = build_plan(arch, info, quick=quick, dtypes=dts, decode_m=dm, prefill_m=pm,
                      custom=custom, seq_len=seq_len, kv_len=kv_len, decode_batch=decode_batch,
                      bw_mib=bw_mib)
    plan = fit_plan(plan, info, user_gemms=custom,
                    user_attn=any(v is not None for v in (seq_len, kv_len, decode_batch)),
                    user_bw=bw_mib is not None)
    if "gemm" not in chosen:
        plan.gemms = []
    if "attention" not in chosen:
        plan.attns = []

    torch = _torch()
    from moatmeter.bench.kernels.timing import Flusher

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.perf_counter()
    dev = torch.device(info.device)
    triton_ok = info.triton == "device"
    total = count_steps(plan, info, triton_ok, chosen)
    done = 0

    def tick(desc: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(desc, total)

    torch.manual_seed(0)
    flush = Flusher(dev, info.llc_bytes) if plan.gemms or plan.attns else None
    ctx = _Ctx(torch, dev, info, acc, quick, flush, tick)
    notes = list(plan.notes)
    results: list[Result] = []
    with torch.inference_mode():
        if plan.gemms:
            results += _gemms(ctx, plan, triton_ok)
        if plan.attns:
            results += _attention(ctx, plan, triton_ok)
        if "bandwidth" in chosen:
            results += _bandwidth(ctx, plan)
        if "transfer" in chosen and info.backend != "cpu":
            results += _transfers(ctx, plan)
    if info.backend == "cpu":
        notes.append("host<->device transfers not applicable: the CPU's memory is the host's")
        if acc.device_type == "cpu":
            notes.append(f"catalog peaks are for the whole {acc.name}; this process can use "
                         f"{info.units} core(s), so efficiency is a share of the full socket")
    if not triton_ok:
        notes.append(f"Triton not timed: {info.triton}")
        if info.backend in ("cpu", "mps") and (plan.gemms or plan.attns):
            tick("Triton interpreter check")
            rows, note = _triton_check(quick)
            results += rows
            notes.append(note)
    if ctx.graphed:
        notes.append(f"{ctx.graphed} kernel(s) timed as {info.backend.upper()} graph replays, as "
                     "serving engines run decode: host launch cost is not counted")
    if ctx.eager:
        notes.append(f"{len(ctx.eager)} kernel(s) could not be captured in a graph and were timed "
                     f"eagerly (host launch cost included): {'; '.join(ctx.eager[:5])}")
    del flush, ctx
    from moatmeter.bench.device_store import new_run_id

    report = Report(run_id=new_run_id(), started_at=started,
                    elapsed_s=time.perf_counter() - t0, device=info, accelerator=acc.id,
                    accelerator_name=acc.name, family=acc.family, match=how, model=mentry.id,
                    quick=quick, results=results, summary=summarize(results), notes=notes)
    if db is not None:
        from moatmeter.bench.device_store import save_report

        save_report(db, report)
        report.db = str(db)
    return report
