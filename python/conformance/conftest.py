"""Clusters shared by the conformance tests. Test files run in name order and each names the
cluster configuration it needs; only one cluster runs at a time (starting one stops the
previous), so the 2-core machine runs three agents at most."""

import shutil
import tempfile

import pytest

import mozen_harness as h

CONFIGS = {
    # 3 voters with the default limits.
    "main": [],
    # Small message and value limits, so that values at the bounds stay cheap.
    "limits": ["--max-message", "1MiB", "--max-args", "1MiB", "--max-result", "1MiB"],
    # A small queue bound (per-client quotas are added when the binary has them).
    "flood": ["--max-queue", "500"],
    # Few connections.
    "conns": ["--max-client-connections", "24"],
}

PER_CLIENT_QUEUE = 100


def flood_extra():
    extra = list(CONFIGS["flood"])
    if h.has_flag("--max-queue-per-client"):
        extra += ["--max-queue-per-client", str(PER_CLIENT_QUEUE)]
    return extra


class Pool:
    def __init__(self, creds):
        self.creds = creds
        self.current = None  # (name, Cluster)
        h.kill_on_signal(self.clusters)

    def clusters(self):
        return [self.current[1]] if self.current else []

    def get(self, name):
        if self.current and self.current[0] == name:
            c = self.current[1]
            if all(a.alive() for a in c.agents):
                return c
        self.close()
        extra = flood_extra() if name == "flood" else CONFIGS[name]
        c = h.Cluster(self.creds, n=3, extra=extra, name=name).start()
        self.current = (name, c)
        return c

    def close(self):
        if self.current:
            self.current[1].stop()
            self.current = None


@pytest.fixture(scope="session")
def creds():
    root = tempfile.mkdtemp(prefix="mozen-conf-creds-")
    yield h.Credentials(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pool(creds):
    p = Pool(creds)
    yield p
    p.close()


@pytest.fixture
def main_cluster(pool):
    return pool.get("main")


@pytest.fixture
def limits_cluster(pool):
    return pool.get("limits")


@pytest.fixture
def flood_cluster(pool):
    return pool.get("flood")


@pytest.fixture
def conns_cluster(pool):
    return pool.get("conns")
