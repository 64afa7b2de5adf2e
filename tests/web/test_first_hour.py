"""What a new release manager meets in the first hour, in a real browser: warnings before a
change that cannot serve, readable history, retiring, phones, the slider, accessibility,
and API docs that work without internet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.sync_api import expect

from tests.services import LiveServer
from tests.web.conftest import VIEWPORT, Api, run_async, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]

AXE = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_text()


def _sql(settings: Any, statement: str, *args: Any) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
        try:
            await connection.execute(statement, *args)
        finally:
            await connection.close()

    run_async(run())


def _sm90_version(api: Api, model: str, version: str) -> None:
    """A version whose only engine is for sm_90: no pool (a100 is sm_80) can run it."""
    response = api.admin.post(f"/models/{model}/versions", json={
        "version": version, "precision": "fp8", "trt_version": "10.3",
        "engines": [{"gpu_arch": "sm_90", "uri": f"s3://engines/{model}/{version}/sm_90.plan", "sha256": "cd" * 32}]})
    assert response.status_code == 201, response.text


@pytest.fixture
def page_of(browser: Any, server: LiveServer, api: Api) -> Iterator[Any]:
    """A signed-in page at a given viewport; CSP bypassed only so the test can inject axe-core."""
    contexts: list[Any] = []

    def open_page(name: str, role: str, *, width: int = VIEWPORT["width"], height: int = VIEWPORT["height"]) -> Any:
        context = browser.new_context(base_url=server.url, viewport={"width": width, "height": height},
                                      bypass_csp=True)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/ui/login")
        page.fill("#token", api.token(name, role))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ui/$"))
        return page

    yield open_page
    for context in contexts:
        context.close()


# --- 10. versions that cannot serve -------------------------------------------------------------------

def test_preview_confirm_and_keep_warm_warn_about_versions_that_cannot_serve(
    api: Api, model: str, page_of: Any,
) -> None:
    api.version(model, "6", urls=[])  # an engine a pool runs, but no ready replica
    _sm90_version(api, model, "7")  # no pool can run it at all
    page = page_of("wanda", "release-manager")
    page.goto(f"/ui/models/{model}")

    coverage = page.locator("#coverage")
    expect(coverage.locator("tr[data-coverage='3']")).to_contain_text("Ready 1/1")
    expect(coverage.locator("tr[data-coverage='6']")).to_contain_text("not ready anywhere")
    expect(coverage.locator("tr[data-coverage='7']")).to_contain_text("no pool can run it")
    expect(coverage.locator("tr[data-coverage='7']")).to_contain_text("no sm_80 engine")
    expect(coverage.locator("thead")).to_contain_text("a100 sm_80 · TensorRT 10.3")

    page.fill("input[name='weight:6']", "5")
    warnings = page.locator("[data-movement] [data-warnings]")
    expect(warnings).to_contain_text("6 has no ready replica yet: 5% of users go to the default version 3 until it is up")
    page.fill("input[name='weight:7']", "1")
    expect(warnings).to_contain_text("7 has no engine that any pool can run")
    expect(warnings).to_contain_text("applying will be refused")
    page.fill("input[name='weight:7']", "0")
    page.fill("input[name='weight:6']", "0")
    expect(warnings).to_have_count(0)  # nothing to warn about: the live policy serves

    # Re-applying an old revision whose version is not up is warned about before confirming.
    api.put_traffic(model, {"3": "90", "4": "5", "6": "5"}, default="3", reason="try 6")
    api.put_traffic(model, {"3": "95", "4": "5", "6": "0"}, default="3", reason="6 is not up")
    page.goto(f"/ui/models/{model}/confirm/reapply?source=2")
    expect(page.locator("[data-warnings]")).to_contain_text("6 has no ready replica yet: 5% of users go to the default "
                                                            "version 3 until it is up")

    # "Keep warm" on a version no pool can run says that nothing is started.
    page.goto(f"/ui/models/{model}")
    page.click("[data-warm='7']")
    expect(page.locator(".flash-warn")).to_contain_text("Marked 7 warm, but no pool can run it")
    page.click("[data-warm='6']")
    expect(page.locator(".flash-ok")).to_contain_text("Version 6 is kept warm.")


# --- 6. a 0% default, in the UI as in the API -------------------------------------------------------

def test_a_zero_percent_default_is_explained_and_not_offered_a_promotion_to_where_it_is(
    api: Api, model: str, page_of: Any,
) -> None:
    api.put_traffic(model, {"3": "0", "4": "100"}, default="3", reason="all on 4, 3 stays the fallback")
    page = page_of("wanda", "release-manager")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("[data-default-note]")).to_contain_text(
        "default version 3 has 0% of the split: it is the fallback only")
    expect(page.locator("[data-action='promote-4']")).to_have_text("Make 4 the default…")
    page.click("[data-action='promote-4']")
    expect(page.locator("#confirm .lead")).to_contain_text("4 already has 100% of traffic; it becomes the default")


# --- 11. history and audit -------------------------------------------------------------------------

def test_history_shows_rules_audit_shows_before_and_after_and_rollback_asks_why(
    api: Api, model: str, page_of: Any, web_settings: Any,
) -> None:
    etag = api.admin.get(f"/models/{model}/traffic").headers["etag"]
    response = api.admin.put(f"/models/{model}/traffic", headers={"If-Match": etag}, json={
        "default_version": "3", "reason": "QA sees 4",
        "splits": [{"version": "3", "weight": 95}, {"version": "4", "weight": 5}],
        "rules": [{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"}]})
    assert response.status_code == 200, response.text
    page = page_of("wanda", "release-manager")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("tr[data-revision='2'] [data-rules]")).to_have_text("qa → 4 (x-tenant in qa)")
    expect(page.locator("tr[data-revision='1'] [data-rules]")).to_have_text("none")
    latest = page.locator("#audit tbody tr").first
    expect(latest.locator("[data-diff]")).to_contain_text("rules none → qa → 4 (x-tenant in qa)")
    expect(latest.locator("[data-diff] del")).to_have_text("none")
    expect(page.locator("#traffic")).to_contain_text("1 rule applies before the split.")

    page.click("[data-action='rollback-4']")
    page.click("[data-confirm]")  # no reason: the browser asks for one and sends nothing
    assert page.locator("#reason").evaluate("e => e.validity.valueMissing")
    assert api.traffic(model)["revision"] == 2
    # A client that skips the browser's check is refused by the server too.
    forged = page.request.post(f"/ui/models/{model}/actions/rollback", form={
        "csrf": page.locator("input[name=csrf]").first.get_attribute("value"), "revision": "2", "version": "4",
        "source": "", "reason": ""})
    assert forged.status == 422 and "say why you roll back" in forged.text()
    assert api.traffic(model)["revision"] == 2
    page.fill("#reason", "error rate doubled")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text("Rolled back 4.")
    assert api.traffic(model)["reason"] == "error rate doubled"


# --- 12. retire, draining time left, replica counts ------------------------------------------------

def test_retire_from_the_ui_drain_time_left_and_overview_counts_replicas(
    api: Api, model: str, page_of: Any, web_settings: Any,
) -> None:
    api.version(model, "6", urls=["http://127.0.0.1:9106", "http://127.0.0.1:9206"])
    page = page_of("olga", "release-manager")
    row = page.locator(f"tr[data-model={model}]")
    expect(row).to_contain_text("a100 · 4/4 replicas ready")  # 3 deployments, 4 replicas

    until = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _sql(web_settings, "UPDATE deployments SET phase = 'Draining', ready_replicas = 1, message = $1 "
         "WHERE version_id = (SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id "
         "WHERE m.name = $2 AND v.version = '6')",
         f"left the active set; kept warm for rollback until {until}", model)
    page.reload()
    expect(row).to_contain_text("a100 · 3/4 replicas ready")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("tr[data-version-row='6']")).to_contain_text(re.compile(r"Draining 1/2 · (9|10) min left"))

    # Only a version without traffic may be retired; the others offer no button.
    expect(page.locator("[data-retire-open='3']")).to_have_count(0)
    expect(page.locator("[data-retire-open='4']")).to_have_count(0)
    page.click("[data-retire-open='6']")
    page.click("[data-retire='6']")
    expect(page.locator(".flash-ok")).to_contain_text("Version 6 is retired")
    assert api.admin.get(f"/models/{model}/versions/6").json()["status"] == "retired"
    events = api.admin.get("/audit", params={"model": model, "action": "version.retire"}).json()
    assert [e["actor"] for e in events] == ["olga"]
    # A forged retire of a version with traffic is refused and changes nothing.
    answer = page.request.post(f"/ui/models/{model}/versions/4/retire",
                               form={"csrf": page.locator("input[name=csrf]").first.get_attribute("value")})
    assert answer.ok and "Not retired: version &#39;4&#39; still has" in answer.text()
    assert api.admin.get(f"/models/{model}/versions/4").json()["status"] != "retired"


# --- 13. phones and tablets ------------------------------------------------------------------------

# The outermost elements that stick out of the viewport (what to fix when the page is too wide).
WIDEST = """() => {
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.right <= window.innerWidth + 1) continue;
    let scrolled = false;
    for (let p = el.parentElement; p; p = p.parentElement) {
      const style = getComputedStyle(p);
      if (style.overflowX === "auto" || style.overflowX === "hidden") { scrolled = true; break; }
    }
    if (!scrolled && !out.some((o) => o.contains(el))) out.push(el);
  }
  return out.slice(0, 6).map((el) => `${el.tagName.toLowerCase()}.${el.className}#${el.id} right=${Math.round(el.getBoundingClientRect().right)}`);
}"""

@pytest.mark.parametrize("width", [390, 768])
def test_pages_fit_phones_and_tablets_without_sideways_scrolling(api: Api, model: str, page_of: Any,
                                                                width: int) -> None:
    api.version(model, "6", urls=[])
    _sm90_version(api, model, "7")
    api.report_stats(model, minutes=1)
    page = page_of("pat", "release-manager", width=width, height=844)
    for path in ("/ui/", f"/ui/models/{model}", f"/ui/models/{model}/confirm/rollback?version=4"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} at {width} px is {overflow} px too wide: {page.evaluate(WIDEST)}"
        screenshot(page, f"width-{width}{path.replace('/', '-')}"[:80])


# --- 14. the slider, the keyboard, accessibility ---------------------------------------------------

def test_slider_snaps_to_common_steps_keys_walk_them_and_typing_stays_exact(
    api: Api, model: str, page_of: Any,
) -> None:
    page = page_of("sam", "release-manager")
    page.goto(f"/ui/models/{model}")
    slider = page.locator("tr[data-version='4'] [data-slider]")
    number, other = page.locator("input[name='weight:4']"), page.locator("input[name='weight:3']")

    slider.fill("18.88")  # where a click lands
    expect(number).to_have_value("25")
    expect(other).to_have_value("75")
    slider.focus()
    for key, expected in (("ArrowUp", "50"), ("ArrowDown", "25"), ("ArrowDown", "10"), ("ArrowLeft", "5"),
                          ("PageDown", "1"), ("ArrowDown", "0.1"), ("Home", "0"), ("End", "100"),
                          ("ArrowDown", "99.9")):
        page.keyboard.press(key)
        expect(number).to_have_value(expected)
    expect(slider).to_have_attribute("aria-valuetext", "99.9% of users")
    expect(other).to_have_value("0.1")

    page.fill("input[name='weight:4']", "18.88")  # typing keeps any value to 0.01
    expect(number).to_have_value("18.88")
    expect(other).to_have_value("81.12")
    assert slider.evaluate("e => e.value") == "18.88"
    expect(page.locator("[data-movement]")).to_contain_text("+13.88% of users move from 3 to 4")


def _axe_violations(page: Any) -> list[str]:
    page.add_script_tag(content=AXE)
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .filter(v => v.impact === "serious" || v.impact === "critical")
        .map(v => `${v.impact} ${v.id}: ${v.help} — ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", ")}`)""")
    return list(found)


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_have_no_serious_or_critical_accessibility_violations(api: Api, model: str, page_of: Any,
                                                                    browser: Any, server: LiveServer,
                                                                    width: int) -> None:
    api.version(model, "6", urls=[])
    api.report_stats(model, minutes=1)
    etag = api.admin.get(f"/models/{model}/traffic").headers["etag"]
    api.admin.put(f"/models/{model}/traffic", headers={"If-Match": etag}, json={
        "default_version": "3", "reason": "qa", "splits": [{"version": "3", "weight": 95}, {"version": "4", "weight": 5}],
        "rules": [{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"}]})
    page = page_of("ada", "release-manager", width=width)
    problems: dict[str, list[str]] = {}
    for path in ("/ui/", f"/ui/models/{model}", f"/ui/models/{model}/confirm/promote?version=4"):
        page.goto(path)
        problems[path] = _axe_violations(page)
    page.goto(f"/ui/models/{model}")
    page.fill("input[name='weight:4']", "10")  # the preview and its warnings, as a screen reader meets them
    expect(page.locator("[data-movement]")).to_contain_text("+5% of users move")
    problems["preview"] = _axe_violations(page)
    signed_out = browser.new_context(base_url=server.url, bypass_csp=True).new_page()
    signed_out.goto("/ui/login")
    problems["/ui/login"] = _axe_violations(signed_out)
    signed_out.context.close()
    report = [f"{path}: {line}" for path, found in problems.items() for line in found]
    assert report == [], "\n".join(report)


# --- 9. API docs without internet -------------------------------------------------------------------

@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_with_every_outside_request_blocked(browser: Any, server: LiveServer, path: str,
                                                            rendered: str) -> None:
    context = browser.new_context(base_url=server.url)
    outside: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto(path)
    expect(page.locator(rendered).first).to_be_visible(timeout=20_000)
    assert page.locator(rendered).count() > 5
    # The only request that leaves is ReDoc's decorative "API docs by Redocly" footer logo; blocked, it changes nothing.
    assert [u for u in outside if not re.fullmatch(r"https://cdn\.redoc\.ly/redoc/logo-mini\.svg", u)] == []
    context.close()
