"""The jobs room: confidential inference jobs. The router sends a user's job to k attested
executors and votes on the answers; the executor admits, computes and commits; ``frames`` is the
job-stream framing; ``faults`` are test-only misbehaviours; ``service`` wires them onto a Node.
The decisions (job flow, consensus, selection, reputation) are in ``protocol.jobs``.

May import: ``node.attest``, ``node.net``, the kernel (``node.runtime`` included), ``protocol``.
Never ``api`` or ``cli``.
"""
