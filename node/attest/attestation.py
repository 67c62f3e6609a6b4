"""The attest subsystem on a Node: this node's epoch keys and bundle, and the bundle pull protocol.

``Attestation(node, net, source)`` installs the attestation service on the kernel: the
``/veilnet/attest/1.0.0`` handler, the announcer and the on-connect puller, and the node-info
fields. ``source`` is None on a client-only node: it still appraises peers, and announces nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from node.app import Node
from node.attest.evidence_sources import EvidenceSource
from node.attest.service import ATTEST_PROTOCOL_ID, AttestService, EpochKeys, epoch_of
from node.net.network import Network
from protocol.numerics import EngineIdentity

__all__ = ["Attestation"]

log = logging.getLogger("veilnet.attest")


class Attestation:
    """What other subsystems use of attestation: keys, the current bundle, declaring models."""

    def __init__(self, node: Node, net: Network, source: EvidenceSource | None) -> None:
        self.source = source
        self._net = net
        self._epoch_seconds = node.testnet.epoch_seconds
        self.service = AttestService(
            host=net.host,
            identity=node.identity,
            source=source,
            gossip=net.gossip,
            metrics=node.metrics,
            epoch_seconds=node.testnet.epoch_seconds,
            reannounce_seconds=node.config.reannounce_seconds,
            bundle_lifetime_seconds=node.config.bundle_lifetime_seconds,
        )
        net.discovery.add_connect_listener(self.service.on_connected)
        net.add_stream_handler(ATTEST_PROTOCOL_ID, self.service.handle_pull, timeout=10.0)
        node.add_service(self.service.run_puller, "attest puller")
        node.add_service(self.service.run_announcer, "attest announcer")
        node.add_info(self._info)
        if source is not None and source.kind == "simulated":
            log.warning(
                "ATTESTING WITH SIMULATED EVIDENCE — NOT SECURE: no TEE protects this node's keys or jobs "
                "(allowed by testnet %s)",
                node.testnet.testnet_id,
            )

    @property
    def attesting(self) -> bool:
        return self.source is not None

    @property
    def epoch_keys(self) -> EpochKeys:
        return self.service.epoch_keys

    @property
    def bundle(self) -> bytes | None:
        """This node's current bundle, exactly as announced (None before the first one)."""
        return self.service.bundle

    def serve_models(
        self, model_ids: Sequence[str], engines: Mapping[str, EngineIdentity] | None = None
    ) -> None:
        """Declare served models (and the engine computing each): the next bundle lists and binds
        them (re-announced at once) and the DHT provides them. Only an attesting node may serve
        models."""
        if self.source is None:
            raise RuntimeError(
                "this node does not attest, so it cannot serve models (see evidence in the config)"
            )
        models = sorted(set(self.service.models) | set(model_ids))
        self.service.set_models(models, engines)
        for model_id in models:
            self._net.discovery.provide_model(model_id)

    def _info(self) -> dict[str, Any]:
        source = self.source
        current = self.service.epoch_keys.current
        bundle = self.service.bundle
        return {
            "attesting": source is not None,
            "kind": source.kind if source else None,
            "label": source.label if source else None,
            "measurement": source.measurement if source else None,
            "epoch": epoch_of(time.time(), self._epoch_seconds),
            "enc_pubkey": current.public_key.hex() if current else None,
            "models": list(self.service.models),
            "engines": {m: e.describe() for m, e in self.service.engines.items()},
            "bundle_issued_at": self.service.bundle_issued_at,
            "announced_at": self.service.announced_at,
            "bundle_digest": hashlib.sha256(bundle).hexdigest() if bundle else None,
            "self_check_ok": self.service.self_check_ok,
        }
