"""The traffic policy value: its stored form, the versions it references, what is wrong with it."""

from __future__ import annotations

import pytest

from router.policy import Policy, PolicyRule, Problem, Shadow, Split
from router.routing import AllocationError, Rule
from router.snapshot import ModelSnapshot

STORED = {
    "default_version": "3",
    "splits": [{"version": "3", "weight": 95.0}, {"version": "4", "weight": 5.0}, {"version": "2", "weight": 0.0}],
    "rules": [{"name": "qa", "match": {"header": "X-Tenant", "in": ["qa"]}, "version": "5"},
              {"name": "beta", "match": {"key_in": ["u-1", "u-2"]}, "version": "4"}],
}


def test_the_stored_form_round_trips_unchanged() -> None:
    policy = Policy.from_json(STORED)
    assert policy.to_json() == STORED
    assert policy.splits[0] == Split("3", 95.0)
    assert policy.rules[1] == PolicyRule("beta", "4", None, ("u-1", "u-2"))
    shadowed = Policy.from_json({**STORED, "shadow": {"version": "6", "percent": 5}})
    assert shadowed.shadow == Shadow("6", 5.0)
    assert shadowed.to_json() == {**STORED, "shadow": {"version": "6", "percent": 5.0}}


def test_referenced_versions_count_weights_rules_default_and_shadow() -> None:
    policy = Policy.from_json(STORED)
    assert policy.referenced_versions() == {"3", "4", "5"}  # "2" has 0%: nothing reaches it
    assert Policy.from_json({**STORED, "shadow": {"version": "6", "percent": 1}}).referenced_versions() == {
        "3", "4", "5", "6"}
    assert policy.uses_of("4") == ["has 5.0% of traffic", "is the target of rule 'beta'"]
    assert policy.uses_of("2") == []
    assert Policy(shadow=Shadow("6", 1.0)).uses_of("6") == ["receives 1.0% of requests as shadow"]


def test_the_snapshot_reads_the_same_policy_and_compiles_the_same_rules() -> None:
    snapshot = ModelSnapshot.model_validate({
        "salt": "m", **STORED, "allocation": [[0, 9500, "3"], [9500, 10000, "4"]],
        "versions": {v: {"endpoints": []} for v in ("2", "3", "4", "5")}})
    assert snapshot.policy() == Policy.from_json(STORED)
    assert snapshot.policy().compiled_rules()[0] == Rule("qa", "5", "x-tenant", frozenset({"qa"}))
    with pytest.raises(ValueError, match=r"\['5'\] are routed to"):
        ModelSnapshot.model_validate({"salt": "m", **STORED, "allocation": [[0, 9500, "3"], [9500, 10000, "4"]],
                                      "versions": {v: {"endpoints": []} for v in ("3", "4")}})


def test_problems_name_the_field_and_the_reason() -> None:
    policy = Policy.from_json({
        "default_version": "3",
        "splits": [{"version": "3", "weight": 90}, {"version": "3", "weight": 9.5}],
        "rules": [{"name": "a", "match": {"header": "x-user-id", "in": ["1"]}, "version": "3"},
                  {"name": "a", "match": {"key_in": ["1"]}, "version": "3"}],
    })
    assert policy.problems(key_header="X-User-Id") == [
        Problem("splits[1].version", "version '3' is listed twice"),
        Problem("splits", "weights sum to 99.5, not 100"),
        Problem("rules[0].match.header", "that is the routing key header; use key_in to match routing keys"),
        Problem("rules[1].name", "rule name 'a' is used twice"),
    ]
    assert Policy.from_json(STORED).problems(key_header="x-user-id") == []
    assert Policy(splits=(Split("3", 100.001),)).problems(key_header="k")[0].field == "splits"
    with pytest.raises(AllocationError):
        Policy(splits=(Split("3", 99.0),)).bucket_counts()
    assert Policy.from_json(STORED).bucket_counts() == [("3", 9500), ("4", 500), ("2", 0)]
