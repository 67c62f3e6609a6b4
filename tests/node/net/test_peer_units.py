"""Fast in-process tests of the peer's parts: config, identity file, registry, metrics, logging,
epoch keys, the attestation kit, the gossip acceptance rules and the handler wrapper."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from node.attest import appraisal as attest_appraisal
from node.attest import evidence_sources
from node.attest.service import AttestService, EpochKeys
from node.config import (
    ConfigError,
    EvidenceMode,
    NodeConfig,
    TestEvidenceFault,
    TestnetConfig,
    load_node_config,
    load_testnet_config,
)
from node.keyfile import IdentityFileError, load_or_create_identity
from node.logging_setup import configure_logging
from node.metrics import Metrics
from node.net.gossip import Appraisal, AttestationGossip, bundle_digest
from node.net.host import build_host, key_pair_for, wrap_handler
from node.net.registry import Change, Registry, RegistryEntry
from node.testnet import create_testnet
from protocol.attestation.bundle import AttestationBundle
from protocol.identity import Identity

# ------------------------------------------------------------------------------------ helpers


def make_testnet(testnet_id: str = "unit", measurements: list[str] | None = None) -> TestnetConfig:
    seed = os.urandom(32)
    policy = attest_appraisal.testnet_policy_toml(
        measurements or [evidence_sources.own_measurement()],
        platform_public_key=evidence_sources.platform_public_key(seed),
        testnet_id=testnet_id,
    )
    return TestnetConfig(testnet_id=testnet_id, psk=os.urandom(32), policy_toml=policy, platform_seed=seed)


def node_config(tmp_path: Path, **changes: Any) -> NodeConfig:
    base = NodeConfig(
        data_dir=tmp_path / "data", listen=("/ip4/127.0.0.1/tcp/0",), evidence=EvidenceMode.SIMULATED
    )
    return replace(base, **changes)


def entry(
    peer: bytes, *, epoch: int = 1, issued_at: int = 100, expires_at: int = 10_000, **changes: Any
) -> RegistryEntry:
    return replace(
        RegistryEntry(
            peer_id=peer,
            addrs=(),
            kind="simulated",
            label="SIMULATED — not secure",
            measurement="00" * 32,
            models=("m1",),
            epoch=epoch,
            issued_at=issued_at,
            expires_at=expires_at,
            enc_pubkey=b"\x01" * 32,
            verified_at=0.0,
            bundle_digest=f"{issued_at:064x}",
        ),
        **changes,
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------- config


def test_node_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = node_config(
        tmp_path,
        testnet_config=tmp_path / "testnet.toml",
        bootstrap=("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDULC9krJhpwnSpMK8UjURLrKJUQriLN6qDu54Gn77jrX",),
        models=("all-MiniLM-L6-v2",),
        api=None,
        mdns=True,
        extra={"batch": 8},
    )
    path = tmp_path / "node.toml"
    config.save(path)
    assert load_node_config(path) == config


def test_node_config_resolves_relative_paths_against_its_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "node.toml"
    path.parent.mkdir()
    path.write_text('data_dir = "state"\ntestnet_config = "../t.toml"\n')
    config = load_node_config(path)
    assert config.data_dir == path.parent / "state"
    assert config.testnet_config == path.parent / "../t.toml"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('data_dir = "d"\nlisten = ["/ip4/1.2.3.4/udp/9"]\n', "not a TCP address"),
        ('data_dir = "d"\nbootstrap = ["/ip4/1.2.3.4/tcp/9"]\n', "/p2p/"),
        ('data_dir = "d"\nreannounce_seconds = 400\n', "shorter than bundle_lifetime"),
        ('data_dir = "d"\nlisten_addr = "x"\n', "unknown keys"),
        ('data_dir = "d"\napi = "localhost"\n', "HOST:PORT"),
        ('data_dir = "d"\nevidence = "tdx-please"\n', "tdx-please"),
        ('data_dir = "d"\nmdns = "yes"\n', "wrong type"),
        ("listen = [\n", "invalid TOML"),
    ],
)
def test_node_config_errors_name_the_field(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_node_config(path)


def test_testnet_config_is_saved_private_and_round_trips(tmp_path: Path) -> None:
    testnet = make_testnet().with_bootstrap(
        ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDULC9krJhpwnSpMK8UjURLrKJUQriLN6qDu54Gn77jrX"]
    )
    path = tmp_path / "testnet.toml"
    testnet.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_testnet_config(path) == testnet


def test_testnet_config_rejects_a_short_psk(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('testnet_id = "x"\npsk = "abcd"\npolicy = ""\n')
    with pytest.raises(ConfigError, match="psk"):
        load_testnet_config(path)


def test_create_testnet_writes_configs_whose_policy_allows_this_code(tmp_path: Path) -> None:
    layout = create_testnet(tmp_path / "tn", nodes=3, base_port=4100, api_port=8800)
    testnet = load_testnet_config(layout.testnet_path)
    policy = attest_appraisal.load_policy(testnet)
    assert policy.allow_simulated and policy.kind_allowed("simulated")
    assert evidence_sources.own_measurement() in policy.section("simulated")["measurements"]
    configs = [load_node_config(path) for path in layout.node_configs]
    assert [c.listen for c in configs] == [(f"/ip4/127.0.0.1/tcp/{4100 + i}",) for i in range(3)]
    assert [c.api for c in configs] == [f"127.0.0.1:{8800 + i}" for i in range(3)]
    again = create_testnet(tmp_path / "tn", nodes=3)
    assert load_testnet_config(again.testnet_path).psk == testnet.psk, "re-running keeps the network's keys"


# ----------------------------------------------------------------------------- identity file


def test_identity_is_created_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "identity.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_identity(path).peer_id == first.peer_id
    host = build_host(first, os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    assert host.get_id().to_bytes() == first.peer_id
    assert key_pair_for(first).public_key.to_bytes() == first.public_key


def test_a_readable_identity_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    load_or_create_identity(path)
    path.chmod(0o644)
    with pytest.raises(IdentityFileError, match="0600"):
        load_or_create_identity(path)


def test_a_truncated_identity_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(IdentityFileError, match="32 bytes"):
        load_or_create_identity(path)


# ----------------------------------------------------------------------------------- registry


def test_registry_keeps_the_newest_bundle_and_ignores_replays() -> None:
    clock = Clock(1000.0)
    registry = Registry(clock=clock)
    peer = Identity.generate().peer_id
    changes: list[Change] = []
    registry.add_listener(lambda change, _entry: changes.append(change))
    assert registry.upsert(entry(peer, issued_at=100)) is Change.ADDED
    assert registry.upsert(entry(peer, issued_at=100)) is Change.REFRESHED
    assert registry.upsert(entry(peer, issued_at=200)) is Change.UPDATED
    assert registry.upsert(entry(peer, issued_at=150)) is None  # an older bundle never wins
    current = registry.get(peer)
    assert current is not None and current.issued_at == 200
    assert registry.get(current.peer_id_text) == current
    assert changes == [Change.ADDED, Change.REFRESHED, Change.UPDATED]


def test_registry_entries_expire_on_time() -> None:
    clock = Clock(1000.0)
    registry = Registry(clock=clock)
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    registry.upsert(entry(a, expires_at=1010))
    registry.upsert(entry(b, expires_at=2000, models=("m2",)))
    assert {e.peer_id for e in registry.attested()} == {a, b}
    assert [e.peer_id for e in registry.attested("m2")] == [b]
    clock.now = 1010.0
    assert registry.get(a) is None and len(registry) == 1  # invisible the moment it expires
    assert [e.peer_id for e in registry.expire()] == [a]
    assert registry.remove(b, "test") and len(registry) == 0


# ------------------------------------------------------------------------------------ metrics


def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics()
    rejected = metrics.counter("veilnet_x_total", "Things refused", ("reason",))
    rejected.inc(reason="bad_signature")
    rejected.inc(2, reason='quote"d')
    metrics.gauge("veilnet_y", "A gauge", lambda: 3)
    text = metrics.render()
    assert "# TYPE veilnet_x_total counter\n" in text
    assert 'veilnet_x_total{reason="bad_signature"} 1\n' in text
    assert 'veilnet_x_total{reason="quote\\"d"} 2\n' in text
    assert "veilnet_y 3\n" in text
    assert rejected.by("reason") == {"bad_signature": 1.0, 'quote"d': 2.0}
    with pytest.raises(ValueError, match="labels"):
        rejected.inc(peer="x")


# ------------------------------------------------------------------------------------ logging


def test_libp2p_logging_goes_through_our_handler_and_benign_noise_is_demoted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "node.log"
    configure_logging("INFO", log_file)
    try:
        logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: ")
        logging.warning("Error getting transport addresses: 'peer ID not found'")
        logging.getLogger("libp2p.network.swarm").error("a real libp2p problem")
        logging.getLogger("veilnet.test").info("our own line")
        for handler in logging.getLogger().handlers:
            handler.flush()
        text = log_file.read_text()
        assert "a real libp2p problem" in text and "our own line" in text
        assert "Failed to read DHT message" not in text and "transport addresses" not in text
        assert capfd.readouterr().err == "", "nothing reaches stderr when logging to a file"
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger("libp2p").handlers.clear()


# --------------------------------------------------------------------------------- epoch keys


def test_epoch_keys_rotate_and_keep_the_previous_epoch() -> None:
    keys = EpochKeys()
    first = keys.rotate(10)
    assert keys.rotate(10) is first
    second = keys.rotate(11)
    assert second.public_key != first.public_key and len(second.public_key) == 32
    assert keys.for_public_key(first.public_key) is first
    assert keys.for_epoch(11) is second
    keys.rotate(12)
    assert keys.for_public_key(first.public_key) is None, "keys older than the previous epoch are gone"
    assert [k.epoch for k in keys.live()] == [12, 11]


# ----------------------------------------------------------------------------- attestation kit


def _bundle(source: evidence_sources.SimulatedEvidence, identity: Identity, now: int) -> bytes:
    return evidence_sources.build_signed_bundle(
        source, identity, os.urandom(32), epoch=now // 600, issued_at=now, expires_at=now + 300,
        epoch_seconds=600, models=["m1"], addrs=["/ip4/127.0.0.1/tcp/1"],
    )


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (None, None),
        (TestEvidenceFault.FORGED_SIGNATURE, "bad_signature"),
        (TestEvidenceFault.MEASUREMENT_OUTSIDE_POLICY, "measurement_not_allowed"),
        (TestEvidenceFault.WRONG_PLATFORM_KEY, "untrusted_platform"),
    ],
)
def test_simulated_bundles_and_test_faults_are_appraised_as_expected(
    fault: TestEvidenceFault | None, reason: str | None
) -> None:
    testnet = make_testnet()
    builder = evidence_sources.SimulatedEvidence(testnet, fault=fault)
    identity = Identity.generate()
    now = 1_800_000_000
    appraise = attest_appraisal.make_appraise(testnet)
    appraisal = appraise(_bundle(builder, identity, now), identity.peer_id, now)
    if reason is None:
        assert appraisal.ok and appraisal.entry is not None
        assert appraisal.entry.peer_id == identity.peer_id
        assert appraisal.entry.models == ("m1",) and appraisal.entry.simulated
        assert appraisal.entry.measurement == evidence_sources.own_measurement()
    else:
        assert not appraisal.ok and appraisal.reasons == (reason,)


def test_a_bundle_relayed_by_another_sender_is_refused() -> None:
    testnet = make_testnet()
    identity = Identity.generate()
    now = 1_800_000_000
    bundle = _bundle(evidence_sources.SimulatedEvidence(testnet), identity, now)
    appraise = attest_appraisal.make_appraise(testnet)
    assert appraise(bundle, Identity.generate().peer_id, now).reasons == ("wrong_signer",)
    assert appraise(bundle, identity.peer_id, now + 301).reasons == ("expired",)


def test_an_executor_without_evidence_refuses_to_start(tmp_path: Path) -> None:
    strict = make_testnet()
    no_simulation = replace(strict, platform_seed=None)
    make_source = evidence_sources.make_evidence_source
    with pytest.raises(ConfigError, match="refusing to start"):
        make_source(node_config(tmp_path, models=("m",)), no_simulation)
    with pytest.raises(ConfigError, match="must attest"):
        make_source(node_config(tmp_path, models=("m",), evidence=EvidenceMode.NONE), strict)
    with pytest.raises(ConfigError, match="test-only"):
        make_source(
            node_config(
                tmp_path, evidence=EvidenceMode.AUTO, test_evidence_fault=TestEvidenceFault.FORGED_SIGNATURE
            ),
            strict,
        )
    assert make_source(node_config(tmp_path, evidence=EvidenceMode.NONE), strict) is None
    assert isinstance(make_source(node_config(tmp_path), strict), evidence_sources.SimulatedEvidence)


# ------------------------------------------------------------------------ gossip acceptance


async def test_a_refused_new_bundle_costs_the_peer_its_entry_but_a_stale_copy_does_not() -> None:
    registry = Registry()
    verdicts: dict[bytes, Appraisal] = {}
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, lambda b, s, n: verdicts[b], registry, Metrics(), addrs_of=lambda p: ())
    peer = Identity.generate().peer_id
    good = entry(peer, issued_at=int(trio.current_time()) + 1_000, expires_at=2**40)
    verdicts[b"good"] = Appraisal(ok=True, entry=good)
    verdicts[b"stale"] = Appraisal(ok=False, reasons=("expired",), claimed_node=peer, issued_at=1)
    verdicts[b"forged"] = Appraisal(ok=False, reasons=("bad_signature",), claimed_node=peer)
    assert await gossip.accept(b"good", peer, forwarder=peer, source="gossip")
    assert not await gossip.accept(b"stale", peer, forwarder=peer, source="gossip")
    assert registry.get(peer) is not None, "a delayed old copy does not evict the peer"
    assert not await gossip.accept(b"forged", peer, forwarder=peer, source="gossip")
    assert registry.get(peer) is None, "a peer whose new bundle fails loses its entry"
    assert gossip.rejected.by("reason") == {"expired": 1.0, "bad_signature": 1.0}
    assert gossip.rejected_by_peer.total() == 2
    assert gossip.penalty(peer) > 15 and gossip._app_score(ID(peer)) < 0


async def test_a_sync_appraises_only_the_relayed_bundles_the_registry_does_not_hold() -> None:
    registry = Registry()
    appraised: list[bytes] = []
    held, other = Identity.generate().peer_id, Identity.generate().peer_id

    def appraise(bundle: bytes, sender: bytes | None, now: int) -> Appraisal:
        appraised.append(bundle)
        return Appraisal(ok=True, entry=entry(other, expires_at=2**40, bundle_digest=bundle_digest(bundle)))

    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, appraise, registry, Metrics(), addrs_of=lambda p: ())
    registry.upsert(entry(held, expires_at=2**40, bundle_digest=bundle_digest(b"held bundle")))
    await gossip.accept_relayed([b"held bundle", b"new bundle"], forwarder=other, source="sync")
    assert appraised == [b"new bundle"]
    assert gossip.already_held.get(source="sync") == 1 and gossip.accepted.get(source="sync") == 1
    registry.upsert(entry(held, expires_at=1, issued_at=101, bundle_digest=bundle_digest(b"held bundle")))
    await gossip.accept_relayed([b"held bundle"], forwarder=other, source="sync")
    assert appraised[-1] == b"held bundle", "an expired entry's bytes are appraised again"


async def test_a_removed_peer_comes_back_by_its_own_bundle_or_a_newer_one_not_by_a_relayed_copy() -> None:
    """Two survivors of a killed node used to re-admit it from each other's syncs (each sync runs
    just after its own liveness round, while the other still held the bundle), for as long as the
    bundle lived: a relayed copy of the removed bundle must not bring the peer back."""
    registry = Registry()
    dead, relay = Identity.generate().peer_id, Identity.generate().peer_id
    issued = {b"old bundle": 100, b"newer bundle": 200}

    def appraise(bundle: bytes, sender: bytes | None, now: int) -> Appraisal:
        return Appraisal(ok=True, entry=entry(dead, expires_at=2**40, issued_at=issued[bundle],
                                              bundle_digest=bundle_digest(bundle)))

    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, appraise, registry, Metrics(), addrs_of=lambda p: ())
    assert await gossip.accept(b"old bundle", dead, forwarder=dead, source="gossip")
    assert registry.remove(dead, "no answer to a liveness check (disconnected)")
    await gossip.accept_relayed([b"old bundle"], forwarder=relay, source="sync")
    assert registry.get(dead) is None and registry.departed(dead), "a relayed copy brought it back"
    # the peer presents its own bundle (the pull on reconnect): it answered, so it is back
    assert await gossip.accept(b"old bundle", dead, forwarder=dead, source="pull")
    assert registry.get(dead) is not None and not registry.departed(dead)
    # removed again; a relayed bundle newer than the removed one (its next announce) is heard
    assert registry.remove(dead, "no answer to a liveness check (periodic)")
    await gossip.accept_relayed([b"newer bundle"], forwarder=relay, source="sync")
    current = registry.get(dead)
    assert current is not None and current.issued_at == 200


async def test_bundles_queued_behind_a_flood_are_dropped_unappraised_once_their_forwarder_is_banned() -> None:
    appraised: list[bytes] = []

    def refuse(bundle: bytes, sender: bytes | None, now: int) -> Appraisal:
        appraised.append(bundle)
        return Appraisal(ok=False, reasons=("malformed",))

    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, refuse, Registry(), Metrics(), addrs_of=lambda p: ())
    flooder = Identity.generate().peer_id

    async def offer(index: int) -> None:
        await gossip.accept(b"garbage %d" % index, flooder, forwarder=flooder, source="gossip")

    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(offer, index)
    assert gossip.scores.is_banned(flooder)
    dropped = gossip.dropped.get(reason="banned")
    assert len(appraised) + dropped == 20
    assert len(appraised) <= 8 and dropped >= 12  # banned after a handful; two were in the threads


# ----------------------------------------------------------------------------- handler wrapper


class FakeStream:
    """Just enough of INetStream for the wrapper: records close/reset."""

    def __init__(self) -> None:
        self.closed = False
        self.reset_called = False
        self.muxed_conn = type("Conn", (), {"peer_id": ID(Identity.generate().peer_id)})()

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.reset_called = True


async def test_wrap_handler_resets_the_stream_on_any_error_and_closes_it_on_success() -> None:
    errors: list[str] = []

    async def broken(stream: Any) -> None:
        raise ValueError("garbage")

    async def fine(stream: Any) -> None:
        return None

    async def slow(stream: Any) -> None:
        await trio.sleep(10)

    on_error = lambda proto, peer, exc: errors.append(type(exc).__name__)  # noqa: E731
    for handler, expect_reset in ((broken, True), (fine, False), (slow, True)):
        stream = FakeStream()
        await wrap_handler("/x/1", handler, timeout=0.05, on_error=on_error)(stream)  # type: ignore[arg-type]
        assert stream.reset_called is expect_reset and stream.closed is not expect_reset
    assert errors == ["ValueError", "TooSlowError"]


def test_each_epoch_gets_a_fresh_job_key_and_bundles_expire_with_the_next_epoch(tmp_path: Path) -> None:
    testnet = make_testnet()
    identity = Identity.generate()
    host = build_host(identity, testnet.psk, ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(
        host, attest_appraisal.make_appraise(testnet), Registry(), Metrics(), addrs_of=lambda p: ()
    )
    service = AttestService(
        host=host,
        identity=identity,
        source=evidence_sources.SimulatedEvidence(testnet),
        gossip=gossip,
        metrics=Metrics(),
        epoch_seconds=600,
        reannounce_seconds=60,
        bundle_lifetime_seconds=900,
    )
    service.set_models(["m2", "m1", "m1"])
    epoch_start = 1_800_000_000 // 600 * 600
    first = AttestationBundle.from_wire(service.build(epoch_start + 590))
    assert first.models == ("m1", "m2")
    assert first.expires_at == (first.epoch + 2) * 600, "capped by the epoch window, not the 900 s lifetime"
    key = service.epoch_keys.current
    assert key is not None and first.enc_pubkey == key.public_key
    second = AttestationBundle.from_wire(service.build(epoch_start + 600))
    assert second.epoch == first.epoch + 1 and second.enc_pubkey != first.enc_pubkey
    assert service.epoch_keys.previous is key, "the previous epoch's key still opens late jobs"
    assert service.epoch_keys.for_public_key(first.enc_pubkey) is key
    now = epoch_start + 601
    assert attest_appraisal.make_appraise(testnet)(service.build(now), identity.peer_id, now).ok
