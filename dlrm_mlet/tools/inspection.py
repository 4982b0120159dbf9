"""``dlrm-mlet inspect``: what a checkpoint holds, in one screen.

For folded, unfolded (``.mlet``) and plain DLRM checkpoints: per table the
rows, width (and ``k`` when unfolded), bytes now and once folded, effective
rank and singular-value spectrum; totals; and whether an unpatched DLRM can
load the file as it is.
"""

import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..core.folding import PROJ_KEY, TABLE_KEY, mlet_prefixes
from ..errors import MLETError
from ..checkpoint_io import load_model_file
from ..files import StrPath
from .plots import pyplot, save
from ..core.spectrum import effective_rank, singular_values

STOCK_KEYS = ("nepochs", "nbatches", "nbatches_test", "state_dict", "test_acc", "epoch", "iter",
              "train_loss", "total_loss")
# Plain tables: DLRM's emb_l.<i>, TorchRec's embedding_bags.<name> / embeddings.<name>
_PLAIN_TABLE = re.compile(r"(?:.*\.)?(?:emb_l\.\d+|embedding_bags\.[^.]+|embeddings\.[^.]+)\.weight")


def _tables(state_dict):
    """(name, table weight, projection or None) for every embedding table, in order."""
    found = [(p.rstrip("."), state_dict[p + TABLE_KEY], state_dict[p + PROJ_KEY]) for p in mlet_prefixes(state_dict)]
    for key, value in state_dict.items():
        if _PLAIN_TABLE.fullmatch(key) and torch.is_tensor(value) and value.dim() == 2:
            found.append((key[: -len(".weight")], value, None))
    return sorted(found, key=lambda t: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", t[0])])


def _holds_numpy(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return True
    if isinstance(obj, dict):
        return any(_holds_numpy(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_numpy(v) for v in obj)
    return False


def stock_verdict(ckpt: Mapping[str, Any]) -> Tuple[bool, str]:
    """Whether unpatched DLRM (torch >= 2.6) loads this file as is, and why not."""
    state = ckpt["state_dict"]
    if mlet_prefixes(state):
        return False, "no: it holds unfolded MLET tables; load the folded file, or run `dlrm-mlet fold`"
    if any(".module." in key for key in state):
        return False, "no: it is one rank's distributed state dict (DDP '.module.' keys)"
    missing = [key for key in STOCK_KEYS if key not in ckpt]
    if missing:
        return False, f"no: DLRM's --load-model reads {', '.join(missing)}, which it lacks"
    if _holds_numpy({k: v for k, v in ckpt.items() if k != "state_dict"}):
        return False, ("only with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: it holds numpy scalars, "
                       "which torch >= 2.6 refuses by default")
    note = "" if "opt_state_dict" in ckpt else " (inference only: no optimizer state to resume from)"
    return True, "yes" + note


def inspect_checkpoint(path: StrPath, progress: Optional[Callable[[str], object]] = None) -> Dict[str, Any]:
    """A dict describing the checkpoint (what ``--json`` prints)."""
    ckpt, plain = load_model_file(path)
    record = ckpt.get("mlet", {})
    tables = []
    found = _tables(ckpt["state_dict"])
    if not found:
        raise MLETError(f"{path}: no embedding tables (no MLET table/proj pairs, no emb_l.<i> or TorchRec "
                        "embedding keys) in its state_dict")
    for name, table, proj in found:
        if progress:
            progress(name)
        rows, inner = table.shape
        width = inner if proj is None else proj.shape[0]
        folded = table.dtype if proj is None else torch.promote_types(table.dtype, proj.dtype)  # as fold_weight
        values = singular_values(table, proj)
        tables.append({
            "name": name,
            "rows": rows,
            "width": width,
            "hidden_dim": None if proj is None else inner,
            "dtype": str(table.dtype).replace("torch.", ""),
            "bytes": table.numel() * table.element_size() + (0 if proj is None else proj.numel() * proj.element_size()),
            "folded_bytes": rows * width * folded.itemsize,
            "effective_rank": effective_rank(values),
            "singular_values": values.tolist(),
        })
    loadable, why = (False, "no: a state dict, not a DLRM checkpoint; load it with model.load_state_dict "
                            "(fold it first: dlrm-mlet fold, or fold_model)") if plain else stock_verdict(ckpt)
    kind = "MLET (unfolded)" if any(t["hidden_dim"] for t in tables) else "plain stock layout (a baseline or a folded MLET model)"
    if plain:
        kind += ", a state dict"
    if record.get("world_size", 1) > 1:
        kind += f", shard of rank {record['rank']} of {record['world_size']} (local table numbering)"
    return {
        "path": str(path),
        "kind": kind,
        "epoch": ckpt.get("epoch"),
        "iter": ckpt.get("iter"),
        "test_acc": _number(ckpt.get("test_acc")),
        "test_auc": _number(ckpt.get("test_auc")),
        "tables": tables,
        "total_bytes": sum(t["bytes"] for t in tables),
        "total_folded_bytes": sum(t["folded_bytes"] for t in tables),
        "stock_loadable": loadable,
        "stock_note": why,
    }


def _number(value):
    return None if value is None else float(value)


def format_report(info: Mapping[str, Any]) -> str:
    mib = lambda n: f"{n / 2**20:.2f}"  # noqa: E731
    lines = [f"{info['path']}: {info['kind']}"]
    facts = [f"{key} {info[key]}" for key in ("epoch", "iter") if info[key] is not None]
    if info["test_acc"] is not None:
        facts.append(f"test accuracy {100 * info['test_acc']:.3f} %")
    if info["test_auc"] is not None:
        facts.append(f"test AUC {info['test_auc']:.4f}")
    if facts:
        lines.append("saved at " + ", ".join(facts))
    lines.append(f"{'table':<10} {'rows':>10} {'d':>4} {'k':>5} {'dtype':>8} {'MiB':>9} {'folded MiB':>11} "
                 f"{'eff. rank':>9}")
    for t in info["tables"]:
        k = t["hidden_dim"] if t["hidden_dim"] else "-"
        lines.append(f"{t['name']:<10} {t['rows']:>10} {t['width']:>4} {k:>5} {t['dtype']:>8} {mib(t['bytes']):>9} "
                     f"{mib(t['folded_bytes']):>11} {t['effective_rank']:>9.2f}")
    rows = sum(t["rows"] for t in info["tables"])
    mean_rank = sum(t["effective_rank"] for t in info["tables"]) / len(info["tables"])
    lines.append(f"{'total':<10} {rows:>10} {'':>4} {'':>5} {'':>8} {mib(info['total_bytes']):>9} "
                 f"{mib(info['total_folded_bytes']):>11} {mean_rank:>9.2f} (mean)")
    lines.append(f"stock DLRM can load it as is: {info['stock_note']}")
    return "\n".join(lines)


def plot_spectra(info: Mapping[str, Any], out_path: StrPath) -> None:
    """Normalised singular values per table (left) and effective rank per table (right)."""
    plt, matplotlib = pyplot("--plot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("viridis")
    tables = info["tables"]
    for i, t in enumerate(tables):
        s = np.asarray(t["singular_values"])
        if s.size and s[0] > 0:
            left.semilogy(np.arange(1, s.size + 1), s / s[0], color=cmap(i / max(1, len(tables) - 1)),
                          alpha=0.8, lw=1.2, label=t["name"] if len(tables) <= 10 else None)
    left.set(xlabel="singular value index", ylabel="singular value / largest",
             title="Spectrum of each (folded) table")
    left.grid(True, which="both", alpha=0.3)
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # indices are whole numbers
    if len(tables) <= 10:
        left.legend(fontsize=8)
    else:  # too many lines to name: their colour is the table's number
        scale = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(tables) - 1))
        fig.colorbar(scale, ax=left, label="table (emb_l.<i>)", pad=0.01)
    names = [t["name"].replace("emb_l.", "") for t in tables]
    right.bar(names, [t["effective_rank"] for t in tables], color="tab:blue")
    right.axhline(max(t["width"] for t in tables), color="gray", ls="--", lw=1, label="width d")
    right.set(xlabel="table (emb_l.<i>)", ylabel="effective rank", title="Effective rank")
    right.tick_params(axis="x", labelsize=7, rotation=90)
    right.legend(fontsize=8, loc="lower right")  # the bars reach up to d: keep their tops clear
    fig.suptitle(f"{info['path']}: {info['kind']}", fontsize=10)
    fig.tight_layout()
    save(fig, out_path)
