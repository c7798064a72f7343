"""``ck.verify``: check once at the boundary, then one backend writes the outputs.

Backends (``reference.py``, ``cpu.py``, ``triton.py`` beside this file) expose ``verify(args, out)``:
``args`` is a :class:`~cascade_kernels.types.VerifyArgs`, ``out`` a :class:`VerifyOutput` of
caller-visible tensors that they fill in place. Under ``torch.compile`` the call goes through the
``cascade_kernels::verify`` custom op (``torch.library``), whose fake implementation gives the output
shapes, so a compiled decode step has no graph break. Once the C++ backend serves CPU tensors, an eager
call first tries its whole-call entry (``_C.verify_call``, see ``cpu.py``): it takes arguments already in the
normal form that the checks below produce and hands anything else back to them. It is not tried while
TorchDynamo traces the call (``torch.compiler.is_dynamo_compiling``: one frame returning False in eager mode;
under non-strict ``torch.export`` the entry declines fake tensors).
"""
from typing import List, Optional, Tuple

import torch

from ... import _backend
from ...methods import Exact, PackedMethod, host_params
from ...trees import Tree, prepare_tree
from ...types import VerifyArgs, VerifyOutput
from ...validation import check_verify_inputs, check_verify_values, needs_reference

CHECKS = ("fast", "full")
_is_compiling = torch.compiler.is_compiling
_is_dynamo_compiling = getattr(torch.compiler, "is_dynamo_compiling", _is_compiling)  # (torch < 2.3: the latter)


def verify(tokens, parents, target_logits, *, method=Exact(), draft_logits=None, hidden=None,
           residual="transport", eps=None, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=None, seed=0,
           backend="auto", check="fast", out: Optional[VerifyOutput] = None,
           draft_sampling="iid") -> VerifyOutput:
    """Verify a batch of draft trees against the target (docs/CONTRACT.md §2-6).

    tokens [B,N] int64; parents: a ``ck.Tree`` (``ck.prepare_tree``), or [N] / [B,N] ints (prepared
    and cached); target_logits [B,N,V] (or [2B,N,V] with ``cfg_scale``); ``draft_logits`` [B,N,V]
    switches to sampled drafting; ``draft_sampling`` says how a node's children were drawn from its
    drafter row: ``"iid"`` (default) or ``"without_replacement"`` (EAGLE-1 / LANTERN++: each child from the
    drafter distribution with the earlier siblings removed and renormalised). ``residual``: "transport"
    (default), "standard" or "peer" (each method's released code / paper; docs/METHODS.md). "peer",
    "without_replacement", ``ck.GSD(group="peer")`` and ``ck.Cool(w_min < 1)`` are reference-only this
    round: ``backend="auto"`` routes them to it. ``hidden`` [B,N,D] feeds ck.Cascade. ``seed``: an int or an int64
    tensor [B] (or [1]) on the logits' device (CUDA-graph friendly). ``check="full"`` adds eager,
    synchronising value checks that raise instead of setting ``status``. ``out``: a ``VerifyOutput``
    of preallocated tensors to write into (accepted_nodes must be [B, tree.max_depth + 1]).
    Returns accept_len [B], accepted_nodes [B, L] (root first, -1 padded), next_token [B], tvd [B],
    status [B] (``ck.STATUS_*`` bits) and the backend used.
    """
    if check == "fast" and backend.__class__ is str and not _is_dynamo_compiling():
        hit = _backend._resolved.get(("verify", backend, "cpu"))
        if hit is not None and hit[0] == "cpu":  # the C++ backend serves CPU tensors: its whole-call entry
            res = hit[1].call(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                              temperature, top_k, top_p, cfg_scale, seed, out, draft_sampling)
            if res is not None:
                return res
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if _is_compiling():
        if out is not None or check == "full":
            raise ValueError("under torch.compile, out= and check='full' are not available (the custom op "
                             "returns fresh outputs; a value check would synchronise)")
        return _verify_compiled(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                                temperature, top_k, top_p, cfg_scale, seed, backend, draft_sampling)
    args = check_verify_inputs(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                               temperature, top_k, top_p, cfg_scale, seed, draft_sampling)
    if check == "full":
        check_verify_values(args)
    name, impl = _backend.resolve("verify", backend, args.target_logits.device, needs_reference(args))
    out = _outputs(args, out, name)
    impl(args, out)
    return out


def _outputs(args: VerifyArgs, out: Optional[VerifyOutput], backend: str = "reference") -> VerifyOutput:
    B = args.tokens.shape[0]
    L = args.tree.max_depth + 1
    dev = args.target_logits.device
    if out is None:  # every backend writes every output whole (accepted_nodes: -1 after the path)
        return VerifyOutput.empty(B, L, dev, backend)
    if not isinstance(out, VerifyOutput):
        raise TypeError(f"out must be a ck.VerifyOutput (e.g. ck.VerifyOutput.empty(B, L, device)), "
                        f"got {type(out).__name__}")
    _check_out(out.accept_len, "accept_len", (B,), torch.int32, dev)
    _check_out(out.accepted_nodes, "accepted_nodes", (B, L), torch.int32, dev)
    _check_out(out.next_token, "next_token", (B,), torch.int64, dev)
    _check_out(out.tvd, "tvd", (B,), torch.float32, dev)
    _check_out(out.status, "status", (B,), torch.int32, dev)
    _check_out_separate(args, out)
    return VerifyOutput(*out[:5], backend)


