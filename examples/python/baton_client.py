#!/usr/bin/env python3
"""A baton client in Python: runs the ridge sweep and prints its six scores as JSON.

It uses stubs generated from baton's .proto file with grpcio-tools (it generates nothing
itself); generate them into a folder and put that folder on PYTHONPATH:

    mkdir -p gen && python -m grpc_tools.protoc -I proto/proto --python_out=gen --grpc_python_out=gen \
        proto/proto/baton/v1/baton.proto
    PYTHONPATH=gen python examples/python/baton_client.py 127.0.0.1:7070

It registers examples/ridge_sweep.yaml (RegisterFlow), starts a run of it (CreateRun),
watches the run until it ends (WatchRun), reads the task runs with their values
(ListTaskRuns) and prints the `evaluate` scores, one {"alpha", "r2"} per model, ordered by
map index. Exit status: 0 when the run completed with six scores, 1 otherwise.
"""

import argparse
import json
import pathlib
import sys
import time

import grpc

from baton.v1 import baton_pb2 as pb
from baton.v1 import baton_pb2_grpc as pb_grpc

FLOW_FILE = pathlib.Path(__file__).resolve().parent.parent / "ridge_sweep.yaml"
TERMINAL = {pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}


def retrying(call, request, attempts=60):
    """Calls a unary RPC, retrying while the scheduler is UNAVAILABLE (still starting, or
    electing a leader; a follower also answers UNAVAILABLE and names the leader)."""
    for attempt in range(attempts):
        try:
            return call(request, timeout=30)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                raise
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("address", help="the scheduler's host:port (or http://host:port)")
    ap.add_argument("--flow-file", type=pathlib.Path, default=FLOW_FILE)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the run")
    args = ap.parse_args()
    address = args.address.removeprefix("http://")

    with grpc.insecure_channel(address) as channel:
        flows = pb_grpc.FlowServiceStub(channel)
        registered = retrying(
            flows.RegisterFlow, pb.RegisterFlowRequest(source=args.flow_file.read_text())
        )
        print(
            f"registered {registered.project}/{registered.flow} v{registered.version}",
            file=sys.stderr,
        )
        run = retrying(
            flows.CreateRun,
            pb.CreateRunRequest(project=registered.project, flow=registered.flow),
        ).run
        print(f"run {run.id}: {pb.RunState.Name(run.state)}", file=sys.stderr)

        # The stream sends the run's state at once, then on every change.
        for event in flows.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=args.timeout):
            run = event.run
            print(
                f"run {run.id}: {pb.RunState.Name(run.state)} "
                f"{run.tasks_done}/{run.tasks_total}",
                file=sys.stderr,
            )
            if run.state in TERMINAL:
                break
        if run.state != pb.RUN_STATE_COMPLETED:
            print(f"run {run.id} ended {pb.RunState.Name(run.state)}: {run.error}", file=sys.stderr)
            return 1

        task_runs = []
        while True:
            page = retrying(
                flows.ListTaskRuns,
                pb.ListTaskRunsRequest(run_id=run.id, with_values=True, offset=len(task_runs)),
            )
            task_runs.extend(page.task_runs)
            if not page.task_runs or len(task_runs) >= page.total:
                break

    evaluations = sorted(
        (t for t in task_runs if t.task == "evaluate"), key=lambda t: t.map_index
    )
    scores = [json.loads(t.value) for t in evaluations]
    print(json.dumps(scores, indent=2))
    return 0 if len(scores) == 6 else 1


if __name__ == "__main__":
    sys.exit(main())
