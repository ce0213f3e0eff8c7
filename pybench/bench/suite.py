"""Suite files: TOML in, a validated :class:`Suite` out, expanded into :class:`Cell` s.

A suite is a matrix of models x pruning levels x criteria x schedules x batch sizes x dtypes x devices x seeds,
plus how to measure (metrics, repeats), the data, the dense training, fine-tuning and pruning settings. Level 0 is
the dense baseline and is always present (once per model, batch size, dtype, device and seed: criterion and
schedule are "none" there). Every key is checked before anything runs; a mistake raises :class:`SuiteError`
naming the file, the key and the allowed values.

A cell's id is a hash of what it measures (model, its arguments and weights, criterion, schedule, level, batch
size, dtype, device, seed, data, training, fine-tuning and pruning settings) — not of how often (repeats,
iterations) nor of where the data lives, nor of how it runs ([run]: isolation, timeouts, the fine-tuning
processes) — so resume and compare can match cells across runs and machines.
Cells sharing (model, criterion, schedule, level, seed and the settings that shape the pruned model) form a prune
group: the runner prunes once per group and measures every batch size, dtype and device of the group on it.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import inspect
import math
import os
import re
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pybench.bench import config
from pybench.bench.config import Cell, Suite, expand

__all__ = ["Suite", "Cell", "SuiteError", "load", "loads", "expand", "filter_cells", "parse_filter",
           "METRICS", "DTYPES", "FILTER_KEYS"]

METRICS = ("latency", "memory", "macs", "accuracy", "energy")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
ISOLATION = ("cell", "group", "model")
FINE_TUNE_BACKENDS = ("", "gloo", "nccl")  # "": gloo (the runner fine-tunes on the CPU unless told "nccl")
FILTER_KEYS = ("model", "criterion", "schedule", "level", "batch_size", "dtype", "device", "seed", "cell_id",
               "group_id")

REQUIRED = object()  # a key without a default: the suite must give it


def _schema(cls: type) -> dict[str, tuple[type, Any]]:
    """{key: (TOML type, default or REQUIRED)} of a settings class."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = config.jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        out[f.name] = (config.toml_type(f), default)
    return out


# table -> {key: (type check, default)}, read from the settings classes; [data] also takes where the data lives
_SCHEMA: dict[str, dict[str, Any]] = {table: _schema(cls) for table, cls in config.TABLES.items()}
_SCHEMA["data"] = {"name": _SCHEMA["data"]["name"], "root": (str, ""),
                   **{k: v for k, v in _SCHEMA["data"].items() if k != "name"}}
_MODEL_KEYS = {"kwargs": dict, "input_size": list, "weights": str, "num_classes": int}
_TABLES = tuple(_SCHEMA) + ("models",)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class SuiteError(ValueError):
    """A suite file that cannot run: names the file, the key, what was found and what is allowed."""


def _type_name(t: type) -> str:
    return {list: "a list", dict: "a table", str: "a string", int: "an integer", float: "a number",
            bool: "true or false"}[t]


