"""Physics-aware training: the device computes the forward pass, the twin supplies the gradient.

>>> layer = physics_aware(setup.forward, twin)      # setup: a PhysicalSystem, twin: a differentiable model
>>> y = layer(x, theta)                             # y measured on the device
>>> y.sum().backward()                              # gradients = the twin's vector-Jacobian product at (x, theta)

The twin's forward pass at the device's inputs runs in a worker thread while the device measures, and its graph is
kept for the backward pass, which then only differentiates it: the gradients are the same as running the twin again
in the backward pass, and the device does not wait for the twin. The worker computes on one CPU thread: with torch's
default of one thread per core it would start a second pool of compute threads beside the training thread's, and
on two cores the two pools and the instruments' threads slowed one another (the twin's forward took 20 ms instead
of 5.5, its backward pass 10 instead of 5.5, a measurement 25 instead of 17).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_twin_worker: ThreadPoolExecutor | None = None
_twin_worker_made = threading.Lock()


def _one_compute_thread() -> None:
    torch.get_num_threads()  # torch gives a thread its count on first use (the process default): let it, then
    torch.set_num_threads(1)  # this thread's count (for its OpenMP and MKL calls) and the process default


def twin_worker() -> ThreadPoolExecutor:
    """The thread that runs the twins' forward passes beside the device's (one at a time: layers are measured one
    after the other), on one CPU thread. Made on first use; torch's default for threads started later stays as it
    was."""
    global _twin_worker
    with _twin_worker_made:
        if _twin_worker is None:
            threads = torch.get_num_threads()
            worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pat-twin", initializer=_one_compute_thread)
            worker.submit(lambda: None).result()  # the worker has set its count (and the process default) ...
            torch.set_num_threads(threads)  # ... which goes back to what it was
            _twin_worker = worker
        return _twin_worker


def _twin_graph(twin: Callable[..., Tensor], leaves: tuple[Tensor, ...]) -> Tensor:
    with torch.enable_grad():
        return twin(*leaves)


def _log_twin_error(done) -> None:
    """A twin that failed while the device failed too: the device's error is the one reported."""
    if not done.cancelled() and done.exception() is not None:
        log.debug("the twin failed as well: %r", done.exception())


def physics_aware(physical: Callable[..., Tensor], twin: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a physical forward function and its digital twin into one differentiable function.

    Args:
        physical: f_p(x, theta, *more) -> y, run on the device without autograd.
        twin: f_m(x, theta, *more) -> y, differentiable; evaluated at the same inputs the device saw (beside the
            device, when a gradient is wanted).
    Returns:
        A function (x, theta, *more) -> y whose value is the device's output and whose gradient with respect to
        every tensor argument is the VJP of ``twin`` at those arguments. Its attribute ``twin_wait_s`` adds up the
        time the caller waited for the twin's forward pass after the device had finished, s.
    """

    class PhysicsAware(torch.autograd.Function):
        @staticmethod
        def forward(ctx, grad_enabled: bool, *inputs: Tensor) -> Tensor:
            # the twin at exactly the inputs the device sees; detach() shares their version counter, so changing an
            # input in place before the backward pass is an error, as with save_for_backward
            needs = ctx.needs_input_grad[1:]
            leaves = tuple(t.detach().requires_grad_(need) for t, need in zip(inputs, needs))
            wanted = grad_enabled and any(needs)  # no gradient wanted (e.g. under no_grad): no twin
            pending = twin_worker().submit(_twin_graph, twin, leaves) if wanted else None
            try:
                with torch.no_grad():
                    y = physical(*inputs)
            except BaseException:
                if pending is not None and not pending.cancel():  # the device failed: the twin's result is not needed
                    pending.add_done_callback(_log_twin_error)
                raise
            if pending is not None:
                t0 = time.perf_counter()
                failed = pending.exception()
                apply.twin_wait_s += time.perf_counter() - t0
                if failed is not None:
                    raise failed
                ctx.leaves, ctx.y_twin = leaves, pending.result()
            return y.to(inputs[0].dtype)

        @staticmethod
        def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, ...]:
            wanted = [t for t in ctx.leaves if t.requires_grad]
            # retained: a caller's backward(retain_graph=True) may come again; it goes when this node's graph goes
            grads = iter(torch.autograd.grad(ctx.y_twin, wanted, grad_y, allow_unused=True, retain_graph=True))
            return (None, *(next(grads) if t.requires_grad else None for t in ctx.leaves))

    def apply(*inputs: Tensor) -> Tensor:
        return PhysicsAware.apply(torch.is_grad_enabled(), *inputs)

    apply.physical = physical  # type: ignore[attr-defined]
    apply.twin = twin  # type: ignore[attr-defined]
    apply.twin_wait_s = 0.0  # type: ignore[attr-defined]
    return apply
