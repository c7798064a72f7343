"""Procedural 64x64 RGB scenes: one object of ten classes (six shapes, four glyphs) on a random background.

Every image is generated, so the model cannot memorise a handful of photos:
  * the object: a class template (shapes drawn with PIL; glyphs rendered in ``len(GLYPH_FONTS)``
    fonts that ship with matplotlib) placed by a random affine map (scale drawn from the style's range,
    rotation, aspect, shear, position), filled with a random colour chosen to contrast with the
    background under it, with a soft shading gradient;
  * the background: with the style's probability a random crop of a scikit-image sample photo
    (random zoom, flip, colour/brightness jitter, partial desaturation), otherwise a two-colour
    linear gradient with low-frequency noise.

Two styles (``STYLES``): ``"object"`` (the default; the discrete stack's data) draws large objects on
mostly plain backgrounds, so the object, hence the class, is most of what an AR model must predict;
``"photo"`` (the first data of the lab; the continuous stack's) puts smaller objects on photos 60 % of the
time, where the photos' texture dominates an AR model's loss and a short training run ignores the class.

Split (documented, deterministic): photos are resized to short side ``SHORT_SIDE`` (=192) pixels;
training backgrounds come only from columns ``[0, W - HELDOUT_W)`` of each photo, held-out
backgrounds only from the right-most ``HELDOUT_W`` (=80) columns. Held-out images are
``HELDOUT_PER_CLASS`` per class drawn from a fixed seed (``HELDOUT_SEED``) that no training run
uses; training images come from the caller's seeded ``torch.Generator``.

Images are float tensors in [-1, 1], shape [B, 3, 64, 64].
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SHORT_SIDE = 192
HELDOUT_W = 80
CROP = 64
HELDOUT_SEED = 987_654_321
HELDOUT_PER_CLASS = 50
TEMPLATE = 128  # template resolution (pixels)



@dataclass(frozen=True)
class SceneStyle:
    photo_bg: float  # probability of a photo background (else a gradient)
    scale: tuple[float, float]  # object size range, as a fraction of the image side


STYLES = {"object": SceneStyle(photo_bg=0.15, scale=(0.55, 0.90)), "photo": SceneStyle(photo_bg=0.6, scale=(0.42, 0.80))}
DEFAULT_STYLE = "object"

SHAPES = ["circle", "square", "triangle", "star", "ring", "plus"]
GLYPHS = ["A", "G", "K", "7"]
CLASS_NAMES = SHAPES + GLYPHS
NUM_CLASSES = len(CLASS_NAMES)
GLYPH_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf"]
BACKGROUND_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                     "retina", "brick", "grass", "gravel", "coins", "moon", "page", "camera"]


def _shape_template(name: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    s = TEMPLATE
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    c, r = s / 2, s * 0.46
    if name == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif name == "square":
        q = r * 0.86
        d.rectangle([c - q, c - q, c + q, c + q], fill=255)
    elif name == "triangle":
        d.polygon([(c + r * math.cos(a), c + r * math.sin(a) + 0.12 * r)
                   for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], fill=255)
    elif name == "star":
        pts = [(c + (r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                c + (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=255)
    elif name == "ring":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
        q = r * 0.55
        d.ellipse([c - q, c - q, c + q, c + q], fill=0)
    elif name == "plus":
        w = r * 0.34
        d.rectangle([c - r, c - w, c + r, c + w], fill=255)
        d.rectangle([c - w, c - r, c + w, c + r], fill=255)
    else:  # pragma: no cover - CLASS_NAMES is fixed
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(im, np.float32) / 255.0


def _glyph_template(char: str, font_file: str) -> np.ndarray:
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", font_file)
    font = ImageFont.truetype(path, 200)
    im = Image.new("L", (320, 320), 0)
    ImageDraw.Draw(im).text((40, 20), char, font=font, fill=255)
    box = im.getbbox()
    if box is None:  # pragma: no cover - the fonts above contain these glyphs
        raise ValueError(f"font {font_file} has no glyph {char!r}")
    g = im.crop(box)
    side = TEMPLATE * 0.92
    k = side / max(g.size)
    g = g.resize((max(1, round(g.size[0] * k)), max(1, round(g.size[1] * k))), Image.BILINEAR)
    out = Image.new("L", (TEMPLATE, TEMPLATE), 0)
    out.paste(g, ((TEMPLATE - g.size[0]) // 2, (TEMPLATE - g.size[1]) // 2))
    return np.asarray(out, np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def templates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masks [M, 1, T, T] in [0, 1], first index per class [C], count per class [C])."""
    masks, first, count = [], [], []
    for name in CLASS_NAMES:
        first.append(len(masks))
        if name in SHAPES:
            masks.append(_shape_template(name))
        else:
            masks += [_glyph_template(name, f) for f in GLYPH_FONTS]
        count.append(len(masks) - first[-1])
    return (torch.from_numpy(np.stack(masks))[:, None], torch.tensor(first), torch.tensor(count))


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
def photos() -> list[torch.Tensor]:
    """Background photos, [3, H, W] tensors in [-1, 1] (short side SHORT_SIDE)."""
    return [torch.from_numpy(_load_photo(n)) for n in BACKGROUND_PHOTOS]


