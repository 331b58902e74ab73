// cuDNN through the backend (graph) API, engine configs from heuristic mode A then FALLBACK: BF16 fused attention as one
// unified SDPA_FWD operation (cuDNN >= 9.13) and FP8 fused attention as the composite graph of matmuls, pointwise ops
// and reductions its engines match, both over Q, K, V, O in the [B, L, H, D] layout with a by-value fp32 scale; NHWC
// convolutions with a fused epilogue.
#include "CKilnCUDA.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Values from cuDNN 9's cudnn_graph.h.
enum {
    DNN_DATA_FLOAT = 0, DNN_DATA_BFLOAT16 = 9, DNN_DATA_FP8_E4M3 = 12,
    DNN_TYPE_HANDLE = 0, DNN_TYPE_DATA_TYPE = 1, DNN_TYPE_BOOLEAN = 2, DNN_TYPE_INT64 = 3, DNN_TYPE_VOID_PTR = 6,
    DNN_TYPE_HEUR_MODE = 8, DNN_TYPE_BACKEND_DESCRIPTOR = 15, DNN_TYPE_CHAR = 24,
    DNN_ENGINECFG = 3, DNN_ENGINEHEUR = 4, DNN_EXECUTION_PLAN = 5, DNN_OPERATIONGRAPH = 15, DNN_VARIANT_PACK = 16,
    DNN_TENSOR = 17, DNN_OPERATION_SDPA_FWD = 41,
    DNN_ATTR_ENGINEHEUR_MODE = 200, DNN_ATTR_ENGINEHEUR_OPERATION_GRAPH = 201, DNN_ATTR_ENGINEHEUR_RESULTS = 202,
    DNN_ATTR_EXECUTION_PLAN_HANDLE = 400, DNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG = 401,
    DNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE = 402, DNN_ATTR_EXECUTION_PLAN_JSON = 405,
    DNN_ATTR_OPERATIONGRAPH_HANDLE = 800, DNN_ATTR_OPERATIONGRAPH_OPS = 801,
    DNN_ATTR_TENSOR_BYTE_ALIGNMENT = 900, DNN_ATTR_TENSOR_DATA_TYPE = 901, DNN_ATTR_TENSOR_DIMENSIONS = 902,
    DNN_ATTR_TENSOR_STRIDES = 903, DNN_ATTR_TENSOR_UNIQUE_ID = 906, DNN_ATTR_TENSOR_IS_VIRTUAL = 907,
    DNN_ATTR_TENSOR_IS_BY_VALUE = 908,
    DNN_ATTR_VARIANT_PACK_UNIQUE_IDS = 1000, DNN_ATTR_VARIANT_PACK_DATA_POINTERS = 1001, DNN_ATTR_VARIANT_PACK_WORKSPACE = 1003,
    DNN_ATTR_SDPA_FWD_Q = 2800, DNN_ATTR_SDPA_FWD_K = 2801, DNN_ATTR_SDPA_FWD_V = 2802, DNN_ATTR_SDPA_FWD_O = 2803,
    DNN_ATTR_SDPA_FWD_SCALE = 2805,
    DNN_HEUR_MODE_FALLBACK = 2, DNN_HEUR_MODE_A = 3,
    DNN_TYPE_REDUCTION_OPERATOR = 18,
    DNN_MATMUL = 18, DNN_OPERATION_MATMUL = 19, DNN_REDUCTION = 21, DNN_OPERATION_REDUCTION = 22,
    DNN_ATTR_MATMUL_COMP_TYPE = 1500, DNN_ATTR_OPERATION_MATMUL_ADESC = 1520, DNN_ATTR_OPERATION_MATMUL_BDESC = 1521,
    DNN_ATTR_OPERATION_MATMUL_CDESC = 1522, DNN_ATTR_OPERATION_MATMUL_DESC = 1523,
    DNN_ATTR_REDUCTION_OPERATOR = 1600, DNN_ATTR_REDUCTION_COMP_TYPE = 1601, DNN_ATTR_OPERATION_REDUCTION_XDESC = 1610,
    DNN_ATTR_OPERATION_REDUCTION_YDESC = 1611, DNN_ATTR_OPERATION_REDUCTION_DESC = 1612,
    DNN_POINTWISE_MUL = 1, DNN_POINTWISE_DIV = 6, DNN_POINTWISE_SUB = 9, DNN_POINTWISE_EXP = 13, DNN_POINTWISE_LOG = 15,
    DNN_REDUCE_ADD = 0, DNN_REDUCE_MAX = 3, DNN_REDUCE_AMAX = 4,
};

enum { UID_Q = 1, UID_K = 2, UID_V = 3, UID_O = 4, UID_SCALE = 5, UID_X = 11, UID_W = 12, UID_Y = 13, UID_BIAS = 14,
       UID_RESIDUAL = 15, UID_CONV_OUT = 21, UID_SUMMED = 22 };
