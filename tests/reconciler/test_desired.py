"""The pure desired-state function: selection, mismatches, replicas, drain, naming."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.reconciler import desired as D
from router.policy import Policy, PolicyRule

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DRAIN = timedelta(seconds=600)
SHA = "ab" * 32


def engine(arch: str, trt: str = "10.3") -> D.EngineSpec:
    return D.EngineSpec(gpu_arch=arch, uri=f"s3://engines/{arch}.plan", sha256=SHA, trt_version=trt)


def version(vid: int, label: str, *engines: D.EngineSpec, warm: bool = False, precision: str = "fp16") -> D.VersionSpec:
    return D.VersionSpec(id=vid, label=label, precision=precision, trt_version="10.3", warm=warm, engines=engines)


def pool(pid: int, name: str, arch: str, kind: str = "kubernetes", trt: str = "10.3") -> D.PoolSpec:
    return D.PoolSpec(id=pid, name=name, gpu_arch=arch, kind=kind, trt_version=trt)


def traffic(default: str, *splits: tuple[str, float], rules: tuple[str, ...] = ()) -> Policy:
    return Policy(default, tuple(D.Split(v, w) for v, w in splits),
                  tuple(PolicyRule(f"r{i}", v, None, ("k",)) for i, v in enumerate(rules)))


A100 = pool(1, "a100", "sm_80")
H100 = pool(2, "h100", "sm_90")
L4 = pool(3, "l4", "sm_89")


def plan(models: list[D.ModelSpec], pools: list[D.PoolSpec], previous: tuple[D.PreviousStatus, ...] = (),
         *, now: datetime = NOW, kind: str = "kubernetes") -> D.Plan:
    return D.plan(D.Inputs(tuple(models), tuple(pools), previous), kind=kind, now=now, drain=DRAIN)


def keys(p: D.Plan) -> set[tuple[int, int]]:
    return {d.key for d in p.deployments}


def test_one_deployment_per_pool_whose_arch_has_an_engine() -> None:
    m = D.ModelSpec(1, "resnet", (version(10, "v1", engine("sm_80"), engine("sm_90")),), traffic("v1", ("v1", 100)))
    p = plan([m], [A100, H100, L4])
    assert keys(p) == {(10, 1), (10, 2)}  # no sm_89 engine: nothing on l4, and that is no failure
    assert p.failures == ()
    by_pool = {d.pool.name: d for d in p.deployments}
    assert by_pool["a100"].engine.gpu_arch == "sm_80"
    assert by_pool["h100"].engine.gpu_arch == "sm_90"


def test_only_pools_of_the_target_kind_and_never_external() -> None:
    local = pool(4, "cpu", "sm_80", kind="local")
    external = pool(5, "ext", "sm_80", kind="external")
    m = D.ModelSpec(1, "resnet", (version(10, "v1", engine("sm_80")),), traffic("v1", ("v1", 100)))
    assert keys(plan([m], [A100, local, external])) == {(10, 1)}
    assert keys(plan([m], [A100, local, external], kind="local")) == {(10, 4)}


def test_active_set_weight_rules_default_and_warm() -> None:
    versions = (
        version(10, "stable", engine("sm_80")),
        version(11, "canary", engine("sm_80")),
        version(12, "qa", engine("sm_80")),
        version(13, "next", engine("sm_80"), warm=True),
        version(14, "old", engine("sm_80")),
        version(15, "zero", engine("sm_80")),
    )
    m = D.ModelSpec(1, "resnet", versions, traffic("stable", ("stable", 90), ("canary", 10), ("zero", 0), rules=("qa",)))
    assert {d.version for d in plan([m], [A100]).deployments} == {"stable", "canary", "qa", "next"}


def test_no_traffic_revision_deploys_only_warm_versions() -> None:
    m = D.ModelSpec(1, "m", (version(10, "v1", engine("sm_80")), version(11, "v2", engine("sm_80"), warm=True)))
    assert {d.version for d in plan([m], [A100]).deployments} == {"v2"}


def test_tensorrt_mismatch_is_a_permanent_failure() -> None:
    m = D.ModelSpec(1, "m", (version(10, "v1", engine("sm_80", trt="10.0")),), traffic("v1", ("v1", 100)))
    p = plan([m], [A100, H100])
    assert p.deployments == ()
    assert [f.key for f in p.failures] == [(10, 1)]
    assert "TensorRT" in p.failures[0].message and "10.0" in p.failures[0].message


def test_tensorrt_versions_compare_on_major_minor_patch() -> None:
    assert D.trt_compatible("10.3", "10.3.0")
    assert D.trt_compatible("10.3.0.26", "10.3.0")
    assert not D.trt_compatible("10.3.0", "10.4.0")
    assert not D.trt_compatible("8.6.1", "8.6.2")


def test_engine_matching_no_pool_fails_on_every_pool() -> None:
    m = D.ModelSpec(1, "m", (version(10, "v1", engine("sm_75")),), traffic("v1", ("v1", 100)))
    p = plan([m], [A100, H100])
    assert p.deployments == ()
    assert {f.key for f in p.failures} == {(10, 1), (10, 2)}
    assert "sm_75" in p.failures[0].message


def test_replicas_follow_traffic_share_of_the_pool_budget() -> None:
    versions = (version(10, "v1", engine("sm_80"), engine("sm_90")), version(11, "v2", engine("sm_80"), engine("sm_90")),
                version(12, "qa", engine("sm_80")))
    m = D.ModelSpec(1, "m", versions, traffic("v1", ("v1", 75), ("v2", 25), rules=("qa",)), replicas={"a100": 8})
    reps = {(d.version, d.pool.name): d.replicas for d in plan([m], [A100, H100]).deployments}
    assert reps == {("v1", "a100"): 6, ("v2", "a100"): 2, ("qa", "a100"): 1,  # rule target: at least 1
                    ("v1", "h100"): 1, ("v2", "h100"): 1}  # no budget named: 1 each


@pytest.mark.parametrize(
    ("budget", "weights", "expected"),
    [
        (10, [95, 5], [10, 0]),
        (10, [33.33, 33.33, 33.34], [3, 3, 4]),
        (3, [50, 50], [2, 1]),  # tie: the version listed first
        (7, [60, 30, 10], [4, 2, 1]),
        (0, [100], [0]),
    ],
)
def test_apportionment_sums_to_the_budget(budget: int, weights: list[float], expected: list[int]) -> None:
    splits = [D.Split(f"v{i}", w) for i, w in enumerate(weights)]
    shares = D.apportion(budget, splits)
    assert [shares.get(f"v{i}", 0) for i in range(len(weights))] == expected


def test_small_share_never_below_one() -> None:
    versions = (version(10, "v1", engine("sm_80")), version(11, "v2", engine("sm_80")))
    m = D.ModelSpec(1, "m", versions, traffic("v1", ("v1", 99.5), ("v2", 0.5)), replicas={"a100": 4})
    assert {d.version: d.replicas for d in plan([m], [A100]).deployments} == {"v1": 4, "v2": 1}


def test_a_version_leaving_the_active_set_drains_then_is_removed() -> None:
    versions = (version(10, "v1", engine("sm_80")), version(11, "v2", engine("sm_80")))
    m = D.ModelSpec(1, "m", versions, traffic("v1", ("v1", 100)), replicas={"a100": 4})
    previous = (D.PreviousStatus(10, 1, 3, "Ready"), D.PreviousStatus(11, 1, 2, "Ready"))

    p = plan([m], [A100], previous)
    draining = {d.version: d for d in p.deployments if d.intent is D.Intent.DRAINING}
    assert set(draining) == {"v2"}
    assert draining["v2"].replicas == 2  # kept at its size: a rollback needs no scale-up
    assert draining["v2"].draining_since == NOW
    assert p.removed == ()

    since = NOW - timedelta(seconds=300)
    later = plan([m], [A100], (D.PreviousStatus(11, 1, 2, "Draining", since),))
    assert [d.draining_since for d in later.deployments if d.version == "v2"] == [since]

    expired = plan([m], [A100], (D.PreviousStatus(11, 1, 2, "Draining", NOW - DRAIN),))
    assert "v2" not in {d.version for d in expired.deployments}
    assert expired.removed == ((11, 1),)


def test_rollback_during_drain_makes_the_version_active_again() -> None:
    versions = (version(10, "v1", engine("sm_80")), version(11, "v2", engine("sm_80")))
    m = D.ModelSpec(1, "m", versions, traffic("v2", ("v2", 100)))
    p = plan([m], [A100], (D.PreviousStatus(11, 1, 1, "Draining", NOW - timedelta(seconds=30)),))
    (d,) = [d for d in p.deployments if d.version == "v2"]
    assert d.intent is D.Intent.ACTIVE and d.draining_since is None


def test_rows_of_gone_versions_failed_rows_and_foreign_pools() -> None:
    m = D.ModelSpec(1, "m", (version(10, "v1", engine("sm_80")),), traffic("v1", ("v1", 100)))
    external = pool(9, "ext", "sm_80", kind="external")
    previous = (
        D.PreviousStatus(99, 1, 1, "Ready"),  # version deleted
        D.PreviousStatus(10, 9, 1, "Ready"),  # an external pool's row: the API owns it
    )
    p = plan([m], [A100, external], previous)
    assert p.removed == ((99, 1),)
    failed = plan([D.ModelSpec(1, "m", (version(10, "v1", engine("sm_80")),))], [A100],
                  (D.PreviousStatus(10, 1, 0, "Failed"),))
    assert failed.removed == ((10, 1),) and failed.deployments == ()


def test_names_are_dns_labels_stable_and_distinct() -> None:
    long = "x" * 80
    name = D.object_name("resnet50", "v1.2.0-RC_1", long)
    assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert name == D.object_name("resnet50", "v1.2.0-RC_1", long)
    assert D.object_name("m", "v1.0", "p") != D.object_name("m", "v1-0", "p")
    assert D.object_name("a-b", "c", "p") != D.object_name("a", "b-c", "p")
    assert D.object_name("9lives", "1", "p")[0].isalpha()
    assert D.object_name("m", "a" * 200, "b" * 200) != D.object_name("m", "a" * 199, "b" * 200)


def test_label_values_are_sanitized() -> None:
    assert D.label_value("sm_80") == "sm_80"
    weird = D.label_value("v1/2 beta+")
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", weird)
    assert D.label_value("v1/2") != D.label_value("v1:2")
    long = D.label_value("z" * 100)
    assert len(long) <= 63
    m = D.ModelSpec(1, "m", (version(10, "v1+build.7", engine("sm_80")),), traffic("v1+build.7", ("v1+build.7", 100)))
    (d,) = plan([m], [A100]).deployments
    assert d.labels[D.LABEL_MANAGED_BY] == "grayroute"
    for value in d.labels.values():
        assert len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
