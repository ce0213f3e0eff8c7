"""Sharding a suite across machines (batch schedulers, e.g. Slurm array jobs) and merging the shards' runs.

    pybench run suites/nightly.toml --shard 2/4 --out runs/shard-2     # on each of 4 machines, i = 1..4
    pybench merge runs/shard-* --out runs/nightly                       # one run folder again

A shard spec is ``"i/n"`` with a **1-based** index: ``1/4`` .. ``4/4`` (a Slurm array ``--array=1-4`` passes
``$SLURM_ARRAY_TASK_ID`` straight through; for a 0-based array use ``$((SLURM_ARRAY_TASK_ID + 1))``).

The split depends only on the cells' stable ids (:attr:`pybench.bench.suite.Cell.cell_id`, a hash of what a cell
measures): the cells are sorted by id and dealt round-robin, so every cell lands in exactly one shard, shard sizes
differ by at most one, and the result is the same whatever the order of the list, the machine or the Python
process (no ``hash()`` salt). With ``by="group"`` whole prune groups are dealt instead (largest first, to the
least-loaded shard), so a group is pruned and fine-tuned on one machine only, at the price of less even shards.
The split is applied to the cells a run selects, so every shard must use the same suite file and ``--filter``.

:func:`merge` joins shard run folders (``records.jsonl``, ``run.json``, ``suite.toml`` as written by
:mod:`pybench.bench.driver`) into one run folder that :func:`pybench.bench.results.load`, ``report``, ``compare`` and
``check``
read like any other run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pybench.bench.results import RECORDS, Store, read_records

__all__ = ["Shard", "parse_shard", "split", "select", "merge", "MergeResult", "MergeError"]

_SPEC = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")
_HELP = ("expected 'i/n' with n >= 1 shards and a 1-based index 1 <= i <= n (e.g. 1/4 .. 4/4; for a 0-based "
         "Slurm array id use $((SLURM_ARRAY_TASK_ID + 1)))")

C = TypeVar("C")


class Shard(NamedTuple):
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class MergeError(ValueError):
    """Shard folders that cannot be merged: names the folders and what disagrees."""


def parse_shard(spec: str | Shard | tuple[int, int]) -> Shard:
    """``"2/4"`` -> ``Shard(index=2, count=4)``; the index is 1-based.

    Raises:
        ValueError: naming the spec and the rule, for anything else (``"3/2"``, ``"0/0"``, ``"0/4"``, ``"a/b"``).
    """
    if isinstance(spec, tuple) and len(spec) == 2:
        i, n = spec
        text = f"{i}/{n}"
    elif isinstance(spec, str):
        m = _SPEC.fullmatch(spec)
        if m is None:
            raise ValueError(f"--shard {spec!r}: not a shard spec; {_HELP}")
        i, n = int(m.group(1)), int(m.group(2))
        text = spec
    else:
        raise ValueError(f"--shard {spec!r}: not a shard spec; {_HELP}")
    if isinstance(i, bool) or isinstance(n, bool) or not isinstance(i, int) or not isinstance(n, int):
        raise ValueError(f"--shard {text!r}: index and count must be integers; {_HELP}")
    if n < 1:
        raise ValueError(f"--shard {text!r}: the shard count is {n}, it must be >= 1; {_HELP}")
    if not 1 <= i <= n:
        why = "indices start at 1" if i == 0 else f"index {i} is outside 1..{n}"
        raise ValueError(f"--shard {text!r}: {why}; {_HELP}")
    return Shard(i, n)


def _key(cell: Any, attr: str) -> str:
    value = getattr(cell, attr, None)
    if not isinstance(value, str) or not value:
        raise ValueError(f"shard: cells need a string {attr!r} (pybench.bench.suite.Cell has one), got {cell!r}")
    return value


def split(cells: Iterable[C], count: int, by: str = "cell") -> list[list[C]]:
    """Deal ``cells`` into ``count`` shards (list ``k`` is shard ``k + 1``), each shard in id order.

    ``by="cell"``: cells sorted by ``cell_id`` and dealt round-robin (sizes differ by at most 1).
    ``by="group"``: prune groups (``group_id``) dealt whole, largest first, each to the least-loaded shard (ties:
    the lower shard), so a group's pruning and fine-tuning happen once.
    A ``cell_id`` that occurs twice is an error (the suite's expansion never repeats a cell).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"shard: count must be an integer >= 1, got {count!r}")
    if by not in ("cell", "group"):
        raise ValueError(f"shard: by={by!r}; expected 'cell' or 'group'")
    items = sorted(cells, key=lambda c: _key(c, "cell_id"))
    ids = [_key(c, "cell_id") for c in items]
    dup = sorted({i for k, i in enumerate(ids) if k and ids[k - 1] == i})
    if dup:
        raise ValueError(f"shard: cell id(s) {', '.join(dup[:5])} occur more than once; give each cell once")
    out: list[list[C]] = [[] for _ in range(count)]
    if by == "cell":
        for k, c in enumerate(items):
            out[k % count].append(c)
        return out
    groups: dict[str, list[C]] = {}
    for c in items:
        groups.setdefault(_key(c, "group_id"), []).append(c)
    load = [0] * count
    for gid in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        k = min(range(count), key=lambda s: (load[s], s))
        out[k].extend(groups[gid])
        load[k] += len(groups[gid])
    return [sorted(s, key=lambda c: _key(c, "cell_id")) for s in out]


def select(cells: Sequence[C], shard: str | Shard | tuple[int, int] | None, by: str = "cell") -> list[C]:
    """The cells of ``shard`` (a spec or :class:`Shard`), in the order of ``cells``; ``None`` keeps them all."""
    if shard is None:
        return list(cells)
    s = parse_shard(shard)
    mine = {_key(c, "cell_id") for c in split(cells, s.count, by)[s.index - 1]}
    return [c for c in cells if _key(c, "cell_id") in mine]


# --------------------------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """What :func:`merge` wrote: the folder, cell counts, the suite's cells no shard ran, and warnings."""

    folder: Path
    suite: str
    shards: list[Path]
    cells: int
    ok: int
    failed: int
    records: int
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"merged {len(self.shards)} shard(s) of suite {self.suite!r} into {self.folder}: {self.cells} cells "
                f"({self.ok} ok, {self.failed} failed), {self.records} records")
        if self.missing:
            text += f"; {len(self.missing)} cell(s) of the suite have no record (a shard not run or not finished)"
        return text


