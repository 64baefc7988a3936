"""A finished local search as a table, trials.csv/trials.json, trials.png and the best file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tuning.space import TUNED, write_best

COLUMNS = ("trial", "lr", "batch-size", "momentum", "val_accuracy", "best_val_accuracy", "epochs", "state")
COLUMNS += ("duration_s",)


def rows(study) -> list[dict]:
    """One row per trial: tuned values, final and best val_accuracy, epochs run, state, time."""
    table = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        history = trial.user_attrs.get("history", [])
        hps = trial.user_attrs.get("hyperparameters", {})
        row = {"trial": trial.number} | {k: hps.get(k) for k in TUNED}
        row |= {
            "val_accuracy": trial.value if trial.state.name == "COMPLETE" else None,
            "best_val_accuracy": max(history, default=None),
            "epochs": len(history),
            "state": trial.state.name.lower(),
            "duration_s": trial.user_attrs.get("duration_s"),
        }
        table.append(row | {"history": history, "hyperparameters": hps, "log": trial.user_attrs.get("log")})
    return table


def format_table(table: list[dict]) -> str:
    """The rows as aligned text columns."""
    cells = [list(COLUMNS)] + [cells_of(r) for r in table]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in cells)


def cells_of(row: dict) -> list[str]:
    return ["" if row[c] is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]


def write(study, out: Path, source: dict) -> Path | None:
    """trials.csv, trials.json, trials.png and, if a trial completed, best-hyperparameters.json."""
    table = rows(study)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    (out / "trials.json").write_text(json.dumps(table, indent=2) + "\n")
    plot(table, out / "trials.png")
    best = study.best_trial if any(t.state.name == "COMPLETE" for t in study.trials) else None
    model = out / "trials" / f"trial-{best.number:03d}" / "model.tar.gz" if best else None
    for other in (out / "trials").glob("trial-*/model.tar.gz"):
        if other != model:  # one ResNet is 45 MB or more; the best one is kept to deploy
            other.unlink()
    if best is None:
        return None
    source = source | {"trial": best.number, "study": study.study_name}
    source |= {"model_data": f"file://{model.resolve()}"} if model.exists() else {}
    write_best(out / "best-hyperparameters.json", best.user_attrs["hyperparameters"], best.value, source)
    return out / "best-hyperparameters.json"


def plot(table: list[dict], path: Path) -> None:
    """Learning curves (pruned dashed), objective per trial with the best so far, lr vs objective."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    fig, (curves, trials, by_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    best_so_far, best = [], float("nan")
    for row in table:
        history, state = row["history"], row["state"]
        if history:
            style = "--x" if state == "pruned" else "-o"
            curves.plot(range(1, len(history) + 1), history, style, label=f"trial {row['trial']}")
        if row["val_accuracy"] is not None:
            best = row["val_accuracy"] if best != best else max(best, row["val_accuracy"])  # nan: none yet
            trials.scatter(row["trial"], row["val_accuracy"], color="tab:blue")
        elif history:
            trials.scatter(row["trial"], history[-1], marker="x", color="tab:red")
        best_so_far.append(best)
    trials.step(range(len(table)), best_so_far, where="post", color="tab:green", label="best so far")
    done = [r for r in table if r["val_accuracy"] is not None]
    points = by_lr.scatter(
        [float(r["lr"]) for r in done], [r["val_accuracy"] for r in done],
        c=[float(r["momentum"]) for r in done], s=[12 + int(r["batch-size"]) / 4 for r in done], cmap="viridis",
    )  # fmt: skip
    if done:
        fig.colorbar(points, ax=by_lr, label="momentum")
    by_lr.set_xscale("log")
    by_lr.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap on a narrow range
    curves.set(title="val_accuracy per epoch (pruned: dashed)", xlabel="epoch", ylabel="val_accuracy")
    trials.set(title="objective per trial (pruned: x, last value)", xlabel="trial", ylabel="val_accuracy")
    by_lr.set(title="lr vs objective (size: batch size)", xlabel="lr", ylabel="val_accuracy")
    for ax in (curves, trials, by_lr):
        ax.grid(alpha=0.3)
    for ax in (curves, trials):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (curves, trials):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
