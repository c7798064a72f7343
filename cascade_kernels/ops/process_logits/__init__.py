"""The logits-processing op (``api.process_logits``; the reference serves every device)."""
from .api import process_logits  # noqa: F401
