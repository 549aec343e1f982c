"""`edis`: the one entry point, used by `make run`, the tests and the services.

  edis data make --env Hopper-v5 --policy random --steps 20000 --dataset-id hopper/random-v0
  edis data info hopper/random-v0
  edis train --agent iql --dataset hopper/random-v0 --seed 0 --run-dir runs/x [--profile smoke]
  edis train --resume runs/x [--accept-changed-data]
  edis run --agent iql --dataset hopper/random-v0 --run-dir runs/y [--actors 2]   # distributed
  edis run --resume runs/y
  edis diagnose runs/x
  edis demo                      # the embedded default that `make run` starts
  edis sampler serve --port 50051     # the diffusion-sampler service (gRPC)
  edis sampler status 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services import logs

if TYPE_CHECKING:
    from edis_core.training.config import TrainConfig
    from edis_core.training.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network at run time
# OpenMP threads that wait by spinning make a 2-thread torch process ~50x slower as soon as
# another busy process shares the 2 cores (prior training: 0.8 steps/s against 52 with
# passive waiting, measured); set before torch loads, inherited by every process started.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEMO_DATASET = "edis/hopper-random-v0"
DEMO_ENV = "Hopper-v5"
DEMO_STEPS = 50_000
DEMO_RUN_DIR = Path("runs/demo")


# `edis demo` hands these to `edis run` as it got them.
SAMPLER_SECURITY_FLAGS = ("sampler_ca", "sampler_cert", "sampler_key", "sampler_token_file",
                          "sampler_server_name")

def _print_json(data: Any) -> None:
    """Valid JSON always: NaN/inf print as null, counted in `nonfinite_as_null`."""
    from edis_core.training.run_log import to_json

    print(to_json(data, indent=2))


def _one_line(err: BaseException | Warning | str) -> str:
    return " ".join(str(err).split())


def cmd_data_make(args: argparse.Namespace) -> int:
    from edis_core.data.minari_io import make_dataset
    from edis_core.data.recipes import DEFAULT_STEPS, make_recipe_dataset

    if args.recipe is not None:
        if args.dataset_id is not None or args.policy != "random":
            raise ValueError("--recipe names its dataset (edis/<family>-<recipe>-v0) and its "
                             "policy; drop --dataset-id and --policy")
        _print_json(make_recipe_dataset(args.env, args.recipe, args.steps or DEFAULT_STEPS,
                                        seed=args.seed, overwrite=args.overwrite))
        return 0
    if args.dataset_id is None or args.steps is None:
        raise ValueError("give --steps and --dataset-id, or a --recipe")
    policy = None
    if args.policy != "random":
        policy = _checkpoint_policy(Path(args.policy), args.env)
    info = make_dataset(args.env, policy, steps=args.steps, dataset_id=args.dataset_id,
                        seed=args.seed, policy_name=args.policy, overwrite=args.overwrite)
    _print_json(info)
    return 0


def cmd_data_behaviour(args: argparse.Namespace) -> int:
    import torch

    from edis_core.data.recipes import train_and_save_behaviour

    torch.set_num_threads(args.threads)
    _print_json(train_and_save_behaviour(args.env, seed=args.seed, max_steps=args.max_steps))
    return 0


def _checkpoint_policy(run_dir: Path, env_id: str):
    from edis_core.training.envs import ActionScaler, make_env
    from edis_core.training.policy import env_policy, load_trained_agent

    if not run_dir.is_dir():
        raise ValueError(f"--policy must be 'random' or a run directory with a checkpoint; "
                         f"{run_dir} does not exist")
    agent, _, progress = load_trained_agent(run_dir)
    env = make_env(env_id, seed=0)
    dims = (env.observation_space.shape, env.action_space.shape)
    if dims != ((progress["obs_dim"],), (progress["act_dim"],)):
        raise ValueError(f"the policy in {run_dir} acts on obs/act dims {progress['obs_dim']}/"
                         f"{progress['act_dim']} ({progress.get('env_id')}); {env_id} has "
                         f"{dims[0]}/{dims[1]}")
    return env_policy(agent, ActionScaler.for_space(env.action_space))


def cmd_data_info(args: argparse.Namespace) -> int:
    from edis_core.data.minari_io import dataset_info

    _print_json(dataset_info(args.dataset_id))
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", choices=["iql", "calql"])
    parser.add_argument("--dataset")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--synthetic", choices=["none", "unguided", "edis", "oracle"],
                        help="none, unguided, edis, or oracle (real on-policy transitions in "
                             "the synthetic slot: the benchmark's positive control)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--run-dir")
    parser.add_argument("--profile",
                        help="a YAML profile of edis_core/profiles/ (default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set iql.expectile=0.8")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--accept-changed-data", action="store_true",
                        help="with --resume: continue even though the dataset or environment "
                             "changed since the checkpoint")


def _new_config(args: argparse.Namespace) -> TrainConfig | None:
    """The config of a new run from the flags, or None with --resume (after checking that
    no flag would be ignored)."""
    from edis_core.config import build
    from edis_core.training.config import TrainConfig

    runtime_flags = {"runtime": {k: v for k in ("actors", "backend")
                                 if (v := getattr(args, k, None)) is not None}}
    if args.resume:
        given = [name for name in ("agent", "dataset", "seed", "synthetic", "device", "run_dir",
                                   "profile", *runtime_flags["runtime"])
                 if getattr(args, name) is not None] + (["set"] if args.set else [])
        if given:
            raise ValueError(f"--resume continues a run with its saved config; drop {given}")
        return None
    if args.run_dir is None:
        raise ValueError(f"edis {args.command} needs --run-dir DIR (or --resume DIR)")
    if args.accept_changed_data:
        raise ValueError("--accept-changed-data only applies with --resume RUN_DIR")
    fields = {"agent": args.agent, "dataset": args.dataset, "seed": args.seed,
              "synthetic": args.synthetic, "device": args.device, **runtime_flags}
    return build(TrainConfig, args.profile or "default", fields, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from edis_core.training.trainer import Trainer

    config = _new_config(args)
    if config is None:
        trainer = Trainer.load(Path(args.resume), accept_changed_data=args.accept_changed_data)
    else:
        trainer = Trainer.create(config, Path(args.run_dir))
    return _report(trainer, trainer.run())


def cmd_run(args: argparse.Namespace) -> int:
    from services.learner.run import distributed_trainer, save_policy
    from services.metrics.endpoint import metrics_endpoint
    from services.sampler.security import client_security

    config = _new_config(args)
    with distributed_trainer(Path(args.resume or args.run_dir), config,
                             accept_changed_data=args.accept_changed_data,
                             ray_address=args.ray_address,
                             sampler_address=args.sampler_address,
                             sampler_security=client_security(args),
                             metrics=metrics_endpoint(args),
                             ray_node=args.ray_node) as trainer:
        summary = trainer.run()
    if summary["status"] != "failed":
        print(f"policy saved as an RLlib RLModule: {save_policy(trainer)}")
    return _report(trainer, summary)


def _report(trainer: Trainer, summary: dict[str, Any]) -> int:
    """Print a finished run's summary; the exit code of its status."""
    _print_json(summary)
    print(f"results in {trainer.run_dir}: metrics.jsonl, summary.json, learning_curve.png")
    if summary["status"] == "failed":
        logs.event(_one_line(summary["error"]), logging.ERROR)
        return 1
    return trainer.stop.exit_code if summary["status"] == "interrupted" else 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from edis_core.training.diagnose import diagnose_run

    report = diagnose_run(Path(args.run_dir), samples=args.samples, seed=args.seed)
    _print_json(report)
    return 0


