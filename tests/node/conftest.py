"""Fixtures for multi-node tests: clusters of real node processes on 127.0.0.1.

Clusters are expensive (one Python process per node), so the network tests share one
module-scoped cluster and make each test leave it as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.node.cluster import Cluster

# Re-announce often so gossip (not only the on-connect pull) is exercised within a test's time.
TEST_REANNOUNCE_SECONDS = 4


@pytest.fixture(scope="module")
def cluster5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Five honest nodes; node i > 0 was only given node 0's address. Registries complete on yield."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster5"), 5, reannounce_seconds=TEST_REANNOUNCE_SECONDS)
    try:
        cluster.start()
        cluster.wait_registries_complete(timeout=60)
        yield cluster
    finally:
        cluster.close()
