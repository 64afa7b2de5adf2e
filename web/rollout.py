"""The model page's rollout panel: the start form (presets or custom steps) and what a rollout shows.

Everything here works on the API's own shapes (``RolloutRead`` as JSON), so
the panel shows exactly what ``GET /rollouts/{id}`` answers; the views turn
service results into those shapes and call these functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, VersionStatus
from control_plane.rollouts import service as rollouts_service
from control_plane.rollouts.schemas import RolloutRead
from control_plane.traffic import service as traffic_service
from web.forms import Errors, integer

HISTORY_ROLLOUTS = 10  # past rollouts the panel lists; each links to its full page
STEP_ROWS = 6  # custom step rows on the form; a longer plan goes through the API or CLI
ANALYSIS_FIELDS = ("max_error_rate_increase_pp", "max_p99_ratio", "min_requests", "min_top1_agreement",
                   "max_abs_error")
# An optional parity phase before step 1: the API's ``shadow.percent`` and ``shadow.seconds``.
SHADOW_FIELDS = ("shadow_percent", "shadow_seconds")
STATE_TONE = {"running": "info", "paused": "warn", "succeeded": "ok", "rolled_back": "bad", "aborted": "muted"}
STATE_TEXT = {"running": "running", "paused": "paused", "succeeded": "succeeded", "rolled_back": "rolled back",
              "aborted": "aborted"}
VERDICT_TONE = {"continue": "info", "pass": "ok", "fail": "bad"}
VERDICT_TEXT = {"continue": "watching", "pass": "passed", "fail": "failed"}
ACTIONS = {"pause": "Pause", "resume": "Resume", "abort": "Abort", "promote": "Promote"}
# Which states each action applies to (the service refuses the others with 409; the page hides them).
ACTION_STATES = {"pause": ("running",), "resume": ("paused",), "abort": ("running", "paused"),
                 "promote": ("running", "paused")}
REASON_REQUIRED = ("abort", "promote")  # they skip the analysis or throw it away: the history must say why


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    weights: tuple[float, ...]
    pause_seconds: int
    use: str

    def steps(self) -> list[dict[str, Any]]:
        # The last step is 100%: nothing is left to compare against, so it needs no pause.
        return [{"weight": w, "pause_seconds": self.pause_seconds if w < 100 else 0} for w in self.weights]

    @property
    def summary(self) -> str:
        return f"{' → '.join(fmt_number(w) for w in self.weights)}%, {_duration(self.pause_seconds)} at each step"


# Cautious starts at 1% so a broken engine hurts few users; fast suits a patch already proven elsewhere.
PRESETS = (
    Preset("cautious", "Cautious", (1, 5, 10, 25, 50, 100), 300, "a new engine or precision"),
    Preset("standard", "Standard", (5, 25, 50, 100), 120, "a routine rebuild"),
    Preset("fast", "Fast", (10, 50, 100), 60, "a small fix, or a quiet hour"),
)
PRESET_BY_KEY = {p.key: p for p in PRESETS}


@dataclass
class StepRow:
    row: int
    weight: str = ""
    pause: str = ""
    pools: str = ""

    @property
    def blank(self) -> bool:
        return not (self.weight or self.pause or self.pools)


@dataclass
class StartForm:
    """The start form as submitted (or its defaults), re-shown with its errors when refused."""

    plan: str = "standard"
    candidate: str = ""
    baseline: str = ""
    reason: str = ""
    override_gates: bool = False
    rows: list[StepRow] = field(default_factory=lambda: [StepRow(i) for i in range(STEP_ROWS)])
    analysis: dict[str, str] = field(default_factory=dict)
    shadow: dict[str, str] = field(default_factory=dict)
    step_rows: list[int] = field(default_factory=list)  # API step index -> form row (custom plans)


def read_start(form: Mapping[str, Any]) -> StartForm:
    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    rows = [StepRow(i, text(f"step-{i}-weight"), text(f"step-{i}-pause"), text(f"step-{i}-pools"))
            for i in range(STEP_ROWS)]
    return StartForm(plan=text("plan") or "standard", candidate=text("candidate"), baseline=text("baseline"),
                     reason=text("reason"), override_gates=text("override_gates") == "1", rows=rows,
                     analysis={k: text(k) for k in ANALYSIS_FIELDS}, shadow={k: text(k) for k in SHADOW_FIELDS})


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def start_body(start: StartForm) -> tuple[dict[str, Any], Errors]:
    """The API's start request from the form, and what cannot even be put into it (the API judges the rest)."""
    errors: Errors = {}
    if not start.candidate:
        errors["candidate"] = ["choose the version to roll out"]
    if len(start.reason) > 2000:
        errors["reason"] = ["at most 2000 characters"]
    if start.override_gates and not start.reason:
        errors["reason"] = ["say why the gates are overridden; it is kept in the audit log"]
    steps: list[dict[str, Any]] = []
    start.step_rows = []
    if start.plan == "custom":
        for row in start.rows:
            if row.blank:
                continue
            weight = _number(row.weight)
            if weight is None:
                errors[f"step-{row.row}-weight"] = ["a percentage, e.g. 5 or 0.5"]
            pause = integer(row.pause) if row.pause else 0
            if pause is None:
                errors[f"step-{row.row}-pause"] = ["whole seconds, e.g. 120"]
            step: dict[str, Any] = {"weight": weight if weight is not None else 0, "pause_seconds": pause or 0}
            pools = [p for p in re.split(r"[\s,]+", row.pools) if p]
            if pools:
                step["pools"] = pools
            steps.append(step)
            start.step_rows.append(row.row)
        if not steps:
            errors["steps"] = ["give at least one step, the last at 100%"]
    elif start.plan in PRESET_BY_KEY:
        steps = PRESET_BY_KEY[start.plan].steps()
    else:
        errors["plan"] = ["choose a preset or custom steps"]
    body: dict[str, Any] = {"candidate": start.candidate, "reason": start.reason, "steps": steps,
                            "override_gates": start.override_gates}
    if start.baseline:
        body["baseline"] = start.baseline
    analysis: dict[str, Any] = {}
    for name in ANALYSIS_FIELDS:
        value = start.analysis.get(name, "")
        if not value:
            continue
        number = integer(value) if name == "min_requests" else _number(value)
        if number is None:
            errors[name] = ["a whole number" if name == "min_requests" else "a number"]
        else:
            analysis[name] = number
    if analysis:
        body["analysis"] = analysis
    percent, seconds = start.shadow.get("shadow_percent", ""), start.shadow.get("shadow_seconds", "")
    if percent or seconds:
        share = _number(percent) if percent else None
        served = integer(seconds) if seconds else None
        if share is None:
            errors["shadow_percent"] = ["the share of users mirrored, e.g. 10"]
        if served is None:
            errors["shadow_seconds"] = ["whole seconds, e.g. 300"]
        body["shadow"] = {"percent": share or 0, "seconds": served or 0}
    return body, errors


