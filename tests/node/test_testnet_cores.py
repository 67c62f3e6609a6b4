"""`testnet up` divides the machine's cores among its node processes (torch threads per node)."""

from __future__ import annotations

import os

import pytest

from node.testnet import shared_cores_env


def test_testnet_nodes_share_the_cores_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEILNET_TORCH_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert shared_cores_env(4)["VEILNET_TORCH_THREADS"] == "2"
    assert shared_cores_env(20)["VEILNET_TORCH_THREADS"] == "1"
    monkeypatch.setenv("VEILNET_TORCH_THREADS", "3")
    assert shared_cores_env(4)["VEILNET_TORCH_THREADS"] == "3"
