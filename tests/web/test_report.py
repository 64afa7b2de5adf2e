"""The version report in a real browser: reached from the model page, readable on a phone, accessible, printed
by Chromium to one PDF page per GPU architecture, and exported as CSV the csv module reads back."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pypdf
import pytest
from playwright.sync_api import expect

from tests.services import LiveServer
from tests.web.conftest import ARTIFACTS, Api, publish_doc, screenshot
from tests.web.test_first_hour import WIDEST, _axe_violations

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]

MODEL = "web-report-classifier"
BENCH = {  # (version, arch): trtexec figures
    ("3", "sm_89"): {"p50_ms": 6.3, "p99_ms": 14.1, "throughput": 1180, "gpu_mem_mb": 1840},
    ("4", "sm_89"): {"p50_ms": 3.1, "p99_ms": 7.2, "throughput": 2950, "gpu_mem_mb": 1010},
    ("3", "sm_90"): {"p50_ms": 2.4, "p99_ms": 5.6, "throughput": 4100, "gpu_mem_mb": 1800},
    ("4", "sm_90"): {"p50_ms": 1.2, "p99_ms": 2.9, "throughput": 9800, "gpu_mem_mb": 990},
}


@pytest.fixture(scope="module")
def seeded(api: Api) -> str:
    """Versions 3 (fp16) and 4 (int8) with engines for sm_89 (pool l4) and sm_90 (pool h100), both priced;
    live windows (as routers post them) for h100 only."""
    for pool, arch, price in (("l4", "sm_89", "0.80"), ("h100", "sm_90", "3.20")):
        response = api.admin.put(f"/pools/{pool}", json={
            "gpu_arch": arch, "kind": "external", "trt_version": "10.3", "allowed_endpoints": ["127.0.0.1"],
            "gpu_hourly_price": price, "currency": "USD"})
        assert response.status_code in (200, 201), response.text
    response = api.admin.post("/models", json={"name": MODEL, "description": "ImageNet classifier"})
    assert response.status_code == 201, response.text
    for version, precision in (("3", "fp16"), ("4", "int8")):
        response = api.admin.post(f"/models/{MODEL}/versions", json={
            "version": version, "precision": precision, "trt_version": "10.3",
            "engines": [{"gpu_arch": arch, "uri": f"s3://engines/{MODEL}/{version}/{arch}.plan", "sha256": "ab" * 32,
                         "benchmark": BENCH[(version, arch)]} for arch in ("sm_89", "sm_90")]})
        assert response.status_code == 201, response.text
        response = api.admin.put(f"/models/{MODEL}/versions/{version}/endpoints", json={
            "pool": "h100", "urls": [f"http://127.0.0.1:{9100 + int(version)}"]})
        assert response.status_code == 200, response.text
    api.put_traffic(MODEL, {"3": "90", "4": "10"}, default="3", reason="canary", if_match='"0"')
    api.report_stats(MODEL, minutes=5, canary=180)
    return MODEL


@pytest.fixture
def page_of(browser: Any, server: LiveServer, api: Api) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_page(name: str, *, width: int = 1280, height: int = 900) -> Any:
        # CSP bypassed only so the test can inject axe-core
        context = browser.new_context(base_url=server.url, viewport={"width": width, "height": height},
                                      bypass_csp=True, accept_downloads=True)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/ui/login")
        page.fill("#token", api.token(name, "viewer"))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ui/$"))
        return page

    yield open_page
    for context in contexts:
        context.close()


def test_the_report_prints_one_page_per_architecture_and_exports_csv(seeded: str, page_of: Any) -> None:
    page = page_of("vera")
    page.goto(f"/ui/models/{seeded}")
    page.click("#report-link")
    page.wait_for_url(re.compile(r"/report$"))
    expect(page.locator("h1")).to_have_text("What version 4 buys over 3")
    sections = page.locator("section.report-arch")
    expect(sections).to_have_count(2)
    h100 = page.locator("#arch-sm_90")
    # live on sm_90 (windows posted for h100), trtexec's throughput on sm_89 where nothing flowed
    expect(h100.locator("tr[data-metric='cost_per_million'] td").nth(0)).to_contain_text("live")
    expect(h100.locator("tr[data-metric='live_p99_ms'] td").nth(1)).to_contain_text("ms")
    sm89 = page.locator("#arch-sm_89")
    expect(sm89.locator("tr[data-metric='cost_per_million'] td").nth(1)).to_contain_text("trtexec")
    expect(sm89.locator("tr[data-metric='live_p99_ms'] td").nth(0)).to_contain_text("not enough data")
    expect(sm89.locator("tr[data-metric='trtexec_p99_ms'] td").nth(2)).to_have_text("−48.9%")
    expect(sm89.locator("svg title").first).to_contain_text("p99 latency on sm_89")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "version-report")
    ARTIFACTS.mkdir(exist_ok=True)
    h100.screenshot(path=str(ARTIFACTS / "version-report-sm_90.png"))  # the README's picture: one architecture
    publish_doc(ARTIFACTS / "version-report-sm_90.png", "version-report.png")

    pdf = page.pdf(format="A4", print_background=True)
    (ARTIFACTS / "version-report.pdf").write_bytes(pdf)
    pages = pypdf.PdfReader(io.BytesIO(pdf)).pages
    assert len(pages) == 2, f"{len(pages)} pages for 2 architectures"
    texts = [p.extract_text() for p in pages]
    assert "sm_89" in texts[0] and "sm_90" not in texts[0], texts[0][:600]
    assert "sm_90" in texts[1] and "sm_89" not in texts[1] and "cost per million" in texts[1], texts[1][:600]

    with page.expect_download() as download:
        page.click("a:has-text('CSV')")
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert {r["gpu_arch"] for r in rows} == {"sm_89", "sm_90"}
    assert len(rows) == len({(r["gpu_arch"], r["metric"]) for r in rows})  # one row per architecture x metric
    by_key = {(r["gpu_arch"], r["metric"]): r for r in rows}
    assert float(by_key[("sm_89", "trtexec_throughput")]["candidate"]) == 2950
    cost = by_key[("sm_89", "cost_per_million")]
    assert cost["candidate_source"] == "trtexec"
    assert float(cost["candidate"]) == pytest.approx(0.80 / (2950 * 3600) * 1e6)
    missing = by_key[("sm_89", "live_p99_ms")]
    assert missing["baseline"] == "" and missing["baseline_note"].startswith("not enough data")
    with page.expect_download() as download:
        page.click("a:has-text('JSON')")
    exported = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert (exported["baseline"], exported["candidate"]) == ("3", "4")
    assert [a["gpu_arch"] for a in exported["architectures"]] == ["sm_89", "sm_90"]


@pytest.mark.parametrize("width", [1280, 390])
def test_the_report_fits_a_phone_and_has_no_serious_accessibility_violations(seeded: str, page_of: Any,
                                                                             width: int) -> None:
    page = page_of("ada-report", width=width, height=844)
    page.goto(f"/ui/models/{seeded}/report?baseline=3&candidate=4")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px too wide: {page.evaluate(WIDEST)}"
    assert _axe_violations(page) == []


def test_a_report_of_a_version_against_itself_is_refused_on_a_page(seeded: str, page_of: Any) -> None:
    page = page_of("vic")
    response = page.goto(f"/ui/models/{seeded}/report?baseline=3&candidate=3")
    assert response is not None and response.status == 422
    expect(page.locator("main")).to_contain_text("compare two different versions")
    response = page.goto(f"/ui/models/{seeded}/report?baseline=3&candidate=9")
    assert response is not None and response.status == 404
