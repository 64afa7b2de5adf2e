"""A rollout started, watched and aborted in a real browser, on the whole stack `grayroute demo` runs:
the control plane with its rollout controller, the reconciler's local engine servers, a router, and
generated traffic with many user IDs, so every step is judged on real requests."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.services import free_port
from tests.test_demo import _start, _stop, _wait_for_banner
from tests.web.conftest import ARTIFACTS, VIEWPORT, Api, publish_doc, screenshot
from tests.web.test_first_hour import WIDEST, _axe_violations

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]

MODEL = "demo-classifier"
BODY = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}


class Stack:
    def __init__(self, url: str, router: str, admin: str) -> None:
        self.url, self.router, self.admin = url, router, admin
        self.api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {admin}"}, timeout=30)

    def token(self, name: str, role: str) -> str:
        response = self.api.post("/tokens", json={"name": name, "role": role})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def served(self, users: range) -> Counter[str]:
        seen: Counter[str] = Counter()
        with httpx.Client(base_url=self.router, timeout=10) as client:
            for n in users:
                response = client.post(f"/v2/models/{MODEL}/infer", json=BODY, headers={"x-user-id": f"b-{n}"})
                assert response.status_code == 200, response.text
                seen[response.headers["x-grayroute-version"]] += 1
        return seen


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("rollout-demo")
    port, router_port = free_port(), free_port()
    process = _start(data_dir, port, router_port, "--scenario", "manual", "--rps", "30")
    try:
        _wait_for_banner(process)
        admin = json.loads((data_dir / "tokens.json").read_text())["admin"]
        stack = Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{router_port}", admin)
        yield stack
        stack.api.close()
    finally:
        if process.poll() is None:
            _stop(process)


def _page(browser: Any, stack: Stack, token: str, *, width: int = VIEWPORT["width"]) -> Any:
    context = browser.new_context(base_url=stack.url, viewport={"width": width, "height": 860}, bypass_csp=True)
    context.set_default_timeout(40_000)  # a busy machine, and the demo's SQLite shared by four processes
    page = context.new_page()
    page.goto("/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/$"))
    return page


def test_a_rollout_is_started_from_the_panel_advances_and_its_abort_restores_the_policy(browser: Any,
                                                                                      stack: Stack) -> None:
    before = stack.api.get(f"/models/{MODEL}/traffic").json()
    # The gates first: a version slower on paper is refused, with its evidence, and nothing starts.
    response = stack.api.post(f"/models/{MODEL}/versions", json={
        "version": "9", "precision": "fp16", "trt_version": "10.3",
        "engines": [{"gpu_arch": "sm_80", "uri": f"s3://demo-engines/{MODEL}/9/sm_80.plan", "sha256": "9" * 64,
                     "benchmark": {"p50_ms": 9.0, "p99_ms": 30.0}}]})
    assert response.status_code == 201, response.text

    page = _page(browser, stack, stack.token("rita", "release-manager"))
    page.goto(f"/ui/models/{MODEL}")
    panel = page.locator("#rollout")
    page.select_option("#ro-candidate", "9")
    page.fill("#ro-reason", "slow on paper")
    page.click("[data-start-rollout]")
    expect(page.locator("#gate-refusal")).to_contain_text("the gates refused 9")
    expect(page.locator("#gate-refusal")).to_contain_text("sm_80")
    expect(page.locator("#gate-refusal")).to_contain_text("ratio")
    assert stack.api.get(f"/models/{MODEL}/rollouts").json() == []

    # A custom plan: 10% for 10 s on the local pool, then 50% for 10 min (it is aborted there), a small evidence
    # minimum.
    page.select_option("#ro-candidate", "2")
    page.select_option("#ro-baseline", "1")
    page.check("input[name=plan][value=custom]")
    for row, (weight, pause, pools) in enumerate((("10", "10", "local-cpu"), ("50", "600", ""), ("100", "", ""))):
        page.fill(f"input[name=step-{row}-weight]", weight)
        page.fill(f"input[name=step-{row}-pause]", pause)
        page.fill(f"input[name=step-{row}-pools]", pools)
    page.locator("details.analysis summary").click()
    page.fill("#ro-min", "30")
    page.fill("#ro-reason", "fp16 engine, staged")
    page.click("[data-start-rollout]")
    expect(page.locator(".flash-ok")).to_contain_text("started: 2 against 1, first step 10%")
    rollout = stack.api.get(f"/models/{MODEL}/rollouts").json()[0]
    assert rollout["state"] == "running" and rollout["steps"][0]["pools"] == ["local-cpu"]
    assert rollout["analysis"]["min_requests"] == 30 and rollout["started_by"] == "rita"
    current = panel.locator("[aria-current=step]")
    expect(current).to_contain_text("10%")
    expect(current).to_contain_text(re.compile(r"left|pause served|here"))

    # The panel refreshes itself: the controller judges step 1 on real requests and moves to 50%.
    expect(current).to_have_attribute("data-step", "1", timeout=120_000)
    expect(current).to_contain_text("50%")
    expect(panel.locator("[data-step='0']")).to_contain_text("done")
    expect(panel.locator("tr[data-arch='sm_80']")).to_be_visible(timeout=30_000)
    expect(panel.locator("tr[data-arch='sm_80']")).to_contain_text("candidate")
    screenshot(page, "rollout-running")
    _publish_panel(page)
    assert _axe_violations(page) == []
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the running panel fits without sideways scrolling
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0, page.evaluate(WIDEST)
    screenshot(page, "rollout-running-390")
    page.set_viewport_size(VIEWPORT)

    # Abort: a confirmation page that wants a reason, then the policy from before the rollout is live again.
    page.click("[data-rollout-action=abort]")
    expect(page.locator("h1")).to_contain_text(f"Abort rollout {rollout['id']} of 2?")
    page.locator("#reason").evaluate("e => e.removeAttribute('required')")  # what a script-less client sends
    page.click("[data-confirm]")
    expect(page.locator("[role=alert]")).to_contain_text("say why you abort the rollout")
    page.fill("#reason", "seen enough")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text(f"Rollout {rollout['id']} aborted")
    after = stack.api.get(f"/models/{MODEL}/traffic").json()
    assert after["splits"] == before["splits"] and after["default_version"] == before["default_version"]
    assert after["created_by"] == f"rollout:{rollout['id']}"
    assert stack.api.get(f"/models/{MODEL}/rollouts/{rollout['id']}").json()["state"] == "aborted"
    expect(page.locator(f"tr[data-past-rollout='{rollout['id']}']")).to_contain_text("aborted")
    expect(page.locator("#rollout-form")).to_be_visible()
    deadline = time.monotonic() + 15
    while (seen := stack.served(range(300))) != Counter({"1": 300}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == Counter({"1": 300}), seen  # the routers serve the restored policy

    page.goto(f"/ui/models/{MODEL}/rollouts/{rollout['id']}")
    expect(page.locator("#rollout-detail")).to_contain_text("aborted by rita: seen enough")
    expect(page.locator("#rollout-detail [data-verdict='pass']").first).to_be_visible()


def _publish_panel(page: Any) -> None:
    path = ARTIFACTS / "rollout-panel.png"
    page.locator("#rollout").screenshot(path=str(path))
    publish_doc(path, "ui-rollout-panel.png")


def test_the_panel_fits_a_phone_and_a_viewer_gets_no_controls(browser: Any, stack: Stack) -> None:
    for name, role in (("rhea", "release-manager"), ("vera", "viewer")):
        page = _page(browser, stack, stack.token(name, role), width=390)
        page.goto(f"/ui/models/{MODEL}")
        expect(page.locator("#rollout")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, page.evaluate(WIDEST)
        assert _axe_violations(page) == [], role
        screenshot(page, f"rollout-panel-390-{role}")
    expect(page.locator("#rollout")).to_contain_text("can watch rollouts but not start")
    expect(page.locator("#rollout-form, [data-rollout-action]")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    response = page.request.post(f"/ui/models/{MODEL}/rollouts", form={"csrf": csrf, "candidate": "2",
                                                                       "plan": "fast"})
    assert response.status == 403


# --- the form and the actions on the web tests' control plane (Postgres, Redis; no traffic needed) -------------

def test_the_start_form_places_refusals_shows_the_gates_and_steers_a_rollout(api: Api, model: str,
                                                                              sign_in: Any) -> None:
    api.version(model, "5", benchmark={"p50_ms": 9.0, "p99_ms": 40.0})  # slower on paper than 3 (9.8 ms)
    page = sign_in("remy", "release-manager")
    page.goto(f"/ui/models/{model}")
    panel = page.locator("#rollout")
    expect(page.locator("#ro-baseline")).to_have_value("3")  # the default version

    # Weights that do not increase: refused, the error next to the row that holds it, nothing started.
    page.select_option("#ro-candidate", "4")
    page.check("input[name=plan][value=custom]")
    for row, weight in enumerate(("50", "10", "100")):
        page.fill(f"input[name=step-{row}-weight]", weight)
    page.fill("input[name=step-0-pause]", "soon")
    page.click("[data-start-rollout]")
    expect(panel.locator("#rollout-errors")).to_contain_text("Not started")
    expect(panel.locator("#err-step-0-pause")).to_contain_text("whole seconds")
    page.fill("input[name=step-0-pause]", "60")
    page.click("[data-start-rollout]")
    expect(panel.locator("#err-step-1-weight")).to_contain_text("weights must increase")
    expect(page.locator("input[name=step-2-weight]")).to_have_value("100")  # what was typed stays
    assert api.admin.get(f"/models/{model}/rollouts").json() == []

    # The gates: 5's trtexec p99 is 4x 3's on sm_80; refused with the evidence, then overridden with a reason.
    page.select_option("#ro-candidate", "5")
    page.check("input[name=plan][value=fast]")
    page.click("[data-start-rollout]")
    expect(page.locator("#gate-refusal")).to_contain_text("trtexec p99 40 ms against 9.8 ms on sm_80")
    page.locator("#rollout").screenshot(path=str(ARTIFACTS / "rollout-gate-refusal.png"))
    page.check("input[name=override_gates]")
    page.click("[data-start-rollout]")
    expect(panel.locator("#err-reason")).to_contain_text("say why the gates are overridden")
    page.select_option("#ro-candidate", "4")
    page.uncheck("input[name=override_gates]")
    page.check("input[name=plan][value=standard]")
    page.fill("#ro-reason", "int8 rebuild")
    page.click("[data-start-rollout]")
    expect(page.locator(".flash-ok")).to_contain_text("started: 4 against 3, first step 5%")
    rollout = api.admin.get(f"/models/{model}/rollouts").json()[0]
    expect(panel.locator("[aria-current=step]")).to_contain_text("5%")
    expect(panel.locator("[aria-current=step]")).to_contain_text(re.compile(r"of pause left|here"))
    expect(panel.locator("[data-verdict=none]")).to_contain_text("No verdict yet")

    # While it runs, a manual change is refused and says why.
    page.fill("input[name='weight:4']", "20")
    page.fill("#reason", "by hand")
    page.click("[data-apply]")
    expect(page.locator("#form-errors")).to_contain_text(f"rollout {rollout['id']}")

    # Pause, resume, promote: each through its confirmation page.
    for action, flash in (("pause", "paused"), ("resume", "resumed"), ("promote", "promoted: 4 has 100%")):
        page.goto(f"/ui/models/{model}")
        page.click(f"[data-rollout-action={action}]")
        expect(page.locator("#confirm h1")).to_contain_text(f"rollout {rollout['id']} of 4?")
        page.fill("#reason", f"{action} from the UI")
        page.click("[data-confirm]")
        expect(page.locator(".flash-ok")).to_contain_text(f"Rollout {rollout['id']} {flash}")
    traffic = api.traffic(model)
    assert traffic["default_version"] == "4" and {v: w for v, w in api.weights(model).items() if w} == {"4": 100.0}
    assert api.admin.get(f"/models/{model}/rollouts/{rollout['id']}").json()["state"] == "succeeded"
    expect(page.locator(f"tr[data-past-rollout='{rollout['id']}']")).to_contain_text("succeeded")
    expect(page.locator("#audit")).to_contain_text("rollout.promoted")
    # A finished rollout offers no actions, and a forged one is refused with the reason.
    page.goto(f"/ui/models/{model}/rollouts/{rollout['id']}/confirm/abort")
    page.fill("#reason", "too late")
    page.click("[data-confirm]")
    expect(page.locator("[role=alert]")).to_contain_text("is succeeded: cannot abort it")


def test_a_rollout_with_a_shadow_phase_is_started_from_the_form(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("remy", "release-manager")
    page.goto(f"/ui/models/{model}")
    panel = page.locator("#rollout")
    page.select_option("#ro-candidate", "4")
    page.check("input[name=plan][value=fast]")
    panel.locator("summary", has_text="Shadow phase first").click()
    page.fill("#ro-shadow-percent", "0")
    page.fill("#ro-shadow-seconds", "120")
    page.fill("#ro-reason", "fp16 rebuild, outputs first")
    page.click("[data-start-rollout]")
    # The API's refusal (shadow.percent must be over 0) lands next to the field, which stays open and filled.
    expect(panel.locator("#ro-shadow-percent")).to_have_attribute("aria-invalid", "true")
    expect(panel.locator("#ro-shadow-seconds")).to_have_value("120")
    assert api.admin.get(f"/models/{model}/rollouts").json() == []
    page.fill("#ro-shadow-percent", "12.5")
    page.fill("#ro-top1", "0.995")
    page.click("[data-start-rollout]")
    expect(page.locator(".flash-ok")).to_contain_text("started: 4 against 3")
    expect(panel.locator("[data-phase=shadow]")).to_contain_text("12.5% of requests are mirrored to 4 for 120 s")
    rollout = api.admin.get(f"/models/{model}/rollouts").json()[0]
    assert rollout["phase"] == "shadow" and rollout["analysis"]["min_top1_agreement"] == 0.995
    assert api.traffic(model)["shadow"] == {"version": "4", "percent": 12.5}
