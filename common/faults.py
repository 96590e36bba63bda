"""What a simulated instrument does wrong on purpose: the one description of its faults, shared by the experiment
file's ``simulate.faults`` section (``orchestrator.config``) and the simulators that inject them
(``simulators.scpi.faults``)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, PositiveInt

from common.models import StrictModel

Probability = Annotated[float, Field(ge=0, le=1)]


class FaultPlan(StrictModel):
    """Faults one simulated instrument injects, each a probability per reply (0: never): ``rate`` for every kind at
    once, or a probability per kind (which wins over ``rate``; None: use ``rate``).

    latency: the reply is delayed by ``latency_s`` seconds. no_reply: the reply is never sent. drop_connection: the
    connection is closed instead of replying (TCP); on a serial line the cable is pulled for ``unplug_s`` seconds
    (nothing goes either way). garble_block: a few bytes of a binary block payload are corrupted. short_block: a binary
    block payload is cut short (its header still announces the full length). error: an instrument error
    (``-300,"Device-specific error"``) goes into the error queue. reset: the instrument resets itself after the reply
    (settings lost, as after a brown-out; the power-on bit of ``*ESR?`` is set). stuck: the instrument freezes (a hung
    acquisition): the reply and everything for the next ``stuck_s`` seconds is ignored.
    """

    model_config = ConfigDict(frozen=True)

    KINDS: ClassVar[tuple[str, ...]] = (
        "latency", "no_reply", "drop_connection", "garble_block", "short_block", "error", "reset", "stuck")

    rate: Probability = 0.0
    latency: Probability | None = None
    no_reply: Probability | None = None
    drop_connection: Probability | None = None
    garble_block: Probability | None = None
    short_block: Probability | None = None
    error: Probability | None = None
    reset: Probability | None = None
    stuck: Probability | None = None
    seed: int = 0
    latency_s: float = Field(0.5, ge=0, description="delay of a late reply, s")
    stuck_s: float = Field(1.0, ge=0, description="how long a stuck instrument ignores everything, s")
    unplug_s: float = Field(0.5, ge=0, description="how long a pulled serial cable stays out, s")
    max_faults: PositiveInt | None = Field(None, description="stop injecting after this many faults")

    def probabilities(self) -> dict[str, float]:
        """Probability per reply of each kind of fault."""
        return {kind: self.rate if getattr(self, kind) is None else getattr(self, kind) for kind in self.KINDS}

    @classmethod
    def every_kind(cls, rate: float, seed: int = 0) -> "FaultPlan":
        """Every kind of fault, each with probability ``rate`` per reply."""
        return cls(seed=seed, rate=rate, **{name: rate for name in cls.KINDS})
