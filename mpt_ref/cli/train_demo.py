"""``mpt-ref train-demo``: the few-shot experiment of spec/training.md, its table, contrasts and caption;
``--json`` for the numbers, ``--plot`` for the picture (optional ``plot`` extra)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from mpt_ref.cli._args import add_json, positive_int, refuse_existing, report_stream, seed_int, write_json
from mpt_ref.errors import OutputExistsError
from mpt_ref.train.data import FAMILIES

SOURCE_NAME = "mpt_source.safetensors"  # replicate 0's distilled source checkpoint in --out


def shot_list(text: str) -> tuple[int, ...]:
    """An argparse ``type``: comma-separated distinct examples-per-class counts >= 1."""
    try:
        shots = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 such as 4,16,32, got {text!r}") from None
    if any(k < 1 for k in shots) or len(set(shots)) != len(shots):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 1 such as 4,16,32, got {text!r}")
    return tuple(sorted(shots))


def progress(message: str) -> None:
    """Progress on stderr (module level: the replicate processes call it by name)."""
    print(message, file=sys.stderr, flush=True)


def _check_outputs(args: argparse.Namespace, replicates: int) -> None:
    """Refuse unusable outputs before a run of minutes, not after."""
    from mpt_ref.train.experiment import checkpoint_name

    refuse_existing("--json", args.json, args.force)
    refuse_existing("--plot", args.plot, args.force)
    if args.plot:
        from mpt_ref.train.plot import require_matplotlib

        require_matplotlib()
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"--out: expected a directory, got an existing file {args.out}")
        out.mkdir(parents=True, exist_ok=True)
        for r in range(replicates):
            source = out / checkpoint_name(r)
            if (source.exists() or source.is_symlink()) and not args.force:
                raise OutputExistsError(f"--out: expected a directory without {source.name}, got {source} existing "
                                        "(pass --force to replace it)")


TOP_PAD = 64 << 20  # bytes glibc keeps at the top of the heap after a free (its default: 128 KiB)


def keep_heap() -> bool:
    """Ask glibc's malloc to keep 64 MiB at the top of the heap instead of giving it back on every free.

    The training loop frees and re-allocates ~200 KiB activations thousands of times a second; with the
    default padding each cycle returned the pages to the kernel and faulted them in again: 1.9 of 4.4 s of
    `train-demo --quick` were system time (measured: 4.4 s -> 2.2 s wall, system 1.9 s -> 0.04 s). Forked
    replicate workers inherit the setting. A no-op (False) where the C library has no mallopt (musl,
    macOS, Windows)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TOP_PAD = -2  # malloc.h
    return bool(mallopt(M_TOP_PAD, TOP_PAD))


def _main(args: argparse.Namespace) -> int:
    import tempfile

    from mpt_ref.io.atomic import atomic_write_bytes
    from mpt_ref.train.experiment import QUICK, Settings, check, run
    from mpt_ref.train.report import caption, format_table, markdown_table, summarize

    s = QUICK if args.quick else Settings()
    changes = {k: v for k, v in (("replicates", args.replicates), ("shots", args.shots), ("family", args.family),
                                 ("seed", args.seed)) if v is not None}
    s = check(dataclasses.replace(s, **changes))
    _check_outputs(args, s.replicates)
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    keep_heap()
    t0, c0 = time.perf_counter(), time.process_time()
    progress(f"train-demo: {s.replicates} replicate(s) of the {s.family!r} family, shots {list(s.shots)}, "
             f"{jobs} process{'es' if jobs > 1 else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        reps = run(s, Path(args.out or tmp), progress=progress, jobs=jobs)
    doc = summarize(reps, s)
    out = report_stream(args)
    print(format_table(doc), file=out)
    print("\n" + caption(doc), file=out)
    if args.markdown:
        print("\n" + markdown_table(doc), file=out)
    write_json(args.json, doc, args.force)
    if args.plot:
        from mpt_ref.train.plot import png_bytes

        atomic_write_bytes(args.plot, png_bytes(doc), overwrite=args.force)
        progress(f"wrote {args.plot}")
    progress(f"train-demo finished in {time.perf_counter() - t0:.1f} s wall "
             f"({sum(r['seconds'] for r in reps):.1f} s in replicates, {time.process_time() - c0:.1f} s CPU here)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-demo", help="a few-shot experiment: MPT (source stage with distillation, target "
                                          "adaptation) against prompt tuning and P-tuning baselines, with 95 %% CIs")
    p.add_argument("--quick", action="store_true", help="1 replicate, fewer tasks and steps (a smoke run, ~2 s)")
    p.add_argument("--replicates", type=positive_int, help="independent replicates (default 4; each a new base "
                                                           "model, new tasks, new source stage)")
    p.add_argument("--shots", type=shot_list, help="target training examples per class, comma-separated "
                                                   "(default 4,16,32)")
    p.add_argument("--family", choices=FAMILIES, help="task family (default lexicon; 'unrelated' is the control "
                                                      "where tasks share nothing)")
    p.add_argument("--seed", type=seed_int, help="seed of the whole run (default 0); equal seeds give equal output")
    p.add_argument("--jobs", type=positive_int, help="processes running replicates (default min(2, CPUs)); "
                                                     "results do not depend on it")
    p.add_argument("--markdown", action="store_true", help="also print the README's markdown tables for this run")
    add_json(p, "the results (chance, results, contrasts, source accuracies, curves)")
    p.add_argument("--plot", metavar="PATH.png", help="write the figure as PNG (needs the plot extra: "
                                                      "pip install 'mpt-ref[plot]')")
    p.add_argument("--out", help=f"directory for the distilled MPT source checkpoints ({SOURCE_NAME} is "
                                 "replicate 1's; default: a temporary directory)")
    p.add_argument("--force", action="store_true", help="replace existing --out checkpoints, --json or --plot files")
    p.set_defaults(func=_main)
