"""``grayroute rollout``: start, watch and steer rollouts through the API, for people and pipelines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, NoReturn

import httpx

from control_plane.settings import ClientSettings

DESCRIPTION = "Start, watch, pause, resume, abort or promote a rollout (staged canary judged automatically)."
EPILOG = """\
examples:
  grayroute rollout start resnet50 --candidate 4 --steps 1:60,5:60,25:120,100 --reason "build 4"
  grayroute rollout start resnet50 --candidate 4 --steps 5:120,50:120,100 --pools 1=h100 --reason "h100 first"
  grayroute rollout status resnet50 --wait        # exit 0 when it succeeds, 1 when rolled back or aborted
  grayroute rollout abort resnet50 --reason "saw it in the logs"

steps: WEIGHT[:PAUSE_SECONDS] separated by commas; weights increase and the last is 100.

environment:
  GRAYROUTE_TOKEN              a token of role release-manager (or admin); required
  GRAYROUTE_CONTROL_PLANE_URL  the control plane's base URL (default http://127.0.0.1:8080)

exit status: 0 done; 1 the rollout was rolled back or aborted (status --wait); 2 refused or unreachable.
"""

FINISHED_OK = {"succeeded"}
FINISHED_BAD = {"rolled_back", "aborted"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control-plane", help="base URL (default: $GRAYROUTE_CONTROL_PLANE_URL, else "
                                                "http://127.0.0.1:8080)")
    commands = parser.add_subparsers(dest="rollout_command", required=True)
    start = commands.add_parser("start", help="start a rollout")
    start.add_argument("model")
    start.add_argument("--candidate", required=True, help="the version to roll out")
    start.add_argument("--baseline", help="the version to judge it against (default: the default version)")
    start.add_argument("--steps", required=True, metavar="W:S,...",
                       help="weights in percent with pauses in seconds, e.g. 1:60,5:60,25:120,100")
    start.add_argument("--pools", action="append", default=[], metavar="STEP=POOL[,POOL]",
                       help="deploy the candidate only on these pools during step STEP (1-based); repeatable")
    start.add_argument("--analysis", action="append", default=[], metavar="KEY=VALUE",
                       help="an analysis setting, e.g. min_requests=200 or max_p99_ratio=1.25; repeatable")
    start.add_argument("--shadow", metavar="PERCENT:SECONDS",
                       help="a parity phase first: mirror PERCENT of users to the candidate for SECONDS, judged on "
                            "--analysis min_top1_agreement=… and max_abs_error=…")
    start.add_argument("--max-benchmark-p99-ratio", type=float, help="gate: trtexec p99 ratio limit (default 1.25)")
    start.add_argument("--override-gates", action="store_true", help="start even if a gate fails (audited)")
    start.add_argument("--reason", required=True)
    start.set_defaults(rollout_run=_start)

    status = commands.add_parser("status", help="show a rollout (the newest by default)")
    status.add_argument("model")
    status.add_argument("id", nargs="?", type=int)
    status.add_argument("--wait", action="store_true",
                        help="follow it until it ends: exit 0 on success, 1 on rollback or abort")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between looks with --wait")
    status.add_argument("--json", action="store_true", help="print the rollout as JSON")
    status.set_defaults(rollout_run=_status)

    for verb, text in (("pause", "stop judging and advancing (traffic stays; people may change it)"),
                       ("resume", "run again from the current step"),
                       ("abort", "end it and restore the traffic live at its start"),
                       ("promote", "skip to 100%%: the candidate becomes the default version")):
        sub = commands.add_parser(verb, help=text)
        sub.add_argument("model")
        sub.add_argument("--id", type=int, help="the rollout (default: the model's running or paused one)")
        sub.add_argument("--reason", required=True)
        sub.set_defaults(rollout_run=_act, verb=verb)


def _refuse(message: str) -> NoReturn:
    print(f"grayroute rollout: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_steps(text: str, pools: list[str]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        weight, _, pause = part.partition(":")
        try:
            steps.append({"weight": float(weight), "pause_seconds": int(pause) if pause else 0})
        except ValueError:
            _refuse(f"--steps: step {i + 1} {part!r}: expected WEIGHT[:PAUSE_SECONDS], e.g. 5:60")
    for item in pools:
        step, sep, names = item.partition("=")
        if not sep or not step.isdigit() or not 1 <= int(step) <= len(steps) or not names:
            _refuse(f"--pools {item!r}: expected STEP=POOL[,POOL] with STEP between 1 and {len(steps)}")
        steps[int(step) - 1]["pools"] = [n.strip() for n in names.split(",") if n.strip()]
    return steps


def _number(value: str) -> float | int:
    try:
        return int(value)
    except ValueError:
        return float(value)


class _Api:
    def __init__(self, args: argparse.Namespace) -> None:
        settings = ClientSettings()
        if settings.token is None:
            _refuse("set GRAYROUTE_TOKEN to a release-manager token")
        self.base = (args.control_plane or settings.control_plane_url).rstrip("/")
        self.client = httpx.Client(base_url=self.base + "/api/v1", timeout=30,
                                   headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            _refuse(f"cannot reach the control plane at {self.base}: {exc or type(exc).__name__}")
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = error["message"]
            except (ValueError, KeyError, TypeError):
                message = " ".join(response.text.split())[:300] or response.reason_phrase
            _refuse(f"{method} {path} → {response.status_code}: {message}")
        return response.json()


def describe(rollout: dict[str, Any]) -> str:
    """One line: where the rollout stands and the latest verdict."""
    steps = rollout["steps"]
    index = rollout["step_index"]
    where = (f"step {index + 1}/{len(steps)}, candidate {rollout['candidate']} at {steps[index]['weight']:g}%"
             if index < len(steps) else f"after step {len(steps)}/{len(steps)}")
    if rollout.get("phase") == "shadow":
        where = f"shadow phase, {rollout['shadow']['percent']:g}% of users mirrored to {rollout['candidate']}"
    line = f"rollout {rollout['id']} of {rollout['model']}: {rollout['state']}, {where}"
    verdict = rollout.get("latest_verdict")
    if rollout["state"] in FINISHED_OK | FINISHED_BAD and rollout.get("outcome"):
        line += f" — {rollout['outcome']}"
    elif verdict:
        line += f" — {verdict['verdict']}: {verdict['reason']}"
    return line


def _start(api: _Api, args: argparse.Namespace) -> int:
    analysis: dict[str, Any] = {}
    for item in args.analysis:
        key, sep, value = item.partition("=")
        if not sep:
            _refuse(f"--analysis {item!r}: expected KEY=VALUE")
        try:
            analysis[key] = _number(value)
        except ValueError:
            _refuse(f"--analysis {item!r}: {value!r} is not a number")
    body: dict[str, Any] = {"candidate": args.candidate, "reason": args.reason,
                            "steps": parse_steps(args.steps, args.pools), "analysis": analysis,
                            "override_gates": args.override_gates}
    if args.baseline:
        body["baseline"] = args.baseline
    if args.shadow:
        percent, sep, seconds = args.shadow.partition(":")
        try:
            body["shadow"] = {"percent": _number(percent), "seconds": int(seconds)}
        except ValueError:
            _refuse(f"--shadow {args.shadow!r}: expected PERCENT:SECONDS, e.g. 10:300")
    if args.max_benchmark_p99_ratio is not None:
        body["gates"] = {"max_benchmark_p99_ratio": args.max_benchmark_p99_ratio}
    rollout = api.call("POST", f"/models/{args.model}/rollouts", body)
    print(describe(rollout))
    return 0


def _status(api: _Api, args: argparse.Namespace) -> int:
    def fetch() -> dict[str, Any]:
        if args.id is not None:
            return api.call("GET", f"/models/{args.model}/rollouts/{args.id}")  # type: ignore[no-any-return]
        found = api.call("GET", f"/models/{args.model}/rollouts?limit=1")
        if not found:
            _refuse(f"model {args.model!r} has no rollouts")
        return found[0]  # type: ignore[no-any-return]

    rollout = fetch()
    if args.wait:
        args.id = rollout["id"]
        last = ""
        while True:
            line = describe(rollout)
            if line != last and not args.json:
                print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
                last = line
            if rollout["state"] in FINISHED_OK | FINISHED_BAD:
                break
            time.sleep(args.interval)
            rollout = fetch()
    if args.json:
        print(json.dumps(rollout, indent=2))
    elif not args.wait:
        print(describe(rollout))
    return 1 if args.wait and rollout["state"] in FINISHED_BAD else 0


def _act(api: _Api, args: argparse.Namespace) -> int:
    rollout_id = args.id
    if rollout_id is None:
        live = [r for r in api.call("GET", f"/models/{args.model}/rollouts?limit=5")
                if r["state"] in ("running", "paused")]
        if not live:
            _refuse(f"model {args.model!r} has no running or paused rollout")
        rollout_id = live[0]["id"]
    rollout = api.call("POST", f"/models/{args.model}/rollouts/{rollout_id}/{args.verb}", {"reason": args.reason})
    print(describe(rollout))
    return 0


def run(args: argparse.Namespace) -> int:
    api = _Api(args)
    try:
        return int(args.rollout_run(api, args))
    except KeyboardInterrupt:
        return 130
    finally:
        api.client.close()
