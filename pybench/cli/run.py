"""`pybench run SUITE`: run a suite's cells into a resumable run folder."""

from __future__ import annotations

import argparse
import sys

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError, load_suite


def main(args: argparse.Namespace) -> int:
    from pybench.bench import driver as runner
    from pybench.bench import executors, shard, suite

    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed reruns the failed cells of an earlier run: add --resume (and --out FOLDER "
                         "for a run other than the newest)")
    s = load_suite(args, require_data=not args.dry_run)
    try:
        spec = str(shard.parse_shard(args.shard)) if args.shard else None
        ex = executors.get_executor(args.executor, args.address)  # refuses --address without --executor ray
        ex = None if ex.name == "local" else ex  # None: the runner's own loop
        if ex is not None and not args.dry_run:
            ex.connect()  # an unreachable --address fails here, before a run folder is made
    except (ValueError, ConnectionError, ImportError) as e:
        raise UsageError(str(e)) from None
    try:
        if args.dry_run:
            out = args.out or (runner.latest_run(s, args.results_root) if args.resume else None)
            rp = runner.plan_run(s, out, args.filter, args.retry_failed, spec)
            print(f"# suite {s.name}: {len(rp.cells)} cells ({len(rp.done)} done, {len(rp.todo)} to run) in "
                  f"{len({c.group_id for c in rp.cells})} prune groups; metrics: "
                  f"{', '.join(s.metrics.collect)}; repeats {s.metrics.repeats}")
            print(rp.table())
            return EXIT_OK
        summary = runner.run(s, args.out, resume=args.resume, filters=args.filter, retry_failed=args.retry_failed,
                             progress=not args.no_progress, results_root=args.results_root, executor=ex, shard=spec)
    except (suite.SuiteError, ConnectionError, ImportError) as e:
        raise UsageError(str(e)) from None
    except runner.RunInterrupted as e:
        print(f"pybench run: {e}", file=sys.stderr)
        return e.exit_code
    print(summary.folder)
    if summary.failed:
        print(f"pybench run: {summary.failed} cell(s) failed (their records hold the errors)", file=sys.stderr)
    return summary.exit_code


@COMMANDS.register("run")
def add(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run a suite file into a run folder (resumable)",
                       description="Expand the suite's cells and run them (one worker process per prune group; a "
                       "crash, out-of-memory or timeout fails only that cell), appending one record per cell to "
                       "OUT/records.jsonl.")
    r.add_argument("suite", help="suite file (TOML), e.g. suites/smoke.toml")
    r.add_argument("--out", help="run folder (default results/<suite>/<UTC run id>/)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest run of "
                   "the suite), skipping finished cells")
    r.add_argument("--retry-failed", action="store_true", help="with --resume, run failed cells again")
    r.add_argument("--filter", action="append", metavar="KEY=PAT[,PAT]",
                   help="only cells matching (keys: model, criterion, schedule, level, batch_size, dtype, device, "
                   "seed, cell_id, group_id; glob patterns; repeat to AND)")
    r.add_argument("--dry-run", action="store_true", help="print the cell matrix and exit")
    r.add_argument("--data-root", help="local dataset folder; overrides the suite's [data] root "
                   "(datasets read from a folder: cifar10, cifar100, imagefolder; the generated ones ignore it)")
    r.add_argument("--results-root", default="results", help="where default run folders go (default results/)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    # the names of pybench.bench.executors.EXECUTORS (spelt out: importing the harness would slow every command)
    r.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells run: local worker "
                   "processes (default) or a Ray task per cell")
    r.add_argument("--address", help="with --executor ray: the Ray head HOST:PORT (default: a local Ray instance)")
    r.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based) of the selected cells; join the "
                   "shards with `pybench merge`")
    r.set_defaults(func=main)
