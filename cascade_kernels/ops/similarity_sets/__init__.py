"""The similarity-sets op: ``api.similarity_sets`` with its reference and Triton backends."""
from .api import similarity_sets  # noqa: F401
