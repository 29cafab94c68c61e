"""Markdown evaluation reports with PNG plots that a person can read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402

_METRIC = re.compile(r"^(recall|ndcg|mrr|hit_rate|coverage)@(\d+)$")


def metric_table(results: dict[str, dict[str, Any]]) -> str:
    names = sorted({k for m in results.values() for k in m if _METRIC.match(k)}, key=_metric_order)
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for model, metrics in results.items():
        cells = [f"{metrics[n]:.4f}" if isinstance(metrics.get(n), (int, float)) else "" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_order(name: str) -> tuple[str, int]:
    metric, k = _METRIC.match(name).groups()
    return metric, int(k)


def plot_metrics(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Recall@K and NDCG@K per model, one line per model across K."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("recall", "ndcg")):
        for model, metrics in results.items():
            points = sorted((int(m.group(2)), v) for k, v in metrics.items() if (m := _METRIC.match(k)) and m.group(1) == metric)
            if points:
                ax.plot(*zip(*points), marker="o", label=model)
        ax.set_xlabel("K")
        ax.set_title(f"{metric.upper()}@K")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_rows(checkpoints: list[Any]) -> list[dict[str, float]]:
    """A trainer's checkpoints (epoch, train_seconds, loss, metrics) as the manifest's learning curve."""
    return [
        {"epoch": c.epoch, "seconds": round(c.train_seconds, 2), "loss": c.loss,
         **{f"validation {k}": v for k, v in c.metrics.items() if k in ("recall@20", "ndcg@20")}}
        for c in checkpoints
    ]


def selection_summary(selected: Any, served: Any, refit: bool) -> dict[str, Any]:
    """The manifest summary of a model chosen by `models.model_selection` and, with `refit`, trained again on
    all events: what was selected, why training stopped, and what is served."""
    return {
        "selected epoch": selected.best_epoch,
        "stopped": selected.stopped_because,
        "training seconds (selection run)": round(selected.train_seconds, 1),
        "seconds per epoch": round(selected.train_seconds / max(selected.epochs_run, 1), 2),
        "served model": f"refit on all events, {served.epochs_run} epochs" if refit else "the selected model",
    }


def plot_curves(curves: list[dict[str, float]], path: Path) -> None:
    """A learning curve: held-out metrics (left axis) and losses (right axis; the left one when there are
    no metrics) against training time, or epochs when the history has no times. "loss" is the training
    loss; other "... loss" keys (a held-out loss) are drawn beside it."""
    x_key = "seconds" if "seconds" in curves[0] else "epoch"
    xs = [c[x_key] for c in curves]
    fig, ax = plt.subplots(figsize=(7, 4))
    metrics = sorted({k for c in curves for k in c if "@" in k})
    for key in metrics:
        points = [(x, c[key]) for x, c in zip(xs, curves) if key in c]
        ax.plot(*zip(*points), marker=".", label=key)
    losses = [key for key in dict.fromkeys(k for c in curves for k in c) if key.endswith("loss")]
    if losses:
        loss_ax = ax.twinx() if metrics else ax
        for key, style in zip(losses, ("--", ":", "-.")):
            loss_ax.plot(xs, [c.get(key) for c in curves], color="grey", linestyle=style,
                         label="training loss" if key == "loss" else key)
        loss_ax.set_ylabel("loss")
        loss_ax.legend(loc="lower right" if metrics else "upper right")
    ax.set_xlabel("training seconds" if x_key == "seconds" else "epoch")
    ax.grid(alpha=0.3)
    if metrics:
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(groups: dict[str, dict[str, float]], sources: list[str], path: Path) -> None:
    """Mean attention weight per source (bars) in each request-context group (x), e.g. from
    pipelines.fusion.attention_groups; a group's "requests" count goes under its name."""
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(groups)), 4))
    width = 0.8 / max(len(sources), 1)
    for s, source in enumerate(sources):
        xs = [g + (s - (len(sources) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [weights.get(source, 0.0) for weights in groups.values()], width, label=source)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{name}\n({int(weights.get('requests', 0))} requests)" for name, weights in groups.items()], fontsize=8)
    ax.set_ylabel("mean attention weight")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    title: str,
    facts: dict[str, Any],
    results: dict[str, dict[str, Any]],
    out_dir: Path,
    curves: list[dict[str, float]] | None = None,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_metrics(results, out_dir / "metrics.png")
    lines = [f"# {title}", ""]
    lines += [f"- **{k}:** {v}" for k, v in facts.items()]
    lines += ["", "## Full-ranking metrics", "", metric_table(results), "", "![metrics at K](metrics.png)", ""]
    if curves:
        plot_curves(curves, out_dir / "learning_curve.png")
        lines += ["## Learning curve", "", "![learning curve](learning_curve.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
