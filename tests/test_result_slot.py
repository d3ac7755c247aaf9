"""The sync single flight's ``ResultSlot`` (a lock held until the outcome is set): every
waiter gets the outcome, whichever thread and however many; ``settled`` is exact."""

from __future__ import annotations

import threading

import pytest

from stratacache._primitives import ResultSlot


def test_every_waiting_thread_gets_the_value() -> None:
    slot: ResultSlot[int] = ResultSlot()
    results: list[int] = []
    started = threading.Barrier(9)

    def wait() -> None:
        started.wait()
        results.append(slot.wait())

    threads = [threading.Thread(target=wait) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    slot.set_result(7)
    for thread in threads:
        thread.join(10)
    assert results == [7] * 8
    assert slot.wait() == 7  # and any later caller, at once


def test_settled_is_exact_before_and_after() -> None:
    slot: ResultSlot[int] = ResultSlot()
    assert not slot.settled(0)
    assert not slot.settled(0.001)
    slot.set_exception(KeyError("k"))
    assert slot.settled(0)
    assert slot.settled(None)
    with pytest.raises(KeyError):
        slot.outcome()
    with pytest.raises(KeyError):
        slot.wait()


def test_a_second_outcome_does_not_break_the_slot() -> None:
    slot: ResultSlot[int] = ResultSlot()
    slot.set_result(1)
    slot.set_result(2)  # an Event's set is idempotent: so is this
    assert slot.wait() == 2
    assert slot.settled(0)
