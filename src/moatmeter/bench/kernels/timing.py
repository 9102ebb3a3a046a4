"""Device timing that is honest on every backend: warm-up, cache flush, device events, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def backend_of(device: torch.device) -> str:
    """cuda | rocm | xpu | mps | cpu; ROCm presents itself to PyTorch as ``cuda``."""
    if device.type == "cuda":
        return "rocm" if torch.version.hip else "cuda"
    return device.type


def synchronize(device: torch.device) -> None:
    kind = device.type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "xpu":
        torch.xpu.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def _event_pair(device: torch.device) -> tuple[Any, Any] | None:
    """Start/end events timed on the device itself, so host launch jitter does not count."""
    kind = device.type
    if kind == "cuda":
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if kind == "xpu" and hasattr(torch.xpu, "Event"):
        return torch.xpu.Event(enable_timing=True), torch.xpu.Event(enable_timing=True)
    if kind == "mps" and hasattr(torch.mps, "event"):
        return torch.mps.event.Event(enable_timing=True), torch.mps.event.Event(enable_timing=True)
    return None


class Flusher:
    """Reads a buffer larger than the last-level cache between repetitions.

    Without it a weight matrix that fits in L2 (GPU) or L3 (CPU) is read from cache on every
    repetition after the first and "bandwidth" exceeds the datasheet. It reads rather than
    writes: a written buffer leaves the cache full of dirty lines whose write-back then competes
    with the timed kernel's reads (on an H100 that halved a 50 MB GEMV's measured bandwidth).
    """

    def __init__(self, device: torch.device, llc_bytes: int, *, floor: int = 64 << 20) -> None:
        size = max(2 * llc_bytes, floor)
        self.buf = torch.ones(size // 4, dtype=torch.float32, device=device)
        self.sink = torch.empty((), dtype=torch.float32, device=device)

    def __call__(self) -> None:
        torch.sum(self.buf, dim=0, out=self.sink)


def graphed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any] | None:
    """``fn`` captured once into a CUDA/HIP graph, as its replay; None where that cannot be done.

    Serving engines run decode steps as graphs, so host launch cost (large for Triton's Python
    launcher, small for cuBLAS) is not part of the kernel's time there; eager event timing of a
    20 µs kernel would count it whenever the host falls behind the device.
    """
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn()  # libraries allocate workspaces and pick kernels before capture
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        synchronize(device)
    except Exception:  # capture unsupported by this kernel or runtime: time it eagerly
        synchronize(device)
        return None
    return graph.replay


def time_fn(fn: Callable[[], Any], device: torch.device, *, flush: Callable[[], None] | None = None,
            warmup: int = 1, warm: Callable[[], Any] | None = None, min_reps: int = 3,
            max_reps: int = 50, min_time_s: float = 0.2, max_time_s: float = 5.0) -> float:
    """Median seconds of one call of ``fn`` on ``device``.

    ``warmup`` untimed calls first (of ``warm`` if given: a cheaper call that loads the same
    library code). Repeats until ``min_reps`` and ``min_time_s`` are both reached, but stops after
    ``max_time_s`` of wall time once one timed repetition exists: on a slow CPU a large GEMM
    takes seconds.
    """
    for _ in range(warmup):
        (warm or fn)()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while True:
        if flush is not None:
            flush()
        events = _event_pair(device)
        if events is not None:
            ev0, ev1 = events
            ev0.record()
            fn()
            ev1.record()
            ev1.synchronize()
            times.append(ev0.elapsed_time(ev1) / 1e3)
        else:
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t0)
        n, spent = len(times), time.perf_counter() - start
        if n >= max_reps or spent >= max_time_s:
            break
        if n >= min_reps and sum(times) >= min_time_s:
            break
    return statistics.median(times)
