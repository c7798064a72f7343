"""Loaders for the shipped weights (checksums verified; WeightsError on missing/corrupt files)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .weights import WEIGHTS_DIR, WeightsError, load_weights


def _finish(model, obj, dtype, device):
    model.load_state_dict(obj["state"])
    return model.to(device=device, dtype=dtype).eval()


def load_vq(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .vq import VQVAE

    obj = load_weights("vq.pt", weights_dir)
    return _finish(VQVAE(**obj["config"]), obj, dtype, device)


def load_target(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .model import TargetConfig, Transformer

    obj = load_weights("target.pt", weights_dir)
    return _finish(Transformer(TargetConfig(**obj["config"])), obj, dtype, device)


def load_drafter(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu", name: str = "drafter_eagle.pt"):
    from .drafter import Drafter, DrafterConfig

    obj = load_weights(name, weights_dir)
    try:
        config = DrafterConfig(**obj["config"])
    except TypeError as exc:
        raise WeightsError(f"{name} is not a drafter's weight file ({exc})") from exc
    return _finish(Drafter(config), obj, dtype, device)


def load_classifier(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .quality import Classifier

    obj = load_weights("classifier.pt", weights_dir)
    return _finish(Classifier(**obj["config"]), obj, dtype, device)


def load_cvae(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .cvae import ContinuousVAE

    obj = load_weights("cvae.pt", weights_dir)
    return _finish(ContinuousVAE(**obj["config"]), obj, dtype, device)


def load_ctarget(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .ctarget import ContinuousTargetConfig, ContinuousTransformer

    obj = load_weights("ctarget.pt", weights_dir)
    return _finish(ContinuousTransformer(ContinuousTargetConfig(**obj["config"])), obj, dtype, device)


def load_cdrafter(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu"):
    from .ctarget import ContinuousDrafter, ContinuousDrafterConfig

    obj = load_weights("cdrafter.pt", weights_dir)
    return _finish(ContinuousDrafter(ContinuousDrafterConfig(**obj["config"])), obj, dtype, device)


@dataclass
class ContinuousPretrained:
    cvae: torch.nn.Module
    target: torch.nn.Module
    drafter: torch.nn.Module
    classifier: torch.nn.Module


def load_continuous(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu") -> ContinuousPretrained:
    """The continuous-token stack (VAE, mixture-head target and drafter) and the shared classifier."""
    return ContinuousPretrained(load_cvae(weights_dir, dtype, device), load_ctarget(weights_dir, dtype, device),
                                load_cdrafter(weights_dir, dtype, device), load_classifier(weights_dir, dtype, device))


@dataclass
class Pretrained:
    vq: torch.nn.Module
    target: torch.nn.Module
    drafter: torch.nn.Module
    classifier: torch.nn.Module


def load_pretrained(weights_dir: str = WEIGHTS_DIR, dtype=torch.float32, device="cpu") -> Pretrained:
    """All shipped components. Raises WeightsError (naming the file) if any is missing/corrupt."""
    return Pretrained(load_vq(weights_dir, dtype, device), load_target(weights_dir, dtype, device),
                      load_drafter(weights_dir, dtype, device), load_classifier(weights_dir, dtype, device))


__all__ = ["WeightsError", "load_vq", "load_target", "load_drafter", "load_classifier", "load_pretrained", "Pretrained",
           "load_cvae", "load_ctarget", "load_cdrafter", "load_continuous", "ContinuousPretrained"]