enum {
    DNN_CONVOLUTION = 1, DNN_OPERATION_CONVOLUTION_FORWARD = 10, DNN_TYPE_FLOAT = 4, DNN_TYPE_CONVOLUTION_MODE = 7,
    DNN_CROSS_CORRELATION = 1,
    DNN_ATTR_CONVOLUTION_COMP_TYPE = 100, DNN_ATTR_CONVOLUTION_CONV_MODE = 101, DNN_ATTR_CONVOLUTION_DILATIONS = 102,
    DNN_ATTR_CONVOLUTION_FILTER_STRIDES = 103, DNN_ATTR_CONVOLUTION_POST_PADDINGS = 104,
    DNN_ATTR_CONVOLUTION_PRE_PADDINGS = 105, DNN_ATTR_CONVOLUTION_SPATIAL_DIMS = 106,
    DNN_ATTR_CONV_FWD_ALPHA = 700, DNN_ATTR_CONV_FWD_BETA = 701, DNN_ATTR_CONV_FWD_CONV_DESC = 702,
    DNN_ATTR_CONV_FWD_W = 703, DNN_ATTR_CONV_FWD_X = 704, DNN_ATTR_CONV_FWD_Y = 705,
    DNN_POINTWISE = 0, DNN_OPERATION_POINTWISE = 13, DNN_TYPE_POINTWISE_MODE = 14, DNN_POINTWISE_ADD = 0,
    DNN_ATTR_POINTWISE_MODE = 0, DNN_ATTR_POINTWISE_MATH_PREC = 1,
    DNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR = 750, DNN_ATTR_OPERATION_POINTWISE_XDESC = 751,
    DNN_ATTR_OPERATION_POINTWISE_BDESC = 752, DNN_ATTR_OPERATION_POINTWISE_YDESC = 753,
};
enum { TENSOR_BY_VALUE = 1, TENSOR_VIRTUAL = 2 };
#define KC_MAX_OPS 3
#define KC_SDPA_MAX_CONFIGS 16
#define KC_SDPA_KEEP 128

struct kc_sdpa_plan {
    cudnnBackendDescriptor_t plan;
    int hasBias, hasResidual;  // convolution plans: the fused epilogue's extra inputs
    cudnnBackendDescriptor_t keep[KC_SDPA_KEEP];
    int kept;
};

static int kc_dnn_finish(cudnnHandle_t handle, cudnnBackendDescriptor_t *ops, int opCount, int config, kc_sdpa_plan *p,
                         kc_sdpa_plan **out, int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize,
                         char *message, size_t messageSize);

static void keep(kc_sdpa_plan *p, cudnnBackendDescriptor_t d) {
    if (d && p->kept < KC_SDPA_KEEP) p->keep[p->kept++] = d;
}

void kc_sdpa_destroy(kc_sdpa_plan *p) {
    if (!p) return;
    if (p->plan) kc_dnn.cudnnBackendDestroyDescriptor(p->plan);
    for (int i = p->kept - 1; i >= 0; i--) kc_dnn.cudnnBackendDestroyDescriptor(p->keep[i]);
    free(p);
}

static int fail(int status, const char *step, char *message, size_t size) {
    char last[512] = "";
    if (kc_dnn.cudnnGetLastErrorString) kc_dnn.cudnnGetLastErrorString(last, sizeof last);
    const char *name = kc_dnn.cudnnGetErrorString ? kc_dnn.cudnnGetErrorString(status) : "cuDNN error";
    snprintf(message, size, "%s failed: %s (status %d)%s%s", step, name ? name : "?", status, last[0] ? ": " : "", last);
    return status ? status : -1;
}

#define TRY(call, step) do { int s_ = (call); if (s_) { fail(s_, step, message, messageSize); kc_sdpa_destroy(p); return s_; } } while (0)

/// An empty plan for a builder to fill (`*out` cleared until it succeeds), or NULL with the reason in `message`.
static kc_sdpa_plan *new_plan(kc_sdpa_plan **out, char *message, size_t messageSize) {
    *out = NULL;
    if (!kc_loaded(KC_LIB_CUDNN)) { snprintf(message, messageSize, "cuDNN not loaded"); return NULL; }
    kc_sdpa_plan *p = calloc(1, sizeof *p);
    if (!p) snprintf(message, messageSize, "out of host memory");
    return p;
}

