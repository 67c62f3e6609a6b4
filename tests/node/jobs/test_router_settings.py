"""``[extra]`` keys a node operator sets for the router: read with their types, bad values refused."""

from __future__ import annotations

import math

import pytest

from node.jobs.chat_stream import STALL_S
from node.jobs.router import RouterSettings


def test_unset_keys_keep_their_defaults() -> None:
    settings = RouterSettings.from_extra({})
    assert settings == RouterSettings()
    assert settings.stream_stall_s == STALL_S


def test_keys_are_read_with_their_types() -> None:
    settings = RouterSettings.from_extra(
        {"replicas": 5, "stream_stall_s": 30, "deadline_s": 12.5, "answer_at_majority": False}
    )
    assert (settings.replicas, settings.stream_stall_s, settings.deadline_s) == (5, 30, 12.5)
    assert settings.answer_at_majority is False


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"stream_stall_s": "30"}, "wrong type"),
        ({"replicas": True}, "wrong type"),
        ({"answer_at_majority": 1}, "wrong type"),
        ({"stream_stall_s": 0}, "positive and finite"),
        ({"stream_stall_s": math.nan}, "positive and finite"),
        ({"deadline_s": math.inf}, "positive and finite"),
        ({"commit_timeout_s": -1}, "positive and finite"),
        ({"replicas": 16}, "replicas"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(extra: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        RouterSettings.from_extra(extra)