_STEP_PATH = re.compile(r"^steps\[(\d+)\](?:\.(\w+))?")
_STEP_FIELDS = {"weight": "weight", "pause_seconds": "pause", "pools": "pools"}


def field_for(path: str, start: StartForm) -> str:
    """The form field an API error path (``steps[2].weight``, ``analysis.max_p99_ratio``) belongs to."""
    if m := _STEP_PATH.match(path):
        index = int(m.group(1))
        if start.plan == "custom" and index < len(start.step_rows):
            return f"step-{start.step_rows[index]}-{_STEP_FIELDS.get(m.group(2) or '', 'weight')}"
        return "steps"
    tail = path.removeprefix("analysis.")
    if tail in ANALYSIS_FIELDS:
        return tail
    if path in ("shadow.percent", "shadow.seconds"):
        return path.replace(".", "_")
    if path in ("candidate", "baseline", "reason", "steps", "override_gates"):
        return path
    return ""


def errors_from_details(details: Iterable[Mapping[str, Any]], start: StartForm) -> Errors:
    errors: Errors = {}
    for item in details:
        path = str(item.get("field") or item.get("path") or "")
        reason = str(item.get("reason") or item.get("message") or "is not valid")
        name = field_for(path, start)
        message = reason if name else f"{path}: {reason}" if path else reason
        errors.setdefault(name, []).append(message)
    return errors


def gate_evidence(details: Any) -> list[dict[str, Any]]:
    """The gates' evidence from a refusal's details, whichever envelope holds it; [] when it is not a gate refusal."""
    if isinstance(details, Mapping):
        details = details.get("gate_evidence") or details.get("gates") or details.get("evidence")
    if isinstance(details, Sequence) and not isinstance(details, str):
        rows = [d for d in details if isinstance(d, Mapping) and "check" in d and "passed" in d]
        return [dict(r) for r in rows]
    return []


