// Generated from cascade_kernels/codes.py by `python -m cascade_kernels.codes > csrc/codes.h`.
// Do not edit: tests/test_codes.py checks that it matches.
#pragma once
#include <cstdint>

namespace ck {

enum MethodCode : int32_t {
    M_EXACT = 0,
    M_LANTERN = 1,
    M_GSD = 2,
    M_CASCADE = 3,
    M_COOL = 4,
};

enum IntParam : int32_t {
    IP_N_NEIGHBORS = 0,
    IP_LANTERN_PP = 1,
    IP_GSD_G = 2,
    IP_USE_INTERCHANGE = 3,
    IP_USE_CONVERGENCE = 4,
    IP_GSD_GROUP = 5,
    IP_GSD_WINDOW = 6,
};
constexpr int N_INT_PARAMS = 7;

enum FloatParam : int32_t {
    FP_LANTERN_DELTA = 0,
    FP_LANTERN_LAM_M1 = 1,
    FP_GSD_DP = 2,
    FP_TAU_POS = 3,
    FP_TAU_SEQ = 4,
    FP_COOL_DELTA = 5,
    FP_COOL_NU = 6,
    FP_COOL_WMIN = 7,
    FP_GSD_EMBED_D2 = 8,
};
constexpr int N_FLOAT_PARAMS = 9;

enum StatusBit : int32_t {
    STATUS_OK = 0,
    STATUS_NONFINITE_TARGET = 1,
    STATUS_EMPTY_RESIDUAL = 2,
    STATUS_NONFINITE_DRAFT = 4,
    STATUS_BAD_TOKEN = 8,
};

enum ContinuousStatusBit : int32_t {
    CONT_STATUS_NONFINITE = 1,
    CONT_STATUS_PROPOSALS_EXHAUSTED = 2,
};

enum Stream : int32_t {
    STREAM_ACCEPT = 0,
    STREAM_SAMPLE = 1,
    STREAM_DRAFT = 2,
    STREAM_CONT_ACCEPT = 3,
    STREAM_CONT_COMPONENT = 4,
    STREAM_CONT_NORMAL = 5,
    STREAM_CONT_RESIDUAL = 6,
};

enum DType : int32_t {
    DT_F32 = 0,
    DT_BF16 = 1,
    DT_F16 = 2,
    DT_F64 = 3,
};

}  // namespace ck
