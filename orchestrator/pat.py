"""Physics-aware training: the device computes the forward pass, the twin supplies the gradient.

>>> layer = physics_aware(setup.forward, twin)      # setup: a PhysicalSystem, twin: a differentiable model
>>> y = layer(x, theta)                             # y measured on the device
>>> y.sum().backward()                              # gradients = the twin's vector-Jacobian product at (x, theta)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def physics_aware(physical: Callable[..., Tensor], twin: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a physical forward function and its digital twin into one differentiable function.

    Args:
        physical: f_p(x, theta, *more) -> y, run on the device without autograd.
        twin: f_m(x, theta, *more) -> y, differentiable; evaluated again in the backward pass at the same
            inputs the device saw.
    Returns:
        A function (x, theta, *more) -> y whose value is the device's output and whose gradient with respect to
        every tensor argument is the VJP of ``twin`` at those arguments.
    """

    class PhysicsAware(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs: Tensor) -> Tensor:
            ctx.save_for_backward(*inputs)
            with torch.no_grad():
                y = physical(*inputs)
            return y.to(inputs[0].dtype)

        @staticmethod
        def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, ...]:
            inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
            wanted = [t for t in inputs if t.requires_grad]
            with torch.enable_grad():
                y_twin = twin(*inputs)
                grads = iter(torch.autograd.grad(y_twin, wanted, grad_y, allow_unused=True))
            return tuple(next(grads) if t.requires_grad else None for t in inputs)

    def apply(*inputs: Tensor) -> Tensor:
        return PhysicsAware.apply(*inputs)

    apply.physical = physical  # type: ignore[attr-defined]
    apply.twin = twin  # type: ignore[attr-defined]
    return apply
