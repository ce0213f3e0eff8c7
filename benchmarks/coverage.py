"""Zoo coverage: which models prune correctly, with pybench and with Torch-Pruning.

    python benchmarks/coverage.py [--zoo torchvision|timm|tasks] [--size 224] [--ratio 0.5] [--timeout 300]
                                  [--repeats 3] [--models resnet18 timm:mixnet_s ...]

``--zoo torchvision`` (default): every torchvision classification model. ``--zoo timm``: one or two models of each
of 60 timm CNN families (TIMM_MODELS, random init; timm is the ``[timm]`` extra), named ``timm:NAME``. ``--zoo
tasks``: torchvision's segmentation, video and detection models (TASK_MODELS); a detector is pruned through its
backbone (``pb.prune(..., within="backbone")``: its box decoding cannot be traced), the whole model must still
run, and its MACs are the backbone's; Torch-Pruning is given the whole model, as its users would.

Each (model, tool) runs in its own subprocess (Torch-Pruning can hang in graph build; a timeout is an error).
- pybench "ok": trace + l1 + plan + apply at ``--ratio``; the pruned model runs, keeps the output shape, has fewer
  parameters, and its outputs equal ``pb.mask``'s (rtol 1e-4, atol 1e-5 after BN calibration).
- Torch-Pruning "ok": MagnitudePruner (L1) at ``--ratio`` with the classifier ignored (the last Linear, else the
  last conv); the model runs, keeps the output shape and has fewer parameters (it has no masked oracle:
  shape-checked only).
Both must also remove at least ``--min-macs-removed`` (default 20 %) of the MACs: a "pruned" model that kept
almost everything counts as a failure. Seconds are the fastest of ``--repeats`` prunings of fresh copies of the
model in one warm process, for both tools (a process's first call pays for imports and caches, once per session).
Prints a table of model families x ok / error for both tools, the parameters each removes where both pass, then
every error.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

FAMILIES = ["wide_resnet", "resnext", "resnet", "vgg", "mobilenet_v2", "mobilenet_v3", "efficientnet_v2",
            "efficientnet", "regnet_x", "regnet_y", "densenet", "shufflenet_v2", "squeezenet", "mnasnet", "convnext",
            "vit", "swin_v2", "swin", "maxvit", "alexnet", "googlenet", "inception"]


TIMM_MODELS = [
    "resnet18", "resnet26d", "resnetv2_50", "resnext26ts", "seresnext26d_32x4d", "resnest14d", "res2net50_14w_8s",
    "res2next50", "regnetx_002", "regnety_002", "regnetz_b16", "efficientnet_b0", "efficientnetv2_rw_t",
    "tf_efficientnet_lite0", "mobilenetv2_050", "mobilenetv3_small_050", "mobilenetv4_conv_small", "mnasnet_050",
    "fbnetc_100", "spnasnet_100", "lcnet_050", "hardcorenas_a", "ghostnet_050", "ghostnetv2_100", "densenet121",
    "dla34", "dpn68", "cspresnet50", "cspdarknet53", "darknet17", "ese_vovnet19b_dw", "hrnet_w18_small",
    "inception_v3", "xception41", "repvgg_a0", "gernet_s", "rexnet_100", "mixnet_s", "tinynet_a", "selecsls42b",
    "nf_resnet26", "convnext_atto", "convnextv2_atto", "vgg11", "mobileone_s0", "repghostnet_050", "hgnet_tiny",
    "hgnetv2_b0", "cs3darknet_s", "skresnet18", "legacy_seresnet18", "ecaresnet26t", "gcresnet33ts",
    "mobilenetv1_100", "starnet_s1", "inception_next_atto", "fastvit_t8", "efficientformer_l1", "levit_128",
    "tresnet_m"]
TIMM = "timm:"
PAIRED = "paired"  # the --tools entry that times both tools alternately in one process
# torchvision's other tasks: segmentation (dict outputs), video (Conv3d, 5-D input), detection (pruned within
# "backbone"; the detector's own transform resizes to min_size, kept small here for CPU time)
TASK_MODELS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "r3d_18", "mc3_18",
               "r2plus1d_18", "s3d", "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn",
               "ssdlite320_mobilenet_v3_large", "keypointrcnn_resnet50_fpn"]
_DETECTION = ("fasterrcnn", "retinanet", "ssdlite", "ssd300", "keypointrcnn", "maskrcnn", "fcos")
_VIDEO = ("r3d_", "mc3_", "r2plus1d_", "s3d", "mvit", "swin3d")


def _is_detection(name: str) -> bool:
    return name.startswith(_DETECTION)


def family(name: str) -> str:
    if name.startswith(TIMM) or name in TASK_MODELS:  # one model per family: the model is its family's row
        return name
    return next((f for f in FAMILIES if name.startswith(f)), re.sub(r"[\d_]+.*$", "", name))


def _input(name: str, size: int):
    """The example input: a batch of 2 images (or clips), or a detector's list of 2 images."""
    import torch

    g = torch.Generator().manual_seed(0)
    if name in ("inception_v3", "timm:inception_v3"):
        size = max(size, 299 if size >= 224 else 96)
    if name.startswith("maxvit"):
        size = 224  # its partitions need 224-style sizes
    if name.startswith(_VIDEO):
        return torch.randn(2, 3, 8, 112, 112, generator=g)
    if _is_detection(name):
        return [torch.rand(3, size, size, generator=g) for _ in range(2)]
    return torch.randn(2, 3, size, size, generator=g)


