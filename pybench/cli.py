"""The ``pybench`` command: a thin shell over the library.

Exit codes: 0 success; 1 the command ran but something it checks failed (a cell failed in ``run``, a regression
in ``check``, a benchmark target missed with ``ops-bench --strict``); 2 bad usage or bad input (argparse's
convention: an unknown option, a malformed suite file, a run folder that is not there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input found after argument parsing; printed and turned into exit code 2."""


def _ops_bench(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure, opsbench

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"pybench ops-bench: --device {args.device} asked for, but no CUDA GPU is visible here; "
              "use --device cpu", file=sys.stderr)
        return EXIT_USAGE
    sizes = args.sizes or ("all" if args.device.startswith("cuda") else "layers")
    pool = {"layers": opsbench.cases(), "large": opsbench.large_cases(), "all": opsbench.cases(large=True)}[sizes]
    selected = [c for c in pool if not args.op or c.op in args.op]
    env = measure.environment().to_dict()
    print(f"# pybench ops-bench on {args.device}: {env.get('cpu_model')} ({env.get('torch_threads')} threads), "
          f"{', '.join(g.get('name', '?') for g in env.get('gpus') or []) or 'no GPU'}; torch {env.get('torch')}; "
          f"ops backend: {env.get('pybench_backend')}", flush=True)
    bw = opsbench.bandwidth(args.device, repeats=args.repeats)
    rows = opsbench.run(args.device, repeats=args.repeats, selected=selected, copy_gbs=bw["copy_gbs"],
                        progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    print(opsbench.table(rows, bw))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "bandwidth": bw,
                                               "rows": [r.to_dict() for r in rows]}, indent=2))
        print(f"\nwrote {args.json}")
    missed = [r for r in rows if not r.ratio_met or r.bandwidth_met is False]
    if missed and args.strict:
        print(f"{len(missed)} case(s) missed their speedup or bandwidth target", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _zoo(args: argparse.Namespace) -> int:
    from pybench import zoo

    for name in zoo.names():
        print(name)
    return EXIT_OK


def _load_suite(args: argparse.Namespace, require_data: bool) -> object:
    from pybench import suite

    try:
        return suite.load(args.suite, data_root=args.data_root, require_data=require_data)
    except suite.SuiteError as e:
        raise UsageError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    from pybench import executors, runner, shard, suite

    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed reruns the failed cells of an earlier run: add --resume (and --out FOLDER "
                         "for a run other than the newest)")
    s = _load_suite(args, require_data=not args.dry_run)
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
                  f"{', '.join(s.metrics['collect'])}; repeats {s.metrics['repeats']}")
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


def _merge(args: argparse.Namespace) -> int:
    from pybench import shard

    try:
        res = shard.merge(args.shards, args.out, require_complete=args.require_complete)
    except (shard.MergeError, ValueError) as e:
        raise UsageError(str(e)) from None
    for w in res.warnings:
        print(f"pybench merge: warning: {w}", file=sys.stderr)
    print(res.summary())
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    import warnings

    from pybench import report
    from pybench.results import CorruptRecordsWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CorruptRecordsWarning)
            md, html = report.write(args.runs, out_dir=args.out, title=args.title)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write the report there ({e.strerror or e})") from None
    for w in caught:
        if issubclass(w.category, CorruptRecordsWarning):
            print(f"pybench report: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        print(md.read_text())
    print(f"wrote {md} and {html}", file=sys.stderr)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from pybench import compare

    try:
        res = compare.compare(args.a, args.b, labels=(args.label_a, args.label_b))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(res.markdown())
    if args.html:
        try:
            Path(args.html).write_text(res.html())
        except OSError as e:
            raise UsageError(f"--html {args.html}: cannot write the page there ({e.strerror or e})") from None
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _threshold(text: str) -> float:
    """``5%`` or a fraction below 1 (``0.05``); a bare ``5`` is refused rather than read as 500 %."""
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1]) / 100 if pct else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 5% or a fraction like 0.05, got {text!r}") \
            from None
    if not pct and value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} would mean {value:.0%}; write a percentage ({t}%) or a fraction "
                                         f"below 1 ({value / 100:g})")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a threshold between 0 and 100% (e.g. 5%), got {text!r}")
    return value


