"""The api room: the node's local HTTP API (hypercorn on trio) and its OpenAI-compatible routes.
Thin: HTTP in, one router call, HTTP out.

May import: ``node.jobs``, ``node.attest``, ``node.net``, the kernel, ``protocol``. Never ``cli``.
"""
