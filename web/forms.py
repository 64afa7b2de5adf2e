"""Form posts of the model page, turned into the API's own schemas (``TrafficPut``, ``RuleIn``).

Typed values are checked by exactly the rules the API applies; the errors,
whether pydantic's or a service's ``InvalidInput.details``, are mapped back to
the form field they concern so the page can say what is wrong next to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from control_plane.errors import validation_details
from control_plane.traffic.schemas import HeaderMatchIn, KeyMatchIn, RuleIn, TrafficPut

# Form field name -> messages; "" holds what concerns the form as a whole.
Errors = dict[str, list[str]]

RULE_KINDS = ("header", "key")


class FormInvalid(Exception):
    def __init__(self, errors: Errors) -> None:
        super().__init__("; ".join(f"{k or 'form'}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def weight_field(version: str) -> str:
    return f"weight:{version}"


def integer(text: str | None) -> int | None:
    """A non-negative integer from a query or form value, or None: the one parser for them.

    ``str.isdigit()`` alone admits "²" and other digits ``int()`` refuses, and
    numbers of thousands of digits; ours are short ASCII numbers.
    """
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def revision_of(form: Mapping[str, Any]) -> int | None:
    """The revision the page was rendered from (sent back as If-Match)."""
    return integer(_text(form, "revision"))


@dataclass
class Layout:
    """Which form row each list index of a ``TrafficPut`` came from, to place errors."""

    splits: list[str] = field(default_factory=list)  # split index -> version
    rules: list[int] = field(default_factory=list)  # rule index -> form row


_SPLIT = re.compile(r"^splits\[(\d+)\]")
_RULE = re.compile(r"^rules\[(\d+)\](?:\.match)?(?:\.(\w+))?")
_RULE_FIELDS = {"name": "name", "version": "version", "header": "header", "in": "values", "key_in": "values"}


def field_for(path: str, layout: Layout) -> str:
    """The form field an API error path (``splits[1].weight``) belongs to."""
    if m := _SPLIT.match(path):
        index = int(m.group(1))
        return weight_field(layout.splits[index]) if index < len(layout.splits) else "splits"
    if m := _RULE.match(path):
        index = int(m.group(1))
        if index >= len(layout.rules):
            return "rules"
        return f"rule-{layout.rules[index]}-{_RULE_FIELDS.get(m.group(2) or '', 'name')}"
    if path in ("default_version", "reason", "splits", "rules"):
        return path
    if path.startswith("shadow"):  # shadow.version -> shadow_version; shadow, shadow.percent -> shadow_percent
        return SHADOW_VERSION if path == "shadow.version" else SHADOW_PERCENT
    return ""


def errors_from_details(details: Iterable[Mapping[str, Any]] | None, layout: Layout, *,
                        fallback: str = "") -> Errors:
    errors: Errors = {}
    for detail in details or ():
        name = field_for(str(detail.get("field", "")), layout) or fallback
        errors.setdefault(name, []).append(str(detail.get("reason", "invalid")))
    return errors


def _details(exc: ValidationError) -> list[dict[str, str]]:
    return validation_details([dict(e) for e in exc.errors()])


def _merge(into: Errors, more: Errors) -> None:
    for name, messages in more.items():
        into.setdefault(name, []).extend(messages)


# --- the traffic form -------------------------------------------------------------------------

@dataclass
class SplitRow:
    version: str
    weight: str  # as typed


SHADOW_VERSION, SHADOW_PERCENT = "shadow_version", "shadow_percent"


@dataclass
class ShadowRow:
    """The shadow fields as typed; no version chosen means no shadow (the percent is then ignored)."""

    version: str = ""
    percent: str = ""

    def to_json(self) -> dict[str, str] | None:
        return {"version": self.version, "percent": self.percent} if self.version else None

    @classmethod
    def of(cls, shadow: Any) -> ShadowRow:
        """The row showing a policy's shadow (``router.policy.Shadow`` or None)."""
        if shadow is None:
            return cls()
        return cls(shadow.version, format(Decimal(str(shadow.percent)).normalize(), "f"))


def read_shadow(form: Mapping[str, Any]) -> ShadowRow:
    return ShadowRow(_text(form, SHADOW_VERSION), _text(form, SHADOW_PERCENT))


def read_splits(form: Mapping[str, Any], versions: Sequence[str]) -> list[SplitRow]:
    """One row per version offered on the page, in page order, weights as typed."""
    return [SplitRow(v, _text(form, weight_field(v))) for v in versions]