def _model(name: str, size: int):
    import torchvision

    if name.startswith(TIMM):
        import timm

        return timm.create_model(name[len(TIMM):], pretrained=False).eval()
    kw = {}
    if name.startswith("vit_"):
        kw["image_size"] = size
    if name in ("googlenet", "inception_v3"):
        kw.update(init_weights=True, aux_logits=False)
    if _is_detection(name) or name.startswith(("fcn_", "deeplabv3_", "lraspp_")):
        kw["weights_backbone"] = None  # no download
    if name.startswith(("fasterrcnn", "retinanet", "keypointrcnn", "maskrcnn", "fcos")):
        kw.update(min_size=size, max_size=size)
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def _leaves(out):
    """The tensors of a model's output (a tensor, a segmentation dict, a detector's list of dicts)."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _calibrate(model, x):
    """BN statistics from the example (random init leaves them at 0 / 1): an eval-mode forward with only the BNs in
    training mode, which a detector (whose training forward wants targets) takes as well."""
    import torch
    import torch.nn as nn

    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
        m.reset_running_stats()
        m.train()
    if bns:
        with torch.no_grad():
            model(x)
    return model.eval()


def _macs(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _prune_pybench(model, x, name: str, ratio: float):
    import pybench as pb

    if _is_detection(name):
        return pb.prune(model, (x,), ratio=ratio, within="backbone")
    graph = pb.trace(model, x)
    plan = pb.plan(graph, pb.score(model, graph, "l1"), ratio=ratio)
    return pb.apply(model, plan), plan


def _prune(tool: str, model, x, name: str, ratio: float):
    """``model`` pruned by ``tool``: pybench's (pruned copy, plan), or the peer's model pruned in place."""
    return _prune_pybench(model, x, name, ratio) if tool == "pybench" else (_prune_peer(model, x, ratio), None)


def _check_pybench(model, pruned, plan, x, feats) -> None:
    """The pruned model (or, for a detector -- ``feats`` its backbone's input --, its pruned backbone) equals
    pb.mask's."""
    import torch

    import pybench as pb

    if feats is not None:
        model, pruned, x = model.backbone, pruned.backbone, feats
    with torch.no_grad():
        for a, b in zip(_leaves(pruned(x)), _leaves(pb.mask(model, plan)(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _backbone_input(model, x):
    """What a detector's backbone receives from its transform (resized, normalised, batched images)."""
    import torch

    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0]) if not seen else None)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def _prune_peer(model, x, ratio: float):
    import torch.nn as nn
    import torch_pruning as tp

    # the classifier: the last Linear, or the last conv of an all-conv net (SqueezeNet); pybench finds it alone
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:] or \
        [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-1:]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=classifier)
    pruner.step()
    return model