def _check(args: argparse.Namespace) -> int:
    from pybench import compare

    try:
        res = compare.check(args.run, args.baseline, threshold=args.threshold, metrics=args.metric,
                            allow_foreign_baseline=args.allow_foreign_baseline)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(res.markdown())
    return EXIT_FAILED if res.failed else EXIT_OK


def _input(args: argparse.Namespace, name: str | None) -> tuple[int, ...]:
    from pybench import zoo

    if args.input_size:
        return tuple(args.input_size)
    if name is None:
        raise UsageError("--input-size is needed for a model loaded from a file (e.g. --input-size 3 32 32)")
    return zoo.input_size(name)


def _model(args: argparse.Namespace) -> tuple[object, str | None]:
    """(model, zoo name or None) from a zoo name, a model reference or a file saved by pybench prune / pb.save."""
    from pybench import serialize, zoo

    p = Path(args.model)
    if p.is_file():
        try:  # only pb.save's format: a whole-module pickle would run code from the file
            return serialize.load(p, trust=args.trust or ()), None
        except (ValueError, PermissionError, zoo.MissingExtraError) as e:
            raise UsageError(str(e)) from None
        except Exception as e:  # torch.load's unpickling errors come in many types
            raise UsageError(f"model file {str(p)!r} could not be read as a pybench model file ({type(e).__name__}: "
                             f"{e}); write it with `pybench prune --output` or pb.save") from None
    try:
        known = zoo.known(args.model)
    except (zoo.MissingExtraError, zoo.ModelReferenceError) as e:
        raise UsageError(str(e)) from None
    if not known and not args.model.startswith(zoo.TIMM_PREFIX):  # an unknown timm name: create says which exist
        raise UsageError(f"model {args.model!r}: neither a file nor a zoo name (`pybench zoo` lists them; "
                         "timm:NAME names timm's models, package.module:callable your own builder)")
    try:
        return zoo.create(args.model, num_classes=args.num_classes, weights=args.weights).eval(), args.model
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise UsageError(str(e)) from None


