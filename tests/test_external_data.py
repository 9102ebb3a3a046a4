"""The external test set (benchmarks/data): reproducible from its transcription, internally
consistent, and fully modelled - so the figures benchmarks/external_test.py prints mean what
they say."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from moatmeter.catalog.load import load_catalog
from moatmeter.perf.observations import bundled_observations, read_observations
from moatmeter.perf.validate import validate_rows

DATA = Path(__file__).parent.parent / "benchmarks" / "data"
CSV = DATA / "inferencex_api_dsr1.csv"


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_ix", DATA / "make_inferencex_api_dsr1.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_csv_is_what_the_script_makes_of_the_transcription() -> None:
    mod = _maker()
    want = mod.make_rows(mod.read_records())
    got = read_observations(CSV)
    assert len(got) == len(want) == 1095
    for g, w in zip(got, want, strict=True):
        assert g["id"] == w["id"] and g["metric"] == w["metric"]
        assert float(g["value"]) == float(w["value"])
        assert g["notes"] == w["notes"]


def test_every_transcribed_record_obeys_littles_law() -> None:
    """A copying slip in TTFT, TPOT or throughput would break this: C requests in flight, each
    taking TTFT + (O - 1) TPOT, deliver C O / that many tokens/s - on TP GPUs (the mean lengths
    are InferenceX's 0.8-1.0 range means, so the ratio sits a little above TP)."""
    records = [r for r in _maker().read_records() if r["output_tput_per_gpu"] != "NA"]
    assert len(records) > 600
    ratios = []
    for r in records:
        out = {"1024": 921.5, "8192": 7372.5}[r["osl"]]
        e2e = float(r["mean_ttft_s"]) + (out - 1) * float(r["mean_tpot_s"])
        gpus = int(r["conc"]) * out / e2e / float(r["output_tput_per_gpu"])
        ratios.append(gpus / int(r["tp"]))
    # MTP records too: their mean TPOT is per output token
    assert min(ratios) > 0.99 and max(ratios) < 1.08


def test_every_external_row_is_modelled_and_none_is_in_the_calibration_set() -> None:
    rows = read_observations(CSV)
    out = validate_rows(load_catalog(), rows)
    assert out["summary"]["skipped"] == []
    assert len(out["rows"]) == len(rows)
    assert all(r["predicted"] > 0 for r in out["rows"])
    bundled = {r["source"] for r in read_observations(bundled_observations())}
    assert not bundled & {r["source"] for r in rows}


def test_external_test_script_prints_its_figures() -> None:
    res = subprocess.run([sys.executable, str(DATA.parent / "external_test.py")],
                         capture_output=True, text=True, check=True)
    assert "1095 rows predicted with the bundled calibration, 0 skipped" in res.stdout
    assert "TTFT by concurrency:" in res.stdout


def test_external_test_script_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,source\nx,y\n")
    res = subprocess.run([sys.executable, str(DATA.parent / "external_test.py"),
                          "--observations", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {bad}: missing column 'accelerator'"