def worker(name: str, tool: str, size: int, ratio: float, min_macs_removed: float, repeats: int = 3) -> dict:
    import copy
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    x = _input(name, size)
    model = _calibrate(_model(name, size), x)
    with torch.no_grad():
        ref = _leaves(model(x))
    feats = _backbone_input(model, x) if _is_detection(name) else None

    def macs(m):  # a detector is pruned within its backbone: the MACs that can fall are the backbone's
        return _macs(m, x) if feats is None else _macs(m.backbone, feats)
    before, macs_before = sum(p.numel() for p in model.parameters()), macs(model)
    times = []
    for _ in range(max(1, repeats)):  # fresh copies, the fastest kept: both tools warm, as in a user's session
        fresh = copy.deepcopy(model)
        t = time.perf_counter()
        pruned, plan = _prune(tool, fresh, x, name, ratio)
        times.append(time.perf_counter() - t)
    if tool == "pybench":
        _check_pybench(model, pruned, plan, x, feats)
    with torch.no_grad():
        out = _leaves(pruned(x))
    after = sum(p.numel() for p in pruned.parameters())
    if [o.shape for o in out] != [r.shape for r in ref] and not _is_detection(name):  # a detector's box count varies
        raise AssertionError(f"output shapes {[tuple(o.shape) for o in out]} != {[tuple(r.shape) for r in ref]}")
    if after >= before:
        raise AssertionError(f"parameters did not fall ({before} -> {after})")
    macs_after = macs(pruned)
    if macs_after > (1 - min_macs_removed) * macs_before:
        raise AssertionError(f"removed only {1 - macs_after / macs_before:.1%} of the MACs "
                             f"(< {min_macs_removed:.0%}): most channels stayed")
    return {"params_before": before, "params_after": after, "macs_before": macs_before, "macs_after": macs_after,
            "seconds": round(min(times), 3), "seconds_first": round(times[0], 3)}


def paired_speed(name: str, size: int, ratio: float, repeats: int = 10) -> dict:
    """Both tools timed alternately in one process (ABBA order, a fresh copy each time): the median of the pairs'
    peer / pybench ratios with a 95 % bootstrap interval (``pybench.measure.paired.speedup_interval``). A machine's
    load then slows both sides of each pair alike, where the fastest-of-N of two separate processes can each catch
    a different moment of it."""
    import copy
    import warnings

    import torch

    from pybench.measure.paired import speedup_interval

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    x = _input(name, size)
    model = _calibrate(_model(name, size), x)

    def once(tool: str) -> float:
        fresh = copy.deepcopy(model)
        t = time.perf_counter()
        _prune(tool, fresh, x, name, ratio)
        return time.perf_counter() - t

    once("pybench"), once("torch_pruning")  # warm both: imports and first-call caches
    ours, peer = [], []
    for k in range(max(2, repeats)):
        order = ("pybench", "torch_pruning") if k % 2 == 0 else ("torch_pruning", "pybench")
        got = {tool: once(tool) for tool in order}
        ours.append(got["pybench"])
        peer.append(got["torch_pruning"])
    ratio, lo, hi = speedup_interval(peer, ours)  # the paired timing's median ratio and percentile bootstrap
    return {"pairs": len(ours), "ratio": round(ratio, 2), "ratio_ci": [round(lo, 2), round(hi, 2)],
            "seconds_pybench": round(min(ours), 4), "seconds_peer": round(min(peer), 4)}


