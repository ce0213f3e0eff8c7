"""timm's models by name (``timm:NAME``): in the zoo, in suites and on the command line; clear errors for a name
timm lacks and for timm not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import pybench as pb
from pybench import cli
from pybench.bench import suite as S

timm = pytest.importorskip("timm", reason="timm is the [timm] extra")


def test_create_builds_timm_models_with_random_init_and_a_spec():
    m = pb.zoo.create("timm:resnet18", num_classes=7)
    assert isinstance(m, timm.models.ResNet) and m.fc.out_features == 7
    assert m.pybench_spec == {"name": "timm:resnet18", "kwargs": {"num_classes": 7}}
    assert pb.zoo.input_size("timm:resnet18") == (3, 224, 224)
    assert pb.zoo.input_size("timm:inception_v3") == (3, 299, 299)  # from timm's own config
    assert pb.zoo.known("timm:mixnet_s") and not pb.zoo.known("timm:no_such_net")
    assert "timm:resnet18" not in pb.zoo.names()  # a thousand names are not listed


def test_pruned_timm_model_saves_and_loads(tmp_path):
    m = pb.zoo.create("timm:mobilenetv3_small_050", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = pb.prune(m, x, ratio=0.5)
    pb.save(pruned, tmp_path / "p.pt")
    back = pb.load(tmp_path / "p.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x))


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"timm has no model 'resnet19'; did you mean .*'timm:resnet18'"):
        pb.zoo.create("timm:resnet19")


def test_suites_take_timm_names(tmp_path):
    text = textwrap.dedent("""
        [suite]
        name = "t"
        [matrix]
        models = ["timm:resnet18", "resnet18"]
    """)
    cells = S.loads(text, "t.toml").cells()
    assert {c.model for c in cells} == {"timm:resnet18", "resnet18"}
    assert {tuple(c.config["model_config"]["input_size"]) for c in cells} == {(3, 224, 224)}
    with pytest.raises(S.SuiteError, match="'timm:nope'"):
        S.loads(text.replace("resnet18\"]", "resnet18\", \"timm:nope\"]"), "t.toml")


def test_cli_prunes_a_timm_model(capsys):
    assert cli.main(["prune", "timm:lcnet_050", "--ratio", "0.5", "--input-size", "3", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "params " in out and "pinned: 0 of " in out


def test_timm_not_installed_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["timm"] = None  # as if timm were not installed
        from pybench import cli
        from pybench.bench import suite
        assert cli.main(["prune", "timm:resnet18"]) == 2
        try:
            suite.loads('[suite]\\nname = "t"\\n[matrix]\\nmodels = ["timm:resnet18"]\\n', "t.toml")
        except suite.SuiteError as e:
            print("SUITE", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pybench prune: zoo: 'timm:resnet18' needs timm, which is not installed: pip install 'pybench[timm]'" \
        in r.stderr
    assert r.stderr.count("\n") == 1  # one line, no traceback
    assert "SUITE" in r.stdout and "pybench[timm]" in r.stdout


@pytest.mark.parametrize("name", ["timm:mixnet_s", "timm:res2net50_14w_8s"])
def test_split_models_prune_inside_their_parts_and_round_trip_through_save(name, tmp_path):
    m = pb.zoo.create(name, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned, plan = pb.prune(m, x, ratio=0.5)
    assert not any("splits channels at fixed sizes" in r for r, _ in plan.pinned), plan.pinned
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in m.parameters())
    pb.save(pruned, tmp_path / "p.pt")
    back = pb.load(tmp_path / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x))
        torch.testing.assert_close(pruned(x), pb.mask(m, plan)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["timm:convnextv2_atto", "timm:skresnet18"])
def test_grn_and_split_attention_models_prune_everything_but_the_output(name, tmp_path):
    """ConvNeXt-V2's GlobalResponseNorm (gamma / beta, a mean over channels) and SKNet's selective-kernel attention
    (input split by in_channels // num_paths, softmax over the paths) no longer pin their channels."""
    torch.manual_seed(0)
    m = pb.zoo.create(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    pruned, plan = pb.prune(m, x, ratio=0.5)
    assert [r for r, _ in plan.pinned] == ["model output"], plan.pinned
    assert sum(p.numel() for p in pruned.parameters()) < 0.35 * sum(p.numel() for p in m.parameters())
    pb.save(pruned, tmp_path / "p.pt")
    back = pb.load(tmp_path / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), pb.mask(m, plan)(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(back(x), pruned(x))
