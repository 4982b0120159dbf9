"""Render the README's figures from a real run: TensorBoard scalars and an inspect plot.

    python docs/make_figures.py RUN_DIR/tb/mlet_d16_k256 RUN_DIR/tb/baseline_d16 \
        RUN_DIR/mlet_d16_k256.pt.mlet docs/figures

The TensorBoard panel shows what a user sees in TensorBoard's Scalars tab for an
MLET run next to its baseline: mean effective rank, per-table effective rank,
rare vs frequent row updates, training loss.
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def line(ax, series, **style):
    if series:
        steps, values = zip(*series)
        ax.plot(steps, values, **style)


def tensorboard_panel(mlet_dir, base_dir, out_png):
    mlet, base = scalars(mlet_dir), scalars(base_dir)
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    ax = axes[0][0]
    line(ax, mlet.get("MLET/effective_rank/mean"), label="MLET", lw=2)
    line(ax, base.get("MLET/effective_rank/mean"), label="baseline", lw=2, color="black")
    ax.set(title="MLET/effective_rank/mean", xlabel="step", ylabel="effective rank (of d)")
    ax.legend()
    ax = axes[0][1]
    tables = sorted({t.rsplit("/", 1)[1] for t in mlet if t.startswith("MLET/effective_rank/emb_l")},
                    key=lambda n: int(n.split(".")[1]))
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(tables):
        line(ax, mlet[f"MLET/effective_rank/{name}"], color=cmap(i / max(1, len(tables) - 1)), lw=1)
    ax.set(title=f"MLET/effective_rank/emb_l.* ({len(tables)} tables, MLET run)", xlabel="step")
    ax = axes[1][0]
    for tag, style in (("update_frequent", "-"), ("update_rare", "--")):
        for run, label, color in ((mlet, "MLET", "tab:blue"), (base, "baseline", "black")):
            series = [t for t in run if t.startswith(f"MLET/{tag}/")]
            if series:
                line(ax, run[sorted(series)[0]], ls=style, color=color, label=f"{label} {tag.split('_')[1]} rows")
    ax.set(title=f"MLET/update_*/{sorted(t for t in mlet if t.startswith('MLET/update_rare/'))[0].rsplit('/', 1)[1]}"
           " (largest table)", xlabel="step", ylabel="mean |change| of a folded row", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    line(ax, mlet.get("Train/Loss"), label="MLET", lw=2)
    line(ax, base.get("Train/Loss"), label="baseline", lw=2, color="black")
    ax.set(title="Train/Loss", xlabel="step")
    ax.legend()
    for a in axes.flat:
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=130)
    plt.close(fig)


def main():
    mlet_dir, base_dir, checkpoint, out = sys.argv[1:5]
    os.makedirs(out, exist_ok=True)
    tensorboard_panel(mlet_dir, base_dir, os.path.join(out, "tensorboard_scalars.png"))
    from dlrm_mlet.tools.inspection import inspect_checkpoint, plot_spectra

    info = inspect_checkpoint(checkpoint)
    info["path"] = os.path.basename(checkpoint)
    plot_spectra(info, os.path.join(out, "inspect_spectrum.png"))


if __name__ == "__main__":
    main()
