"""Neural twin: a (residual) multilayer perceptron on [x, θ] -> y, the paper's general-purpose twin.

It knows no physics; it learns f_p from ~10k measured samples (see ``twins.fit``). Inputs and outputs are
standardised with buffers set from the training data, so the network works with numbers of order one
whatever the physical units; ``forward`` takes and returns physical units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from twins.registry import broadcast_theta, register_twin

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def robust_std(a: Tensor | np.ndarray) -> Tensor:
    """Per-column standard deviation [n] of samples a [N, n], safe to divide by.

    A column that is (nearly) constant, std <= 1e-6 of the largest column's, gets the largest column's std
    instead (1 if every column is constant), so it is neither amplified into noise nor divided by zero.
    """
    a = torch.as_tensor(a)
    std = a.std(dim=0, unbiased=False)
    top = std.max()
    if not bool(top > 0):
        return torch.ones_like(std)
    return torch.where(std > 1e-6 * top, std, top)


class _OutputNormalisation:
    """Outputs standardised with buffers ``y_mean``, ``y_std`` [n_outputs] set from training data."""

    y_mean: Tensor
    y_std: Tensor

    @torch.no_grad()
    def set_output_normalisation(self, y: Tensor | np.ndarray) -> None:
        """Standardise outputs with the per-column mean and std of training outputs y [N, n_outputs]."""
        y = torch.as_tensor(y).to(self.y_mean)
        self.y_mean.copy_(y.mean(dim=0))
        self.y_std.copy_(robust_std(y))


class _ResidualBlock(nn.Module):
    """h -> act(Linear(h)) + skip(h); skip is the identity when the widths agree, else a linear projection."""

    def __init__(self, width_in: int, width_out: int, activation: type[nn.Module]):
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)
        self.act = activation()
        self.skip = nn.Identity() if width_in == width_out else nn.Linear(width_in, width_out, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.linear(h)) + self.skip(h)


@register_twin
class NeuralTwin(_OutputNormalisation, nn.Module):
    """MLP twin y = f_m(x, θ).

    Architecture on z = standardised [x, θ] (width n_inputs + n_params):
    Linear -> act to ``hidden[0]``, then per further width either Linear -> act (``residual=False``, a
    plain MLP) or a residual block h + act(Linear(h)) (``residual=True``), then a linear head to the
    standardised outputs, which are mapped back to physical units with the ``y_mean``/``y_std`` buffers.

    Args:
        n_inputs: width of x.
        n_params: width of θ.
        n_outputs: width of y.
        hidden: widths of the hidden layers (at least one).
        residual: use skip connections between hidden layers.
        activation: one of ``ACTIVATIONS`` ("silu", "relu", "gelu", "tanh", "softplus"); smooth ones
            (silu, gelu, tanh, softplus) give smoother gradients for PAT.

    Buffers (saved in the state dict): ``in_mean``, ``in_std`` [n_inputs + n_params] and ``y_mean``,
    ``y_std`` [n_outputs], identity (0 and 1) until ``set_input_normalisation`` /
    ``set_output_normalisation`` are called with the training data (``fit_twin`` does this).
    """

    kind = "neural"

    def __init__(
        self,
        n_inputs: int,
        n_params: int,
        n_outputs: int,
        hidden: Sequence[int] = (256, 256),
        residual: bool = True,
        activation: str = "silu",
    ):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if min(n_inputs, n_outputs) < 1 or n_params < 0:
            raise ValueError(f"need n_inputs >= 1, n_params >= 0, n_outputs >= 1; got {n_inputs}, {n_params}, {n_outputs}")
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be one or more positive widths, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.n_inputs, self.n_params, self.n_outputs = int(n_inputs), int(n_params), int(n_outputs)
        self.hidden, self.residual, self.activation = hidden, bool(residual), activation

        act = ACTIVATIONS[activation]
        n_in = self.n_inputs + self.n_params
        layers: list[nn.Module] = [nn.Linear(n_in, hidden[0]), act()]
        for width_in, width_out in zip(hidden[:-1], hidden[1:]):
            if self.residual:
                layers.append(_ResidualBlock(width_in, width_out, act))
            else:
                layers += [nn.Linear(width_in, width_out), act()]
        layers.append(nn.Linear(hidden[-1], self.n_outputs))
        self.net = nn.Sequential(*layers)

        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))
        self.register_buffer("y_mean", torch.zeros(self.n_outputs))
        self.register_buffer("y_std", torch.ones(self.n_outputs))

    def config(self) -> dict:
        """JSON-able constructor arguments: ``NeuralTwin(**twin.config())`` rebuilds the architecture."""
        return {
            "n_inputs": self.n_inputs,
            "n_params": self.n_params,
            "n_outputs": self.n_outputs,
            "hidden": list(self.hidden),
            "residual": self.residual,
            "activation": self.activation,
        }

    @torch.no_grad()
    def set_input_normalisation(self, x: Tensor | np.ndarray, theta: Tensor | np.ndarray) -> None:
        """Standardise inputs with the per-column mean and std of training samples x [N, n_inputs], θ [N, n_params]."""
        z = torch.cat([torch.as_tensor(x), torch.as_tensor(theta)], dim=1).to(self.in_mean)
        self.in_mean.copy_(z.mean(dim=0))
        self.in_std.copy_(robust_std(z))


    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """y [B, n_outputs] in physical units from x [B, n_inputs] and θ [B, n_params] or [n_params]."""
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        z = (torch.cat([x, theta], dim=1) - self.in_mean) / self.in_std
        return self.net(z) * self.y_std + self.y_mean

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, n_inputs={self.n_inputs}, n_params={self.n_params}, n_outputs={self.n_outputs}"


class _CausalBlock(nn.Module):
    """h -> h + act(conv(h)) with a causal dilated convolution over time slots."""

    def __init__(self, channels: int, kernel: int, dilation: int, activation: type[nn.Module]):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.act = activation()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.act(self.conv(nn.functional.pad(h, (self.pad, 0))))


@register_twin
class TemporalConvTwin(_OutputNormalisation, nn.Module):
    """Neural twin for time-multiplexed setups: a causal dilated convolutional network over the time slots.

    Slot i carries (x_i, θ_i) and produces y_i; the network assumes only what holds for any time-invariant,
    causal device driven slot after slot (the electronic and mechanical setups), not the device's physics.
    With fewer outputs than slots (``n_outputs`` dividing ``n_inputs``, e.g. 4096 audio samples in 64 output bins),
    the per-slot outputs are averaged over groups of ``n_inputs // n_outputs`` consecutive slots.
    With kernel k and dilations 1, 2, 4, ... it sees ``receptive_field`` slots into the past. It needs far fewer
    measured samples than an MLP on [x, θ], because every slot is a training example for the same filters.
    Inputs and outputs are standardised with buffers set from the training data, as in ``NeuralTwin``.
    """

    kind = "temporal_conv"

    def __init__(self, n_inputs: int, n_params: int, n_outputs: int, channels: int = 32, kernel: int = 3,
                 dilations: Sequence[int] = (1, 2, 4, 8, 16), activation: str = "silu"):
        super().__init__()
        if n_inputs != n_params or n_outputs < 1 or n_inputs % n_outputs:
            raise ValueError(f"a temporal twin needs n_inputs == n_params and n_outputs dividing n_inputs; got "
                             f"{n_inputs}, {n_params}, {n_outputs}")
        self.n_inputs = self.n_params = int(n_inputs)
        self.n_outputs = int(n_outputs)
        self.channels, self.kernel, self.dilations = int(channels), int(kernel), tuple(int(d) for d in dilations)
        self.activation = activation
        act = ACTIVATIONS[activation]
        self.inp = nn.Conv1d(2, channels, 1)
        self.blocks = nn.Sequential(*[_CausalBlock(channels, kernel, d, act) for d in self.dilations])
        self.head = nn.Sequential(nn.Conv1d(channels, channels, 1), act(), nn.Conv1d(channels, 1, 1))
        self.register_buffer("in_mean", torch.zeros(2))
        self.register_buffer("in_std", torch.ones(2))
        self.register_buffer("y_mean", torch.zeros(self.n_outputs))
        self.register_buffer("y_std", torch.ones(self.n_outputs))

    @property
    def receptive_field(self) -> int:
        """How many slots (this one included) an output depends on."""
        return 1 + (self.kernel - 1) * sum(self.dilations)

    def config(self) -> dict:
        return {"n_inputs": self.n_inputs, "n_params": self.n_params, "n_outputs": self.n_outputs,
                "channels": self.channels, "kernel": self.kernel, "dilations": list(self.dilations),
                "activation": self.activation}

    @torch.no_grad()
    def set_input_normalisation(self, x: Tensor | np.ndarray, theta: Tensor | np.ndarray) -> None:
        """Standardise x and θ with their overall mean and std (one pair per channel, shared by all slots)."""
        for k, a in enumerate((torch.as_tensor(x), torch.as_tensor(theta))):
            self.in_mean[k] = a.mean()
            self.in_std[k] = a.std().clamp_min(1e-6)


    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """y [B, n_outputs] in physical units from x [B, n] and θ [B, n] or [n]."""
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        z = torch.stack([x, theta], dim=1).to(self.in_mean.dtype)  # [B, 2, n]
        z = (z - self.in_mean[None, :, None]) / self.in_std[None, :, None]
        out = self.head(self.blocks(self.inp(z)))[:, 0, :]
        if self.n_outputs != self.n_inputs:  # mean over groups of consecutive slots
            out = out.reshape(out.shape[0], self.n_outputs, -1).mean(dim=2)
        return (out * self.y_std + self.y_mean).to(x.dtype)
