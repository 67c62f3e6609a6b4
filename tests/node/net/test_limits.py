"""The resource manager's rules, fed directly (no sockets, a fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, NodeConfig, load_node_config
from node.metrics import Metrics
from node.net.limits import (
    LimitExceeded,
    LimitSettings,
    RateLimiter,
    Resource,
    ResourceManager,
    Scope,
)

PEER_A = b"\x00\x24" + b"a" * 36
PEER_B = b"\x00\x24" + b"b" * 36


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(**overrides: object) -> tuple[ResourceManager, Metrics, FakeClock]:
    metrics = Metrics()
    clock = FakeClock()
    return ResourceManager(LimitSettings(**overrides), metrics, clock), metrics, clock  # type: ignore[arg-type]


def test_connections_per_peer_are_refused_over_the_limit_and_returned_on_release() -> None:
    rm, metrics, _ = manager(connections_per_peer=2)
    first = rm.open_connection(PEER_A, "10.0.0.1")
    second = rm.open_connection(PEER_A, "10.0.0.2")
    with pytest.raises(LimitExceeded) as refused:
        rm.open_connection(PEER_A, "10.0.0.3")
    assert refused.value.scope is Scope.PEER
    assert (refused.value.current, refused.value.attempted, refused.value.limit) == (2, 1, 2)
    assert "connections limit 2" in str(refused.value)
    assert 'veilnet_limit_hits_total{scope="peer",resource="connections"} 1' in metrics.render()
    rm.open_connection(PEER_B, "10.0.0.3").release()  # another peer is unaffected
    first.release()
    first.release()  # idempotent
    third = rm.open_connection(PEER_A, "10.0.0.3")
    assert rm.usage(Scope.PEER, PEER_A, Resource.CONNECTIONS) == 2
    second.release()
    third.release()
    assert rm.scopes_in_use() == 0  # nothing left behind by churn


def test_a_refused_reservation_changes_no_count() -> None:
    rm, _, _ = manager(connections_per_ip=1)
    held = rm.open_connection(PEER_A, "10.0.0.1")
    with pytest.raises(LimitExceeded) as refused:
        rm.open_connection(PEER_B, "10.0.0.1")
    assert refused.value.scope is Scope.SYSTEM and "10.0.0.1" in str(refused.value)
    assert rm.usage(Scope.PEER, PEER_B, Resource.CONNECTIONS) == 0
    assert rm.usage(Scope.SYSTEM, None, Resource.CONNECTIONS) == 1
    held.release()


def test_a_transient_connection_moves_to_its_peer_once_known() -> None:
    rm, _, _ = manager(connections_per_peer=1)
    known = rm.open_connection(PEER_A, None)
    pending = rm.open_connection(None, "10.0.0.9")
    assert rm.usage(Scope.TRANSIENT, None, Resource.CONNECTIONS) == 1
    with pytest.raises(LimitExceeded):
        pending.set_peer(PEER_A)
    assert pending.peer is None and rm.usage(Scope.TRANSIENT, None, Resource.CONNECTIONS) == 1
    known.release()
    pending.set_peer(PEER_A)
    assert rm.usage(Scope.TRANSIENT, None, Resource.CONNECTIONS) == 0
    assert rm.usage(Scope.PEER, PEER_A, Resource.CONNECTIONS) == 1
    pending.release()
    assert rm.scopes_in_use() == 0


def test_inbound_streams_are_limited_per_peer_and_per_protocol() -> None:
    rm, metrics, _ = manager(inbound_streams_per_peer=3, inbound_streams_per_peer_protocol=2)
    held = []
    for _ in range(2):
        stream = rm.open_stream(PEER_A)
        stream.set_protocol("/meshsub/1.2.0")
        held.append(stream)
    third = rm.open_stream(PEER_A)
    with pytest.raises(LimitExceeded) as refused:
        third.set_protocol("/meshsub/1.2.0")
    assert refused.value.scope is Scope.PROTOCOL
    third.set_protocol("/ipfs/kad/1.0.0")  # another protocol of the same peer still fits
    with pytest.raises(LimitExceeded) as refused:
        rm.open_stream(PEER_A)
    assert refused.value.scope is Scope.PEER
    assert 'veilnet_limit_hits_total{scope="protocol",resource="inbound_streams"} 1' in metrics.render()
    for stream in [*held, third]:
        stream.release()
    assert rm.scopes_in_use() == 0


def test_memory_is_charged_to_stream_connection_peer_and_system_at_once() -> None:
    rm, _, _ = manager(memory_per_stream=100, memory_per_peer=150, memory_per_connection=1000)
    conn = rm.open_connection(PEER_A, "10.0.0.1")
    one = rm.open_stream(PEER_A, conn)
    two = rm.open_stream(PEER_A, conn)
    one.reserve_memory(100)
    with pytest.raises(LimitExceeded) as refused:
        one.reserve_memory(1)
    assert refused.value.scope is Scope.STREAM
    with pytest.raises(LimitExceeded) as refused:
        two.reserve_memory(51)
    assert refused.value.scope is Scope.PEER
    two.reserve_memory(50)
    assert rm.usage(Scope.SYSTEM, None, Resource.MEMORY) == 150
    assert rm.usage(*conn.key, Resource.MEMORY) == 150
    one.release_memory(40)
    assert rm.usage(Scope.PEER, PEER_A, Resource.MEMORY) == 110
    one.release()  # gives back what it still holds (60) and its stream slot
    two.release()
    conn.release()
    assert rm.scopes_in_use() == 0


def test_rates_refill_with_the_clock_and_count_hits() -> None:
    rm, metrics, clock = manager(challenges_per_second=1.0, challenge_burst=3)
    assert [rm.allow("challenge", PEER_A) for _ in range(4)] == [True, True, True, False]
    assert rm.allow("challenge", PEER_B)  # buckets are per peer
    clock.now += 1.0
    assert rm.allow("challenge", PEER_A)
    assert not rm.allow("challenge", PEER_A)
    assert 'veilnet_limit_hits_total{scope="peer",resource="challenge_rate"} 2' in metrics.render()


def test_rate_buckets_are_bounded_in_number() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1.0, clock=clock, max_keys=100)
    for index in range(1000):
        limiter.allow(index)
    assert len(limiter) == 100


def test_dht_record_slots_are_counted_per_peer() -> None:
    rm, _, _ = manager(dht_records_per_peer=2, dht_records=3)
    slots = [rm.reserve_dht_record(PEER_A), rm.reserve_dht_record(PEER_A)]
    with pytest.raises(LimitExceeded):
        rm.reserve_dht_record(PEER_A)
    slots.append(rm.reserve_dht_record(PEER_B))
    with pytest.raises(LimitExceeded) as refused:
        rm.reserve_dht_record(PEER_B)
    assert refused.value.scope is Scope.SYSTEM
    for slot in slots:
        slot.release()
    assert rm.scopes_in_use() == 0


def test_settings_parse_typed_tables_and_refuse_nonsense() -> None:
    parsed = LimitSettings.from_mapping({"connections_per_ip": 8, "challenges_per_second": 0.5})
    assert parsed.connections_per_ip == 8 and parsed.challenges_per_second == 0.5
    assert parsed.to_mapping() == {"connections_per_ip": 8, "challenges_per_second": 0.5}
    with pytest.raises(ValueError, match="unknown key"):
        LimitSettings.from_mapping({"connexions": 3})
    with pytest.raises(ValueError, match="integer"):
        LimitSettings.from_mapping({"connections": 2.5})
    with pytest.raises(ValueError, match="positive"):
        LimitSettings(connections_per_peer=0)
    with pytest.raises(ValueError, match="negative"):
        LimitSettings(graylist_score=5.0)


def test_the_node_config_carries_a_typed_limits_table(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'data_dir = "data"\n\n[limits]\nconnections_per_ip = 4\nban_seconds = 30.0\n', encoding="utf-8"
    )
    config = load_node_config(path)
    assert config.limits.connections_per_ip == 4 and config.limits.ban_seconds == 30.0
    assert config.limits.connections_per_peer == LimitSettings().connections_per_peer
    config.save(path)
    assert load_node_config(path).limits == config.limits
    path.write_text('data_dir = "data"\n\n[limits]\nconnections = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="connections must be an integer"):
        load_node_config(path)
    assert NodeConfig(data_dir=tmp_path).limits == LimitSettings()
