"""Models nobody registered: ``package.module:callable`` references and ``pybench.models`` plugins, in the zoo, the
CLI and suites; and model files that name code outside the registry are refused unless trusted by name."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import pybench as pb
from pybench import cli
from pybench.bench import suite as S
from pybench.zoo import _references

USER_MODELS = '''
import torch.nn as nn


def build_net(num_classes=10, width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


build_net.input_size = (3, 16, 16)


class Net(nn.Module):
    def __init__(self, width=6):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x).relu())


def not_a_model(num_classes=10):
    return "a string"


CONSTANT = 3
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """``mymodels.py`` in the working folder, as a user's own code beside their suite."""
    (tmp_path / "mymodels.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import sys

    sys.modules.pop("mymodels", None)


def test_callable_reference_builds_and_prunes(user_models):
    m = pb.zoo.create("mymodels:build_net", num_classes=5, width=12).eval()
    assert m[0].out_channels == 12 and m[-1].out_features == 5
    assert m.pybench_spec == {"name": "mymodels:build_net", "kwargs": {"num_classes": 5, "width": 12}}
    assert pb.zoo.input_size("mymodels:build_net") == (3, 16, 16)  # the builder's own attribute
    x = torch.randn(2, 3, 16, 16)
    pruned, _ = pb.prune(m, x, ratio=0.5)
    assert pruned[0].out_channels == 6 and pruned(x).shape == (2, 5)
    cls = pb.zoo.create("mymodels:Net", width=4)  # a class, with no num_classes
    assert cls.conv.out_channels == 4 and pb.zoo.input_size("mymodels:Net") == (3, 224, 224)
    with pytest.raises(ValueError, match="takes no num_classes"):
        pb.zoo.create("mymodels:Net", num_classes=7)


@pytest.mark.parametrize("ref, says", [
    ("no_such_module_xyz:build", "module 'no_such_module_xyz' does not import"),
    ("mymodels:missing", "'mymodels' has no attribute 'missing'"),
    ("mymodels:CONSTANT", "names a int, not a function or class"),
    ("mymodels:a:b", "is not 'package.module:callable'"),
    ("../mymodels:build_net", "is not 'package.module:callable'"),
    ("mymodels:", "is not 'package.module:callable'"),
])
def test_bad_references_name_themselves(user_models, ref, says):
    with pytest.raises(pb.zoo.ModelReferenceError, match="model reference") as e:
        pb.zoo.create(ref)
    assert repr(ref) in str(e.value) and says in str(e.value)


def test_a_builder_that_returns_no_module(user_models):
    with pytest.raises(pb.zoo.ModelReferenceError, match="'mymodels:not_a_model'.*returned str, not a torch.nn"):
        pb.zoo.create("mymodels:not_a_model")


def _install_plugin(root, name: str, value: str) -> None:
    """A package on sys.path whose metadata ships a ``pybench.models`` entry point, as ``pip install`` leaves it."""
    info = root / "plugpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pybench.models]\n{name} = {value}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _references.plugin_builders.cache_clear()
    yield tmp_path
    _references.plugin_builders.cache_clear()
    from pybench.zoo import _registry

    for name in ("plugnet", "brokennet"):
        _registry._ENTRIES.pop(name, None)


def test_plugin_entry_point_is_a_zoo_name(user_models, plugin_path):
    _install_plugin(plugin_path, "plugnet", "mymodels:build_net")
    assert "plugnet" in pb.zoo.names() and pb.zoo.known("plugnet")
    m = pb.zoo.create("plugnet", num_classes=3)
    assert m[-1].out_features == 3 and m.pybench_spec["name"] == "plugnet"
    assert pb.zoo.from_registry("plugnet") and not pb.zoo.from_registry("mymodels:build_net")


def test_broken_plugin_names_its_entry_point(plugin_path):
    _install_plugin(plugin_path, "brokennet", "no_such_plugin_module:build")
    with pytest.raises(pb.zoo.ModelReferenceError, match="'brokennet'.*'no_such_plugin_module:build' does not load"):
        pb.zoo.create("brokennet")


def _file_naming(path, base: dict) -> None:
    """A well-formed weights-only model file whose builder spec is ``base`` (as an attacker would write it)."""
    torch.save({"format": "pybench.pruned/1", "spec": json.dumps({"base": base, "modules": {}}),
                "state_dict": {}}, path)


@pytest.mark.parametrize("base", [{"callable": "os:system", "kwargs": {"command": "touch PWNED"}},
                                  {"name": "os:system", "kwargs": {"command": "touch PWNED"}},
                                  {"name": "subprocess:getoutput", "kwargs": {"cmd": "touch PWNED"}}])
def test_a_model_file_never_runs_code_it_names(tmp_path, monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "evil.pt"
    _file_naming(f, base)
    with pytest.raises(PermissionError, match="outside pybench's model registry") as e:
        pb.load(f)
    assert "trust=" in str(e.value) and repr(base.get("name", base.get("callable"))) in str(e.value)
    assert cli.main(["prune", str(f)]) == 2
    assert not (tmp_path / "PWNED").exists()


def test_cli_refuses_a_code_file_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "evil.pt"
    _file_naming(f, {"callable": "os:system", "kwargs": {"command": "touch PWNED"}})
    assert cli.main(["prune", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust os:system" in err and "Traceback" not in err
    torch.save({"not": "ours"}, tmp_path / "other.pt")
    assert cli.main(["prune", str(tmp_path / "other.pt")]) == 2
    assert "not a pybench pruned-model file" in capsys.readouterr().err
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04not a pickle at all")
    assert cli.main(["prune", str(tmp_path / "pickle.pt")]) == 2
    assert "is not a pybench model file: torch.load cannot read it" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_trusted_user_builder_round_trips(user_models):
    m = pb.zoo.create("mymodels:build_net", width=8).eval()
    x = torch.randn(1, 3, 16, 16)
    pruned, _ = pb.prune(m, x, ratio=0.5)
    f = user_models / "p.pt"
    pb.save(pruned, f)
    with pytest.raises(PermissionError):
        pb.load(f)
    with pytest.raises(PermissionError):
        pb.load(f, trust=["mymodels:Net"])  # another callable of the module is not this one
    for trust in (["mymodels:build_net"], "mymodels:build_net", ["mymodels"]):
        loaded = pb.load(f, trust=trust)
        with torch.no_grad():
            assert torch.equal(loaded(x), pruned(x))
    assert not pb.zoo.trusted("mymodelsx:build_net", ["mymodels"])  # a package prefix, not a string prefix
    assert cli.main(["prune", str(f), "--trust", "mymodels:build_net", "--input-size", "3", "16", "16"]) == 0


def test_cli_prunes_a_reference(user_models, capsys):
    out = user_models / "net.pt"
    assert cli.main(["prune", "mymodels:build_net", "--ratio", "0.5", "-o", str(out)]) == 0
    assert "params" in capsys.readouterr().out and out.exists()
    assert cli.main(["prune", "no_such_module_xyz:build"]) == 2
    err = capsys.readouterr().err
    assert "'no_such_module_xyz:build'" in err and len(err.strip().splitlines()) == 1


SUITE = textwrap.dedent("""
    [suite]
    name = "refs"
    [matrix]
    models = [{models}]
    levels = [0.5]
    [models."mymodels:build_net"]
    kwargs = {{width = 8}}
""")


def test_suite_names_a_reference(user_models):
    s = S.loads(SUITE.format(models='"mymodels:build_net"'), "refs.toml")
    cells = S.expand(s)
    assert {c.config["model"] for c in cells} == {"mymodels:build_net"}
    assert cells[0].config["model_config"]["input_size"] == [3, 16, 16]
    with pytest.raises(S.SuiteError, match="'mymodels:nope'.*has no attribute 'nope'"):
        S.loads(SUITE.format(models='"mymodels:nope"').replace('[models."mymodels:build_net"]\nkwargs = {width = 8}',
                                                              ""), "refs.toml")


def test_suite_runs_a_reference_end_to_end(user_models):
    (user_models / "refs.toml").write_text(SUITE.format(models='"mymodels:build_net"')
                                           + '[metrics]\ncollect = ["macs"]\nrepeats = 1\nwarmup = 0\niters = 1\n')
    assert cli.main(["run", "refs.toml", "--out", str(user_models / "run")]) == 0
    recs = [json.loads(line) for line in (user_models / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["status"] for r in recs} == {"ok"} and len(recs) == 2
    macs = {r["config"]["level"]: r["achieved"]["macs"] for r in recs}
    assert macs[0.5] < 0.5 * macs[0.0]
