"""One client floods a cluster started with --max-queue 500: refusals are RESOURCE_EXHAUSTED
with MZ-QUEUE-FULL (or a per-client quota code, when the binary has per-client quotas), the
queue never passes its bound, the leader stays, and after cancelling the queue empties. With
per-client quotas another client is still admitted and answered during the flood."""

import re
import threading
import time

import grpc

import conftest
import mozen_harness as h
from mozen_harness import pb

SC = grpc.StatusCode
MAX_QUEUE = 500
FLOOD = 5000
THREADS = 4
# The cluster-wide code, or any per-client quota code another release may add.
REFUSAL = re.compile(r"^MZ-(QUEUE-FULL|[A-Z-]*(CLIENT|QUOTA|RATE)[A-Z-]*)$")


def test_flood_is_bounded_and_recovers(flood_cluster):
    c = flood_cluster
    per_client = h.has_flag("--max-queue-per-client")
    before = c.leader_term()
    ops = h.Client(c, "ops")
    reader = h.Client(c, "alice")
    nodes = [a.id for a in c.agents]
    nonce = time.time_ns()
    admitted, refusals, other = [], {}, []
    lock = threading.Lock()
    b_keys, b_errors = [], []
    try:
        # Drained nodes run nothing, so admitted calls stay queued (sleep parks and would
        # otherwise leave the queue at once) and the bound is reached for sure.
        for n in nodes:
            ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=n, op="drain"))
        h.eventually("every node drained", lambda: all(
            x.state == "drained" for x in reader.leader_call("Nodes", pb.NodesRequest()).nodes),
            limit=20)

        def flood(t):
            cl = h.Client(c, "alice", client_id=f"flood-{nonce}", own_channels=True)
            try:
                for i in range(t, FLOOD, THREADS):
                    try:
                        # Distinct sleeps (about a week: they never finish by themselves).
                        s = cl.submit("sleep", str(600_000_000 + (nonce % 1_000_000) * FLOOD + i))
                        with lock:
                            admitted.append(s.key)
                    except grpc.RpcError as e:
                        d = h.Details(e)
                        with lock:
                            if d.code == SC.RESOURCE_EXHAUSTED and d.reason and \
                                    REFUSAL.match(d.reason):
                                refusals[d.reason] = refusals.get(d.reason, 0) + 1
                                if d.reason == "MZ-QUEUE-FULL":
                                    assert d.retry is not None and d.retry > 0, d
                                    assert "--max-queue" in d.message or "queue" in d.message
                            else:
                                other.append(repr(d))
            finally:
                cl.close()

        def second_client():
            # Another client (its own credential) during the flood.
            cl = h.Client(c, "bob", own_channels=True)
            try:
                for i in range(20):
                    try:
                        s = cl.submit("echo", f'{{"bob": {i}, "n": {nonce}}}')
                        b_keys.append(s.key)
                    except grpc.RpcError as e:
                        b_errors.append(h.Details(e))
                    time.sleep(0.05)
            finally:
                cl.close()

        threads = [threading.Thread(target=flood, args=(t,)) for t in range(THREADS)]
        threads.append(threading.Thread(target=second_client))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "flood threads did not finish"
        assert not other, f"unexpected refusals: {other[:5]}"
        assert len(admitted) + sum(refusals.values()) == FLOOD
        assert refusals, f"{FLOOD} submissions and none refused (admitted {len(admitted)})"
        q = reader.leader_call("Queue", pb.QueueRequest()).summary
        # The bound is checked as each submission arrives, against what the leader holds:
        # submissions in flight at once may each pass it, so allow one per concurrent
        # submitter (observed: 503 queued with 5 submitters; see the suite's README).
        slack = THREADS + 1
        assert q.queued <= MAX_QUEUE + slack, f"{q.queued} queued, past --max-queue {MAX_QUEUE}"
        assert len(admitted) <= MAX_QUEUE + slack
        if per_client:
            assert len(admitted) <= conftest.PER_CLIENT_QUEUE, len(admitted)
            assert not b_errors, f"the second client was refused during the flood: {b_errors[:3]}"
            assert len(b_keys) == 20
        else:
            # The whole bound went to the flood and the second client.
            assert len(admitted) + len(b_keys) >= MAX_QUEUE - 5, (len(admitted), len(b_keys))
            for d in b_errors:
                assert d.code == SC.RESOURCE_EXHAUSTED and d.reason == "MZ-QUEUE-FULL", d
        c.assert_stable(before)
        if per_client and b_keys:
            # Answered during the flood: one node back to work runs the second client's calls.
            ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=nodes[0], op="undrain"))
            bob = h.Client(c, "bob")
            for k in b_keys:
                r = bob.wait_done(k, limit=60)
                assert r.state == "done", (k, r.state, r.error)
                c.ack(k, r.result_json)
    finally:
        # CancelRequest has only `key`: cancel one by one.
        for k in admitted:
            reader.leader_call("Cancel", pb.CancelRequest(key=k))
        for k in b_keys:
            if reader.get(k).state in ("queued", "running"):
                reader.leader_call("Cancel", pb.CancelRequest(key=k))
        for n in nodes:
            ops.leader_call("NodeOp", pb.NodeOpRequest(node_id=n, op="undrain"))

    def empty():
        s = reader.leader_call("Queue", pb.QueueRequest()).summary
        return s.queued == 0 and s.running == 0

    h.eventually("queue empty after cancelling", empty, limit=30)
    for k in admitted[:10] + admitted[-10:]:
        assert reader.get(k).state == "cancelled"
    # The cluster takes work again, from both clients.
    for who in ("alice", "bob"):
        r = h.Client(c, who, client_id=f"after-{nonce}").call("echo", f'"{who} after {nonce}"')
        assert r.result_json == f'"{who} after {nonce}"', r
        c.ack(r.key, r.result_json)
    c.assert_stable(before)
    c.assert_acked()
