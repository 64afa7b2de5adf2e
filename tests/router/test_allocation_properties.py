"""Property: for any sequence of weight changes the allocation stays exact and moves the minimum."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.routing import BUCKETS, allocate, check_allocation, owned_counts

VERSIONS = ["1", "2", "3", "4", "5"]


@st.composite
def weight_sequences(draw: st.DrawFn) -> list[list[tuple[str, int]]]:
    """Sequences of splits as bucket counts (weights in 0.01% steps) summing to 10,000."""
    steps = draw(st.integers(min_value=1, max_value=12))
    sequence = []
    for _ in range(steps):
        names = draw(st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=len(VERSIONS), unique=True))
        cuts = sorted(draw(st.lists(st.integers(0, BUCKETS), min_size=len(names) - 1, max_size=len(names) - 1)))
        bounds = [0, *cuts, BUCKETS]
        sequence.append([(name, bounds[i + 1] - bounds[i]) for i, name in enumerate(names)])
    return sequence


def _owner_of_each_bucket(allocation: list[tuple[int, int, str]]) -> list[str]:
    owners: list[str] = []
    for start, end, version in allocation:
        owners.extend([version] * (end - start))
    return owners


@settings(max_examples=300, deadline=None)
@given(weight_sequences())
def test_allocation_is_exact_and_moves_exactly_the_positive_changes(sequence: list[list[tuple[str, int]]]) -> None:
    previous = None
    for counts in sequence:
        allocation = allocate(previous, counts)
        check_allocation(allocation)  # sorted, contiguous, covers [0, 10000)
        assert owned_counts(allocation) == {v: c for v, c in counts if c}
        assert all(a[2] != b[2] for a, b in zip(allocation, allocation[1:], strict=False))  # merged
        if previous is not None:
            before = owned_counts(previous)
            growth = sum(max(0, c - before.get(v, 0)) for v, c in counts)
            moved = sum(a != b for a, b in zip(_owner_of_each_bucket(previous), _owner_of_each_bucket(allocation),
                                               strict=True))
            assert moved == growth
            # Nobody moves into a version that shrank or stayed, and nobody leaves one that grew or stayed.
            after = dict(counts)
            for a, b in zip(_owner_of_each_bucket(previous), _owner_of_each_bucket(allocation), strict=True):
                if a != b:
                    assert after.get(a, 0) < before[a] and after[b] > before.get(b, 0)
        previous = allocation
