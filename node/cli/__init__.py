"""The ``veilnet`` command line, one module per command group (``main`` adds them all).

May import anything in ``node`` (it composes peers through ``node.peer`` and ``node.testnet``)
and ``simulations``. Nothing imports the CLI.
"""

import sys

# httpx imports its optional command-line client (click, rich's console, pygments' lexers) at
# import whenever those packages are installed. The CLI never runs it, and it cost every node
# process ~60 ms of CPU at start-up. A ``None`` entry makes that one import fail, and httpx then
# defines its stub ``httpx.main`` instead. Here, so it precedes every import of httpx in the CLI.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
