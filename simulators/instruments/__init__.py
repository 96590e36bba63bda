"""Simulated instrument front panels: state machine and SCPI command set of each instrument."""

from simulators.instruments.awg import SimKeysight33522B
from simulators.instruments.camera import SimSpectroscopyCamera
from simulators.instruments.scope import SimInfiniiVision
from simulators.instruments.slm import SimPhaseSLM

__all__ = ["SimKeysight33522B", "SimInfiniiVision", "SimSpectroscopyCamera", "SimPhaseSLM"]
