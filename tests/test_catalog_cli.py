"""`moatmeter catalog …` end to end: JSON listings, the --catalog / env overlay and `catalog
validate` through typer's CliRunner (in-process, fast), and every bad-input case in a real
subprocess, asserting one clear line on stderr and exit code 2.

The subprocesses are started together (module fixture) so the suite pays for a few interpreter
start-ups per core instead of ten in a row."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from moatmeter.cli import app

GOOD_ACC = {"id": "my-gpu", "name": "My GPU", "vendor": "other", "family": "Hopper",
            "form_factor": "datacenter", "memory_gb": 80, "memory_bw_gbs": 3000,
            "peak_tflops": {"bf16": 900}, "year": 2024, "confidence": "estimate",
            "sources": [{"ref": "our own measurement", "date": "2025-01"}]}
H100_OVERRIDE = {**GOOD_ACC, "id": "h100-sxm", "name": "NVIDIA H100 SXM5 80GB (our quote)",
                 "vendor": "nvidia", "price_usd": 21000, "price_date": "2025-06"}
COST = {"id": "my_rent", "value": 2.0, "unit": "USD/parsec", "low": 1.0, "high": 3.0,
        "sources": [{"ref": "quote", "date": "2025"}]}
TINY_CONFIG = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 1000, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}


def _dir(root: Path, name: str, files: dict[str, Any]) -> str:
    d = root / name
    d.mkdir()
    for fname, content in files.items():
        (d / fname).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(d)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory,
         moatmeter: Callable[..., subprocess.CompletedProcess[str]]) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("catalogs")
    no_bw = {k: v for k, v in GOOD_ACC.items() if k != "memory_bw_gbs"}
    cfg_dir = root / "Tiny-Llama"
    cfg_dir.mkdir()
    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "num_hidden_layers"}
    (cfg_dir / "config.json").write_text(json.dumps(cfg))
    d = {
        "good": _dir(root, "good", {"accelerators.yaml": [GOOD_ACC, H100_OVERRIDE]}),
        "bad_yaml": _dir(root, "bad_yaml", {"accelerators.yaml": "- id: my-gpu\n  name: [oops\n"}),
        "missing": _dir(root, "missing", {"accelerators.yaml": [no_bw]}),
        "negative": _dir(root, "negative",
                         {"accelerators.yaml": [{**GOOD_ACC, "memory_bw_gbs": -5}]}),
        "unit": _dir(root, "unit", {"costs.yaml": [COST]}),
        "dup": _dir(root, "dup", {"accelerators.yaml": [GOOD_ACC, GOOD_ACC]}),
        "unknown": _dir(root, "unknown", {"accelerators.yaml": [{**GOOD_ACC, "memory_gbs": 8}]}),
        "tag": _dir(root, "tag", {"accelerators.yaml":
                                  "- !!python/object/apply:os.system ['touch pwned']\n"}),
        "import": str(root / "imported"),
    }
    calls: dict[str, tuple[list[str], dict[str, str]]] = {
        "validate_bad": (["catalog", "validate", d["negative"]], {}),
        "import_bad": (["catalog", "import-hf", str(cfg_dir / "config.json"),
                        "--catalog", d["import"]], {}),
    }
    for case in ("bad_yaml", "missing", "negative", "unit", "dup", "unknown", "tag"):
        calls[case] = (["catalog", "list", "accelerators", "--catalog", d[case]], {})
    with ThreadPoolExecutor(max_workers=4) as pool:
        futs = {k: pool.submit(moatmeter, *args, env=env) for k, (args, env) in calls.items()}
        out: dict[str, Any] = {k: f.result() for k, f in futs.items()}
    invoke = CliRunner().invoke
    for key, args, env in (
        ("list_acc", ["catalog", "list", "accelerators", "--json"], {}),
        ("list_models", ["catalog", "list", "models", "--json"], {}),
        ("list_stacks", ["catalog", "list", "stacks", "--json"], {}),
        ("list_costs", ["catalog", "list", "costs", "--json"], {}),
        ("overlay_opt", ["catalog", "list", "accelerators", "--json", "--catalog", d["good"]], {}),
        ("overlay_env", ["catalog", "show", "h100-sxm", "--json"],
         {"MOATMETER_CATALOG": d["good"]}),
        ("validate_good", ["catalog", "validate", d["good"], "--json"], {}),
    ):
        out[key] = invoke(app, args, env={"MOATMETER_CATALOG": "", **env}, catch_exceptions=False)
    out["dirs"] = d
    return out


def _ok(p: Any) -> Any:
    assert p.exit_code == 0, p.output
    return json.loads(p.stdout)


def _one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_list_json_contracts(runs: dict[str, Any]) -> None:
    accs = _ok(runs["list_acc"])
    assert len(accs) >= 25
    assert {"nvidia", "amd", "intel", "apple"} <= {a["vendor"] for a in accs}
    assert any(a["device_type"] == "cpu" for a in accs)
    assert all(a["id"] and a["sources"] and a["sources"][0]["date"] for a in accs)
    models = _ok(runs["list_models"])
    assert all(m["total_params"] >= m["active_params"] > 0 and m["sources"] for m in models)
    stacks = _ok(runs["list_stacks"])
    assert len(stacks) >= 15 and all(s["id"] and s["sources"] for s in stacks)
    costs = _ok(runs["list_costs"])
    assert len(costs) >= 80 and all(c["sources"] and c["unit"] for c in costs)


@pytest.mark.parametrize("kind", ["accelerators", "models", "stacks", "costs"])
def test_tables_fit_120_columns(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moatmeter.cli import common

    monkeypatch.setattr(common.console, "_width", 120)
    p = CliRunner().invoke(app, ["catalog", "list", kind], env={"MOATMETER_CATALOG": ""})
    assert p.exit_code == 0, p.output
    lines = p.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120
    header = next(line for line in lines if line.strip().startswith("id "))
    assert "…" not in header  # headers are never cut
    ids = {"accelerators": "rtx-pro-6000-blackwell", "models": "llama-3.1-405b",
           "stacks": "llamacpp-vulkan", "costs": "semianalysis_amd_training_bugfix_time"}
    assert ids[kind] in p.stdout  # the longest ids are shown whole


def test_overlay_via_option_and_env(runs: dict[str, Any]) -> None:
    base = {a["id"]: a for a in _ok(runs["list_acc"])}
    over = {a["id"]: a for a in _ok(runs["overlay_opt"])}
    assert set(over) == set(base) | {"my-gpu"}
    assert over["h100-sxm"]["price_usd"] == 21000 and base["h100-sxm"]["price_usd"] == 30000
    shown = _ok(runs["overlay_env"])
    assert shown["price_usd"] == 21000 and shown["name"].endswith("(our quote)")


def test_validate_good_and_bad_dirs(runs: dict[str, Any]) -> None:
    assert _ok(runs["validate_good"]) == {"ok": True, "counts": {
        "accelerators": 2, "models": 0, "stacks": 0, "costs": 0}}
    line = _one_line_error(runs["validate_bad"])
    assert "negative/accelerators.yaml" in line and "field 'memory_bw_gbs'" in line


@pytest.mark.parametrize(("case", "expected"), [
    ("bad_yaml", ["bad_yaml/accelerators.yaml", "bad YAML at line 3, column 1"]),
    ("missing", ["missing/accelerators.yaml", "entry 'my-gpu'", "field 'memory_bw_gbs'",
                 "required field is missing"]),
    ("negative", ["negative/accelerators.yaml", "entry 'my-gpu'", "field 'memory_bw_gbs'",
                  "greater than 0"]),
    ("unit", ["unit/costs.yaml", "entry 'my_rent'", "field 'unit'", "unknown unit 'USD/parsec'"]),
    ("dup", ["dup/accelerators.yaml", "entry 'my-gpu'", "field 'id'", "duplicate id"]),
    ("unknown", ["unknown/accelerators.yaml", "entry 'my-gpu'", "field 'memory_gbs'",
                 "unknown field"]),
    ("tag", ["tag/accelerators.yaml", "python/object/apply:os.system", "not allowed"]),
])
def test_bad_user_catalog_gives_one_line_and_exit_2(runs: dict[str, Any], case: str,
                                                    expected: list[str]) -> None:
    line = _one_line_error(runs[case])
    for words in expected:
        assert words in line, (words, line)
    assert not (Path(runs["dirs"][case]).parent / "pwned").exists()


def test_import_hf_config_missing_a_field(runs: dict[str, Any]) -> None:
    line = _one_line_error(runs["import_bad"])
    assert "Tiny-Llama/config.json" in line and "num_hidden_layers" in line
    assert not (Path(runs["dirs"]["import"]) / "models.yaml").exists()


def test_unknown_id_and_kind_are_user_errors() -> None:
    from moatmeter.errors import CatalogError, InputError

    invoke = CliRunner().invoke
    with pytest.raises(CatalogError, match=r"id 'h100-sxm5' \(did you mean: h100-sxm"):
        invoke(app, ["catalog", "show", "h100-sxm5"], env={"MOATMETER_CATALOG": ""},
               catch_exceptions=False)
    with pytest.raises(InputError, match="unknown kind 'gpus'"):
        invoke(app, ["catalog", "list", "gpus"], env={"MOATMETER_CATALOG": ""},
               catch_exceptions=False)


def test_tables_redirected_to_a_file_are_not_cut() -> None:
    """Piped or redirected (no terminal, no $COLUMNS), the table is not fitted to 80 columns: every
    column and every number is whole."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "MOATMETER_CATALOG")}
    p = subprocess.run([sys.executable, "-m", "moatmeter", "catalog", "list", "accelerators"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout
    h100 = next(line for line in p.stdout.splitlines() if line.strip().startswith("h100-sxm "))
    assert h100.split() == ["h100-sxm", "nvidia", "Hopper", "dc", "80", "3,350", "989", "1,979",
                            "700", "30,000", "sheet"]
