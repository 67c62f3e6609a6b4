"""The composition root: a full Veilnet peer is the kernel plus net, attest, jobs and api.

This is the only module that knows every subsystem; each receives exactly the ones below it.
The order of installation is the order services start in: the host listens first, gossip and
discovery come up, attestation announces, jobs load models, and the HTTP API answers last, so a
node that says it is up can serve what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.api.openai_routes import routes as openai_routes
from node.api.server import Api
from node.app import Node
from node.attest.appraisal import make_appraise
from node.attest.attestation import Attestation
from node.attest.evidence_sources import make_evidence_source
from node.config import NodeConfig, TestnetConfig
from node.jobs import service as jobs_service
from node.jobs.service import JobService
from node.net.network import Network

__all__ = ["Peer", "build_peer"]


@dataclass(frozen=True)
class Peer:
    """One node and its subsystems, wired; ``await peer.node.run()`` runs it."""

    node: Node
    net: Network
    attest: Attestation
    jobs: JobService
    api: Api


def build_peer(config: NodeConfig, testnet: TestnetConfig) -> Peer:
    """Everything the configs describe, installed on a fresh Node (nothing runs yet)."""
    node = Node(config, testnet)
    net = Network(node, make_appraise(testnet))
    attest = Attestation(node, net, make_evidence_source(config, testnet))
    jobs = jobs_service.install(node, net, attest)
    api = Api(node, net.registry, openai_routes(jobs, net.registry))
    return Peer(node, net, attest, jobs, api)
