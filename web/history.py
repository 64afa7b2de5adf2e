"""How the history reads: a revision's rules in a few words, and an audit event as before → after."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from router.policy import PolicyRule

# Keys of a state that say nothing a person compares (ids, timestamps) or are too long to diff inline.
_SKIPPED = {"id", "created_at", "updated_at", "engines", "allocation", "revision"}


def _weight(value: Any) -> str:
    return format(Decimal(str(value)).normalize(), "f")


def rules_text(rules: Sequence[Mapping[str, Any] | PolicyRule] | None) -> str:
    """``qa → 4 (x-tenant in qa, staff); beta → 4 (2 keys)``, or "none" (rules as stored, or of a Policy)."""
    told = []
    for item in rules or ():
        rule = item.to_json() if isinstance(item, PolicyRule) else item
        match = rule.get("match") or {}
        if "key_in" in match:
            keys = match["key_in"]
            what = f"{len(keys)} key{'' if len(keys) == 1 else 's'}"
        else:
            values = list(match.get("in") or [])
            what = f"{match.get('header')} in {', '.join(values[:3])}{' …' if len(values) > 3 else ''}"
        told.append(f"{rule.get('name')} → {rule.get('version')} ({what})")
    return "; ".join(told) or "none"


def _show(key: str, value: Any) -> str:
    if key == "rules" and isinstance(value, list):
        return rules_text(value)
    if value is None or value == "" or value == [] or value == {}:
        return "–"
    if key == "splits":
        return " · ".join(f"{s['version']} {_weight(s['weight'])}%" for s in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
            rules_of: Mapping[int, Sequence[PolicyRule]] | None = None) -> list[dict[str, str]]:
    """What an audit event changed, key by key: [{"key", "before", "after"}] (only keys that differ).

    A traffic event names its revisions rather than copying their rules; ``rules_of`` (revision
    number -> rules) puts the rules back, so the diff reads "rules none → qa → 4 (…)".
    """
    before, after = _with_rules(before or {}, rules_of), _with_rules(after or {}, rules_of)
    keys = [k for k in dict.fromkeys([*after, *before]) if k not in _SKIPPED]
    return [{"key": k, "before": _show(k, before.get(k)), "after": _show(k, after.get(k))}
            for k in keys if before.get(k) != after.get(k)]


def _with_rules(state: Mapping[str, Any], rules_of: Mapping[int, Sequence[PolicyRule]] | None) -> Mapping[str, Any]:
    number = state.get("revision")
    if rules_of is None or not isinstance(number, int) or number not in rules_of:
        return state
    shown = {k: v for k, v in state.items() if k not in ("rule_count", "rule_changes")}
    shown["rules"] = [rule.to_json() for rule in rules_of[number]]
    return shown


def revision_numbers(states: Sequence[Mapping[str, Any] | None]) -> set[int]:
    """The revision numbers audit states refer to."""
    return {s["revision"] for s in states if s and isinstance(s.get("revision"), int)}
