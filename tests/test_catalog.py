"""The bundled catalog and its schema, checked in-process (fast): counts, sources, csv coverage,
corrections, invalid entries, the user-directory overlay and safe YAML loading."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from moatmeter.catalog.load import ENV_VAR, load_catalog, parse_entries, read_yaml, validate_dir
from moatmeter.catalog.schema import FEATURES, Accelerator, CostParameter, Stack
from moatmeter.errors import CatalogError


def _ids(text: str) -> list[str]:
    return text.split()


# shared/data/accelerators.csv by `name` (mem GB, GB/s, bf16, fp8, int8, TDP W, scale-up GB/s,
# price $) and every `parameter` of tco_parameters.csv: the catalog must carry each row, and any
# figure it changes must be explained in the entry's notes. Copied here because CI clones the
# repository without shared/.
CSV_ACCELERATORS: dict[str, tuple[float | None, ...]] = {
    "NVIDIA A100 SXM 80GB": (80, 2039, 312, None, 624, 400, 600, 17500),
    "NVIDIA H100 SXM5 80GB": (80, 3350, 989, 1979, 1979, 700, 900, 30000),
    "NVIDIA H100 PCIe 80GB": (80, 2000, 756, 1513, 1513, 350, 600, None),
    "NVIDIA H200 SXM 141GB": (141, 4800, 989, 1979, 1979, 700, 900, 35000),
    "NVIDIA B200 (HGX)": (180, 7700, 2250, 4500, 4500, 1000, 1800, 40000),
    "NVIDIA L40S": (48, 864, 362, 733, 733, 350, 64, None),
    "NVIDIA L4": (24, 300, 121, 242, 242, 72, 64, None),
    "NVIDIA GeForce RTX 4090": (24, 1008, 165, 330, 661, 450, 64, 1599),
    "NVIDIA GeForce RTX 5090": (32, 1792, None, None, None, 575, 64, 1999),
    "NVIDIA GeForce RTX 3090": (24, 936, 71, None, 284, 350, 112, 1499),
    "AMD Instinct MI250X": (128, 3277, 383, None, 383, 560, 800, None),
    "AMD Instinct MI300X": (192, 5300, 1307, 2615, 2615, 750, 896, 15000),
    "AMD Instinct MI325X": (256, 6000, 1307, 2615, 2615, 1000, 896, None),
    "AMD Instinct MI355X": (288, 8000, 2500, 5000, 5000, 1400, 1075, None),
    "AMD Radeon RX 7900 XTX": (24, 960, 123, None, 123, 355, 64, 999),
    "AMD Radeon PRO W7900": (48, 864, 123, None, 123, 295, 64, 3999),
    "Intel Gaudi 2": (96, 2450, 432, 865, None, 600, 300, None),
    "Intel Gaudi 3": (128, 3700, 1835, 1835, None, 900, 600, 15600),
    "Intel Data Center GPU Max 1550": (128, 3277, 839, None, 1678, 600, None, None),
    "Intel Arc A770 16GB": (16, 560, 138, None, 275, 225, 64, 349),
    "Intel Arc B580": (12, 456, 117, None, 233, 190, 64, 249),
    "Apple M2 Ultra (76-core GPU)": (192, 800, 27, None, None, 295, None, None),
    "Apple M3 Ultra (80-core GPU)": (512, 819, None, None, None, 480, None, None),
    "Apple M4 Max (40-core GPU)": (128, 546, None, None, None, None, None, None),
    "Intel Xeon 6980P (Granite Rapids)": (None, 844, None, None, None, 500, None, None),
    "AMD EPYC 9654 (Genoa)": (None, 461, None, None, None, 360, None, None),
    "AMD EPYC 9755 (Turin)": (None, 614, None, None, None, 500, None, None),
}
CSV_COSTS = _ids("""
h100_8gpu_server_price h100_allin_capex_per_gpu h100_gpu_street_price h200_gpu_street_price
b200_gpu_street_price mi300x_gpu_sell_price_est gaudi3_8chip_ubb_kit_list_price
server_cost_overhead_ratio cluster_interconnect_overhead_ratio ib_switch_64port_400g_price
hidden_capex_uplift depreciation_life_hyperscaler_book depreciation_life_economic
h100_residual_value_year3 a100_residual_value_year3 gpu_annual_failure_rate
spares_inventory_fraction wacc_neocloud_debt_rate gpu_loan_to_value coreweave_avg_contract_term
h100_tdp dgx_h100_max_power mi300x_tdp gaudi3_tdp b200_tdp mi355x_tbp
server_avg_power_fraction_of_tdp h200_idle_power pue_industry_average pue_modern_ai_facility
pue_enterprise_colo electricity_us_industrial_avg electricity_us_commercial_va
electricity_eu_nonhousehold_avg colocation_wholesale_na ai_dc_lease_rent colo_per_rack_month
dc_facility_capex_per_mw nvidia_ai_enterprise_subscription nvidia_ai_enterprise_cloud_hourly
hw_maintenance_support staff_fte_per_gpu_servers staff_small_deployment_fte
gpu_infra_engineer_base_salary ops_team_1024gpu_diy cost_share_gpu_network_storage
aws_p5_h100_ondemand_2023_2025 aws_p5_price_cut_june_2025 aws_capacity_block_h100
h100_ondemand_neocloud h100_ondemand_hyperscaler h100_1yr_contract h200_ondemand b200_ondemand
mi300x_ondemand mi300x_breakeven_rent_vs_h200_trtllm reserved_discount_vs_ondemand
owned_tco_mi300x owned_cost_stack_h100 owned_h100_useful_gpu_hour_70pct
illustrative_h100_owned_cost mi300x_realized_vs_nvidia mi300x_fraction_of_peak_flops
mi300x_hbm_bw_efficiency gaudi3_vs_h100_inference mi355x_vs_b200_mlperf_llama2_70b
cuda_to_sycl_auto_migration cuda_to_hip_port_effort_hpc lockin_switching_cost_multiple
semianalysis_amd_training_bugfix_time neocloud_tier_tco_premium api_llama33_70b_deepinfra
api_llama33_70b_groq api_llama33_70b_together api_llama3_70b_bedrock
api_open70b_output_price_spread api_price_decline_rate utilization_self_hosted_typical
utilization_breakeven_buy_vs_rent neocloud_utilization_target
""")
# Ids every other part relies on (docs/CONTRIBUTING-IDS.md).
CONTRACT_ACCELERATORS = _ids("""
a100-sxm-80gb h100-sxm h100-pcie h200-sxm b200 l40s l4 rtx-4090 rtx-5090
rtx-3090 mi250x mi300x mi325x mi355x rx-7900-xtx radeon-pro-w7900 gaudi2 gaudi3 max-1550 arc-a770
arc-b580 m2-ultra m3-ultra m4-max xeon-6980p epyc-9654 epyc-9755""")
CONTRACT_STACKS = _ids("""vllm-cuda vllm-rocm vllm-hpu vllm-xpu vllm-cpu sglang-cuda sglang-rocm
trtllm-cuda tgi-cuda tgi-rocm tgi-hpu llamacpp-cuda llamacpp-hip llamacpp-sycl llamacpp-vulkan
llamacpp-metal llamacpp-cpu ollama-cuda ollama-rocm ollama-metal openvino-cpu
openvino-gpu""")
DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


@pytest.fixture(scope="module")
def cat() -> Any:
    return load_catalog(None)


def _acc(**over: Any) -> dict[str, Any]:
    base = {"id": "my-gpu", "name": "My GPU", "vendor": "other", "family": "Hopper",
            "form_factor": "datacenter", "memory_gb": 80, "memory_bw_gbs": 3000,
            "peak_tflops": {"bf16": 900}, "year": 2024, "confidence": "estimate",
            "sources": [{"ref": "my own measurement", "date": "2025-01"}]}
    base.update(over)
    return base


# ----------------------------------------------------------------------------- bundled data


def test_counts_and_vendors(cat: Any) -> None:
    accs = cat.accelerators.values()
    assert len(cat.accelerators) >= 25
    vendors = {a.vendor for a in accs}
    assert {"nvidia", "amd", "intel", "apple"} <= vendors
    assert sum(a.device_type == "cpu" for a in accs) >= 3
    assert len(cat.stacks) >= 15
    assert set(CONTRACT_ACCELERATORS) <= set(cat.accelerators)
    assert set(CONTRACT_STACKS) <= set(cat.stacks)


def test_every_csv_row_is_in_the_catalog(cat: Any) -> None:
    names = {a.name for a in cat.accelerators.values()}
    assert [n for n in CSV_ACCELERATORS if n not in names] == []
    assert len(CSV_ACCELERATORS) == 27
    missing = [p for p in CSV_COSTS
               if p not in cat.costs and f"{p}_input" not in cat.costs]
    assert missing == []
    # in/out API prices were split into two entries
    deepinfra = (cat.cost("api_llama33_70b_deepinfra_input").value,
                 cat.cost("api_llama33_70b_deepinfra_output").value)
    assert deepinfra == (0.13, 0.38)


def test_every_change_to_a_csv_figure_is_explained(cat: Any) -> None:
    by_name = {a.name: a for a in cat.accelerators.values()}
    changed = {}
    for name, row in CSV_ACCELERATORS.items():
        a = by_name[name]
        p = a.peak_tflops
        ours = (a.memory_gb, a.memory_bw_gbs, p.get("bf16", p.get("fp16")), p.get("fp8"),
                p.get("int8"), a.tdp_w, a.scaleup_gbs, a.price_usd)
        diffs = [i for i, (c, o) in enumerate(zip(row, ours, strict=True))
                 if c is not None and (o is None or abs(o - c) > 0.02 * c)]
        if diffs:
            changed[a.id] = diffs
            assert "csv" in a.notes, f"{a.id}: csv figures {diffs} changed without a note"
    # the known corrections: B200 bandwidth, PCIe/RoCE scale-up figures, an unsourced price
    assert set(changed) == {"b200", "rtx-5090", "gaudi2", "gaudi3", "arc-b580", "a100-sxm-80gb"}


def test_every_entry_and_claim_has_a_dated_source(cat: Any) -> None:
    for kind in ("accelerators", "models", "stacks", "costs"):
        for e in cat.table(kind).values():
            assert e.sources, (kind, e.id)
            assert all(DATE.match(s.date) and len(s.ref) >= 3 for s in e.sources), (kind, e.id)
    for st in cat.stacks.values():
        assert set(st.features) == set(FEATURES)
        claims = [*st.hardware, *st.features.values()]
        assert all(c.sources for c in claims), st.id
        assert st.precision_sources and st.licence


def test_accelerator_figures_are_consistent(cat: Any) -> None:
    for a in cat.accelerators.values():
        if a.price_usd is not None:
            assert a.price_date, a.id
        assert a.notes or a.confidence == "datasheet", f"{a.id}: derived/estimate needs notes"
        if a.device_type in ("cpu", "soc"):
            assert a.max_scaleup_devices == 1
        # dense peaks never exceed the next-lower-precision peak by more than 2x per halving
        p = a.peak_tflops
        if "bf16" in p and "fp8" in p:
            assert p["fp8"] <= 2.05 * p["bf16"], a.id
    h100 = cat.accelerator("h100-sxm")
    assert (h100.memory_bw_gbs, h100.peak_tflops["bf16"], h100.scaleup_gbs) == (3350, 989.4, 900)
    # corrections recorded against the csv
    assert cat.accelerator("b200").memory_bw_gbs == 8000
    assert "csv said 7700" in cat.accelerator("b200").notes
    assert cat.accelerator("gaudi3").scaleup_gbs == 1050
    assert cat.accelerator("arc-b580").scaleup_gbs == 32


def test_stacks_state_the_moat_honestly(cat: Any) -> None:
    fams = {a.family for a in cat.accelerators.values()}
    for st in cat.stacks.values():
        assert st.families() <= fams | {"Emerald-Rapids"}, st.id
    assert "Hopper" in cat.stack("trtllm-cuda").families()
    assert not cat.stack("trtllm-cuda").families() & {"CDNA3", "RDNA3", "Gaudi3"}
    sgl = cat.stack("sglang-rocm")
    assert "RDNA3" in sgl.families() and "RDNA3" not in sgl.families(include_experimental=False)
    trt_levels = {h.level for h in cat.stack("trtllm-cuda").hardware
                  if "Blackwell-consumer" in h.families}
    assert trt_levels == {"community"}
    assert "Blackwell-consumer" in cat.stack("vllm-cuda").families(include_experimental=False)
    assert "RDNA3" in cat.stack("llamacpp-vulkan").families()
    assert "fp8" in cat.stack("vllm-cuda").weight_dtypes
    assert cat.stack("vllm-cuda").maturity == "mature"
    assert cat.stack("vllm-xpu").maturity == "early"
    assert not cat.stack("ollama-cuda").has("tensor_parallel")
    assert not cat.stack("llamacpp-cuda").has("paged_attention")


def test_cost_ranges_and_units(cat: Any) -> None:
    for c in cat.costs.values():
        assert c.low <= c.value <= c.high, c.id
    spread = cat.cost("api_open70b_output_price_spread")
    assert spread.unit == "x" and "Fixed" in spread.notes
    assert cat.cost("api_open70b_output_price_min").value == 0.65
    assert cat.cost("b200_gpu_street_price").estimate
    assert cat.cost("electricity_eu_nonhousehold_avg").unit == "EUR/kWh"


# ----------------------------------------------------------------------------- schema


def test_schema_accepts_a_valid_accelerator() -> None:
    a = Accelerator.model_validate(_acc())
    assert a.peak_tflops == {"bf16": 900} and a.max_scaleup_devices == 8


@pytest.mark.parametrize(("over", "field", "words"), [
    ({"memory_bw_gbs": -1}, "memory_bw_gbs", "greater than 0"),
    ({"memory_gbs": 80}, "memory_gbs", "Extra inputs"),
    ({"vendor": "acme"}, "vendor", "Input should be"),
    ({"peak_tflops": {"fp7": 1}}, "peak_tflops", "Input should be"),
    ({"peak_tflops": {}}, "peak_tflops", "at least one"),
    ({"id": "My GPU"}, "id", "not a valid id"),
    ({"sources": []}, "sources", "at least 1"),
    ({"sources": [{"ref": "datasheet", "date": "last year"}]}, "sources", "pattern"),
    ({"price_usd": 999}, "price_date", "date it was quoted"),
])
def test_schema_rejects_invalid_accelerators(over: dict[str, Any], field: str,
                                             words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Accelerator.model_validate(_acc(**over))
    assert field in str(exc.value) and words in str(exc.value)


def test_schema_rejects_bad_costs_and_stacks() -> None:
    cost = {"id": "x", "value": 5, "unit": "USD", "low": 1, "high": 10,
            "sources": [{"ref": "quote", "date": "2025"}]}
    assert CostParameter.model_validate(cost).value == 5
    with pytest.raises(ValidationError, match="unknown unit 'USD/parsec'"):
        CostParameter.model_validate({**cost, "unit": "USD/parsec"})
    with pytest.raises(ValidationError, match=r"outside its range \[1.0, 4.0\]"):
        CostParameter.model_validate({**cost, "high": 4})
    raw = yaml.safe_load(Path(__file__).with_name("test_catalog.py").read_text()
                         .split("# STACK-EXAMPLE\n")[1].split("# END\n")[0].replace("# ", ""))
    assert Stack.model_validate(raw).has("tensor_parallel")
    del raw["features"]["prefix_caching"]
    with pytest.raises(ValidationError, match="missing prefix_caching"):
        Stack.model_validate(raw)


# STACK-EXAMPLE
# id: my-engine-cuda
# name: my engine
# engine: Mine
# backend: CUDA
# vendors: [nvidia]
# hardware: [{families: [Hopper], level: official, sources: [{ref: docs, date: "2025"}]}]
# weight_dtypes: [bf16]
# kv_dtypes: [bf16]
# precision_sources: [{ref: docs, date: "2025"}]
# features:
#   continuous_batching: {level: "yes", sources: [{ref: docs, date: "2025"}]}
#   paged_attention: {level: "yes", sources: [{ref: docs, date: "2025"}]}
#   flash_attention: {level: "no", sources: [{ref: docs, date: "2025"}]}
#   chunked_prefill: {level: "no", sources: [{ref: docs, date: "2025"}]}
#   tensor_parallel: {level: "partial", sources: [{ref: docs, date: "2025"}]}
#   pipeline_parallel: {level: "no", sources: [{ref: docs, date: "2025"}]}
#   speculative_decoding: {level: "no", sources: [{ref: docs, date: "2025"}]}
#   prefix_caching: {level: "no", sources: [{ref: docs, date: "2025"}]}
# maturity: early
# sources: [{ref: docs, date: "2025"}]
# END


def test_parse_entries_names_file_entry_and_field(tmp_path: Path) -> None:
    f = tmp_path / "accelerators.yaml"
    with pytest.raises(CatalogError) as exc:
        parse_entries("accelerators", [_acc(), _acc(memory_bw_gbs=0, id="b")], f)
    assert (exc.value.file, exc.value.entry, exc.value.field) == (str(f), "b", "memory_bw_gbs")
    with pytest.raises(CatalogError, match="duplicate id"):
        parse_entries("accelerators", [_acc(), _acc()], f)


# ----------------------------------------------------------------------------- overlay, YAML


def _write_user_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    h100 = _acc(id="h100-sxm", name="NVIDIA H100 SXM5 80GB (our negotiated quote)",
                vendor="nvidia", memory_gb=80, memory_bw_gbs=3350, price_usd=21000,
                price_date="2025-06", peak_tflops={"bf16": 989.4, "fp8": 1978.9})
    (d / "accelerators.yaml").write_text(yaml.safe_dump([_acc(), h100]))
    return d


def test_overlay_adds_and_overrides_by_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          cat: Any) -> None:
    d = _write_user_dir(tmp_path / "mine")
    monkeypatch.delenv(ENV_VAR, raising=False)
    over = load_catalog(d)
    assert len(over.accelerators) == len(cat.accelerators) + 1
    assert over.accelerator("my-gpu").memory_bw_gbs == 3000
    assert over.accelerator("h100-sxm").price_usd == 21000
    assert over.origin[("accelerators", "h100-sxm")] == str(d / "accelerators.yaml")
    assert cat.accelerator("h100-sxm").price_usd == 30000  # bundled untouched
    monkeypatch.setenv(ENV_VAR, str(d))
    assert load_catalog().accelerator("h100-sxm").price_usd == 21000
    assert validate_dir(d)["accelerators"] == 2


@pytest.mark.parametrize("name", ["accelerator.yaml", "costs.yml", "Stacks.yaml"])
def test_misspelt_catalog_file_is_named(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("[]\n")
    (tmp_path / "my-scenario.yaml").write_text("model: llama-3.1-8b\n")  # unrelated: ignored
    with pytest.raises(CatalogError, match="not a catalog file name; did you mean") as exc:
        load_catalog(tmp_path)
    assert exc.value.file == str(tmp_path / name)
    (tmp_path / name).unlink()
    assert len(load_catalog(tmp_path).accelerators) >= 25


def test_user_stack_with_unknown_family_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(Path(__file__).read_text().split("# STACK-EXAMPLE\n")[1]
                         .split("# END\n")[0].replace("# ", ""))
    raw["hardware"][0]["families"] = ["Hoper"]
    (tmp_path / "stacks.yaml").write_text(yaml.safe_dump([raw]))
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    assert exc.value.field == "hardware.0.families" and "'Hoper'" in str(exc.value)
    raw["hardware"][0]["families"] = ["Hopper"]
    ref = {"ref": "https://github.com/ggml-org/llama.cpp/pull/24404", "date": "2026-06-10"}
    raw["vector_only"] = [{"families": ["Xe-HGP"], "sources": [ref]}]
    (tmp_path / "stacks.yaml").write_text(yaml.safe_dump([raw]))
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    assert exc.value.field == "vector_only.0.families" and "'Xe-HGP'" in str(exc.value)
    raw["vector_only"] = []
    raw["fp16_accumulate"] = [{"families": ["Ampre"], "sources": [ref]}]
    (tmp_path / "stacks.yaml").write_text(yaml.safe_dump([raw]))
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    assert exc.value.field == "fp16_accumulate.0.families" and "'Ampre'" in str(exc.value)


@pytest.mark.parametrize(("text", "words"), [
    ("- id: x\n  id: y\n", "duplicate key 'id'"),
    ("- !!python/object/apply:os.system ['echo pwned']\n", "is not allowed"),
    ("- {id: x\n", "bad YAML at line"),
])
def test_yaml_is_loaded_safely(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "accelerators.yaml"
    f.write_text(text)
    with pytest.raises(CatalogError, match=re.escape(words)) as exc:
        read_yaml(f)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)


def test_unquoted_yaml_dates_are_accepted() -> None:
    raw = yaml.safe_load("ref: vendor datasheet\ndate: 2025-01-15\n")
    assert raw["date"].__class__.__name__ == "date"  # what PyYAML hands us
    from moatmeter.catalog.schema import Source

    assert Source.model_validate(raw).date == "2025-01-15"
    a = Accelerator.model_validate(_acc(price_usd=100, price_date=yaml.safe_load("2024-06-01"),
                                        sources=[{"ref": "quote", "date": 2024}]))
    assert (a.price_date, a.sources[0].date) == ("2024-06-01", "2024")


def test_unquoted_yes_no_feature_levels() -> None:
    text = Path(__file__).read_text().split("# STACK-EXAMPLE\n")[1].split("# END\n")[0]
    raw = yaml.safe_load(text.replace("# ", "").replace('"yes"', "yes").replace('"no"', "no"))
    assert raw["features"]["paged_attention"]["level"] is True
    st = Stack.model_validate(raw)
    assert st.features["paged_attention"].level == "yes"
    assert st.features["flash_attention"].level == "no"
