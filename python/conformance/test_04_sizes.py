"""Values at the size bounds (--max-args 1MiB, --max-result 1MiB, --max-message 1MiB), with a
stream of small calls running meanwhile: at the bound it works, one byte over is MZ-TOO-LARGE,
past the message limit gRPC refuses; the leader stays and every small call succeeds."""

import hashlib
import time

import grpc

import mozen_harness as h
from mozen_harness import pb

SC = grpc.StatusCode
MIB = 1 << 20


def json_string_of_size(n, tag):
    """A JSON string value of exactly n bytes (canonical: no escapes, no spaces)."""
    head = f"{tag}-{time.time_ns()}-"
    return '"' + head + "x" * (n - 2 - len(head)) + '"'


def test_arguments_at_and_over_the_bound(limits_cluster):
    c = limits_cluster
    before = c.leader_term()
    cl = h.Client(c, "alice", own_channels=True)
    with h.EchoLoad(c, "bob", tag="sizes") as load:
        # Exactly --max-args: accepted, and echoed back whole (the result is at --max-result).
        at = json_string_of_size(MIB, "at")
        assert len(at.encode()) == MIB
        r = cl.call("echo", at, timeout=60)
        assert r.state == "done", (r.state, r.error)
        assert len(r.result_json) == MIB and r.result_json == at
        c.ack(r.key, r.result_json)
        # Submit at the bound, then Get the value.
        at2 = json_string_of_size(MIB, "at2")
        s = cl.submit("echo", at2, timeout=60)
        g = cl.wait_done(s.key, limit=60)
        assert g.state == "done" and g.result_json == at2
        c.ack(s.key, g.result_json)
        # One byte over: INVALID_ARGUMENT, MZ-TOO-LARGE naming the flag, for Call and Submit.
        over = json_string_of_size(MIB + 1, "over")
        for method in ("Call", "Submit"):
            d = h.expect_error(
                lambda: cl.leader_call(method, pb.CallRequest(function="echo", args_json=over),
                                       timeout=30),
                SC.INVALID_ARGUMENT, "MZ-TOO-LARGE")
            assert "--max-args" in d.message, d
            assert d.retry is None
        # The same in a batch.
        try:
            rep = cl.leader_call("CallBatch", pb.CallBatchRequest(
                calls=[pb.CallRequest(function="echo", args_json=over)]), timeout=30)
            assert rep.replies[0].error.code == "MZ-TOO-LARGE", rep.replies[0].error
        except grpc.RpcError as e:
            d = h.Details(e)
            assert d.code == SC.INVALID_ARGUMENT and d.reason == "MZ-TOO-LARGE", d
        # Past --max-message but within the 64 KiB of room the public service keeps: the
        # cluster's own code, not gRPC's (docs/operations.md, "Sizes derived from one another").
        roomy = json_string_of_size(MIB + (48 << 10), "roomy")
        h.expect_error(lambda: cl.leader_call(
            "Submit", pb.CallRequest(function="echo", args_json=roomy), timeout=30),
            SC.INVALID_ARGUMENT, "MZ-TOO-LARGE")
        # A message past that is refused by gRPC itself (RESOURCE_EXHAUSTED / OUT_OF_RANGE).
        for n in (MIB + (80 << 10), 3 * MIB):
            huge = json_string_of_size(n, "huge")
            for method in ("Call", "Submit"):
                d = h.expect_error(lambda: cl.leader_call(
                    method, pb.CallRequest(function="echo", args_json=huge), timeout=30))
                assert d.code in (SC.RESOURCE_EXHAUSTED, SC.OUT_OF_RANGE), d
        # Many values at 600 KiB in one CallBatch: over the message limit.
        batch = pb.CallBatchRequest(calls=[
            pb.CallRequest(function="echo", args_json=json_string_of_size(600 << 10, f"b{i}"))
            for i in range(3)])
        d = h.expect_error(lambda: cl.leader_call("CallBatch", batch, timeout=30))
        assert d.code in (SC.RESOURCE_EXHAUSTED, SC.OUT_OF_RANGE), d
        # The same through a follower (refused there; nothing reaches the leader).
        f = c.followers()[0]
        d = h.expect_error(lambda: cl.call_at(
            f.addr, "Submit", pb.CallRequest(function="echo", args_json=huge), timeout=30))
        assert d.code in (SC.RESOURCE_EXHAUSTED, SC.OUT_OF_RANGE), d
        # A few more values near the bound while the small calls go on.
        for i in range(3):
            v = json_string_of_size(MIB - 1 - i, f"near{i}")
            r = cl.call("echo", v, timeout=60)
            assert r.result_json == v
            c.ack(r.key, r.result_json)
        h.eventually("some background calls", lambda: load.ok >= 5, limit=30)
    load.check(at_least=5)
    cl.close()
    c.assert_stable(before)
    c.assert_acked()
    # Followers hold the big values too (read them there once they applied them).
    for f in c.followers():
        def has():
            g = h.Client(c).call_at(f.addr, "Get", pb.GetRequest(key=r.key))
            return g.state == "done" and hashlib.sha256(g.result_json.encode()).hexdigest() == \
                c.acked[r.key]
        h.eventually(f"follower {f.id} has the value", has, limit=20)
