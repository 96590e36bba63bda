"""How well does each twin's gradient point where the true gradient points? (issue 17)

    python experiments/twin_gradients.py RUN [RUN ...] [--twins neural physics refined] [--batches 20]

For each trained run folder (its ``config.yaml`` and ``checkpoint.pt``), on its simulated bench: the network's
gradient of the cross-entropy on training batches, computed as PAT computes it (forward through the device, backward
through a twin) with the device replaced by the perfect twin (the simulator's noiseless physics), against the true
gradient (forward and backward through the perfect twin). Reported per twin, at the network's initial parameters and
at its trained ones: the mean cosine similarity of the two gradients over the batches (1: the same direction), the
mean ratio of their norms, and the twin's NMSE against the perfect twin on the layer inputs the network feeds it.

Twins: ``neural``, ``physics`` (the experiment's artifacts, calibrated first if missing) and ``refined`` (the run's
``twin_refined.pt``). The bench noise is left out on purpose: the question is the twin's gradient, not the device's
noise. Prints one JSON line per (run, point, twin) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from common.files import read_torch_file
from orchestrator.experiment import build_network, load_task
from orchestrator.experiment_file import load_experiment
from orchestrator.lab import device_width
from orchestrator.pat import physics_aware
from orchestrator.session import open_session
from twins.artifact import load_twin
from twins.fit import nmse


def gradient(net: nn.Module, layer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cross-entropy's gradient with respect to all trainable parameters, flattened."""
    net.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x, layer), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.requires_grad])


def compare(net: nn.Module, perfect: nn.Module, twins: dict[str, nn.Module], x_all: torch.Tensor,
            y_all: torch.Tensor, batches: int, batch_size: int) -> dict[str, dict]:
    """Per twin: mean cosine and norm ratio of PAT's gradient against the true one, and the twin's NMSE."""
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y_all), generator=gen)[: batches * batch_size].split(batch_size)
    stats = {name: {"cos": [], "norm_ratio": [], "nmse": []} for name in twins}
    for idx in order:
        x, y = x_all[idx], y_all[idx]
        seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # each layer's (input, θ, perfect output)

        def recording(h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            out = perfect(h, theta)
            seen.append((h.detach(), theta.detach(), out.detach()))
            return out

        true = gradient(net, recording, x, y)
        for name, twin in twins.items():
            pat = gradient(net, physics_aware(perfect, twin), x, y)
            stats[name]["cos"].append(float(nn.functional.cosine_similarity(pat, true, dim=0)))
            stats[name]["norm_ratio"].append(float(pat.norm() / true.norm()))
            with torch.no_grad():
                errors = [nmse(twin(h, t), out) for h, t, out in seen]
            stats[name]["nmse"].append(sum(errors) / len(errors))
    return {name: {k: sum(v) / len(v) for k, v in s.items()} for name, s in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--twins", nargs="+", default=["neural", "physics", "refined"],
                        choices=["neural", "physics", "refined"])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        cfg = load_experiment(run / "config.yaml", overrides=None)
        data = load_task(cfg, args.data_dir)
        n = device_width(cfg, data.x_train.shape[1])
        x_all, y_all = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
        with open_session(cfg, n, simulate=True) as session:
            perfect = session.twin("perfect")
            twins = {kind: session.twin(kind) for kind in args.twins if kind != "refined"}
            if "refined" in args.twins:
                twins["refined"] = load_twin(run / "twin_refined.pt")[0]
            for twin in twins.values():
                twin.requires_grad_(False).eval()
            start = build_network(cfg, data, n)
            trained = build_network(cfg, data, n)
            trained.load_state_dict(read_torch_file(run / "checkpoint.pt", "checkpoint", "")["net"])
            for point, net in (("initial", start), ("trained", trained)):
                result = compare(net, perfect, twins, x_all, y_all, args.batches, cfg.training.batch_size)
                for name, s in result.items():
                    row = {"run": str(run), "point": point, "twin": name, **{k: round(v, 4) for k, v in s.items()}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("| run | parameters | twin | cosine with the true gradient | norm ratio | twin NMSE vs perfect |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {Path(r['run']).name} | {r['point']} | {r['twin']} | {r['cos']:.3f} | {r['norm_ratio']:.2f} | "
              f"{r['nmse']:.4f} |")


if __name__ == "__main__":
    main()
