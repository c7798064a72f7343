"""64x64 RGB crops from photos bundled with scikit-image, one class per photo (or group).

Split (documented, deterministic):
  * every source photo is resized so that its short side is ``SHORT_SIDE`` (=192) pixels;
  * the right-most ``HELDOUT_W`` (=80) columns of every resized photo are reserved for
    evaluation ("held-out region"); training crops are sampled only from columns
    ``[0, W - HELDOUT_W)``, so train and held-out pixels are disjoint;
  * held-out crops are a fixed grid in the held-out strip (x offsets 0 and 16, y stride 16),
    each also horizontally flipped -> fully deterministic, no RNG involved.
Training crops: uniformly random position inside the training region + random horizontal flip,
drawn from a seeded ``torch.Generator``.

Images are float tensors in [-1, 1], shape [B, 3, 64, 64].
"""
from __future__ import annotations

import functools

import numpy as np
import torch

SHORT_SIDE = 192
HELDOUT_W = 80
CROP = 64

# class id -> (name, list of skimage.data loaders). All of these load offline (bundled).
CLASSES = [
    ("astronaut", ["astronaut"]),
    ("coffee", ["coffee"]),
    ("chelsea", ["chelsea"]),
    ("rocket", ["rocket"]),
    ("hubble", ["hubble_deep_field"]),
    ("ihc", ["immunohistochemistry"]),
    ("retina", ["retina"]),
    ("texture", ["brick", "grass", "gravel"]),  # grayscale textures, replicated to RGB
]
NUM_CLASSES = len(CLASSES)
CLASS_NAMES = [c[0] for c in CLASSES]


def _load_photo(name: str) -> np.ndarray:
    import skimage.data as skd
    from skimage.transform import resize

    img = getattr(skd, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32) / 255.0
    h, w = img.shape[:2]
    s = SHORT_SIDE / min(h, w)
    nh, nw = max(SHORT_SIDE, round(h * s)), max(SHORT_SIDE, round(w * s))
    img = resize(img, (nh, nw), anti_aliasing=True, order=1)
    return np.ascontiguousarray(img.transpose(2, 0, 1) * 2.0 - 1.0, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def photos() -> list[list[torch.Tensor]]:
    """photos()[class_id] = list of [3, H, W] tensors in [-1, 1] (resized)."""
    return [[torch.from_numpy(_load_photo(n)) for n in names] for _, names in CLASSES]


def random_crops(n: int, generator: torch.Generator, class_ids: torch.Tensor | None = None):
    """n random training crops. Returns (images [n,3,64,64] float32, class_ids [n] int64)."""
    ph = photos()
    if class_ids is None:
        class_ids = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    out = torch.empty(n, 3, CROP, CROP)
    for i, c in enumerate(class_ids.tolist()):
        group = ph[c]
        img = group[int(torch.randint(0, len(group), (1,), generator=generator))]
        _, h, w = img.shape
        wt = w - HELDOUT_W
        y = int(torch.randint(0, h - CROP + 1, (1,), generator=generator))
        x = int(torch.randint(0, wt - CROP + 1, (1,), generator=generator))
        crop = img[:, y:y + CROP, x:x + CROP]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        out[i] = crop
    return out, class_ids.long()


@functools.lru_cache(maxsize=1)
def heldout_crops() -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic held-out crops from the reserved right strip of each photo.
    Returns (images [M,3,64,64], class_ids [M])."""
    ims, cls = [], []
    for c, group in enumerate(photos()):
        for img in group:
            _, h, w = img.shape
            x0 = w - HELDOUT_W
            for x in range(x0, w - CROP + 1, 16):
                for y in range(0, h - CROP + 1, 16):
                    crop = img[:, y:y + CROP, x:x + CROP]
                    ims += [crop, crop.flip(-1)]
                    cls += [c, c]
    return torch.stack(ims), torch.tensor(cls, dtype=torch.long)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> None:
    from PIL import Image

    arr = to_uint8(images)
    b, h, w, _ = arr.shape
    ncol = nrow
    nr = (b + ncol - 1) // ncol
    grid = np.full((nr * (h + 2) + 2, ncol * (w + 2) + 2, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = arr[i]
    Image.fromarray(grid).save(path, optimize=True)
