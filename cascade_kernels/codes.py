"""Every number shared by the backends, defined once.

Method codes, the slots of the packed method parameters, status bits, Philox stream ids and dtype
codes. The Triton kernels import them from here; the C++ backend includes ``csrc/codes.h``, which
is generated from this module (``python -m cascade_kernels.codes > csrc/codes.h``) and checked
against it by ``tests/test_codes.py``.
"""
METHODS = {"exact": 0, "lantern": 1, "gsd": 2, "cascade": 3, "cool": 4}

# Packed method parameters (``methods.pack``): integer and float slots, by name.
# Slots appended after the first release (``gsd_group``, ``gsd_window``, ``gsd_embed_d2``) are read by the
# reference backend only; the compiled backends never see a method that sets them (``needs_reference``).
INT_PARAMS = ("n_neighbors", "lantern_pp", "gsd_G", "use_interchange", "use_convergence", "gsd_group", "gsd_window")
FLOAT_PARAMS = ("lantern_delta", "lantern_lam_m1", "gsd_dp", "tau_pos", "tau_seq", "cool_delta", "cool_nu",
                "cool_wmin", "gsd_embed_d2")
GSD_GROUPS = {"nearest": 0, "peer": 1}  # ``gsd_group`` values

# ``VerifyOutput.status`` bits (docs/CONTRACT.md §Status).
STATUS = {
    "OK": 0,
    "NONFINITE_TARGET": 1,  # a visited target row was not a distribution; the walk stopped there
    "EMPTY_RESIDUAL": 2,  # a residual lost all its mass; next_token = argmax of the original q_u
    "NONFINITE_DRAFT": 4,  # a visited drafter row was not finite; its children were not tried
    "BAD_TOKEN": 8,  # a drafted child of a visited node held an id outside [-1, V); its children were not tried
}

# Philox streams: ``uniform(seed, stream, index)`` = ``tl.rand(seed, index + (stream << 32))``.
STREAMS = {
    "ACCEPT": 0,  # one uniform per tree node: the acceptance U
    "SAMPLE": 1,  # one uniform per sequence and step: the inverse-CDF u of the final token
    "DRAFT": 2,  # the decode loop's sampled drafting, one per drafted node
    "CONT_ACCEPT": 3,  # verify_continuous (docs/CONTINUOUS.md): the acceptance U of draft token i
    "CONT_COMPONENT": 4,  # mixture component of residual proposal n
    "CONT_NORMAL": 5,  # Box-Muller uniforms of proposal n
    "CONT_RESIDUAL": 6,  # keep-or-refuse uniform of proposal n
}

# ``ContinuousVerifyOutput.status`` bits (docs/CONTINUOUS.md).
CONT_STATUS = {
    "NONFINITE": 1,  # a non-finite draft token / mixture parameter met by the walk, or a non-finite output
    "PROPOSALS_EXHAUSTED": 2,  # the residual sampler used max_proposals proposals without keeping one
}

# Element types the C++ backend reads.
DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}


def render_header() -> str:
    """The text of ``csrc/codes.h``."""
    lines = ["// Generated from cascade_kernels/codes.py by `python -m cascade_kernels.codes > csrc/codes.h`.",
             "// Do not edit: tests/test_codes.py checks that it matches.", "#pragma once", "#include <cstdint>", "",
             "namespace ck {", ""]

    def enum(name, prefix, table):
        lines.append(f"enum {name} : int32_t {{")
        lines.extend(f"    {prefix}{key.upper()} = {value}," for key, value in table.items())
        lines.extend(["};", ""])

    enum("MethodCode", "M_", METHODS)
    enum("IntParam", "IP_", {k: i for i, k in enumerate(INT_PARAMS)})
    lines.insert(-1, f"constexpr int N_INT_PARAMS = {len(INT_PARAMS)};")
    enum("FloatParam", "FP_", {k: i for i, k in enumerate(FLOAT_PARAMS)})
    lines.insert(-1, f"constexpr int N_FLOAT_PARAMS = {len(FLOAT_PARAMS)};")
    enum("StatusBit", "STATUS_", STATUS)
    enum("ContinuousStatusBit", "CONT_STATUS_", CONT_STATUS)
    enum("Stream", "STREAM_", STREAMS)
    enum("DType", "DT_", {"f32": DTYPES["float32"], "bf16": DTYPES["bfloat16"], "f16": DTYPES["float16"],
                          "f64": DTYPES["float64"]})
    lines.append("}  // namespace ck")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_header(), end="")
