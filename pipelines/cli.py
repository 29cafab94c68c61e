"""The `recserve` command line: load datasets, train, evaluate, serve, and run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stores.settings import Settings, get_settings, namespace_for


def _settings(args: argparse.Namespace, default_namespace: str | None = None) -> Settings:
    namespace = getattr(args, "namespace", None) or default_namespace
    base = get_settings()
    return base.model_copy(update={"namespace": Settings(namespace=namespace).namespace}) if namespace else base


def cmd_migrate(args: argparse.Namespace) -> int:
    from stores.event_store import EventStore
    from stores.postgres import Database

    settings = _settings(args)
    applied = EventStore(Database.from_settings(settings)).migrate()
    print(f"namespace {settings.namespace}: applied {[f'{m.version:04d}_{m.name}' for m in applied] or 'nothing'}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from pipelines.loading import load_into_store

    default = "demo" if args.dataset == "demo" else namespace_for(args.dataset)
    options = {k: v for k, v in vars(args).items() if k in ("path", "users", "items", "events", "seed") and v is not None}
    summary = load_into_store(args.dataset, _settings(args, default), replace=args.replace, **options)
    print(json.dumps(summary, indent=2))
    return 0


def parse_overrides(pairs: list[str], device: str | None) -> dict:
    """`--set lr=0.01 --set loss=bpr` -> {"lr": 0.01, "loss": "bpr"}: values are JSON, else strings."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    if device:
        overrides["device"] = device
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.training import train_model

    manifest = train_model(args.model, _settings(args), parse_overrides(args.set, args.device))
    metrics = {k: round(v, 4) for k, v in manifest.metrics.items() if k.startswith(("recall@", "ndcg@"))}
    print(f"{args.model} {manifest.version}: {json.dumps(metrics)}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from pipelines.training import sync_model

    counts = sync_model(args.model, _settings(args), args.version)
    print(f"{args.model} {args.version}: synced {json.dumps(counts)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.training import evaluate_model

    report = evaluate_model(args.model, _settings(args), out_dir=args.out)
    print(f"report: {report}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serving import serve_forever

    serve_forever(_settings(args), Path(args.config), args.port)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from pipelines.serving import rollout

    served = rollout(args.model, args.version, _settings(args), address=args.address)
    print(f"{args.model}: serving version {served}")
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    from pipelines.serving import set_ab

    settings = set_ab(args.fusion_share, args.salt, address=args.address)
    print(f"A/B: fusion_share {settings.fusion_share} (salt {settings.salt!r})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(_settings(args, "demo"), fresh=args.fresh, keep_serving=not args.no_wait)


def cmd_db(args: argparse.Namespace) -> int:
    from stores.postgres import start_embedded, stop_embedded

    settings = get_settings()
    if args.action == "stop":
        print("stopped" if stop_embedded(settings.state_dir) else "no embedded PostgreSQL was running")
    else:
        start_embedded(settings.state_dir)
        print(f"embedded PostgreSQL running under {settings.state_dir / 'postgres'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipelines.datasets import READERS
    from pipelines.training import MODELS
    from pipelines.serving import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(prog="recserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_namespace(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--namespace", help="dataset namespace (PostgreSQL schema); default RECSERVE_NAMESPACE")
        return p

    with_namespace(sub.add_parser("migrate", help="apply SQL migrations")).set_defaults(func=cmd_migrate)

    load = with_namespace(sub.add_parser("load", help="load a dataset into PostgreSQL (one transaction)"))
    load.add_argument("dataset", choices=sorted(READERS))
    load.add_argument("--path", type=Path, help="generic: the folder with events.csv|parquet (+ items, users)")
    load.add_argument("--replace", action="store_true", help="replace what the namespace holds")
    load.add_argument("--users", type=int, help="demo: number of users")
    load.add_argument("--items", type=int, help="demo: number of items")
    load.add_argument("--events", type=int, help="demo: number of events")
    load.add_argument("--seed", type=int, help="demo/steam: random seed")
    load.set_defaults(func=cmd_load)

    train = with_namespace(sub.add_parser("train", help="train a model into a new artifact version"))
    train.add_argument("model", choices=sorted(MODELS))
    train.add_argument("--device", help="torch device for training, e.g. cpu or cuda")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a training setting (see the README), e.g. --set time_budget_s=600")
    train.set_defaults(func=cmd_train)

    sync = with_namespace(sub.add_parser("sync", help="write an artifact's vectors to the vector store again"))
    sync.add_argument("model", choices=sorted(MODELS))
    sync.add_argument("version", nargs="?", default="current", help="artifact version (default: current)")
    sync.set_defaults(func=cmd_sync)

    evaluate = with_namespace(sub.add_parser("evaluate", help="write a Markdown evaluation report with plots"))
    evaluate.add_argument("model", choices=sorted(MODELS))
    evaluate.add_argument("--out", type=Path, default=None, help="report folder (default reports/<ns>/<model>)")
    evaluate.set_defaults(func=cmd_evaluate)

    serve = with_namespace(sub.add_parser("serve", help="start Ray locally and deploy serve_config.yaml"))
    serve.add_argument("--config", default=str(DEFAULT_CONFIG))
    serve.add_argument("--port", type=int, default=None, help="override http_options.port")
    serve.set_defaults(func=cmd_serve)

    roll = with_namespace(sub.add_parser("rollout", help="hot-swap a model version on the running Serve app"))
    roll.add_argument("model", choices=sorted(MODELS))
    roll.add_argument("version", help="an artifact version (see artifacts/<namespace>/<model>/) or 'current'")
    roll.add_argument("--address", default="auto", help="Ray cluster address (default: the local one)")
    roll.set_defaults(func=cmd_rollout)

    ab = sub.add_parser("ab", help="change the A/B split between cascade and fusion on the running app (no restart)")
    ab.add_argument("--fusion-share", type=float, required=True, help="share of users in the fusion arm, 0..1")
    ab.add_argument("--salt", help="a new salt draws a new assignment (default: keep the current one)")
    ab.add_argument("--address", default="auto", help="Ray cluster address (default: the local one)")
    ab.set_defaults(func=cmd_ab)

    demo = with_namespace(sub.add_parser("demo", help="generate data, train, serve and show example requests"))
    demo.add_argument("--fresh", action="store_true", help="regenerate the data and retrain")
    demo.add_argument("--no-wait", action="store_true", help="stop after printing the examples")
    demo.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="the embedded PostgreSQL")
    db.add_argument("action", choices=["start", "stop"])
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - a CLI prints what went wrong instead of a traceback
        if args.verbose:
            raise
        print(f"recserve {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
