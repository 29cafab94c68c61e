"""`make loadtest`: start the app, run Locust headless with a profile, and hold the result to the budgets.

    python -m loadtests.run [--profile smoke|soak|stress] [--host URL] [--namespace demo] [--out reports/loadtest]

Without `--host` it starts `recserve serve` for the namespace (Ray on 127.0.0.1) and stops it afterwards.
Locust writes its CSV (`run_stats.csv`, ...) and HTML report under `--out`. The run prints one row per
budget (p50 / p95 / p99 / error rate, measured against budgeted) and exits 1 when any is broken, or when
a budgeted row saw no requests at all.
"""

from __future__ import annotations

import argparse
import os
import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import requests
import yaml
from pydantic import BaseModel, ConfigDict, Field

from stores.settings import REPO_ROOT, get_settings

HERE = Path(__file__).resolve().parent
PERCENTILES = {"p50": "50%", "p95": "95%", "p99": "99%"}


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: int = Field(ge=1)
    spawn_rate: float = Field(gt=0)
    run_time: str


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p50: float
    p95: float
    p99: float
    error_rate: float = Field(ge=0, le=1)


class Budgets(BaseModel):
    profiles: dict[str, Profile]
    budgets: dict[str, Budget]

    @classmethod
    def read(cls, path: Path) -> Budgets:
        return cls.model_validate(yaml.safe_load(path.read_text()))


def check(budgets: dict[str, Budget], stats_csv: Path) -> tuple[list[list[str]], bool]:
    """Rows of (name, measure, measured, budget, verdict) and whether every budget held. A row the run did
    not exercise (user classes left out, no user in the fusion arm) is reported, not judged; a run with no
    requests at all is a breach."""
    with open(stats_csv) as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    rows, ok = [], True
    for name, budget in budgets.items():
        row = stats.get(name)
        if row is None or int(row["Request Count"]) == 0:
            rows.append([name, "requests", "0", "", "BROKEN" if name == "Aggregated" else "not exercised"])
            ok = ok and name != "Aggregated"
            continue
        requests, failures = int(row["Request Count"]), int(row["Failure Count"])
        for measure, column in PERCENTILES.items():
            measured, limit = float(row[column]), getattr(budget, measure)
            held = measured <= limit
            ok = ok and held
            rows.append([name, measure, f"{measured:.0f} ms", f"{limit:.0f} ms", "ok" if held else "BROKEN"])
        rate = failures / requests
        held = rate <= budget.error_rate
        ok = ok and held
        rows.append([name, "errors", f"{failures}/{requests} ({rate:.2%})", f"{budget.error_rate:.2%}", "ok" if held else "BROKEN"])
    return rows, ok


def print_table(rows: list[list[str]]) -> None:
    print("| endpoint | measure | measured | budget | verdict |\n|---|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def run_locust(host: str, profile: Profile, out: Path, namespace: str, user_classes: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--host", host, "--headless",
        "-u", str(profile.users), "-r", str(profile.spawn_rate), "-t", profile.run_time,
        "--csv", str(out / "run"), "--html", str(out / "report.html"), "--only-summary", *user_classes,
    ]
    env = {**os.environ, "RECSERVE_NAMESPACE": namespace}
    return subprocess.run(command, cwd=REPO_ROOT, env=env).returncode


def set_fusion_share(host: str, share: float, timeout_s: float = 60) -> None:
    """The ingress's user_config change `recserve ab` makes, on the app this process started."""
    from deployments.rollouts import deploy_user_config

    deploy_user_config("Ingress", {"fusion_share": share})
    deadline = time.monotonic() + timeout_s
    while requests.get(f"{host}/v1/status", timeout=10).json()["ab"]["fusion_share"] != share:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ingress did not take fusion_share {share} within {timeout_s:.0f} s")
        time.sleep(0.5)


def parse_load_args(parser: argparse.ArgumentParser, argv: list[str] | None, out: Path) -> argparse.Namespace:
    """Add the options every load runner shares (budgets, the app under load, its A/B share, the reports
    folder, default `out`) to `parser`, and parse `argv`."""
    parser.add_argument("--budgets", type=Path, default=HERE / "budgets.yaml")
    parser.add_argument("--host", help="an app already running; default: start one")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fusion-share", type=float, help="A/B share of the fusion arm for this run (the app this starts)")
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    if args.fusion_share is not None and args.host:
        parser.error("--fusion-share applies to the app this run starts; for --host use `recserve ab`")
    return args


@contextmanager
def app_under_load(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(host, namespace) of the app to load: `--host`, or one started for `--namespace` (with `--fusion-share`
    set) and stopped afterwards."""
    settings = get_settings()
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})

    from pipelines import serving

    with nullcontext() if args.host else serving.running(settings, http_port=args.port):
        host = args.host or f"http://127.0.0.1:{args.port}"
        if args.fusion_share is not None:
            set_fusion_share(host, args.fusion_share)
        yield host, settings.namespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("user_classes", nargs="*", help="locustfile user classes to run (default: all)")
    args = parse_load_args(parser, argv, REPO_ROOT / "reports" / "loadtest")
    config = Budgets.read(args.budgets)
    if args.profile not in config.profiles:
        parser.error(f"unknown profile {args.profile!r} in {args.budgets}; known: {sorted(config.profiles)}")
    with app_under_load(args) as (host, namespace):
        print(f"== locust, profile {args.profile}: {config.profiles[args.profile].model_dump()} against {host}", flush=True)
        returncode = run_locust(host, config.profiles[args.profile], args.out, namespace, args.user_classes)
    rows, ok = check(config.budgets, args.out / "run_stats.csv")
    print_table(rows)
    print(f"\nreports: {args.out / 'report.html'}, {args.out / 'run_stats.csv'}")
    if returncode not in (0, 1):  # locust exits 1 when any request failed; the table says which
        print(f"locust itself exited {returncode}", file=sys.stderr)
        return returncode
    print("every budget held" if ok else "BUDGET BROKEN", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