static int make_tensor_aligned(kc_sdpa_plan *p, cudnnBackendDescriptor_t *out, int64_t uid, int type, const int64_t *dims,
                               const int64_t *strides, int flags, int64_t alignment, char *message, size_t messageSize) {
    cudnnBackendDescriptor_t t = NULL;
    int s = kc_dnn.cudnnBackendCreateDescriptor(DNN_TENSOR, &t);
    if (s) return fail(s, "create tensor", message, messageSize);
    keep(p, t);
    _Bool virt = (flags & TENSOR_VIRTUAL) != 0;
    if ((s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_DATA_TYPE, DNN_TYPE_DATA_TYPE, 1, &type))
        || (s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_DIMENSIONS, DNN_TYPE_INT64, 4, dims))
        || (s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_STRIDES, DNN_TYPE_INT64, 4, strides))
        || (s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_UNIQUE_ID, DNN_TYPE_INT64, 1, &uid))
        || (s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_BYTE_ALIGNMENT, DNN_TYPE_INT64, 1, &alignment))
        || (s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_IS_VIRTUAL, DNN_TYPE_BOOLEAN, 1, &virt)))
        return fail(s, "tensor attributes", message, messageSize);
    if (flags & TENSOR_BY_VALUE) {
        _Bool yes = 1;
        if ((s = kc_dnn.cudnnBackendSetAttribute(t, DNN_ATTR_TENSOR_IS_BY_VALUE, DNN_TYPE_BOOLEAN, 1, &yes)))
            return fail(s, "tensor by value", message, messageSize);
    }
    if ((s = kc_dnn.cudnnBackendFinalize(t))) return fail(s, "finalize tensor", message, messageSize);
    *out = t;
    return 0;
}

static int make_tensor(kc_sdpa_plan *p, cudnnBackendDescriptor_t *out, int64_t uid, int type, const int64_t *dims,
                       const int64_t *strides, int flags, char *message, size_t messageSize) {
    return make_tensor_aligned(p, out, uid, type, dims, strides, flags, 16, message, messageSize);
}

int kc_sdpa_create(cudnnHandle_t handle, int64_t b, int64_t h, int64_t sq, int64_t sk, int64_t d, int config,
                   kc_sdpa_plan **out, int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize,
                   char *message, size_t messageSize) {
    kc_sdpa_plan *p = new_plan(out, message, messageSize);
    if (!p) return -1;
    // [B, H, L, D] dimensions over [B, L, H, D] memory.
    int64_t qd[4] = {b, h, sq, d}, qs[4] = {sq * h * d, d, h * d, 1};
    int64_t kd[4] = {b, h, sk, d}, ks[4] = {sk * h * d, d, h * d, 1};
    int64_t one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t q, k, v, o, scale;
    int s;
    if ((s = make_tensor(p, &q, UID_Q, DNN_DATA_BFLOAT16, qd, qs, 0, message, messageSize))
        || (s = make_tensor(p, &k, UID_K, DNN_DATA_BFLOAT16, kd, ks, 0, message, messageSize))
        || (s = make_tensor(p, &v, UID_V, DNN_DATA_BFLOAT16, kd, ks, 0, message, messageSize))
        || (s = make_tensor(p, &o, UID_O, DNN_DATA_BFLOAT16, qd, qs, 0, message, messageSize))
        || (s = make_tensor(p, &scale, UID_SCALE, DNN_DATA_FLOAT, one, one, TENSOR_BY_VALUE, message, messageSize))) {
        kc_sdpa_destroy(p);
        return s;
    }
    cudnnBackendDescriptor_t op = NULL;
    TRY(kc_dnn.cudnnBackendCreateDescriptor(DNN_OPERATION_SDPA_FWD, &op), "create SDPA_FWD operation");
    keep(p, op);
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_SDPA_FWD_Q, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &q), "SDPA Q");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_SDPA_FWD_K, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &k), "SDPA K");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_SDPA_FWD_V, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &v), "SDPA V");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_SDPA_FWD_O, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &o), "SDPA O");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_SDPA_FWD_SCALE, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &scale), "SDPA scale");
    TRY(kc_dnn.cudnnBackendFinalize(op), "finalize SDPA_FWD operation");
    return kc_dnn_finish(handle, &op, 1, config, p, out, workspaceBytes, configCount, info, infoSize, message, messageSize);
}

