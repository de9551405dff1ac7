"""`lmgolf sweep` and `lmgolf rerun`: study files run as run folders, and a run repeated from its record."""

from __future__ import annotations

import signal
import sys

from lmgolf.errors import LmgolfError


def register(sub) -> None:
    sweep = sub.add_parser("sweep", help="run a study file: every arm x seed as a run folder, results into the store",
                           description="Runs a study file (docs/studies.md). Finished runs are skipped, an interrupted "
                                       "one resumes from its checkpoint, failed ones are recorded and the sweep goes on.")
    sweep.add_argument("study", help="a study file (.toml, or .yaml with pyyaml)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default 1: in this one)")
    what = sweep.add_mutually_exclusive_group()
    what.add_argument("--only", type=int, default=None, metavar="INDEX",
                      help="execute run INDEX only and write its result.json (a scheduler's job, e.g. a Slurm array's "
                           "$SLURM_ARRAY_TASK_ID); add it to the store later with --collect")
    what.add_argument("--list", action="store_true", help="print every run: index, state, folder, command")
    what.add_argument("--collect", action="store_true", help="add every run's result.json to the store, run nothing")
    sweep.add_argument("--retry-failed", action="store_true", help="run failed runs again (from a checkpoint if any)")
    sweep.add_argument("--db", default=None, help="the results database (default: $LMGOLF_RESULTS or runs/results.sqlite)")
    sweep.set_defaults(func=cmd_sweep)

    rerun = sub.add_parser("rerun", help="repeat a finished run from its record and say whether the result matches")
    rerun.add_argument("run", help="a finished run folder")
    rerun.add_argument("--out", required=True, help="the new run folder")
    rerun.add_argument("--data", default=None, help="data folder (default: the run's; its data fingerprint must match)")
    rerun.add_argument("--tolerance", type=float, default=0.0,
                       help="largest difference of a loss that still matches (default 0: exactly)")
    rerun.add_argument("--quiet", action="store_true", help="no progress bar")
    rerun.set_defaults(func=cmd_rerun)


def cmd_sweep(args) -> int:
    from lmgolf.study.sweep import collect, list_runs, load_study, run_one, sweep
    study = load_study(args.study)
    if args.list:
        if args.retry_failed or args.jobs != 1:
            raise LmgolfError("sweep --list: prints the runs; --jobs and --retry-failed are for running them")
        print("\n".join(list_runs(study)))
        print(f"{len(study.runs())} runs; each line's command runs one (a Slurm array: --array=0-{len(study.runs()) - 1} "
              f"with --only $SLURM_ARRAY_TASK_ID), then: lmgolf sweep {args.study} --collect")
        return 0
    if args.collect:
        return 1 if collect(study, args.db).failed else 0
    if args.only is not None:
        if args.jobs != 1:
            raise LmgolfError("sweep --only: executes one run; --jobs is for a whole sweep")
        record = run_one(study, args.only, retry_failed=args.retry_failed)
        return 1 if record is not None and record["status"] != "ok" else 0
    # a scheduler's cancel or timeout (SIGTERM) unwinds like Ctrl-C, so the sweep stops its child processes too
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return 1 if sweep(study, jobs=args.jobs, retry_failed=args.retry_failed, db=args.db).failed else 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_rerun(args) -> int:
    from lmgolf.study.rerun import rerun
    report = rerun(args.run, args.out, data=args.data, tolerance=args.tolerance, progress=not args.quiet)
    print(report.format())
    return 0 if report.matches else 1