def _read_meta(folder: Path) -> dict[str, Any]:
    if not (folder / RECORDS).is_file():
        raise MergeError(f"{str(folder)!r} is not a run folder (no {RECORDS}); give the --out folders of "
                         "the `pybench run --shard` runs")
    meta_path = folder / "run.json"
    if not meta_path.is_file():
        raise MergeError(f"{str(folder)!r} has no run.json; it was not written by `pybench run`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise MergeError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not meta.get("suite"):
        raise MergeError(f"{meta_path} names no suite")
    return meta


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    # where the data lives differs between machines and is not part of what a cell measures
    return {k: v for k, v in config.items() if k != "data_root"}


def _first_difference(a: Any, b: Any, path: str = "config") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, "<absent>") != b.get(k, "<absent>"):
                return _first_difference(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
    return f"{path}: {a!r} vs {b!r}"


def _suite_cells(text: str, path: str) -> list[str] | None:
    """Cell ids of the suite text, or None when it cannot be expanded here (e.g. a model or dataset unknown)."""
    try:
        from pybench.bench import suite as psuite

        return [c.cell_id for c in psuite.expand(psuite.loads(text, path, require_data=False))]
    except Exception:  # the merge does not need it; only the "missing cells" report does
        return None


def _hardware(env: dict[str, Any]) -> str:
    gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or [])
    return f"{env.get('cpu_model') or '?'}" + (f" + {gpus}" if gpus else "")