def _check_type(where: str, key: str, value: Any, t: type) -> Any:
    ok = isinstance(value, t) and not (t in (int, float) and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise SuiteError(f"{where}: key {key!r} must be {_type_name(t)}, got {value!r}")
    return value


def _at_least(where: str, table: dict[str, Any], **lows: float) -> None:
    """Each named key of ``table`` is a finite number >= its low bound."""
    for key, low in lows.items():
        v = table[key]
        if not (v >= low and math.isfinite(v)):
            raise SuiteError(f"{where}: key {key!r} must be >= {low}, got {v}")


def _allowed(where: str, key: str, values: list[Any], allowed: list[Any] | tuple[Any, ...], extra: str = "") -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        listing = ", ".join(str(a) for a in allowed)
        raise SuiteError(f"{where}: key {key!r} has {', '.join(repr(b) for b in bad)}; allowed values: {listing}"
                         f"{extra}")


def expand_env(text: str, where: str, key: str, required: bool) -> str:
    """Replace ``${VAR}`` / ``$VAR`` by the environment; an unset variable is an error when ``required``."""
    def sub(m: re.Match[str]) -> str:
        var = m.group(1) or m.group(2)
        if var in os.environ:
            return os.environ[var]
        if required:
            raise SuiteError(f"{where}: key {key!r} uses ${{{var}}}, which is not set; set the environment "
                             f"variable {var} or pass --data-root")
        return m.group(0)
    return _ENV.sub(sub, text)


def _known_criteria() -> list[str]:
    from pybench.prune.criteria import CRITERIA

    return sorted(CRITERIA)


def _known_schedules() -> list[str]:
    from pybench.prune.schedules import SCHEDULES

    return list(SCHEDULES)


# a schedule's arguments that a cell fills (the model, its input, data, loaders, [fine_tune], the level): the rest
# are what [prune] schedule_options.<schedule> may set
_FILLED_BY_THE_CELL = frozenset({"model", "example_inputs", "criterion", "data", "progress", "train_loader",
                                 "val_loader", "fine_tune_epochs", "fine_tune_kw", "criterion_kw", "ratio",
                                 "macs_target", "scope", "round_to", "min_channels", "ignore", "layers",
                                 "max_ratio"})


def schedule_options(name: str) -> list[str]:
    """The keys ``[prune] schedule_options.<name>`` may hold: the schedule's own options (one_shot: normalize_by,
    for a global scope). Those a cell fills itself ([prune]'s scope, round_to, min_channels, ignore, the level,
    the data, [fine_tune]) are not among them."""
    from pybench.prune.schedules import SCHEDULES

    return sorted(set(inspect.signature(SCHEDULES[name]).parameters) - _FILLED_BY_THE_CELL - {"search_steps"})


def _device_ok(d: Any) -> bool:
    return isinstance(d, str) and re.fullmatch(r"cpu|cuda(:\d+)?|mps", d) is not None


def loads(text: str, path: str = "<string>", data_root: str | None = None, require_data: bool = True) -> Suite:
    """Parse and validate suite TOML ``text`` (``path`` names it in errors). ``data_root`` overrides [data] root."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(_TABLES))
    if unknown:
        raise SuiteError(f"{path}: unknown table(s) {', '.join(repr(u) for u in unknown)}; allowed tables: "
                         f"{', '.join(_TABLES)}")
    tables: dict[str, dict[str, Any]] = {}
    for table, schema in _SCHEMA.items():
        given = raw.get(table, {})
        where = f"{path} [{table}]"
        if not isinstance(given, dict):
            raise SuiteError(f"{path}: {table!r} must be a table ([{table}]), got {given!r}")
        bad = sorted(set(given) - set(schema))
        if bad:
            raise SuiteError(f"{where}: unknown key(s) {', '.join(repr(b) for b in bad)}; allowed keys: "
                             f"{', '.join(schema)}")
        out: dict[str, Any] = {}
        for key, (t, default) in schema.items():
            if key in given:
                out[key] = _check_type(where, key, given[key], t)
            elif default is REQUIRED:
                raise SuiteError(f"{where}: missing required key {key!r}")
            else:
                out[key] = copy.deepcopy(default)
        tables[table] = out

    m = tables["matrix"]
    where = f"{path} [matrix]"
    for key, values in m.items():
        if not values and key != "round_to":  # round_to's empty default means [prune] round_to
            raise SuiteError(f"{where}: key {key!r} is empty; give at least one value")
    from pybench import zoo

    unknown = []
    for name in m["models"]:
        try:
            if not (isinstance(name, str) and zoo.known(name)):
                unknown.append(name)
        except (zoo.MissingExtraError, zoo.ModelReferenceError) as e:
            raise SuiteError(f"{where}: key 'models' has {name!r}: {e}") from None
    if unknown:
        _allowed(where, "models", unknown, zoo.names(), " (pybench zoo lists them; timm:NAME names timm's models, "
                 "package.module:callable your own builder)")
    for lv in m["levels"]:
        if isinstance(lv, bool) or not isinstance(lv, (int, float)) or not 0 <= lv < 1:
            raise SuiteError(f"{where}: key 'levels' has {lv!r}; allowed values: numbers in [0, 1) (the fraction "
                             "of channels removed; 0 is the dense baseline)")
    m["levels"] = sorted({0.0, *(float(v) for v in m["levels"])})
    _allowed(where, "criteria", m["criteria"], _known_criteria())
    _allowed(where, "schedules", m["schedules"], _known_schedules())
    _allowed(where, "dtypes", m["dtypes"], list(DTYPES))
    m["dtypes"] = list(dict.fromkeys(DTYPES[d] for d in m["dtypes"]))
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in m["round_to"]):
        raise SuiteError(f"{where}: key 'round_to' has {m['round_to']!r}; allowed values: integers >= 1 (each pruned "
                         "layer keeps a multiple of it)")
    m["round_to"] = list(dict.fromkeys(m["round_to"]))
    for key in ("batch_sizes", "seeds"):
        for v in m[key]:
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "batch_sizes" else 0):
                raise SuiteError(f"{where}: key {key!r} has {v!r}; allowed values: integers >= "
                                 f"{1 if key == 'batch_sizes' else 0}")
    bad_dev = [d for d in m["devices"] if not _device_ok(d)]
    if bad_dev:
        raise SuiteError(f"{where}: key 'devices' has {', '.join(repr(d) for d in bad_dev)}; allowed values: cpu, "
                         "cuda, cuda:N")
    _check_backends(where, m["backends"], m["devices"], m["dtypes"], installed=require_data)

    met = tables["metrics"]
    where = f"{path} [metrics]"
    _allowed(where, "collect", met["collect"], METRICS)
    _at_least(where, met, repeats=1, warmup=0, iters=1, accuracy_max_batches=0, min_time=0.0, threads=0)
    cpus = met["cpu_affinity"]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus) or len(set(cpus)) != len(cpus):
        raise SuiteError(f"{where}: key 'cpu_affinity' must list distinct CPU numbers >= 0 (e.g. [0] or [2, 3]), "
                         f"got {cpus!r}")
    if cpus and require_data and hasattr(os, "sched_getaffinity"):  # about to run here: these CPUs must exist
        allowed = sorted(os.sched_getaffinity(0))
        if not set(cpus) <= set(allowed):
            raise SuiteError(f"{where}: key 'cpu_affinity' has {sorted(set(cpus) - set(allowed))}: this machine "
                             f"lets pybench run on CPUs {allowed} only")
    if not 0 < met["target_ci"] < 1:
        raise SuiteError(f"{where}: key 'target_ci' must be a relative half-width in (0, 1) (e.g. 0.02 for +-2 %), "
                         f"got {met['target_ci']}")
    if not (met["max_time_s"] > 0 and math.isfinite(met["max_time_s"])):
        raise SuiteError(f"{where}: key 'max_time_s' must be a finite number of seconds > 0, got {met['max_time_s']}")

    data = tables["data"]
    where = f"{path} [data]"
    from pybench import data as pdata

    if data["name"]:
        _allowed(where, "name", [data["name"]], pdata.names())
        _allowed(where, "options", list(data["options"]), pdata.options(data["name"]),
                 f" (the options of dataset {data['name']!r})")
    _at_least(where, data, batch_size=1, eval_batch_size=1)
    needs_root = data["name"] in pdata.READ_FROM_A_FOLDER
    if data["root"] and data["name"] and not needs_root:
        raise SuiteError(f"{where}: dataset {data['name']!r} is generated or bundled and takes no key 'root' "
                         f"(got {data['root']!r}); remove it")
    if data_root is not None and needs_root:  # --data-root is machine-wide: the generated datasets ignore it
        data["root"] = data_root
    data["root"] = expand_env(data["root"], where, "root", required=require_data and bool(data["name"]))
    if needs_root and require_data and not data["root"]:
        raise SuiteError(f"{where}: dataset {data['name']!r} needs key 'root' (a local folder; pybench never "
                         "downloads); set it in the file, through an environment variable, or pass --data-root")
    if needs_root and require_data and not os.path.isdir(data["root"]):
        what = "is a file, not a folder" if os.path.exists(data["root"]) else "does not exist"
        raise SuiteError(f"{where}: key 'root' {data['root']!r} {what}; dataset {data['name']!r} is read from a "
                         "local folder (pybench never downloads): fix the path or pass --data-root")
    if "accuracy" in met["collect"] and not data["name"]:
        raise SuiteError(f"{path} [metrics]: 'accuracy' in key 'collect' needs a dataset: set [data] name (allowed "
                         f"values: {', '.join(pdata.names())})")
    for table in ("train", "fine_tune"):
        t = tables[table]
        _at_least(f"{path} [{table}]", t, epochs=0, max_batches=0, bn_recalibrate_batches=0, weight_decay=0.0,
                  momentum=0.0)
        if t["epochs"] and not data["name"]:
            raise SuiteError(f"{path} [{table}]: epochs = {t['epochs']} needs a dataset: set [data] name")
        if not (t["lr"] > 0 and math.isfinite(t["lr"])) or t["momentum"] > 1:
            raise SuiteError(f"{path} [{table}]: key 'lr' must be a finite number > 0 and 'momentum' at most 1, got "
                             f"lr = {t['lr']}, momentum = {t['momentum']}")
        if t["device"] and not _device_ok(t["device"]):
            raise SuiteError(f"{path} [{table}]: key 'device' has {t['device']!r}; allowed values: cpu, cuda, cuda:N "
                             "(or leave it out: the cell's own device)")
        _allowed(f"{path} [{table}]", "optimizer", [t["optimizer"]], ("sgd", "adam", "adamw"))
        _allowed(f"{path} [{table}]", "scheduler", [t["scheduler"]], ("", "cosine", "step", "multistep"))

    pr = tables["prune"]
    where = f"{path} [prune]"
    _allowed(where, "scope", [pr["scope"]], ("local", "global"))
    _at_least(where, pr, round_to=1, min_channels=1, calibration_batches=0, example_batch_size=1)
    _allowed(where, "schedule_options", list(pr["schedule_options"]), _known_schedules(), " (a table per schedule)")
    from pybench.prune import NORMALIZATIONS

    for name, opts in pr["schedule_options"].items():
        if not isinstance(opts, dict):
            raise SuiteError(f"{where}: schedule_options.{name} must be a table of that schedule's options, got "
                             f"{opts!r}")
        _allowed(f"{where} schedule_options", name, list(opts), schedule_options(name),
                 f" (the options of pybench.prune.schedules.{name}; [prune]'s own keys scope, round_to, "
                 "min_channels and ignore are set in [prune])")
        if "normalize_by" in opts:
            _allowed(f"{where} schedule_options.{name}", "normalize_by", [opts["normalize_by"]], NORMALIZATIONS,
                     " (how a global scope makes the groups' scores comparable)")
    from pybench.prune.criteria import criterion_options

    takes = set().union(*(criterion_options(c) for c in m["criteria"]))
    _allowed(where, "criterion_options", list(pr["criterion_options"]), sorted(takes),
             f" (the options of criteria {', '.join(m['criteria'])})")

    if not 0 < pr["max_ratio"] <= 1:
        raise SuiteError(f"{where}: key 'max_ratio' must be a fraction in (0, 1] (the most of one group a plan "
                         f"removes), got {pr['max_ratio']}")
    _check_latency_target(where, pr, m, path, require_data)

    run = tables["run"]
    _allowed(f"{path} [run]", "isolation", [run["isolation"]], ISOLATION)
    for key in ("timeout_s", "prepare_timeout_s"):
        if not (run[key] > 0 and math.isfinite(run[key])):
            raise SuiteError(f"{path} [run]: key {key!r} must be a finite number of seconds > 0, got {run[key]}")
    # how many processes fine-tune data-parallel: an execution resource (like a thread count), not in the cell ids
    if run["fine_tune_processes"] < 1:
        raise SuiteError(f"{path} [run]: key 'fine_tune_processes' must be an integer >= 1 (1: one process, no "
                         f"DDP), got {run['fine_tune_processes']}")
    if run["fine_tune_backend"] not in FINE_TUNE_BACKENDS:
        raise SuiteError(f"{path} [run]: key 'fine_tune_backend' has {run['fine_tune_backend']!r}; allowed values: "
                         "gloo (CPU processes, the default), nccl (one CUDA GPU per process)")
    procs, ft = run["fine_tune_processes"], tables["fine_tune"]
    if procs > 1 and ft["epochs"] and data["batch_size"] < procs:
        raise SuiteError(f"{path} [run]: fine_tune_processes = {procs} split each batch of [data] batch_size = "
                         f"{data['batch_size']} across the processes; give a batch_size >= {procs} or fewer "
                         "processes")

    models_raw = raw.get("models", {})
    if not isinstance(models_raw, dict):
        raise SuiteError(f"{path}: 'models' must hold tables ([models.NAME]), got {models_raw!r}")
    models: dict[str, dict[str, Any]] = {}
    for name, opts in models_raw.items():
        where = f"{path} [models.{name}]"
        if name not in m["models"]:
            raise SuiteError(f"{where}: {name!r} is not in [matrix] models; allowed values: "
                             f"{', '.join(m['models'])}")
        if not isinstance(opts, dict):
            raise SuiteError(f"{where}: must be a table of {', '.join(_MODEL_KEYS)}")
        bad = sorted(set(opts) - set(_MODEL_KEYS))
        if bad:
            raise SuiteError(f"{where}: unknown key(s) {', '.join(repr(b) for b in bad)}; allowed keys: "
                             f"{', '.join(_MODEL_KEYS)}")
        models[name] = {k: _check_type(where, k, v, _MODEL_KEYS[k]) for k, v in opts.items()}
        if models[name].get("kwargs"):
            try:
                zoo.check_kwargs(name, models[name]["kwargs"], models[name].get("num_classes"))
            except TypeError as e:
                raise SuiteError(f"{where}: key 'kwargs': {e}") from None
        size = models[name].get("input_size")
        if size is not None and not (size and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                  for v in size)):
            raise SuiteError(f"{where}: key 'input_size' must list positive integers without the batch dim (e.g. "
                             f"[3, 32, 32]), got {size!r}")
        if models[name].get("num_classes", 1) < 1:
            raise SuiteError(f"{where}: key 'num_classes' must be >= 1, got {models[name]['num_classes']}")
        if "weights" in models[name]:
            w = models[name]["weights"] = expand_env(models[name]["weights"], where, "weights", require_data)
            if require_data and not os.path.isfile(w):
                what = "is a folder, not a file" if os.path.isdir(w) else "does not exist"
                raise SuiteError(f"{where}: key 'weights' {w!r} {what}; give a local state-dict file "
                                 "(torch.save(model.state_dict(), path); pybench never downloads)")
    _check_folder_name(path, tables["suite"]["name"])
    data_root = data.pop("root")
    return Suite(name=tables["suite"]["name"], path=path, description=tables["suite"]["description"],
                 matrix=config.from_dict(config.Matrix, m), metrics=config.from_dict(config.MetricsSettings, met),
                 data=config.from_dict(config.DataSettings, data), data_root=data_root,
                 train=config.from_dict(config.TrainSettings, tables["train"]),
                 fine_tune=config.from_dict(config.FineTuneSettings, tables["fine_tune"]),
                 prune=config.from_dict(config.PruneSettings, pr), run=config.from_dict(config.RunSettings, run),
                 models=models, text=text)


# pb.latency_table's options a suite may set in [prune] lut_options
_LUT_OPTIONS = ("align", "max_points", "between", "target_ci", "max_time_s")


def _check_latency_target(where: str, pr: dict[str, Any], m: dict[str, Any], path: str, require_data: bool) -> None:
    """[prune] target / lut / lut_options / latency_rounds / latency_tolerance; a table file is resolved inside
    the suite's folder (in place, in ``pr``) and must fit every target of the matrix."""
    _allowed(where, "target", [pr["target"]], ("ratio", "latency"))
    latency_keys = [k for k in ("lut", "lut_options") if pr[k]]
    if pr["target"] != "latency":
        if latency_keys:
            raise SuiteError(f"{where}: key {latency_keys[0]!r} is used only with target = \"latency\"; set it or "
                             f"remove the key")
        return
    others = [s for s in m["schedules"] if s != "one_shot"]
    if others:
        raise SuiteError(f"{where}: target = \"latency\" plans one cut to each budget: [matrix] schedules must be "
                         f"[\"one_shot\"], got {', '.join(others)} too")
    _allowed(f"{where} lut_options", "lut_options", list(pr["lut_options"]), _LUT_OPTIONS,
             " (pb.latency_table's options)")
    if pr["latency_rounds"] < 1:
        raise SuiteError(f"{where}: key 'latency_rounds' must be an integer >= 1 (1: plan once on the table), got "
                         f"{pr['latency_rounds']}")
    if not 0 < pr["latency_tolerance"] < 1:
        raise SuiteError(f"{where}: key 'latency_tolerance' must be a fraction in (0, 1) (0.05: within 5 % of the "
                         f"budget), got {pr['latency_tolerance']}")
    if not pr["lut"]:
        return
    home = Path(path).resolve().parent if path != "<string>" else Path.cwd().resolve()
    lut = (home / expand_env(pr["lut"], where, "lut", require_data)).resolve()
    if not lut.is_relative_to(home):
        raise SuiteError(f"{where}: key 'lut' {pr['lut']!r} leads outside the suite's folder {str(home)!r}; keep "
                         "the table beside the suite (a path relative to it)")
    pr["lut"] = str(lut)
    if not require_data:
        return
    from pybench.prune import LatencyTable, LutMismatchError

    try:
        table = LatencyTable.load(lut)
    except (OSError, ValueError) as e:
        raise SuiteError(f"{where}: key 'lut' {pr['lut']!r}: {e}") from None
    for key, values in (("batch_size", m["batch_sizes"]), ("dtype", m["dtypes"]), ("backend", m["backends"]),
                        ("device", [d.split(":")[0] for d in m["devices"]])):
        for v in values:
            try:
                table.check(**{key: v})
            except LutMismatchError as e:
                raise SuiteError(f"{where}: key 'lut': [matrix] has {key} {v!r}: {e}; or leave 'lut' out to "
                                 "measure a table per target") from None


def _check_backends(where: str, specs: list[str], devices: list[str], dtypes: list[str], installed: bool) -> None:
    """Every backend known, with a mode it has, able to run each device and dtype of the suite; with
    ``installed`` (about to run here) its packages present too — else one error naming the backend, the reason
    and the pip extra."""
    from pybench.bench import backends as B

    for spec in specs:
        if not isinstance(spec, str):
            raise SuiteError(f"{where}: key 'backends' has {spec!r}; allowed values: {', '.join(sorted(B.BACKENDS))}")
        name, _ = B.parse(spec)
        if name not in B.BACKENDS:
            _allowed(where, "backends", [spec], sorted(B.BACKENDS), " (NAME or NAME:MODE)")
        try:
            backend = B.create(spec)
        except ValueError as e:
            raise SuiteError(f"{where}: key 'backends' has {spec!r}: {e}") from None
        for device in devices:
            for dtype in dtypes:
                why = B.unavailable(spec, device, dtype) if installed else B.static_unavailable(backend, device, dtype)
                if why:
                    raise SuiteError(f"{where}: key 'backends' has {spec!r}: {why}; drop it, or the device / dtype, "
                                     "from the suite")


def load(path: str | os.PathLike, data_root: str | None = None, require_data: bool = True) -> Suite:
    """Read and validate the suite file ``path`` (see :func:`loads`)."""
    p = Path(path)
    if p.is_dir():
        raise SuiteError(f"{p}: a folder, not a suite file; give a suite's TOML file (e.g. suites/smoke.toml)")
    if not p.is_file():
        raise SuiteError(f"{p}: no such suite file (the shipped ones are in suites/: "
                         f"{', '.join(sorted(s.stem for s in Path('suites').glob('*.toml'))) or 'none here'})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{p}: not a suite file (not UTF-8 text: byte {e.start} is {e.object[e.start]:#04x}); "
                         "a suite is a TOML file") from None
    except OSError as e:
        raise SuiteError(f"{p}: cannot read the suite file ({e.strerror or e})") from None
    return loads(text, str(p), data_root=data_root, require_data=require_data)


_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def _check_folder_name(path: str, name: str) -> None:
    """The suite's name becomes a folder under the results root: one plain name, never a path out of it."""
    if not _FOLDER_NAME.match(name) or ".." in name:
        raise SuiteError(f"{path} [suite]: name {name!r} is used as a folder name under the results root; use "
                         "letters, digits, '.', '_', '+' or '-' (no '/', no '..', not absolute, 100 at most)")


def parse_filter(exprs: list[str] | None) -> dict[str, list[str]]:
    """``["model=cifar_*", "level=0,0.5"]`` -> {key: [patterns]}; keys AND together, commas are alternatives."""
    out: dict[str, list[str]] = {}
    for expr in exprs or []:
        for part in expr.split(";"):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise SuiteError(f"--filter {expr!r}: expected KEY=VALUE[,VALUE...] with KEY one of "
                                 f"{', '.join(FILTER_KEYS)}")
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in FILTER_KEYS:
                raise SuiteError(f"--filter {expr!r}: unknown key {key!r}; allowed keys: {', '.join(FILTER_KEYS)}")
            pats = [v.strip() for v in value.split(",") if v.strip()]
            if not pats:
                raise SuiteError(f"--filter {expr!r}: key {key!r} has no pattern; give one or more after '=' "
                                 f"(e.g. {key}=*)")
            out.setdefault(key, []).extend(pats)
    return out


def _matches(value: Any, patterns: list[str]) -> bool:
    for pat in patterns:
        if isinstance(value, float):
            try:
                if float(pat) == value:
                    return True
            except ValueError:
                pass
        if fnmatch.fnmatchcase(str(value), pat):
            return True
    return False


def filter_cells(cells: list[Cell], exprs: list[str] | dict[str, list[str]] | None) -> list[Cell]:
    """The cells matching every key of the filter (glob patterns; numbers compare by value)."""
    f = exprs if isinstance(exprs, dict) else parse_filter(exprs)
    values = [{**c.config, "cell_id": c.cell_id, "group_id": c.group_id} for c in cells]
    out = [c for c, v in zip(cells, values, strict=True) if all(_matches(v[k], pats) for k, pats in f.items())]
    if f and cells and not out:  # a typo in a pattern must not pass as an empty, successful run
        seen = {k: sorted({str(v[k]) for v in values}) for k in f}
        have = "; ".join(f"{k}: {', '.join(v[:8])}{', ...' if len(v) > 8 else ''}" for k, v in seen.items())
        raise SuiteError(f"--filter matches none of the suite's {len(cells)} cells (the suite has {have})")
    return out
