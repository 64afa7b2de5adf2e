"""The traffic policy of one model: the one typed value every part reads it through.

A policy says where a model's traffic goes: weighted ``splits`` (percent,
at most two decimals, summing to 100), first-match ``rules`` that send some
requests to a chosen version, the ``default_version`` that takes fallbacks,
and an optional ``shadow`` that will mirror a share of requests to a version
(carried, validated and counted as a reference; nothing mirrors yet).

It lives in the shared kernel because both sides need it: the control plane
stores it in traffic revisions, validates it, previews it and plans
deployments from it; the router's snapshot carries it. Adding a field to the
policy means: this class (with its JSON forms and ``referenced_versions``),
the column or snapshot field that stores it, and the code that uses the new
field; nothing else reads policy fields.

JSON forms: ``to_json()`` is what a traffic revision stores and the snapshot
carries (``{"default_version", "splits", "rules"}``, plus ``"shadow"`` only
when set); ``from_json`` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from router.routing import AllocationError, Rule, bucket_counts, weight_to_buckets


@dataclass(frozen=True, slots=True)
class Split:
    """``weight`` percent of the buckets go to ``version``."""

    version: str
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """First match wins: a header whose value is in ``values``, or (``header`` None) the routing key in it."""

    name: str
    version: str
    header: str | None
    values: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyRule:
        match = data["match"]
        if "key_in" in match:
            return cls(str(data["name"]), str(data["version"]), None, tuple(match["key_in"]))
        return cls(str(data["name"]), str(data["version"]), str(match["header"]), tuple(match["in"]))

    def to_json(self) -> dict[str, Any]:
        match: dict[str, Any] = ({"key_in": list(self.values)} if self.header is None
                                 else {"header": self.header, "in": list(self.values)})
        return {"name": self.name, "match": match, "version": self.version}

    def compiled(self) -> Rule:
        """The router's form: lower-case header, a set of values."""
        header = self.header.lower() if self.header is not None else None
        return Rule(self.name, self.version, header, frozenset(self.values))


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror ``percent`` of requests to ``version`` (room for shadow traffic; not acted on yet)."""

    version: str
    percent: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "percent": self.percent}


@dataclass(frozen=True, slots=True)
class Problem:
    """A reason a policy is refused, on the field (API path) it concerns."""

    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    default_version: str | None = None
    splits: tuple[Split, ...] = ()
    rules: tuple[PolicyRule, ...] = ()
    shadow: Shadow | None = None

    # --- reading ---------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        """Weight per version, in split order."""
        return {s.version: s.weight for s in self.splits}

    def weighted_versions(self) -> list[str]:
        """Versions with a weight above 0, in split order."""
        return [s.version for s in self.splits if s.weight > 0]

    def referenced_versions(self) -> frozenset[str]:
        """Every version this policy can send a request to: these must stay deployed and unretired."""
        versions = {s.version for s in self.splits if s.weight > 0} | {r.version for r in self.rules}
        if self.default_version:
            versions.add(self.default_version)
        if self.shadow is not None:
            versions.add(self.shadow.version)
        return frozenset(versions)

    def uses_of(self, version: str) -> list[str]:
        """How the policy still routes to ``version``, in words (empty when it doesn't)."""
        uses = [f"has {s.weight}% of traffic" for s in self.splits if s.version == version and s.weight > 0]
        if self.default_version == version:
            uses.append("is the default version")
        uses += [f"is the target of rule {r.name!r}" for r in self.rules if r.version == version]
        if self.shadow is not None and self.shadow.version == version:
            uses.append(f"receives {self.shadow.percent}% of requests as shadow")
        return uses

    def bucket_counts(self) -> list[tuple[str, int]]:
        """(version, buckets) in split order; raises ``AllocationError`` unless they cover every bucket."""
        return bucket_counts((s.version, s.weight) for s in self.splits)

    def compiled_rules(self) -> list[Rule]:
        return [r.compiled() for r in self.rules]

    # --- validation ------------------------------------------------------------------------

    def problems(self, *, key_header: str) -> list[Problem]:
        """What is wrong with the policy on its own (registry facts, such as which versions exist, aside)."""
        found: list[Problem] = []
        seen: set[str] = set()
        for i, split in enumerate(self.splits):
            if split.version in seen:
                found.append(Problem(f"splits[{i}].version", f"version {split.version!r} is listed twice"))
            seen.add(split.version)
        try:
            total = sum((weight_to_buckets(s.weight) for s in self.splits), 0)
        except AllocationError as exc:
            found.append(Problem("splits", str(exc)))
        else:
            if total != 10_000:
                found.append(Problem("splits", f"weights sum to {(Decimal(total) / 100).normalize():f}, not 100"))
        names: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in names:
                found.append(Problem(f"rules[{i}].name", f"rule name {rule.name!r} is used twice"))
            names.add(rule.name)
            if rule.header is not None and rule.header.lower() == key_header.lower():
                found.append(Problem(f"rules[{i}].match.header",
                                     "that is the routing key header; use key_in to match routing keys"))
        if self.shadow is not None and not 0 <= self.shadow.percent <= 100:
            found.append(Problem("shadow.percent", "must be between 0 and 100"))
        return found

    # --- conversion ------------------------------------------------------------------------

    @classmethod
    def of(cls, *, default_version: str | None, splits: Iterable[tuple[str, float | Decimal]],
           rules: Sequence[PolicyRule] = (), shadow: Shadow | None = None) -> Policy:
        return cls(default_version, tuple(Split(v, float(w)) for v, w in splits), tuple(rules), shadow)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """Read the stored form (a traffic revision's columns, or a snapshot's model entry)."""
        shadow = data.get("shadow")
        return cls(
            default_version=data.get("default_version"),
            splits=tuple(Split(str(s["version"]), float(s.get("weight") or 0)) for s in data.get("splits") or ()),
            rules=tuple(PolicyRule.from_json(r) for r in data.get("rules") or ()),
            shadow=Shadow(str(shadow["version"]), float(shadow["percent"])) if shadow else None,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"default_version": self.default_version,
                                "splits": [s.to_json() for s in self.splits],
                                "rules": [r.to_json() for r in self.rules]}
        if self.shadow is not None:
            data["shadow"] = self.shadow.to_json()
        return data
