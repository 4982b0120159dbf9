"""What each ``dlrm-mlet`` command does, given its parsed arguments (``cli.py`` parses them).

Each command imports its own modules when it runs, so ``dlrm-mlet --help``
and the commands that need no torch (``patch``, ``synth``, ``report``,
``data``, ``plan``) start in a fraction of a second.
"""

import argparse
import json
import os

from .errors import MLETError


def _mib(nbytes):
    return f"{nbytes / 2**20:.2f} MiB"


def _tensor_bytes(obj):
    """Bytes of every tensor in a checkpoint (nested dicts and lists)."""
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _check_room(path, size):
    """Refuse, before the work, a file that would not fit where it goes (with the runs' margin)."""
    from .core.budget import format_bytes
    from .dlrm.space import MARGIN, MARGIN_BYTES, free_bytes

    want, have = int(size * MARGIN) + MARGIN_BYTES, free_bytes(path)
    if have < want:
        raise MLETError(f"{path}: needs {format_bytes(want)} free with a margin, its folder has {format_bytes(have)}; "
                        "free some space or write elsewhere")


def cmd_fold(args: argparse.Namespace) -> int:
    from .core.folding import TABLE_KEY, mlet_prefixes, mlet_table_bytes
    from .checkpoint_io import atomic_save, load_model_file
    from .core.folding import fold_state_dict
    from .dlrm.checkpoints import fold_checkpoint
    from .progress import progress_bar

    if os.path.exists(args.output) and os.path.samefile(args.input, args.output):
        raise MLETError(f"{args.output}: refusing to fold a checkpoint onto itself")
    if os.path.exists(args.output) and not args.force:
        raise MLETError(f"{args.output} exists; pass --force to replace it")
    ckpt, plain = load_model_file(args.input)
    prefixes = mlet_prefixes(ckpt["state_dict"])
    if not prefixes:
        raise MLETError(f"{args.input}: no MLET tables (is it already folded?)")
    rows = sum(ckpt["state_dict"][p + TABLE_KEY].shape[0] for p in prefixes)
    before, after = mlet_table_bytes(ckpt["state_dict"])
    _check_room(args.output, _tensor_bytes(ckpt) - before + after)
    try:
        with progress_bar(rows, "fold", quiet=args.quiet) as bar:
            # a state dict stays a state dict (it loads into the model to_mlet came from, folded)
            folded = fold_state_dict(ckpt["state_dict"], bar.update) if plain else fold_checkpoint(ckpt, bar.update)
    except MLETError as error:
        raise MLETError(f"{args.input}: {error}") from None
    atomic_save(folded, args.output)
    print(
        f"folded {len(prefixes)} MLET tables: embedding weights "
        f"{_mib(before)} -> {_mib(after)}; wrote {args.output}"
    )
    return 0


