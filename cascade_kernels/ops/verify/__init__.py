"""The verification op: ``api.verify`` with its reference, C++ (``cpu``) and Triton backends."""
from .api import verify  # noqa: F401
