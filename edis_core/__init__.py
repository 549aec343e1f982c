"""EDIS: Energy-Guided Diffusion Sampling for offline-to-online RL (Liu et al., ICML 2024).

The algorithm only: torch, numpy, gymnasium and minari. The runtime (Ray, gRPC,
Prometheus) lives in `services/` and composes what is here.
"""

__version__ = "0.1.0"
