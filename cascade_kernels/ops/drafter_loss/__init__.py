"""CASCADE's drafter training loss (CONTRACT §7): reference, CPU and fused Triton backends."""
from .api import BACKENDS, cascade_drafter_loss
from .reference import cascade_drafter_loss_reference, position_weights

__all__ = ["cascade_drafter_loss", "cascade_drafter_loss_reference", "position_weights", "BACKENDS"]
