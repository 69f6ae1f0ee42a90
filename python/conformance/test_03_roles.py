"""Each RPC needs its role (docs/operations.md, "Roles"): forged Raft, worker and operator
calls with a client credential are MZ-FORBIDDEN and change nothing; completions are taken
only for the attempt the named node holds."""

import struct
import threading
import time

import grpc

import mozen_harness as h
from mozen_harness import pb, raft_pb2

SC = grpc.StatusCode


def forbidden(fn, path=None):
    d = h.expect_error(fn, SC.PERMISSION_DENIED, "MZ-FORBIDDEN")
    assert d.retry is None, d
    if path:
        assert path in d.message, d
    return d


def forged_vote_payload():
    # Not a valid openraft vote (the suite knows only the .proto): a version-1 envelope with
    # bytes that would read as a huge term. The role check must refuse it before decoding.
    return raft_pb2.RaftPayload(version=1, data=struct.pack("<Q", 2**62) * 4 + b"\x01\xff\xff")


def test_client_cannot_forge_peer_worker_or_operator_calls(main_cluster):
    c = main_cluster
    before = c.leader_term()
    leader = c.leader()
    cl = h.Client(c, "alice")
    for a in c.agents:
        raft = cl.stub(a.addr, "raft")
        forbidden(lambda: raft.Vote(forged_vote_payload(), metadata=cl.md, timeout=5),
                  "/mozen.v1.Raft/Vote")
        forbidden(lambda: raft.AppendEntries(forged_vote_payload(), metadata=cl.md, timeout=5),
                  "/mozen.v1.Raft/AppendEntries")
        forbidden(lambda: raft.InstallSnapshot(forged_vote_payload(), metadata=cl.md, timeout=5))
        forbidden(lambda: list(raft.AppendStream(iter([forged_vote_payload()]), metadata=cl.md,
                                                 timeout=5)))
    key = bytes(32)
    for svc in ("worker", "mozen"):  # MozenWorker and the deprecated names on Mozen
        s = cl.stub(leader.addr, svc)
        prefix = "/mozen.v1.MozenWorker/" if svc == "worker" else "/mozen.v1.Mozen/"
        forbidden(lambda: s.Join(pb.JoinRequest(id=9, name="evil", addr="127.0.0.1:9", slots=64),
                                 metadata=cl.md, timeout=5), prefix + "Join")
        forbidden(lambda: s.Heartbeat(pb.HeartbeatRequest(node_id=leader.id, leaving=True),
                                      metadata=cl.md, timeout=5), prefix + "Heartbeat")
        forbidden(lambda: s.Complete(pb.CompleteRequest(completions=[pb.Completion(
            key=key, node=leader.id, attempt=1, value=b'"forged"')]), metadata=cl.md, timeout=5),
            prefix + "Complete")
        forbidden(lambda: s.Park(pb.ParkRequest(key=key, node=leader.id, attempt=1, parked=True),
                                 metadata=cl.md, timeout=5), prefix + "Park")
        forbidden(lambda: list(s.Work(pb.WorkRequest(node_id=leader.id), metadata=cl.md,
                                      timeout=5)), prefix + "Work")
    m = cl.stub(leader.addr)
    for op in ("remove", "drain", "demote"):
        forbidden(lambda: m.NodeOp(pb.NodeOpRequest(node_id=c.followers()[0].id, op=op),
                                   metadata=cl.md, timeout=5), "/mozen.v1.Mozen/NodeOp")
    forbidden(lambda: m.AddNode(pb.AddNodeRequest(node_id=9, addr="127.0.0.1:9"), metadata=cl.md,
                                timeout=5), "/mozen.v1.Mozen/AddNode")
    # A worker credential cannot reach Raft either; an operator neither.
    for who in ("pool", "ops"):
        w = h.Client(c, who)
        for a in c.agents:
            raft = w.stub(a.addr, "raft")
            d = forbidden(lambda: raft.Vote(forged_vote_payload(), metadata=w.md, timeout=5))
            assert f"'{who}'" in d.message, d
    # Nothing changed: same leader and term, the three nodes still there and active.
    c.assert_stable(before)
    nodes = cl.leader_call("Nodes", pb.NodesRequest()).nodes
    assert sorted(n.id for n in nodes) == [a.id for a in c.agents]
    assert all(n.state == "active" for n in nodes), nodes
    r = cl.call("echo", '"after forgeries"')
    assert r.result_json == '"after forgeries"'
    c.ack(r.key, r.result_json)
    c.assert_acked()