def _prune(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure, runner

    model, name = _model(args)
    x = torch.randn(1, *_input(args, name))
    cfg = {"criterion": args.criterion, "schedule": args.schedule, "level": args.ratio, "seed": args.seed,
           "model_config": {"input_size": list(x.shape[1:])},
           "prune": {"scope": args.scope, "round_to": args.round_to, "min_channels": 1, "ignore": args.ignore or [],
                     "calibration_batches": 0, "example_batch_size": 1, "criterion_options": {},
                     "schedule_options": {}}}
    try:
        pruned = runner.prune_model(model, cfg, None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # the model does not take this input (a shape mismatch, a wrong channel count)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"the model does not run on an input of size {tuple(x.shape)} ({first}); give the size it "
                         "takes with --input-size (without the batch dim)") from None
    before, after = measure.flops(model, x), measure.flops(pruned, x)
    print(f"params {before.params:,} -> {after.params:,} ({after.params / before.params:.1%} kept); "
          f"MACs {before.total_macs:,} -> {after.total_macs:,} ({after.total_macs / before.total_macs:.1%} kept)")
    from pybench.worker import pins_of

    pins = pins_of(model, cfg)
    print(f"pinned: {pins['pinned']:,} of {pins['channels']:,} channels cannot be pruned"
          + (":" if pins["reasons"] else ""))
    for reason, n in pins["reasons"]:
        print(f"  {n:>7,}  {reason}")
    if args.output:
        from pybench import serialize

        try:
            serialize.save(pruned, args.output)
        except ValueError as e:
            raise UsageError(f"--output {args.output}: {e}") from None
        except (OSError, RuntimeError) as e:  # torch.save reports a missing folder as a RuntimeError
            raise UsageError(f"--output {args.output}: cannot write the model there ({e})") from None
        print(f"wrote {args.output}")
    return EXIT_OK


def _profile(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure, runner

    model, name = _model(args)
    x = torch.randn(1, *_input(args, name))
    cfg = {"criterion": args.criterion, "schedule": "one_shot", "level": args.ratio, "seed": 0,
           "model_config": {"input_size": list(x.shape[1:])},
           "prune": {"scope": "local", "round_to": 1, "min_channels": 1, "ignore": [], "calibration_batches": 0,
                     "example_batch_size": 1, "criterion_options": {}, "schedule_options": {}}}
    try:
        pruned = runner.prune_model(model, cfg, None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        res = measure.profile(model, pruned, x, device=args.device, dtype=args.dtype, iters=args.iters,
                              out_dir=args.out, batch_size=args.batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if res.error:
        print(f"pybench profile: {res.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"# {args.model}: dense {res.dense_total_ms:.3f} ms vs pruned ({args.criterion} @ {args.ratio}) "
          f"{res.pruned_total_ms:.3f} ms per forward ({res.metric}), batch {args.batch_size}, {res.dtype}, "
          f"{res.device}")
    print(res.table(top=args.top))
    for label, path in res.traces.items():
        print(f"trace {label}: {path}")
    return EXIT_OK


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a zoo name (`pybench zoo`), timm:NAME, package.module:callable (your own "
                   "builder) or a model file written by `pybench prune`")
    p.add_argument("--trust", action="append", metavar="REF", help="a package.module:callable (or a package) that "
                   "a model file may name as its builder; repeatable (files naming others are refused)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (zoo models; default theirs)")
    p.add_argument("--weights", help="local state-dict file for a zoo model (pybench never downloads)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", help="input size without batch, e.g. 3 32 32")
    p.add_argument("--criterion", default="l1", help="pruning criterion (default l1)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group (default 0.5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pybench", description=__doc__.splitlines()[0],
                                     epilog="exit codes: 0 ok; 1 a check failed or some cells failed; 2 bad usage or "
                                     "input. Start with: pybench run suites/smoke.toml && pybench report results/smoke")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    r.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells run: local worker "
                   "processes (default) or a Ray task per cell")
    r.add_argument("--address", help="with --executor ray: the Ray head HOST:PORT (default: a local Ray instance)")
    r.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based) of the selected cells; join the "
                   "shards with `pybench merge`")
    r.set_defaults(func=_run)

    mg = sub.add_parser("merge", help="join the run folders of `run --shard` into one run",
                        description="Join shard run folders of one suite into one run folder (refuses shards of "
                        "different suites and cells configured differently).")
    mg.add_argument("shards", nargs="+", help="the shards' run folders")
    mg.add_argument("--out", required=True, help="the merged run folder (new)")
    mg.add_argument("--require-complete", action="store_true", help="fail if some cell of the suite has no record")
    mg.set_defaults(func=_merge)

    rep = sub.add_parser("report", help="Markdown + HTML report of one or more run folders",
                         description="Per model, pruned vs dense: latency speedup, memory saved, MACs and params "
                         "removed, accuracy change; realised vs theoretical speedup and accuracy vs MACs kept plots.")
    rep.add_argument("runs", nargs="+", help="run folders (or a folder holding several)")
    rep.add_argument("--out", help="where report.md and report.html go (default: the first run folder)")
    rep.add_argument("--title", help="report title")
    rep.add_argument("--quiet", action="store_true", help="do not print the Markdown")
    rep.set_defaults(func=_report)

    cmp_ = sub.add_parser("compare", help="the same cells from two runs (e.g. two machines): ratio table",
                          description="Match cells by id and show B/A ratios of latency, throughput and memory.")
    cmp_.add_argument("a", help="run folder A (the reference)")
    cmp_.add_argument("b", help="run folder B")
    cmp_.add_argument("--label-a", default="A")
    cmp_.add_argument("--label-b", default="B")
    cmp_.add_argument("--html", metavar="FILE", help="also write an HTML page with the ratio plot")
    cmp_.set_defaults(func=_compare)

    chk = sub.add_parser("check", help="regression gate: RUN vs --baseline, exit 1 on a regression",
                         description="Flag cells whose metric got worse than the baseline by more than the threshold. "
                         "Cells whose noise (spread of the repeats) exceeds the threshold are ignored, and listed.")
    chk.add_argument("run", help="run folder to check")
    chk.add_argument("--baseline", required=True, help="baseline run folder")
    chk.add_argument("--threshold", type=_threshold, default=0.05, help="relative change that counts (default 5%%)")
    chk.add_argument("--allow-foreign-baseline", action="store_true", help="compare against a baseline measured "
                     "on another machine (host, CPU or GPU differ); refused by default")
    chk.add_argument("--metric", action="append", help="metric(s) to check (default: latency_p50_ms, "
                     "peak_memory_bytes, top1, macs)")
    chk.set_defaults(func=_check)

    pr = sub.add_parser("prune", help="prune a model and save it", description="Prune a zoo model or a saved model "
                        "by a criterion at a ratio and save the smaller model.")
    _add_model_args(pr)
    pr.add_argument("--schedule", default="one_shot", help="one_shot (default), iterative, layerwise_alpha, "
                    "gradual_global")
    pr.add_argument("--scope", default="local", choices=["local", "global"])
    pr.add_argument("--round-to", type=int, default=1, help="keep a multiple of this many channels")
    pr.add_argument("--ignore", action="append", help="module name never pruned (repeatable)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("-o", "--output", help="output file")
    pr.set_defaults(func=_prune)

    pf = sub.add_parser("profile", help="op-level profile of a model, dense vs pruned",
                        description="torch.profiler time per op type, dense vs pruned, and chrome traces.")
    _add_model_args(pf)
    pf.add_argument("--device", default="cpu")
    pf.add_argument("--dtype", default="float32")
    pf.add_argument("--batch-size", type=int, default=1)
    pf.add_argument("--iters", type=int, default=10)
    pf.add_argument("--top", type=int, default=20, help="rows shown")
    pf.add_argument("--out", help="folder for the chrome traces")
    pf.set_defaults(func=_profile)

    bench = sub.add_parser("ops-bench", help="fused ops vs eager PyTorch on real layer sizes, with bandwidth",
                           description="Fused ops vs eager PyTorch on ResNet-50 / VGG-16 layer sizes; the fused "
                           "GB/s is shown next to the copy and sum bandwidth measured in the same run.")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    bench.add_argument("--op", action="append", choices=["channel_stats", "activation_stats", "channel_gather"],
                       help="only this op (repeatable)")
    bench.add_argument("--sizes", choices=["layers", "large", "all"], help="layers: ResNet-50 / VGG-16 layer "
                       "sizes; large: tensors of 256 MB and more in fp32 / fp16 / bf16, judged on bandwidth; all: "
                       "both (default: all on cuda, layers on cpu)")
    bench.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")
    bench.add_argument("--strict", action="store_true", help="exit 1 if any case misses its speedup target (or, "
                       "at 256 MB and more, 85 %% of the copy bandwidth)")
    bench.set_defaults(func=_ops_bench)

    zoo = sub.add_parser("zoo", help="list the model names pybench.zoo.create accepts",
                         description="List the model names pybench.zoo.create accepts.")
    zoo.set_defaults(func=_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pybench`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        print("pybench: --repeats must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:  # one line: a message that quotes another tool's (torch.load's) keeps to it
        print(f"pybench {args.command}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pybench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
