"""Error statuses carry the code, the MZ-* message prefix and google.rpc details (ErrorInfo,
RetryInfo) as docs/protocol.md's tables say."""

import grpc

import mozen_harness as h
from mozen_harness import pb

SC = grpc.StatusCode


def no_retry(d):
    assert d.retry is None, f"{d.reason} should carry no RetryInfo: {d!r}"


def test_unknown_function_fails_the_call(main_cluster):
    c = main_cluster
    before = c.leader_term()
    cl = h.Client(c)
    # A call of a function no agent implements is answered (the call ran and failed) with a
    # TaskError: code MZ-UNKNOWN-FUNCTION, as string and enum.
    r = cl.call("no_such_function_xyz", "[1, 2]")
    assert r.state == "failed", r
    assert not r.HasField("result_json")
    assert r.error.code == "MZ-UNKNOWN-FUNCTION", r.error
    assert r.error.code_enum == pb.ERROR_CODE_UNKNOWN_FUNCTION
    assert r.state_enum == pb.REQUEST_STATE_FAILED
    assert "no_such_function_xyz" in r.error.message
    # Get answers the same outcome.
    g = cl.get(r.key)
    assert g.state == "failed" and g.error.code == "MZ-UNKNOWN-FUNCTION", g
    # A name past 256 bytes is refused before anything runs.
    d = h.expect_error(lambda: cl.submit("f" * 300, "1"), SC.INVALID_ARGUMENT, "MZ-BAD-ARGUMENTS")
    no_retry(d)
    ok = cl.call("echo", '{"after": "unknown function"}')
    assert ok.result_json == '{"after":"unknown function"}', ok
    c.ack(ok.key, ok.result_json)
    c.assert_stable(before)
    c.assert_acked()


def test_bad_json_arguments(main_cluster):
    c = main_cluster
    before = c.leader_term()
    cl = h.Client(c)
    for method in ("Call", "Submit"):
        for bad in ("{bad", "[1, 2", "1 2", '{"a": }'):
            d = h.expect_error(
                lambda: cl.leader_call(method, pb.CallRequest(function="echo", args_json=bad)),
                SC.INVALID_ARGUMENT,
                "MZ-BAD-ARGUMENTS",
            )
            no_retry(d)
    # CallBatch: a malformed call is refused too (the whole batch or that call's reply).
    try:
        rep = cl.leader_call(
            "CallBatch",
            pb.CallBatchRequest(calls=[pb.CallRequest(function="echo", args_json="{bad")]),
        )
        assert rep.replies[0].error.code == "MZ-BAD-ARGUMENTS", rep
    except grpc.RpcError as e:
        d = h.Details(e)
        assert d.code == SC.INVALID_ARGUMENT and d.reason == "MZ-BAD-ARGUMENTS", d
    # Empty args mean null.
    r = cl.call("echo", "")
    assert r.result_json == "null", r
    c.ack(r.key, r.result_json)
    c.assert_stable(before)
    c.assert_acked()


def test_bad_keys_and_tokens(main_cluster):
    c = main_cluster
    before = c.leader_term()
    cl = h.Client(c)
    for a in c.agents:  # Get is served by every member
        for key in ("zz", "0" * 63, "g" * 64, "0" * 65, ""):
            d = h.expect_error(
                lambda: cl.call_at(a.addr, "Get", pb.GetRequest(key=key)),
                SC.INVALID_ARGUMENT,
                "MZ-BAD-ARGUMENTS",
            )
            no_retry(d)
        d = h.expect_error(
            lambda: cl.call_at(a.addr, "Get", pb.GetRequest(key="0" * 64)),
            SC.NOT_FOUND,
            "MZ-UNKNOWN-REQUEST",
        )
        no_retry(d)
        d = h.expect_error(
            lambda: cl.call_at(a.addr, "Queue", pb.QueueRequest(page_token="not-a-token")),
            SC.INVALID_ARGUMENT,
            "MZ-BAD-ARGUMENTS",
        )
        # Missing token, a wrong one, a malformed header.
        stub = a.mozen()
        for md in ((), (("authorization", "Bearer " + "a" * 64),), (("authorization", "Basic xyz"),),
                   (("authorization", "Bearer"),)):
            d = h.expect_error(
                lambda: stub.Status(pb.StatusRequest(), metadata=md, timeout=5),
                SC.UNAUTHENTICATED,
                "MZ-UNAUTHENTICATED",
            )
            no_retry(d)
            # A write without a valid token is refused the same way, on the leader too.
            h.expect_error(
                lambda: stub.Submit(pb.CallRequest(function="echo", args_json="1"), metadata=md,
                                    timeout=5),
                SC.UNAUTHENTICATED,
                "MZ-UNAUTHENTICATED",
            )
    c.assert_stable(before)
    c.assert_acked()


