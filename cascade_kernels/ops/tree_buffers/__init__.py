"""The tree-buffers op: ``api.tree_buffers`` with its reference and Triton backends."""
from .api import tree_buffers  # noqa: F401
