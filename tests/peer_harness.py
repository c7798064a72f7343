"""Test-only loader of the peers' released verification code, and a driver that runs it on our trees.

Nothing of the peers is in this repository: ``CK_PEERS_DIR`` names a directory holding their files,

    $CK_PEERS_DIR/LANTERN/models/ea_model_llamagen.py   jadohu/LANTERN @3a56e45 (EaModel.evaluate_posterior,
                                                        EaModel.evaluate_posterior_v1)
    $CK_PEERS_DIR/EAGLE/eagle/model/utils.py            SafeAILab/EAGLE main (EAGLE-2 evaluate_posterior)
    $CK_PEERS_DIR/EAGLE-1/eagle/model/utils.py          SafeAILab/EAGLE branch v1 (EAGLE-1 evaluate_posterior,
                                                        drafting without replacement)

e.g. ``git clone https://github.com/SafeAILab/EAGLE && git -C EAGLE worktree add ../EAGLE-1 v1``. Their
heavy imports (transformers, huggingface_hub, their model files) are replaced by empty stub modules while
the file is loaded; only the verification functions are called.
"""
import importlib.util
import inspect
import os
import random
import sys
import types
import typing

import numpy as np
import torch

PEERS_DIR = os.environ.get("CK_PEERS_DIR")


def peer_file(*parts):
    if not PEERS_DIR:
        return None
    path = os.path.join(PEERS_DIR, *parts)
    return path if os.path.isfile(path) else None


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__path__ = []  # importable as a package
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


class _Anything:
    def __init__(self, *a, **k):
        pass


def _load(path, pkg, modname, stubs):
    """Import ``path`` as ``pkg.modname`` with ``stubs`` in sys.modules only while it executes."""
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(f"{pkg}.{modname}", path)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = pkg
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def _transformers_stubs():
    lp = dict(LogitsProcessorList=_Anything, RepetitionPenaltyLogitsProcessor=_Anything,
              TemperatureLogitsWarper=_Anything, TopKLogitsWarper=_Anything, TopPLogitsWarper=_Anything)
    return {"transformers": _stub("transformers", AutoTokenizer=_Anything, PreTrainedModel=_Anything,
                                  PretrainedConfig=_Anything, AutoConfig=_Anything),
            "transformers.generation": _stub("transformers.generation"),
            "transformers.generation.logits_process": _stub("transformers.generation.logits_process", **lp),
            "huggingface_hub": _stub("huggingface_hub", hf_hub_download=_Anything)}


def load_eagle(which="EAGLE-1"):
    """EAGLE's eagle/model/utils.py as a module (None when CK_PEERS_DIR does not hold it)."""
    path = peer_file(which, "eagle", "model", "utils.py")
    if path is None:
        return None
    return _load(path, "ck_peer_" + which.replace("-", "_"), "utils", _transformers_stubs())


def load_lantern():
    """LANTERN's EaModel class from models/ea_model_llamagen.py (None when absent)."""
    path = peer_file("LANTERN", "models", "ea_model_llamagen.py")
    if path is None:
        return None
    pkg = "ck_peer_lantern"
    stubs = _transformers_stubs()
    stubs.update({
        pkg: _stub(pkg),
        f"{pkg}.kv_variants": _stub(f"{pkg}.kv_variants"),
        f"{pkg}.kv_variants.modeling_llamagen_kv": _stub(f"{pkg}.kv_variants.modeling_llamagen_kv",
                                                         LlamaForCausalLM=_Anything),
        f"{pkg}.drafters": _stub(f"{pkg}.drafters"),
        # `from .drafters.utils import *` gives the file its `random` and `Tuple`
        f"{pkg}.drafters.utils": _stub(f"{pkg}.drafters.utils", random=random, Tuple=typing.Tuple,
                                       List=typing.List, __all__=["random", "Tuple", "List"]),
        f"{pkg}.drafters.kv_cache": _stub(f"{pkg}.drafters.kv_cache", initialize_past_key_values=_Anything),
        f"{pkg}.drafters.cnets_llamagen": _stub(f"{pkg}.drafters.cnets_llamagen", Model=_Anything),
        f"{pkg}.drafters.choices": _stub(f"{pkg}.drafters.choices", naive_extend_57=[], mc_sim_7b_63=[],
                                         __all__=["naive_extend_57", "mc_sim_7b_63"]),
        f"{pkg}.configs": _stub(f"{pkg}.configs"),
        f"{pkg}.configs.configs": _stub(f"{pkg}.configs.configs", EConfig=_Anything),
    })
    return _load(path, pkg, "ea_model_llamagen", stubs).EaModel


def takes(fn, name):
    return name in inspect.signature(fn).parameters


