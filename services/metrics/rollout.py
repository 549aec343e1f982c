"""Metrics of one rollout actor, through `ray.util.metrics`: Ray's agent on the actor's node
exports them on its `--metrics-export-port`, named `ray_edis_rollout_*` (Ray prefixes every
application metric with `ray_`; the Prometheus config strips it again, so dashboards read
`edis_rollout_*`). Labelled by actor index, a handful of values."""

from __future__ import annotations

from services.rollout.episodes import EpisodeBlock

# A sample call runs `steps_per_call` steps (250 by default) at ~1-10k steps/s per actor.
SAMPLE_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


class ActorMetrics:
    def __init__(self, actor_index: int):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"actor": str(actor_index)}
        self.env_steps = Counter("edis_rollout_env_steps_total",
                                 "Environment steps collected", tag_keys=("actor",))
        self.episodes = Counter("edis_rollout_episodes_total", "Episodes finished",
                                tag_keys=("actor",))
        # A gauge, not a histogram: returns may be negative, which Ray's histogram
        # boundaries cannot be, and Ray approximates a histogram's sum by bucket midpoints.
        self.episode_return = Gauge("edis_rollout_episode_return",
                                    "Mean undiscounted return of the episodes of the last "
                                    "sample call", tag_keys=("actor",))
        self.sample_seconds = Histogram("edis_rollout_sample_seconds",
                                        "Wall clock of one sample call",
                                        boundaries=SAMPLE_BUCKETS, tag_keys=("actor",))
        for metric in (self.env_steps, self.episodes, self.episode_return, self.sample_seconds):
            metric.set_default_tags(tags)

    def record(self, block: EpisodeBlock) -> None:
        self.env_steps.inc(block.env_steps)
        self.episodes.inc(len(block.episode_ends))
        self.episode_return.set(float(block.returns.mean()))
        self.sample_seconds.observe(block.sample_seconds)