def _check_out_separate(args: VerifyArgs, out: VerifyOutput) -> None:
    """The outputs must not share memory with each other or with an input (every tensor here is contiguous)."""
    outs = [(f"out.{f}", getattr(out, f)) for f in ("accept_len", "accepted_nodes", "next_token", "tvd", "status")]
    ins = [(n, t) for n, t in (("tokens", args.tokens), ("target_logits", args.target_logits),
                               ("draft_logits", args.draft_logits), ("hidden", args.hidden), ("seed", args.seed))
           if t is not None and t.numel()]
    spans = [(n, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for n, t in outs + ins]
    for i, (a, lo, hi) in enumerate(spans[:len(outs)]):
        for b, lo2, hi2 in spans[i + 1:]:
            if lo < hi2 and lo2 < hi:
                raise ValueError(f"{a} shares memory with {b}: the out= tensors must not overlap each other or "
                                 f"the inputs")


def _check_out(t, field: str, shape, dtype, dev) -> None:
    if not isinstance(t, torch.Tensor) or t.shape != shape or t.dtype != dtype or t.device != dev \
            or not t.is_contiguous() or t.requires_grad or t.is_neg():
        raise ValueError(f"out.{field} must be a contiguous {dtype} tensor of shape {shape} on {dev} "
                         f"(not requiring grad, not a negated view)")


# ------------------------------------------------------------------------------------------------
# torch.library custom op (used under torch.compile)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("cascade_kernels::verify", mutates_args=())
def _verify_op(tokens: torch.Tensor, parents: torch.Tensor, target_logits: torch.Tensor,
               draft_logits: Optional[torch.Tensor], hidden: Optional[torch.Tensor],
               neighbors: Optional[torch.Tensor], method_code: int, iparams: List[int], fparams: List[float],
               transport: bool, eps: float, temperature: float, top_k: int, top_p: float,
               cfg_scale: Optional[float], seed: torch.Tensor, max_depth: int,
               backend: str, residual: str, draft_sampling: str, peer_neighbors: Optional[torch.Tensor],
               embeddings: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    tree = prepare_tree(parents, device=target_logits.device)
    ip, fp = tuple(iparams), tuple(fparams)
    packed = PackedMethod(method_code, ip, fp, neighbors, host_params(method_code, ip, fp), peer_neighbors, embeddings)
    args = VerifyArgs(tokens, tree, target_logits, draft_logits, hidden, packed, transport, eps, temperature, top_k,
                      top_p, cfg_scale, seed, residual, draft_sampling)
    _, impl = _backend.resolve("verify", backend, target_logits.device, needs_reference(args))
    out = _outputs(args, None)
    impl(args, out)
    return tuple(t.clone() for t in out[:5])  # custom ops may not return views of their inputs


@_verify_op.register_fake
def _(tokens, parents, target_logits, draft_logits, hidden, neighbors, method_code, iparams, fparams, transport,
      eps, temperature, top_k, top_p, cfg_scale, seed, max_depth, backend, residual, draft_sampling, peer_neighbors,
      embeddings):
    B = tokens.shape[0]
    new = target_logits.new_empty
    return (new((B,), dtype=torch.int32), new((B, max_depth + 1), dtype=torch.int32), new((B,), dtype=torch.int64),
            new((B,), dtype=torch.float32), new((B,), dtype=torch.int32))


def _verify_compiled(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature,
                     top_k, top_p, cfg_scale, seed, backend, draft_sampling="iid") -> VerifyOutput:
    """The traced path: shape checks run at trace time, the work runs in the custom op."""
    if not isinstance(parents, Tree):
        raise TypeError("under torch.compile, pass parents as a ck.prepare_tree(...) result (its depth must be "
                        "known when the graph is traced)")
    args = check_verify_inputs(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                               temperature, top_k, top_p, cfg_scale, seed, draft_sampling)
    _backend.resolve("verify", backend, args.target_logits.device, needs_reference(args))  # reject at trace time
    m = args.method
    res = _verify_op(args.tokens, args.tree.parents, args.target_logits, args.draft_logits, args.hidden, m.neighbors,
                     m.code, list(m.iparams), list(m.fparams), args.transport, args.eps, args.temperature,
                     args.top_k, args.top_p, args.cfg_scale, args.seed, args.tree.max_depth, backend, args.residual,
                     args.draft_sampling, m.peer_neighbors, m.embeddings)
    return VerifyOutput(*res, backend=backend)
