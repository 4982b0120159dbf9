"""The ``dlrm-mlet`` command: one subcommand per job, argparse all the way.

Every subcommand turns bad input (``MLETError``) into one line on stderr and
exit status 2; ``verify`` exits 1 when a table is outside tolerance.
"""

import argparse
import sys
from typing import NoReturn, Optional, Sequence

from . import __version__
from . import commands
from .errors import MLETError, integer


def _positive_int(text):
    try:
        return integer(text, "value", 1, text=True)
    except MLETError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None


DEFAULT_LRS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # sweep's grid: SGD at batch 128, baseline and MLET optima inside


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _float_list(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def _int_list(text, least=1):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {least}, got {text!r}")
    return values


def _precisions(text):
    """sweep --quantize: stock DLRM's bit widths (8, 4) and onnx."""
    from .tools.serving import PRECISIONS  # torch-free

    values = [int(v) if v.strip().isdigit() else v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected 8, 4 and/or onnx, comma-separated, got {text!r}")
    return values


def _default_dlrm_dir():
    from .dlrm.script import default_dlrm_dir

    return default_dlrm_dir()


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (the usage text stays behind --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_fold(sub):
    p = sub.add_parser("fold", help="fold an MLET checkpoint into a stock DLRM checkpoint")
    p.add_argument("input", help="MLET checkpoint (e.g. model.pt.mlet)")
    p.add_argument("output", help="where to write the folded, stock-loadable checkpoint")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_fold)


def _add_onnx_int8(sub):
    p = sub.add_parser("onnx-int8", help="an exported model (--save-onnx) served int8 by ONNX Runtime: "
                                         "tables row-wise int8, the MLPs by ONNX Runtime's dynamic quantization")
    p.add_argument("input", help="the ONNX file (e.g. dlrm_s_pytorch.onnx)")
    p.add_argument("output", help="where to write the int8 ONNX file")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=commands.cmd_onnx_int8)


def _add_verify(sub):
    p = sub.add_parser("verify", help="check folded outputs equal MLET outputs, per table")
    p.add_argument("input", help="MLET checkpoint")
    p.add_argument("--against", metavar="FOLDED", help="compare with this folded checkpoint "
                   "instead of folding in memory")
    p.add_argument("--bags", type=_positive_int, default=512, help="random bags per mode (512)")
    p.add_argument("--max-bag", type=_positive_int, default=20, help="largest bag size (20)")
    p.add_argument("--tolerance", type=_nonnegative_float, default=1e-5,
                   help="allowed max |diff| relative to the largest output (1e-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=commands.cmd_verify)


def _add_patch(sub):
    p = sub.add_parser("patch", help="apply the MLET patch to a DLRM checkout (or remove it)")
    p.add_argument("dlrm_dir", metavar="DLRM_DIR", help="facebookresearch/dlrm checkout at the pinned commit")
    p.add_argument("--reverse", action="store_true", help="remove the patch")
    p.add_argument("--check", action="store_true", help="only say whether it would apply")
    p.set_defaults(func=commands.cmd_patch)


def _add_run(sub):
    p = sub.add_parser(
        "run", help="run an unmodified DLRM with MLET: dlrm-mlet run DLRM_DIR/dlrm_s_pytorch.py ARGS",
    )
    p.add_argument("script", help="path to DLRM's dlrm_s_pytorch.py")
    p.add_argument("dlrm_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="DLRM's arguments plus --mlet-hidden-dim and the other --mlet-* options")
    p.set_defaults(func=commands.cmd_run)


def _add_synth(sub):
    p = sub.add_parser("synth", help="write synthetic clicks in Criteo-Kaggle's format (the embedded default "
                                     "dataset), as text or, at any size, as DLRM's processed file")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for train.txt, train_prob.txt, synth.json (or, with "
                   "--processed, DLRM's processed .npz and day counts)")
    p.add_argument("--rows", "--samples", dest="rows", type=_positive_int, required=True,
                   help="number of samples (Criteo-Kaggle has 45840617)")
    p.add_argument("--processed", action="store_true",
                   help="write DLRM's processed Criteo-Kaggle files directly (kaggleAdDisplayChallenge_processed.npz, "
                        "train_day_count.npz), uncompressed, in bounded memory: minutes at full size, where text "
                        "and DLRM's preprocessing take hours")
    p.add_argument("--support", choices=["published", "calibrated"],
                   help="each table's value support: its size (published), or widened until the values seen in "
                        "Criteo-Kaggle's sample count times --scale number its size (calibrated: the law behind "
                        "docs/results/criteo_regime.md; ids then exceed text's 31 bits at --scale 1). "
                        "Default: calibrated with --processed, published for text")
    p.add_argument("--seed", type=int, help="random seed (0); the same seed gives the same bytes")
    p.add_argument("--scale", type=_positive_float,
                   help="table sizes as a fraction of Criteo-Kaggle's (0.01)")
    p.add_argument("--rank", type=_positive_int, help="size of the latent click model's vectors (8)")
    p.add_argument("--zipf", type=_positive_float,
                   help="skew of each feature's value frequencies, P(id) ~ (id+1)^-ZIPF (1.1); smaller: more rare rows")
    p.add_argument("--days", type=_positive_int,
                   help="write OUT_DIR/day_0 .. day_<DAYS-1> (Criteo-Terabyte layout, e.g. 24) instead of train.txt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR/train.txt (or day_0..) if it exists")
    p.set_defaults(func=commands.cmd_synth)


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="explain a checkpoint: tables, bytes, effective rank, stock-loadable")
    p.add_argument("checkpoint", help="folded, unfolded (.mlet) or plain DLRM checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON (with full spectra)")
    p.add_argument("--plot", metavar="OUT.png", help="also plot the singular-value spectra")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_inspect)


def _add_sweep(sub):
    p = sub.add_parser("sweep", help="the paper's experiment: baseline and MLET over d and k, to a CSV")
    p.add_argument("--data-set", choices=["kaggle", "avazu"], default="kaggle")
    p.add_argument("--raw-data-file", required=True, help="Criteo-Kaggle train.txt or Avazu train.csv (need not "
                   "exist when DLRM's processed file is given: -- --processed-data-file=PATH)")
    p.add_argument("--out", required=True, help="results CSV (appended to; finished runs are kept)")
    p.add_argument("--dlrm-dir", default=_default_dlrm_dir(),
                   help="DLRM checkout at the pinned commit (default: $DLRM_DIR or the cache folder)")
    p.add_argument("--d", type=_int_list, default=[4, 8, 16, 32, 64], help="widths (4,8,16,32,64)")
    p.add_argument("--k", type=lambda text: _int_list(text, 0), default=[64, 128, 256, 512],
                   help="MLET hidden widths (64,128,256,512); 0 is the baseline, so --k 0 runs baselines only")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0],
                   help="numpy seeds, comma-separated (0)")
    p.add_argument("--lrs", type=_float_list, default=DEFAULT_LRS,
                   help="learning rates, comma-separated; each arm's is chosen on the validation split "
                        f"({','.join(map(str, DEFAULT_LRS))})")
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--jobs", type=_positive_int, default=1, help="DLRM runs at once, sharing the cores (1)")
    p.add_argument("--no-baseline", action="store_true",
                   help="only the MLET arms (to compare an MLET option against baselines in another CSV)")
    p.add_argument("--regime", default="",
                   help="a name for this data in the CSV, so one CSV (and one report) can hold several datasets")
    p.add_argument("--quantize", type=_precisions, default=[], metavar="8,4,onnx",
                   help="also score each saved model as served quantized, comma-separated: 8 and 4 for stock "
                        "DLRM's 8- and 4-bit tables (--quantize-emb-with-bit), onnx for its ONNX export in ONNX "
                        "Runtime, int8 (needs onnxruntime); plain tables only. Added to a finished sweep, "
                        "it retrains the runs that lack it")
    p.add_argument("--checkpoint-every", type=_positive_int, default=0, metavar="N",
                   help="each run keeps a resumable checkpoint every N batches (a multiple of DLRM's --print-freq, "
                        "1024): a sweep stopped in a long run resumes it there, not from its start")
    p.add_argument("--work", help="folder for the patched DLRM copy and logs (default: next to --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("dlrm_args", nargs=argparse.REMAINDER, metavar="-- DLRM_ARGS",
                   help="more DLRM arguments for every run, after -- (--mlet-* ones for the MLET runs only)")
    p.set_defaults(func=commands.cmd_sweep)


