"""cascade_lab: a small class-conditional AR image-model stack for testing relaxed speculative
decoding (VQ tokenizer, LlamaGen-style target with tree attention, EAGLE-1 drafter, quality
measures).  See README.md in this folder."""
from .weights import WeightsError  # noqa: F401
from .loaders import (Pretrained, load_classifier, load_drafter, load_pretrained, load_target,  # noqa: F401
                      load_vq)

__all__ = ["WeightsError", "Pretrained", "load_pretrained", "load_vq", "load_target", "load_drafter",
           "load_classifier"]
