"""The sampler service over real gRPC on loopback: `edis sampler serve` in a subprocess,
clients built from the generated stubs."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import torch

from edis_core.diffusion.prior import DiffusionConfig
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.transitions import Transitions
from protos import generate as stubs
from protos.edis.sampler.v1 import sampler_pb2 as pb
from protos.edis.sampler.v1 import sampler_pb2_grpc as pb_grpc
from services.cli import main
from services.sampler import weights as w
from services.sampler.client import SamplerClient, SamplerError, publish_messages
from services.sampler.process import SamplerProcess
from services.sampler.wire import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, wire_layout

pytestmark = pytest.mark.services

OBS, ACT = 3, 2
MODELS = ("prior", "energy/state", "energy/policy", "energy/transition")
ENERGY_MODELS = MODELS[1:]
QUEUE = 2
CONFIG = EDISConfig(
    diffusion=DiffusionConfig(width=32, blocks=1, sampling_steps=4, batch_size=64),
    energy_width=16, negative_trajectories=64, energy_groups=8, negatives=3, generate_batch=50,
    guidance_sigma_min=0.0,  # the 4-step sampler has no level inside [2, 5]
)


def toy_transitions(n: int, seed: int) -> Transitions:
    rng = np.random.default_rng(seed)
    obs = rng.normal(10.0, 2.0, (n, OBS)).astype(np.float32)
    return Transitions(
        observations=obs, actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs + rng.normal(0, 0.1, (n, OBS)).astype(np.float32),
        terminals=(rng.random(n) < 0.2).astype(np.float32), timeouts=np.zeros(n, np.float32),
        mc_returns=np.full(n, -np.inf, np.float32))


@pytest.fixture(scope="module")
def generator() -> SyntheticGenerator:
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        gen = SyntheticGenerator(OBS, ACT, CONFIG, seed=0)
        gen.train_prior(toy_transitions(512, 0), 20)
        gen.train_energies(toy_transitions(256, 1), toy_transitions(256, 2),
                           lambda o: torch.tanh(o[:, :ACT] - 10.0), 5)
    return gen


@pytest.fixture(scope="module")
def served(generator, tmp_path_factory):
    """One sampler for the module, holding every model of `generator` at version 1."""
    log = tmp_path_factory.mktemp("sampler") / "sampler.log"
    with SamplerProcess("--queue-batches", str(QUEUE), log=log) as process, \
            SamplerClient(process.address) as client:
        client.publish(generator, dict.fromkeys(MODELS, 1))
        yield process, client
    assert process.is_gone()


def held_versions(client: SamplerClient) -> dict[str, int]:
    versions = client.status()["versions"]
    return {"prior": versions["prior"], "energy/state": versions["state_energy"],
            "energy/policy": versions["policy_energy"],
            "energy/transition": versions["transition_energy"]}


def in_process_twin(generator: SyntheticGenerator, seed: int = 0) -> SyntheticGenerator:
    """A generator built the way the sampler builds one, loaded with the same weights."""
    twin = w.build_generator(w.ModelSpec.of(generator), "cpu", seed)
    for model in MODELS:
        w.load_model_tensors(twin, model, w.model_tensors(generator, model))
    twin.energies_trained = True
    return twin


def assert_same_rows(received: Transitions, expected: Transitions) -> None:
    layout = wire_layout(OBS, ACT)
    np.testing.assert_array_equal(layout.to_array(received), layout.to_array(expected))


def test_stubs_are_generated_from_the_proto_and_fresh(tmp_path):
    stubs.generate(tmp_path)
    generated = sorted(p for p in tmp_path.rglob("*_pb2*") if p.is_file())
    assert {p.name for p in generated} == {"sampler_pb2.py", "sampler_pb2.pyi",
                                           "sampler_pb2_grpc.py"}
    for fresh in generated:
        in_tree = stubs.ROOT / fresh.relative_to(tmp_path)
        assert in_tree.is_file(), f"{in_tree} is missing: run `make setup`"
        assert in_tree.read_bytes() == fresh.read_bytes(), f"{in_tree} is stale: run `make setup`"


def test_health_follows_the_prior_and_batches_equal_in_process_rows(generator, tmp_path):
    with SamplerProcess(log=tmp_path / "log") as process, \
            SamplerClient(process.address) as client:
        assert client.health() == "NOT_SERVING"
        with pytest.raises(SamplerError, match="publish the prior first") as refused:
            client.publish(generator, dict.fromkeys(ENERGY_MODELS, 1))
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.publish(generator, dict.fromkeys(MODELS, 1)) == dict.fromkeys(MODELS, 1)
        assert client.health() == "SERVING"

        # Same weights and seed, same sequence of calls: exactly the same rows.
        twin = in_process_twin(generator)
        for batch in client.stream(120, guided=True, max_batches=2):
            assert batch.guided and batch.versions == dict.fromkeys(MODELS, 1)
            assert_same_rows(batch.transitions, twin.generate(120, guided=True))
        (batch,) = client.stream(90, guided=False, max_batches=1)
        assert not batch.guided
        assert_same_rows(batch.transitions, twin.generate(90, guided=False))
    assert process.is_gone()


def test_batches_carry_shapes_layout_and_versions(served):
    _, client = served
    versions = held_versions(client)
    batches = list(client.stream(64, guided=True, max_batches=3, consumer="shapes"))
    assert [b.sequence for b in batches] == [0, 1, 2]
    for batch in batches:
        n = 64 - batch.dropped_nonfinite_rows
        t = batch.transitions
        assert len(t) == n and t.observations.shape == (n, OBS) and t.actions.shape == (n, ACT)
        assert t.rewards.shape == t.terminals.shape == (n,)
        assert set(np.unique(t.terminals)) <= {0.0, 1.0}
        assert batch.versions == versions and batch.guided
        assert batch.generation_seconds > 0 and batch.generated_unix_time <= time.time()


def test_a_batch_over_the_message_limit_arrives_split_into_parts(served):
    process, client = served
    rows = 100_000  # 4 MB of float32 rows of width 10: over the 4 MiB message limit
    with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
        request = pb.StreamBatchesRequest(batch_size=rows, max_batches=1,
                                          guidance=pb.GUIDANCE_UNGUIDED)
        parts = list(pb_grpc.SamplerStub(channel).StreamBatches(request, timeout=60))
    assert len(parts) == parts[0].parts >= 2
    assert all(p.ByteSize() <= MAX_MESSAGE_BYTES for p in parts)
    assert [s.name for s in parts[0].layout.segments] == [
        "observations", "actions", "rewards", "next_observations", "terminals"]
    assert sum(p.transitions.shape[0] for p in parts) == parts[0].rows
    assert parts[0].rows + parts[0].dropped_nonfinite_rows == rows
    (whole,) = client.stream(rows, guided=False, max_batches=1)
    assert len(whole) + whole.dropped_nonfinite_rows == rows


def test_a_publish_swaps_weights_between_batches(served, generator):
    _, client = served
    before = held_versions(client)
    stream = client.stream(200, guided=True, consumer="swap")
    seen = [next(stream).versions for _ in range(2)]
    newer = {m: before[m] + 1 for m in ENERGY_MODELS}
    after = client.publish(generator, newer)
    assert after == {**before, **newer}
    for _ in range(QUEUE + 4):
        seen.append(next(stream).versions)
    stream.close()
    # Each batch names one set of versions; they never go back, and batches generated after
    # the publish (all but those already queued or in generation) carry the new ones.
    assert set(map(str, seen)) <= {str(before), str(after)}
    first_new = seen.index(after)
    assert 2 <= first_new <= 2 + QUEUE + 1
    assert all(v == after for v in seen[first_new:])


def _energy_blob(generator: SyntheticGenerator, change: Callable[[dict], None] | None = None,
                 ) -> bytes:
    tensors = {k: v.clone() for k, v in w.model_tensors(generator, "energy/state").items()}
    if change is not None:
        change(tensors)
    return w.encode(tensors)


def _set(name: str, value: torch.Tensor) -> Callable[[dict], None]:
    return lambda tensors: tensors.__setitem__(name, value)


def _with_nan(tensors: dict) -> None:
    tensors["output.weight"][0, 0] = float("nan")


def _malformed(kind: str, generator: SyntheticGenerator, next_version: int) -> list:
    spec = w.ModelSpec.of(generator)
    v = next_version
    shape = w.model_tensors(generator, "energy/state")["output.weight"].shape
    if kind == "unknown model":
        return publish_messages(spec, {"energy/reward": (v, _energy_blob(generator))})
    if kind == "wrong shape":
        wrong = torch.zeros(shape[0], shape[1] + 1)
        return publish_messages(spec, {"energy/state": (v, _energy_blob(
            generator, _set("output.weight", wrong)))})
    if kind == "wrong dtype":
        wrong = torch.zeros(shape, dtype=torch.float64)
        return publish_messages(spec, {"energy/state": (v, _energy_blob(
            generator, _set("output.weight", wrong)))})
    if kind == "NaN":
        return publish_messages(spec, {"energy/state": (v, _energy_blob(generator, _with_nan))})
    if kind == "truncated chunk stream":
        return publish_messages(spec, {"energy/state": (v, _energy_blob(generator))}, 256)[:-1]
    if kind == "chunks out of order":
        messages = publish_messages(spec, {"energy/state": (v, _energy_blob(generator))}, 256)
        messages[1], messages[2] = messages[2], messages[1]
        return messages
    if kind == "corrupt bytes":
        messages = publish_messages(spec, {"energy/state": (v, _energy_blob(generator))})
        data = bytearray(messages[1].chunk.data)
        data[-1] ^= 0xFF
        messages[1].chunk.data = bytes(data)
        return messages
    if kind == "no header":
        return publish_messages(spec, {"energy/state": (v, _energy_blob(generator))})[1:]
    if kind == "stale version":
        return publish_messages(spec, {"energy/state": (v - 1, _energy_blob(generator))})
    if kind == "prior without spec":
        return publish_messages(None, {"prior": (v, w.encode(w.model_tensors(generator, "prior")))})
    if kind == "another spec without the prior":
        other = dataclasses.replace(spec, config=dataclasses.replace(spec.config,
                                                                      energy_width=24))
        return publish_messages(other, {"energy/state": (v, _energy_blob(generator))})
    if kind == "a spec over --max-parameters":
        huge = dataclasses.replace(spec.config, diffusion=dataclasses.replace(
            spec.config.diffusion, width=200_000))
        blob = w.encode(w.model_tensors(generator, "prior"))
        return publish_messages(dataclasses.replace(spec, config=huge), {"prior": (v, blob)})
    raise AssertionError(kind)


MALFORMED = {
    "unknown model": (grpc.StatusCode.INVALID_ARGUMENT, "unknown model 'energy/reward'"),
    "wrong shape": (grpc.StatusCode.INVALID_ARGUMENT, "'output.weight' has shape"),
    "wrong dtype": (grpc.StatusCode.INVALID_ARGUMENT, "'output.weight' has dtype float64"),
    "NaN": (grpc.StatusCode.INVALID_ARGUMENT, "'output.weight' has 1 non-finite"),
    "truncated chunk stream": (grpc.StatusCode.INVALID_ARGUMENT, "incomplete chunk stream"),
    "chunks out of order": (grpc.StatusCode.INVALID_ARGUMENT, "out of order"),
    "corrupt bytes": (grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
    "no header": (grpc.StatusCode.INVALID_ARGUMENT, "must be its header"),
    "stale version": (grpc.StatusCode.FAILED_PRECONDITION, "not newer than the held version"),
    "prior without spec": (grpc.StatusCode.INVALID_ARGUMENT, "header.spec is required"),
    "another spec without the prior": (grpc.StatusCode.FAILED_PRECONDITION,
                                       "differs from the held model"),
    "a spec over --max-parameters": (grpc.StatusCode.INVALID_ARGUMENT, "--max-parameters"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_publish_is_refused_and_the_old_weights_keep_serving(served, generator,
                                                                          kind):
    _, client = served
    code, message = MALFORMED[kind]
    before, rejected = held_versions(client), client.status()["publishes_rejected"]
    messages = _malformed(kind, generator, next_version=before["energy/state"] + 1)
    with pytest.raises(SamplerError) as refused:
        client.publish_messages(messages)
    assert refused.value.code == code
    assert message in str(refused.value)
    status = client.status()
    assert held_versions(client) == before and status["serving"]
    assert status["publishes_rejected"] == rejected + 1
    (batch,) = client.stream(32, guided=True, max_batches=1)
    assert batch.versions == before


def test_a_message_over_4_mib_is_refused_by_the_server(served, generator):
    process, client = served
    before = held_versions(client)
    blob = bytes(5 * 1024 * 1024)
    messages = publish_messages(w.ModelSpec.of(generator), {"energy/state": (99, blob)},
                                chunk_bytes=len(blob))
    # A client allowed to send more than the sampler accepts: the server's limit decides.
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(process.address, options=options) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        pb_grpc.SamplerStub(channel).PublishWeights(iter(messages), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert held_versions(client) == before
    (batch,) = client.stream(16, guided=False, max_batches=1)
    assert batch.versions == before


@pytest.mark.parametrize(("request_fields", "code", "message"), [
    ({"batch_size": 0, "guidance": pb.GUIDANCE_GUIDED}, grpc.StatusCode.INVALID_ARGUMENT,
     "batch_size must be in"),
    ({"batch_size": 10**6, "guidance": pb.GUIDANCE_GUIDED}, grpc.StatusCode.INVALID_ARGUMENT,
     "batch_size must be in"),
    ({"batch_size": 8}, grpc.StatusCode.INVALID_ARGUMENT, "guidance must be"),
    ({"batch_size": 8, "guidance": pb.GUIDANCE_GUIDED, "consumer": "x" * 65},
     grpc.StatusCode.INVALID_ARGUMENT, "at most 64 characters"),
])
def test_a_bad_stream_request_is_refused_with_its_reason(served, request_fields, code, message):
    process, client = served
    with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        list(pb_grpc.SamplerStub(channel).StreamBatches(
            pb.StreamBatchesRequest(**request_fields), timeout=30))
    assert refused.value.code() == code and message in refused.value.details()
    assert client.status()["serving"]


def _consumer(client: SamplerClient, name: str) -> dict:
    (entry,) = [c for c in client.status()["consumers"] if c["name"] == name]
    return entry


def test_a_stalled_consumer_holds_its_queue_at_the_bound_and_others_keep_receiving(served):
    _, client = served
    stalled = client.stream(5_000, guided=False, consumer="stalled")
    next(stalled)  # then never read again
    reader = client.stream(500, guided=False, consumer="reader")
    for _ in range(20):
        next(reader)
    deadline = time.monotonic() + 60
    while _consumer(client, "stalled")["queue_depth"] < QUEUE:
        assert time.monotonic() < deadline, "the stalled consumer's queue never filled"
        next(reader)
    generated = _consumer(client, "stalled")["batches_generated"]
    received = [len(next(reader)) for _ in range(30)]
    assert len(received) == 30
    stalled_now = _consumer(client, "stalled")
    assert stalled_now["queue_depth"] == QUEUE
    assert stalled_now["batches_generated"] == generated  # nothing more made for it
    assert _consumer(client, "reader")["batches_sent"] >= 50
    stalled.close()
    reader.close()
    deadline = time.monotonic() + 10
    while client.status()["consumers_connected"]:
        assert time.monotonic() < deadline, "closed streams stay registered"
        time.sleep(0.05)


def test_status_command_prints_the_status_as_json(served, capsys):
    process, client = served
    assert main(["sampler", "status", process.address]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["serving"] is True
    assert status["versions"]["prior"] == held_versions(client)["prior"]
    assert status["queue_capacity"] == QUEUE
    assert status["energies"] == list(ENERGY_MODELS)
    assert status["spec"]["obs_dim"] == OBS


def test_status_of_an_address_where_nothing_listens_is_one_clear_line(capsys):
    """No sampler there is a fault of another process, not refused input: exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # a port nobody listens on once closed
    assert main(["sampler", "status", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "no sampler answers" in err and len(err.strip().splitlines()) == 1


def test_serve_on_a_port_in_use_is_one_clear_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["sampler", "serve", "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_sigterm_ends_open_streams_with_unavailable_and_exits_zero(generator, tmp_path):
    with SamplerProcess(log=tmp_path / "log") as process:
        with SamplerClient(process.address) as client:
            client.publish(generator, dict.fromkeys(MODELS, 1))
        with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
            stream = pb_grpc.SamplerStub(channel).StreamBatches(
                pb.StreamBatchesRequest(batch_size=64, guidance=pb.GUIDANCE_GUIDED))
            next(stream)
            process.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in ended.value.details()
        assert process.proc.wait(20) == 0
    assert process.is_gone()


def test_serve_from_a_run_directory(hopper_dataset, tmp_path):
    """`--from-run` serves the generator that `edis train` checkpointed, as saved."""
    from edis_core.config import build
    from edis_core.training.config import TrainConfig
    from edis_core.training.trainer import Trainer

    config = build(TrainConfig, "smoke", {"dataset": hopper_dataset, "synthetic": "edis"},
                   ["edis.negative_trajectories=64", "edis.energy_groups=16"])
    trainer = Trainer.create(config, tmp_path / "run")
    saved = trainer.supply.generator
    saved.train_prior(trainer.offline, 5)
    saved.train_energies(trainer.offline, trainer.offline, trainer.agent.sample_actions, 2)
    trainer.save_checkpoint()
    twin = SyntheticGenerator.from_state_dict(saved.state_dict())
    with SamplerProcess("--from-run", str(tmp_path / "run"), log=tmp_path / "log") as process, \
            SamplerClient(process.address) as client:
        assert client.health() == "SERVING"
        assert held_versions(client) == dict.fromkeys(MODELS, 1)
        (batch,) = client.stream(50, guided=True, max_batches=1)
        # The run's own RNG state comes along: the same rows as the saved generator makes.
        expected = twin.generate(50, guided=True)
        layout = wire_layout(11, 3)
        np.testing.assert_array_equal(layout.to_array(batch.transitions),
                                      layout.to_array(expected))
    assert process.is_gone()
