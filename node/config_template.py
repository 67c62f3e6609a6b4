"""The commented ``node.toml`` that ``veilnet node config-template`` writes.

Every key of :class:`node.config.NodeConfig` with its default and what it means, so a person can
write a node config without reading the code; docs/CONFIG.md is the reference, and
tests/node/cli/test_cli_boundary.py checks that the template loads and names every field.
"""

from __future__ import annotations

__all__ = ["NODE_CONFIG_TEMPLATE", "node_config_template"]

NODE_CONFIG_TEMPLATE = '''\
# Veilnet node config (node.toml). Start with: veilnet node start --config node.toml
# Every key is optional except data_dir and testnet_config; the values shown are the defaults.
# Relative paths are resolved against this file's directory. Command-line options override keys.
# docs/CONFIG.md describes each key.

# Directory for this node's identity key (identity.key, mode 0600), node-info.json and state.
# One node per data dir: a running node locks it (node.lock names its pid).
data_dir = "{data_dir}"

# The testnet's shared config (secret: PSK and simulated platform key); from `testnet up`.
testnet_config = "testnet.toml"

# libp2p listen multiaddrs (TCP only). Port 0 picks a free port.
listen = ["/ip4/0.0.0.0/tcp/4001"]

# Peers to dial at start: multiaddrs ending in /p2p/<peer id>.
bootstrap = []

# Addresses to advertise instead of the listen addresses (behind NAT).
announce = []

# Local HTTP API (OpenAI-compatible): HOST:PORT or http://HOST:PORT; "off" disables it.
api = "127.0.0.1:8700"

# LAN discovery by mDNS.
mdns = false

# Models this node serves as an executor (needs attestation): embedded names
# (all-MiniLM-L6-v2, SmolLM2-135M-Instruct, veilnet-tiny-random-lm) or local Hugging Face directories
# with safetensors.
models = []

# Attestation evidence: "auto" (a real TEE if present, else simulated when the testnet
# allows it, else none), "simulated" (NOT secure; testnets only) or "none" (client only).
evidence = "auto"

# Seconds between attestation re-announcements; must be shorter than bundle_lifetime_seconds.
reannounce_seconds = 60

# How long peers accept one attestation bundle (30..86400 s).
bundle_lifetime_seconds = 300

# How many peers discovery keeps connected (1..1000).
target_peers = 12

# DEBUG, INFO, WARNING or ERROR; log_file: log there instead of stderr.
log_level = "INFO"
# log_file = "node.log"

# A name for this node in logs and the peer table.
label = ""

# Resource limits, peer scoring and liveness. Every key and its default is in docs/CONFIG.md;
# only keys that differ from the defaults belong here.
[limits]
# connections = 300
# connections_per_peer = 2
# ban_seconds = 300.0

# What computes chat models: "torch" (in-process, the default) or "vllm" (launched and supervised
# by the node with the interpreter in `python`, or attached with `url` and a key). docs/CONFIG.md.
[engine]
# family = "vllm"
# python = ".venv-vllm/bin/python"
# url = "http://127.0.0.1:8000"
# api_key_file = "engine.key"

# Router and executor settings for the jobs subsystem.
[extra]
# replicas = 3
# deadline_s = 30.0
'''


def node_config_template(data_dir: str = "veilnet-data") -> str:
    """A commented node.toml a person can edit (every key, its default and its meaning)."""
    return NODE_CONFIG_TEMPLATE.replace("{data_dir}", data_dir.replace("\\", "\\\\").replace('"', '\\"'))
