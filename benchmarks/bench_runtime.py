"""Throughput of the distributed runtime against the one-process baselines, one section per
comparison, all from one run.

Section "rollouts": env-steps/s of a RolloutPool with 1 and 2 actors for each backend
(plain Ray actors, RLlib env runners) under a local Ray with 2 CPUs, counted as
whole-episode blocks reach the driver, each against a bare gymnasium Hopper-v5 loop with the
same IQL actor network acting (one process, one torch thread: reset, act, step) timed right
before it (the machine is shared and its load drifts); and RLlib ÷ plain. With each pool,
the CPU-seconds per second its actors and the rest of the run (driver, raylet, GCS) used:
when other jobs hold the cores, the actors get less than one CPU each and the ratio falls
with them. Also the same episodes recorded in one process without Ray
(`LocalRollout.sample`), to separate the cost of recording from Ray's.

Section "runs": the same offline-to-online run (IQL + EDIS on the embedded Hopper dataset,
seed 0, profile `demo`) under `edis train` and under `edis run`, one after the other, each
in its own process (finished runs under --runs-root are reused: research/runtime_seeds.py makes the
same two for seed 0, and records each run's wall clock): wall clock in all and per phase,
edis run ÷ edis train; and the learner's agent updates per second in the online phase of
`edis run` (updates ÷ the phase's wall clock, waits for data included) against the bare
update benchmark (bench_agents.py, IQL, batch 256, the learner's 1 torch thread) timed just
before.

    python benchmarks/bench_runtime.py [--seconds S] [--sections rollouts runs]
                                       [--runs-root runs/runtime-seeds]

Writes results/bench_runtime.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from bench_results import write_results

from edis_core.agents import IQLConfig, actor_hidden, make_agent
from services.rollout import BACKENDS, RolloutPool, RolloutSpec
from services.rollout.local import LocalRollout

ROLLOUT_FLOOR = 1.7  # docs/speed.md: 2 actors ÷ one bare loop
RAY_CPUS = 2  # the CPUs Ray gets, as on the project's 2-core machines
# RLlib's env runner is the default only if it costs at most 25% against plain actors.
RLLIB_TOLERANCE = 0.75


def rollout_spec(steps_per_call: int) -> RolloutSpec:
    return RolloutSpec("Hopper-v5", "iql", actor_hidden(IQLConfig()), 11, 3, seed=0,
                       steps_per_call=steps_per_call)


def policy_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return make_agent("iql", IQLConfig(), 11, 3).actor.state_dict()


def bare_loop_rate(spec: RolloutSpec, seconds: float) -> dict[str, float]:
    """Env steps per second and per CPU-second of reset-act-step with the policy network,
    nothing recorded."""
    rollout = LocalRollout(spec, index=0)
    rollout.load_policy(policy_weights(), version=1)
    env, act, to_env = rollout.env, rollout.act, rollout.scaler.to_env

    def steps_for(duration: float) -> dict[str, float]:
        obs, _ = env.reset()
        steps, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < duration:
            for _ in range(100):
                obs, _, terminated, truncated, _ = env.step(to_env(act(obs)))
                if terminated or truncated:
                    obs, _ = env.reset()
            steps += 100
        return {"per_s": steps / (time.perf_counter() - start),
                "per_cpu_s": steps / (time.process_time() - cpu)}

    steps_for(1.0)  # warm-up
    return steps_for(seconds)


def recorded_loop_rate(spec: RolloutSpec, seconds: float) -> float:
    """Env steps/s of a plain actor's work (whole episodes recorded and flattened) without
    Ray."""
    rollout = LocalRollout(spec, index=0)
    rollout.load_policy(policy_weights(), version=1)
    rollout.sample(spec.steps_per_call)  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += rollout.sample(spec.steps_per_call).env_steps
    return steps / (time.perf_counter() - start)


def cpu_seconds(processes: list) -> float:
    """User + system CPU seconds the (psutil) processes have used so far."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except Exception:  # gone: its time no longer counts in either reading
            continue
        total += times.user + times.system
    return total


