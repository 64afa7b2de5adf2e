"""Routing spec v1 (``docs/routing.md``): buckets, allocations and the decision.

This module is the one implementation of the contract. The router calls
``decide`` per request; the control plane calls ``allocate`` when a traffic
revision is written and ``decide`` to explain a route.

Exceptions::

    RoutingError
     └── AllocationError   bad splits or a previous allocation that breaks the invariants
"""

from __future__ import annotations

import enum
import random
from bisect import bisect_right
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import xxhash

BUCKETS = 10_000
SEPARATOR = b"\x1f"

# (start, end, version): the half-open bucket range [start, end) owned by version.
Range = tuple[int, int, str]


class RoutingError(Exception):
    """Base of every error this module raises."""


class AllocationError(RoutingError):
    """Splits or allocations that violate the spec's invariants."""


class Route(enum.Enum):
    """Why a request went where it went (the ``x-grayroute-route`` header)."""

    EXPLICIT = "explicit"
    RULE = "rule"
    SPLIT = "split"
    ANONYMOUS = "anonymous"
    FALLBACK = "fallback"
    # No answer: the request cannot be routed.
    UNKNOWN_VERSION = "unknown-version"  # explicit version without ready backends -> 404
    UNAVAILABLE = "unavailable"  # neither choice nor default has a backend -> 503


def bucket_of(salt: str, key: str) -> int:
    """The bucket in [0, 10000) of ``key`` under ``salt``."""
    digest = xxhash.xxh3_64_intdigest(salt.encode() + SEPARATOR + key.encode())
    return (digest * BUCKETS) >> 64


def weight_to_buckets(weight: float | Decimal | str) -> int:
    """A percentage with at most two decimals as a bucket count (weight x 100)."""
    try:
        exact = Decimal(str(weight))
    except InvalidOperation as exc:
        raise AllocationError(f"weight {weight!r} is not a number") from exc
    if not exact.is_finite() or exact < 0 or exact > 100:
        raise AllocationError(f"weight {weight!r} must be between 0 and 100")
    scaled = exact * 100
    if scaled != scaled.to_integral_value():
        raise AllocationError(f"weight {weight!r} has more than two decimals")
    return int(scaled)


def bucket_counts(splits: Iterable[tuple[str, float | Decimal | str | int]]) -> list[tuple[str, int]]:
    """Splits as (version, bucket count), checked to cover exactly 10,000 buckets."""
    counts: list[tuple[str, int]] = []
    seen: set[str] = set()
    for version, weight in splits:
        if version in seen:
            raise AllocationError(f"version {version!r} appears twice in the splits")
        seen.add(version)
        counts.append((version, weight_to_buckets(weight)))
    total = sum(count for _, count in counts)
    if total != BUCKETS:
        raise AllocationError(f"weights sum to {Decimal(total) / 100}, not 100")
    return counts


def check_allocation(allocation: Sequence[Range]) -> None:
    """Raise unless ranges are sorted, non-empty, contiguous and cover [0, 10000)."""
    position = 0
    for start, end, version in allocation:
        if start != position or end <= start or not version:
            raise AllocationError(
                f"allocation must be sorted, contiguous ranges covering [0, {BUCKETS}); "
                f"range [{start}, {end}, {version!r}] breaks that at bucket {position}"
            )
        position = end
    if position != BUCKETS:
        raise AllocationError(f"allocation covers [0, {position}), not [0, {BUCKETS})")


def owned_counts(allocation: Sequence[Range]) -> dict[str, int]:
    """How many buckets each version owns."""
    counts: dict[str, int] = {}
    for start, end, version in allocation:
        counts[version] = counts.get(version, 0) + end - start
    return counts


def _merged(ranges: Iterable[Range]) -> list[Range]:
    merged: list[Range] = []
    for start, end, version in sorted(ranges):
        if merged and merged[-1][1] == start and merged[-1][2] == version:
            merged[-1] = (merged[-1][0], end, version)
        else:
            merged.append((start, end, version))
    return merged


def allocate(previous: Sequence[Range] | None, counts: Sequence[tuple[str, int]]) -> list[Range]:
    """The new allocation for ``counts`` (from ``bucket_counts``), moving the fewest buckets.

    With no previous allocation (first revision, or after a salt change) the
    versions get contiguous ranges in split order. Otherwise each shrinking
    version frees its highest buckets, and each growing version, in split
    order, takes the lowest freed ones.
    """
    if sum(count for _, count in counts) != BUCKETS:
        raise AllocationError(f"bucket counts sum to {sum(c for _, c in counts)}, not {BUCKETS}")
    if previous is None:
        ranges: list[Range] = []
        position = 0
        for version, count in counts:
            if count:
                ranges.append((position, position + count, version))
                position += count
        return _merged(ranges)

    check_allocation(previous)
    target = dict(counts)
    current = owned_counts(previous)
    kept: dict[str, list[list[int]]] = {}
    for start, end, version in previous:
        kept.setdefault(version, []).append([start, end])

    freed: list[tuple[int, int]] = []
    for version, ranges_of_version in kept.items():
        excess = current[version] - target.get(version, 0)
        while excess > 0:
            last = ranges_of_version[-1]
            take = min(excess, last[1] - last[0])
            freed.append((last[1] - take, last[1]))
            last[1] -= take
            excess -= take
            if last[0] == last[1]:
                ranges_of_version.pop()
    freed.sort()

    result: list[Range] = [(s, e, v) for v, rs in kept.items() for s, e in rs]
    cursor = 0
    for version, count in counts:
        need = count - current.get(version, 0)
        while need > 0:
            start, end = freed[cursor]
            take = min(need, end - start)
            result.append((start, start + take, version))
            need -= take
            if start + take == end:
                cursor += 1
            else:
                freed[cursor] = (start + take, end)
    return _merged(result)