def ensure_demo_dataset() -> None:
    """Write the embedded dataset (Hopper-v5, random policy) unless it is already there."""
    from edis_core.data.minari_io import DatasetError, dataset_info, make_dataset

    try:
        dataset_info(DEMO_DATASET)
    except DatasetError:
        print(f"making the embedded dataset {DEMO_DATASET} ({DEMO_STEPS} random steps)")
        make_dataset(DEMO_ENV, None, steps=DEMO_STEPS, dataset_id=DEMO_DATASET, seed=0)


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the embedded dataset if missing, run EDIS offline->online on the distributed
    runtime (`edis run`: rollout actors, the sampler service), diagnose it. A run directory
    with a checkpoint is resumed, so a restarted cluster learner goes on where it stopped."""
    if args.dataset == DEMO_DATASET:
        ensure_demo_dataset()
    run_dir = Path(args.run_dir)
    joined = [arg for flag in ("ray_address", "sampler_address", "metrics_port", "metrics_host",
                               *SAMPLER_SECURITY_FLAGS)
              if (value := getattr(args, flag)) is not None
              for arg in ("--" + flag.replace("_", "-"), str(value))]
    joined += ["--ray-node"] if args.ray_node else []
    run_args = ["run", "--profile", "demo", "--dataset", args.dataset,
                "--synthetic", "edis", "--run-dir", str(run_dir), *joined,
                *(["--actors", str(args.actors)] if args.actors is not None else []),
                *(arg for override in args.set for arg in ("--set", override))]
    from edis_core.training.checkpoint import checkpoint_path

    if checkpoint_path(run_dir).exists():
        run_args = ["run", "--resume", str(run_dir), *joined]
    code = main(run_args)
    if code != 0:
        return code
    print("diagnostics of the guided sampler against the unguided one:")
    return main(["diagnose", str(run_dir)])


def build_parser() -> argparse.ArgumentParser:
    from services.metrics.endpoint import add_metrics_arguments
    from services.sampler.security import add_client_arguments as add_sampler_client_arguments

    parser = argparse.ArgumentParser(prog="edis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (`edis --debug train ...`)")
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="events on stderr as one line for people (text, the default) "
                             "or one JSON object per line (also EDIS_LOG_FORMAT)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make and inspect Minari datasets").add_subparsers(
        dest="data_command", required=True)
    make = data.add_parser("make", help="write a Minari dataset by running a policy locally")
    make.add_argument("--env", required=True, help="gymnasium id, e.g. Hopper-v5")
    make.add_argument("--recipe", choices=["random", "medium", "medium-replay"],
                      help="a D4RL-style dataset edis/<family>-<recipe>-v0 "
                           "(edis_core/data/recipes.py)")
    make.add_argument("--policy", default="random",
                      help="'random' or a run directory whose checkpoint acts")
    make.add_argument("--steps", type=int, help="required without --recipe (default 100,000 "
                                                 "with random and medium)")
    make.add_argument("--dataset-id", help="e.g. hopper/random-v0 (without --recipe)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--overwrite", action="store_true")
    make.set_defaults(func=cmd_data_make)
    behaviour = data.add_parser(
        "behaviour", help="train the medium behaviour policy (SAC to ~1/3 of expert return), "
                          "save its weights and write the medium-replay dataset")
    behaviour.add_argument("--env", required=True)
    behaviour.add_argument("--seed", type=int, default=0)
    behaviour.add_argument("--max-steps", type=int, default=300_000)
    behaviour.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    behaviour.set_defaults(func=cmd_data_behaviour)
    info = data.add_parser("info", help="print a local dataset's facts as JSON")
    info.add_argument("dataset_id")
    info.set_defaults(func=cmd_data_info)

    train = commands.add_parser("train", help="offline pre-training then online fine-tuning, "
                                              "in this process")
    _add_run_arguments(train)
    train.set_defaults(func=cmd_train)

    run = commands.add_parser(
        "run", help="the same run on the distributed runtime: Ray rollout actors, the learner "
                    "here, the sampler service")
    _add_run_arguments(run)
    run.add_argument("--actors", type=int, help="rollout actors (runtime.actors, default 2)")
    run.add_argument("--backend", choices=["ray", "rllib"],
                     help="rollout actors as plain Ray actors or RLlib env runners "
                          "(runtime.backend, default ray)")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting Ray here")
    run.add_argument("--ray-node", action="store_true",
                     help="with --ray-address, when this host is not a node of that cluster: "
                          "start a Ray node without CPUs here first (stopped on exit)")
    run.add_argument("--sampler-address", metavar="HOST:PORT",
                     help="use this running sampler instead of starting one on 127.0.0.1")
    add_sampler_client_arguments(run)
    add_metrics_arguments(run)
    run.set_defaults(func=cmd_run)

    diagnose = commands.add_parser("diagnose", help="guided vs unguided sample diagnostics")
    diagnose.add_argument("run_dir")
    diagnose.add_argument("--samples", type=int, default=10_000,
                          help="guided and unguided samples each, all checked against the "
                               "simulator: more narrow the dynamics ratios' intervals "
                               "(default 10,000)")
    diagnose.add_argument("--seed", type=int, default=0,
                          help="picks the held-out episodes and the draw of samples")
    diagnose.set_defaults(func=cmd_diagnose)

    demo = commands.add_parser("demo", help="the embedded default run (what `make run` does)")
    demo.add_argument("--run-dir", default=str(DEMO_RUN_DIR))
    demo.add_argument("--dataset", default=DEMO_DATASET,
                      help="a local dataset (default %(default)s, made here if missing)")
    demo.add_argument("--actors", type=int, help="rollout actors (default 2)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override one config field of the demo profile")
    demo.add_argument("--ray-address", help="join this Ray cluster instead of starting Ray here")
    demo.add_argument("--ray-node", action="store_true",
                      help="with --ray-address: start a Ray node without CPUs here first")
    demo.add_argument("--sampler-address", metavar="HOST:PORT",
                      help="use this running sampler instead of starting one")
    add_sampler_client_arguments(demo)
    add_metrics_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    from services.sampler.cli import add_commands as add_sampler_commands

    add_sampler_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format)
    from edis_core.config import ConfigError
    from edis_core.data.minari_io import DatasetError
    from edis_core.training.checkpoint import CheckpointError
    from services.sampler.client import SamplerError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except SamplerError as err:  # another process failed: not refused input
        if args.debug:
            raise
        logs.event(_one_line(err), logging.ERROR)
        return 1
    except (ConfigError, DatasetError, CheckpointError, ValueError, OSError) as err:
        if args.debug:
            raise
        hint = " (check the path and its permissions)" if isinstance(err, OSError) else ""
        logs.event(f"{_one_line(err)}{hint}", logging.ERROR)
        return 2
    except KeyboardInterrupt:  # before the training loop installs its own handler
        if args.debug:
            raise
        logs.event("interrupted")
        return 130
    except Exception as err:
        if args.debug:
            raise
        logs.event(f"unexpected {type(err).__name__}: {_one_line(err)}; run it again as "
                   "`edis --debug ...` for the traceback, and report it", logging.ERROR)
        return 1


def _show_warning(message: Warning | str, category: type[Warning], *_args: Any,
                  **_kwargs: Any) -> None:
    """Warnings as one line each, like errors."""
    logs.event(_one_line(message), logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
