"""Which link layer a scenario gets on this machine, and why (recorded in ``results.json``).

Rules: no network conditions → plain loopback; hostile peers → loopback (node/adversary attacks
127.0.0.0/8 only); root with network namespaces → namespaces + relay; otherwise loopback + relay,
and anything that needs namespaces (partitions, loss) is refused with the reason.
"""

from __future__ import annotations

from simulations.links import Capabilities, Direct, LinkLayer, LinkUnavailable, detect
from simulations.relay import RelayLinks
from simulations.scenario import Network, Scenario

__all__ = ["choose_links"]


def choose_links(scenario: Scenario, *, force_loopback: bool = False) -> LinkLayer:
    """The link layer for ``scenario`` on this machine; raises LinkUnavailable with the reason when
    the scenario asks for something neither path can do (never a silent no-op)."""
    network: Network = scenario.network
    if not network.shaped:
        return Direct("the scenario asks for no network conditions: plain loopback")
    loopback = Capabilities(False, False, False, False, False, ("--loopback given",))
    if scenario.hostile_peers():
        # node/adversary attacks 127.0.0.0/8 only, so its targets must stay on loopback.
        force_loopback = True
        loopback = Capabilities(False, False, False, False, False,
                                ("hostile peers attack 127.0.0.0/8 only: loopback links",))
    caps = loopback if force_loopback else detect()
    if caps.netns:
        if network.loss and not caps.iptables:
            raise LinkUnavailable(
                f"loss = {network.loss} needs iptables (statistic match), which is not installed;"
                " install it (apt-get install -y iptables) or set loss = 0"
            )
        return RelayLinks(network, caps, namespaces=True, seed=scenario.seed)
    if network.partitions:
        raise LinkUnavailable(
            "partitions need network namespaces (run as root on Linux): on loopback the relay cannot"
            " tell which node dialled. " + "; ".join(caps.notes)
        )
    if network.loss:
        raise LinkUnavailable("loss needs network namespaces and iptables (run as root on Linux)")
    return RelayLinks(network, caps, namespaces=False, seed=scenario.seed)
