"""Encodings: how a setup's inputs x and parameters θ become what its instruments play, and how what they record
becomes outputs y. Pure tensor and array maths with no instruments, shared by the setups (``drivers.setups``), the
twins (``twins``) and the perfect twins, so that a twin can be read without the instrument code.

    awg_scope.py    time slots, binning, the AWG's EMF per drive unit (electronic and mechanical)
    electronic.py   the nonlinear circuit     mechanical.py   the speaker-driven plate
    optical.py      the pulse shaper: SLM pixels and phases, camera columns and output bins

An encoding section is a ``common.models.StrictModel`` with ``n_outputs(n_inputs) -> int``.
"""
