"""A physical neural network: physical layers with element-wise affine maps in between.

    features in [0, 1] --(2f - 1, tiled to the device width)--> h          input "tile"     fully physical
                       --(tanh of a digital linear layer)--> h          input "linear"   hybrid
    for each layer l:  h <- h[slot order l];  h <- clamp(a_l * h + b_l, -1, 1);  h <- layer(h, θ_l)
    readout "pool":    class k = mean of output bins k, k + K, k + 2K, ... (then a per-class affine)   fully physical
    readout "linear":  a digital linear layer                                                           hybrid

A device layer maps ``width`` slots to ``n_outputs`` bins (default ``width``); fewer bins than slots (the raw-audio
task: thousands of sound samples in, tens of sound levels out) is allowed for the last layer only.

``layer`` is what computes a physical layer: the device (evaluation), the PAT function (training), or a twin
(in-silico training). The network itself holds only the trainable numbers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

Layer = Callable[[Tensor, Tensor], Tensor]


class PhysicalNetwork(nn.Module):
    def __init__(self, n_features: int, n_classes: int, width: int, depth: int,
                 theta_bounds: tuple[float, float] = (-1.0, 1.0), readout: str = "pool",
                 shuffle_slots: bool = True, seed: int = 0, n_outputs: int | None = None,
                 theta_init: str = "uniform", input_layer: str = "tile"):
        super().__init__()
        n_outputs = n_outputs or width
        if readout == "pool" and n_outputs < n_classes:
            raise ValueError(f"a pool readout needs at least one output bin per class: {n_outputs} bins, "
                             f"{n_classes} classes")
        if depth > 1 and n_outputs != width:
            raise ValueError(f"a device layer with {n_outputs} outputs for {width} slots can only be the last layer; "
                             f"use depth 1 or as many outputs as slots")
        gen = torch.Generator().manual_seed(seed)
        low, high = theta_bounds
        self.n_features, self.n_classes, self.width, self.depth = n_features, n_classes, width, depth
        self.n_outputs = n_outputs
        self.readout_kind = readout
        self.input_kind = input_layer
        self.register_buffer("theta_low", torch.full((width,), float(low)))
        self.register_buffer("theta_high", torch.full((width,), float(high)))
        draw = torch.rand(depth, width, generator=gen)  # drawn either way: the same slot orders for both inits
        self.theta = nn.Parameter(low + (high - low) * (draw if theta_init == "uniform" else torch.full_like(draw, 0.5)))
        self.scale = nn.Parameter(torch.ones(depth, width))
        self.shift = nn.Parameter(torch.zeros(depth, width))
        orders = [torch.arange(width)] + [torch.randperm(width, generator=gen) if shuffle_slots else torch.arange(width)
                                         for _ in range(depth - 1)]
        self.register_buffer("slot_order", torch.stack(orders))
        self.register_buffer("tile_index", torch.arange(width) % n_features)
        if input_layer == "linear":
            self.encoder = nn.Linear(n_features, width)
        if readout == "pool":
            self.register_buffer("class_of_bin", torch.arange(n_outputs) % n_classes)
            self.out_scale = nn.Parameter(torch.full((n_classes,), 4.0))
            self.out_shift = nn.Parameter(torch.zeros(n_classes))
        else:
            self.linear = nn.Linear(n_outputs, n_classes)

    @property
    def hybrid(self) -> bool:
        """True when a digital linear layer precedes or follows the physical layers."""
        return self.readout_kind == "linear" or self.input_kind == "linear"

    def forward(self, features: Tensor, layer: Layer, record: list[Tensor] | None = None) -> Tensor:
        """features [B, n_features] in [0, 1] -> logits [B, n_classes]; ``record`` collects each layer's output."""
        if self.input_kind == "linear":
            h = torch.tanh(self.encoder(2 * features - 1))
        else:
            h = (2 * features - 1)[:, self.tile_index]
        for l in range(self.depth):
            h = h[:, self.slot_order[l]]
            h = (self.scale[l] * h + self.shift[l]).clamp(-1.0, 1.0)
            h = layer(h, self.theta[l])
            if record is not None:
                record.append(h.detach())
        return self.readout(h)

    def readout(self, h: Tensor) -> Tensor:
        if self.readout_kind == "linear":
            return self.linear(h)
        sums = torch.zeros(h.shape[0], self.n_classes, dtype=h.dtype).index_add_(1, self.class_of_bin, h)
        counts = torch.bincount(self.class_of_bin, minlength=self.n_classes).to(h.dtype)
        return self.out_scale * sums / counts + self.out_shift

    @torch.no_grad()
    def project_(self) -> None:
        """Keep θ inside its safe bounds (called after every optimiser step)."""
        self.theta.copy_(torch.maximum(torch.minimum(self.theta, self.theta_high), self.theta_low))

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def digital_baseline(n_features: int, n_classes: int, n_params: int, seed: int = 0) -> nn.Module:
    """A digital MLP (one hidden layer, ReLU) with about ``n_params`` trainable parameters, for comparison."""
    torch.manual_seed(seed)
    hidden = max(1, math.floor((n_params - n_classes) / (n_features + 1 + n_classes)))
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
