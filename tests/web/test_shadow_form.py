"""Shadow traffic from the traffic form: chosen, previewed, applied, kept by the other forms, refused per field."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import Api, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]


def test_a_release_manager_shadows_a_version_and_the_other_forms_keep_it(api: Api, model: str,
                                                                         sign_in: Any) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#shadow_version")).to_have_value("")  # no shadow yet
    page.select_option("#shadow_version", "4")
    page.fill("#shadow_percent", "12.34")
    preview = page.locator("[data-shadow-preview]")
    expect(preview).to_have_text("Shadow 4 at 12.34% (now no shadow).")
    page.fill("#reason", "compare the int8 rebuild")
    screenshot(page, "shadow-form")
    page.click("[data-apply]")

    expect(page.locator(".flash-ok")).to_contain_text("Revision 2 is live: 3 95% · 4 5%, default 3, shadow 4 at 12.34%")
    traffic = api.traffic(model)
    assert traffic["shadow"] == {"version": "4", "percent": 12.34} and traffic["revision"] == 2
    assert {s["version"]: s["weight"] for s in traffic["splits"]} == {"3": 95.0, "4": 5.0}
    expect(page.locator("[data-shadow-of='2']")).to_have_text("4 at 12.34%")  # the history says it
    expect(page.locator("[data-shadow-of='1']")).to_have_text("–")
    expect(page.locator("#shadow_version")).to_have_value("4")  # the form edits the live shadow
    expect(page.locator("#shadow_percent")).to_have_value("12.34")
    expect(page.locator("#audit")).to_contain_text("traffic.update")
    expect(page.locator("#parity")).to_contain_text("4 shadows 12.34% of requests")

    # a weight change alone previews the shadow as unchanged and keeps it
    page.fill("input[name='weight:4']", "10")
    expect(preview).to_have_text("Shadow 4 at 12.34%.")
    page.click("[data-apply]")
    expect(page.locator(".flash-ok")).to_contain_text("Revision 3 is live")
    assert api.traffic(model)["shadow"] == {"version": "4", "percent": 12.34}

    # saving rules keeps the shadow
    new = page.locator("#rules-form tr.new-rule")
    new.locator("input[name$='-name']").fill("qa-tenant")
    new.locator("input[name$='-header']").fill("x-tenant")
    new.locator("textarea").fill("qa")
    new.locator("select[name$='-version']").select_option("4")
    page.click("#rules-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("Rules saved")
    traffic = api.traffic(model)
    assert traffic["revision"] == 4 and traffic["shadow"] == {"version": "4", "percent": 12.34}

    # the confirm page of a quick action says the shadow stays, and it does
    page.click("[data-action='rollback-4']")
    expect(page.locator("#confirm [data-after]")).to_contain_text("3 100% · 4 0%, default 3, shadow 4 at 12.34%")
    page.fill("#reason", "error rate up")
    page.click("[data-confirm]")
    expect(page.locator(".flash-ok")).to_contain_text("Rolled back 4")
    assert api.traffic(model)["shadow"] == {"version": "4", "percent": 12.34}

    # and "none" removes it
    page.select_option("#shadow_version", "")
    expect(preview).to_have_text("No shadow (now shadow 4 at 12.34%).")
    page.click("[data-apply]")
    expect(page.locator(".flash-ok")).to_contain_text("no shadow")
    traffic = api.traffic(model)
    assert traffic["shadow"] is None and traffic["revision"] == 6
    expect(page.locator("[data-shadow-of='6']")).to_have_text("–")
    expect(page.locator("[data-shadow-of='5']")).to_have_text("4 at 12.34%")


@pytest.mark.parametrize(("field", "typed", "message"), [
    ("shadow_percent", "0", "greater than 0"),
    ("shadow_percent", "5.125", "no more than 2 decimal places"),
    ("shadow_percent", "100.5", "less than or equal to 100"),
    ("shadow_percent", "", "valid decimal"),
    ("shadow_version", "99", "has no version '99'"),
])
def test_a_bad_shadow_is_explained_next_to_its_field(api: Api, model: str, sign_in: Any, field: str, typed: str,
                                                     message: str) -> None:
    page = sign_in("alice", "release-manager")
    page.goto(f"/ui/models/{model}")
    if field == "shadow_version":  # a version the select does not offer (e.g. retired meanwhile): forge one
        page.evaluate("""v => { const o = document.createElement('option'); o.value = o.textContent = v;
                                document.querySelector('#shadow_version').append(o); }""", typed)
        page.select_option("#shadow_version", typed)
        page.fill("#shadow_percent", "5")
    else:
        page.select_option("#shadow_version", "4")
        page.fill("#shadow_percent", typed)
    expect(page.locator("[data-movement]")).to_contain_text(message)  # the preview says it before applying
    page.click("[data-apply]")
    expect(page.locator(f"#err-{field}")).to_contain_text(message)
    expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-errors")).to_contain_text("Not applied")
    expect(page.locator("#shadow_version")).to_have_value("99" if field == "shadow_version" else "4")
    if field == "shadow_percent":
        expect(page.locator("#shadow_percent")).to_have_value(typed)  # what was typed stays, to be corrected
    traffic = api.traffic(model)
    assert traffic["shadow"] is None and traffic["revision"] == 1


def test_a_shadow_post_needs_the_csrf_token_and_the_role(api: Api, model: str, sign_in: Any) -> None:
    form = {"revision": "1", "weight:3": "95", "weight:4": "5", "default_version": "3", "shadow_version": "4",
            "shadow_percent": "5"}
    alice = sign_in("alice", "release-manager")
    alice.goto(f"/ui/models/{model}")
    for token in (None, "forged-token"):
        body = form if token is None else {**form, "csrf": token}
        response = alice.request.post(f"/ui/models/{model}/traffic", form=body, max_redirects=0)
        assert response.status == 403 and "Form refused" in response.text()
    victor = sign_in("victor", "viewer")
    victor.goto(f"/ui/models/{model}")
    expect(victor.locator("#shadow_version")).to_have_count(0)
    token = victor.locator("input[name=csrf]").first.get_attribute("value")
    response = victor.request.post(f"/ui/models/{model}/traffic", form={**form, "csrf": token}, max_redirects=0)
    assert response.status == 403 and "may not do this" in response.text()
    assert api.traffic(model)["shadow"] is None
