"""Shipped weights: fp16 state dicts in cascade_lab/weights/, sha256 in checksums.json."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import torch

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
CHECKSUMS = "checksums.json"
TRAINING_LOG = "training_log.json"
DEFAULT_RUN_DIR = os.environ.get(
    "CASCADE_LAB_RUNS", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "runs")))


class WeightsError(RuntimeError):
    """A shipped weight file is missing, corrupt (checksum mismatch) or unreadable."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path, default):
    if os.path.exists(path):
        with open(path) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as exc:
                raise WeightsError(f"{path} is not valid JSON ({exc}); restore it from the repository") from exc
    return default


def save_weights(name: str, state_dict: dict, config: dict, weights_dir: str = WEIGHTS_DIR) -> str:
    """Save {config, state (fp16 floats)} to weights_dir/name and record its sha256."""
    os.makedirs(weights_dir, exist_ok=True)
    sd = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().contiguous()
          for k, v in state_dict.items()}
    path = os.path.join(weights_dir, name)
    torch.save({"config": config, "state": sd}, path)
    sums = _read_json(os.path.join(weights_dir, CHECKSUMS), {})
    sums[name] = sha256_file(path)
    with open(os.path.join(weights_dir, CHECKSUMS), "w") as f:
        json.dump(dict(sorted(sums.items())), f, indent=2)
    return path


def load_weights(name: str, weights_dir: str = WEIGHTS_DIR) -> dict:
    """Verify the checksum of weights_dir/name and return {config, state (float32)}.
    Raises WeightsError naming the file when it is missing, unlisted or corrupt."""
    path = os.path.join(weights_dir, name)
    if not os.path.exists(path):
        raise WeightsError(f"weight file missing: {path}")
    sums = _read_json(os.path.join(weights_dir, CHECKSUMS), None)
    if sums is None or name not in sums:
        raise WeightsError(f"no checksum recorded for {path} in {os.path.join(weights_dir, CHECKSUMS)}")
    got = sha256_file(path)
    if got != sums[name]:
        raise WeightsError(f"checksum mismatch for {path}: expected sha256 {sums[name]}, got {got} "
                           "(file corrupt or replaced; re-run the training script or restore it)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pragma: no cover
        raise WeightsError(f"cannot read weight file {path}: {e}") from e
    obj["state"] = {k: (v.float() if v.is_floating_point() else v) for k, v in obj["state"].items()}
    return obj


def record_training(component: str, entry: dict, weights_dir: str = WEIGHTS_DIR) -> None:
    """Append/replace the component's entry in weights/training_log.json."""
    path = os.path.join(weights_dir, TRAINING_LOG)
    log = _read_json(path, {})
    entry = dict(entry)
    entry.setdefault("command", "python -m " + " ".join([f"cascade_lab.{component_script(component)}"] + sys.argv[1:]))
    entry.setdefault("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    entry.setdefault("torch", torch.__version__)
    log[component] = _no_nan(entry)
    with open(path, "w") as f:
        json.dump(log, f, indent=2)


def _no_nan(x):
    """JSON-safe: NaN/inf floats -> None (recursively)."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def component_script(component: str) -> str:
    return {"vq": "train_vq", "target": "train_target", "drafter": "train_drafter",
            "classifier": "train_classifier", "drafter_eagle": "train_drafter", "drafter_eq4": "train_drafter",
            "cvae": "train_cvae", "ctarget": "train_ctarget", "cdrafter": "train_cdrafter"}.get(component, component)
