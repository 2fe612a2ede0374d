"""
The circuit breaker of a route, on a fake clock: its states, its probes and their delays, and
its liveness whatever the order of events (a trial taken and given back, reported late, lost,
a probe that hangs, a stop in the middle), over many random orders.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from couchgw.gateway.breaker import Breaker, Trial
from couchgw.targets.interfaces import PROBE_TIMEOUT, Outage


def breaker(clock: Clock, **options: Any) -> tuple[Breaker, list[str]]:
    changes: list[str] = []
    options.setdefault("uniform", lambda low, high: high)
    made = Breaker(clock, "erp", on_change=lambda: changes.append(made.state), **options)
    return made, changes


def test_outages_in_a_row_open_it_and_a_trial_call_closes_it() -> None:
    clock = Clock()
    b, changes = breaker(clock, backoff_max=300.0)
    assert not b.failed("reset")  # the first after a success: the message's own
    b.succeeded()
    assert not b.failed("reset")
    assert b.failed("reset")  # the second in a row: the route's
    assert (b.state, b.open_to_calls, b.reason, b.opened) == ("open", False, "reset", 1)
    assert b.take_trial() is None
    clock.advance(1.0)  # out for no time yet: a second at least
    assert (b.state, b.open_to_calls) == ("trial", True)
    trial = b.take_trial()
    assert trial is not None and b.take_trial() is None  # one trial at a time
    assert not b.open_to_calls
    trial.give_back()  # not made: another call may be it
    again = b.take_trial()
    assert again is not None
    assert b.failed("reset", trial=again)  # the trial failed: open again
    assert b.state == "open"
    clock.advance(1.0)
    third = b.take_trial()
    assert third is not None
    b.succeeded(third)
    assert (b.state, b.open_to_calls, b.reason, b.opened) == ("closed", True, None, 1)
    assert changes == ["open", "trial", "trial", "open", "trial", "closed"]
    assert b.probes == {("call", "failed"): 1, ("call", "answered"): 1}
    assert Breaker(clock, "crm").failed("refused", unreachable=True)


def test_while_out_only_the_trial_says_something_new() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    b.failed("reset", unreachable=True)
    clock.advance(1.0)
    trial = b.take_trial()
    assert trial is not None
    assert b.failed("a call made before it went out")  # the route's, but no news
    assert b.state == "trial" and b.take_trial() is None
    b.succeeded()  # any answer says the target is back
    assert b.closed
    trial.give_back()  # late, and harmless
    assert b.closed and b.take_trial() is None


def test_a_trial_not_reported_within_its_deadline_is_freed() -> None:
    clock = Clock()
    b, changes = breaker(clock, deadline=70.0)
    b.failed("reset", unreachable=True)
    clock.advance(1.0)
    lost = b.take_trial()
    assert lost is not None
    clock.advance(69.9)
    assert b.take_trial() is None
    clock.advance(0.1)
    assert b.last_probe is not None and b.last_probe["result"] == "lost"
    second = b.take_trial()
    assert second is not None
    assert b.failed("reset", trial=lost)  # the lost one's failure, late: no news
    assert b.state == "trial"
    b.failed("reset", trial=second)
    assert b.state == "open"
    assert changes == ["open", "trial", "trial", "open"]


def test_the_delay_is_a_share_of_the_time_out_capped() -> None:
    clock = Clock()
    b, _ = breaker(clock, backoff_max=60.0)
    b.failed("reset", unreachable=True)
    probes = []
    while clock.seconds() < 3600:
        assert b.next_probe_at is not None
        clock.advance(b.next_probe_at - clock.seconds())
        probes.append(clock.seconds())
        trial = b.take_trial()
        assert trial is not None
        b.failed("reset", trial=trial)
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    assert gaps[0] == 1.0  # at least a second
    # found back within a quarter of the outage (the share drawn at its highest here)
    assert all(gap <= max(1.0, 0.25 * at) + 1e-9 for gap, at in zip(gaps, probes, strict=False))
    assert max(gaps) == 60.0 and gaps[-1] == 60.0  # a long outage: one probe per backoff_max
    assert len(probes) < 100


def test_the_targets_own_probe_comes_before_a_trial() -> None:
    clock = Clock()
    answers: list[Deferred[None]] = []

    def probe() -> Deferred[None]:
        answers.append(Deferred())
        return answers[-1]

    b, changes = breaker(clock, probe=probe)
    b.failed("refused", unreachable=True)
    clock.advance(1.0)
    assert b.state == "probing" and b.take_trial() is None
    answers[-1].errback(Outage("refused"))
    assert b.state == "open" and b.last_probe is not None
    assert b.last_probe["how"] == "request" and b.last_probe["result"].startswith("failed")
    clock.advance(b.next_probe_at - clock.seconds() if b.next_probe_at else 0)
    assert b.state == "probing"
    clock.advance(PROBE_TIMEOUT)  # it hangs: its timeout fails it
    assert b.state == "open"
    clock.advance(b.next_probe_at - clock.seconds() if b.next_probe_at else 0)
    answers[-1].callback(None)
    assert b.state == "trial"
    trial = b.take_trial()
    assert trial is not None
    b.succeeded(trial)
    assert changes == ["open", "trial", "closed"]
    assert b.probes == {
        ("request", "failed"): 2,
        ("request", "answered"): 1,
        ("call", "answered"): 1,
    }


def test_a_stop_ends_the_probes_and_a_start_begins_them_again() -> None:
    clock = Clock()
    pending: list[Deferred[None]] = []

    def probe() -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    b, _ = breaker(clock, probe=probe)
    b.failed("refused", unreachable=True)
    clock.advance(1.0)
    assert b.state == "probing"
    b.stop()
    assert clock.getDelayedCalls() == [] and pending[-1].called  # cancelled
    b.start()
    assert b.state == "open" and len(clock.getDelayedCalls()) == 1
    clock.advance(60.0)
    assert b.state == "probing"


def test_any_order_of_events_probes_again_and_closes_once_the_target_answers() -> None:
    """
    Random orders of every event a breaker meets; after each, the route must be on its way to
    a probe (a timer, a probe under way, a trial free or taken with its deadline), and once
    the target answers, calls that take the trials close it within the time the delays allow.
    """
    for seed in range(2000):
        rng = random.Random(seed)
        clock = Clock()
        target = {"up": False}

        def probe(rng: random.Random = rng, target: dict[str, bool] = target) -> Deferred[None]:
            if target["up"]:
                return succeed(None)
            choice = rng.random()
            if choice < 0.4:
                return fail(Outage("refused"))
            return Deferred()  # hangs: its timeout fails it

        b = Breaker(
            clock,
            "r",
            backoff_max=rng.choice([0.2, 5.0, 60.0]),
            deadline=rng.choice([3.0, 30.0]),
            probe=probe if rng.random() < 0.5 else None,
            uniform=rng.uniform,
        )
        trials: list[Trial] = []
        stopped = False
        for _ in range(rng.randrange(5, 60)):
            event = rng.randrange(9)
            if event == 0:
                b.failed("reset", unreachable=rng.random() < 0.5)
            elif event == 1:
                trial = b.take_trial()
                if trial is not None:
                    trials.append(trial)
            elif event == 2 and trials:
                trials.pop(rng.randrange(len(trials))).give_back()
            elif event == 3 and trials:
                b.failed("reset", trial=trials.pop(rng.randrange(len(trials))))
            elif event == 4:
                clock.advance(rng.uniform(0, 40))
            elif event == 5 and not stopped:
                b.stop()
                stopped = True
            elif event == 6 and stopped:
                b.start()
                stopped = False
            elif event == 7:
                b.failed("a call made before", trial=None)
            elif event == 8 and trials:
                trials.pop().give_back()
            if not stopped:
                _assert_on_its_way(b)
        if stopped:
            b.start()
        target["up"] = True
        horizon = clock.seconds() + b.backoff_max + b.deadline + PROBE_TIMEOUT + 1
        while not b.closed and clock.seconds() < horizon:
            trial = b.take_trial()
            if trial is not None:
                b.succeeded(trial)
                break
            clock.advance(0.05)
        assert b.closed, f"seed {seed}: still {b.state} at {clock.seconds()}"


def _assert_on_its_way(b: Breaker) -> None:
    if b.state == "closed":
        return
    timer = b._timer is not None and b._timer.active()
    if b.state == "open":
        assert timer, "open without a probe to come"
    elif b.state == "probing":
        assert b._probing is not None, "probing without a probe under way"
    else:
        assert b._trial is None or timer, "a trial taken without a deadline"
