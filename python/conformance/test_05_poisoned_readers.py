"""Huge arguments and long failure messages must not poison later reads: Events, Queue,
Watch, Functions, Tree and Get still answer within the message limit (1 MiB here), and the
paged reads walk everything once, in order."""

import time

import grpc

import mozen_harness as h
from mozen_harness import pb

MIB = 1 << 20
LIMIT = MIB  # --max-message of the limits cluster


def size(msg):
    n = len(msg.SerializeToString())
    assert n < LIMIT, f"{type(msg).__name__} of {n} bytes, over the message limit"
    return n


def test_reads_after_huge_failures(limits_cluster):
    c = limits_cluster
    before = c.leader_term()
    cl = h.Client(c, "alice")
    nonce = time.time_ns()
    failed = []
    for i in range(4):
        # divide with a 600 KiB string where a number belongs: MZ-BAD-ARGUMENTS from the run.
        big = "y" * (600 << 10)
        r = cl.call("divide", f'["{big}-{nonce}-{i}", 1]', timeout=60)
        assert r.state == "failed" and r.error.code == "MZ-BAD-ARGUMENTS", (r.state, r.error.code)
        assert len(r.error.message) < 8 << 10, len(r.error.message)  # quoted, not copied
        failed.append(r.key)
        # fail with a 900 KiB message: the function's own message is kept up to 4 KiB.
        msg = f"boom-{nonce}-{i}-" + "z" * (900 << 10)
        r = cl.call("fail", f'"{msg}"', timeout=60)
        assert r.state == "failed" and r.error.code == "MZ-FUNCTION-FAILED", r.error.code
        assert r.error.message.startswith(f"boom-{nonce}-{i}-")
        assert len(r.error.message) < 8 << 10, len(r.error.message)
        for link in r.error.chain:
            assert len(link.args) < 8 << 10
        failed.append(r.key)
    ok = cl.call("echo", f'"after poison {nonce}"')
    c.ack(ok.key, ok.result_json)
    for a in c.agents:
        m = cl.stub(a.addr)

        def reads():
            size(m.Events(pb.EventsRequest(limit=10000), metadata=cl.md, timeout=10))
            size(m.Queue(pb.QueueRequest(limit=10000), metadata=cl.md, timeout=10))
            size(m.Functions(pb.FunctionsRequest(), metadata=cl.md, timeout=10))
            for k in failed:
                t = m.Tree(pb.TreeRequest(key=k), metadata=cl.md, timeout=10)
                size(t)
                assert t.entries and t.entries[0].request.key == k
                assert t.entries[0].request.args_cut and t.entries[0].request.args_bytes > 500_000
                g = m.Get(pb.GetRequest(key=k), metadata=cl.md, timeout=10)
                size(g)
                assert g.state == "failed"
            return True

        # Followers may apply the last failures a moment later.
        h.eventually(f"reads on agent {a.id}", reads, limit=20)
        fs = m.Functions(pb.FunctionsRequest(), metadata=cl.md, timeout=10).functions
        by = {f.name: f for f in fs}
        for name in ("divide", "fail", "echo", "sleep"):
            assert name in by and by[name].registered, name
            assert by[name].origin == "built-in" and by[name].shape, by[name]
    # Watch: the leader's first update, with the most requests it allows.
    stream = cl.stub(c.leader().addr).Watch(pb.WatchRequest(requests=1000), metadata=cl.md,
                                            timeout=20)
    first = next(iter(stream))
    stream.cancel()
    size(first)
    assert first.raft.leader_id == before[0]
    assert any(r.key in failed for r in first.requests) or first.truncated
    for r in first.requests:
        assert len(r.args_json) <= 5 << 10, (r.key, len(r.args_json))
    c.assert_stable(before)
    c.assert_acked()


def test_paging_walks_queue_and_events(limits_cluster):
    c = limits_cluster
    before = c.leader_term()
    cl = h.Client(c, "alice")
    ops = h.Client(c, "ops")
    nodes = [a.id for a in c.agents]
    keys = []
    try:
        for n in nodes:  # every node drained: submissions stay queued
            ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=n, op="drain"))

        def all_drained():
            ns = cl.leader_call("Nodes", pb.NodesRequest()).nodes
            return all(x.state == "drained" for x in ns)

        h.eventually("every node drained", all_drained, limit=20)
        nonce = time.time_ns()
        total = 260
        for i in range(total):
            args = f'["page-{nonce}-{i:04d}", "{"q" * (20 << 10)}"]'
            s = cl.submit("echo", args)
            assert s.disposition == "queued", s
            keys.append(s.key)
        leader = c.leader()
        m = cl.stub(leader.addr)
        # Byte-bounded pages (limit 10,000): every key once, in submission order.
        seen, pages, token = [], 0, ""
        while True:
            q = m.Queue(pb.QueueRequest(limit=10000, page_token=token), metadata=cl.md, timeout=20)
            size(q)
            pages += 1
            seen += [r.key for r in q.head]
            for r in q.head:
                assert r.args_cut and r.args_bytes > 20 << 10 and len(r.args_json) <= 5 << 10
            token = q.next_page_token
            if not token:
                break
            assert q.head, "a page with a next_page_token must list something"
            assert pages < 100
        ours = [k for k in seen if k in set(keys)]
        assert ours == keys, f"queue pages: {len(ours)} of {len(keys)} keys, order kept: " \
                             f"{ours == sorted(ours, key=keys.index)}"
        assert len(seen) == len(set(seen)), "a key listed twice"
        assert pages >= 2, "260 requests of 20 KiB must not fit one 512 KiB page"
        assert q.summary.queued >= total
        # Count-bounded pages.
        seen2, token = [], ""
        while True:
            q = m.Queue(pb.QueueRequest(limit=37, page_token=token), metadata=cl.md, timeout=20)
            assert len(q.head) <= 37
            seen2 += [r.key for r in q.head]
            token = q.next_page_token
            if not token:
                break
        assert seen2 == seen
        # Events: pages go back in time, each oldest first, nothing repeated.
        evs, token, pages = [], "", 0
        while True:
            e = m.Events(pb.EventsRequest(limit=7, page_token=token), metadata=cl.md, timeout=20)
            size(e)
            assert len(e.events) <= 7
            ats = [x.at_ms for x in e.events]
            assert ats == sorted(ats), "a page of events is oldest first"
            if evs:
                assert not ats or ats[-1] <= evs[0].at_ms, "pages go back in time"
            evs = list(e.events) + evs
            pages += 1
            token = e.next_page_token
            if not token:
                break
            assert pages < 1000
        assert pages >= 2 and len(evs) > 7
        ids = [(x.at_ms, x.kind, x.node, x.message) for x in evs]
        assert len(ids) == len(set(ids)), "an event listed twice"
        # Bad tokens.
        for bad in ("x", seen[0], "%%%"):
            h.expect_error(lambda: m.Queue(pb.QueueRequest(page_token=bad), metadata=cl.md,
                                           timeout=5),
                           grpc.StatusCode.INVALID_ARGUMENT, "MZ-BAD-ARGUMENTS")
    finally:
        for k in keys:
            cl.leader_call("Cancel", pb.CancelRequest(key=k))
        for n in nodes:
            ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=n, op="undrain"))

    def empty():
        return cl.leader_call("Queue", pb.QueueRequest()).summary.queued == 0

    h.eventually("queue empty", empty, limit=20)
    for k in keys[:5]:
        assert cl.get(k).state == "cancelled"
    r = cl.call("echo", '"after paging"')
    assert r.result_json == '"after paging"'
    c.ack(r.key, r.result_json)
    c.assert_stable(before)
    c.assert_acked()
