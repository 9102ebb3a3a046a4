"""The HTML report in a real headless Chromium: plots drawn, no JavaScript errors, a screenshot.

Chromium comes from Debian (scripts/deps/chromium.sh, run by `make deps`). Its absence is a
failure, not a skip: the report's only proof of rendering is this test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import pytest

from moatmeter.catalog.load import load_catalog
from moatmeter.perf.observations import bundled_observations, read_observations
from moatmeter.perf.validate import validate_rows
from moatmeter.plan import plan
from moatmeter.report.html import figures, plotly_js, render, write_report
from moatmeter.report.validation import figures as validation_figures
from moatmeter.report.validation import write_validation_report
from moatmeter.scenario import scenario_from_dict

EVIL = '<img src=x onerror="document.body.setAttribute(\'data-pwned\', 1)">'
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--virtual-time-budget=20000"]


def _titles(figs: dict) -> int:
    """Titles the figures ask for: the figure's, its x axis' and its y axis'."""
    n = 0
    for f in figs.values():
        lay = f["layout"]
        for t in (lay.get("title"), lay.get("xaxis", {}).get("title"),
                  lay.get("yaxis", {}).get("title")):
            if t is not None:
                assert isinstance(t, dict) and t["text"], t
                n += 1
    return n


def _drawn_titles(dom: str) -> int:
    return len(re.findall(r'<text class="[gxy]title"[^>]*data-unformatted="[^"]+"', dom))


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: run `make deps` (scripts/deps/chromium.sh)"
    return exe


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    scn = scenario_from_dict({
        "name": f"escape test {EVIL}", "model": "llama-3.3-70b",
        "traffic": {"requests_per_s": 2, "input_tokens": 800, "output_tokens": 200,
                    "peak_to_average": 2},
        "constraints": {"accelerators": ["h100-sxm", "mi300x", "b200"],
                        "stacks": ["vllm-cuda", "vllm-rocm"]},
        "incumbency": {"stack": "vllm-cuda", "custom_cuda_kernels": 2},
        "api": [{"name": "evil-api", "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.9,
                 "source": f"</script><script>document.title='pwned'</script>{EVIL}"}],
    })
    result = plan(scn, load_catalog(), samples=2000, seed=1)
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(result, out)
    return out, result.to_dict()


def test_report_is_self_contained_and_escaped(report):
    path, d = report
    html = path.read_text(encoding="utf-8")
    assert plotly_js() in html  # plotly.js inlined, byte for byte
    own = html.replace(plotly_js(), "")
    assert not re.search(r"<script[^>]*\bsrc=", own) and "<link" not in own
    assert not re.search(r"https?://", own.split("<h2>Assumptions")[0])  # nothing to fetch
    assert "Content-Security-Policy" in own and "default-src 'none'" in own
    assert EVIL not in html and "<script>document.title" not in html
    assert "&lt;img src=x onerror=" in html  # shown as text, not as markup
    for section in ("Ranking", "Assumptions and sources", "Rejected candidates"):
        assert section in html
    # Every assumption's source is on the page.
    for a in d["assumptions"]:
        assert escape(str(a["source"]), quote=True) in html, a["id"]
    assert render(d) == html


def test_report_renders_in_headless_chromium(report, tmp_path):
    path, d = report
    exe = _chromium()
    url = path.resolve().as_uri()
    shot = tmp_path / "report.png"
    # One browser run: the DOM after scripts ran (stdout), console log (stderr), a screenshot.
    dom = subprocess.run(
        [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--hide-scrollbars", "--window-size=1400,2600", f"--screenshot={shot}",
         "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # Plotly drew every figure: one plot container per figure, each with its SVG layers.
    n = len(figures(d))
    assert n == 5  # breakdown, $/M tokens, Pareto, tornado of the top and of the best owned
    assert html.count('class="plot-container plotly"') == n
    assert len(re.findall(r'<svg class="main-svg"', html)) >= 2 * n
    assert f'data-plots="{n}"' in html
    # Every figure, x and y title was drawn (plotly.js 3 silently drops a bare-string title).
    assert _drawn_titles(html) == _titles(figures(d)) > n
    # The page's error collector stayed empty and the console logged no error.
    m = re.search(r'<div id="js-errors"([^>]*)>(.*?)</div>', html, re.S)
    assert m and "data-count" not in m.group(1) and m.group(2).strip() == ""
    console_errors = [ln for ln in dom.stderr.splitlines()
                      if "CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)]
    assert not console_errors, console_errors
    assert "Uncaught" not in dom.stderr
    # Injected markup from scenario and catalog text did not execute.
    assert not re.search(r"<body[^>]*data-pwned", html) and "<title>pwned" not in html
    assert "<img src=\"x\"" not in html
    # Option ids and bars reached the DOM as drawn text.
    top = d["options"][0]["id"]
    assert top.split("/")[0] in html

    assert shot.exists(), dom.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    keep = Path(__file__).resolve().parents[1] / "build" / "report-screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(png)  # for a human to look at after a run


def test_validation_report_renders_in_headless_chromium(tmp_path):
    """`validate --report`: four figures drawn with their titles, no JavaScript error, row and
    source text escaped, the same summary as the JSON."""
    rows = read_observations(bundled_observations())[:120]
    rows[0] = {**rows[0], "id": f"evil-{EVIL}", "source": f"</script>{EVIL}"}
    res = validate_rows(load_catalog(), rows, details=True)
    path = write_validation_report(res, tmp_path / "validate.html", f"title {EVIL}")
    page = path.read_text(encoding="utf-8")
    assert EVIL not in page and "&lt;img src=x onerror=" in page
    assert f"{res['summary']['n']} rows: median APE <b>{res['summary']['median_ape']:.1%}</b>" \
        in page
    dom = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    figs = validation_figures(res["details"])
    assert list(figs) == ["ratio", "throughput", "latency", "cdf"]
    assert html.count('class="plot-container plotly"') == 4 and 'data-plots="4"' in html
    assert _drawn_titles(html) == _titles(figs) == 11
    # One marker per modelled row across the vendor traces of the ratio strip.
    assert sum(len(t["y"]) for t in figs["ratio"]["data"]) == res["summary"]["n"]
    m = re.search(r'<div id="js-errors"([^>]*)>(.*?)</div>', html, re.S)
    assert m and "data-count" not in m.group(1) and m.group(2).strip() == ""
    assert "Uncaught" not in dom.stderr
    assert not re.search(r"<body[^>]*data-pwned", html)
