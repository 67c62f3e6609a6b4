"""The ``veilnet`` command line, one module per command group (``main`` adds them all).

May import anything in ``node`` (it composes peers through ``node.peer`` and ``node.testnet``)
and ``simulations``. Nothing imports the CLI.
"""
