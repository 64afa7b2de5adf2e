"""Release managers in a real browser against a real control plane."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.sync_api import expect

from tests.web.conftest import ARTIFACTS, Api, publish_doc, run_async, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]


def csrf_of(page: Any) -> str:
    return page.locator("input[name=csrf]").first.get_attribute("value")


def test_release_manager_moves_the_canary_from_5_to_10_percent(api: Api, sign_in: Any) -> None:
    model = "resnet50"  # the README's screenshot
    api.canary(model)
    api.report_stats(model)
    api.canary("bert-squad", weight="20", description="Question answering, SQuAD v2")
    api.version("bert-squad", "5", urls=[])  # registered, its backends not up yet: amber
    page = sign_in("alice", "release-manager")
    row = page.locator(f"tr[data-model={model}]")
    expect(row).to_contain_text("95%")
    expect(row).to_contain_text("a100 · 2/2 replicas ready")
    expect(row).to_contain_text("bootstrap-admin")
    screenshot(page, "overview")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    row.get_by_role("link", name=model).click()
    expect(page.locator("h1")).to_have_text(model)
    expect(page.locator("#versions")).to_contain_text("p99 6.90 ms")
    expect(page.locator("#figures .series-card")).to_have_count(4)

    # the number field moves the slider and, with two versions, the other version
    page.fill("input[name='weight:4']", "10")
    expect(page.locator("input[name='weight:3']")).to_have_value("90")
    expect(page.locator("[data-movement]")).to_contain_text("+5% of users move from 3 to 4; nobody leaves 4")
    # and the slider moves both fields
    page.locator("tr[data-version='4'] [data-slider]").fill("9")  # snaps to the nearest common step
    expect(page.locator("input[name='weight:4']")).to_have_value("10")
    expect(page.locator("input[name='weight:3']")).to_have_value("90")
    page.fill("input[name='weight:4']", "10")
    expect(page.locator("[data-total]")).to_have_text("100")
    page.fill("#reason", "p99 flat for an hour")
    screenshot(page, "model-page-before-apply")
    page.click("[data-apply]")

    expect(page.locator(".flash-ok")).to_contain_text("Revision 2 is live: 3 90% · 4 10%")
    traffic = api.traffic(model)
    assert traffic["revision"] == 2
    assert {s["version"]: s["weight"] for s in traffic["splits"]} == {"3": 90.0, "4": 10.0}
    assert traffic["reason"] == "p99 flat for an hour" and traffic["created_by"] == "alice"
    assert [r[2] for r in traffic["allocation"]] == ["3", "4"]  # minimal movement: 4 owns [9000, 10000)
    expect(page.locator("tr[data-revision='2']")).to_contain_text("p99 flat for an hour")
    expect(page.locator("#audit")).to_contain_text("traffic.update")
    page.reload()  # without the flash, as people see it day to day
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling at 1280 px"
    page.fill("input[name='weight:4']", "25")
    expect(page.locator("[data-movement]")).to_contain_text("+15% of users move from 3 to 4")
    screenshot(page, "model-page", docs="ui-model-page.png")
    page.locator("#figures").screenshot(path=str(ARTIFACTS / "live-figures.png"))
    publish_doc(ARTIFACTS / "live-figures.png", "ui-live-figures.png")


def test_a_viewer_sees_no_controls_and_a_forged_post_is_refused(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#traffic")).to_contain_text("can look but not change traffic")
    for control in ("#traffic-form", "#rules-form", "[data-action]", "[data-warm]", "input[type=range]",
                    "[data-retire-open]"):
        expect(page.locator(control)).to_have_count(0)
    screenshot(page, "model-page-viewer")

    token = csrf_of(page)  # the viewer's own, valid CSRF token (from the sign-out form)
    forged = {"csrf": token, "revision": "1", "weight:3": "50", "weight:4": "50", "default_version": "3"}
    for path, form in ((f"/ui/models/{model}/traffic", forged),
                       (f"/ui/models/{model}/actions/promote", {"csrf": token, "revision": "1", "version": "4"}),
                       (f"/ui/models/{model}/rules", {"csrf": token, "revision": "1", "rule-count": "0"}),
                       (f"/ui/models/{model}/versions/4/warm", {"csrf": token, "warm": "1"}),
                       (f"/ui/models/{model}/versions/4/retire", {"csrf": token})):
        response = page.request.post(path, form=form, max_redirects=0)
        assert response.status == 403, (path, response.status)
        assert "may not do this" in response.text()
    assert page.request.get(f"/ui/models/{model}/confirm/promote?version=4").status == 403
    assert api.weights(model) == {"3": 95.0, "4": 5.0}
    assert api.admin.get(f"/models/{model}/versions/4").json()["warm"] is False


def test_two_release_managers_the_second_gets_a_conflict_not_an_overwrite(api: Api, model: str,
                                                                           sign_in: Any) -> None:
    alice = sign_in("alice", "release-manager")
    bob = sign_in("bob", "release-manager")
    for page in (alice, bob):
        page.goto(f"/ui/models/{model}")

    alice.fill("input[name='weight:4']", "10")
    alice.fill("#reason", "widen")
    alice.click("[data-apply]")
    expect(alice.locator(".flash-ok")).to_contain_text("Revision 2 is live")

    bob.fill("input[name='weight:4']", "50")
    expect(bob.locator("[data-movement]")).to_contain_text("applying will be refused")  # the preview warns early
    bob.fill("#reason", "go big")
    bob.click("[data-apply]")
    conflict = bob.locator("#conflict")
    expect(conflict).to_contain_text("Not applied")
    expect(conflict).to_contain_text("alice saved revision 2")
    expect(conflict).to_contain_text("3 90% · 4 10%")  # the newer state
    expect(conflict).to_contain_text("3 50% · 4 50%")  # what bob tried
    expect(bob.locator("input[name='weight:4']")).to_have_value("10")  # the form now edits the live policy
    screenshot(bob, "conflict")
    assert api.weights(model) == {"3": 90.0, "4": 10.0}
    assert api.traffic(model)["revision"] == 2


@pytest.mark.parametrize(("typed", "message"), [
    ("100.5", "less than or equal to 100"),
    ("5.125", "no more than 2 decimal places"),
    ("", "valid decimal"),  # a cleared field
])
def test_a_bad_value_is_explained_next_to_its_field(api: Api, model: str, sign_in: Any, typed: str,
                                                    message: str) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    field = page.locator("input[name='weight:4']")
    field.fill(typed)
    page.click("[data-apply]")
    error = page.locator("#err-weight-4")
    expect(error).to_contain_text(message)
    expect(page.locator("tr[data-version='4']")).to_contain_text(message)  # next to the field, not elsewhere
    expect(field).to_have_value(typed)  # what was typed stays, to be corrected
    expect(page.locator("#form-errors")).to_contain_text("Not applied")
    if typed == "100.5":
        screenshot(page, "field-error")
    assert api.weights(model) == {"3": 95.0, "4": 5.0}


def test_weights_that_do_not_add_up_are_refused_with_the_apis_message(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    page.evaluate("document.querySelector(\"input[name='weight:3']\").value = '80'")  # bypass the balancing
    page.click("[data-apply]")
    expect(page.locator("tfoot")).to_contain_text("weights sum to 85, not 100")
    assert api.weights(model) == {"3": 95.0, "4": 5.0}


def test_roll_back_re_apply_and_promote(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")

    page.click("[data-action='rollback-4']")
    expect(page.locator("#confirm")).to_contain_text("+5% of users move from 4 to 3")
    page.fill("#reason", "error rate up")
    screenshot(page, "confirm-rollback")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text("Rolled back 4")
    traffic = api.traffic(model)
    assert api.weights(model) == {"3": 100.0, "4": 0.0}
    assert traffic["default_version"] == "3" and traffic["reason"] == "error rate up"

    page.click("[data-action='reapply-1']")
    expect(page.locator("#confirm")).to_contain_text("+5% of users move from 3 to 4")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text("Re-applied revision 1")
    traffic = api.traffic(model)
    assert api.weights(model) == {"3": 95.0, "4": 5.0} and traffic["reapplied_from"] == 1

    page.click("[data-action='promote-4']")
    expect(page.locator("#confirm")).to_contain_text("4 gets 100% of traffic and becomes the default version")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text("Promoted 4")
    traffic = api.traffic(model)
    assert api.weights(model) == {"3": 0.0, "4": 100.0} and traffic["default_version"] == "4"
    expect(page.locator("[data-action]")).to_have_count(3)  # only re-apply links are left: no candidate
    assert [e["action"] for e in api.admin.get("/audit", params={"model": model}).json()[:3]] == [
        "traffic.update", "traffic.reapply", "traffic.update"]


def test_a_quick_action_on_a_stale_page_is_a_conflict(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}/confirm/promote?version=4")
    api.put_traffic(model, {"3": "80", "4": "20"}, default="3", reason="meanwhile, by the API")
    page.click("[data-confirm]")
    expect(page.locator("#conflict")).to_contain_text("bootstrap-admin saved revision 2")
    assert api.weights(model) == {"3": 80.0, "4": 20.0}


def test_rules_and_warm_versions(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    new = page.locator("#rules-form tr.new-rule")
    new.locator("input[name$='-name']").fill("qa-tenant")
    new.locator("input[name$='-header']").fill("x-tenant")
    new.locator("textarea").fill("qa\nstaging")
    new.locator("select[name$='-version']").select_option("4")
    page.fill("#rules-reason", "QA sees the candidate")
    page.click("#rules-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("Rules saved")
    assert api.traffic(model)["rules"] == [{"name": "qa-tenant", "match": {"header": "x-tenant", "in": ["qa", "staging"]},
                                            "version": "4"}]

    # a rule on the routing key header is refused by the service, next to the header field
    new = page.locator("#rules-form tr.new-rule")
    new.locator("input[name$='-name']").fill("by-user")
    new.locator("input[name$='-header']").fill("x-user-id")
    new.locator("textarea").fill("u-1")
    new.locator("select[name$='-version']").select_option("4")
    page.click("#rules-form button[type=submit]")
    expect(page.locator("#rules-form tr").nth(2)).to_contain_text("that is the routing key header")
    # and a name the API would refuse, next to the name field
    page.locator("#rules-form input[name='rule-1-header']").fill("x-debug")
    page.locator("#rules-form input[name='rule-1-name']").fill("Not A Slug")
    page.click("#rules-form button[type=submit]")
    expect(page.locator("#rules-form tr").nth(2)).to_contain_text("use lowercase letters, digits and '-'")
    assert len(api.traffic(model)["rules"]) == 1

    page.goto(f"/ui/models/{model}")
    page.click("[data-warm='3']")
    expect(page.locator(".flash-ok")).to_contain_text("Version 3 is kept warm")
    expect(page.locator("tr[data-version-row='3']")).to_contain_text("warm")
    assert api.admin.get(f"/models/{model}/versions/3").json()["warm"] is True


def test_a_post_without_the_csrf_token_is_refused(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    form = {"revision": "1", "weight:3": "50", "weight:4": "50", "default_version": "3"}
    for token in (None, "forged-token"):
        body = form if token is None else {**form, "csrf": token}
        response = page.request.post(f"/ui/models/{model}/traffic", form=body, max_redirects=0)
        assert response.status == 403
        assert "Form refused" in response.text()
    response = page.request.post("/ui/logout", form={}, max_redirects=0)
    assert response.status == 403
    assert api.weights(model) == {"3": 95.0, "4": 5.0}
    page.reload()
    expect(page.locator(".who-name")).to_have_text("alice")  # still signed in: the forged logout did nothing


def test_session_cookie_is_httponly_signed_and_holds_no_token(api: Api, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "grayroute_ui"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui"
    assert api.tokens["alice"] not in cookie["value"]
    page.context.add_cookies([{**cookie, "value": cookie["value"][:-4] + "AAAA"}])  # tampered: signed out
    page.goto("/ui/")
    assert "/ui/login" in page.url


def test_a_revoked_token_signs_its_browser_sessions_out(api: Api, sign_in: Any, web_settings: Any) -> None:
    page = sign_in("rita", "release-manager")

    async def revoke() -> None:
        connection = await asyncpg.connect(web_settings.database_url.replace("+asyncpg", ""))
        try:
            await connection.execute("UPDATE tokens SET revoked_at = now() WHERE name = 'rita'")
        finally:
            await connection.close()

    run_async(revoke())
    page.goto("/ui/")
    assert "/ui/login" in page.url
    expect(page.locator(".flash-info")).to_contain_text("no longer valid")


def test_sign_in_and_out(api: Api, browser: Any, server: Any) -> None:
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    page.goto("/ui/login")
    page.fill("#token", "gr_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("Unknown or revoked token")
    page.fill("#token", api.token("edge-router-1", "router"))
    page.click("button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("cannot use the UI")
    page.fill("#token", api.token("alice", "release-manager"))
    page.click("button[type=submit]")
    expect(page.locator(".who-name")).to_have_text("alice")
    page.click("text=Sign out")
    expect(page.locator(".flash-info")).to_contain_text("Signed out")
    page.goto("/ui/")
    assert "/ui/login" in page.url
    context.close()


def test_bad_input_never_yields_a_server_error(api: Api, model: str, server: Any) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        page = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        client.post("/ui/login", data={"csrf": token, "token": api.token("alice", "release-manager")})
        token = re.search(r'name="csrf" value="([^"]+)"', client.get(f"/ui/models/{model}").text).group(1)
        probes = [
            ("get", "/ui/models/no-such-model", None),
            ("get", "/ui/models/NOT%20A%20NAME", None),
            ("get", f"/ui/models/{model}/confirm/explode?version=4", None),
            ("get", f"/ui/models/{model}/confirm/reapply?source=abc", None),
            ("get", f"/ui/models/{model}/confirm/reapply?source=999", None),
            ("get", f"/ui/models/{model}/confirm/rollback?version=3", None),
            ("get", f"/ui/models/{model}/preview?weight:4=1e400&weight:3=x", None),
            ("get", "/ui/login?next=https://elsewhere.example", None),
            ("get", "/ui/no/such/page", None),
            ("post", f"/ui/models/{model}/traffic", {"csrf": token, "revision": "zz", "weight:4": "5",
                                                     "weight:3": "95", "default_version": "nope"}),
            ("post", f"/ui/models/{model}/traffic", {"csrf": token, "revision": "1", "weight:9": "5",
                                                     "weight:3": "95", "default_version": "3"}),
            ("post", f"/ui/models/{model}/traffic", {"csrf": token, "revision": "1", "weight:3": "NaN",
                                                     "weight:4": "Infinity", "default_version": "3",
                                                     "reason": "x" * 3000}),
            ("post", f"/ui/models/{model}/actions/reapply", {"csrf": token, "revision": "1", "source": "77"}),
            ("post", f"/ui/models/{model}/rules", {"csrf": token, "revision": "1", "rule-count": "99999",
                                                   "rule-0-kind": "nonsense", "rule-0-values": ","}),
            ("post", f"/ui/models/{model}/versions/nope/warm", {"csrf": token, "warm": "1"}),
        ]
        for method, path, data in probes:
            response = client.request(method, path, data=data)
            assert response.status_code < 500, (path, response.status_code, response.text[:300])
            if not response.is_redirect:
                assert response.headers["content-type"].startswith(("text/html", "application/json")), path
        assert api.weights(model) == {"3": 95.0, "4": 5.0}


def test_the_first_policy_of_a_new_model(api: Api, sign_in: Any) -> None:
    api.admin.post("/models", json={"name": "web-fresh-model"})
    api.version("web-fresh-model", "1")
    page = sign_in("alice", "release-manager")
    page.goto("/ui/models/web-fresh-model")
    expect(page.locator("#traffic")).to_contain_text("No traffic policy yet")
    page.click("[data-apply]")  # every weight at 0: refused, with the API's reason
    expect(page.locator("tfoot")).to_contain_text("must not be empty")
    page.fill("input[name='weight:1']", "100")
    expect(page.locator("[data-movement]")).to_contain_text("a fresh layout: users are assigned 100% to 1")
    page.click("[data-apply]")
    expect(page.locator(".flash-ok")).to_contain_text("Revision 1 is live: 1 100%")
    assert api.traffic("web-fresh-model")["default_version"] == "1"


def test_live_figures_compare_versions_with_the_default(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#figures")).to_contain_text("No figures yet")
    api.report_stats(model, minutes=1)
    panel = page.request.get(f"/ui/models/{model}/figures")  # what the page fetches to refresh itself
    assert panel.status == 200
    html = panel.text()
    assert html.count("<svg") == 4  # requests/s, error rate, p99 per version; p99 per pool and architecture
    # error rate: worse than the default, with the interval of the difference, never a bare percentage
    assert re.search(r"\+0\.\d\d pp vs 3 \(95% CI \+0\.\d\d to \+\d\.\d\d\)", html), html
    assert "tone-worse" in html
    page.reload()
    expect(page.locator("#figures .series-card")).to_have_count(4)
    expect(page.locator("#figures")).to_contain_text("1 router reporting")
    row = page.locator("#figures tr[data-figures-version='4']")
    expect(row).to_contain_text("5%")  # share of users next to its share of requests
    expect(page.locator("#figures-pools tr[data-deployment='4/h100/sm_90']")).to_be_visible()
    expect(page.locator("#figures-pools tr[data-deployment='3/a100/sm_80']")).to_be_visible()
    # the window choice redraws the panel in place
    page.click("#figures [data-window='3600']")
    expect(page.locator("#figures .window-choice .current")).to_have_text("1 h")
    expect(page.locator("#figures")).to_contain_text("Last 1 h")


def test_a_comparison_on_too_few_requests_says_so(api: Api, model: str, sign_in: Any) -> None:
    api.report_stats(model, minutes=1, canary=6)
    stats = api.admin.get(f"/models/{model}/stats", params={"window": 300}).json()
    canary = next(v for v in stats["versions"] if v["version"] == "4")
    assert 0 < canary["errors"] and canary["requests"] < 200
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    row = page.locator("#figures tr[data-figures-version='4']")
    expect(row.locator("[data-compare=errors]")).to_have_text(f"not enough data, {canary['requests']} requests")
    expect(row.locator("[data-compare=latency]")).to_contain_text("not enough data")
    expect(row).not_to_contain_text("pp vs")
    page.locator("#figures").screenshot(path=str(ARTIFACTS / "live-figures-too-few.png"))


def test_a_stale_rules_form_is_a_conflict_that_names_both_rule_sets(api: Api, model: str, sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    api.put_traffic(model, {"3": "90", "4": "10"}, default="3", reason="meanwhile")
    new = page.locator("#rules-form tr.new-rule")
    new.locator("input[name$='-name']").fill("beta-users")
    new.locator("select[name$='-kind']").select_option("key")
    new.locator("textarea").fill("u-1\nu-2")
    new.locator("select[name$='-version']").select_option("4")
    page.click("#rules-form button[type=submit]")
    conflict = page.locator("#conflict")
    expect(conflict).to_contain_text("3 90% · 4 10%")
    expect(conflict).to_contain_text("rules: beta-users → 4")
    assert api.traffic(model)["rules"] == []


def test_with_three_versions_the_default_takes_up_the_rest(api: Api, model: str, sign_in: Any) -> None:
    api.version(model, "5", precision="fp8")
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("input[name='weight:5']")).to_have_value("0")  # offered, not yet in the split
    page.fill("input[name='weight:5']", "2.5")
    expect(page.locator("input[name='weight:3']")).to_have_value("92.5")
    expect(page.locator("input[name='weight:4']")).to_have_value("5")
    expect(page.locator("[data-movement]")).to_contain_text(
        "+2.5% of users move from 3 to 5; nobody leaves 5; 4 keeps exactly its users")
    page.click("[data-apply]")
    expect(page.locator(".flash-ok")).to_contain_text("3 92.5% · 4 5% · 5 2.5%")
    assert api.weights(model) == {"3": 92.5, "4": 5.0, "5": 2.5}


def test_history_pages_back_through_older_revisions(api: Api, model: str, sign_in: Any) -> None:
    for step in range(1, 26):
        api.put_traffic(model, {"3": str(95 - step * 0.01), "4": str(5 + step * 0.01)}, default="3",
                        reason=f"step {step}")
    page = sign_in("victor", "viewer")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#history tr[data-revision]")).to_have_count(25)
    expect(page.locator("#history tr[data-revision='26']")).to_contain_text("live")
    expect(page.locator("#history tr[data-revision='1']")).to_have_count(0)
    page.click("[data-older-revisions]")
    expect(page.locator("#history tr[data-revision]")).to_have_count(1)
    expect(page.locator("#history tr[data-revision='1']")).to_contain_text("first canary")
    expect(page.locator("#history .chip-ok")).to_have_count(0)  # revision 1 is not live
    page.click("#history >> text=Newest")
    expect(page.locator("#history tr[data-revision='26']")).to_be_visible()
    page.click("[data-older-events]")
    expect(page.locator("#audit")).to_contain_text("model.create")


def test_a_versions_io_signature_is_shown(api: Api, model: str, sign_in: Any) -> None:
    response = api.admin.post(f"/models/{model}/versions", json={
        "version": "5", "precision": "fp16", "trt_version": "10.3",
        "signature": {"inputs": [{"name": "images", "datatype": "FP16", "shape": [-1, 3, 224, 224]}],
                      "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}],
                      "max_batch_size": 16},
        "dynamic_batching": {"max_queue_delay_microseconds": 100}})
    assert response.status_code == 201, response.text
    page = sign_in("vera", "viewer")
    page.goto(f"/ui/models/{model}")
    signature = page.locator("[data-signature='5']")
    expect(signature).to_contain_text("in: images FP16[-1, 3, 224, 224]")
    expect(signature).to_contain_text("out: probabilities FP32[-1, 1000]")
    expect(signature).to_contain_text("batch ≤ 16 · dynamic batching")
    expect(page.locator("[data-signature='3']")).to_have_count(0)  # registered without one
