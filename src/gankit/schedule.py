"""Schedules of a run: factors that hold, then fall linearly to 0 by the last step.

    learning rates   1 until the final `lr_decay` fraction of the run, then -> 0
    instance noise   1 at step 0, falling from the start -> 0
    R1 / R2 weights  1 at step 0, falling from the start -> train.gamma_final

A schedule is a `Ramp` (value, start, end), saved in the checkpoint, so that
extending a run (`gankit train --resume RUN --steps N`) is continuous: the new
ramp starts from the factor the run had reached, holds it, and falls to 0 by
the new last step. It never jumps back up, and a run resumed with its own
`steps` follows the very same ramp.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    value: float  # the factor until `start`
    start: int  # the step where the linear fall begins
    end: int  # the step where it reaches 0 (the run's last step)

    def __call__(self, step: int) -> float:
        """The factor for update `step` (0-based)."""
        if step <= self.start or self.end <= self.start:
            return self.value
        return self.value * max(0.0, (self.end - step) / (self.end - self.start))

    def extended(self, step: int, end: int, fall: int) -> Ramp:
        """The ramp of a run resumed at `step` with `end` as its new last step, whose fall
        lasts the final `fall` steps: it starts where this one has got to."""
        if end == self.end:
            return self
        return Ramp(self(step), max(step, end - fall), end)

    def to_list(self) -> list:
        return [self.value, self.start, self.end]

    @classmethod
    def from_list(cls, values) -> Ramp:
        value, start, end = values
        return cls(float(value), int(start), int(end))


def lr_ramp(steps: int, decay: float) -> Ramp:
    """1, then a linear fall over the final `decay` fraction of `steps` that reaches 0 after
    the last update; decay 0 = constant."""
    fall = round(decay * steps)
    return Ramp(1.0, steps - fall if fall else steps, steps)


def gamma_ramp(steps: int) -> Ramp:
    """The R1/R2 weights' fall (R3GAN decays gamma): the factor on them is
    gamma_final + (1 - gamma_final) x this ramp, from 1 at step 0 to gamma_final at the end."""
    return Ramp(1.0, 0, steps)


def noise_ramp(steps: int) -> Ramp:
    """Instance noise: annealed linearly from its full std at step 0 to 0 at the end."""
    return Ramp(1.0, 0, steps)
