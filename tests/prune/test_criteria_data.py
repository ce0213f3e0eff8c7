"""Data-driven criteria, LFE and global-scope normalisation against references computed independently here."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pybench as pb
from pybench.prune.criteria import data_driven as cd
from pybench.prune.criteria import lfe
from pybench.prune.planning import normalize
from pybench.prune.planning import plan as make_plan

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*reference.*")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet20", num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics so activations differ per channel
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    m.eval()
    g = pb.trace(m, torch.randn(1, 3, 32, 32))
    x = torch.randn(12, 3, 32, 32)
    y = torch.randint(0, 10, (12,))
    return m, g, DataLoader(TensorDataset(x, y), batch_size=6)


@pytest.fixture(scope="module")
def xor_net():
    torch.manual_seed(1)
    m = pb.zoo.create("xor_mlp", hidden=8).eval()
    g = pb.trace(m, torch.randn(1, 2))
    x = torch.randn(200, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return m, g, DataLoader(TensorDataset(x, y), batch_size=50)


def _inputs_of(model, loader, names):
    """Every batch's input to each named module, through a plain forward hook."""
    seen = {n: [] for n in names}
    mods = dict(model.named_modules())
    hs = [mods[n].register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().clone())) for n in names]
    with torch.no_grad():
        for x, _ in loader:
            model(x)
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _ref_stats(t):
    dims = [0] + list(range(2, t.dim()))
    t = t.double()
    return t.mean(dims), t.var(dims, unbiased=False).sqrt(), (t == 0).double().mean(dims)


def test_data_criteria_are_registered():
    for name in ("fpgm", "act_mean", "act_std", "apoz", "taylor", "lfe"):
        assert name in pb.prune.criteria.CRITERIA