def _rand(n, generator, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def background_window(h: int, w: int, u: list[float], heldout: bool) -> tuple[int, int, int]:
    """(y, x, size) of a square background window in an h x w photo from three uniforms ``u``: inside
    the held-out strip (the right-most HELDOUT_W columns) when ``heldout``, else left of it."""
    x_lo, x_hi = (w - HELDOUT_W, w) if heldout else (0, w - HELDOUT_W)
    size = int(CROP + u[0] * (min(HELDOUT_W, x_hi - x_lo, h) - CROP))  # zoom 1x .. 1.25x
    return int(u[1] * (h - size)), x_lo + int(u[2] * (x_hi - x_lo - size)), size


def _photo_backgrounds(n: int, generator: torch.Generator, heldout: bool) -> torch.Tensor:
    ph = photos()
    out = torch.empty(n, 3, CROP, CROP)
    pick = torch.randint(0, len(ph), (n,), generator=generator).tolist()
    u = torch.rand(n, 4, generator=generator).tolist()
    for i in range(n):
        img = ph[pick[i]]
        y, x, size = background_window(img.shape[1], img.shape[2], u[i], heldout)
        crop = img[None, :, y:y + size, x:x + size]
        if size != CROP:
            crop = F.interpolate(crop, size=(CROP, CROP), mode="bilinear", align_corners=False, antialias=True)
        out[i] = crop[0].flip(-1) if u[i][3] < 0.5 else crop[0]
    grey = out.mean(1, keepdim=True)
    sat = _rand(n, generator, 0.3, 1.0).view(n, 1, 1, 1)
    gain = _rand(n, generator, 0.6, 1.1).view(n, 1, 1, 1)
    tint = 0.25 * torch.randn(n, 3, 1, 1, generator=generator)
    return ((grey + sat * (out - grey)) * gain + tint).clamp(-1, 1)


def _gradient_backgrounds(n: int, generator: torch.Generator) -> torch.Tensor:
    c0 = _rand((n, 3, 1, 1), generator, -1, 1)
    c1 = _rand((n, 3, 1, 1), generator, -1, 1)
    ang = _rand(n, generator, 0, 2 * math.pi)
    lin = torch.linspace(-1, 1, CROP)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    t = (xx[None] * ang.cos().view(n, 1, 1) + yy[None] * ang.sin().view(n, 1, 1)) * 0.5 + 0.5
    noise = F.interpolate(torch.randn(n, 3, 4, 4, generator=generator), size=(CROP, CROP), mode="bicubic",
                          align_corners=False)
    return (c0 + (c1 - c0) * t[:, None] + 0.12 * noise).clamp(-1, 1)


def scene_style(style: str) -> SceneStyle:
    if style not in STYLES:
        raise ValueError(f"style: unknown scene style {style!r}; known: {sorted(STYLES)}")
    return STYLES[style]


def render(class_ids: torch.Tensor, generator: torch.Generator, heldout: bool = False,
           style: str = DEFAULT_STYLE) -> torch.Tensor:
    """One random scene per class id -> images [n, 3, 64, 64] in [-1, 1]."""
    st = scene_style(style)
    n = len(class_ids)
    masks, first, count = templates()
    variant = first[class_ids] + (torch.rand(n, generator=generator) * count[class_ids]).long()
    # object affine map (output coords -> template coords), in normalised [-1, 1] units
    scale = _rand(n, generator, *st.scale)
    aspect = _rand(n, generator, 0.85, 1.15)
    is_glyph = class_ids >= len(SHAPES)
    rot = _rand(n, generator, -1, 1) * torch.where(is_glyph, 0.35, math.pi)
    shear = _rand(n, generator, -0.15, 0.15)
    cx = _rand(n, generator, -1, 1) * (1 - scale) * 0.9
    cy = _rand(n, generator, -1, 1) * (1 - scale) * 0.9
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    cos, sin = rot.cos(), rot.sin()
    # forward map template->image: A = R @ [[sx, shear*sx],[0, sy]]; grid needs its inverse
    a = torch.stack([torch.stack([cos * sx, cos * shear * sx - sin * sy], -1),
                     torch.stack([sin * sx, sin * shear * sx + cos * sy], -1)], -2)
    inv = torch.linalg.inv(a)
    theta = torch.cat([inv, -(inv @ torch.stack([cx, cy], -1)[..., None])], -1)
    grid = F.affine_grid(theta, (n, 1, CROP, CROP), align_corners=False)
    m = F.grid_sample(masks[variant], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    photo = torch.rand(n, generator=generator) < st.photo_bg
    bg = _gradient_backgrounds(n, generator)
    k = int(photo.sum())
    if k:
        bg[photo] = _photo_backgrounds(k, generator, heldout)
    # foreground colour contrasting with the background under the object
    under = (bg * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-3)  # [n, 3]
    fg = _rand((n, 3), generator, -1, 1)
    lum = lambda c: c @ torch.tensor([0.299, 0.587, 0.114])  # noqa: E731
    weak = (lum(fg) - lum(under)).abs() < 0.7
    fg = torch.where(weak[:, None], (fg - lum(fg)[:, None] - 0.8 * lum(under).sign()[:, None]).clamp(-1, 1), fg)
    shade = 1 + 0.15 * (grid[..., 0] * _rand(n, generator, -1, 1).view(n, 1, 1)
                        + grid[..., 1] * _rand(n, generator, -1, 1).view(n, 1, 1))
    fg_img = (fg[:, :, None, None] * shade[:, None]).clamp(-1, 1)
    return bg * (1 - m) + fg_img * m


def random_crops(n: int, generator: torch.Generator, class_ids: torch.Tensor | None = None,
                 style: str = DEFAULT_STYLE):
    """n random training images. Returns (images [n,3,64,64] float32, class_ids [n] int64)."""
    if class_ids is None:
        class_ids = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    class_ids = class_ids.long()
    return render(class_ids, generator, style=style), class_ids


@functools.lru_cache(maxsize=len(STYLES))
def heldout_crops(style: str = DEFAULT_STYLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic held-out images (HELDOUT_PER_CLASS per class, backgrounds from the held-out
    photo strips, seed HELDOUT_SEED). Returns (images [M,3,64,64], class_ids [M])."""
    cls = torch.arange(NUM_CLASSES).repeat_interleave(HELDOUT_PER_CLASS)
    return render(cls, torch.Generator().manual_seed(HELDOUT_SEED), heldout=True, style=style), cls


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path: str, nrow: int = 8, row_labels: list[str] | None = None,
              scale: int = 2) -> None:
    """Save images as a grid PNG, nrow images per row, upscaled by ``scale`` (nearest);
    ``row_labels[r]`` (e.g. the class name) is written at the left of row r."""
    from PIL import Image, ImageDraw

    arr = to_uint8(images)
    if scale > 1:
        arr = arr.repeat(scale, 1).repeat(scale, 2)
    b, h, w, _ = arr.shape
    nr = (b + nrow - 1) // nrow
    left = 76 if row_labels else 0
    grid = np.full((nr * (h + 2) + 2, left + nrow * (w + 2) + 2, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, left + 2 + c * (w + 2): left + 2 + c * (w + 2) + w] = arr[i]
    im = Image.fromarray(grid)
    if row_labels:
        d = ImageDraw.Draw(im)
        for r, label in enumerate(row_labels[:nr]):
            d.text((4, 2 + r * (h + 2) + h // 2 - 6), str(label), fill=(0, 0, 0))
    im.save(path, optimize=True)
