#!/usr/bin/env python3
"""What `grpcurl list` and a gRPC health probe do, against a baton scheduler.

  grpc_probe.py HOST:PORT list             # services, by server reflection
  grpc_probe.py HOST:PORT list SERVICE     # a service's methods
  grpc_probe.py HOST:PORT health [SERVICE] # grpc.health.v1 Check: prints SERVING or NOT_SERVING

Needs grpcio, grpcio-reflection and grpcio-health-checking (pip). No stubs of baton's own
protos are needed: reflection serves them.
"""

import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel, request):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
    for response in responses:
        if response.HasField("error_response"):
            raise SystemExit(f"reflection error: {response.error_response.error_message}")
        return response
    raise SystemExit("reflection: no answer")


def list_services(channel):
    response = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    for service in sorted(s.name for s in response.list_services_response.service):
        print(service)


def list_methods(channel, service):
    response = reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    )
    package, _, name = service.rpartition(".")
    for raw in response.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        if fd.package != package:
            continue
        for s in fd.service:
            if s.name == name:
                for m in s.method:
                    print(f"{service}.{m.name}")
                return
    raise SystemExit(f"no service {service}")


def health(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv):
    if len(argv) < 3 or argv[2] not in ("list", "health"):
        print(__doc__, file=sys.stderr)
        return 2
    with grpc.insecure_channel(argv[1]) as channel:
        if argv[2] == "health":
            return health(channel, argv[3] if len(argv) > 3 else "")
        if len(argv) > 3:
            list_methods(channel, argv[3])
        else:
            list_services(channel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