# --- what a rollout shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineStep:
    index: int
    weight: str
    pause: str
    pools: str
    state: str  # "done" | "current" | "next"
    left: str  # the pause still to serve, for the current step of a running rollout


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def timeline(rollout: Mapping[str, Any], *, now: datetime) -> list[TimelineStep]:
    steps = rollout.get("steps") or []
    current = int(rollout.get("step_index") or 0)
    state = rollout.get("state")
    finished = state not in ("running", "paused")
    started = _when(rollout.get("step_started_at"))
    out = []
    for i, step in enumerate(steps):
        pause = int(step.get("pause_seconds") or 0)
        left = ""
        if i == current and not finished:
            if state == "paused":
                left = "paused"
            elif started is not None:
                remaining = pause - (now - started).total_seconds()
                left = f"{_duration(math.ceil(remaining))} of pause left" if remaining > 0 else "pause served"
        if finished:
            # A rollback or abort stops at the step it was on; a success went through them all.
            where = "done" if state == "succeeded" or i < current else "current" if i == current else "next"
        else:
            where = "done" if i < current else "current" if i == current else "next"
        out.append(TimelineStep(i, fmt_number(step.get("weight", 0)), _duration(pause) if pause else "no pause",
                                ", ".join(step.get("pools") or []), where, left))
    return out


@dataclass(frozen=True)
class ArchRow:
    gpu_arch: str
    verdict: str
    tone: str
    requests: str
    error_rate: str
    p99: str
    enough: bool
    note: str


def _evidence(judgement: Mapping[str, Any], check: str) -> Mapping[str, Any] | None:
    return next((e for e in judgement.get("evidence") or () if e.get("check") == check), None)


def _pp(value: float) -> str:
    return f"{value:+.2f} pp"


def arch_rows(verdict: Mapping[str, Any] | None) -> list[ArchRow]:
    """One row per GPU architecture of a verdict: the evidence in words, "not enough data" said plainly."""
    rows = []
    for arch, judgement in sorted(((verdict or {}).get("per_arch") or {}).items()):
        cand = judgement.get("candidate") or {}
        base = judgement.get("baseline") or {}
        ready = _evidence(judgement, "min_evidence")
        enough = ready is None or ready.get("statistic") is None or ready.get("threshold") is None or \
            float(ready["statistic"]) >= float(ready["threshold"])
        error = _evidence(judgement, "error_rate")
        hard = _evidence(judgement, "hard_error_rate")
        if hard and hard.get("verdict") == "fail":
            error_text = f"{float(hard['statistic']) * 100:.1f}% of requests failed (hard limit)"
        elif error and error.get("statistic") is not None:
            error_text = _pp(float(error["statistic"]))
            if error.get("interval"):
                low, high = error["interval"]
                error_text += f" ({_pp(float(low))} to {_pp(float(high))})"
            error_text += f", limit {float(error['threshold']):g} pp"
        else:
            error_text = "not enough data"
        p99 = _evidence(judgement, "p99_ratio")
        if p99 and p99.get("statistic") is not None:
            p99_text = f"{float(p99['statistic']):.2f}×"
            if p99.get("interval"):
                low, high = p99["interval"]
                p99_text += f" ({float(low):.2f}–{'∞' if high is None or not math.isfinite(float(high)) else f'{float(high):.2f}'})"
            p99_text += f", limit {float(p99['threshold']):g}×"
            if cand.get("p99_ms") is not None and base.get("p99_ms") is not None:
                p99_text += f"; {float(cand['p99_ms']):.1f} vs {float(base['p99_ms']):.1f} ms"
        else:
            p99_text = "not enough data"
        note = ""
        if not enough and ready is not None:
            note = (f"not enough data yet: the candidate served {int(float(ready['statistic']))} of the "
                    f"{int(float(ready['threshold']))} requests a step needs")
        outcome = str(judgement.get("verdict") or "continue")
        rows.append(ArchRow(
            arch, VERDICT_TEXT.get(outcome, outcome), VERDICT_TONE.get(outcome, "muted"),
            f"{int(cand.get('requests') or 0)} candidate · {int(base.get('requests') or 0)} baseline",
            error_text, p99_text, enough,
            str(judgement.get("reason") or "") if outcome == "fail" else note))
    return rows


