"""Digital twins f_m(x, θ): differentiable models of a physical layer, used for PAT's backward pass.

The twin contract (every twin kind follows it):

- a ``torch.nn.Module`` with ``forward(x, theta) -> y``: x [B, n_inputs], theta [B, n_params] or
  [n_params] (shared by the whole batch), y [B, n_outputs], all in the physical units of the data;
- attributes ``n_inputs``, ``n_params``, ``n_outputs``;
- a class attribute ``kind`` (e.g. ``"neural"``), the name under which it is registered;
- ``config() -> dict`` of JSON-able constructor arguments, so that ``cls(**model.config())`` rebuilds it
  (its weights then come from ``state_dict``; see ``twins.artifact``).

Twin classes register themselves with ``@register_twin``; ``twin_class(kind)`` finds them, importing the
module of a known kind on first use (``twins.registry``).
"""

from twins.registry import TWIN_KINDS, broadcast_theta, register_twin, twin_class

__all__ = ["TWIN_KINDS", "broadcast_theta", "register_twin", "twin_class"]
