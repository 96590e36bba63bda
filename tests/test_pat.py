"""The PAT core: forward from the device, backward from the twin evaluated at the device's inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.network import PhysicalNetwork
from orchestrator.pat import physics_aware, twin_worker


def twin(x, theta):
    return torch.tanh(x * theta) + 0.1 * x**2


def device(x, theta):
    """A 'real' system that differs from the twin (offset, gain error, noise)."""
    return 1.1 * torch.tanh(x * theta) + 0.1 * x**2 + 0.05 + 0.01 * torch.randn_like(x)


def test_forward_value_is_the_device_output():
    torch.manual_seed(0)
    calls = []

    def recording_device(x, theta):
        calls.append(x.clone())
        return x * 0 + 7.0

    f = physics_aware(recording_device, twin)
    x = torch.rand(3, 4, requires_grad=True)
    y = f(x, torch.ones(4, requires_grad=True))
    assert torch.equal(y, torch.full((3, 4), 7.0))
    assert len(calls) == 1 and torch.equal(calls[0], x.detach())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_gradient_equals_twin_gradient_at_device_input(seed):
    torch.manual_seed(seed)
    x = torch.randn(5, 6, requires_grad=True)
    theta = torch.randn(6, requires_grad=True)
    weights = torch.randn(5, 6)
    f = physics_aware(device, twin)
    (f(x, theta) * weights).sum().backward()
    x2, theta2 = x.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_()
    (twin(x2, theta2) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(theta.grad, theta2.grad)


def test_gradient_through_layers_uses_device_activations():
    """In a two-layer network, the second layer's twin is evaluated at the first layer's DEVICE output,
    not at the twin's prediction: the essence of PAT."""
    torch.manual_seed(1)
    seen = []

    def spy_twin(x, theta):
        seen.append(x.detach().clone())
        return twin(x, theta)

    f = physics_aware(device, spy_twin)
    x = torch.randn(4, 3)
    t1, t2 = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    h = f(x, t1)
    y = f(h, t2)
    y.sum().backward()
    assert any(torch.equal(s, h.detach()) for s in seen)
    assert not any(torch.allclose(s, twin(x, t1).detach()) for s in seen)
    assert t1.grad is not None and t2.grad is not None


def test_theta_stays_in_bounds_after_projection():
    net = PhysicalNetwork(n_features=4, n_classes=2, width=8, depth=2, theta_bounds=(-0.5, 0.25))
    with torch.no_grad():
        net.theta.mul_(10)
    net.project_()
    assert net.theta.min() >= -0.5 and net.theta.max() <= 0.25


def test_pool_readout_is_round_robin_mean():
    net = PhysicalNetwork(n_features=3, n_classes=2, width=6, depth=1)
    h = torch.arange(12.0).reshape(2, 6)
    with torch.no_grad():
        net.out_scale.fill_(1.0)
    expected = torch.stack([h[:, [0, 2, 4]].mean(1), h[:, [1, 3, 5]].mean(1)], dim=1)
    torch.testing.assert_close(net.readout(h), expected)


def test_a_last_layer_with_fewer_bins_than_slots():
    """The raw-audio layout: many slots in, few output bins out, pooled (fully physical) or read linearly (hybrid)."""
    def bins(h, theta):  # a stand-in device: 12 slots -> 4 bins of 3 slots
        return (h + theta).reshape(h.shape[0], 4, 3).mean(2)

    pooled = PhysicalNetwork(6, 2, width=12, depth=1, n_outputs=4, shuffle_slots=False)
    x = torch.rand(5, 6)
    out = bins((2 * x - 1)[:, pooled.tile_index] * pooled.scale[0] + pooled.shift[0], pooled.theta[0])
    expected = pooled.out_scale * torch.stack([out[:, [0, 2]].mean(1), out[:, [1, 3]].mean(1)], 1) + pooled.out_shift
    torch.testing.assert_close(pooled(x, bins), expected)
    linear = PhysicalNetwork(6, 2, width=12, depth=1, n_outputs=4, readout="linear")
    assert linear(x, bins).shape == (5, 2) and linear.hybrid and linear.linear.in_features == 4
    with pytest.raises(ValueError, match="only be the last layer"):
        PhysicalNetwork(6, 2, width=12, depth=2, n_outputs=4)


def test_theta_can_start_at_the_middle_of_its_bounds():
    net = PhysicalNetwork(4, 2, width=8, depth=2, theta_bounds=(-0.5, 1.5), theta_init="middle")
    assert torch.equal(net.theta.detach(), torch.full((2, 8), 0.5))
    spread = PhysicalNetwork(4, 2, width=8, depth=2, theta_bounds=(-0.5, 1.5))
    assert spread.theta.min() >= -0.5 and spread.theta.max() <= 1.5 and spread.theta.std() > 0.2
    assert torch.equal(net.slot_order, spread.slot_order)  # the init does not change the network's wiring