def traffic_put(*, splits: Sequence[SplitRow], keep: set[str], default_version: str, rules: Sequence[Any],
                reason: str, shadow: ShadowRow | None = None, reapplied_from: int | None = None,
                extra_errors: Errors | None = None, rule_rows: Sequence[int] = ()) -> TrafficPut:
    """A validated ``TrafficPut``; FormInvalid with per-field errors otherwise.

    A version leaves the split list only when it had no place there (``keep``)
    and was left at zero or blank, so offering a version costs nothing.
    """
    layout = Layout(rules=list(rule_rows))
    chosen = []
    for row in splits:
        if row.version in keep or row.weight not in ("", "0", "0.0", "0.00"):
            layout.splits.append(row.version)
            chosen.append({"version": row.version, "weight": row.weight})
    body: dict[str, Any] = {"default_version": default_version, "splits": chosen, "rules": list(rules), "reason": reason,
                            "shadow": shadow.to_json() if shadow else None}
    if reapplied_from is not None:
        body["reapplied_from"] = reapplied_from
    errors: Errors = dict(extra_errors or {})
    try:
        put = TrafficPut.model_validate(body)
    except ValidationError as exc:
        _merge(errors, errors_from_details(_details(exc), layout))
        raise FormInvalid(errors) from None
    if errors:
        raise FormInvalid(errors)
    return put


def layout_of(put: TrafficPut, rule_rows: Sequence[int] = ()) -> Layout:
    return Layout(splits=[s.version for s in put.splits], rules=list(rule_rows))


# --- the rules form ---------------------------------------------------------------------------

@dataclass
class RuleRow:
    row: int
    name: str = ""
    kind: str = "header"
    header: str = ""
    values: str = ""  # newline- or comma-separated, as typed
    version: str = ""
    delete: bool = False

    @property
    def blank(self) -> bool:
        return not (self.name or self.header or self.values or self.version)

    @classmethod
    def of(cls, row: int, rule: Mapping[str, Any]) -> RuleRow:
        match = rule.get("match") or {}
        if "key_in" in match:
            return cls(row, rule.get("name", ""), "key", "", "\n".join(match["key_in"]), rule.get("version", ""))
        return cls(row, rule.get("name", ""), "header", match.get("header", ""), "\n".join(match.get("in", [])),
                   rule.get("version", ""))


def split_values(text: str) -> list[str]:
    return [v.strip() for v in re.split(r"[\n,]", text) if v.strip()]


def read_rules(form: Mapping[str, Any]) -> list[RuleRow]:
    count = _text(form, "rule-count")
    rows = []
    for i in range(min(integer(count) or 0, 200)):
        kind = _text(form, f"rule-{i}-kind")
        rows.append(RuleRow(
            i, _text(form, f"rule-{i}-name"), kind if kind in RULE_KINDS else "header",
            _text(form, f"rule-{i}-header"), _text(form, f"rule-{i}-values"), _text(form, f"rule-{i}-version"),
            bool(_text(form, f"rule-{i}-delete")),
        ))
    return rows


def rules_in(rows: Sequence[RuleRow]) -> tuple[list[RuleIn], list[int], Errors]:
    """Rules built from the kept rows, the row of each, and per-field errors of rows that are wrong."""
    rules: list[RuleIn] = []
    kept_rows: list[int] = []
    errors: Errors = {}
    placeholder = KeyMatchIn(key_in=["-"])
    for row in rows:
        if row.delete or row.blank:
            continue
        values = split_values(row.values)
        match: HeaderMatchIn | KeyMatchIn | None = None
        try:
            match = (HeaderMatchIn.model_validate({"header": row.header, "in": values}) if row.kind == "header"
                     else KeyMatchIn.model_validate({"key_in": values}))
        except ValidationError as exc:
            for detail in _details(exc):
                name = _RULE_FIELDS.get(detail["field"].split("[")[0], "values")
                errors.setdefault(f"rule-{row.row}-{name}", []).append(detail["reason"])
        try:
            rule = RuleIn.model_validate({"name": row.name, "match": match or placeholder, "version": row.version})
        except ValidationError as exc:
            for detail in _details(exc):
                name = _RULE_FIELDS.get(detail["field"].split(".")[0], "name")
                errors.setdefault(f"rule-{row.row}-{name}", []).append(detail["reason"])
            continue
        if match is not None:
            rules.append(rule)
            kept_rows.append(row.row)
    return rules, kept_rows, errors