def verdict_text(verdict: Mapping[str, Any] | None) -> str:
    if not verdict:
        return "no verdict yet"
    return VERDICT_TEXT.get(str(verdict.get("verdict")), str(verdict.get("verdict")))


def fmt_number(value: Any) -> str:
    number = float(value)
    return f"{number:g}" if number != int(number) else str(int(number))


def _duration(seconds: int) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


# --- the panel's context ----------------------------------------------------------------------


@dataclass
class Refusal:
    """A start the service refused: the form as sent, its errors, and the gates' evidence when they refused."""

    form: StartForm
    errors: Errors
    gates: list[dict[str, Any]] = field(default_factory=list)


def _reached(rollout: Mapping[str, Any]) -> str:
    steps = rollout.get("steps") or []
    if rollout.get("state") == "succeeded":
        return "100%"
    index = min(int(rollout.get("step_index") or 0), len(steps) - 1)
    if index < 0:
        return "–"
    return f"step {index + 1} of {len(steps)} ({fmt_number(steps[index].get('weight', 0))}%)"


def _ended(rollout: Mapping[str, Any]) -> str:
    outcome = str(rollout.get("outcome") or "")
    if outcome:
        return outcome
    verdict = rollout.get("latest_verdict") or {}
    return str(verdict.get("reason") or "")


def panel(*, rollouts: Sequence[Mapping[str, Any]], versions: Sequence[str], default: str | None,
          pools: Sequence[str], refusal: Refusal | None, now: datetime) -> dict[str, Any]:
    """What ``_rollout.html`` shows: ``rollouts`` are ``RolloutRead`` dicts, newest first."""
    live = next((r for r in rollouts if r.get("state") in ("running", "paused")), None)
    form = refusal.form if refusal else StartForm()
    if not refusal:
        form.baseline = default or (versions[0] if versions else "")
        others = [v for v in versions if v != form.baseline]
        form.candidate = others[-1] if others else ""  # the newest other version, usually the one to roll out
    context: dict[str, Any] = {
        "live": live, "form": form, "errors": refusal.errors if refusal else {},
        "gates": refusal.gates if refusal else [],
        "presets": PRESETS, "versions": list(versions), "pools": list(pools),
        "past": [dict(r, reached=_reached(r), ended=_ended(r)) for r in rollouts if r is not live],
        "state_tone": STATE_TONE, "state_text": STATE_TEXT, "action_labels": ACTIONS,
        "actions": [a for a, states in ACTION_STATES.items() if live and live.get("state") in states],
    }
    if live is not None:
        context["steps"] = timeline(live, now=now)
        context["verdict"] = live.get("latest_verdict")
        context["arch"] = arch_rows(live.get("latest_verdict"))
    return context


async def load(session: Any, *, model: Model, refusal: Refusal | None, now: datetime) -> dict[str, Any]:
    """The panel's context for ``model`` (a registry ``Model``), read through the services."""
    versions = [v.version for v in await registry_service.list_versions(session, model=model)
                if v.status != VersionStatus.RETIRED]
    current = await traffic_service.get_current(session, model=model)
    default = current.policy.default_version if current else None
    pools = sorted(p.name for p in await registry_service.list_pools(session))
    _, rows = await rollouts_service.list_rollouts(session, model_name=model.name, limit=HISTORY_ROLLOUTS)
    latest = await rollouts_service.latest_verdicts(session, rollout_ids=[r.id for r in rows])
    rollouts = [RolloutRead.of(model.name, r, latest=latest.get(r.id)).model_dump() for r in rows]
    context = panel(rollouts=rollouts, versions=versions, default=default, pools=pools, refusal=refusal, now=now)
    context["default"] = default
    return context


async def read(session: Any, *, model: Model, rollout_id: int) -> dict[str, Any]:
    """One rollout as ``GET /rollouts/{id}`` answers it, every verdict included (most recent last)."""
    row = await rollouts_service.get_or_raise(session, model=model, rollout_id=rollout_id)
    verdicts = await rollouts_service.verdicts(session, rollout=row)
    return RolloutRead.of(model.name, row, latest=verdicts[-1] if verdicts else None,
                          verdicts=verdicts).model_dump()