def run_one(name: str, tool: str, size: int, ratio: float, timeout: float, min_macs_removed: float = 0.2,
            repeats: int = 3) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, tool, "--size", str(size), "--ratio", str(ratio),
           "--min-macs-removed", str(min_macs_removed), "--repeats", str(repeats)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=str(Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        return {"model": name, "tool": tool, "ok": False, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode == 0 and lines:
        return {"model": name, "tool": tool, "ok": True, **json.loads(lines[-1])}
    err = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "tool": tool, "ok": False, "error": err[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help="input height / width (default 224; 299 for inception)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per model and tool")
    ap.add_argument("--zoo", choices=["torchvision", "timm", "tasks"], default="torchvision",
                    help="the default model list: torchvision's classification models, TIMM_MODELS, or TASK_MODELS")
    ap.add_argument("--repeats", type=int, default=3, help="prunings timed per model and tool; the fastest counts")
    ap.add_argument("--models", nargs="*", help="default: the --zoo list (timm models as timm:NAME)")
    ap.add_argument("--min-macs-removed", type=float, default=0.2,
                    help="a pruned model must have lost at least this fraction of its MACs (default 0.2)")
    ap.add_argument("--tools", nargs="*", default=["pybench", "torch_pruning"],
                    help=f"pybench, torch_pruning, and {PAIRED!r}: both timed alternately in one process "
                    "(--repeats pairs), the speed ratio with its interval")
    ap.add_argument("--json", help="also write every result to this JSON Lines file")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="print the table of earlier --json files (e.g. of runs split by --models) instead of running")
    args = ap.parse_args()
    if args.worker:
        name, tool = args.worker
        out = paired_speed(name, args.size, args.ratio, args.repeats) if tool == PAIRED else \
            worker(name, tool, args.size, args.ratio, args.min_macs_removed, args.repeats)
        print(json.dumps(out))
        return
    if args.from_json:
        rows = [json.loads(ln) for f in args.from_json for ln in Path(f).read_text().splitlines() if ln.strip()]
        report({(r["model"], r["tool"]): r for r in rows}.values())  # a later file's row replaces an earlier one
        return
    import torchvision

    defaults = {"timm": [TIMM + n for n in TIMM_MODELS], "tasks": TASK_MODELS}
    names = args.models or defaults.get(args.zoo) or sorted(torchvision.models.list_models(module=torchvision.models))
    rows = []
    for name in names:
        for tool in args.tools:
            r = run_one(name, tool, args.size, args.ratio, args.timeout, args.min_macs_removed, args.repeats)
            rows.append(r)
            status = "ok" if r["ok"] else f"ERROR {r['error']}"
            print(f"{name:24s} {tool:14s} {status}", file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    report(rows)


def report(rows: Iterable[dict]) -> None:
    """Print the family x tool table of ok / total, then every error."""
    import pandas as pd
    from tabulate import tabulate

    df = pd.DataFrame(list(rows))
    paired = df[df["tool"] == PAIRED].set_index("model") if "tool" in df else df.iloc[:0]
    df = df[df["tool"] != PAIRED]
    df["family"] = df["model"].map(family)
    table = (df.assign(ok=df["ok"].astype(int), n=1).groupby(["family", "tool"])[["ok", "n"]].sum()
             .apply(lambda r: f"{r['ok']}/{r['n']}", axis=1).unstack("tool"))
    total = df.groupby("tool")["ok"].agg(lambda s: f"{int(s.sum())}/{len(s)}")
    table.loc["TOTAL"] = total
    print(tabulate(table.reset_index(), headers="keys", tablefmt="github", showindex=False))
    if "params_after" in df and df["tool"].nunique() > 1:  # where every tool passes: removed params, seconds
        ok = df[df["ok"]].assign(removed=lambda d: 1 - d["params_after"] / d["params_before"])
        removed = ok.pivot_table(index="model", columns="tool", values="removed").dropna()
        seconds = ok.pivot_table(index="model", columns="tool", values="seconds").reindex(removed.index)
        if len(removed):
            tools = list(removed.columns)
            def pair(m: str) -> str:
                if m not in paired.index or not paired.loc[m, "ok"]:
                    return ""
                lo, hi = paired.loc[m, "ratio_ci"]
                return f"{paired.loc[m, 'ratio']:.1f}x [{lo:.1f}, {hi:.1f}]"

            rows = [[m, *(f"{removed.loc[m, t]:.1%}" for t in tools), *(f"{seconds.loc[m, t]:.3f}" for t in tools),
                     f"{seconds.loc[m, tools[1]] / seconds.loc[m, tools[0]]:.1f}x" if len(tools) == 2 else "",
                     pair(m)] for m in removed.index]
            print("\nWhere both pass: parameters removed, seconds of trace + score + plan + apply (the peer: graph "
                  "build + step), and the peer's time over pybench's (fastest of each process's repeats, and paired: "
                  "the median of alternate timings in one process with its 95 % interval):")
            print(tabulate(rows, headers=["model", *(f"removed {t}" for t in tools), *(f"s {t}" for t in tools),
                                          "speed ratio", "paired speed ratio"], tablefmt="github"))
    errors = df[~df["ok"]]
    if len(errors):
        print("\nErrors:")
        print(tabulate(errors[["model", "tool", "error"]], headers="keys", tablefmt="github", showindex=False))


if __name__ == "__main__":
    main()
