"""Re-timing an iteration whose clock changes while it runs (the simulator's and the emulator's).

A GPU changes clock within an iteration: the work done before the change ran at
the old clock, the work left runs at the new one. With the iteration's whole
time and energy at each clock (``IterCost`` figures), the books are pro rata:
a ``Stretch`` is the run since its last clock change, ``retime`` starts the
next one. The simulator (``sim.instance``) and the emulated worker
(``services.emulator``) both call it, so they re-time identically.
"""

from __future__ import annotations

import msgspec

__all__ = ["Stretch", "retime"]


class Stretch(msgspec.Struct, frozen=True, gc=False):
    """An iteration from ``start_s`` on at one clock.

    ``left`` of its work remained at ``start_s``; the whole iteration takes
    ``full_s`` and ``full_j`` at this clock; ``done_j`` is the energy spent
    before ``start_s``. A fresh iteration: ``Stretch(t, 1.0, time, energy)``.
    """

    start_s: float
    left: float
    full_s: float
    full_j: float
    done_j: float = 0.0

    @property
    def rest_s(self) -> float:
        """Time the work left at ``start_s`` takes at this clock."""
        return self.left * self.full_s

    @property
    def end_s(self) -> float:
        """When the iteration ends if the clock holds."""
        return self.start_s + self.left * self.full_s

    @property
    def energy_j(self) -> float:
        """The whole iteration's energy if the clock holds."""
        return self.done_j + self.left * self.full_j


def retime(run: Stretch, change_s: float, full_s: float, full_j: float) -> Stretch:
    """The stretch that starts when the clock changes at ``change_s``.

    The work done since ``run.start_s`` is booked at the old clock; what is left
    costs ``full_s`` and ``full_j`` (the whole iteration at the new clock) pro rata.
    A change stamped before ``run.start_s`` (it raced the previous one) applies from
    ``run.start_s``; the work used up is at most what was left.
    """
    change_s = max(change_s, run.start_s)
    used = min((change_s - run.start_s) / run.full_s, run.left)
    return Stretch(change_s, run.left - used, full_s, full_j, run.done_j + used * run.full_j)
