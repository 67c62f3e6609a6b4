"""The attest room: this node's evidence and bundle, and how it appraises everyone else's.

``evidence_sources`` (simulated or real TEE evidence, and the one bundle builder), ``service``
(epoch keys, announcer, the ``/veilnet/attest/1.0.0`` pull protocol), ``appraisal`` (testnet
policy and the gossip appraiser), ``attestation`` (installs it on a Node), ``tee/`` (collecting
real evidence from the machine). The rules that decide what is genuine live in
``protocol.attestation``.

May import: ``node.net``, the kernel, ``protocol``. Never ``jobs``, ``api`` or ``cli``.
"""
