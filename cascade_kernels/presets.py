"""Named presets: each paper's verification configuration as one ``ck.presets.PRESETS`` entry.

A preset names the method and its thresholds, the draft tree, the sampling settings (top-k, top-p,
temperature, CFG) and the drafting mode, with the source of every number (docs/METHODS.md). Methods
that need model data take it when the preset is instantiated: LANTERN's neighbour table comes from the
codebook (``ck.lantern_neighbors``), GSD's group filter from the token embeddings.

    preset = ck.presets.get("cascade_llamagen")
    out = ck.generate(target, class_ids, drafter=drafter, **preset.generate_kwargs(V=V))

``top_k``: the papers use top-k 2000 on their codebooks (``paper_vocab``); ``generate_kwargs(V)`` scales
it to a codebook of ``V`` entries (``round(2000 * V / paper_vocab)``, at least 1), so a toy model keeps the
same fraction of the vocabulary. Pass ``scale_top_k=False`` for the paper's absolute value (capped at V).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

from .methods import GSD, Cascade, Cool, Exact, Lantern
from .trees import lantern_neighbors

LLAMAGEN_VOCAB = 16384  # LlamaGen's VQ codebook (jadohu/LANTERN top_16383_indices.npy)
CHAMELEON_VOCAB = 8192  # Lumina-mGPT / Anole (Chameleon VQGAN; top_8191_indices.npy)
JANUS_VOCAB = 16384  # Janus-Pro's image codebook


@dataclass(frozen=True)
class Preset:
    """One paper configuration. ``make_method(codebook)`` builds the method (``codebook [V, D]`` float, needed
    by LANTERN and GSD group="peer"; ignored by the others)."""

    name: str
    source: str  # where the numbers come from
    make_method: Callable[[Optional[torch.Tensor]], Any]
    tree: Any  # a ck.NAMED_TREES name or a ck.DynamicTree
    top_k: int = 2000
    paper_vocab: int = LLAMAGEN_VOCAB
    top_p: float = 1.0
    temperature: float = 1.0
    cfg_scale: Optional[float] = 3.0
    sampled_drafting: bool = True
    draft_sampling: str = "without_replacement"
    residual: str = "peer"
    eps: Optional[float] = None
    notes: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def method(self, codebook: Optional[torch.Tensor] = None):
        return self.make_method(codebook)

    def scaled_top_k(self, V: int, scale_top_k: bool = True) -> int:
        if not scale_top_k:
            return min(self.top_k, V)
        return max(1, min(V, int(round(self.top_k * V / self.paper_vocab))))

    def verify_kwargs(self, V: int, codebook: Optional[torch.Tensor] = None, scale_top_k: bool = True) -> dict:
        """Keyword arguments of ``ck.verify`` (the caller passes ``draft_logits`` when drafting is sampled)."""
        return dict(method=self.method(codebook), residual=self.residual, eps=self.eps,
                    temperature=self.temperature, top_k=self.scaled_top_k(V, scale_top_k), top_p=self.top_p,
                    cfg_scale=self.cfg_scale, draft_sampling=self.draft_sampling)

    def generate_kwargs(self, V: int, codebook: Optional[torch.Tensor] = None, scale_top_k: bool = True) -> dict:
        """Keyword arguments of ``ck.generate``."""
        kw = self.verify_kwargs(V, codebook, scale_top_k)
        tree = self.tree
        if tree == "dynamic":
            from .decode import DynamicTree

            tree = DynamicTree()
        kw.update(tree=tree, sampled_drafting=self.sampled_drafting)
        if not self.sampled_drafting:
            kw["draft_sampling"] = "iid"
        return kw


def _need(codebook, who):
    if codebook is None:
        raise ValueError(f"preset {who!r} needs codebook=[V, D] (the VQ codebook / token embeddings)")
    return codebook


def _lantern(k, delta=0.1, lam=None):
    def make(codebook):
        cb = _need(codebook, "lantern")
        return Lantern(lantern_neighbors(cb, min(k + 1, cb.shape[0] - 1)), k=k, delta=delta, lam=lam)
    return make


def _cascade(tau_pos, tau_seq):
    return lambda codebook: Cascade(tau_pos=tau_pos, tau_seq=tau_seq, eps=0.5)


_CASCADE_SRC = ("CASCADE (arXiv 2605.07230) §5.1 and App. D.2: (tau_pos, tau_seq), TVD budget 0.5 (Alg. 2), "
                "top-k 2000, top-p 1, temperature 1, CFG 3 (Janus-Pro 5), EAGLE-1 drafters, sampled drafting")
_TREE_NOTE = ("tree: the paper uses EAGLE-1's static tree mask; its exact choice list is not stated, so EAGLE-1's "
              "default mc_sim_7b_63 ('eagle') is assumed")

PRESETS: Dict[str, Preset] = {p.name: p for p in [
    Preset("cascade_llamagen", _CASCADE_SRC + "; LlamaGen-XL-Stage2", _cascade(0.85, 0.5), "eagle",
           paper_vocab=LLAMAGEN_VOCAB, notes=_TREE_NOTE),
    Preset("cascade_janus_pro", _CASCADE_SRC + "; JanusPro-7B (CFG 5)", _cascade(0.85, 0.5), "eagle",
           paper_vocab=JANUS_VOCAB, cfg_scale=5.0, notes=_TREE_NOTE),
    Preset("cascade_lumina_mgpt", _CASCADE_SRC + "; Lumina-mGPT-7B-768", _cascade(0.95, 0.925), "eagle",
           paper_vocab=CHAMELEON_VOCAB, notes=_TREE_NOTE),
    Preset("cascade_llamagen_eq4_drafter", _CASCADE_SRC + "; LlamaGen-XL-Stage2 with the Eq. 4 (CASCADE-trained) "
           "drafter, Table 2", _cascade(0.8, 0.5), "eagle", paper_vocab=LLAMAGEN_VOCAB, notes=_TREE_NOTE),
    Preset("lantern", "jadohu/LANTERN @3a56e45 entrypoints/generate_images.py defaults: --lantern_k 1000 "
           "--lantern_delta 0.1, top-k 2000, top-p 1, temperature 1, CFG 3; EAGLE-2 dynamic tree, deterministic "
           "(top-k) drafting, evaluate_posterior", _lantern(1000, delta=0.1),
           "dynamic", sampled_drafting=False, draft_sampling="iid",
           notes="tree: LANTERN drafts an EAGLE-2 dynamic tree; 'dynamic' becomes ck.DynamicTree() (our "
                 "defaults) in generate_kwargs: set total_tokens / depth / top_k as your drafter was run"),
    Preset("lantern_pp", "jadohu/LANTERN @3a56e45: --static_tree, --lantern_delta = lambda (2 assumed), k = 10 "
           "(LANTERN++), EAGLE-1 static tree (generate default naive_extend_57), sampled drafting without "
           "replacement, evaluate_posterior_v1", _lantern(10, lam=2.0), "lantern_naive_extend_57",
           notes="lambda: the LANTERN++ paper sweeps it; 2.0 is our default, not a published single value"),
    Preset("gsd_peer", "junhyukso/GSD @4216c7c: +-7 rank window, |dq| < 0.15, embedding sq. distance < 0.5, "
           "min(1, q(G)/p(G)), standard residual; applied to drafter trees as CASCADE did (top-k 2000, CFG 3)",
           lambda codebook: GSD(group="peer", embeddings=_need(codebook, "gsd_peer")), "eagle", draft_sampling="iid",
           notes="GSD itself is Jacobi decoding (a chain); the tree and drafter here are CASCADE's comparison setup"),
    Preset("gsd_cascade_paper", "CASCADE App. D.2: GSD with G=25 (our 'nearest' group rule), top-k 2000, CFG 3",
           lambda codebook: GSD(G=25), "eagle", residual="standard", notes=_TREE_NOTE),
    Preset("cool_sd", "COOL-SD (arXiv 2601.09212): omega_i = delta exp(-nu i - mu), nu = 0.7, delta = 2 "
           "(paper also uses 1.1), no clamp (w_min = 0), resampling G*; LANTERN++'s setup (static tree, sampled "
           "drafting without replacement)", lambda codebook: Cool(delta=2.0, nu=0.7, mu=0.0, w_min=0.0),
           "lantern_naive_extend_57", notes="mu: not stated in the issue's summary; 0 assumed"),
    Preset("eagle1_exact", "EAGLE-1 (SafeAILab/EAGLE v1 branch): lossless, mc_sim_7b_63, sampled drafting without "
           "replacement", lambda codebook: Exact(), "eagle", cfg_scale=3.0),
]}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def names():
    return sorted(PRESETS)


__all__ = ["Preset", "PRESETS", "get", "names"]
