"""Accuracy of the derived model sizes: computed vs the publishers' figures, per catalog model.

Run:  python3 benchmarks/model_params.py
Prints one row per model (total and active, derived vs published, relative error) and the worst
errors, so the 2 % claim of the models catalog is a printed number rather than an assertion.
"""

from __future__ import annotations

import time

from moatmeter.catalog.load import load_catalog
from moatmeter.catalog.modelarch import arch_of

# Publishers whose "active" figure leaves out the input-embedding lookup (see modelarch docstring).
COMPUTE_CONVENTION = ("gpt_oss", "deepseek_v3", "deepseek_v2")


def main() -> None:
    cat = load_catalog()
    t0 = time.perf_counter()
    archs = {mid: arch_of(m) for mid, m in cat.models.items()}
    dt = time.perf_counter() - t0
    print(f"{'model':18} {'total B':>9} {'pub B':>8} {'err %':>7} {'active B':>9} {'pub B':>7}"
          f" {'err %':>7} {'KV kB/tok bf16':>15}")
    worst_t = worst_a = 0.0
    for mid, m in cat.models.items():
        a = archs[mid]
        t = a.total_params / 1e9
        et = (t / m.published_params_b - 1) * 100 if m.published_params_b else None
        act = (a.active_compute_params if a.model_type in COMPUTE_CONVENTION
               else a.active_params) / 1e9
        ea = (act / m.published_active_params_b - 1) * 100 if m.published_active_params_b else None
        worst_t = max(worst_t, abs(et or 0.0))
        worst_a = max(worst_a, abs(ea or 0.0))
        print(f"{mid:18} {t:9.3f} {m.published_params_b or '':>8} "
              f"{'' if et is None else f'{et:+.2f}':>7} {act:9.3f} "
              f"{m.published_active_params_b or '':>7} {'' if ea is None else f'{ea:+.2f}':>7} "
              f"{a.kv_bytes_per_token('bf16') / 1e3:15.1f}")
    n_pub = sum(1 for m in cat.models.values() if m.published_params_b)
    print(f"\n{len(archs)} models ({n_pub} with a published total); worst total error "
          f"{worst_t:.2f} %, worst active error {worst_a:.2f} %; derivation {dt * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