def test_a_pool_readout_needs_a_bin_per_class():
    with pytest.raises(ValueError, match="at least one output bin per class"):
        PhysicalNetwork(6, 10, width=12, depth=1, n_outputs=4)
    assert PhysicalNetwork(6, 10, width=12, depth=1, n_outputs=4, readout="linear").linear.in_features == 4


def sequential_physics_aware(physical, twin):
    """PAT as it was first written: the twin runs again in the backward pass, after the device (the reference)."""

    class Sequential(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            with torch.no_grad():
                return physical(*inputs).to(inputs[0].dtype)

        @staticmethod
        def backward(ctx, grad_y):
            inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
            wanted = [t for t in inputs if t.requires_grad]
            with torch.enable_grad():
                grads = iter(torch.autograd.grad(twin(*inputs), wanted, grad_y, allow_unused=True))
            return tuple(next(grads) if t.requires_grad else None for t in inputs)

    return Sequential.apply


def test_the_overlapped_twin_gives_the_gradients_of_the_sequential_computation():
    """The twin's forward runs beside the device and its graph is kept: a 3-layer network with a temporal-conv twin
    gets the same gradients, to the last bit, as when the twin runs again after the device."""
    from twins.neural import TemporalConvTwin

    torch.manual_seed(3)
    twin_net = TemporalConvTwin(8, 8, 8, channels=8).requires_grad_(False)
    noise = torch.Generator().manual_seed(0)

    def noisy_device(x, theta):  # the twin plus a deterministic, input-dependent error
        return twin_net(x, theta) + 0.05 * torch.sin(7 * x)

    grads = []
    for layer in (physics_aware(noisy_device, twin_net), sequential_physics_aware(noisy_device, twin_net)):
        net = PhysicalNetwork(10, 3, 8, 3, (-1.0, 1.0), "pool", True, seed=0)
        features = torch.randn(16, 10, generator=noise)
        loss = net(features, layer).logsumexp(dim=1).sum()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
        noise = torch.Generator().manual_seed(0)
    assert len(grads[0]) == len(grads[1]) > 3
    for overlapped, sequential in zip(*grads):
        assert torch.equal(overlapped, sequential)


def test_the_twin_worker_computes_on_one_thread_and_leaves_the_others_as_they_were():
    """One CPU thread in the worker; the caller's count and the default of threads started later unchanged."""
    import threading

    before = torch.get_num_threads()
    assert twin_worker().submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == before
    later = []
    started = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    started.start()
    started.join()
    assert later == [before]


def test_the_one_thread_twin_gives_the_main_thread_s_gradients_at_the_main_job_s_size():
    """At a batch of 64 x 320 slots torch would split the twin's work over its threads: the twin worker's single
    thread gives the same gradients, to the last bit, as the twin run again on the calling thread."""
    from twins.neural import TemporalConvTwin

    torch.manual_seed(4)
    twin_net = TemporalConvTwin(320, 320, 320, channels=16, dilations=(1, 2, 4, 8)).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(64, 320, generator=gen) - 1
    grad_y = torch.randn(64, 320, generator=gen)
    grads = []
    for layer in (physics_aware(twin_net, twin_net), sequential_physics_aware(twin_net, twin_net)):
        xx, theta = x.clone().requires_grad_(), torch.zeros(320).requires_grad_()
        layer(xx, theta).backward(grad_y)
        grads.append((xx.grad, theta.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_a_failed_measurement_leaves_no_twin_running_and_raises():
    def failing_device(x, theta):
        raise RuntimeError("scope: no answer")

    f = physics_aware(failing_device, twin)
    with pytest.raises(RuntimeError, match="no answer"):
        f(torch.randn(2, 3), torch.randn(3, requires_grad=True))
    assert f.twin_wait_s >= 0.0
    x, theta = torch.randn(2, 3), torch.randn(3, requires_grad=True)  # the next call works as usual
    f2 = physics_aware(device, twin)
    f2(x, theta).sum().backward()
    assert theta.grad is not None


def test_no_twin_runs_when_no_gradient_is_wanted_and_a_retained_graph_can_go_back_twice():
    calls = []

    def counting_twin(x, theta):
        calls.append(1)
        return twin(x, theta)

    f = physics_aware(device, counting_twin)
    theta = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        f(torch.randn(2, 3), theta)
    assert calls == []  # evaluation under no_grad: the device only
    y = f(torch.randn(2, 3), theta).sum()
    y.backward(retain_graph=True)
    first = theta.grad.clone()
    y.backward()
    assert calls == [1] and torch.allclose(theta.grad, 2 * first)