/// The operation graph of finalized operations, then engine heuristics (mode A, then FALLBACK); the `config`-th
/// executable plan goes into `p`.
static int kc_dnn_finish(cudnnHandle_t handle, cudnnBackendDescriptor_t *ops, int opCount, int config, kc_sdpa_plan *p,
                         kc_sdpa_plan **out, int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize,
                         char *message, size_t messageSize) {
    int s;
    cudnnBackendDescriptor_t graph = NULL;
    TRY(kc_dnn.cudnnBackendCreateDescriptor(DNN_OPERATIONGRAPH, &graph), "create operation graph");
    keep(p, graph);
    TRY(kc_dnn.cudnnBackendSetAttribute(graph, DNN_ATTR_OPERATIONGRAPH_OPS, DNN_TYPE_BACKEND_DESCRIPTOR, opCount, ops), "graph ops");
    TRY(kc_dnn.cudnnBackendSetAttribute(graph, DNN_ATTR_OPERATIONGRAPH_HANDLE, DNN_TYPE_HANDLE, 1, &handle), "graph handle");
    TRY(kc_dnn.cudnnBackendFinalize(graph), "finalize operation graph");
    int modes[2] = {DNN_HEUR_MODE_A, DNN_HEUR_MODE_FALLBACK};
    int executable = 0;
    snprintf(message, messageSize, "no engine config");
    for (int m = 0; m < 2; m++) {
        cudnnBackendDescriptor_t heur = NULL;
        if (kc_dnn.cudnnBackendCreateDescriptor(DNN_ENGINEHEUR, &heur)) continue;
        keep(p, heur);
        if (kc_dnn.cudnnBackendSetAttribute(heur, DNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph)
            || kc_dnn.cudnnBackendSetAttribute(heur, DNN_ATTR_ENGINEHEUR_MODE, DNN_TYPE_HEUR_MODE, 1, &modes[m])) continue;
        if ((s = kc_dnn.cudnnBackendFinalize(heur))) { fail(s, "finalize engine heuristics", message, messageSize); continue; }
        cudnnBackendDescriptor_t configs[KC_SDPA_MAX_CONFIGS];
        int created = 0;
        for (; created < KC_SDPA_MAX_CONFIGS; created++) {
            if (kc_dnn.cudnnBackendCreateDescriptor(DNN_ENGINECFG, &configs[created])) break;
            keep(p, configs[created]);
        }
        int64_t count = 0;
        if ((s = kc_dnn.cudnnBackendGetAttribute(heur, DNN_ATTR_ENGINEHEUR_RESULTS, DNN_TYPE_BACKEND_DESCRIPTOR, created, &count, configs))) {
            fail(s, "engine heuristic results", message, messageSize);
            continue;
        }
        for (int i = 0; i < count && i < created; i++) {
            cudnnBackendDescriptor_t plan = NULL;
            if (kc_dnn.cudnnBackendCreateDescriptor(DNN_EXECUTION_PLAN, &plan)) continue;
            if (kc_dnn.cudnnBackendSetAttribute(plan, DNN_ATTR_EXECUTION_PLAN_HANDLE, DNN_TYPE_HANDLE, 1, &handle)
                || kc_dnn.cudnnBackendSetAttribute(plan, DNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &configs[i])
                || (s = kc_dnn.cudnnBackendFinalize(plan))) {
                fail(s, "finalize execution plan", message, messageSize);
                kc_dnn.cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            if (executable++ < config) { kc_dnn.cudnnBackendDestroyDescriptor(plan); continue; }
            int64_t ws = 0, n = 0;
            kc_dnn.cudnnBackendGetAttribute(plan, DNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, DNN_TYPE_INT64, 1, &n, &ws);
            if (info && infoSize) {
                info[0] = 0;
                kc_dnn.cudnnBackendGetAttribute(plan, DNN_ATTR_EXECUTION_PLAN_JSON, DNN_TYPE_CHAR, (int64_t)infoSize - 1, &n, info);
                info[infoSize - 1] = 0;
            }
            p->plan = plan;
            *workspaceBytes = ws;
            *configCount = (int)count;
            *out = p;
            message[0] = 0;
            return 0;
        }
    }
    kc_sdpa_destroy(p);
    return -1;
}

/// Binds the plan's `count` non-virtual tensors (UIDs and pointers) and the workspace, then enqueues the plan on the
/// handle's stream.
static int execute(cudnnHandle_t handle, const kc_sdpa_plan *p, int64_t count, const int64_t *uids, void **pointers,
                   CUdeviceptr workspace, const char *step, char *message, size_t messageSize) {
    cudnnBackendDescriptor_t pack = NULL;
    int s = kc_dnn.cudnnBackendCreateDescriptor(DNN_VARIANT_PACK, &pack);
    if (s) return fail(s, "create variant pack", message, messageSize);
    void *ws = (void *)(uintptr_t)workspace;
    if ((s = kc_dnn.cudnnBackendSetAttribute(pack, DNN_ATTR_VARIANT_PACK_UNIQUE_IDS, DNN_TYPE_INT64, count, uids))
        || (s = kc_dnn.cudnnBackendSetAttribute(pack, DNN_ATTR_VARIANT_PACK_DATA_POINTERS, DNN_TYPE_VOID_PTR, count, pointers))
        || (s = kc_dnn.cudnnBackendSetAttribute(pack, DNN_ATTR_VARIANT_PACK_WORKSPACE, DNN_TYPE_VOID_PTR, 1, &ws))
        || (s = kc_dnn.cudnnBackendFinalize(pack))) {
        kc_dnn.cudnnBackendDestroyDescriptor(pack);
        return fail(s, "variant pack", message, messageSize);
    }
    s = kc_dnn.cudnnBackendExecute(handle, p->plan, pack);
    kc_dnn.cudnnBackendDestroyDescriptor(pack);
    return s ? fail(s, step, message, messageSize) : 0;
}

int kc_sdpa_execute(cudnnHandle_t handle, const kc_sdpa_plan *p, CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                    CUdeviceptr o, float scale, CUdeviceptr workspace, char *message, size_t messageSize) {
    int64_t uids[5] = {UID_Q, UID_K, UID_V, UID_O, UID_SCALE};
    void *pointers[5] = {(void *)(uintptr_t)q, (void *)(uintptr_t)k, (void *)(uintptr_t)v, (void *)(uintptr_t)o, &scale};
    return execute(handle, p, 5, uids, pointers, workspace, "cudnnBackendExecute(SDPA)", message, messageSize);
}

/// A graph node's descriptors: the config (its mode where it has one, fp32 math) and the operation reading X (and B,
/// where the kind has one) into Y.
typedef struct {
    int config, modeAttr, modeType, precisionAttr, operation, configAttr, xAttr, bAttr, yAttr;
    const char *name;
} node_kind;

static const node_kind POINTWISE = {
    DNN_POINTWISE, DNN_ATTR_POINTWISE_MODE, DNN_TYPE_POINTWISE_MODE, DNN_ATTR_POINTWISE_MATH_PREC, DNN_OPERATION_POINTWISE,
    DNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, DNN_ATTR_OPERATION_POINTWISE_XDESC, DNN_ATTR_OPERATION_POINTWISE_BDESC,
    DNN_ATTR_OPERATION_POINTWISE_YDESC, "pointwise"};
static const node_kind REDUCTION = {
    DNN_REDUCTION, DNN_ATTR_REDUCTION_OPERATOR, DNN_TYPE_REDUCTION_OPERATOR, DNN_ATTR_REDUCTION_COMP_TYPE,
    DNN_OPERATION_REDUCTION, DNN_ATTR_OPERATION_REDUCTION_DESC, DNN_ATTR_OPERATION_REDUCTION_XDESC, -1,
    DNN_ATTR_OPERATION_REDUCTION_YDESC, "reduction"};
static const node_kind MATMUL = {
    DNN_MATMUL, -1, 0, DNN_ATTR_MATMUL_COMP_TYPE, DNN_OPERATION_MATMUL, DNN_ATTR_OPERATION_MATMUL_DESC,
    DNN_ATTR_OPERATION_MATMUL_ADESC, DNN_ATTR_OPERATION_MATMUL_BDESC, DNN_ATTR_OPERATION_MATMUL_CDESC, "matmul"};

/// y = op(x, b) as one finalized operation: `mode` is the pointwise mode or reduction operator (matmuls have none),
/// `b` NULL for unary pointwise ops and reductions.
static int node(kc_sdpa_plan *p, const node_kind *kind, int mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t *out, char *message, size_t messageSize) {
#define CHECK(call, step) do { int s_ = (call); if (s_) return fail(s_, step, message, messageSize); } while (0)
    cudnnBackendDescriptor_t config = NULL, op = NULL;
    int precision = DNN_DATA_FLOAT;
    CHECK(kc_dnn.cudnnBackendCreateDescriptor(kind->config, &config), kind->name);
    keep(p, config);
    if (kind->modeAttr >= 0) CHECK(kc_dnn.cudnnBackendSetAttribute(config, kind->modeAttr, kind->modeType, 1, &mode), kind->name);
    CHECK(kc_dnn.cudnnBackendSetAttribute(config, kind->precisionAttr, DNN_TYPE_DATA_TYPE, 1, &precision), kind->name);
    CHECK(kc_dnn.cudnnBackendFinalize(config), kind->name);
    CHECK(kc_dnn.cudnnBackendCreateDescriptor(kind->operation, &op), kind->name);
    keep(p, op);
    CHECK(kc_dnn.cudnnBackendSetAttribute(op, kind->configAttr, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &config), kind->name);
    CHECK(kc_dnn.cudnnBackendSetAttribute(op, kind->xAttr, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &x), kind->name);
    if (b) CHECK(kc_dnn.cudnnBackendSetAttribute(op, kind->bAttr, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &b), kind->name);
    CHECK(kc_dnn.cudnnBackendSetAttribute(op, kind->yAttr, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &y), kind->name);
    CHECK(kc_dnn.cudnnBackendFinalize(op), kind->name);
    *out = op;
    return 0;
#undef CHECK
}

// FP8 attention's tensors, in UID order from UID_FP8: the variant pack's (Q, Kᵀ, V, O, the fp32 scalars, the by-value
// attention scale), then the graph's virtual intermediates.
enum {
    F8_Q, F8_KT, F8_V, F8_O, F8_DESCALE_Q, F8_DESCALE_K, F8_DESCALE_V, F8_DESCALE_S, F8_SCALE_S, F8_SCALE_O, F8_AMAX_S,
    F8_AMAX_O, F8_ATTN_SCALE, F8_PACKED,
    F8_S = F8_PACKED, F8_S_SCALED, F8_S_Q, F8_S_QK, F8_ROW_MAX, F8_S_CENTERED, F8_S_EXP, F8_ROW_SUM, F8_ROW_LOG, F8_STATS,
    F8_P, F8_P8, F8_PV, F8_PV_S, F8_PV_SV, F8_TENSORS
};
enum { UID_FP8 = 31 };

int kc_sdpa_fp8_create(cudnnHandle_t handle, int64_t b, int64_t h, int64_t sq, int64_t sk, int64_t d, int config,
                       kc_sdpa_plan **out, int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize,
                       char *message, size_t messageSize) {
    kc_sdpa_plan *p = new_plan(out, message, messageSize);
    if (!p) return -1;
    // Q, V, O: [B, H, L, D] dimensions over [B, L, H, D] memory; Kᵀ the same memory as [B, H, D, Lk]. Intermediates
    // packed: scores [B, H, Lq, Lk], per-row softmax values [B, H, Lq, 1], P·V [B, H, Lq, D].
    int64_t qd[4] = {b, h, sq, d}, qs[4] = {sq * h * d, d, h * d, 1};
    int64_t ktd[4] = {b, h, d, sk}, kts[4] = {sk * h * d, d, 1, h * d};
    int64_t vd[4] = {b, h, sk, d}, vs[4] = {sk * h * d, d, h * d, 1};
    int64_t sd[4] = {b, h, sq, sk}, ss[4] = {h * sq * sk, sq * sk, sk, 1};
    int64_t rd[4] = {b, h, sq, 1}, rs[4] = {h * sq, sq, 1, 1};
    int64_t pvs[4] = {h * sq * d, sq * d, d, 1};
    int64_t one[4] = {1, 1, 1, 1};
    enum { QO, KT, V, SCALAR, SCORES, ROWS, PV };
    const int64_t *dims[] = {qd, ktd, vd, one, sd, rd, qd}, *strides[] = {qs, kts, vs, one, ss, rs, pvs};
    enum { FP8 = DNN_DATA_FP8_E4M3, F32 = DNN_DATA_FLOAT, VIRTUAL = TENSOR_VIRTUAL };
    static const struct { int shape, type, flags; } spec[F8_TENSORS] = {
        [F8_Q] = {QO, FP8, 0}, [F8_KT] = {KT, FP8, 0}, [F8_V] = {V, FP8, 0}, [F8_O] = {QO, FP8, 0},
        [F8_DESCALE_Q] = {SCALAR, F32, 0}, [F8_DESCALE_K] = {SCALAR, F32, 0}, [F8_DESCALE_V] = {SCALAR, F32, 0},
        [F8_DESCALE_S] = {SCALAR, F32, 0}, [F8_SCALE_S] = {SCALAR, F32, 0}, [F8_SCALE_O] = {SCALAR, F32, 0},
        [F8_AMAX_S] = {SCALAR, F32, 0}, [F8_AMAX_O] = {SCALAR, F32, 0}, [F8_ATTN_SCALE] = {SCALAR, F32, TENSOR_BY_VALUE},
        [F8_S] = {SCORES, F32, VIRTUAL}, [F8_S_SCALED] = {SCORES, F32, VIRTUAL}, [F8_S_Q] = {SCORES, F32, VIRTUAL},
        [F8_S_QK] = {SCORES, F32, VIRTUAL}, [F8_ROW_MAX] = {ROWS, F32, VIRTUAL}, [F8_S_CENTERED] = {SCORES, F32, VIRTUAL},
        [F8_S_EXP] = {SCORES, F32, VIRTUAL}, [F8_ROW_SUM] = {ROWS, F32, VIRTUAL}, [F8_ROW_LOG] = {ROWS, F32, VIRTUAL},
        [F8_STATS] = {ROWS, F32, VIRTUAL}, [F8_P] = {SCORES, F32, VIRTUAL}, [F8_P8] = {SCORES, FP8, VIRTUAL},
        [F8_PV] = {PV, F32, VIRTUAL}, [F8_PV_S] = {PV, F32, VIRTUAL}, [F8_PV_SV] = {PV, F32, VIRTUAL},
    };
    cudnnBackendDescriptor_t t[F8_TENSORS];
    for (int i = 0; i < F8_TENSORS; i++) {
        int s = make_tensor(p, &t[i], UID_FP8 + i, spec[i].type, dims[spec[i].shape], strides[spec[i].shape], spec[i].flags,
                            message, messageSize);
        if (s) { kc_sdpa_destroy(p); return s; }
    }
    // cudnn-frontend's sdpa_fp8 lowering for inference, the pattern the FP8 flash-attention engines match: scores
    // Q·Kᵀ · scale · descale_q · descale_k; softmax as max, subtract, exp, sum, divide (plus the max + log(sum) statistics
    // the frontend keeps as a virtual tensor); amax(P); P · scale_s cast to e4m3; O = (P·V) · descale_s · descale_v,
    // its amax, and O · scale_o cast to e4m3.
    static const struct { const node_kind *kind; int mode, x, b, y; } graph[] = {
        {&MATMUL, 0, F8_Q, F8_KT, F8_S},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_S, F8_ATTN_SCALE, F8_S_SCALED},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_S_SCALED, F8_DESCALE_Q, F8_S_Q},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_S_Q, F8_DESCALE_K, F8_S_QK},
        {&REDUCTION, DNN_REDUCE_MAX, F8_S_QK, -1, F8_ROW_MAX},
        {&POINTWISE, DNN_POINTWISE_SUB, F8_S_QK, F8_ROW_MAX, F8_S_CENTERED},
        {&POINTWISE, DNN_POINTWISE_EXP, F8_S_CENTERED, -1, F8_S_EXP},
        {&REDUCTION, DNN_REDUCE_ADD, F8_S_EXP, -1, F8_ROW_SUM},
        {&POINTWISE, DNN_POINTWISE_LOG, F8_ROW_SUM, -1, F8_ROW_LOG},
        {&POINTWISE, DNN_POINTWISE_ADD, F8_ROW_MAX, F8_ROW_LOG, F8_STATS},
        {&POINTWISE, DNN_POINTWISE_DIV, F8_S_EXP, F8_ROW_SUM, F8_P},
        {&REDUCTION, DNN_REDUCE_AMAX, F8_P, -1, F8_AMAX_S},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_P, F8_SCALE_S, F8_P8},
        {&MATMUL, 0, F8_P8, F8_V, F8_PV},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_PV, F8_DESCALE_S, F8_PV_S},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_PV_S, F8_DESCALE_V, F8_PV_SV},
        {&POINTWISE, DNN_POINTWISE_MUL, F8_PV_SV, F8_SCALE_O, F8_O},
        {&REDUCTION, DNN_REDUCE_AMAX, F8_PV_SV, -1, F8_AMAX_O},
    };
    enum { OPS = sizeof graph / sizeof graph[0] };
    cudnnBackendDescriptor_t ops[OPS];
    for (int i = 0; i < OPS; i++) {
        int s = node(p, graph[i].kind, graph[i].mode, t[graph[i].x], graph[i].b < 0 ? NULL : t[graph[i].b], t[graph[i].y],
                     &ops[i], message, messageSize);
        if (s) { kc_sdpa_destroy(p); return s; }
    }
    return kc_dnn_finish(handle, ops, OPS, config, p, out, workspaceBytes, configCount, info, infoSize, message, messageSize);
}

