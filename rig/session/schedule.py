"""RSVP schedules: the planned order of presentations, and the queue a session consumes.

A schedule shows every stimulus ``repeats`` times, in fixation trials of K presentations,
shuffled with a seed, with every perturbed image kept far (in time) from its clean parent.
The session consumes it through a :class:`PresentationQueue`: presentations that were
not recorded validly (aborted trial, dropped frame, acquisition gap) go back into the
queue, and the session ends when every planned presentation has a valid recording.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rig.backend import Trial


@dataclass
class Schedule:
    """The planned presentation order."""

    stim_index: np.ndarray            # (n_planned,) stimulus shown at each planned slot
    presentations_per_trial: int      # K
    seconds_per_presentation: float   # expected wall time per slot (incl. trial overheads), s
    seed: int = 0

    def __len__(self) -> int:
        return len(self.stim_index)

    @property
    def n_trials(self) -> int:
        return -(-len(self) // self.presentations_per_trial)

    def parent_separation_min(self, parent: np.ndarray) -> tuple[float, float]:
        """(mean, min) time in minutes from each perturbed presentation to the nearest
        presentation of its clean parent; (nan, nan) when nothing is perturbed."""
        times = np.arange(len(self)) * self.seconds_per_presentation / 60.0
        return separation_minutes(self.stim_index, times, parent)


def separation_minutes(stim_index: np.ndarray, times_min: np.ndarray, parent: np.ndarray) -> tuple[float, float]:
    """(mean, min) over perturbed presentations of the time (minutes) to the nearest
    presentation of the parent. ``parent[s]`` is the clean parent of stimulus s or -1."""
    stim_index = np.asarray(stim_index)
    by_stim: dict[int, np.ndarray] = {}
    order = np.argsort(stim_index, kind="stable")
    sorted_stims = stim_index[order]
    bounds = np.flatnonzero(np.diff(sorted_stims)) + 1
    for group in np.split(order, bounds):
        if len(group):
            by_stim[int(stim_index[group[0]])] = np.sort(times_min[group])
    seps = []
    for pos, s in enumerate(stim_index):
        p = parent[s]
        if p < 0 or p not in by_stim:
            continue
        pt = by_stim[int(p)]
        seps.append(np.min(np.abs(pt - times_min[pos])))
    if not seps:
        return float("nan"), float("nan")
    return float(np.mean(seps)), float(np.min(seps))


def seconds_per_presentation(stim_on_ms: float, mask_ms: float, k: int,
                             fixation_acquire_ms: float, inter_trial_ms: float) -> float:
    """Expected wall time of one presentation slot, trial overheads shared over K, in s."""
    return (stim_on_ms + mask_ms) / 1000.0 + (fixation_acquire_ms + inter_trial_ms) / 1000.0 / k


def build_schedule(parent: np.ndarray, repeats: int, presentations_per_trial: int, seed: int,
                   seconds_per_slot: float, min_separation_min: float = 0.0,
                   max_repair_attempts: int = 200) -> Schedule:
    """Plan ``repeats`` presentations of every stimulus.

    ``parent[s]`` is the index of stimulus s's clean parent (-1 for clean images). Each
    repeat is a block holding every stimulus once. Each family (a clean image and the
    stimuli made from it) gets a random phase: the parent sits near that phase in every
    block and its children half a block later (with jitter), so a perturbed image is about
    half a block (one repeat) from its parent in both directions and families interleave
    randomly. Clean images without children are shuffled freely. A repair pass then
    moves any perturbed presentation closer than ``min_separation_min`` to a presentation
    of its parent (best effort: the achieved separation is reported by
    :meth:`Schedule.parent_separation_min`).
    """
    parent = np.asarray(parent, dtype=np.int64)
    n = len(parent)
    if repeats < 1 or presentations_per_trial < 1:
        raise ValueError(f"build_schedule needs repeats >= 1 and presentations_per_trial >= 1; got {repeats}, {presentations_per_trial}")
    if n == 0:
        raise ValueError("build_schedule got an empty stimulus set; there is nothing to show")
    rng = np.random.default_rng(seed)
    is_child = parent >= 0
    has_children = np.zeros(n, bool)
    has_children[parent[is_child]] = True
    phase = rng.random(n)  # per family, fixed across blocks
    blocks = []
    for _ in range(repeats):
        pos = rng.random(n)  # free stimuli: anywhere
        fam = has_children & ~is_child
        pos[fam] = phase[fam] + rng.uniform(-0.05, 0.05, fam.sum())
        pos[is_child] = phase[parent[is_child]] + 0.5 + rng.uniform(-0.12, 0.12, is_child.sum())
        blocks.append(np.argsort(pos % 1.0, kind="stable"))
    order = np.concatenate(blocks)
    gap = int(np.ceil(min_separation_min * 60.0 / seconds_per_slot)) if min_separation_min > 0 else 0
    if gap > 0 and is_child.any():
        order = _repair(order, parent, gap, rng, max_repair_attempts)
    return Schedule(order, presentations_per_trial, seconds_per_slot, seed)


def _repair(order: np.ndarray, parent: np.ndarray, gap: int, rng: np.random.Generator, attempts: int) -> np.ndarray:
    """Swap perturbed presentations that sit within ``gap`` slots of their parent."""
    order = order.copy()
    n_stim = len(parent)
    children: list[list[int]] = [[] for _ in range(n_stim)]
    for s, p in enumerate(parent):
        if p >= 0:
            children[p].append(s)
    positions: list[set[int]] = [set() for _ in range(n_stim)]
    for pos, s in enumerate(order):
        positions[s].add(pos)

    def conflicts(s: int, pos: int) -> bool:
        near = (parent[s],) if parent[s] >= 0 else children[s]
        for other in near:
            for q in positions[other]:
                if abs(q - pos) < gap:
                    return True
        return False

    for _ in range(20):
        bad = [pos for pos, s in enumerate(order) if parent[s] >= 0 and conflicts(s, pos)]
        if not bad:
            break
        for pos in bad:
            s = order[pos]
            if not conflicts(s, pos):
                continue
            for q in rng.integers(0, len(order), size=attempts):
                t = order[q]
                if q == pos or t == s:
                    continue
                positions[s].discard(pos); positions[t].discard(q)
                positions[s].add(q); positions[t].add(pos)
                if not conflicts(s, q) and not conflicts(t, pos):
                    order[pos], order[q] = t, s
                    break
                positions[s].discard(q); positions[t].discard(pos)
                positions[s].add(pos); positions[t].add(q)
    return order


class PresentationQueue:
    """Planned presentations still owed a valid recording, consumed K at a time.

    ``done[i]`` marks planned slot i as validly recorded (e.g. from a resumed day file).
    Slots that come back invalid are appended to the end of the queue, at most
    ``max_attempts`` attempts each (0: unbounded); a slot past that is given up
    (``n_given_up``), so a cause that never goes away cannot keep a day running forever.
    """

    def __init__(self, schedule: Schedule, done: np.ndarray | None = None, first_trial_index: int = 0,
                 max_attempts: int = 0):
        self.schedule = schedule
        done = np.zeros(len(schedule), bool) if done is None else np.asarray(done, bool)
        self._pending = deque(int(i) for i in np.flatnonzero(~done))
        self._in_flight: tuple[int, ...] = ()
        self._next_trial = first_trial_index
        self.max_attempts = int(max_attempts)
        self._attempts: dict[int, int] = {}
        self.given_up: list[int] = []

    @property
    def n_given_up(self) -> int:
        return len(self.given_up)

    @classmethod
    def replay(cls, schedule: Schedule, recorded: list[tuple[tuple[int, ...], np.ndarray]],
               max_attempts: int = 0) -> "PresentationQueue":
        """The queue exactly as it stood after the ``recorded`` trials (planned slots and
        validity flags, in order), so a resumed session continues as an uninterrupted one
        would have. Falls back to "everything not yet valid, in planned order" if the
        record does not match what this queue would have handed out."""
        q = cls(schedule, max_attempts=max_attempts)
        for planned, valid in recorded:
            trial = q.next_trial()
            if trial is None or trial.planned_indices != tuple(planned):
                done = np.zeros(len(schedule), bool)
                for p, v in recorded:
                    done[np.asarray(p)[np.asarray(v, bool)]] = True
                return cls(schedule, done, first_trial_index=len(recorded), max_attempts=max_attempts)
            q.complete(valid)
        return q

    def __len__(self) -> int:
        """Planned presentations not yet validly recorded (including those in flight)."""
        return len(self._pending) + len(self._in_flight)

    def next_trial(self) -> Trial | None:
        """The next trial of up to K presentations, or None when all are recorded."""
        if self._in_flight:
            raise RuntimeError("PresentationQueue.next_trial called before the previous trial was completed")
        if not self._pending:
            return None
        k = self.schedule.presentations_per_trial
        planned = tuple(self._pending.popleft() for _ in range(min(k, len(self._pending))))
        self._in_flight = planned
        trial = Trial(self._next_trial, tuple(int(self.schedule.stim_index[i]) for i in planned), planned)
        self._next_trial += 1
        return trial

    def complete(self, valid: np.ndarray) -> None:
        """Close the trial in flight: ``valid[j]`` says whether its j-th presentation
        was recorded validly; the others go back into the queue."""
        valid = np.asarray(valid, bool)
        if len(valid) != len(self._in_flight):
            raise ValueError(f"complete() got {len(valid)} flags for a trial of {len(self._in_flight)} presentations")
        for planned, ok in zip(self._in_flight, valid):
            if ok:
                continue
            tries = self._attempts[planned] = self._attempts.get(planned, 0) + 1
            if self.max_attempts and tries >= self.max_attempts:
                self.given_up.append(planned)
            else:
                self._pending.append(planned)
        self._in_flight = ()
