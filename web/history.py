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


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """What an audit event changed, key by key: [{"key", "before", "after"}] (only keys that differ)."""
    before, after = before or {}, after or {}
    keys = [k for k in dict.fromkeys([*after, *before]) if k not in _SKIPPED]
    return [{"key": k, "before": _show(k, before.get(k)), "after": _show(k, after.get(k))}
            for k in keys if before.get(k) != after.get(k)]
