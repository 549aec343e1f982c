"""Metrics of the learner of `edis run` (`--metrics-port PORT`).

Everything is read from what the learner already records: each record written to
metrics.jsonl (train, eval, synthetic refresh, failure) updates the metrics it carries, and
at every record the buffers, the synthetic table and the rollout counters are read from the
learner, in the learner's own thread. Counters start from what the learner holds when the
metrics are attached, so a resumed run's counters restart at 0 like any new process's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.metrics.endpoint import new_registry

if TYPE_CHECKING:
    from edis_core.training.trainer import Trainer

# A refresh trains energies (and online prior steps) for seconds on the demo profile and
# minutes at the paper's size.
REFRESH_BUCKETS = (1, 2.5, 5, 10, 25, 60, 120, 300, 600, 1200, 3600)
PUBLISH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Agent updates between a policy's publication and the arrival of an episode acted with it:
# collection keeps it to a few hundred (services/learner/actors_source.py).
LAG_BUCKETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
ENERGY_PREFIX = "energy/"


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or new_registry("learner")
        r = self.registry
        self.updates = Counter("edis_learner_updates_total",
                               "Gradient updates: diffusion prior (prior), agent (offline, "
                               "online)", ["phase"], registry=r)
        self.env_steps = Counter("edis_learner_env_steps_total",
                                 "Online environment steps received", registry=r)
        self.loss = Gauge("edis_learner_loss", "Last logged training loss", ["phase", "loss"],
                          registry=r)
        self.eval_return = Gauge("edis_learner_eval_return",
                                 "Mean return of the last evaluation", ["phase"], registry=r)
        self.eval_score = Gauge("edis_learner_eval_normalized_score",
                                "D4RL-normalised score of the last evaluation", ["phase"],
                                registry=r)
        self.failures = Counter("edis_learner_failures_total",
                                "Runs stopped by a non-finite loss or value", registry=r)
        self.policy_version = Gauge("edis_learner_policy_version",
                                    "Version of the policy published to the rollout actors",
                                    registry=r)
        self.policy_lag = Histogram("edis_rollout_policy_lag_updates",
                                    "Agent updates between the publication of the policy a "
                                    "block of episodes was collected with and its arrival",
                                    buckets=LAG_BUCKETS, registry=r)
        self.actor_restarts = Counter("edis_rollout_actor_restarts_total",
                                      "Rollout actors restarted by Ray", registry=r)
        self.calls_lost = Counter("edis_rollout_calls_lost_total",
                                  "Sample calls lost with a dead rollout actor", registry=r)
        self.buffer_rows = Gauge("edis_buffer_rows", "Rows held", ["buffer"], registry=r)
        self.synthetic_version = Gauge("edis_synthetic_version",
                                       "Newest model version of the synthetic table", registry=r)
        self.synthetic_age = Gauge("edis_synthetic_age_versions",
                                   "Age of the synthetic rows in model versions (energy "
                                   "versions when guided) behind the newest", ["stat"],
                                   registry=r)
        self.synthetic_credit = Gauge("edis_synthetic_credit_rows",
                                      "Draws of synthetic rows the reuse rule still allows",
                                      registry=r)
        self.synthetic_rows = Counter("edis_synthetic_rows_total",
                                      "Synthetic rows inserted, sampled into agent batches, "
                                      "dropped as stale", ["event"], registry=r)
        self.published_version = Gauge("edis_learner_published_version",
                                       "Version of the models the learner published to the "
                                       "sampler", ["model"], registry=r)
        self.refreshes = Counter("edis_synthetic_refreshes_total",
                                 "Synthetic refreshes finished", registry=r)
        self.refresh_seconds = Histogram("edis_synthetic_refresh_seconds",
                                         "Wall clock of a refresh (training the models)",
                                         buckets=REFRESH_BUCKETS, registry=r)
        self.publish_seconds = Histogram("edis_synthetic_publish_seconds",
                                         "Wall clock of publishing weights to the sampler",
                                         buckets=PUBLISH_BUCKETS, registry=r)
        self.energy_loss = Gauge("edis_energy_loss", "InfoNCE loss of the last energy training",
                                 ["energy"], registry=r)
        self.energy_accuracy = Gauge("edis_energy_accuracy",
                                     "InfoNCE accuracy (positive ranked first) of the last "
                                     "energy training", ["energy"], registry=r)
        self.sampler_up = Gauge("edis_learner_sampler_up",
                                "1 while the sampler answers the learner, 0 during an outage",
                                registry=r)
        self.sampler_outages = Counter("edis_learner_sampler_outages_total",
                                       "Outages of the sampler seen by the learner", registry=r)
        self.sampler_down_seconds = Counter("edis_learner_sampler_down_seconds_total",
                                            "Seconds the sampler did not answer the learner",
                                            registry=r)
        self.starved_seconds = Gauge("edis_synthetic_starved_seconds",
                                     "Seconds since synthetic rows last entered the table",
                                     registry=r)
        self.trainer: Trainer | None = None
        self._seen: dict[str, float] = {}

    # -------------------------------------------------------------------- wiring
    def attach(self, trainer: Trainer) -> None:
        """Observe `trainer`'s records, starting from what it holds now."""
        self.trainer = trainer
        for key, value in self._cumulative(trainer).items():
            self._seen[key] = value
        trainer.log.observers.append(self.observe)
        lag_observers = getattr(trainer.online, "lag_observers", None)
        if lag_observers is not None:
            lag_observers.append(self.policy_lag.observe)
        self._read_state()

    def observe(self, record: dict[str, Any]) -> None:
        kind, phase = record.get("kind"), record.get("phase", "")
        if kind == "train":
            self._train_record(phase, record)
        elif kind == "eval":
            self.eval_return.labels(phase).set(record["return_mean"])
            if record.get("normalized_score") is not None:
                self.eval_score.labels(phase).set(record["normalized_score"])
        elif kind == "synthetic":
            self._refresh_record(record)
        elif kind == "failure":
            self.failures.inc()
        self._read_state()

    # ------------------------------------------------------------------ records
    def _train_record(self, phase: str, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key.endswith("_loss") and value is not None:
                self.loss.labels(phase, key.removesuffix("_loss")).set(value)
        if "policy_version" in record:
            self.policy_version.set(record["policy_version"])

    def _refresh_record(self, record: dict[str, Any]) -> None:
        self.refreshes.inc()
        self.refresh_seconds.observe(record["refresh_seconds"])
        if "publish_seconds" in record:
            self.publish_seconds.observe(record["publish_seconds"])
        if record.get("prior_loss") is not None:
            self.loss.labels("online", "diffusion").set(record["prior_loss"])
        for key, value in record.items():
            if not key.startswith(ENERGY_PREFIX) or value is None:
                continue
            name = key.removeprefix(ENERGY_PREFIX)
            if name.endswith("_loss"):
                self.energy_loss.labels(name.removesuffix("_loss")).set(value)
            elif name.endswith("_accuracy"):
                self.energy_accuracy.labels(name.removesuffix("_accuracy")).set(value)

    # ---------------------------------------------------------- learner's state
    @staticmethod
    def _cumulative(trainer: Trainer) -> dict[str, float]:
        """Every running total the learner keeps, by counter key."""
        online = trainer.online.stats()
        table = trainer.synthetic
        link = trainer.supply.stats() if trainer.supply is not None else {}
        return {"updates/prior": trainer.steps["prior"],
                "updates/offline": trainer.steps["offline"],
                "updates/online": trainer.updates, "env_steps": trainer.steps["online"],
                "actor_restarts": online.get("actor_restarts", 0),
                "calls_lost": online.get("actor_calls_lost", 0),
                "synthetic/inserted": table.inserted, "synthetic/sampled": table.sampled,
                "synthetic/dropped_stale": table.dropped_stale,
                "sampler_outages": link.get("sampler_outages", 0),
                "sampler_down_seconds": link.get("sampler_down_seconds", 0.0)}

    def _counter(self, key: str) -> Counter:
        family, _, label = key.partition("/")
        counters = {"updates": self.updates, "env_steps": self.env_steps,
                    "actor_restarts": self.actor_restarts, "calls_lost": self.calls_lost,
                    "synthetic": self.synthetic_rows, "sampler_outages": self.sampler_outages,
                    "sampler_down_seconds": self.sampler_down_seconds}
        return counters[family].labels(label) if label else counters[family]

    def _read_state(self) -> None:
        trainer = self.trainer
        assert trainer is not None
        for key, value in self._cumulative(trainer).items():
            if value > self._seen[key]:
                self._counter(key).inc(value - self._seen[key])
            self._seen[key] = value
        self.buffer_rows.labels("replay").set(len(trainer.replay))
        self.buffer_rows.labels("positive").set(len(trainer.positive))
        table = trainer.synthetic
        self.buffer_rows.labels("synthetic").set(len(table))
        self.synthetic_version.set(table.version)
        self.synthetic_credit.set(table.credit)
        chunks = table.state()["chunks"]
        rows = sum(n for _, n in chunks)
        if rows:
            ages = [(table.version - version, n) for version, n in chunks if n]
            self.synthetic_age.labels("mean").set(sum(a * n for a, n in ages) / rows)
            self.synthetic_age.labels("max").set(max(a for a, _ in ages))
        supply = trainer.supply
        if supply is not None:
            self.published_version.labels("prior").set(supply.prior_version)
            self.published_version.labels("energies").set(supply.energy_version)
            link = supply.stats()
            if "sampler_up" in link:
                self.sampler_up.set(link["sampler_up"])
                self.starved_seconds.set(link["synthetic_starved_seconds"])