def test_operator_drains_and_undrains(main_cluster):
    c = main_cluster
    before = c.leader_term()
    ops = h.Client(c, "ops")
    target = c.followers()[-1].id

    def state():
        return {n.id: n.state for n in ops.leader_call("Nodes", pb.NodesRequest()).nodes}[target]

    try:
        r = ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=target, op="drain"))
        assert r.message
        h.eventually("node drained", lambda: state() in ("draining", "drained"), limit=15)
        # An unknown op is MZ-BAD-OP, an unknown node MZ-UNKNOWN-NODE.
        h.expect_error(lambda: ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=target,
                                                                          op="explode")),
                       SC.INVALID_ARGUMENT, "MZ-BAD-OP")
        h.expect_error(lambda: ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=99,
                                                                          op="drain")),
                       SC.NOT_FOUND, "MZ-UNKNOWN-NODE")
    finally:
        ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=target, op="undrain"))
    h.eventually("node active again", lambda: state() == "active", limit=15)
    c.assert_stable(before)
    c.assert_acked()


def test_forged_completion_is_refused_and_caller_gets_true_value(main_cluster):
    c = main_cluster
    before = c.leader_term()
    cl = h.Client(c, "alice")
    nonce = time.time_ns() % 1000
    args = str(2500 + nonce)  # a distinct sleep of about 2.5 s: returns null
    sub = cl.submit("sleep", args)
    # The caller: a Call with the same arguments joins the request and waits for its value.
    out = {}

    def caller():
        try:
            out["reply"] = h.Client(c, "bob").call("sleep", args, timeout=60)
        except grpc.RpcError as e:
            out["error"] = h.Details(e)

    t = threading.Thread(target=caller)
    t.start()

    def running():
        tr = cl.leader_call("Tree", pb.TreeRequest(key=sub.key, max_nodes=1))
        ri = tr.entries[0].request
        return ri if ri.state == "running" and ri.HasField("node") else None

    ri = h.eventually("sleep running", running, limit=20)
    node, attempt = ri.node, ri.attempts
    other = next(a.id for a in c.agents if a.id != node)
    key = bytes.fromhex(sub.key)
    pool = h.Client(c, "pool")  # an unbound worker credential
    bound = h.Client(c, "node-7")  # a worker credential bound to node 7
    forged = b'"forged value"'
    for svc in ("worker", "mozen"):
        cases = [
            (pool, other, attempt),  # a node that does not hold the attempt
            (pool, node, attempt + 1),  # an attempt the node does not hold
            (pool, 99, attempt),  # a node that does not exist
            (bound, node, attempt),  # a credential that may not speak for that node
        ]
        for who, n, att in cases:
            comp = pb.Completion(key=key, node=n, attempt=att, value=forged, duration_ms=1)
            forbidden(lambda: who.leader_call("Complete", pb.CompleteRequest(completions=[comp]),
                                              service=svc))
            # A batch with one forged completion among others is refused whole.
            forbidden(lambda: who.leader_call(
                "Complete",
                pb.CompleteRequest(completions=[
                    comp, pb.Completion(key=bytes(32), node=n, attempt=1, value=b"1")]),
                service=svc))
            forbidden(lambda: who.leader_call(
                "Park", pb.ParkRequest(key=key, node=n, attempt=att, parked=False), service=svc))
        # A failure forged the same way is refused as well.
        bad = pb.Completion(key=key, node=other, attempt=attempt,
                            error=pb.TaskError(code="MZ-FUNCTION-FAILED", message="forged"))
        forbidden(lambda: pool.leader_call("Complete", pb.CompleteRequest(completions=[bad]),
                                           service=svc))
    # A node-bound credential naming another node in mozen-node-id is refused too.
    forbidden(lambda: bound.stub(c.leader().addr, "worker").Heartbeat(
        pb.HeartbeatRequest(node_id=7), metadata=bound.md + (("mozen-node-id", str(node)),),
        timeout=5))
    t.join(timeout=60)
    assert not t.is_alive(), "the caller did not get an answer"
    assert "error" not in out, out
    r = out["reply"]
    assert r.key == sub.key
    assert r.state == "done" and r.result_json == "null", f"caller got {r}"
    g = cl.get(sub.key)
    assert g.result_json == "null" and g.node == node, g
    c.ack(sub.key, g.result_json)
    # The refusals are told in an event.
    def refused_event():
        ev = cl.call_at(c.leader().addr, "Events", pb.EventsRequest(limit=200)).events
        return [e for e in ev if "refused" in e.kind]

    h.eventually("refused-completion event", refused_event, limit=10)
    c.assert_stable(before)
    c.assert_acked()