def test_write_to_follower_names_the_leader(main_cluster):
    c = main_cluster
    before = c.leader_term()
    leader = c.leader()
    cl = h.Client(c)
    for f in c.followers():
        for method, req in (
            ("Call", pb.CallRequest(function="echo", args_json='"follower"')),
            ("Submit", pb.CallRequest(function="echo", args_json='"follower submit"')),
            ("Cancel", pb.CancelRequest(key="0" * 64)),
        ):
            d = h.expect_error(lambda: cl.call_at(f.addr, method, req), SC.FAILED_PRECONDITION,
                               "MZ-NOT-LEADER")
            assert d.metadata.get("leader_addr") == leader.addr, d.metadata
            assert d.header("mozen-leader-addr") == leader.addr, (d.trailing, d.initial)
            assert d.retry is not None and d.retry == 0, f"MZ-NOT-LEADER: RetryInfo 0 ms: {d!r}"
            assert leader.addr in d.message
        # Watch (server stream) is also led-only.
        d = h.expect_error(
            lambda: next(iter(f.mozen().Watch(pb.WatchRequest(), metadata=cl.md, timeout=5))),
            SC.FAILED_PRECONDITION,
            "MZ-NOT-LEADER",
        )
    # Following the redirect works: start at a follower.
    cl2 = h.Client(c)
    cl2._leader_addr = c.followers()[0].addr
    r = cl2.call("echo", '{"via": "redirect"}')
    assert r.result_json == '{"via":"redirect"}'
    c.ack(r.key, r.result_json)
    c.assert_stable(before)
    c.assert_acked()


def test_calls_stream_tags_errors(main_cluster):
    c = main_cluster
    before = c.leader_term()
    leader = c.leader()
    cl = h.Client(c)
    # At a follower: each tagged call answers MZ-NOT-LEADER with the leader's address.
    for f in c.followers():
        reps = list(f.mozen().Calls(iter([pb.TaggedCall(tag=7, call=pb.CallRequest(
            function="echo", args_json='"tagged at follower"'))]), metadata=cl.md, timeout=20))
        assert len(reps) == 1 and reps[0].tag == 7, reps
        assert reps[0].code == SC.FAILED_PRECONDITION.value[0], reps[0]
        assert reps[0].message.startswith("MZ-NOT-LEADER:") and reps[0].leader_addr == leader.addr
    # At the leader: good calls answer values, a malformed one its status, each by its tag.
    calls = [pb.TaggedCall(tag=100 + i, call=pb.CallRequest(function="echo",
                                                            args_json=f'{{"tag": {i}}}'))
             for i in range(5)]
    calls.append(pb.TaggedCall(tag=999, call=pb.CallRequest(function="echo", args_json="{bad")))
    reps = {r.tag: r for r in leader.mozen().Calls(iter(calls), metadata=cl.md, timeout=30)}
    assert set(reps) == {100, 101, 102, 103, 104, 999}, list(reps)
    assert reps[999].code == SC.INVALID_ARGUMENT.value[0]
    assert reps[999].message.startswith("MZ-BAD-ARGUMENTS:")
    for i in range(5):
        r = reps[100 + i]
        assert r.code == 0 and r.reply.result_json == f'{{"tag":{i}}}', r
        c.ack(r.reply.key, r.reply.result_json)
    c.assert_stable(before)
    c.assert_acked()
