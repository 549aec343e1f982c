"""The runtime: entry points and (later) rollout actors, learner and sampler services."""