int kc_sdpa_fp8_execute(cudnnHandle_t handle, const kc_sdpa_plan *p, CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                        CUdeviceptr o, CUdeviceptr descaleQ, CUdeviceptr descaleK, CUdeviceptr descaleV, CUdeviceptr descaleS,
                        CUdeviceptr scaleS, CUdeviceptr scaleO, CUdeviceptr amaxS, CUdeviceptr amaxO, float attnScale,
                        CUdeviceptr workspace, char *message, size_t messageSize) {
    const CUdeviceptr device[F8_ATTN_SCALE] = {q, k, v, o, descaleQ, descaleK, descaleV, descaleS, scaleS, scaleO, amaxS, amaxO};
    int64_t uids[F8_PACKED];
    void *pointers[F8_PACKED];
    for (int i = 0; i < F8_PACKED; i++) {
        uids[i] = UID_FP8 + i;
        pointers[i] = i == F8_ATTN_SCALE ? (void *)&attnScale : (void *)(uintptr_t)device[i];
    }
    return execute(handle, p, F8_PACKED, uids, pointers, workspace, "cudnnBackendExecute(FP8 SDPA)", message, messageSize);
}

int kc_conv_create(cudnnHandle_t handle, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t sz,
                   int64_t stride, int64_t padTop, int64_t padLeft, int64_t padBottom, int64_t padRight,
                   int64_t outH, int64_t outW, int withBias, int withResidual, int config, kc_sdpa_plan **out,
                   int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize, char *message, size_t messageSize) {
    kc_sdpa_plan *p = new_plan(out, message, messageSize);
    if (!p) return -1;
    p->hasBias = withBias;
    p->hasResidual = withResidual;
    // NCHW dimensions over NHWC memory; the filter [K, C, R, S] over KRSC memory (Kiln's [O, kh, kw, I]).
    int64_t xd[4] = {n, c, h, w}, xs[4] = {h * w * c, 1, w * c, c};
    int64_t wd[4] = {k, c, r, sz}, ws[4] = {r * sz * c, 1, sz * c, c};
    int64_t yd[4] = {n, k, outH, outW}, ys[4] = {outH * outW * k, 1, outW * k, k};
    int64_t bd[4] = {1, k, 1, 1}, bs[4] = {k, 1, k, k};
    int64_t inAlign = c % 8 == 0 ? 16 : 2, outAlign = k % 8 == 0 ? 16 : 2;
    // The convolution writes Y directly, or fp32 virtual tensors carry it through the fused + residual, + bias (in the
    // order of the classic conv + z + bias epilogue, which precompiled engines implement).
    const int fused = withBias + withResidual;
    cudnnBackendDescriptor_t x, f, y, convOut, summed = NULL, bias = NULL, residual = NULL, conv = NULL;
    cudnnBackendDescriptor_t ops[KC_MAX_OPS];
    int opCount = 0;
    int s;
    if ((s = make_tensor_aligned(p, &x, UID_X, DNN_DATA_BFLOAT16, xd, xs, 0, inAlign, message, messageSize))
        || (s = make_tensor_aligned(p, &f, UID_W, DNN_DATA_BFLOAT16, wd, ws, 0, inAlign, message, messageSize))
        || (s = make_tensor_aligned(p, &y, UID_Y, DNN_DATA_BFLOAT16, yd, ys, 0, outAlign, message, messageSize))
        || (fused && (s = make_tensor_aligned(p, &convOut, UID_CONV_OUT, DNN_DATA_FLOAT, yd, ys, TENSOR_VIRTUAL, 16, message, messageSize)))
        || (fused == 2 && (s = make_tensor_aligned(p, &summed, UID_SUMMED, DNN_DATA_FLOAT, yd, ys, TENSOR_VIRTUAL, 16, message, messageSize)))
        || (withBias && (s = make_tensor_aligned(p, &bias, UID_BIAS, DNN_DATA_BFLOAT16, bd, bs, 0, outAlign, message, messageSize)))
        || (withResidual && (s = make_tensor_aligned(p, &residual, UID_RESIDUAL, DNN_DATA_BFLOAT16, yd, ys, 0, outAlign, message, messageSize)))) {
        kc_sdpa_destroy(p);
        return s;
    }
    if (!fused) convOut = y;
    int64_t dims = 2, dil[2] = {1, 1}, str[2] = {stride, stride}, pre[2] = {padTop, padLeft}, post[2] = {padBottom, padRight};
    int comp = DNN_DATA_FLOAT, mode = DNN_CROSS_CORRELATION;
    TRY(kc_dnn.cudnnBackendCreateDescriptor(DNN_CONVOLUTION, &conv), "create convolution");
    keep(p, conv);
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_COMP_TYPE, DNN_TYPE_DATA_TYPE, 1, &comp), "conv compute type");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_CONV_MODE, DNN_TYPE_CONVOLUTION_MODE, 1, &mode), "conv mode");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_SPATIAL_DIMS, DNN_TYPE_INT64, 1, &dims), "conv dims");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_DILATIONS, DNN_TYPE_INT64, 2, dil), "conv dilations");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_FILTER_STRIDES, DNN_TYPE_INT64, 2, str), "conv strides");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_PRE_PADDINGS, DNN_TYPE_INT64, 2, pre), "conv pre-paddings");
    TRY(kc_dnn.cudnnBackendSetAttribute(conv, DNN_ATTR_CONVOLUTION_POST_PADDINGS, DNN_TYPE_INT64, 2, post), "conv post-paddings");
    TRY(kc_dnn.cudnnBackendFinalize(conv), "finalize convolution");
    float alpha = 1.f, beta = 0.f;
    cudnnBackendDescriptor_t op = NULL;
    TRY(kc_dnn.cudnnBackendCreateDescriptor(DNN_OPERATION_CONVOLUTION_FORWARD, &op), "create convolution forward");
    keep(p, op);
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_X, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &x), "conv X");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_W, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &f), "conv W");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_Y, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &convOut), "conv Y");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_CONV_DESC, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv), "conv desc");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_ALPHA, DNN_TYPE_FLOAT, 1, &alpha), "conv alpha");
    TRY(kc_dnn.cudnnBackendSetAttribute(op, DNN_ATTR_CONV_FWD_BETA, DNN_TYPE_FLOAT, 1, &beta), "conv beta");
    TRY(kc_dnn.cudnnBackendFinalize(op), "finalize convolution forward");
    ops[opCount++] = op;
    cudnnBackendDescriptor_t last = convOut;
    if (withResidual) {
        cudnnBackendDescriptor_t target = withBias ? summed : y;
        if ((s = node(p, &POINTWISE, DNN_POINTWISE_ADD, last, residual, target, &ops[opCount++], message, messageSize))) { kc_sdpa_destroy(p); return s; }
        last = target;
    }
    if (withBias) {
        if ((s = node(p, &POINTWISE, DNN_POINTWISE_ADD, last, bias, y, &ops[opCount++], message, messageSize))) { kc_sdpa_destroy(p); return s; }
    }
    return kc_dnn_finish(handle, ops, opCount, config, p, out, workspaceBytes, configCount, info, infoSize, message, messageSize);
}

int kc_conv_execute(cudnnHandle_t handle, const kc_sdpa_plan *p, CUdeviceptr x, CUdeviceptr w, CUdeviceptr y,
                    CUdeviceptr bias, CUdeviceptr residual, CUdeviceptr workspace, char *message, size_t messageSize) {
    int64_t uids[5] = {UID_X, UID_W, UID_Y};
    void *pointers[5] = {(void *)(uintptr_t)x, (void *)(uintptr_t)w, (void *)(uintptr_t)y};
    int64_t count = 3;
    if (p->hasBias) { uids[count] = UID_BIAS; pointers[count++] = (void *)(uintptr_t)bias; }
    if (p->hasResidual) { uids[count] = UID_RESIDUAL; pointers[count++] = (void *)(uintptr_t)residual; }
    return execute(handle, p, count, uids, pointers, workspace, "cudnnBackendExecute(convolution)", message, messageSize);
}