def pool_rate(spec: RolloutSpec, backend: str, actors: int, seconds: float) -> dict[str, float]:
    """Env steps/s delivered to the driver as blocks by a pool, after each actor's first
    block (the driver only collects; two calls in flight per actor); and the CPU-seconds
    per second the actors and everything else of the run (driver, raylet, GCS, Ray's
    helpers) used meanwhile."""
    import psutil  # Ray's own copy, on the path once ray is imported

    with RolloutPool(spec, actors, backend=backend) as pool:
        pool.set_policy(policy_weights(), version=1)
        warmed: set[int] = set()
        while len(warmed) < actors:
            warmed |= {b.actor_index for b in pool.collect(2 * actors, timeout=1.0)}
        run = [psutil.Process(), *psutil.Process().children(recursive=True)]
        actor_processes = [p for p in run if p.pid in pool.actor_pids()]
        actors_before, run_before = cpu_seconds(actor_processes), cpu_seconds(run)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            steps += sum(b.env_steps for b in pool.collect(2 * actors, timeout=0.5))
        elapsed = time.perf_counter() - start
        actors_cpu = cpu_seconds(actor_processes) - actors_before
        return {"per_s": steps / elapsed, "actors_cpu_per_s": actors_cpu / elapsed,
                "other_cpu_per_s": (cpu_seconds(run) - run_before - actors_cpu) / elapsed,
                "per_actor_cpu_s": steps / actors_cpu}


