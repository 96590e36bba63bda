"""Physical setups: each turns a batch of inputs x and control parameters θ into outputs y by driving real (or
simulated) instruments.

    base.py        the setup contract (``PhysicalSystem``, ``PhysicalSetup``), ``check_batch``, ``Counters``
    awg_scope.py   what the electronic and mechanical setups share: a batch as one AWG waveform, a scope record
    electronic.py  the nonlinear circuit       mechanical.py  the speaker-driven plate
    optical.py     the SHG pulse shaper (SLM and camera)
"""
