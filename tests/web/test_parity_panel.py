"""The parity panel: a release manager sees how the shadow version's answers differ, per architecture."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from router.parity import ERROR_BOUNDS
from tests.web.conftest import Api, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]


def _shadow(api: Api, model: str) -> None:
    etag = api.admin.get(f"/models/{model}/traffic").headers["etag"]
    response = api.admin.put(f"/models/{model}/traffic", headers={"If-Match": etag}, json={
        "default_version": "3", "reason": "compare int8", "splits": [{"version": "3", "weight": 100}],
        "shadow": {"version": "4", "percent": 5}})
    assert response.status_code == 200, response.text


def _report(api: Api, model: str) -> None:
    histogram = [0] * (len(ERROR_BOUNDS) + 1)
    histogram[6], histogram[8] = 180, 20  # most answers within 1e-2, a tail up to 1
    end = time.time()
    window: dict[str, Any] = {
        "model": model, "shadow_version": "4", "primary_version": "3", "primary_gpu_arch": "sm_80",
        "shadow_gpu_arch": "sm_80", "mirrored": 205, "dropped": 7, "errors": 3, "timeouts": 2, "compared": 200,
        "unreadable": 0, "outputs": {"probabilities": {
            "compared": 198, "shape_mismatch": 2, "dtype_mismatch": 0, "missing": 0, "max_abs_error": 0.61,
            "sum_abs_error": 12.0, "elements": 800, "top1_agree": 188, "top1_rows": 200,
            "max_abs_histogram": histogram}}}
    with httpx.Client(base_url=api.base_url + "/api/v1", timeout=30, headers={
            "Authorization": f"Bearer {api.token('edge-router-1', 'router')}"}) as router:
        response = router.post("/parity/report", json={"router": "edge-router-1", "window_start": end - 10,
                                                      "window_end": end, "error_bounds": list(ERROR_BOUNDS),
                                                      "windows": [window]})
        assert response.status_code == 202, response.text


def test_the_parity_panel_shows_agreement_mismatches_and_error_quantiles(api: Api, model: str,
                                                                         sign_in: Any) -> None:
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#parity")).to_have_count(0)  # no shadow, no panel
    _shadow(api, model)
    page.reload()
    expect(page.locator("#parity")).to_contain_text("4 shadows 5.0% of requests")
    expect(page.locator("#parity [data-parity-state=empty]")).to_be_visible()
    _report(api, model)
    page.reload()
    row = page.locator("#parity tr[data-parity='4:3:sm_80']")
    expect(row).to_contain_text("4 vs 3")
    expect(row).to_contain_text("198")  # compared
    expect(row).to_contain_text("94.00% (")  # 188 / 200 with its interval
    expect(row).to_contain_text("2 / 0")  # shape / dtype mismatches
    expect(row).to_contain_text("≤ 1e-02 · ≤ 1e-02 · ≤ 1e+00")  # p50 · p90 · p99 of per-request max abs error
    expect(row).to_contain_text("0.61")
    expect(page.locator("#parity")).to_contain_text("1 router reporting")


def test_the_parity_panel_charts_agreement_and_error_over_time(api: Api, model: str, sign_in: Any) -> None:
    _shadow(api, model)
    bins = len(ERROR_BOUNDS) + 1
    now = time.time()
    token = api.token("edge-router-1", "router")
    with httpx.Client(base_url=api.base_url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as router:
        # a report every 30 s for ten minutes: an fp16-like shadow (agrees, errors ~1e-4), then an int8-like one
        for i in range(20):
            end = now - 600 + 30 * i + 5
            agree, bucket, max_abs = (100, 4, 9e-5) if i < 10 else (80, 8, 0.6)
            histogram = [0] * bins
            histogram[bucket] = 100
            window = {"model": model, "shadow_version": "4", "primary_version": "3", "primary_gpu_arch": "sm_80",
                      "shadow_gpu_arch": "sm_80", "mirrored": 100, "compared": 100, "outputs": {"probabilities": {
                          "compared": 100, "max_abs_error": max_abs, "sum_abs_error": max_abs * 100,
                          "elements": 400, "top1_agree": agree, "top1_rows": 100, "max_abs_histogram": histogram}}}
            response = router.post("/parity/report", json={
                "router": "edge-router-1", "window_start": end - 10, "window_end": end,
                "error_bounds": list(ERROR_BOUNDS), "windows": [window]})
            assert response.status_code == 202, response.text
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    charts = page.locator("#parity [data-parity-charts] svg")
    expect(charts).to_have_count(2)
    expect(page.locator("#parity figcaption").first).to_have_text("Top-1 agreement with the primary")
    label = "4 vs 3 · sm_80 · probabilities"
    expect(page.locator("#parity .legend")).to_have_text(label)
    heights = []
    for i in range(2):
        path = charts.nth(i).locator("path")
        expect(path).to_have_count(1)
        expect(path.locator("title")).to_have_text(label)
        d = path.get_attribute("d")
        assert d.count("M") == 1  # one unbroken line through the twenty steps
        ys = [float(p.split(",")[1]) for p in d.split()]
        assert len(ys) >= 19
        heights.append((ys[0], ys[-1]))
    (agree_first, agree_last), (error_first, error_last) = heights
    assert agree_first < agree_last  # agreement fell (SVG y grows downwards)
    assert error_first > error_last  # the error rose
    screenshot(page, "parity-panel")
