"""What the commands share: exit codes, the one-line usage error, the command registry, and model arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybench._registry import Registry

if TYPE_CHECKING:
    from pybench.bench.config import PruneSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# command name -> add(subparsers): each command module adds its own parser (set_defaults(func=...)) on import
COMMANDS: Registry = Registry("command")


class UsageError(Exception):
    """Bad input found after argument parsing; printed and turned into exit code 2."""


def load_suite(args: argparse.Namespace, require_data: bool) -> object:
    from pybench.bench import suite

    try:
        return suite.load(args.suite, data_root=args.data_root, require_data=require_data)
    except suite.SuiteError as e:
        raise UsageError(str(e)) from None


def input_size(args: argparse.Namespace, name: str | None) -> tuple[int, ...]:
    from pybench import zoo

    if args.input_size:
        return tuple(args.input_size)
    if name is None:
        raise UsageError("--input-size is needed for a model loaded from a file (e.g. --input-size 3 32 32)")
    return zoo.input_size(name)


def model_of(args: argparse.Namespace) -> tuple[object, str | None]:
    """(model, zoo name or None) from a zoo name, a model reference or a file saved by pybench prune / pb.save."""
    import pybench as pb
    from pybench import zoo

    p = Path(args.model)
    if p.is_file():
        try:  # only pb.save's format: a whole-module pickle would run code from the file
            return pb.load(p, trust=args.trust or ()), None
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a zoo name (`pybench zoo`), timm:NAME, package.module:callable (your own "
                   "builder) or a model file written by `pybench prune`")
    p.add_argument("--trust", action="append", metavar="REF", help="a package.module:callable (or a package) that "
                   "a model file may name as its builder; repeatable (files naming others are refused)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (zoo models; default theirs)")
    p.add_argument("--weights", help="local state-dict file for a zoo model (pybench never downloads)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", help="input size without batch, e.g. 3 32 32")
    p.add_argument("--criterion", default="l1", help="pruning criterion (default l1)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group (default 0.5)")


def prune_or_refuse(model: Any, x: Any, criterion: str, schedule: str, ratio: float, settings: PruneSettings,
                    seed: int = 0) -> Any:
    """The model pruned through the harness's one pruning path (:func:`pybench.bench.pruning.prune_with`, no
    data); what the engine refuses becomes a UsageError naming it."""
    from pybench.bench.pruning import prune_with

    try:
        return prune_with(model, x, criterion=criterion, schedule=schedule, level=ratio, settings=settings,
                          criterion_kw={"seed": seed})
    except (ValueError, KeyError) as e:  # KeyError: a schedule the registry does not have
        raise UsageError(str(e.args[0]) if isinstance(e, KeyError) else str(e)) from None
    except RuntimeError as e:  # the model does not take this input (a shape mismatch, a wrong channel count)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"the model does not run on an input of size {tuple(x.shape)} ({first}); give the size it "
                         "takes with --input-size (without the batch dim)") from None
