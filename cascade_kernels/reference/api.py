"""The reference backend's entry points, as the backend registry expects them."""
from .trees import similarity_sets, tree_buffers  # noqa: F401
from .verify import verify_reference as verify  # noqa: F401
