"""The loss-curve PNG written beside metrics.jsonl (matplotlib: the plot extra)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """Draw metrics.jsonl's train and val loss into png_path; MissingExtra without matplotlib."""
    if not Path(metrics_path).exists():
        return
    from livelm import extras
    matplotlib = extras.need("matplotlib", "plot", "the loss curve (loss.png)")
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(png_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from livelm import io
    with io.atomic_open(png_path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
