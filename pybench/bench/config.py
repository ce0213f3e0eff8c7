"""The typed settings of a suite and its cells: frozen dataclasses from the moment a suite file is read.

Each TOML table of a suite is one settings class here (its fields are the keys a suite may set, their defaults the
defaults); :mod:`pybench.bench.suite` validates a file into a :class:`Suite`, and :func:`expand` (here) makes
its :class:`Cell` s, in run order, with their ids.
A cell travels to its worker as :meth:`Cell.to_json` and comes back as :meth:`Cell.from_json`; its record keeps
:attr:`Cell.config`, the JSON form of the same settings (the record schema's ``config``), and its id is a hash of
that form — so a cell measured before a setting existed keeps its id (settings at their defaults are left out).
Tables and lists read from TOML become dicts and tuples; treat the dicts as read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SuiteInfo", "Matrix", "MetricsSettings", "DataSettings", "TrainSettings", "FineTuneSettings",
           "PruneSettings", "RunSettings", "ModelSettings", "Suite", "Cell", "TABLES", "jsonable", "toml_type"]


@dataclass(frozen=True)
class SuiteInfo:
    """[suite]: the name (also the run folders' parent folder) and a description."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Matrix:
    """[matrix]: the axes whose product are the cells."""

    models: tuple[str, ...]
    levels: tuple[float, ...] = (0.3, 0.5)
    criteria: tuple[str, ...] = ("l1",)
    schedules: tuple[str, ...] = ("one_shot",)
    batch_sizes: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("float32",)
    devices: tuple[str, ...] = ("cpu",)
    seeds: tuple[int, ...] = (0,)
    # inference backends (pybench.bench.backends: NAME or NAME:MODE); dense and pruned timed on each
    backends: tuple[str, ...] = ("eager",)
    # channel rounding of the pruned models ([prune] round_to for each value; empty: [prune]'s own)
    round_to: tuple[int, ...] = ()


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: what each cell measures and how often."""

    collect: tuple[str, ...] = ("latency", "memory", "macs")
    repeats: int = 3
    warmup: int = 5
    iters: int = 20
    min_time: float = 0.0
    channels_last: bool = False
    accuracy_max_batches: int = 0
    # a pruned cell's speedup: dense and pruned timed alternately until the 95 % interval's relative half-width
    # is at most target_ci, or max_time_s (per cell) is spent
    target_ci: float = 0.02
    max_time_s: float = 5.0
    # torch's intra-op threads while measuring (0: torch's default, one per core) and the CPUs the worker is pinned
    # to while timing (empty: not pinned); on a shared machine fewer threads than cores keeps a competing process
    # from stalling every parallel region
    threads: int = 0
    cpu_affinity: tuple[int, ...] = ()


@dataclass(frozen=True)
class DataSettings:
    """[data] without ``root``: which dataset and its batches (where it lives is not what is measured)."""

    name: str = ""
    batch_size: int = 64
    eval_batch_size: int = 256
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    """[train]: how the dense model is trained before pruning (epochs 0: random init or its weights file)."""

    epochs: int = 0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    scheduler: str = ""
    max_batches: int = 0
    bn_recalibrate_batches: int = 0
    # where it runs ("cpu", "cuda", "cuda:N"); empty: the cell's own device (CUDA cells train on their GPU). In
    # [fine_tune], empty means [train]'s choice.
    device: str = ""


@dataclass(frozen=True)
class FineTuneSettings(TrainSettings):
    """[fine_tune]: how a pruned model is fine-tuned (a smaller learning rate by default)."""

    lr: float = 0.01


@dataclass(frozen=True)
class PruneSettings:
    """[prune]: how the engine prunes. In a :class:`Suite`, ``schedule_options`` maps each schedule to its options;
    in a :class:`Cell`, it holds the options of the cell's own schedule."""

    scope: str = "local"
    round_to: int = 1
    min_channels: int = 1
    ignore: tuple[str, ...] = ()
    # the layers that choose filters (module type names such as "Conv2d", or module names); empty: every layer
    layers: tuple[str, ...] = ()
    # the most of one group a plan removes (a global ranking or a latency budget never thins a layer further)
    max_ratio: float = 1.0
    calibration_batches: int = 4
    example_batch_size: int = 1
    criterion_options: dict[str, Any] = field(default_factory=dict)
    schedule_options: dict[str, Any] = field(default_factory=dict)
    # "ratio": levels are fractions of channels removed; "latency": levels are latency budgets (fractions of the
    # dense latency on the cell's device, backend, dtype and batch size), planned on a latency table
    target: str = "ratio"
    # target "latency": a saved table (pybench lut; a file inside the suite's folder, for every cell's target);
    # empty: each target's table is measured once into the run folder, with lut_options (pb.latency_table's)
    lut: str = ""
    lut_options: dict[str, Any] = field(default_factory=dict)
    # target "latency": plans re-made until the paired measured latency is within latency_tolerance of the budget
    # (pb.prune_to_latency), at most latency_rounds plans (1: the table's plan as it is)
    latency_rounds: int = 3
    latency_tolerance: float = 0.05


@dataclass(frozen=True)
class RunSettings:
    """[run]: how cells run (isolation, timeouts, fine-tuning processes); never part of a cell's id."""

    isolation: str = "group"
    timeout_s: float = 900.0
    prepare_timeout_s: float = 7200.0
    fine_tune_processes: int = 1
    fine_tune_backend: str = ""


@dataclass(frozen=True)
class ModelSettings:
    """One model of a cell: its builder's keyword arguments, input size (no batch dim), classes and weights file."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, ...] = ()
    num_classes: int | None = None
    weights: str | None = None


# suite table -> its settings class ([models.NAME] tables are checked on their own)
TABLES: dict[str, type] = {"suite": SuiteInfo, "matrix": Matrix, "metrics": MetricsSettings, "data": DataSettings,
                           "train": TrainSettings, "fine_tune": FineTuneSettings, "prune": PruneSettings,
                           "run": RunSettings}

_TOML_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def toml_type(f: dataclasses.Field) -> type:
    """The TOML value type a settings field takes: list for tuples, dict for tables, else its scalar type."""
    t = str(f.type)
    if t.startswith("tuple"):
        return list
    if t.startswith("dict"):
        return dict
    return _TOML_TYPES[t.split(" |")[0]]


def jsonable(value: Any) -> Any:
    """The JSON form of settings (nested dataclasses to dicts, tuples to lists), as records hold them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    """Lists (at any depth) become tuples, as the settings classes hold them."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    """``cls`` from a table or a record's JSON form; keys it does not have (a later schema's) are left out."""
    if values is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _frozen(v) for k, v in values.items() if k in names})


@dataclass(frozen=True)
class Suite:
    """A validated suite file (:func:`pybench.bench.suite.load`)."""

    name: str
    path: str
    description: str
    matrix: Matrix
    metrics: MetricsSettings
    data: DataSettings
    data_root: str
    train: TrainSettings
    fine_tune: FineTuneSettings
    prune: PruneSettings
    run: RunSettings
    models: dict[str, dict[str, Any]]
    text: str = ""

    def cells(self) -> list[Cell]:
        """All cells of the suite in run order (:func:`expand`)."""
        return expand(self)


@dataclass(frozen=True, eq=False)
class Cell:
    """One measured point: a model at a level by a criterion and schedule, at one batch size, dtype, device and
    seed, with everything that shapes it. Equal cells are cells of equal ids. ``prune`` and ``fine_tune`` are None
    for the dense baseline (level 0)."""

    cell_id: str
    group_id: str
    suite: str
    model: str
    model_config: ModelSettings
    criterion: str
    schedule: str
    level: float
    seed: int
    batch_size: int
    dtype: str
    device: str
    data: DataSettings
    data_root: str
    train: TrainSettings
    fine_tune: FineTuneSettings | None
    prune: PruneSettings | None
    metrics: MetricsSettings
    timeout_s: float
    fine_tune_processes: int = 1
    fine_tune_backend: str = ""
    backend: str = "eager"  # the inference backend it is measured on (not part of the id when eager)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and (self.cell_id, self.group_id) == (other.cell_id, other.group_id)

    def __hash__(self) -> int:
        return hash((self.cell_id, self.group_id))

    @property
    def work_device(self) -> str:
        """Where the dense model is trained, data-driven criteria score and accuracy is evaluated: ``[train]
        device`` when set, else the cell's own device."""
        return self.train.device or self.device

    @property
    def fine_tune_device(self) -> str:
        """Where the pruned model is fine-tuned: ``[fine_tune] device`` when set, else :attr:`work_device`."""
        return (self.fine_tune.device if self.fine_tune else "") or self.work_device

    @property
    def config(self) -> dict[str, Any]:
        """The record schema's ``config``: every setting but the ids, in JSON form."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("cell_id", "group_id")}

    @classmethod
    def from_config(cls, cell_id: str, group_id: str, config: dict[str, Any]) -> Cell:
        """A cell from its record's ``config`` (records written before a setting existed get its default)."""
        kinds = {"model_config": ModelSettings, "data": DataSettings, "train": TrainSettings,
                 "fine_tune": FineTuneSettings, "prune": PruneSettings, "metrics": MetricsSettings}
        values = {k: from_dict(kinds[k], v) if k in kinds else v for k, v in config.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(cell_id=cell_id, group_id=group_id, **{k: v for k, v in values.items() if k in names})

    def to_json(self) -> dict[str, Any]:
        """What a worker receives: the ids and :attr:`config`."""
        return {"cell_id": self.cell_id, "group_id": self.group_id, "config": self.config}

    @classmethod
    def from_json(cls, job: dict[str, Any]) -> Cell:
        return cls.from_config(job["cell_id"], job["group_id"], job["config"])

    def label(self) -> str:
        what = "dense" if self.level == 0 else f"{self.criterion}/{self.schedule}@{self.level:g}"
        on = "" if self.backend == "eager" else f" {self.backend}"
        return f"{self.model} {what} bs={self.batch_size} {self.dtype} {self.device}{on} seed={self.seed}"


# ---- a suite's matrix expanded into cells: their order and ids -------------------------------------------------
def _input_size(suite: Suite, model: str) -> tuple[int, ...]:
    opts = suite.models.get(model, {})
    if "input_size" in opts:
        return tuple(opts["input_size"])
    from pybench import zoo

    if suite.data.name == "imagefolder":  # no need to list the folder (which may not be there for --dry-run)
        size = suite.data.options.get("image_size", 224)
        return (3, size, size)
    if suite.data.name:
        return tuple(_data_info(suite).input_size)
    return tuple(zoo.input_size(model))


def _data_info(suite: Suite) -> Any:
    from pybench import data as pdata

    return pdata.info(suite.data.name, root=suite.data_root or None, **suite.data.options)


def _num_classes(suite: Suite, model: str) -> int | None:
    opts = suite.models.get(model, {})
    if "num_classes" in opts:
        return opts["num_classes"]
    return _data_info(suite).num_classes if suite.data.name else None


def _nondefault(settings: Any) -> dict[str, Any] | None:
    """The JSON form of ``settings`` without the keys at their defaults: a key added to pybench later (with a
    default) does not change the ids of cells measured before it existed."""
    if settings is None:
        return None
    defaults = jsonable(type(settings)())
    return {k: v for k, v in jsonable(settings).items() if v != defaults[k]}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return "sha1:" + hashlib.sha1(f.read()).hexdigest()[:16]
    except OSError:  # a dry run of a suite whose table is not there yet
        return path


def expand(suite: Suite) -> list[Cell]:
    """All cells of ``suite`` in run order: by model, seed, then level (dense first), criterion, schedule, then
    batch size, dtype, device, backend."""
    m = suite.matrix
    cells: list[Cell] = []
    for model in m.models:
        opts = suite.models.get(model, {})
        model_cfg = ModelSettings(kwargs=opts.get("kwargs", {}), input_size=_input_size(suite, model),
                                         num_classes=_num_classes(suite, model), weights=opts.get("weights"))
        for seed in m.seeds:
            for level in m.levels:
                rounds = m.round_to or (suite.prune.round_to,)
                combos = [("none", "none", 0)] if level == 0 else \
                    [(c, s, r) for c in m.criteria for s in m.schedules for r in rounds]
                for criterion, schedule, round_to in combos:
                    prune = None if level == 0 else dataclasses.replace(
                        suite.prune, schedule_options=suite.prune.schedule_options.get(schedule, {}),
                        round_to=round_to)
                    fine_tune = suite.fine_tune if level > 0 else None
                    shaping = {"model": model, "model_config": model_cfg, "criterion": criterion,
                               "schedule": schedule, "level": level, "seed": seed, "data": suite.data,
                               "train": suite.train, "fine_tune": fine_tune, "prune": prune}
                    ident = {**jsonable(shaping), "data": _nondefault(suite.data),
                             "train": _nondefault(suite.train), "fine_tune": _nondefault(fine_tune),
                             "prune": _nondefault(prune)}
                    if prune is not None and prune.lut:  # the table's content, not where this machine keeps it
                        ident["prune"]["lut"] = _file_digest(prune.lut)
                    # a latency budget is planned for its target: one prune group per target
                    per_target = prune is not None and prune.target == "latency"
                    for bs in m.batch_sizes:
                        for dtype in m.dtypes:
                            for device, backend in itertools.product(m.devices, m.backends):
                                where = {"batch_size": bs, "dtype": dtype, "device": device}
                                on = {} if backend == "eager" else {"backend": backend}  # eager ids never moved
                                group_id = _digest({**ident, **where, **on} if per_target else ident)
                                cells.append(Cell(
                                    cell_id=_digest({**ident, **where, **on}), group_id=group_id, **shaping,
                                    **where, backend=backend, suite=suite.name, data_root=suite.data_root,
                                    metrics=suite.metrics, timeout_s=suite.run.timeout_s,
                                    fine_tune_processes=suite.run.fine_tune_processes,
                                    fine_tune_backend=suite.run.fine_tune_backend))
    return cells
