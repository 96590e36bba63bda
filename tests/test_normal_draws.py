"""``normal_draws`` draws numpy's ``standard_normal(n, dtype=np.float32)`` and torch's uniforms, bit for bit, and
leaves the generator exactly where numpy or torch leaves it (the benches' noise streams are pinned). Its
``torch_randn`` (uniforms and Box-Muller) is checked against ``torch.randn`` in test_fast_physics.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulators.physics import normal_draws
from simulators.physics.normal_draws import K, W, standard_normal_f32, torch_uniforms


def assert_same_draws(seed: int, sizes: list[int]) -> None:
    ref, fast = np.random.default_rng(seed), np.random.default_rng(seed)
    for n in sizes:
        want = ref.standard_normal(n, dtype=np.float32)
        got = standard_normal_f32(fast, n)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        assert fast.bit_generator.state == ref.bit_generator.state


@pytest.mark.parametrize("seed", [0, 1, 54323])
def test_same_numbers_and_generator_state_as_numpy(seed: int) -> None:
    # odd sizes leave half a 64-bit output waiting: the next draw must start from it, as numpy's does
    assert_same_draws(seed, [1, 2, 3, 17, 0, 1000, 65_537, 504_000, 1])


def test_a_long_stream_with_tails_and_wedges() -> None:
    # 3 million draws from seed 0: ~800 from the tail beyond R (where logf(1 - u) and log1pf(-u) differ in the last
    # bit three times) and ~40,000 wedge tests
    assert normal_draws._tail_logarithm() is not None
    assert_same_draws(0, [3_000_000])


def test_draw_only_advances_like_a_draw() -> None:
    ref, fast = np.random.default_rng(5), np.random.default_rng(5)
    for n in (3, 10_001, 4):
        ref.standard_normal(n, dtype=np.float32)
        assert standard_normal_f32(fast, n, draw_only=True) is None
        assert fast.bit_generator.state == ref.bit_generator.state
    np.testing.assert_array_equal(standard_normal_f32(fast, 100), ref.standard_normal(100, dtype=np.float32))


def first_draw_from_word(word: int) -> tuple[np.float32, bool]:
    """numpy's draw when its next 32-bit word is ``word`` (a waiting high half), and whether it took further words
    (a rejection: the tail or a wedge test)."""
    rng = np.random.default_rng(11)
    state = rng.bit_generator.state
    state["has_uint32"], state["uinteger"] = 1, word
    rng.bit_generator.state = state
    value = rng.standard_normal(1, dtype=np.float32)[0]
    return value, rng.bit_generator.state["state"] != state["state"]


def test_every_layers_bound_and_width_are_numpys() -> None:
    # in each of the 256 layers, the largest rabs kept at once and the smallest rejected are numpy's, and so is the
    # number kept
    for layer, bound in enumerate(K.tolist()):
        if bound > 0:
            value, rejected = first_draw_from_word(layer | 1 << 8 | (bound - 1) << 9)  # negative
            assert not rejected and value == -(np.float32(bound - 1) * W[layer]), layer
        if bound < 2 ** 23:
            assert first_draw_from_word(layer | bound << 9)[1], layer


def test_other_bit_generators_are_drawn_by_numpy() -> None:
    ref, fast = np.random.Generator(np.random.MT19937(3)), np.random.Generator(np.random.MT19937(3))
    np.testing.assert_array_equal(standard_normal_f32(fast, 1000), ref.standard_normal(1000, dtype=np.float32))
    assert fast.bit_generator.state["state"]["pos"] == ref.bit_generator.state["state"]["pos"]


def test_torch_uniforms_and_generator_state_are_torchs() -> None:
    # 312 uniforms use up one regeneration of the Twister's 624 words: sizes around it cross regenerations with a
    # uniform's two words on either side
    for seed in (0, 12345):
        ref, fast = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for n in (1, 311, 312, 313, 1000, 491_520, 17):
            want = torch.rand(n, generator=ref, dtype=torch.float64).numpy()
            np.testing.assert_array_equal(torch_uniforms(fast, n), want)
            assert torch.equal(fast.get_state(), ref.get_state())
            # a draw that is not read: two words a number, as torch's 64-bit integers take
            torch.empty(n, dtype=torch.int64).random_(generator=ref)
            assert torch_uniforms(fast, n, draw_only=True) is None
            assert torch.equal(fast.get_state(), ref.get_state())


def test_draws_fall_back_to_the_library_when_not_reproduced(monkeypatch: pytest.MonkeyPatch) -> None:
    # what a numpy or torch build whose draws the compiled code does not reproduce gets: the library's own draws
    monkeypatch.setattr(normal_draws, "_tail_logarithm", lambda: None)
    monkeypatch.setattr(normal_draws, "_twister_reproduced", lambda: False)
    ref, fast = np.random.default_rng(2), np.random.default_rng(2)
    np.testing.assert_array_equal(standard_normal_f32(fast, 1001), ref.standard_normal(1001, dtype=np.float32))
    assert standard_normal_f32(fast, 7, draw_only=True) is None
    ref.standard_normal(7, dtype=np.float32)
    assert fast.bit_generator.state == ref.bit_generator.state
    t_ref, t_fast = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    np.testing.assert_array_equal(torch_uniforms(t_fast, 700), torch.rand(700, generator=t_ref, dtype=torch.float64))
    assert torch_uniforms(t_fast, 5, draw_only=True) is None
    torch.empty(5, dtype=torch.int64).random_(generator=t_ref)
    assert torch.equal(t_fast.get_state(), t_ref.get_state())


def test_the_compiled_draws_are_the_ones_in_use() -> None:
    # this machine's numpy and torch are reproduced: the benches draw compiled, not through the fallback
    assert normal_draws._tail_logarithm() is not None
    assert normal_draws._twister_reproduced()