def _add_report(sub):
    p = sub.add_parser("report", help="tables (lr chosen on validation), AUC-vs-size plot and iso-AUC savings "
                                      "of a sweep")
    p.add_argument("results", nargs="+", help="the sweep's CSV (several: their rows together)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="plot file (default: the first CSV's name with .png, when matplotlib is installed)")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the report's markdown to this file")
    p.add_argument("--map-plot", metavar="OUT.png",
                   help="also plot each regime's saving and gain against its rare-lookup share")
    p.add_argument("--map-json", metavar="OUT.json",
                   help="also write each regime's figures as JSON (what `dlrm-mlet data` compares data with)")
    p.add_argument("--oracle", metavar="synth.json", help="show the oracle AUC of a synthetic dataset")
    p.add_argument("--title", help="plot title")
    p.add_argument("--single-lr", type=float, default=0.1,
                   help="the one learning rate to compare the tuned figures against")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_report)


def _add_frontier(sub):
    p = sub.add_parser("frontier", help="served size against tuned AUC across table configurations and "
                                        "int8/int4/ONNX int8 serving: the Pareto set and the compression at the baseline's AUC")
    p.add_argument("results", nargs="+", help="sweep CSVs (plain, QR and MD tables, with and without MLET; "
                                              "quantized serving from sweep --quantize)")
    p.add_argument("--plot", metavar="OUT.png", help="plot file (default: the first CSV's name with "
                                                     "_frontier.png, when matplotlib is installed)")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the markdown to this file")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=commands.cmd_frontier)


def _add_data(sub):
    p = sub.add_parser("data", help="how often each embedding row is trained (the rare-lookup share), "
                                    "and what the map measured near it")
    p.add_argument("path", metavar="PATH", help="DLRM's processed data: the processed .npz (Kaggle or Terabyte), "
                   "a <stem>_<i>_reordered.npz day file (--memory-map), a <stem>_train.bin (--mlperf-bin-loader) "
                   "or an Avazu cache folder")
    p.add_argument("--max-ind-range", type=int, default=-1, metavar="R",
                   help="DLRM's --max-ind-range: indices taken modulo R, as DLRM's loaders take them")
    p.add_argument("--map", metavar="MAP.json", help="compare with this map (dlrm-mlet report --map-json) "
                   "instead of the one installed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_data)


def _add_advise(sub):
    p = sub.add_parser("advise", help="will MLET pay on this data? a short tuned pilot on a subsample of it, "
                                      "then a verdict, the detail and the cost of the full run")
    p.add_argument("path", metavar="PROCESSED", help="DLRM's processed Criteo .npz "
                   "(kaggleAdDisplayChallenge_processed.npz or terabyte_processed.npz; its <stem>_day_count.npz "
                   "beside it), one of its memory-map day files (day_0_reordered.npz) or an Avazu cache folder "
                   "(avazu_processed/)")
    p.add_argument("--minutes", type=_positive_float, default=60.0,
                   help="time for the pilot (60): it sizes the subsample and how many seeds and lrs it tries")
    p.add_argument("--d", type=_positive_int, default=16, help="the model's width d (16): baselines at d/4, d, 4d, "
                   "MLET at d/4 and d")
    p.add_argument("--k", type=_positive_int, default=64, help="MLET's hidden width k (64)")
    p.add_argument("--samples", type=_positive_int, help="the pilot's samples (default: what fits --minutes)")
    p.add_argument("--jobs", type=_positive_int, default=2, help="runs at once, sharing the cores (2)")
    p.add_argument("--dlrm-dir", default=_default_dlrm_dir(),
                   help="DLRM checkout at the pinned commit (default: $DLRM_DIR or the cache folder)")
    p.add_argument("--work", help="folder for the pilot's data and runs (default: beside PROCESSED)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_advise)


def _add_plan(sub):
    from .core.budget import DEFAULT_RULE, OPTIMIZERS, RULE_HELP  # torch-free, like everything --help needs

    p = sub.add_parser("plan", help="the k per table that fits a training-memory budget, without training")
    p.add_argument("--budget", "--mlet-memory-budget", dest="budget", required=True, metavar="SIZE",
                   help="memory for the embedding tables while training: 24GiB, 500MB, 1.5GiB, or bytes")
    p.add_argument("--mlet-hidden-dim", required=True, metavar="K", help="the largest k a table may get")
    p.add_argument("--arch-sparse-feature-size", metavar="D", help="the model's width d (not with --tables)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch-embedding-size", metavar="N1-N2-...", help="table sizes, as DLRM takes them")
    source.add_argument("--processed-data-file", metavar="PATH",
                        help="DLRM's processed Criteo .npz or _fea_count.npz, or an Avazu cache folder")
    source.add_argument("--tables", metavar="TABLES.json",
                        help='TorchRec tables: [{"name": ..., "num_embeddings": N, "embedding_dim": D}, ...]')
    p.add_argument("--optimizer", default="sgd", help=f"DLRM's optimizer: {', '.join(OPTIMIZERS)} (sgd)")
    p.add_argument("--mlet-table-dtype", default="fp32", metavar="DTYPE", help="fp32 (default), fp16 or bf16")
    p.add_argument("--mlet-min-rows", default="0", metavar="N", help="tables with fewer than N rows stay plain")
    p.add_argument("--rule", default=DEFAULT_RULE,
                   help=f"{RULE_HELP} (default {DEFAULT_RULE})")
    p.add_argument("--max-ind-range", default="-1", metavar="R", help="table sizes capped at R, as DLRM caps them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dlrm-mlet",
        description="Multi-layer embedding training (MLET) for facebookresearch/dlrm.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_fold, _add_onnx_int8, _add_verify, _add_patch, _add_run, _add_synth, _add_inspect, _add_sweep, _add_report,
                _add_frontier, _add_data, _add_advise, _add_plan):
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MLETError as error:
        print(f"dlrm-mlet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlrm-mlet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
