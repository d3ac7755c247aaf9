"""The outbox's bookkeeping (no I/O): what stays pending, what becomes a dead letter,
what a later write cancels, and what the read path must not serve."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    DataError,
    MasterDownError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from stratacache._outbox import EPOCH, KEY, LEASE, PATTERN, TAG, WRITE, Op, Outbox, is_transient


def outbox(**options: int) -> Outbox:
    sizes = {"maxsize": 100, "dead_letter_size": 100, **options}
    return Outbox("primary", backoff=0.1, backoff_max=1.0, **sizes)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("Connection refused"),
        TimeoutError("Timeout reading from socket"),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ClusterDownError("The cluster is down"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ReadOnlyError("READONLY You can't write against a read only replica."),
        ResponseError("BUSY Redis is busy running a script."),
        ResponseError("Command # 1 (EVAL ...) of pipeline caused error: LOADING Redis is"),
        OSError("Broken pipe"),
    ],
)
def test_what_goes_away_by_itself_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        NoPermissionError("NOPERM this user has no permissions to run the 'eval' command"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("Command # 2 (EVAL ...) of pipeline caused error: ERR user_script:3"),
        AuthenticationError("invalid username-password pair"),
        DataError("Invalid input of type: 'dict'"),
    ],
)
def test_what_redis_refuses_for_good_is_final(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_transient_failures_stay_pending_with_capped_backoff() -> None:
    box = outbox()
    op = Op(KEY, "k")
    for attempt in range(1, 40):
        assert box.failed(op, "timeout", now=0.0, wall=1.0) is None
        assert len(box) == 1
        assert box.next_due() == pytest.approx(min(1.0, 0.1 * 2 ** (attempt - 1)))
    assert box.dead_letters() == []


def test_a_final_failure_is_a_dead_letter_at_once() -> None:
    box = outbox()
    box.failed(Op(TAG, "t", "why"), "timeout", now=0.0, wall=5.0)
    letter = box.failed(Op(TAG, "t", "why"), "WRONGTYPE", now=1.0, wall=6.0, transient=False)
    assert letter is not None
    assert (letter.kind, letter.target, letter.attempts, letter.first_failed_at) == (
        "tag",
        "t",
        2,
        5.0,
    )
    assert len(box) == 0 and not box.active
    assert box.dead_letters() == [letter]


def test_a_successful_write_cancels_a_pending_write_but_not_an_invalidation() -> None:
    box = outbox()
    box.failed(Op(WRITE, "a"), "timeout", now=0.0, wall=0.0)
    box.failed(Op(KEY, "b"), "timeout", now=0.0, wall=0.0)
    box.write_succeeded(["a", "b"])
    assert [op.target for op in box.take_due(10.0)] == ["b"]
    assert box.blocks("b", ()) and not box.blocks("a", ())


def test_an_op_in_flight_stays_visible_until_done_and_a_newer_one_survives_it() -> None:
    box = outbox()
    first = Op(KEY, "k", "first")
    box.failed(first, "timeout", now=0.0, wall=0.0)
    assert box.take_due(10.0) == [first]
    assert box.blocks("k", ())  # in flight: still pending for the read path
    assert box.take_due(10.0) == []  # not handed out twice
    newer = Op(KEY, "k", "newer")
    box.failed(newer, "timeout", now=0.0, wall=0.0)
    box.done(first)  # the older one landed; the newer one still waits
    assert box.blocks("k", ())
    assert box.take_due(10.0) == [newer]
    box.done(newer)
    assert not box.active and not box.blocks("k", ())
    assert box.applied == 1


def test_a_failed_retry_backs_off_and_redis_answering_makes_everything_due() -> None:
    box = outbox()
    op = Op(PATTERN, "user:*")
    box.failed(op, "timeout", now=0.0, wall=0.0)
    [taken] = box.take_due(10.0)
    box.retry_failed(taken, "timeout", now=10.0, transient=True)
    assert box.next_due() == pytest.approx(10.2)
    box.due_now()
    assert box.take_due(0.0) == [op]


def test_blocks_keys_tags_patterns_and_everything_under_an_owed_epoch() -> None:
    box = outbox()
    assert not box.active and not box.blocks("user:1", ("t",))
    box.failed(Op(TAG, "t"), "timeout", now=0.0, wall=0.0)
    box.failed(Op(PATTERN, "feed:*"), "timeout", now=0.0, wall=0.0)
    box.failed(Op(LEASE, "x", None, b"token"), "timeout", now=0.0, wall=0.0)
    assert box.blocks("user:1", ("a", "t"))
    assert not box.blocks("user:1", ("a",))
    assert box.blocks("feed:9", ())
    assert not box.blocks("x", ())  # a stray lease hides no value
    box.failed(Op(EPOCH, ""), "timeout", now=0.0, wall=0.0)
    assert box.blocks("anything", ())
    assert box.covered_by_epoch() == 3
    assert not box.active and not box.blocks("user:1", ("t",))


def test_a_full_outbox_owes_an_epoch_bump() -> None:
    box = outbox(maxsize=2)
    for key in "abc":
        box.failed(Op(WRITE, key), "timeout", now=0.0, wall=0.0)
    assert len(box) == 2 and box.epoch_owed and box.overflows == 1
    assert box.next_due() == 0.0


def test_close_turns_what_is_pending_into_dead_letters() -> None:
    box = outbox()
    box.failed(Op(KEY, "k", "why"), "timeout", now=0.0, wall=3.0)
    box.failed(Op(LEASE, "k", None, b"t"), "timeout", now=0.0, wall=3.0)
    assert box.give_up() == 1
    assert [(d.kind, d.target, d.reason) for d in box.dead_letters()] == [("key", "k", "why")]
    assert not box.active
