"""Bad input, hostile files and faults, driven through the CLI in-process: each gets exit 2 and one line naming what
is wrong, nothing is written outside the folder the user named, and nothing already measured is lost."""

from __future__ import annotations

import fcntl
import json
import os
import textwrap

import pytest
import torch

from pybench import cli
from pybench.bench import driver as runner
from pybench.bench import results as R

SUITE = textwrap.dedent("""
    [suite]
    name = "{name}"
    [matrix]
    models = ["xor_mlp"]
    levels = [0.5]
    batch_sizes = [1]
    [metrics]
    collect = ["macs"]
    repeats = 1
    warmup = 0
    iters = 1
""")


def _suite(tmp_path, name="bad", file="s.toml"):
    p = tmp_path / file
    p.write_text(SUITE.format(name=name))
    return p


def _one_line_exit_2(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "a/b", "..", ".hidden", "x" * 101, "a\\b", ""])
def test_suite_names_never_become_paths(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE.format(name=name.replace("\\", "\\\\")))
    _one_line_exit_2(capsys, cli.main(["run", "s.toml", "--no-progress"]), "[suite]", "folder name")
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]  # nothing written anywhere
    assert not (tmp_path.parent / "escaped").exists()


def test_a_run_refused_before_it_starts_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _suite(tmp_path)
    _one_line_exit_2(capsys, cli.main(["run", "s.toml", "--no-progress", "--filter", "colour=red"]), "colour")
    assert not (tmp_path / "results").exists()
    # and a later plain --resume does not pick up anything
    _one_line_exit_2(capsys, cli.main(["run", "s.toml", "--no-progress", "--resume"]), "no earlier run")


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys):
    s = _suite(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # another run holds the folder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("process 4242 (pybench run, started now)\n")
        held.flush()
        _one_line_exit_2(capsys, cli.main(["run", str(s), "--out", str(out), "--no-progress"]),
                         "in use by process 4242")
    assert not (out / "records.jsonl").exists()
    assert cli.main(["run", str(s), "--out", str(out), "--no-progress", "--resume"]) == 0  # released: it runs
    assert len(R.load(out)) == 2


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    with runner.folder_lock(out):
        with pytest.raises(runner.SuiteError, match=f"in use by process {os.getpid()}"):
            with runner.folder_lock(out):
                pass
    with runner.folder_lock(out):  # released on exit
        pass


def test_resume_refuses_a_folder_of_another_suite(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", str(_suite(tmp_path, "first")), "--out", str(out), "--no-progress"]) == 0
    before = (out / "records.jsonl").read_bytes()
    capsys.readouterr()
    other = _suite(tmp_path, "second", "t.toml")
    _one_line_exit_2(capsys, cli.main(["run", str(other), "--out", str(out), "--resume", "--no-progress"]),
                     "holds a run of suite 'first', not 'second'")
    assert (out / "records.jsonl").read_bytes() == before  # nothing appended, nothing lost


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_exit_2(capsys, cli.main(["run", str(_suite(tmp_path)), "--out", str(f), "--no-progress"]),
                     "is a file, not a folder")
    assert f.read_text() == "x"


def test_resume_never_unpickles_the_cache(tmp_path, monkeypatch):
    """A run folder from elsewhere whose cache/pruned-*.pt is a pickle (or names os:system as its builder) runs no
    code on --resume: the cache is refused and the model rebuilt."""
    monkeypatch.chdir(tmp_path)
    s = _suite(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["run", str(s), "--out", str(out), "--no-progress"]) == 0
    caches = sorted((out / "cache").glob("pruned-*.pt"))
    assert caches and torch.load(caches[0], weights_only=True)["format"] == "pybench.pruned/1"  # no pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save(Evil(), caches[0])
    (out / "records.jsonl").write_text("")  # make every cell run again, reading the cache
    assert cli.main(["run", str(s), "--out", str(out), "--no-progress", "--resume"]) == 0
    torch.save({"format": "pybench.pruned/1", "state_dict": {},
                "spec": json.dumps({"base": {"callable": "os:system", "kwargs": {"command": "touch PWNED"}},
                                    "modules": {}})}, caches[0])
    (out / "records.jsonl").write_text("")
    assert cli.main(["run", str(s), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert not (tmp_path / "PWNED").exists()
    assert {r["status"] for r in R.Store(out).records()} == {"ok"}


@pytest.mark.parametrize("table, says", [
    ('[models.xor_mlp]\nkwargs = {hiden = 4}\n', "[models.xor_mlp]: key 'kwargs'"),
    ('[prune]\ncriterion_options = {max_batch = 2}\n', "key 'criterion_options' has 'max_batch'"),
])
def test_options_nobody_takes_are_refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table, says):
    _refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table, says)


def _refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table: str, says: str) -> None:
    """The test suite plus ``table``: `pybench run` refuses it in one line, exit 2, before any folder exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE.format(name="refused") + table)
    _one_line_exit_2(capsys, cli.main(["run", "s.toml", "--no-progress"]), says)
    assert not (tmp_path / "results").exists()


def test_torchvision_kwargs_are_checked_without_building_the_model(tmp_path):
    from pybench.bench import suite as S

    text = SUITE.format(name="tv").replace('"xor_mlp"', '"resnet18"')
    S.loads(text + "[models.resnet18]\nkwargs = {zero_init_residual = true}\n", "ok.toml")
    with pytest.raises(S.SuiteError, match="unexpected keyword argument 'widht'"):
        S.loads(text + "[models.resnet18]\nkwargs = {widht = 2}\n", "bad.toml")


def test_unknown_criterion_options_at_the_call():
    import torch.nn as nn

    import pybench as pb

    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="criterion 'l1' takes no option.*'max_batches'; its options: seed"):
        pb.prune(m, x, ratio=0.5, max_batches=3)
    with pytest.raises(ValueError, match="criterion 'random' takes no option.*'sed'; its options: seed"):
        pb.score(m, pb.trace(m, x), "random", sed=1)
    with pytest.raises(TypeError, match="ratoi"):
        pb.plan(pb.trace(m, x), pb.score(m, pb.trace(m, x), "l1"), ratoi=0.5)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagefolder"])
def test_a_data_root_that_does_not_exist_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    for root in ("/no/such/folder", "afile"):
        (tmp_path / "s.toml").write_text(SUITE.format(name="d") + f'[data]\nname = "{dataset}"\nroot = "{root}"\n')
        _one_line_exit_2(capsys, cli.main(["run", "s.toml", "--no-progress"]), repr(root), "pybench never downloads")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("sig, code, why", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")])
def test_sigterm_and_ctrl_c_stop_cleanly_and_say_how_to_resume(tmp_path, sig, code, why):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    s = tmp_path / "s.toml"
    s.write_text(SUITE.format(name="sig").replace("levels = [0.5]", "levels = [0.25, 0.5]")
                 .replace('criteria = ["l1"]', "").replace("batch_sizes = [1]", "batch_sizes = [1, 2, 4]"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pybench.cli", "run", str(s), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "records.jsonl").is_file():
        time.sleep(0.2)
    while time.time() < deadline and not (out / "records.jsonl").read_text():
        time.sleep(0.2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {why}" in err and f"Resume with: pybench run {s} --out {out} --resume" in err
    assert "Traceback" not in err
    psutil.wait_procs(workers, timeout=30)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]  # no worker outlives it
    done = R.Store(out).records()
    assert done and all(r["status"] == "ok" for r in done)  # what finished is kept, nothing torn
    assert subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True).returncode == 0
    assert len(R.Store(out).records()) == 9  # dense 3 + two levels x 3 batch sizes, each once


def test_report_says_how_many_corrupt_lines_it_skipped_and_where(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", str(_suite(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    lines = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    (out / "records.jsonl").write_bytes(lines[0] + b"\x00\x00garbage in the middle\n" + b"".join(lines[1:]))
    capsys.readouterr()
    assert cli.main(["report", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable line(s) (line 2)" in err and str(out / "records.jsonl") in err
    with pytest.warns(R.CorruptRecordsWarning, match="line 2"):
        assert len(R.load(out)) == 2  # the other records are all read


@pytest.mark.parametrize("where", ["afile/sub", "afile", "locked/sub"])
def test_report_and_compare_outputs_that_cannot_be_written(tmp_path, capsys, where):
    out = tmp_path / "run"
    assert cli.main(["run", str(_suite(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    (tmp_path / "afile").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        capsys.readouterr()
        if os.geteuid() == 0 and where.startswith("locked"):
            pytest.skip("root writes anywhere")
        _one_line_exit_2(capsys, cli.main(["report", str(out), "--quiet", "--out", str(tmp_path / where)]), "--out")
        capsys.readouterr()
        code = cli.main(["compare", str(out), str(out), "--html", str(tmp_path / where / "c.html")])
        _one_line_exit_2(capsys, code, "--html")
    finally:
        locked.chmod(0o700)
    assert (tmp_path / "afile").read_text() == "x"


def test_prune_with_an_input_the_model_does_not_take(capsys):
    _one_line_exit_2(capsys, cli.main(["prune", "cifar_resnet20", "--input-size", "5", "32", "32"]),
                     "does not run on an input of size (1, 5, 32, 32)", "--input-size")


def test_prune_output_into_a_missing_folder(tmp_path, capsys):
    _one_line_exit_2(capsys, cli.main(["prune", "xor_mlp", "-o", str(tmp_path / "no" / "such" / "m.pt")]),
                     "--output", "cannot write the model there")


def test_run_out_without_permission_is_one_line(tmp_path, capsys, monkeypatch):
    """No permission to create the run folder (simulated: root may write anywhere): exit 2, nothing created."""
    from pathlib import Path

    def refuse(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    _one_line_exit_2(capsys, cli.main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "r"), "--no-progress"]),
                     "--out", "cannot create the run folder (Permission denied)")
    assert not (tmp_path / "r").exists()


def test_results_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "root").write_text("x")
    _one_line_exit_2(capsys, cli.main(["run", str(_suite(tmp_path)), "--results-root", str(tmp_path / "root"),
                                       "--no-progress"]), "--results-root", "is a file, not a folder")
    assert (tmp_path / "root").read_text() == "x"


@pytest.mark.parametrize("content, says", [(b"\xff\xfe\x00garbage", "not UTF-8 text"), (None, "a folder, not a suite")])
def test_a_suite_path_that_is_no_suite_file(tmp_path, capsys, content, says):
    p = tmp_path / "s.toml"
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    _one_line_exit_2(capsys, cli.main(["run", str(p), "--no-progress"]), says)


@pytest.mark.parametrize("flt, says", [("model=", "has no pattern"),
                                       ("model=nomatch*", "matches none of the suite's 2 cells"),
                                       ("level=0.7", "level: 0.0, 0.5")])
def test_a_filter_that_selects_nothing_is_refused_and_leaves_no_folder(tmp_path, capsys, flt, says):
    out = tmp_path / "r"
    code = cli.main(["run", str(_suite(tmp_path)), "--out", str(out), "--no-progress", "--filter", flt])
    _one_line_exit_2(capsys, code, "--filter", says)
    assert not out.exists()


def test_retry_failed_without_resume_is_a_usage_error(tmp_path, capsys):
    _one_line_exit_2(capsys, cli.main(["run", str(_suite(tmp_path)), "--retry-failed", "--no-progress"]),
                     "--retry-failed", "--resume")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("table, says", [
    ('[prune]\nschedule_options = { iterative = { stesp = 2 } }\n', "schedule_options: key 'iterative' has 'stesp'"),
    ('[prune]\nschedule_options = { one_shot = { normalise_by = "max" } }\n', "allowed values: normalize_by"),
    ('[prune]\nschedule_options = { one_shot = { round_to = 8 } }\n', "are set in [prune]"),
    ('[prune]\nschedule_options = { one_shot = { normalize_by = "zscore" } }\n', "allowed values: mean, max, l2"),
    ('[prune]\nschedule_options = { iterative = 3 }\n', "must be a table"),
])
def test_schedule_options_nobody_takes_are_refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table, says):
    _refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table, says)


def test_every_shipped_schedule_option_is_one_the_schedule_takes():
    from pybench.bench import suite as S

    for p in sorted(__import__("pathlib").Path("suites").glob("*.toml")):
        S.load(p, require_data=False)  # sandor's alpha / order, babel's steps, wang's target / rate ...


def test_a_root_for_a_generated_dataset_is_refused_but_data_root_is_machine_wide(tmp_path, capsys):
    from pybench.bench import suite as S

    text = SUITE.format(name="d") + '[data]\nname = "xor"\n'
    with pytest.raises(S.SuiteError, match="dataset 'xor' is generated or bundled and takes no key 'root'"):
        S.loads(text + 'root = "/data"\n', "s.toml")
    # one --data-root for every suite of a nightly script: the generated datasets ignore it (and their cells run)
    assert S.loads(text, "s.toml", data_root=str(tmp_path / "anything")).data_root == ""
    (tmp_path / "x.toml").write_text(text)
    out = tmp_path / "r"
    assert cli.main(["run", str(tmp_path / "x.toml"), "--out", str(out), "--no-progress",
                     "--data-root", str(tmp_path / "nowhere")]) == 0
    assert {r["status"] for r in R.Store(out).records()} == {"ok"}


@pytest.mark.parametrize("command", ["prune", "profile"])
def test_an_unknown_criterion_on_the_command_line(capsys, command):
    _one_line_exit_2(capsys, cli.main([command, "xor_mlp", "--criterion", "l3"]), "criterion must be one of",
                     "l1", "'l3'")


@pytest.mark.parametrize("command", ["report", "check", "compare"])
def test_a_file_where_a_run_folder_is_expected(tmp_path, capsys, command):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    argv = {"report": ["report", str(f)], "check": ["check", str(f), "--baseline", str(f)],
            "compare": ["compare", str(f), str(f)]}[command]
    _one_line_exit_2(capsys, cli.main(argv), "is a file, not a run folder")


def _hostile_files(tmp_path):
    """(name, path, what the refusal says) of files that are not pb.save's, each as an attacker or an accident
    would make it."""
    import zipfile

    import torchvision

    from pybench import zoo
    from pybench.prune import serialize

    good = tmp_path / "good.pt"
    serialize.save(zoo.create("xor_mlp"), good)
    raw = good.read_bytes()
    files = {"random": (os.urandom(64), "torch.load cannot read it"), "empty": (b"", "torch.load cannot read it"),
             "truncated": (raw[: len(raw) // 2], "truncated, damaged or another format")}
    out = []
    for name, (data, says) in files.items():
        (tmp_path / name).write_bytes(data)
        out.append((name, tmp_path / name, says))
    torch.save(torchvision.models.resnet18(num_classes=2), tmp_path / "pickled")
    out.append(("pickled module", tmp_path / "pickled",
                "it pickles objects (it names torchvision.models.resnet.ResNet)"))
    with zipfile.ZipFile(tmp_path / "zip", "w") as z:
        z.writestr("x/data.pkl", b"garbage")
    out.append(("foreign zip", tmp_path / "zip", "torch.load cannot read it"))
    torch.save({"format": serialize.FORMAT, "spec": "{not json", "state_dict": {}}, tmp_path / "badspec")
    out.append(("damaged spec", tmp_path / "badspec", "its spec or state dict is damaged"))
    blob = torch.load(good, weights_only=True)
    doc = json.loads(blob["spec"])
    first = next(iter(doc["modules"]))
    doc["modules"][first]["attrs"]["forward"] = 1  # not a size attribute: a file may set nothing else
    torch.save({**blob, "spec": json.dumps(doc)}, tmp_path / "attrs")
    out.append(("foreign attribute", tmp_path / "attrs", "'forward' = 1 is not a size attribute"))
    # pickle opcodes that pop a mark never pushed or index past the stack: torch's unpickler fails with IndexError,
    # not its own error (random bytes hit this now and then)
    for name, data, why in (("no mark", b"\x80\x02e.", "pop from empty list"),
                            ("bad index", b"\x80\x02K\x01K\x02s.", "list index out of range")):
        (tmp_path / name).write_bytes(data)
        out.append((name, tmp_path / name, f"torch.load cannot read it ({why})"))
    return out


def test_hostile_model_files_are_refused_clearly_by_pb_load_and_the_cli(tmp_path, capsys):
    import pybench as pb

    cases = _hostile_files(tmp_path)
    assert len(cases) == 9
    for name, path, says in cases:
        with pytest.raises(ValueError, match=None) as info:
            pb.load(path)
        assert says in str(info.value), (name, info.value)
        assert "weights_only` set to `False`" not in str(info.value)  # torch's advice to load it unsafely
        _one_line_exit_2(capsys, cli.main(["prune", str(path), "--input-size", "2"]), says)


@pytest.mark.parametrize("table, says", [
    # SUITE ends inside [metrics]: these lines are its keys
    ("target_ci = 0\n", "[metrics]: key 'target_ci' must be a relative half-width in (0, 1)"),
    ("target_ci = 1.5\n", "got 1.5"),
    ("target_ci = nan\n", "key 'target_ci'"),
    ("max_time_s = 0\n", "[metrics]: key 'max_time_s' must be a finite number of seconds > 0, got 0"),
    ("max_time_s = inf\n", "key 'max_time_s' must be a finite number of seconds > 0, got inf"),
    ("threads = -1\n", "[metrics]: key 'threads' must be >= 0"),
    ("cpu_affinity = [-1]\n", "key 'cpu_affinity' must list distinct CPU numbers >= 0 (e.g. [0] or [2, 3]), got [-1]"),
    ("cpu_affinity = [0, 0]\n", "key 'cpu_affinity' must list distinct CPU numbers >= 0"),
    ("cpu_affinity = [99999]\n", "key 'cpu_affinity' has [99999]: this machine lets pybench run on CPUs [0"),
    ('[data]\nname = "xor"\noptions = { n_trian = 10 }\n', "[data]: key 'options' has 'n_trian'; allowed values:"),
    ('[data]\nname = "xor"\nbatch_size = 0\n', "key 'batch_size' must be >= 1"),
    ('[data]\nname = "xor"\n[train]\nepochs = 1\nlr = -0.1\n', "[train]: key 'lr' must be a finite number > 0"),
    ('[data]\nname = "xor"\n[fine_tune]\nmomentum = 1.5\n', "'momentum' at most 1"),
    ('[fine_tune]\nweight_decay = -1.0\n', "key 'weight_decay' must be >= 0"),
    ('[prune]\ncalibration_batches = -1\n', "key 'calibration_batches' must be >= 0"),
    ('[prune]\nexample_batch_size = 0\n', "key 'example_batch_size' must be >= 1"),
    ('[run]\ntimeout_s = nan\n', "key 'timeout_s' must be a finite number of seconds > 0, got nan"),
    ('[run]\nprepare_timeout_s = inf\n', "got inf"),
    ('[models.xor_mlp]\ninput_size = [-2]\n', "key 'input_size' must list positive integers"),
    ('[models.xor_mlp]\ninput_size = []\n', "key 'input_size' must list positive integers"),
    ('[models.xor_mlp]\nnum_classes = 0\n', "key 'num_classes' must be >= 1"),
    ('[models.xor_mlp]\nweights = "no/such/weights.pt"\n', "key 'weights' 'no/such/weights.pt' does not exist"),
])
def test_suite_values_out_of_range_are_refused_when_it_loads(tmp_path, capsys, monkeypatch, table, says):
    _refused_when_the_suite_loads(tmp_path, capsys, monkeypatch, table, says)


def _small():
    import torch.nn as nn

    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    return m, torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("case, error, says", [
    ("empty scores", ValueError, "scores is empty but the graph has 1 groups"),
    ("scores of another trace", ValueError, "scores hold 1 group(s) that are not this graph's"),
    ("NaN scores", ValueError, "hold NaN at [0, 1, 2, 3, 4]"),
    ("scores not a dict", TypeError, "scores must be a dict"),
    ("graph of another model", ValueError, "has no module '0' that the graph names"),
])
def test_plans_that_would_silently_prune_nothing_or_garbage_are_refused(case, error, says):
    """A plan from no scores, another trace's scores or NaN would prune nothing (or at random) without a word."""
    from collections import OrderedDict

    import torch.nn as nn

    import pybench as pb

    m, x = _small()
    g = pb.trace(m, x)
    scores = pb.score(m, g, "l1")
    with pytest.raises(error) as info:
        if case == "empty scores":
            pb.plan(g, {}, ratio=0.5)
        elif case == "scores of another trace":
            pb.plan(g, pb.score(m, pb.trace(m, x), "l1"), ratio=0.5)
        elif case == "NaN scores":
            pb.plan(g, {k: torch.full_like(v, float("nan")) for k, v in scores.items()}, ratio=0.5)
        elif case == "scores not a dict":
            pb.plan(g, list(scores.values()), ratio=0.5)
        else:
            pb.score(nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3))), g, "l1")
    assert says in str(info.value), info.value
    assert pb.plan(g, scores, ratio=0.5).keep  # the right scores still plan


def test_weights_files_that_are_not_state_dicts_are_refused_clearly(tmp_path):
    import pybench as pb

    for name, path, says in _hostile_files(tmp_path)[:4]:  # random, empty, truncated, a pickled module
        with pytest.raises(ValueError) as info:
            pb.zoo.create("xor_mlp", weights=path)
        assert f"{path} is not a weights file" in str(info.value) and says in str(info.value), (name, info.value)
        assert "weights_only` set to `False`" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        pb.zoo.create("xor_mlp", weights=tmp_path)