def merge(shard_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
          require_complete: bool = False) -> MergeResult:
    """Join the run folders of a suite's shards into the new run folder ``out_dir``.

    Every record of every shard is kept (a cell retried inside a shard keeps its history), except that a cell found
    in more than one shard (overlapping shards) is kept once, with a warning; it must have the same configuration
    everywhere (``data_root`` aside), and its kept record is the last ok
    one, written last so readers (``results.load``, ``--resume``) take it. ``run.json`` lists the shards
    (``merged_from``) and ``suite.toml`` is the shards' common suite file.

    Args:
        shard_dirs: the shards' run folders (``--out`` of each ``pybench run --shard i/n``).
        out_dir: a new folder (or an empty one).
        require_complete: raise when some cell of the suite has no record in any shard.

    Raises:
        MergeError: no shards, a folder that is not a run, shards of different suites or suite files, a cell
            with different configurations in two shards, shards of different counts or the same shard twice,
            ``out_dir`` already holding a run, or (``require_complete``) missing cells.
    """
    dirs = list(dict.fromkeys(Path(d).resolve() for d in shard_dirs))
    if not dirs:
        raise MergeError("no shard folders given; pass the run folders of the shards")
    out = Path(out_dir)
    if out.resolve() in dirs:
        raise MergeError(f"--out {out} is one of the shards; give a new folder")
    if (out / RECORDS).exists() or (out.is_dir() and any(out.iterdir())):
        raise MergeError(f"--out {out} already exists and is not empty; give a new folder")

    metas = [_read_meta(d) for d in dirs]
    suites = {m["suite"] for m in metas}
    if len(suites) > 1:
        listing = "; ".join(f"{d} -> {m['suite']!r}" for d, m in zip(dirs, metas, strict=True))
        raise MergeError(f"the shards belong to different suites ({listing}); merge only the shards of one "
                         "suite")
    suite_name = metas[0]["suite"]
    texts = [(d / "suite.toml").read_text() if (d / "suite.toml").is_file() else None for d in dirs]
    known = [(d, t) for d, t in zip(dirs, texts, strict=True) if t is not None]
    if len({t for _, t in known}) > 1:
        other = next(d for d, t in known if t != known[0][1])
        raise MergeError(f"shards {known[0][0]} and {other} ran different versions of suite {suite_name!r} "
                         "(their suite.toml differ); run every shard with the same suite file")

    specs = [m.get("shard") for m in metas]
    warnings: list[str] = []
    if any(specs):
        parsed = [parse_shard(s) for s in specs if s]
        counts = {s.count for s in parsed}
        if len(counts) > 1:
            raise MergeError(f"the shards were split different ways ({', '.join(map(str, parsed))}); run "
                             "every shard with the same count n in --shard i/n")
        seen: dict[Shard, Path] = {}
        for d, s in zip(dirs, specs, strict=True):
            if not s:
                continue
            p = parse_shard(s)
            if p in seen:
                raise MergeError(f"{seen[p]} and {d} are both shard {p}; give each shard once")
            seen[p] = d
        absent = sorted(set(range(1, next(iter(counts)) + 1)) - {s.index for s in parsed})
        if absent:
            warnings.append(f"shard(s) {', '.join(str(i) for i in absent)} of {next(iter(counts))} are not among "
                            "the merged folders")

    # gather: cell id -> [(shard number, record)] in shard order, and check configurations agree
    per_cell: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    origin: dict[str, Path] = {}
    for k, d in enumerate(dirs):
        for rec in read_records(d / RECORDS):
            cid = rec["cell_id"]
            cfg = rec.get("config") or {}
            if cfg.get("suite") not in (None, suite_name):
                raise MergeError(f"{d} holds cell {cid} of suite {cfg.get('suite')!r}, not {suite_name!r}")
            if cid in per_cell:
                first = per_cell[cid][0][1].get("config") or {}
                if _identity(first) != _identity(cfg):
                    raise MergeError(f"cell {cid} has different configurations in {origin[cid]} and {d} "
                                     f"({_first_difference(_identity(first), _identity(cfg))}); these shards did "
                                     "not run the same suite settings")
            else:
                origin[cid] = d
            per_cell.setdefault(cid, []).append((k, rec))

    hardware = {_hardware(m.get("environment") or {}) for m in metas}
    if len(hardware) > 1:
        warnings.append(f"the shards ran on different hardware ({'; '.join(sorted(hardware))}): latency and memory "
                        "of cells from different shards are not comparable with each other")

    expected = _suite_cells(known[0][1], str(known[0][0] / "suite.toml")) if known else None
    missing = [c for c in expected if c not in per_cell] if expected is not None else []
    if expected is not None:
        extra = sorted(set(per_cell) - set(expected))
        if extra:
            warnings.append(f"{len(extra)} cell(s) are not in the suite file's expansion (e.g. {extra[0]})")
    if missing and require_complete:
        raise MergeError(f"{len(missing)} cell(s) of suite {suite_name!r} have no record in any shard (e.g. "
                         f"{missing[0]}); run the missing shard(s) or `pybench run --resume` them first")

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RECORDS}.merging"
    store = Store(out)
    lines: list[dict[str, Any]] = []
    ok = failed = 0
    overlapping = 0
    for recs in per_cell.values():
        oks = [i for i, (_, r) in enumerate(recs) if r.get("status") == "ok"]
        chosen = oks[-1] if oks else len(recs) - 1
        if len({k for k, _ in recs}) > 1:  # overlapping shards: one record, not one per shard
            overlapping += 1
            ordered = [recs[chosen][1]]
        else:
            ordered = [r for i, (_, r) in enumerate(recs) if i != chosen] + [recs[chosen][1]]
        lines.extend(ordered)
        ok += recs[chosen][1].get("status") == "ok"
        failed += recs[chosen][1].get("status") != "ok"
    if overlapping:
        warnings.append(f"{overlapping} cell(s) were measured by more than one shard (overlapping shards or the "
                        "same cells run twice); each is kept once, its last ok record")
    # write to a side file and rename, so a killed merge never leaves a half store that looks like a run
    with open(tmp, "wb") as f:
        for rec in lines:
            f.write((json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    if known:
        shutil.copyfile(known[0][0] / "suite.toml", out / "suite.toml")
    started = sorted(m.get("started") for m in metas if m.get("started"))
    meta = {"run_id": out.name, "suite": suite_name, "suite_path": metas[0].get("suite_path"),
            "started": started[0] if started else None,
            "merged": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": metas[0].get("environment"),
            "merged_from": [{"folder": str(d), "run_id": m.get("run_id"), "shard": m.get("shard"),
                             "hostname": (m.get("environment") or {}).get("hostname"),
                             "records": sum(1 for recs in per_cell.values() for k, _ in recs if k == i)}
                            for i, (d, m) in enumerate(zip(dirs, metas, strict=True))]}
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, store.path)
    return MergeResult(folder=out, suite=suite_name, shards=dirs, cells=len(per_cell), ok=ok, failed=failed,
                       records=len(lines), missing=missing, warnings=warnings)
