"""The movement preview and the form-to-schema mapping: pure functions, no server."""

from __future__ import annotations

import pytest
from fastapi import Response

from control_plane.settings import Settings
from control_plane.traffic.preview import preview
from router.routing import allocate, bucket_counts
from web import forms
from web.session import COOKIE, CsrfRejected, UISession


def test_raising_the_canary_moves_only_the_new_share_and_nobody_leaves_it() -> None:
    before = allocate(None, bucket_counts([("3", 95), ("4", 5)]))
    result = preview(before, bucket_counts([("3", 90), ("4", 10)]))
    assert result.sentences() == ["+5% of users move from 3 to 4", "nobody leaves 4"]
    assert result.moved == 500
    assert list(result.allocation) == allocate(before, bucket_counts([("3", 90), ("4", 10)]))


def test_a_third_version_that_keeps_its_weight_keeps_its_users() -> None:
    before = allocate(None, bucket_counts([("3", 80), ("4", 10), ("5", 10)]))
    result = preview(before, bucket_counts([("3", 70), ("4", 20), ("5", 10)]))
    assert result.sentences() == ["+10% of users move from 3 to 4", "nobody leaves 4", "5 keeps exactly its users"]


def test_moves_from_several_versions_are_told_apart() -> None:
    before = allocate(None, bucket_counts([("3", 50), ("4", 25), ("5", 25)]))
    result = preview(before, bucket_counts([("3", 40), ("4", 20), ("5", 40)]))
    assert result.as_dict()["moves"] == [{"from": "3", "to": "5", "percent": "10"},
                                         {"from": "4", "to": "5", "percent": "5"}]
    assert result.as_dict()["moved_percent"] == "15"


def test_no_change_and_a_fresh_layout() -> None:
    before = allocate(None, bucket_counts([("3", 99.99), ("4", 0.01)]))
    assert preview(before, bucket_counts([("3", 99.99), ("4", 0.01)])).sentences() == ["nobody moves"]
    fresh = preview(None, bucket_counts([("3", 99.99), ("4", 0.01)]))
    assert fresh.fresh and fresh.sentences() == ["a fresh layout: users are assigned 99.99% to 3, 0.01% to 4"]


def test_pydantic_and_service_errors_land_on_the_field_they_concern() -> None:
    with pytest.raises(forms.FormInvalid) as caught:
        forms.traffic_put(splits=[forms.SplitRow("3", "95"), forms.SplitRow("4", "5.125")], keep={"3", "4"},
                          default_version="3", rules=[], reason="")
    assert list(caught.value.errors) == ["weight:4"]
    layout = forms.Layout(splits=["3", "4"], rules=[2])
    errors = forms.errors_from_details([
        {"field": "splits", "reason": "weights sum to 99, not 100"},
        {"field": "splits[1].version", "reason": "version '4' is retired"},
        {"field": "rules[0].match.header", "reason": "that is the routing key header"},
        {"field": "default_version", "reason": "no such version"},
    ], layout)
    assert errors == {"splits": ["weights sum to 99, not 100"], "weight:4": ["version '4' is retired"],
                      "rule-2-header": ["that is the routing key header"], "default_version": ["no such version"]}


def test_a_version_offered_at_zero_stays_out_of_the_split() -> None:
    put = forms.traffic_put(splits=[forms.SplitRow("3", "100"), forms.SplitRow("4", "0"), forms.SplitRow("5", "0")],
                            keep={"3", "4"}, default_version="3", rules=[], reason="")
    assert [s.version for s in put.splits] == ["3", "4"]


def test_rule_rows_are_checked_with_the_api_schemas() -> None:
    rows = [forms.RuleRow(0, "qa", "header", "x-tenant", "qa, staging", "4"),
            forms.RuleRow(1, "Bad", "key", "", "", "4"),
            forms.RuleRow(2, "gone", "key", "", "u1", "3", delete=True),
            forms.RuleRow(3)]
    rules, kept, errors = forms.rules_in(rows)
    assert [r.name for r in rules] == ["qa"] and kept == [0]
    assert rules[0].match.in_ == ["qa", "staging"]
    assert set(errors) == {"rule-1-name", "rule-1-values"}


def test_the_session_cookie_is_signed_httponly_and_secure_when_configured() -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///unused.db", secret_key="k" * 32, cookie_secure=True)
    session = UISession({})
    session.sign_in("ab" * 32)
    response = Response()
    session.save(response, settings)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "SameSite=lax" in cookie and "Path=/ui" in cookie
    with pytest.raises(CsrfRejected):
        session.check_csrf("not-it")
    with pytest.raises(CsrfRejected):
        session.check_csrf(None)
    session.check_csrf(session.csrf)


def test_history_cursors_accept_only_short_ascii_numbers() -> None:
    _page_cursor = forms.integer  # the one parser of the UI's integer parameters

    assert _page_cursor("12") == 12
    assert _page_cursor("²") is None
    assert _page_cursor("9" * 40) is None
    assert _page_cursor("") is None