def cmd_onnx_int8(args: argparse.Namespace) -> int:
    from .dlrm.onnx_int8 import quantize_file

    tables = quantize_file(args.input, args.output, force=args.force)
    print(f"{len(tables)} tables row-wise int8 ({', '.join(tables)}), the MLPs int8; wrote {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .checkpoint_io import load_dlrm_checkpoint
    from .tools.verify import verify_state_dict

    ckpt = load_dlrm_checkpoint(args.input)
    folded = load_dlrm_checkpoint(args.against)["state_dict"] if args.against else None
    try:
        checks = verify_state_dict(
            ckpt["state_dict"], folded, folded_name=args.against, bags=args.bags, max_bag=args.max_bag,
            tolerance=args.tolerance, seed=args.seed,
        )
    except MLETError as error:
        message = str(error)
        raise MLETError(message if args.against and message.startswith(args.against) else f"{args.input}: {message}") \
            from None
    if args.json:
        rows = [dict(vars(c), ok=c.ok) for c in checks]
        print(json.dumps({"tables": rows, "ok": all(c.ok for c in checks)}, indent=2))
    else:
        print(f"{'table':<12} {'rows':>10} {'k':>5} {'d':>4} {'max |diff|':>11} {'scale':>10}  result")
        for c in checks:
            verdict = "ok" if c.ok else f"FAIL (> {c.tolerance:g} x scale)"
            print(
                f"{c.name:<12} {c.rows:>10} {c.hidden_dim:>5} {c.embedding_dim:>4} "
                f"{c.max_abs_diff:>11.3e} {c.output_scale:>10.3e}  {verdict}"
            )
        bad = sum(not c.ok for c in checks)
        print(f"{len(checks) - bad}/{len(checks)} tables within tolerance")
    return 0 if all(c.ok for c in checks) else 1


def cmd_patch(args: argparse.Namespace) -> int:
    from .dlrm.patching import patch_checkout
    from .dlrm.script import SCRIPT

    folder = args.dlrm_dir
    if os.path.basename(os.path.normpath(folder)) == SCRIPT and os.path.isfile(folder):
        folder = os.path.dirname(os.path.abspath(folder))  # the script named: its checkout is meant
    print(patch_checkout(folder, reverse=args.reverse, check_only=args.check))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .dlrm.launcher import run_script
    from .dlrm.script import SCRIPT

    script = os.path.join(args.script, SCRIPT) if os.path.isdir(args.script) else args.script  # a checkout named
    return run_script(script, args.dlrm_args)


def cmd_synth(args: argparse.Namespace) -> int:
    from .tools.synth import write_synthetic, write_synthetic_days

    options = {k: getattr(args, k) for k in ("seed", "scale", "rank", "zipf", "support") if getattr(args, k) is not None}
    if args.processed:
        from .tools.synth_processed import write_processed

        if args.days:
            raise MLETError("--days writes Criteo-Terabyte text day files; --processed writes Kaggle's processed file")
        info = write_processed(args.out_dir, args.rows, progress=not args.quiet, force=args.force, **options)
        print(f"wrote {info['rows']} samples to {os.path.join(args.out_dir, info['files']['processed'])} "
              f"({sum(info['table_sizes'])} table rows): base CTR {info['base_ctr']:.4f}, oracle AUC "
              f"{info['oracle_auc']:.4f} (test split {info['test']['oracle_auc']:.4f}); DLRM's flags: "
              + " ".join(info["dlrm_flags"]))
        return 0
    if args.days:
        info = write_synthetic_days(args.out_dir, args.rows, args.days, progress=not args.quiet,
                                    force=args.force, **options)
        print(f"wrote {info['rows']} rows to {os.path.join(args.out_dir, 'day_0')} .. day_{args.days - 1} "
              f"(Criteo-Terabyte layout): base CTR {info['base_ctr']:.4f}, oracle AUC {info['oracle_auc']:.4f}")
        return 0
    info = write_synthetic(args.out_dir, args.rows, progress=not args.quiet, force=args.force, **options)
    print(
        f"wrote {info['rows']} rows to {os.path.join(args.out_dir, 'train.txt')}: base CTR "
        f"{info['base_ctr']:.4f}, oracle AUC {info['oracle_auc']:.4f}, oracle log loss "
        f"{info['oracle_log_loss']:.4f} (train_prob.txt, synth.json)"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .progress import progress_bar
    from .tools.inspection import format_report, inspect_checkpoint, plot_spectra

    with progress_bar(None, "inspect", quiet=args.quiet, unit=" tables") as bar:
        info = inspect_checkpoint(args.checkpoint, progress=lambda name: bar.update())
    if args.plot:
        plot_spectra(info, args.plot)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_report(info))
        if args.plot:
            print(f"spectrum plot: {args.plot}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .tools.sweep import run_sweep

    rows = run_sweep(args.dlrm_dir, args.data_set, args.raw_data_file, args.out, args.d, args.k,
                     args.seeds, lrs=args.lrs, epochs=args.epochs, work=args.work, extra_args=args.dlrm_args,
                     quiet=args.quiet, jobs=args.jobs, baseline=not args.no_baseline, regime=args.regime,
                     quantize=args.quantize, checkpoint_every=args.checkpoint_every)
    print(f"{len(rows)} runs in {args.out}; see them with: dlrm-mlet report {args.out}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from .tools.advise import advise

    lines, _ = advise(args.path, args.minutes, args.dlrm_dir, args.d, args.k, args.work, args.samples, args.jobs,
                      args.quiet)
    print("\n".join(lines))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .progress import progress_bar
    from .tools.report import report

    png, markdown, map_png, map_json = _not_kept(args, _plot_path(args, ".png"), args.markdown, args.map_plot,
                                                 args.map_json)
    with progress_bar(3, "report", quiet=args.quiet, unit=" stages") as bar:
        text = report(args.results, png, args.oracle, args.title, progress=bar.update, single_lr=args.single_lr,
                      map_png=map_png, map_json=map_json)
    _print_written(args, text, markdown, png, map_png)
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from .tools.frontier import frontier

    png, markdown = _not_kept(args, _plot_path(args, "_frontier.png"), args.markdown)
    _print_written(args, frontier(args.results, png, args.title), markdown, png)
    return 0


def _plot_path(args, suffix):
    """The plot: when asked, or by default beside the first CSV when matplotlib is there."""
    from .tools.plots import has_matplotlib

    return args.plot or (os.path.splitext(args.results[0])[0] + suffix if has_matplotlib() else None)


def _not_kept(args, *outputs):
    """``outputs`` with None for each that exists and is kept (no ``--force``); the tables print anyway."""
    args.kept = [path for path in outputs if path and os.path.exists(path) and not args.force]
    return [None if path in args.kept else path for path in outputs]


def _print_written(args, text, markdown, png, map_png=None):
    """The text (and ``--markdown``), then where the files went, which were kept, or why there is no plot."""
    from .files import atomic_write_text

    if markdown:
        atomic_write_text(markdown, text + "\n")
    print(text)
    lines = [f"{what}: {path}" for what, path in (("plot", png), ("map plot", map_png)) if path]
    lines += [f"{path} exists: kept (pass --force to replace it)" for path in args.kept]
    if not lines and not getattr(args, "plot", None):
        lines = ["(no plot: matplotlib is not installed; pip install matplotlib)"]
    print("\n" + "\n".join(lines))


def cmd_data(args: argparse.Namespace) -> int:
    from .tools.data_report import data_report, format_data_report

    info = data_report(args.path, args.max_ind_range, args.quiet, **({"map_path": args.map} if args.map else {}))
    print(json.dumps(info, indent=1) if args.json else format_data_report(info))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .tools.plan import plan_command

    print(plan_command(args))
    return 0
