"""``testnet up`` honours Ctrl-C during start-up even when the handler's exception is lost.

The SIGINT handler raises :class:`Interrupted` wherever the main thread is. Python drops an
exception raised inside an at-fork hook or a finaliser ("Exception ignored in ..."), and every node
start forks, so a Ctrl-C landing there went unnoticed until every node had come up (a CI run saw
the testnet finish its start-up and miss the 15 s it had). The start-up loop now checks the flag
the handler sets before it raises.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node import testnet
from node.testnet import Interrupted, NodeProcess, TestnetLayout


def test_a_ctrl_c_whose_exception_was_swallowed_still_stops_the_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = tuple(tmp_path / f"node-{i}" / "node.toml" for i in range(3))
    for path in configs:
        path.parent.mkdir()
    layout = TestnetLayout(tmp_path, tmp_path / "testnet.toml", configs)
    started: list[NodeProcess] = []

    def start(index: int, config_path: Path, *_args: Any, **_kwargs: Any) -> NodeProcess:
        # A node that never writes its info file: only the interrupt can end the wait for it.
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        node = NodeProcess(index=index, config_path=config_path, process=process)
        started.append(node)
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, in the main thread...
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # (a call: handlers run before it returns)
        except Interrupted:
            pass  # ...and its exception is lost, as inside the at-fork hook of a real start
        return node

    monkeypatch.setattr(testnet, "start_node_process", start)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a background job
    out = io.StringIO()
    code = testnet.run_testnet(layout, out=out)
    assert code == 130
    assert "SIGINT: stopping the testnet during start-up" in out.getvalue()
    assert len(started) == 1, "no node may start after the interrupt"
    assert all(node.process.poll() is not None for node in started), "every started node is stopped"
    assert signal.getsignal(signal.SIGINT) == before, "the previous handler is back"