# ------------------------------------------------------------------------------------------------
# our tree -> their buffers
# ------------------------------------------------------------------------------------------------
class PeerTree:
    """Their inputs for one tree: parents (ours, children in rank order), tokens [N] (root's at 0), target
    logits [N, V] and drafter probabilities [N, V] (per node, the row its children were drawn from)."""

    def __init__(self, parents, tokens, target_logits, draft_probs=None):
        self.parents, self.tokens = list(parents), [int(t) for t in tokens]
        N = len(parents)
        kids = [[] for _ in range(N)]
        for i in range(1, N):
            kids[parents[i]].append(i)
        self.kids = kids
        paths = []

        def walk(u, path):
            if not kids[u]:
                paths.append(path)
            for c in kids[u]:
                walk(c, path + [c])

        walk(0, [0])
        paths.sort()
        L = max(len(p) for p in paths)
        self.retrieve = torch.tensor([p + [-1] * (L - len(p)) for p in paths])  # [P, L] node ids
        tok = torch.tensor(self.tokens + [-1])
        self.candidates = tok[self.retrieve]  # -1 index -> the appended -1
        tl = torch.as_tensor(target_logits, dtype=torch.float32)
        self.logits = tl[self.retrieve.clamp(min=0)]  # [P, L, V]
        self.tree_candidates = torch.tensor(self.tokens).unsqueeze(0)
        if draft_probs is not None:
            dp = torch.as_tensor(draft_probs, dtype=torch.float32)
            P = self.retrieve.shape[0]
            self.op = [dp] * L  # op[i - 1][p_indices[j][i]] = the parent's drafter row
            self.p_indices = [[0] + [int(self.retrieve[j, i - 1]) if self.retrieve[j, i] >= 0 else 0
                                     for i in range(1, L)] for j in range(P)]
            self.b_indices, prob = [], torch.ones(P, L)
            for j in range(P):
                row = [[]]
                for i in range(1, L):
                    node = int(self.retrieve[j, i])
                    if node < 0:
                        row.append([])
                        continue
                    par = parents[node]
                    earlier = [s for s in kids[par] if s < node]
                    row.append(torch.tensor(earlier) if earlier else [])
                    # what their drafter's sample() stores: p(x) / (1 - mass of the earlier draws)
                    before = float(dp[par, [self.tokens[s] for s in earlier]].sum()) if earlier else 0.0
                    prob[j, i] = min(max(float(dp[par, self.tokens[node]]) / (1.0 - before), 0.0), 1.0)
                self.b_indices.append(row)
            self.cart_candidates_prob = prob

    def outcome(self, best, accept_length, sample_p):
        """(last accepted node, next token drawn from their sample_p)."""
        node = int(self.retrieve[int(best), int(accept_length)])
        return node, int(torch.multinomial(sample_p.float(), 1))


def identity_processor(_ids, logits):
    return logits


def run_peer(fn, tree: PeerTree, n: int, seed: int, kind: str, **kw):
    """Counts of (last node, next token) over ``n`` runs of the peer's evaluate_posterior."""
    random.seed(seed)
    torch.manual_seed(seed)
    V = tree.logits.shape[-1]
    counts = np.zeros(len(tree.parents) * V, dtype=np.int64)
    for _ in range(n):
        if kind == "eagle1":  # EAGLE-1 / LANTERN v1 signature
            best, acc, sp = fn(tree.logits, tree.candidates, identity_processor, tree.cart_candidates_prob, tree.op,
                               tree.p_indices, tree.tree_candidates, tree.b_indices, **kw)
        else:  # EAGLE-2 / LANTERN evaluate_posterior (deterministic drafting)
            best, acc, sp = fn(tree.logits, tree.candidates, identity_processor, **kw)
        node, y = tree.outcome(best, acc, sp)
        counts[node * V + y] += 1
    return counts


def two_sample_chi2(a: np.ndarray, b: np.ndarray, min_count: int = 10):
    """Pearson two-sample χ² (homogeneity) on count vectors; bins with a + b < min_count merged.

    Returns (stat, df, p_value)."""
    from scipy.stats import chi2

    na, nb = a.sum(), b.sum()
    big = (a + b) >= min_count
    A, B = list(a[big]), list(b[big])
    if (~big).any() and (a[~big].sum() + b[~big].sum()) > 0:
        A.append(a[~big].sum())
        B.append(b[~big].sum())
    A, B = np.array(A, dtype=np.float64), np.array(B, dtype=np.float64)
    k1, k2 = math_sqrt(nb / na), math_sqrt(na / nb)
    stat = float((((k1 * A - k2 * B) ** 2) / (A + B)).sum())
    df = max(1, len(A) - 1)
    return stat, df, float(chi2.sf(stat, df))


def math_sqrt(x):
    return float(np.sqrt(x))
