"""The diffusion-sampler service: a gRPC server that streams energy-guided synthetic batches
(server.py), the learner's client (client.py), and what both agree on (wire.py, weights.py).
The contract is protos/edis/sampler/v1/sampler.proto."""
