"""What a traffic change would do to users, told before it is applied.

Pure: given the live allocation and the new bucket counts, it runs the same
``allocate`` the write path runs and compares the two layouts bucket range by
bucket range, so "who moves where" is exactly what the router will do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from router.routing import Range, allocate, owned_counts


def percent(buckets: int) -> str:
    """Buckets as a percentage with no trailing zeros: 500 -> "5", 25 -> "0.25"."""
    return f"{Decimal(buckets) / 100:f}"


@dataclass(frozen=True, slots=True)
class Move:
    """``buckets`` buckets whose owner changes from ``source`` to ``target``."""

    source: str
    target: str
    buckets: int


@dataclass(frozen=True, slots=True)
class Preview:
    before: dict[str, int]  # buckets per version now (empty for a fresh layout)
    after: dict[str, int]
    moves: tuple[Move, ...]
    allocation: tuple[Range, ...]
    fresh: bool  # no previous layout to keep: everyone is (re)assigned

    @property
    def moved(self) -> int:
        return sum(m.buckets for m in self.moves)

    def sentences(self) -> list[str]:
        """Plain-language summary, e.g. ["+5% of users move from 3 to 4", "nobody leaves 4"]."""
        if self.fresh:
            shares = ", ".join(f"{percent(n)}% to {v}" for v, n in self.after.items() if n)
            return [f"a fresh layout: users are assigned {shares}"]
        if not self.moves:
            return ["nobody moves"]
        told = [f"+{percent(m.buckets)}% of users move from {m.source} to {m.target}" for m in self.moves]
        gainers = list(dict.fromkeys(m.target for m in self.moves))
        told += [f"nobody leaves {v}" for v in gainers if not any(m.source == v for m in self.moves)]
        touched = {m.source for m in self.moves} | {m.target for m in self.moves}
        told += [f"{v} keeps exactly its users" for v, n in self.after.items() if n and v not in touched]
        return told

    def as_dict(self) -> dict[str, Any]:
        return {
            "moved_percent": percent(self.moved),
            "moves": [{"from": m.source, "to": m.target, "percent": percent(m.buckets)} for m in self.moves],
            "before": {v: percent(n) for v, n in self.before.items()},
            "after": {v: percent(n) for v, n in self.after.items()},
            "fresh": self.fresh,
            "sentences": self.sentences(),
        }


def _changes(old: Sequence[Range], new: Sequence[Range]) -> dict[tuple[str, str], int]:
    """Buckets per (old owner, new owner) where the owner differs; both layouts cover [0, 10000)."""
    moved: dict[tuple[str, str], int] = {}
    i = j = 0
    while i < len(old) and j < len(new):
        start = max(old[i][0], new[j][0])
        end = min(old[i][1], new[j][1])
        if end > start and old[i][2] != new[j][2]:
            key = (old[i][2], new[j][2])
            moved[key] = moved.get(key, 0) + end - start
        if old[i][1] <= new[j][1]:
            i += 1
        else:
            j += 1
    return moved


def preview(previous: Sequence[Range] | None, counts: Sequence[tuple[str, int]]) -> Preview:
    """The effect of moving from ``previous`` (None: no layout to keep) to ``counts`` (from ``bucket_counts``)."""
    allocation = allocate(previous, counts)
    after = {v: n for v, n in counts}
    if previous is None:
        return Preview({}, after, (), tuple(allocation), fresh=True)
    order = {v: i for i, (v, _) in enumerate(counts)}
    changes = _changes(previous, allocation)
    moves = tuple(Move(s, t, n) for (s, t), n in sorted(
        changes.items(), key=lambda item: (order.get(item[0][1], len(order)), order.get(item[0][0], len(order)))))
    return Preview(owned_counts(previous), after, moves, tuple(allocation), fresh=False)
