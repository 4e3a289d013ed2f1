"""Schedules: exact repeats, parents kept apart, aborted presentations re-queued."""
import numpy as np

from rig.session.schedule import PresentationQueue, build_schedule, separation_minutes


def _family_parents(n_clean=20, children=4):
    parent = [-1] * n_clean
    for c in range(n_clean):
        parent += [c] * children
    return np.array(parent)


def test_repeats_exact_and_seeded():
    parent = _family_parents()
    s = build_schedule(parent, repeats=6, presentations_per_trial=5, seed=1, seconds_per_slot=0.3)
    assert np.array_equal(np.bincount(s.stim_index, minlength=len(parent)), np.full(len(parent), 6))
    again = build_schedule(parent, repeats=6, presentations_per_trial=5, seed=1, seconds_per_slot=0.3)
    assert np.array_equal(s.stim_index, again.stim_index)
    assert not np.array_equal(s.stim_index, build_schedule(parent, 6, 5, 2, 0.3).stim_index)
    assert s.n_trials == -(-len(s) // 5)


def test_pairs_separated_by_requested_minimum():
    parent = _family_parents()
    slot = 0.3
    s = build_schedule(parent, repeats=6, presentations_per_trial=5, seed=0, seconds_per_slot=slot,
                       min_separation_min=0.1)  # 20 slots
    mean, low = s.parent_separation_min(parent)
    assert low >= 0.1 - 1e-9
    # and the measure itself against a brute-force computation
    times = np.arange(len(s)) * slot / 60
    brute = [min(abs(times[q] - times[p]) for q in range(len(s)) if s.stim_index[q] == parent[st])
             for p, st in enumerate(s.stim_index) if parent[st] >= 0]
    assert np.isclose(mean, np.mean(brute)) and np.isclose(low, np.min(brute))
    block_min = len(parent) * slot / 60
    assert mean > 0.4 * block_min  # typically half a block (one repeat) away, far above the minimum


def test_separation_nan_without_perturbed():
    assert np.isnan(separation_minutes(np.array([0, 1, 0, 1]), np.arange(4.0), np.array([-1, -1]))[0])


def test_queue_requeues_invalid_until_all_done():
    parent = np.full(7, -1)
    s = build_schedule(parent, repeats=2, presentations_per_trial=3, seed=0, seconds_per_slot=0.3)
    q = PresentationQueue(s)
    rng = np.random.default_rng(0)
    recorded = []
    trials = 0
    while (t := q.next_trial()) is not None:
        assert len(t.stim_indices) <= 3 and t.trial_index == trials
        assert all(s.stim_index[p] == st for p, st in zip(t.planned_indices, t.stim_indices))
        valid = rng.random(len(t.planned_indices)) < 0.6
        recorded += [p for p, v in zip(t.planned_indices, valid) if v]
        q.complete(valid)
        trials += 1
        assert trials < 200
    assert sorted(recorded) == list(range(len(s)))  # every slot exactly once


def test_queue_resumes_from_done_mask():
    s = build_schedule(np.full(5, -1), 2, 4, 0, 0.3)
    done = np.zeros(len(s), bool)
    done[:6] = True
    q = PresentationQueue(s, done, first_trial_index=9)
    t = q.next_trial()
    assert t.trial_index == 9 and set(t.planned_indices) <= set(range(6, 10))
    assert len(q) == 4


def test_replayed_queue_continues_exactly_like_an_uninterrupted_one():
    s = build_schedule(np.full(9, -1), 3, 4, 0, 0.3)

    def run(queue, rng, n=None):
        trials = []
        while (t := queue.next_trial()) is not None and (n is None or len(trials) < n):
            valid = rng.random(len(t.planned_indices)) < 0.7
            trials.append((t.trial_index, t.planned_indices, valid))
            queue.complete(valid)
        return trials

    full = run(PresentationQueue(s), np.random.default_rng(5))
    rng = np.random.default_rng(5)
    first = run(PresentationQueue(s), rng, n=4)
    q = PresentationQueue.replay(s, [(p, v) for _, p, v in first])
    rest = run(q, rng)
    assert [(i, p) for i, p, _ in first + rest] == [(i, p) for i, p, _ in full]
