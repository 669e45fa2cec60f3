"""What the command modules share: a trigger whose answer was lost is asked for again
with the same idempotency key, so it is found, never made twice."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.cli_common import TRIGGER_ATTEMPTS, request_trigger
from supervisor.errors import StoreUnavailable
from supervisor.store import TriggerRequest
from supervisor.store.memory import MemoryStore


class LosesAnswers(MemoryStore):
    """Writes each trigger, then loses the first `lost` answers (a cut connection after
    the commit)."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost
        self.keys: list[str] = []

    def cron_trigger(self, worker: str, key: str, **kwargs: Any) -> TriggerRequest:
        made = super().cron_trigger(worker, key, **kwargs)
        self.keys.append(key)
        if self.lost:
            self.lost -= 1
            raise StoreUnavailable("connection lost after the commit")
        return made


def test_a_lost_answer_is_asked_again_with_the_same_key_and_finds_the_request() -> None:
    store = LosesAnswers(lost=1)
    made = request_trigger(store, "job", "k-1", reason="now", grace=30.0)  # type: ignore[arg-type]
    assert store.keys == ["k-1", "k-1"]
    assert not made.created  # the first attempt had made it: found, not made twice
    assert made.trigger.key == "k-1" and made.trigger.reason == "now"
    again = store.cron_trigger("job", "k-2", actor_user="u", actor_host="h", reason=None,
                               grace=30.0)
    assert again.trigger.id == made.trigger.id + 1  # no other trigger was made in between


def test_a_database_that_never_answers_fails_after_the_attempts() -> None:
    store = LosesAnswers(lost=TRIGGER_ATTEMPTS)
    with pytest.raises(StoreUnavailable):
        request_trigger(store, "job", "k-1", reason=None, grace=30.0)  # type: ignore[arg-type]
    assert store.keys == ["k-1"] * TRIGGER_ATTEMPTS
