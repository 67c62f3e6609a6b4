"""Scenario files: every shipped one parses; bad ones are refused with the line and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.runner import SCENARIO_DIR
from simulations.scenario import Behaviour, ScenarioError, known_attacks, load_scenario, parse_scenario

MINIMAL = """\
name = "t"

[nodes]
count = 4

[workload]
duration_s = 10
concurrency = 1
"""


def _error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="t.toml")
    return info.value


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_parses(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.nodes.count >= scenario.workload.replicas


def test_the_six_scenarios_of_the_issue_are_shipped() -> None:
    names = {p.stem for p in SCENARIO_DIR.glob("*.toml")}
    assert {"smoke", "byzantine", "churn", "partition", "hostile", "forged"} <= names


def test_a_minimal_scenario_gets_defaults() -> None:
    scenario = parse_scenario(MINIMAL)
    assert scenario.workload.replicas == 3
    assert scenario.workload.mode == "consensus"
    assert scenario.adversaries == ()
    assert not scenario.network.shaped


def test_unknown_key_in_a_table_names_its_line() -> None:
    error = _error(MINIMAL.replace("count = 4\n", "count = 4\ncolour = 'red'\n"))
    assert error.line == 5
    assert error.key == "nodes.colour"
    assert "unknown key" in str(error) and "t.toml:5" in str(error)


def test_unknown_top_level_key_names_its_line() -> None:
    error = _error("speed = 3\n" + MINIMAL)
    assert (error.line, error.key, error.reason) == (1, "speed", "unknown key")


def test_bad_value_in_the_second_array_table_points_at_that_table() -> None:
    text = MINIMAL.replace("count = 4", "count = 10") + (
        "\n[[adversaries]]\nbehaviour = 'slow'\ncount = 1\n"
        "\n[[adversaries]]\nbehaviour = 'lying'\ncount = 1\n"
    )
    error = _error(text)
    assert error.key == "adversaries[1].behaviour"
    assert error.line == text.splitlines().index("behaviour = 'lying'") + 1
    assert "must be one of" in error.reason


def test_wrong_type_and_range_are_refused_with_reasons() -> None:
    assert "must be an integer" in _error(MINIMAL.replace("count = 4", "count = 'four'")).reason
    out_of_range = _error(MINIMAL.replace("duration_s = 10", "duration_s = -1"))
    assert out_of_range.line == 7 and "must be in" in out_of_range.reason


def test_rate_and_concurrency_are_exclusive() -> None:
    error = _error(MINIMAL.replace("concurrency = 1", "concurrency = 1\nrate_per_s = 2.0"))
    assert "exactly one of concurrency" in error.reason


def test_more_adversaries_than_executors_is_refused() -> None:
    text = MINIMAL + "\n[[adversaries]]\nbehaviour = 'wrong-output'\ncount = 4\n"
    assert "do not fit" in _error(text).reason


def test_garbage_and_flood_adversaries_become_hostile_peers_not_nodes() -> None:
    text = MINIMAL + "\n[[adversaries]]\nbehaviour = 'flood'\ncount = 2\n"
    text += "\n[[adversaries]]\nbehaviour = 'garbage'\ncount = 1\n"
    scenario = parse_scenario(text)
    assert scenario.adversary_count == 0  # no node misbehaves: the attackers are extra peers
    peers = scenario.hostile_peers()
    assert len(peers) == 3 and all(p.repeat and not p.targets for p in peers)
    assert set(peers[0].attacks) <= known_attacks()  # type: ignore[operator]


def test_hostile_peer_behaviours_without_the_module_are_refused_by_name(monkeypatch) -> None:
    import simulations.scenario as scenario_module

    monkeypatch.setattr(scenario_module, "known_attacks", lambda: None)
    for behaviour in (Behaviour.FLOOD, Behaviour.GARBAGE):
        text = MINIMAL + f"\n[[adversaries]]\nbehaviour = '{behaviour.value}'\ncount = 1\n"
        error = _error(text)
        assert "not available in this build" in error.reason
        assert error.line == text.splitlines().index(f"behaviour = '{behaviour.value}'") + 1


def test_attacks_are_checked_against_the_adversary_module() -> None:
    text = MINIMAL + "\n[[attacks]]\nattack = ['gossip-replay', 'no-such-attack']\ntargets = [1]\n"
    error = _error(text)
    assert error.key == "attacks[0].attack" and "unknown attack 'no-such-attack'" in error.reason
    assert error.line == len(MINIMAL.splitlines()) + 3
    good = parse_scenario(MINIMAL + "\n[[attacks]]\nattack = 'gossip-replay'\nat_s = 3\nrepeat = true\n")
    assert good.hostile_peers()[0].attacks == ("gossip-replay",) and good.hostile_peers()[0].at_s == 3


def test_partition_groups_must_cover_every_node_once() -> None:
    base = MINIMAL + "\n[network]\ndelay_ms = 5\n\n[[network.partitions]]\nat_s = 2\nheal_s = 5\n"
    missing = _error(base + "groups = [[0, 1], [2]]\n")
    assert "nodes [3] are in no group" in missing.reason
    assert missing.line == len(base.splitlines()) + 1
    assert "appears in two groups" in _error(base + "groups = [[0, 1], [1, 2, 3]]\n").reason
    early = base.replace("heal_s = 5", "heal_s = 1") + "groups = [[0, 1], [2, 3]]\n"
    assert "must be after at_s" in _error(early).reason


def test_chat_mix_needs_the_chat_model() -> None:
    text = MINIMAL.replace("concurrency = 1", "concurrency = 1\nmix = {embeddings = 1, chat = 1}")
    error = _error(text)
    assert "chat jobs need" in error.reason and error.line == 9


def test_invalid_toml_reports_the_parser_line() -> None:
    error = _error(MINIMAL + "oops = \n")
    assert error.line == 9 and "invalid TOML" in error.reason


def test_jitter_cannot_exceed_delay() -> None:
    error = _error(MINIMAL + "\n[network]\ndelay_ms = 5\njitter_ms = 10\n")
    assert error.key == "network.jitter_ms" and error.line == 12