@dataclass(frozen=True, slots=True)
class Rule:
    """First-match-wins override: a header value in a set, or the routing key in a set."""

    name: str
    version: str
    header: str | None  # lower-case header name; None means "match the routing key"
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class ModelRouting:
    """One model's routing state, compiled from the snapshot for fast lookups."""

    name: str
    key_header: str  # lower-case
    salt: str
    salt_prefix: bytes  # utf8(salt) + 0x1F, hashed before every key
    anonymous_default: bool  # True: anonymous requests go to default_version
    default_version: str | None
    rules: tuple[Rule, ...]
    starts: tuple[int, ...]  # range starts, for bisect
    owners: tuple[str, ...]  # owner of each range
    # Per-request fast paths (decide runs once per request, budget < 1 us):
    owner_of: tuple[str, ...] = ()  # owner of every bucket: one index instead of a bisect
    rule_keys: frozenset[str] = frozenset()  # every value a key rule matches
    rule_headers: frozenset[str] = frozenset()  # every header a header rule reads

    @classmethod
    def build(
        cls,
        *,
        name: str,
        key_header: str,
        salt: str,
        anonymous: str,
        default_version: str | None,
        rules: Sequence[Rule],
        allocation: Sequence[Range],
    ) -> ModelRouting:
        check_allocation(allocation)
        rules = tuple(rules)
        owner_of: list[str] = []
        for start, end, version in allocation:
            owner_of.extend([version] * (end - start))
        return cls(
            name=name,
            key_header=key_header.lower(),
            salt=salt,
            salt_prefix=salt.encode() + SEPARATOR,
            anonymous_default=anonymous == "default",
            default_version=default_version,
            rules=tuple(rules),
            starts=tuple(start for start, _, _ in allocation),
            owners=tuple(version for _, _, version in allocation),
            owner_of=tuple(owner_of),
            rule_keys=frozenset(v for r in rules if r.header is None for v in r.values),
            rule_headers=frozenset(r.header for r in rules if r.header is not None),
        )

    def owner(self, bucket: int) -> str:
        if self.owner_of:
            return self.owner_of[bucket]
        return self.owners[bisect_right(self.starts, bucket) - 1]


class Decision(NamedTuple):
    """A routing outcome; a tuple because one is built per request."""

    version: str | None
    route: Route
    bucket: int | None = None
    rule: str | None = None
    # what rules or split picked before a fallback; also set when a matching rule's version had
    # no ready backend and a later rule or the split served instead (the users the rule assigned)
    chosen: str | None = None

    @property
    def route_header(self) -> str:
        return f"rule:{self.rule}" if self.route is Route.RULE else _ROUTE_HEADERS[self.route]


_ROUTE_HEADERS = {route: route.value for route in Route}  # an enum's .value is a descriptor call per request
# namedtuple's generated __new__ is a Python frame; the common path skips it
_new_decision = tuple.__new__
_SPLIT = Route.SPLIT  # a module global loads faster than an enum member
xxh3_64_intdigest = xxhash.xxh3_64_intdigest


def decide(
    model: ModelRouting,
    headers: Mapping[str, str],
    ready: Container[str],
    *,
    explicit_version: str | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Which version serves a request; ``headers`` has lower-case names.

    ``ready`` holds the versions that have at least one ready backend.
    """
    if explicit_version is not None:
        if explicit_version in ready:
            return Decision(explicit_version, Route.EXPLICIT)
        return Decision(None, Route.UNKNOWN_VERSION, chosen=explicit_version)

    key = headers.get(model.key_header) or None
    rules = model.rules
    missed = None  # the version of the first matching rule that had no ready backend
    # most requests match no rule: two C-level set probes instead of walking every rule
    # (isdisjoint walks ``headers``, which the router fills with just the headers rules read)
    if rules and (key in model.rule_keys or not model.rule_headers.isdisjoint(headers)):
        for rule in rules:
            value = key if rule.header is None else headers.get(rule.header)
            if value is not None and value in rule.values:
                if rule.version in ready:
                    return Decision(rule.version, Route.RULE, rule=rule.name, chosen=missed)
                missed = missed or rule.version

    bucket: int | None
    chosen: str | None
    if key is not None:
        keyed = (xxh3_64_intdigest(model.salt_prefix + key.encode()) * BUCKETS) >> 64
        owner_of = model.owner_of
        chosen = owner_of[keyed] if owner_of else model.owner(keyed)
        if chosen in ready:
            return _new_decision(Decision, (chosen, _SPLIT, keyed, None, missed))
        bucket, route = keyed, _SPLIT
    else:
        if model.anonymous_default:
            bucket, route = None, Route.ANONYMOUS
        else:
            bucket, route = (rng or random).randrange(BUCKETS), Route.ANONYMOUS
        chosen = model.default_version if bucket is None else model.owner(bucket)
        if chosen is not None and chosen in ready:
            return Decision(chosen, route, bucket=bucket, chosen=missed)

    chosen = missed or chosen  # a rule's users stay that rule's version's users while it is down
    default = model.default_version
    if default is not None and default in ready:
        return Decision(default, Route.FALLBACK, bucket=bucket, chosen=chosen)
    return Decision(None, Route.UNAVAILABLE, bucket=bucket, chosen=chosen)

