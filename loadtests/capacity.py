"""`make capacity`: the highest Locust load at which every budget holds, found by stepping the users up.

    python -m loadtests.capacity [--users 16 24 32 48 64] [--step-time 2m] [--confirm-time 5m] [--fusion-share S]
                                 [--host URL] [--namespace demo] [--out reports/capacity]

It starts the app once (or uses `--host`), then runs Locust headless at each user count in turn, each step
for `--step-time`, and holds every step to loadtests/budgets.yaml as `loadtests.run` does. It stops at the
first step that breaks a budget or fails a request, then runs the last step that held again for
`--confirm-time` (the sustained figure in RELIABILITY.md). Each step's Locust CSV and HTML report go under
`--out/<users>u`; the summary table gives users, requests/s, the /v1/recommend percentiles and the verdict.
Exits 1 when even the first step breaks a budget.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests.run import Budgets, Profile, app_under_load, check, parse_load_args, print_table, run_locust
from stores.settings import REPO_ROOT


@dataclass
class Step:
    users: int
    requests_per_s: float
    requests: int
    failures: int
    recommend_ms: tuple[float, float, float]  # p50, p95, p99
    held: bool
    broken: list[str]


def measure(users: int, stats_csv: Path, rows: list[list[str]], held: bool) -> Step:
    """One step's figures. The per-arm rows (type ARM) repeat /v1/recommend, so they are not counted again."""
    with open(stats_csv) as f:
        stats = [row for row in csv.DictReader(f) if row["Type"] != "ARM" and row["Name"] != "Aggregated"]
    recommend = next((row for row in stats if row["Name"] == "/v1/recommend"), None)
    return Step(
        users=users,
        requests_per_s=sum(float(row["Requests/s"]) for row in stats),
        requests=sum(int(row["Request Count"]) for row in stats),
        failures=sum(int(row["Failure Count"]) for row in stats),
        recommend_ms=tuple(float(recommend[c]) for c in ("50%", "95%", "99%")) if recommend else (0.0, 0.0, 0.0),
        held=held,
        broken=[f"{row[0]} {row[1]}" for row in rows if row[4] == "BROKEN"],
    )


def print_steps(steps: list[Step]) -> None:
    print("| users | requests/s | requests | failures | /v1/recommend p50 / p95 / p99 ms | budgets |")
    print("|---:|---:|---:|---:|---|---|")
    for s in steps:
        verdict = "all held" if s.held else "broken: " + ", ".join(s.broken)
        p50, p95, p99 = s.recommend_ms
        print(f"| {s.users} | {s.requests_per_s:.1f} | {s.requests:,} | {s.failures} | {p50:.0f} / {p95:.0f} / {p99:.0f} | {verdict} |",
              flush=True)


def run_step(host: str, users: int, run_time: str, out: Path, config: Budgets, namespace: str) -> Step:
    profile = Profile(users=users, spawn_rate=max(4.0, users / 4), run_time=run_time)
    print(f"== {users} users for {run_time}", flush=True)
    returncode = run_locust(host, profile, out, namespace, [])
    if returncode not in (0, 1):  # 1: some request failed, which the budgets judge
        raise SystemExit(f"locust exited {returncode} at {users} users")
    rows, held = check(config.budgets, out / "run_stats.csv")
    step = measure(users, out / "run_stats.csv", rows, held)
    print_steps([step])
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--step-time", default="2m")
    parser.add_argument("--confirm-time", default="5m", help="the last step that held, run again this long; 0 skips it")
    args = parse_load_args(parser, argv, REPO_ROOT / "reports" / "capacity")
    if args.users != sorted(set(args.users)):
        parser.error("--users must be increasing")
    config = Budgets.read(args.budgets)
    steps: list[Step] = []
    with app_under_load(args) as (host, namespace):
        for users in args.users:
            steps.append(run_step(host, users, args.step_time, args.out / f"{users}u", config, namespace))
            if not steps[-1].held:
                break
        held = [s for s in steps if s.held]
        confirmed = None
        if held and args.confirm_time not in ("0", "0s", "0m"):
            confirmed = run_step(host, held[-1].users, args.confirm_time, args.out / f"{held[-1].users}u-confirm",
                                 config, namespace)
    print(f"\n== steps of {args.step_time}" + (f", then {held[-1].users} users again for {args.confirm_time}" if confirmed else ""))
    print_steps(steps + ([confirmed] if confirmed else []))
    if not held:
        print(f"BUDGET BROKEN already at {steps[0].users} users")
        return 1
    best = confirmed or held[-1]
    ceiling = "" if len(held) < len(steps) else " (every step held: try more users)"
    print(f"highest load with every budget held: {best.users} users, {best.requests_per_s:.1f} requests/s, "
          f"{best.failures} failures{ceiling}" + ("" if best.held else "; BROKEN when run longer"))
    if confirmed and not confirmed.held:
        print_table(check(config.budgets, args.out / f"{held[-1].users}u-confirm" / "run_stats.csv")[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