def test_activation_criteria_match_reference_single_consumer(resnet):
    m, g, dl = resnet
    grp = g.group_of("layer1.0.conv1")
    assert [c.name for c in grp.consumers] == ["layer1.0.conv2"]
    act = _inputs_of(m, dl, ["layer1.0.conv2"])["layer1.0.conv2"]
    mean, std, apoz = _ref_stats(act)
    torch.testing.assert_close(pb.score(m, g, "act_mean", data=dl)[grp], mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(pb.score(m, g, "act_std", data=dl)[grp], std, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(pb.score(m, g, "apoz", data=dl)[grp], 1 - apoz, rtol=1e-6, atol=1e-9)
    assert apoz.max() > 0  # post-ReLU: zeros exist, so the apoz check is not vacuous


def test_activation_residual_group_sums_distinct_tensors(resnet):
    m, g, dl = resnet
    grp = g.group_of("conv1")
    names = sorted(c.name for c in grp.consumers)
    assert names == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"]
    acts = _inputs_of(m, dl, names)
    # layer2.0.conv1 and its shortcut read the same tensor: counted once
    torch.testing.assert_close(acts["layer2.0.conv1"], acts["layer2.0.shortcut.0"])
    expect = sum(_ref_stats(acts[n])[0] for n in names if n != "layer2.0.shortcut.0")
    torch.testing.assert_close(pb.score(m, g, "act_mean", data=dl)[grp], expect, rtol=1e-6, atol=1e-9)


def test_activation_flatten_linear_consumer(xor_net):
    m, g, dl = xor_net
    (grp,) = g.groups
    act = _inputs_of(m, dl, ["fc2"])["fc2"]
    torch.testing.assert_close(pb.score(m, g, "act_mean", data=dl)[grp], act.double().mean(0))


def test_max_batches_limits_the_pass(resnet):
    m, g, dl = resnet
    grp = g.group_of("layer1.0.conv1")
    first = DataLoader(TensorDataset(*dl.dataset[:6]), batch_size=6)
    a = pb.score(m, g, "act_std", data=dl, max_batches=1)[grp]
    b = pb.score(m, g, "act_std", data=first)[grp]
    torch.testing.assert_close(a, b)


def test_taylor_matches_autograd_reference(resnet):
    m, g, dl = resnet
    grp = g.group_of("layer2.1.conv1")
    (cons,) = [c.name for c in grp.consumers]
    mods = dict(m.named_modules())
    total, n = 0, 0
    for x, y in dl:
        store = {}
        h = mods[cons].register_forward_pre_hook(lambda mod, a, store=store: store.setdefault("a", a[0]))
        out = m(x)
        h.remove()
        a = store["a"]
        (ga,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), [a])
        total = total + (a * ga).mean((2, 3)).abs().sum(0).double()
        n += x.shape[0]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = pb.score(m, g, "taylor", data=dl)[grp]
    torch.testing.assert_close(got, (total / n).detach(), rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m.training


def test_taylor_restores_frozen_parameters(xor_net):
    m, g, dl = xor_net
    for p in m.parameters():
        p.requires_grad_(False)
    try:
        s = pb.score(m, g, "taylor", data=dl)[g.groups[0]]
        assert s.shape == (8,) and torch.isfinite(s).all() and s.sum() > 0
        assert not any(p.requires_grad for p in m.parameters())
    finally:
        for p in m.parameters():
            p.requires_grad_(True)


def test_geometric_median_minimises_distance_sum():
    torch.manual_seed(0)
    w = torch.randn(20, 7, dtype=torch.float64)
    gm = cd._geometric_median(w)

    def cost(p):
        return (w - p).norm(dim=1).sum()

    for _ in range(20):
        assert cost(gm) <= cost(gm + 1e-3 * torch.randn(7, dtype=torch.float64)) + 1e-12
    assert cost(gm) < cost(w.mean(0))


def test_fpgm_scores_are_distances_to_the_median(resnet):
    m, g, _ = resnet
    s = pb.score(m, g, "fpgm")
    grp = g.group_of("layer3.0.conv1")
    w = m.layer3[0].conv1.weight.detach().flatten(1).double()
    torch.testing.assert_close(s[grp], (w - cd._geometric_median(w)).norm(dim=1))
    res = g.group_of("conv1")  # residual group: the producers' distances add up
    expect = sum(cd.fpgm_distances(dict(m.named_modules())[p.name].weight) for p in res.producers)
    torch.testing.assert_close(s[res], expect)


def test_lfe_masks_shape_and_zero_count():
    z = lfe.lfe_masks(16, 0.3, seed=3)
    assert z.shape == (160, 16)
    assert torch.all((z == 0).sum(1) == 5)  # round(0.3 * 16)
    assert torch.equal(z, lfe.lfe_masks(16, 0.3, seed=3))
    assert not torch.equal(z, lfe.lfe_masks(16, 0.3, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        lfe.lfe_masks(16, 1.2)


def test_lfe_solve_recovers_a_linear_ranking():
    torch.manual_seed(0)
    n = 12
    z = lfe.lfe_masks(n, 0.3, seed=0)
    truth = torch.rand(n, dtype=torch.float64)
    losses = 3.0 - z @ truth  # an exactly linear loss: more important filters on -> lower loss
    theta = lfe.lfe_solve(z, losses)
    assert torch.equal(theta.argsort(), truth.argsort())
    s = 1 - (losses - losses.min()) / (losses.max() - losses.min())
    torch.testing.assert_close(z @ theta, s)  # each mask keeps the same count: the offset is representable


def test_masked_consumers_equals_pb_mask(resnet):
    m, g, dl = resnet
    x = dl.dataset.tensors[0][:4]
    for grp in (g.group_of("conv1"), g.group_of("layer3.2.conv1"), g.group_of("layer3.0.conv2")):
        keep = torch.arange(0, grp.size, 3)
        scores = {grp: torch.zeros(grp.size, dtype=torch.float64).index_fill(0, keep, 1.0)}
        p = make_plan(g, scores, ratio=1 - keep.numel() / grp.size, scope="local")
        assert torch.equal(p.keep[grp], keep)
        with torch.no_grad():
            ref = pb.mask(m, p)(x)
            with lfe.masked_consumers(m, g, grp, keep):
                got = m(x)
            plain = m(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain, ref)  # hooks gone afterwards


@pytest.mark.parametrize("producer", ["conv1", "layer1.1.conv1", "layer3.0.conv2"])
def test_lfe_batched_equals_one_forward_per_mask(resnet, producer):
    m, g, dl = resnet
    grp = g.group_of(producer)
    kw = {"n_masks": 24, "seed": 5, "masks_per_forward": 5}
    a, z, la = lfe.lfe_group(m, g, grp, dl, return_losses=True, **kw)
    b, z2, lb = lfe.lfe_group(m, g, grp, dl, batched=False, return_losses=True, **kw)
    assert torch.equal(z, z2) and z.shape == (24, grp.size)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert la.std() > 0


def test_lfe_losses_are_masked_network_losses(xor_net):
    m, g, dl = xor_net
    (grp,) = g.groups
    theta, z, losses = lfe.lfe_group(m, g, grp, dl, return_losses=True, n_masks=6)
    for i in (0, 5):
        keep = torch.nonzero(z[i]).flatten()
        p = make_plan(g, {grp: z[i]}, ratio=1 - keep.numel() / 8, scope="local")
        masked = pb.mask(m, p)
        ref = pb.train.evaluate(masked, dl)["loss"]
        assert losses[i].item() == pytest.approx(ref, rel=1e-5)


def test_lfe_finds_the_one_neuron_that_matters(xor_net):
    m, g, dl = xor_net
    m2 = pb.zoo.create("xor_mlp", hidden=8)
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.fc2.weight.zero_()  # only neuron 5 reaches the output
        m2.fc2.weight[:, 5] = torch.tensor([3.0, -3.0])
        m2.fc2.bias.zero_()
    x = dl.dataset.tensors[0]
    with torch.no_grad():
        y = m2(x).argmax(1)  # labels the full network gets right
    data = DataLoader(TensorDataset(x, y), batch_size=50)
    g2 = pb.trace(m2, torch.randn(1, 2))
    s = pb.score(m2, g2, "lfe", data=data)[g2.groups[0]]
    others = torch.cat([s[:5], s[6:]])
    assert s[5] > others.max() + 0.5
    assert others.max() - others.min() < 1e-6  # the silent neurons cannot be told apart


def test_errors(resnet):
    m, g, dl = resnet
    with pytest.raises(ValueError, match="act_mean.*lfe|lfe.*act_mean"):
        pb.score(m, g, "no_such_criterion")
    for name in cd.DATA_CRITERIA:
        with pytest.raises(ValueError, match="data-driven: pass data="):
            pb.score(m, g, name)
        with pytest.raises(ValueError, match="empty"):
            pb.score(m, g, name, data=DataLoader(TensorDataset(torch.randn(0, 3, 32, 32), torch.zeros(0).long())))
    with pytest.raises(ValueError, match="targets"):
        pb.score(m, g, "taylor", data=[torch.randn(2, 3, 32, 32)])
    with pytest.raises(ValueError, match="no batches"):
        pb.score(m, g, "act_mean", data=iter([]))


def test_scoring_leaves_the_model_alone(resnet):
    m, g, dl = resnet
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    try:
        for name in ("act_mean", "taylor", "lfe"):
            pb.score(m, g, name, data=dl, **({"n_masks": 3, "max_batches": 1} if name == "lfe" else {}))
            assert m.training
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN running stats too
    finally:
        m.eval()


def test_normalize_methods(resnet):
    m, g, _ = resnet
    s = pb.score(m, g, "l1")
    grp = g.groups[3]
    v = s[grp]
    torch.testing.assert_close(normalize(s, "mean")[grp], v / v.abs().mean())
    torch.testing.assert_close(normalize(s, "max")[grp], v / v.abs().max())
    torch.testing.assert_close(normalize(s, "l2")[grp], v / v.norm())
    torch.testing.assert_close(normalize(s, "none")[grp], v)
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize(s, "zscore")


def test_global_plan_normalises_by_the_method_asked(resnet):
    m, g, _ = resnet
    s = pb.score(m, g, "l2")
    for ratio in (0.2, 0.5):
        default = make_plan(g, s, ratio=ratio, scope="global")
        mean = make_plan(g, s, ratio=ratio, scope="global", normalize_by="mean")
        assert all(torch.equal(default.keep[k], mean.keep[k]) for k in mean.keep)
        # "max" ranks the groups' scores over their maxima: the same as ranking normalize(s, "max") unnormalised
        by_max = make_plan(g, s, ratio=ratio, scope="global", normalize_by="max")
        raw = make_plan(g, normalize(s, "max"), ratio=ratio, scope="global", normalize_by="none")
        assert all(torch.equal(by_max.keep[k], raw.keep[k]) for k in raw.keep)
        assert any(not torch.equal(by_max.keep[k], mean.keep[k]) for k in mean.keep)
    with pytest.raises(ValueError, match="normalize_by must be one of"):
        make_plan(g, s, ratio=0.5, scope="global", normalize_by="zscore")


def test_plan_global_none_ranks_raw_scores():
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet20", num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 32, 32))
    # group i's scores all sit at scale 10**i: without normalisation the low-scale groups go first
    s = {grp: (torch.rand(grp.size, dtype=torch.float64) + 1) * 10.0 ** i for i, grp in enumerate(g.groups)}
    total = sum(grp.size for grp in g.groups)
    p = make_plan(g, s, ratio=(g.groups[0].size - 1) / total, scope="global", normalize_by="none")
    assert p.keep[g.groups[0]].numel() == 1
    assert all(p.keep[grp].numel() == grp.size for grp in g.groups[1:])
    q = make_plan(g, s, ratio=0.3, scope="global", normalize_by="mean")
    assert sum(q.kept_counts().values()) == total - int(0.3 * total)
    assert q.keep[g.groups[0]].numel() > 1


class _SizeView(torch.nn.Module):
    """conv -> relu -> conv -> view(x.size(0), -1) -> linear: the batch size is read from a tensor before the
    masked consumer and used after it."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        n = x.size(0)
        h = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c2(h)).view(n, -1))


def test_lfe_batched_handles_batch_size_read_in_the_prefix():
    torch.manual_seed(0)
    m = _SizeView().eval()
    g = pb.trace(m, torch.randn(1, 3, 8, 8))
    x = torch.randn(10, 3, 8, 8)
    dl = DataLoader(TensorDataset(x, m(x).argmax(1).detach()), batch_size=5)
    for grp in g.groups:  # c1's filters (consumer c2) and c2's (consumer fc, flatten blocks)
        kw = {"n_masks": 12, "masks_per_forward": 4}
        a, _, la = lfe.lfe_group(m, g, grp, dl, return_losses=True, **kw)
        b, _, lb = lfe.lfe_group(m, g, grp, dl, batched=False, return_losses=True, **kw)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        assert la.std() > 0
