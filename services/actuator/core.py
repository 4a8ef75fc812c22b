"""The actuator's pure core: which clock each GPU must hold, under which lease.

No I/O and no clock reads: commands and the time (monotonic seconds) come in,
:class:`Verdict` s come out, and the shell applies each verdict's
``target_mhz`` through a clock backend and reports it as a ``ClockState``.

Rules, in the order they are checked for a command:

1. the payload's node must be this node (the subject already is; a payload that
   disagrees is rejected and reported, never applied);
2. the payload's GPU must match the subject's GPU and be one of this node's GPUs;
3. a lock whose ``t_ns`` is more than ``max_command_age_s`` behind the actuator's
   wall clock, or more than ``max_clock_skew_s`` ahead of it, is rejected: an old
   command replayed under any issuer name is refused, and a command from the
   future cannot lock the real controller out (its stamp would outrank every
   later command). A reset is never refused for its age or order: it is the safe
   direction, and it records no stamp;
4. a lock older than the last one seen from the same issuer for the same GPU
   (by ``(t_ns, seq)``) is a reordered duplicate and is rejected as stale. The
   stamps kept per GPU are bounded: those older than the age bound are pruned
   (nothing older can be accepted anyway), and at most ``max_issuers`` are kept;
5. a lock must name a clock in the GPU's supported list and a positive finite lease
   (clamped to ``max_lease_s``);
6. changes of the locked clock are rate-limited: a change sooner than
   ``min_change_interval_s`` after the previous one is deferred (the latest
   request wins) and applied when the interval has passed. Resets are never
   deferred: they are the safe direction.

Every lock lives under a lease: :meth:`LeaseTable.on_tick` resets a GPU whose
lease lapsed; :meth:`LeaseTable.release_all` resets everything (bus lost, stop).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from voltana.schemas.clock import ResetClock, SetClock

VerdictKind = Literal["apply", "renew", "deferred", "reset", "rejected", "expired", "released"]


class ActuatorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one node's actuator.

    ``min_change_interval_s`` caps clock changes per GPU (NVML applies a lock in
    about 3 ms; faster flapping buys nothing and wears on the driver).
    ``max_lease_s`` bounds how long one command can hold a clock without renewal.
    ``max_command_age_s`` / ``max_clock_skew_s`` bound a lock's ``t_ns`` against the
    actuator's wall clock; ``max_issuers`` bounds the stamps kept per GPU;
    ``verify_interval_s`` is how often a renewed lock is checked on the hardware.
    """

    node: str
    min_change_interval_s: float = 0.05
    min_lease_s: float = 0.05
    max_lease_s: float = 30.0
    max_command_age_s: float = 5.0
    max_clock_skew_s: float = 1.0
    max_issuers: int = 64
    verify_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one GPU after a command or a tick.

    ``target_mhz`` is the clock the GPU must hold now (None: default clocks);
    ``kind`` says why (``apply``: lock ``target_mhz``; ``renew``: keep it, lease
    extended; ``deferred``: keep the current clock, ``requested_mhz`` follows when
    the rate limit allows; ``reset``/``expired``/``released``: default clocks;
    ``rejected``: nothing changes, ``reason`` says why).
    """

    gpu: int
    kind: VerdictKind
    target_mhz: int | None
    requested_mhz: int | None = None
    command_seq: int | None = None
    lease_expires_s: float | None = None
    reason: str = ""


@dataclass(slots=True)
class _Slot:
    supported: frozenset[int]
    target_mhz: int | None = None
    lease_expires_s: float | None = None
    last_change_s: float = -math.inf
    pending_mhz: int | None = None
    pending_seq: int | None = None
    last_seen: dict[str, tuple[int, int]] = field(default_factory=dict)


class LeaseTable:
    """Per-GPU clock targets with leases, validation and a rate limit (pure state machine).

    Args:
        config: this node's limits.
        supported_mhz: GPU index -> its supported SM clocks.
    """

    def __init__(self, config: ActuatorConfig, supported_mhz: Mapping[int, Iterable[int]]) -> None:
        self.config = config
        self._slots = {
            gpu: _Slot(frozenset(int(c) for c in cl)) for gpu, cl in supported_mhz.items()
        }

    # -- views --------------------------------------------------------------

    @property
    def gpus(self) -> list[int]:
        return sorted(self._slots)

    def target_mhz(self, gpu: int) -> int | None:
        return self._slots[gpu].target_mhz

    def lease_expires_s(self, gpu: int) -> float | None:
        return self._slots[gpu].lease_expires_s

    def pending_mhz(self, gpu: int) -> int | None:
        return self._slots[gpu].pending_mhz

    def next_deadline_s(self) -> float | None:
        """The earliest time :meth:`on_tick` has something to do (None: nothing scheduled)."""
        times: list[float] = []
        for s in self._slots.values():
            if s.target_mhz is not None and s.lease_expires_s is not None:
                times.append(s.lease_expires_s)
            if s.pending_mhz is not None:
                times.append(s.last_change_s + self.config.min_change_interval_s)
        return min(times) if times else None

    # -- inputs ---------------------------------------------------------------

    def on_command(
        self,
        cmd: SetClock | ResetClock,
        now_s: float,
        *,
        subject_gpu: int | None = None,
        wall_ns: int | None = None,
    ) -> Verdict:
        """Validate one command and update the GPU's target and lease.

        ``wall_ns`` is the actuator's wall clock (Unix ns), against which a lock's
        ``t_ns`` is aged; the service always passes it (None only where there is
        no wall clock to compare with, as in a replay).
        """
        requested = cmd.sm_clock_mhz if isinstance(cmd, SetClock) else None
        seq = cmd.seq

        def reject(gpu: int, reason: str) -> Verdict:
            slot = self._slots.get(gpu)
            return Verdict(
                gpu=gpu,
                kind="rejected",
                target_mhz=slot.target_mhz if slot else None,
                requested_mhz=requested,
                command_seq=seq,
                lease_expires_s=slot.lease_expires_s if slot else None,
                reason=reason,
            )

        gpu = cmd.gpu if subject_gpu is None else subject_gpu
        if cmd.node != self.config.node:
            return reject(gpu, f"command for node {cmd.node!r} reached node {self.config.node!r}")
        if subject_gpu is not None and cmd.gpu != subject_gpu:
            return reject(
                gpu, f"payload GPU {cmd.gpu} differs from the subject's GPU {subject_gpu}"
            )
        slot = self._slots.get(gpu)
        if slot is None:
            return reject(gpu, f"GPU {gpu} is not controlled by this actuator (GPUs: {self.gpus})")
        if isinstance(cmd, ResetClock):  # the safe direction: never refused for age or order
            return self._reset(gpu, slot, now_s, "reset", seq, cmd.reason or "reset requested")
        if wall_ns is not None:
            age_s = (wall_ns - cmd.t_ns) / 1e9
            if age_s > self.config.max_command_age_s:
                return reject(
                    gpu, f"command is {age_s:.1f} s old (limit {self.config.max_command_age_s} s)"
                )
            if -age_s > self.config.max_clock_skew_s:
                return reject(
                    gpu,
                    f"command is stamped {-age_s:.1f} s in the future "
                    f"(clock skew limit {self.config.max_clock_skew_s} s)",
                )
            self._prune(slot, wall_ns)
        stamp = (cmd.t_ns, seq)
        last = slot.last_seen.get(cmd.issued_by)
        if last is not None and stamp <= last:
            return reject(gpu, f"stale command (t_ns, seq) {stamp} <= last seen {last}")

        mhz = cmd.sm_clock_mhz
        if mhz not in slot.supported:
            lo, hi = min(slot.supported), max(slot.supported)
            return reject(gpu, f"{mhz} MHz is not a supported clock of GPU {gpu} ({lo}-{hi} MHz)")
        lease_s = cmd.lease_s
        if not math.isfinite(lease_s) or lease_s < self.config.min_lease_s:
            return reject(
                gpu, f"lease {lease_s} s is below the minimum {self.config.min_lease_s} s"
            )
        lease_s = min(lease_s, self.config.max_lease_s)
        slot.last_seen.pop(cmd.issued_by, None)
        slot.last_seen[cmd.issued_by] = stamp  # (re)inserted last: the dict is oldest-first
        while len(slot.last_seen) > self.config.max_issuers:
            del slot.last_seen[next(iter(slot.last_seen))]
        slot.lease_expires_s = now_s + lease_s

        if mhz == slot.target_mhz:
            slot.pending_mhz = slot.pending_seq = None
            return Verdict(gpu, "renew", mhz, mhz, seq, slot.lease_expires_s, "lease renewed")
        due_s = slot.last_change_s + self.config.min_change_interval_s
        if now_s < due_s:
            slot.pending_mhz, slot.pending_seq = mhz, seq
            return Verdict(
                gpu,
                "deferred",
                slot.target_mhz,
                mhz,
                seq,
                slot.lease_expires_s,
                f"rate limit: {mhz} MHz follows in {1000 * (due_s - now_s):.0f} ms",
            )
        return self._apply(gpu, slot, mhz, seq, now_s, "locked")

    def on_tick(self, now_s: float) -> list[Verdict]:
        """Expire lapsed leases and apply deferred changes that are due."""
        out: list[Verdict] = []
        for gpu in self.gpus:
            slot = self._slots[gpu]
            expires = slot.lease_expires_s
            if slot.target_mhz is not None and expires is not None and now_s >= expires:
                out.append(self._reset(gpu, slot, now_s, "expired", None, "lease lapsed"))
                continue
            if slot.pending_mhz is not None:
                if expires is not None and now_s >= expires:
                    slot.pending_mhz = slot.pending_seq = None
                elif now_s >= slot.last_change_s + self.config.min_change_interval_s:
                    seq = slot.pending_seq
                    out.append(
                        self._apply(gpu, slot, slot.pending_mhz, seq, now_s, "deferred lock")
                    )
        return out

    def release_all(self, now_s: float, reason: str) -> list[Verdict]:
        """Reset every GPU (bus lost, shutdown, start-up): one verdict per GPU."""
        return [
            self._reset(gpu, self._slots[gpu], now_s, "released", None, reason) for gpu in self.gpus
        ]

    def on_apply_failed(self, gpu: int, now_s: float, reason: str) -> Verdict:
        """The backend failed to apply the target: fall back to default clocks."""
        return self._reset(gpu, self._slots[gpu], now_s, "released", None, reason)

    def issuers(self, gpu: int) -> int:
        """How many issuers' stamps the GPU's slot keeps (bounded by ``max_issuers``)."""
        return len(self._slots[gpu].last_seen)

    def _prune(self, slot: _Slot, wall_ns: int) -> None:
        """Drop stamps too old to matter: no command that old can be accepted any more."""
        oldest_ok = wall_ns - int(self.config.max_command_age_s * 1e9)
        stale = [k for k, (t_ns, _) in slot.last_seen.items() if t_ns < oldest_ok]
        for k in stale:
            del slot.last_seen[k]

    # -- transitions --------------------------------------------------------------

    def _apply(
        self, gpu: int, slot: _Slot, mhz: int, seq: int | None, now_s: float, reason: str
    ) -> Verdict:
        slot.target_mhz = mhz
        slot.pending_mhz = slot.pending_seq = None
        slot.last_change_s = now_s
        return Verdict(gpu, "apply", mhz, mhz, seq, slot.lease_expires_s, reason)

    def _reset(
        self,
        gpu: int,
        slot: _Slot,
        now_s: float,
        kind: VerdictKind,
        seq: int | None,
        reason: str,
    ) -> Verdict:
        if slot.target_mhz is not None:
            slot.last_change_s = now_s
        slot.target_mhz = None
        slot.lease_expires_s = None
        slot.pending_mhz = slot.pending_seq = None
        return Verdict(gpu, kind, None, None, seq, None, reason)
