"""grpc.health.v1 answers without a token; reflection (v1 and v1alpha) needs a client token
and describes the Mozen services with descriptors that decode."""

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import mozen_harness as h

# grpcio-reflection ships only the v1alpha schema; grpc.reflection.v1 has the same messages
# (field for field) under another package, so the v1alpha messages serve the v1 method too.
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def reflection_call(ch, version, requests, md):
    if version == "v1alpha":
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        return list(stub.ServerReflectionInfo(iter(requests), metadata=md, timeout=10))
    method = ch.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(method(iter(requests), metadata=md, timeout=10))


def test_health_serving_without_token(main_cluster):
    c = main_cluster
    before = c.leader_term()
    for a in c.agents:
        stub = health_pb2_grpc.HealthStub(a.channel)
        for svc in ("", "mozen.v1.Mozen", "mozen.v1.MozenWorker"):
            r = stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)  # no token
            assert r.status == health_pb2.HealthCheckResponse.SERVING, (a.id, svc, r)
        # An unknown service is NOT_FOUND (the standard health contract).
        d = h.expect_error(
            lambda: stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        )
        assert d.code == grpc.StatusCode.NOT_FOUND, d
    c.assert_stable(before)
    c.assert_acked()


def test_reflection_lists_and_describes(main_cluster, creds):
    c = main_cluster
    before = c.leader_term()
    md = creds.metadata("alice")
    for a in c.agents:
        for version in ("v1", "v1alpha"):
            reps = reflection_call(
                a.channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")], md
            )
            assert len(reps) == 1
            names = {s.name for s in reps[0].list_services_response.service}
            # docs/operations.md: the services served (Mozen, MozenWorker, Raft, Health).
            for want in ("mozen.v1.Mozen", "mozen.v1.MozenWorker", "mozen.v1.Raft",
                         "grpc.health.v1.Health"):
                assert want in names, (a.id, version, names)
            # Describe each Mozen service: the file descriptors must decode and define it.
            for svc in sorted(n for n in names if n.startswith("mozen.v1.")):
                reps = reflection_call(
                    a.channel,
                    version,
                    [reflection_pb2.ServerReflectionRequest(file_containing_symbol=svc)],
                    md,
                )
                assert reps[0].WhichOneof("message_response") == "file_descriptor_response", reps[0]
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(b)
                    for b in reps[0].file_descriptor_response.file_descriptor_proto
                ]
                services = {
                    f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service
                }
                assert svc in services, (svc, list(services))
                assert services[svc], f"{svc} has no methods"
                if svc == "mozen.v1.Mozen":
                    for m in ("Call", "Submit", "Get", "Queue", "Watch", "Functions"):
                        assert m in services[svc], (m, services[svc])
                if svc == "mozen.v1.MozenWorker":
                    assert {"Join", "Complete", "Park", "Work"} <= set(services[svc])
                if svc == "mozen.v1.Raft":
                    assert {"Vote", "AppendEntries", "InstallSnapshot"} <= set(services[svc])
                # The descriptors of the file and its dependencies build a pool that resolves
                # the service's request and reply types.
                pool = descriptor_pool.DescriptorPool()
                pending = list(files)
                for _ in range(len(files) + 1):
                    rest = []
                    for f in pending:
                        try:
                            pool.Add(f)
                        except TypeError:
                            rest.append(f)
                    pending = rest
                sd = pool.FindServiceByName(svc)
                for m in sd.methods:
                    assert m.input_type.full_name and m.output_type.full_name
            # Reflection needs a credential: no token is UNAUTHENTICATED.
            d = h.expect_error(
                lambda: reflection_call(
                    a.channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")], ()
                )
            )
            assert d.code == grpc.StatusCode.UNAUTHENTICATED, d
    c.assert_stable(before)
    c.assert_acked()
