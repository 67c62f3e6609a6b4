"""Jobs, sans-IO: messages and payloads on the wire, the job flow state machine, replay window,
executor selection, the consensus vote and reputation.

May import: other ``protocol`` modules only (no trio, libp2p, torch, nor anything in ``node``).
"""
