"""Idle TCP connections that never send the HTTP/2 preface and HTTP/2 streams that never send
a body, against agents started with --max-client-connections 24: the leader and term stay,
channels opened before keep working, connections past the cap are closed at once, the agent
closes preface-less ones after about 10 s, and a fresh client then calls again."""

import socket
import threading
import time

import grpc

import mozen_harness as h
from mozen_harness import pb

CAP = 24
RAW = 60  # preface-less TCP connections opened at the leader
SILENT_STREAMS = 40  # Calls streams that never send a message


def closed_by_peer(s):
    """True when the agent closed this socket (EOF or reset); False while it is open."""
    s.setblocking(False)
    try:
        data = s.recv(4096)
        return data == b""  # an agent never sends anything before the client's preface
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_connections_and_silent_streams(conns_cluster):
    c = conns_cluster
    before = c.leader_term()
    leader = c.leader()
    # Channels opened (and used) before the flood of idle connections.
    keep = h.Client(c, "alice", own_channels=True)
    r = keep.call_at(leader.addr, "Call", pb.CallRequest(function="echo", args_json='"before"'))
    assert r.result_json == '"before"'
    c.ack(r.key, r.result_json)
    for f in c.followers():
        keep.call_at(f.addr, "Status", pb.StatusRequest())

    # HTTP/2 streams that never send their message: bidi Calls whose request iterator blocks.
    release = threading.Event()

    def never():
        release.wait(120)
        return
        yield  # a generator that yields nothing

    silent_ch = h.channel(leader.addr)
    calls = h.pbg.MozenStub(silent_ch).Calls
    streams = [calls(never(), metadata=keep.md, timeout=120) for _ in range(SILENT_STREAMS)]

    raw = []
    try:
        host, port = leader.addr.rsplit(":", 1)
        for _ in range(RAW):
            try:
                raw.append(socket.create_connection((host, int(port)), timeout=2))
            except OSError:
                pass  # refused outright is fine too
        # Connections past the cap are closed at once.
        def cap_enforced():
            closed = sum(closed_by_peer(s) for s in raw) + (RAW - len(raw))
            return closed >= RAW - CAP

        h.eventually("connections past the cap closed", cap_enforced, limit=10)
        # Meanwhile: the leader stays, the channels opened before work, on every agent.
        for i in range(5):
            r = keep.call_at(leader.addr, "Call",
                             pb.CallRequest(function="echo", args_json=f'"during {i}"'))
            assert r.result_json == f'"during {i}"', r
            c.ack(r.key, r.result_json)
        c.assert_stable(before)
        # The silent streams are still open (not failed) and the agent still serves.
        assert not any(s.done() for s in streams), [s.code() for s in streams if s.done()][:3]
        # Preface-less connections are closed by the agent after about 10 s.
        h.eventually("preface-less connections closed by the agent",
                     lambda: all(closed_by_peer(s) for s in raw), limit=25, interval=0.5)
    finally:
        for s in raw:
            s.close()
    # A fresh client connects and calls (its own new connection).
    fresh = h.Client(c, "bob", own_channels=True)

    def fresh_call():
        r = fresh.call_at(leader.addr, "Call",
                          pb.CallRequest(function="echo", args_json='"fresh"'), timeout=5)
        return r if r.result_json == '"fresh"' else None

    r = h.eventually("a fresh client calls", fresh_call, limit=15)
    c.ack(r.key, r.result_json)
    # The silent streams end cleanly once their client gives up.
    release.set()
    for s in streams:
        s.cancel()
    silent_ch.close()
    r = keep.call_at(leader.addr, "Call", pb.CallRequest(function="echo", args_json='"after"'))
    assert r.result_json == '"after"'
    c.ack(r.key, r.result_json)
    keep.close()
    fresh.close()
    c.assert_stable(before)
    c.assert_acked()
