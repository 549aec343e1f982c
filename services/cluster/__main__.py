"""`python -m services.cluster up|down`: the compose cluster as processes on this machine.

  python -m services.cluster up [--workers 2] [--dir runs/cluster] [-- EDIS DEMO ARGS ...]
  python -m services.cluster down [--dir runs/cluster]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.cluster.local import Launcher, down

DEFAULT_DIR = Path("runs/cluster")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    learner_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, learner_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="python -m services.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster and return (like compose up -d)")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                    help="state, logs, the run and Prometheus data (default %(default)s)")
    up.add_argument("--workers", type=int, default=2,
                    help="Ray worker nodes, like --scale ray-worker=N (default %(default)s)")
    up.add_argument("--cpus-per-worker", type=int, default=1,
                    help="CPUs each worker node offers, one rollout actor each (default 1)")
    up.add_argument("--prometheus-port", type=int, default=9090,
                    help="Prometheus on 127.0.0.1 (default %(default)s; 0: any free port)")
    up.add_argument("--scrape-interval", help="override the config's scrape interval, e.g. 2s")
    stop = commands.add_parser("down", help="stop what `up` started in DIR")
    stop.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "down":
            stopped = down(args.dir)
            print(f"local cluster stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        launcher = Launcher(args.dir, args.workers, args.cpus_per_worker,
                            args.prometheus_port, args.scrape_interval)
        if "--actors" not in learner_args:
            learner_args = ["--actors", str(args.workers * args.cpus_per_worker), *learner_args]
        cluster = launcher.up(learner_args)
    except (ValueError, RuntimeError) as err:
        print(f"edis cluster: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    print(f"local cluster up in {cluster.directory}: Prometheus {cluster.prometheus_url}, "
          f"Ray dashboard http://127.0.0.1:{cluster.ports['ray-dashboard']}, logs in "
          f"{cluster.directory}/logs; ports in {cluster.directory}/cluster.json; "
          "stop it with `make cluster-down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
