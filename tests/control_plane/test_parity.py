"""Parity windows: routers report them (router role only), the API merges them across routers."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from router.parity import ERROR_BOUNDS, REDIS_KEY_PREFIX
from tests.control_plane.conftest import Api


@pytest.fixture(autouse=True)
def _fresh_windows(redis_url: str) -> None:
    """The database is reset per test; the windows routers wrote to Redis are too."""
    client = redis.Redis.from_url(redis_url)
    client.delete(REDIS_KEY_PREFIX + "resnet50")
    client.close()


def _report(router: str, *, compared: int, agree: int, rows: int, max_abs: float, histogram: list[int],
            arch: str = "sm_80", end: float | None = None) -> dict[str, Any]:
    end = end or time.time()
    return {"router": router, "window_start": end - 1, "window_end": end, "error_bounds": list(ERROR_BOUNDS),
            "windows": [{"model": "resnet50", "shadow_version": "4", "primary_version": "3",
                         "primary_gpu_arch": arch, "shadow_gpu_arch": arch, "mirrored": compared + 1, "dropped": 2,
                         "errors": 1, "timeouts": 0, "compared": compared, "unreadable": 0,
                         "outputs": {"probabilities": {
                             "compared": compared, "shape_mismatch": 1, "dtype_mismatch": 0, "missing": 0,
                             "max_abs_error": max_abs, "sum_abs_error": max_abs * rows, "elements": rows * 4,
                             "top1_agree": agree, "top1_rows": rows, "max_abs_histogram": histogram}}}]}


def test_windows_from_several_routers_merge_per_architecture(api: Api) -> None:
    api.canary(weight=5)
    router = api.as_("router")
    bins = len(ERROR_BOUNDS) + 1
    first = [0] * bins
    first[4] = 10
    second = [0] * bins
    second[6] = 10
    assert router.post("/parity/report", json=_report("r1", compared=10, agree=10, rows=20, max_abs=2e-5,
                                                      histogram=first)).status_code == 202
    assert router.post("/parity/report", json=_report("r2", compared=10, agree=15, rows=20, max_abs=3e-3,
                                                      histogram=second)).status_code == 202
    assert router.post("/parity/report", json=_report("r2", compared=3, agree=3, rows=3, max_abs=0.5,
                                                      histogram=[0] * bins, arch="sm_90")).status_code == 202
    old = _report("r3", compared=99, agree=0, rows=99, max_abs=9.0, histogram=[0] * bins, end=time.time() - 600)
    assert router.post("/parity/report", json=old).status_code == 202

    merged = api.as_("viewer").get("/models/resnet50/parity", params={"window": 120})
    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert body["routers"] == 2  # r3's window is older than the 120 s asked for
    sm80 = next(p for p in body["pairs"] if p["primary_gpu_arch"] == "sm_80")
    assert (sm80["compared"], sm80["mirrored"], sm80["dropped"], sm80["errors"]) == (20, 22, 4, 2)
    out = sm80["outputs"][0]
    assert out["name"] == "probabilities" and out["shape_mismatch"] == 2
    assert out["max_abs_error"] == 3e-3
    assert out["top1_agreement"] == 25 / 40 and out["top1_rows"] == 40
    low, high = out["top1_interval"]
    assert low < 25 / 40 < high
    assert out["mean_abs_error"] == (2e-5 * 20 + 3e-3 * 20) / 160
    assert out["max_abs_histogram"][4] == 10 and out["max_abs_histogram"][6] == 10
    assert out["max_abs_quantiles"] == {"p50": ERROR_BOUNDS[4], "p90": ERROR_BOUNDS[6], "p99": ERROR_BOUNDS[6]}
    assert next(p for p in body["pairs"] if p["primary_gpu_arch"] == "sm_90")["compared"] == 3


def test_only_routers_report_and_bad_reports_name_the_field(api: Api) -> None:
    api.canary(weight=5)
    good = _report("r1", compared=1, agree=1, rows=1, max_abs=0.0, histogram=[1])
    for role in ("viewer", "publisher", "release-manager"):
        assert api.as_(role).post("/parity/report", json=good).status_code == 403
    assert api.as_(None).post("/parity/report", json=good).status_code == 401
    bad = _report("r1", compared=-1, agree=1, rows=1, max_abs=0.0, histogram=[1])
    response = api.as_("router").post("/parity/report", json=bad)
    assert response.status_code == 422
    assert any(d["field"].endswith("windows[0].compared") for d in response.json()["error"]["details"])
    assert api.get("/models/resnet50/parity").json()["pairs"] == []  # nothing half-kept
    assert api.as_("router").get("/models/resnet50/parity").status_code == 403  # routers report, never read
    assert api.get("/models/nope/parity").status_code == 404
    assert api.get("/models/resnet50/parity", params={"window": 0}).status_code == 422


def test_a_concurrent_burst_of_reports_is_kept_whole(api: Api) -> None:
    api.canary(weight=5)
    bins = len(ERROR_BOUNDS) + 1
    statuses: list[int] = []

    def send(i: int) -> None:
        report = _report(f"r{i}", compared=1, agree=1, rows=1, max_abs=0.0, histogram=[1] + [0] * (bins - 1))
        statuses.append(api.as_("router").post("/parity/report", json=report).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * 20
    body = api.get("/models/resnet50/parity", params={"window": 60}).json()
    assert body["routers"] == 20 and body["pairs"][0]["compared"] == 20


def test_parity_over_time_puts_each_report_in_the_step_its_window_ends_in(api: Api) -> None:
    api.canary(weight=5)
    router = api.as_("router")
    bins = len(ERROR_BOUNDS) + 1
    now = time.time()
    step = 300
    first = int((now - 1800) // step * step)
    fine, coarse = [0] * bins, [0] * bins
    fine[4], coarse[7], coarse[8] = 50, 90, 10  # 1e-4; mostly 1e-1 with a tail to 1
    sent = [  # (window end, agree, rows, max abs, histogram)
        (first + 1 * step + 20, 49, 50, 8e-5, fine),
        (first + 1 * step + 200, 50, 50, 9e-5, fine),  # same step as the first: merged
        (first + 4 * step + 10, 70, 100, 0.4, coarse),  # an int8-like step: p99 is the largest error seen
    ]
    for i, (end, agree, rows, max_abs, histogram) in enumerate(sent):
        assert router.post("/parity/report", json=_report(f"r{i}", compared=rows, agree=agree, rows=rows,
                                                          max_abs=max_abs, histogram=histogram,
                                                          end=end)).status_code == 202
    response = api.as_("viewer").get("/models/resnet50/parity/series", params={"window": 1800, "step": step})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["step_seconds"] == step and body["since"] == first
    timestamps = body["timestamps"]
    assert timestamps[0] == first and all(b - a == step for a, b in zip(timestamps, timestamps[1:]))
    assert timestamps[-1] <= time.time() and timestamps[-1] + step > now  # up to the step holding now
    (line,) = body["lines"]
    assert (line["shadow_version"], line["primary_version"], line["output"]) == ("4", "3", "probabilities")
    assert line["top1_rows"][:6] == [0, 100, 0, 0, 100, 0]
    assert line["top1_agreement"][:6] == [None, 99 / 100, None, None, 70 / 100, None]
    # each an upper bound of p99: the smaller of the histogram bound (1e-4, 1.0) and the largest error seen
    assert line["max_abs_p99"][:6] == [None, 9e-5, None, None, 0.4, None]
    assert line["max_abs_error"][1] == 9e-5 and line["max_abs_error"][4] == 0.4
    assert all(v is None for v in line["top1_agreement"][6:])

    viewer = api.as_("viewer")
    assert viewer.get("/models/nope/parity/series").status_code == 404
    assert api.as_(None).get("/models/resnet50/parity/series").status_code == 401
    too_long = viewer.get("/models/resnet50/parity/series", params={"window": 7 * 24 * 3600})
    assert too_long.status_code == 422 and too_long.json()["error"]["details"][0]["field"] == "window"
    too_fine = viewer.get("/models/resnet50/parity/series", params={"window": 3600, "step": 1})
    assert too_fine.status_code == 422 and too_fine.json()["error"]["details"][0]["field"] == "step"
    assert viewer.get("/models/resnet50/parity/series", params={"step": 0}).status_code == 422
    default = viewer.get("/models/resnet50/parity/series").json()  # an hour, about 60 points
    assert default["step_seconds"] == 60 and 60 <= len(default["timestamps"]) <= 61
