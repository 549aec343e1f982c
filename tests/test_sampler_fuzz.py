"""Bad input never crashes the sampler: random bytes and random field values sent to every
RPC, truncated and oversized streams, and many concurrent bad publishes, in a bounded loop.
Every call must end with a status code (none may hang), and afterwards the sampler must
still be SERVING the weights it held before, with its memory bounded."""

from __future__ import annotations

import concurrent.futures
import hashlib
import random
from pathlib import Path

import grpc
import pytest

from protos.edis.sampler.v1 import sampler_pb2 as pb
from services.sampler.client import SamplerClient, publish_messages
from services.sampler.process import SamplerProcess
from services.sampler.wire import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from tests.test_sampler_service import MODELS, generator, held_versions  # noqa: F401

pytestmark = pytest.mark.slow
METHODS = {"StreamBatches": "unary_stream", "PublishWeights": "stream_unary",
           "GetStatus": "unary_unary"}
CALL_SECONDS = 20.0
ROUNDS = 60


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_call(channel: grpc.Channel, method: str, payload):
    """Call `method` with raw request bytes (an iterator of them for the streaming request);
    returns the status code it ended with."""
    kind = METHODS[method]
    stub = getattr(channel, kind)(f"/edis.sampler.v1.Sampler/{method}",
                                  request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
    try:
        if kind == "unary_stream":
            for _ in stub(payload, timeout=CALL_SECONDS):
                pass
        elif kind == "stream_unary":
            stub(iter(payload), timeout=CALL_SECONDS)
        else:
            stub(payload, timeout=CALL_SECONDS)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def random_bytes(rng: random.Random, limit: int = 4096) -> bytes:
    return rng.randbytes(rng.randint(0, limit))


def random_stream_request(rng: random.Random) -> bytes:
    return pb.StreamBatchesRequest(
        batch_size=rng.choice([0, 1, 7, 2**31, 2**32 - 1, rng.randint(0, 10**6)]),
        max_batches=rng.choice([1, 2]),  # a stream that is accepted ends by itself
        guidance=rng.randint(0, 5), consumer="x" * rng.choice([0, 10, 65, 10_000]),
    ).SerializeToString()


def random_publish(rng: random.Random, valid: list[bytes]) -> list[bytes]:
    """A publish stream with random header fields, chunks and truncations."""
    choice = rng.randint(0, 5)
    if choice == 0:                                    # a valid publish cut short
        return valid[:rng.randint(0, len(valid) - 1)]
    if choice == 1:                                    # chunks out of order or unannounced
        messages = list(valid)
        rng.shuffle(messages)
        return messages
    if choice == 2:                                    # a stale version of valid weights
        return valid
    blob = random_bytes(rng, 2048)
    header = pb.PublishHeader(models=[pb.ModelBlob(
        model=rng.choice([*MODELS, "nothing", ""]), version=rng.randint(0, 2**64 - 1),
        size_bytes=rng.choice([0, len(blob), 2**63]),
        sha256=rng.choice([hashlib.sha256(blob).digest(), b"", rng.randbytes(32)]))])
    if rng.random() < 0.5:
        header.spec.CopyFrom(pb.ModelSpec(obs_dim=rng.randint(0, 2**32 - 1),
                                          act_dim=rng.randint(0, 9),
                                          edis_config_json=rng.choice(["{", "{}", "[]", "1"])))
    first = pb.PublishWeightsRequest(header=header).SerializeToString()
    chunk = pb.PublishWeightsRequest(chunk=pb.WeightsChunk(
        model=header.models[0].model, offset=rng.choice([0, 5, 2**40]), data=blob))
    return [first, chunk.SerializeToString()] if choice < 5 else [chunk.SerializeToString()]


def test_random_requests_to_every_rpc_get_a_status_and_leave_the_sampler_serving(
        generator, tmp_path):  # noqa: F811
    rng = random.Random(0)
    with SamplerProcess("--queue-batches", "2", log=tmp_path / "sampler.log") as process, \
            SamplerClient(process.address) as client:
        client.publish(generator, dict.fromkeys(MODELS, 1))
        before = held_versions(client)
        stale = [m.SerializeToString() for m in publish_messages(
            None, {"energy/state": (1, b"x" * 64)})]
        rss_start = rss_bytes(process.pid)
        channel = grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS)
        codes: dict[str, set] = {m: set() for m in METHODS}

        def one_round(seed: int) -> list[tuple[str, grpc.StatusCode]]:
            r = random.Random(seed)
            return [
                ("GetStatus", raw_call(channel, "GetStatus", random_bytes(r))),
                ("StreamBatches", raw_call(channel, "StreamBatches",
                                           r.choice([random_bytes(r),
                                                     random_stream_request(r)]))),
                ("PublishWeights", raw_call(channel, "PublishWeights",
                                            r.choice([[random_bytes(r) for _ in range(3)],
                                                      random_publish(r, stale)]))),
            ]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:   # concurrent bad publishes
            for results in pool.map(one_round, [rng.randint(0, 2**31) for _ in range(ROUNDS)]):
                for method, code in results:
                    codes[method].add(code)
        oversized = raw_call(channel, "PublishWeights", [b"\0" * (MAX_MESSAGE_BYTES + 1)])
        channel.close()
        assert oversized == grpc.StatusCode.RESOURCE_EXHAUSTED
        for method, seen in codes.items():
            assert grpc.StatusCode.DEADLINE_EXCEEDED not in seen, f"{method} hung"
            assert grpc.StatusCode.UNAVAILABLE not in seen, f"{method}: the sampler went away"
        assert codes["PublishWeights"] - {grpc.StatusCode.OK}        # bad publishes refused
        assert client.health() == "SERVING"
        assert held_versions(client) == before                     # the old weights serve
        batch = next(client.stream(10, guided=True, max_batches=1))
        assert len(batch.transitions) == 10 and batch.versions == before
        assert rss_bytes(process.pid) < rss_start + 300 * 2**20
