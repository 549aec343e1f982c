"""The learner of the distributed runtime: the loop of edis_core/training, fed by rollout
actors and the sampler stream."""
