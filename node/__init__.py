"""The running Veilnet peer: the thin I/O shell over ``protocol/``.

Rooms, lowest first; a room may import the ones below it and nothing above
(``tests/test_architecture.py`` keeps it so):

=============  ===================================================================================
``app``        the Node kernel: nursery tree, supervised services, hooks (plus ``config``,
               ``metrics``, ``keyfile``, ``logging_setup``, ``console``, and ``runtime/``: models)
``net/``       libp2p host, PSK, discovery, attestation gossip, the attested-peer registry
``attest/``    evidence sources, the one bundle builder, epoch keys, appraisal glue, ``tee/``
``jobs/``      the router, executor, job frames and faults
``api/``       the local HTTP API and its OpenAI-compatible routes
``peer``       the composition root (kernel + net + attest + jobs + api); ``testnet``, ``demo``
``cli/``       the ``veilnet`` command; nothing imports it
=============  ===================================================================================
"""