def bench_rollouts(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    spec = rollout_spec(args.steps_per_call)
    recorded = recorded_loop_rate(spec, args.seconds)
    bare: dict[str, dict] = {backend: {} for backend in BACKENDS}
    pools: dict[str, dict] = {backend: {} for backend in BACKENDS}
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    try:
        for backend in BACKENDS:
            for n in ("1", "2"):
                bare[backend][n] = bare_loop_rate(spec, args.seconds)
                pools[backend][n] = pool_rate(spec, backend, int(n), args.seconds)
    finally:
        ray.shutdown()

    def ratios(measure: Callable[[str, str], float]) -> dict[str, dict[str, float]]:
        return {backend: {n: measure(backend, n) for n in ("1", "2")} for backend in BACKENDS}

    return {
        "env": spec.env_id, "policy": f"iql actor {spec.hidden}",
        "steps_per_call": spec.steps_per_call, "seconds": args.seconds,
        "recorded_in_process_per_s": recorded,
        "bare_loop": bare, "pools": pools,
        "ratios_to_bare": ratios(lambda b, n: pools[b][n]["per_s"] / bare[b][n]["per_s"]),
        "actor_steps_per_cpu_s_to_bare": ratios(
            lambda b, n: pools[b][n]["per_actor_cpu_s"] / bare[b][n]["per_cpu_s"]),
        "rllib_over_plain": {n: pools["rllib"][n]["per_s"] / pools["ray"][n]["per_s"]
                             for n in ("1", "2")},
        "floor_2_actors": ROLLOUT_FLOOR,
    }


def print_rollouts(row: dict) -> None:
    print(f"rollouts: {row['env']}, {row['policy']}, calls of >= {row['steps_per_call']} "
          f"steps, {row['seconds']:.0f} s windows; each pool against a bare loop timed just "
          "before it")
    header = (f"{'backend':8} {'actors':>6} {'pool steps/s':>13} {'bare loop/s':>12} "
              f"{'ratio':>6} {'floor':>6} {'actor CPU':>10} {'other CPU':>10} "
              f"{'steps/CPU-s ÷ bare':>19}")
    print(header)
    print("-" * len(header))
    for backend, rates in row["pools"].items():
        for n, pool in rates.items():
            floor = f"{row['floor_2_actors']:.1f}" if n == "2" else ""
            print(f"{backend:8} {n:>6} {pool['per_s']:>13,.0f} "
                  f"{row['bare_loop'][backend][n]['per_s']:>12,.0f} "
                  f"{row['ratios_to_bare'][backend][n]:>6.2f} {floor:>6} "
                  f"{pool['actors_cpu_per_s']:>10.2f} {pool['other_cpu_per_s']:>10.2f} "
                  f"{row['actor_steps_per_cpu_s_to_bare'][backend][n]:>19.2f}")
    print("actor CPU, other CPU: CPU-seconds per second used by the actors, by the rest of the "
          f"run (of the {RAY_CPUS} Ray has); steps/CPU-s: the actors' env steps per CPU-second "
          "÷ the bare loop's")
    print(f"recorded episodes in one process, no Ray: {row['recorded_in_process_per_s']:,.0f}/s")
    ratios = ", ".join(f"{n} actor(s) {r:.2f}" for n, r in row["rllib_over_plain"].items())
    print(f"RLlib ÷ plain: {ratios} (RLlib kept as default only at >= {RLLIB_TOLERANCE})")


WALL_CLOCK_GOAL = 1.0  # docs/speed.md: edis run ÷ edis train, demo budget
LEARNER_FLOOR = 0.8  # docs/speed.md: updates/s inside the distributed run ÷ bare
def bench_runs(args: argparse.Namespace) -> dict:
    from bench_agents import updates_per_second
    from demo_runs import learner_time, online_updates_per_s, run_to_completion, wall_clock

    from services.cli import ensure_demo_dataset

    ensure_demo_dataset()
    runs = {}
    for command in ("train", "run"):
        run_dir = args.runs_root / f"{command}-seed0"
        summary = run_to_completion(command, run_dir, 0, [])
        runs[command] = {"run_dir": str(run_dir), "wall_s": wall_clock(run_dir),
                         "phase_s": summary["phase_seconds"], "steps": summary["steps"],
                         "return": summary["online_final"]["return_mean"],
                         "online_updates_per_s": online_updates_per_s(run_dir, summary),
                         "learner_time": learner_time(run_dir, summary)}
    if None in (runs["train"]["wall_s"], runs["run"]["wall_s"]):
        raise SystemExit(f"a run under {args.runs_root} was resumed, so its wall clock is "
                         "unknown: delete it and run this section again")
    bare, _ = updates_per_second("iql", 1, 256, warmup=20, seconds=args.seconds / 2,
                                 repeats=2, device=torch.device("cpu"))
    train, run = runs["train"], runs["run"]
    return {
        "runs": runs, "bare_updates_per_s": max(bare),
        "wall_clock_run_over_train": run["wall_s"] / train["wall_s"],
        "online_phase_run_over_train": run["phase_s"]["online"] / train["phase_s"]["online"],
        "learner_updates_over_bare": run["online_updates_per_s"] / max(bare),
        "learner_updating_rate_over_bare": (run["learner_time"]["updates_per_updating_s"]
                                            / max(bare)),
    }


def print_runs(row: dict) -> None:
    print("runs: IQL + EDIS, embedded Hopper dataset, seed 0, profile demo")
    header = (f"{'command':10} {'wall s':>7} {'prior s':>8} {'offline s':>10} {'online s':>9} "
              f"{'online steps':>13} {'updates/s online':>17} {'final return':>13}")
    print(header)
    print("-" * len(header))
    for command, r in row["runs"].items():
        phases = r["phase_s"]
        print(f"edis {command:5} {r['wall_s']:>7.0f} {phases['prior']:>8.0f} "
              f"{phases['offline']:>10.0f} {phases['online']:>9.0f} {r['steps']['online']:>13,} "
              f"{r['online_updates_per_s']:>17.0f} {r['return']:>13.1f}")
    print(f"edis run ÷ edis train, wall clock: {row['wall_clock_run_over_train']:.2f} "
          f"(goal <= {WALL_CLOCK_GOAL}); online phase: {row['online_phase_run_over_train']:.2f}")
    print(f"learner updates/s in edis run's online phase ÷ bare update benchmark "
          f"({row['bare_updates_per_s']:.0f}/s, 1 thread): "
          f"{row['learner_updates_over_bare']:.2f} (floor {LEARNER_FLOOR})")
    for command, r in row["runs"].items():
        time = r["learner_time"]
        shares = ", ".join(f"{part} {share:.2f}" for part, share in time["shares"].items())
        print(f"edis {command}: online wall clock in {shares}; "
              f"{time['updates_per_updating_s']:.0f} updates/s while updating; "
              f"{time['cpu_per_wall']:.2f} CPU-s per s")
    print(f"edis run's rate while updating ÷ bare: "
          f"{row['learner_updating_rate_over_bare']:.2f} (below 1: the update itself is "
          "slower, the cores being shared; the rest of the gap is the share not updating)")


SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], None]]] = {
    "rollouts": (bench_rollouts, print_rollouts),
    "runs": (bench_runs, print_runs),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timing window per figure")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--steps-per-call", type=int, default=1000,
                        help="env steps per rollout sample call (then the episode finishes)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/runtime-seeds"),
                        help="section runs: where the seed-0 runs are made, or reused when "
                             "finished (research/runtime_seeds.py shares them)")
    parser.add_argument("--out", default="results/bench_runtime.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg()},
        "sections": {},
    }
    for name in args.sections:
        bench, show = SECTIONS[name]
        results["sections"][name] = bench(args)
        show(results["sections"][name])
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"load average: start {results['machine']['load_average_at_start'][0]:.2f}, "
          f"end {results['machine']['load_average_at_end'][0]:.2f}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
