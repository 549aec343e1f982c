"""σ-conditioned energies E_s, E_π, E_T: InfoNCE training and the guidance hook (§4-§6)."""

from edis_core.energy.guidance import EnergyGuidance, EnergyTerm
from edis_core.energy.infonce import contrastive_loss, infonce_loss
from edis_core.energy.networks import EnergyNet

__all__ = ["EnergyGuidance", "EnergyNet", "EnergyTerm", "contrastive_loss", "infonce_loss"]
