// Kiln's own minimal declarations of the NVIDIA libraries it drives: the CUDA driver API, NVRTC and cuBLASLt.
// Nothing here includes an NVIDIA header; the libraries are opened with dlopen at run time (loader.c), so the
// binary builds and its CPU tests run on machines without CUDA. Values are copied from the CUDA 13 headers.
#ifndef CKILNCUDA_H
#define CKILNCUDA_H

#include <stddef.h>
#include <stdint.h>

// MARK: driver API types
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;

enum {
    KC_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    KC_CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38,
    KC_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    KC_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    KC_CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97,
    KC_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
    KC_CU_STREAM_NON_BLOCKING = 1,
    KC_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
    KC_CU_STREAM_CAPTURE_MODE_RELAXED = 2,
    KC_CU_EVENT_DEFAULT = 0,
    KC_CU_EVENT_DISABLE_TIMING = 2,
    KC_CU_MEMHOSTALLOC_PORTABLE = 1,
};

// MARK: NVRTC types
typedef int nvrtcResult;
typedef struct _nvrtcProgram *nvrtcProgram;

// MARK: cuBLASLt types
typedef int cublasStatus_t;
typedef struct cublasLtContext *cublasLtHandle_t;
typedef void *cublasLtMatmulDesc_t;
typedef void *cublasLtMatrixLayout_t;
typedef void *cublasLtMatmulPreference_t;
typedef struct { uint64_t data[8]; } kc_cublasLtMatmulAlgo_t;
typedef struct {
    kc_cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} kc_cublasLtMatmulHeuristicResult_t;

enum {
    KC_CUDA_R_32F = 0,
    KC_CUDA_R_16F = 2,
    KC_CUDA_R_16BF = 14,
    KC_CUDA_R_8F_E4M3 = 28,
    KC_CUBLAS_COMPUTE_32F = 68,
    KC_CUBLAS_OP_N = 0,
    KC_CUBLAS_OP_T = 1,
    KC_CUBLASLT_MATMUL_DESC_TRANSA = 3,
    KC_CUBLASLT_MATMUL_DESC_TRANSB = 4,
    KC_CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    KC_CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    KC_CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17,
    KC_CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18,
    KC_CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25,
    KC_CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
    KC_CUBLASLT_MATMUL_DESC_A_SCALE_MODE = 31,
    KC_CUBLASLT_MATMUL_DESC_B_SCALE_MODE = 32,
    KC_CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F = 0,
    KC_CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F = 3,
    KC_CUBLASLT_EPILOGUE_DEFAULT = 1,
    KC_CUBLASLT_EPILOGUE_BIAS = 4,
    KC_CUBLASLT_EPILOGUE_GELU = 32,
    KC_CUBLASLT_EPILOGUE_GELU_BIAS = 36,
    KC_CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
    KC_CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
    KC_CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
    KC_CUBLASLT_ALGO_CONFIG_ID = 0,
    KC_CUBLASLT_ALGO_CONFIG_TILE_ID = 1,
    KC_CUBLASLT_ALGO_CONFIG_SPLITK_NUM = 2,
    KC_CUBLASLT_ALGO_CONFIG_STAGES_ID = 6,
    KC_CUBLASLT_ALGO_CAP_TILE_IDS = 6,
    KC_CUBLASLT_ALGO_CAP_STAGES_IDS = 13,
};

// MARK: function tables (filled by kc_load_*; a member is NULL until its library is loaded)
#define KC_DRIVER_FUNCS(X) \
    X(CUresult, cuInit, (unsigned int flags), "cuInit", NULL) \
    X(CUresult, cuDriverGetVersion, (int *version), "cuDriverGetVersion", NULL) \
    X(CUresult, cuGetErrorName, (CUresult error, const char **name), "cuGetErrorName", NULL) \
    X(CUresult, cuGetErrorString, (CUresult error, const char **text), "cuGetErrorString", NULL) \
    X(CUresult, cuDeviceGetCount, (int *count), "cuDeviceGetCount", NULL) \
    X(CUresult, cuDeviceGet, (CUdevice *device, int ordinal), "cuDeviceGet", NULL) \
    X(CUresult, cuDeviceGetName, (char *name, int length, CUdevice device), "cuDeviceGetName", NULL) \
    X(CUresult, cuDeviceGetAttribute, (int *value, int attribute, CUdevice device), "cuDeviceGetAttribute", NULL) \
    X(CUresult, cuDeviceTotalMem, (size_t *bytes, CUdevice device), "cuDeviceTotalMem_v2", NULL) \
    X(CUresult, cuDevicePrimaryCtxRetain, (CUcontext *context, CUdevice device), "cuDevicePrimaryCtxRetain", NULL) \
    X(CUresult, cuCtxSetCurrent, (CUcontext context), "cuCtxSetCurrent", NULL) \
    X(CUresult, cuCtxSynchronize, (void), "cuCtxSynchronize", NULL) \
    X(CUresult, cuMemGetInfo, (size_t *free, size_t *total), "cuMemGetInfo_v2", NULL) \
    X(CUresult, cuMemAlloc, (CUdeviceptr *pointer, size_t bytes), "cuMemAlloc_v2", NULL) \
    X(CUresult, cuMemFree, (CUdeviceptr pointer), "cuMemFree_v2", NULL) \
    X(CUresult, cuMemHostAlloc, (void **pointer, size_t bytes, unsigned int flags), "cuMemHostAlloc", NULL) \
    X(CUresult, cuMemFreeHost, (void *pointer), "cuMemFreeHost", NULL) \
    X(CUresult, cuMemcpyHtoDAsync, (CUdeviceptr dst, const void *src, size_t bytes, CUstream stream), "cuMemcpyHtoDAsync_v2", NULL) \
    X(CUresult, cuMemcpyDtoHAsync, (void *dst, CUdeviceptr src, size_t bytes, CUstream stream), "cuMemcpyDtoHAsync_v2", NULL) \
    X(CUresult, cuMemcpyDtoDAsync, (CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream), "cuMemcpyDtoDAsync_v2", NULL) \
    X(CUresult, cuMemsetD8Async, (CUdeviceptr dst, unsigned char value, size_t count, CUstream stream), "cuMemsetD8Async", NULL) \
    X(CUresult, cuMemsetD16Async, (CUdeviceptr dst, unsigned short value, size_t count, CUstream stream), "cuMemsetD16Async", NULL) \
    X(CUresult, cuStreamCreate, (CUstream *stream, unsigned int flags), "cuStreamCreate", NULL) \
    X(CUresult, cuStreamDestroy, (CUstream stream), "cuStreamDestroy_v2", NULL) \
    X(CUresult, cuStreamSynchronize, (CUstream stream), "cuStreamSynchronize", NULL) \
    X(CUresult, cuStreamWaitEvent, (CUstream stream, CUevent event, unsigned int flags), "cuStreamWaitEvent", NULL) \
    X(CUresult, cuStreamBeginCapture, (CUstream stream, int mode), "cuStreamBeginCapture_v2", NULL) \
    X(CUresult, cuStreamEndCapture, (CUstream stream, CUgraph *graph), "cuStreamEndCapture", NULL) \
    X(CUresult, cuThreadExchangeStreamCaptureMode, (int *mode), "cuThreadExchangeStreamCaptureMode", NULL) \
    X(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec *exec, CUgraph graph, unsigned long long flags), "cuGraphInstantiateWithFlags", NULL) \
    X(CUresult, cuGraphLaunch, (CUgraphExec exec, CUstream stream), "cuGraphLaunch", NULL) \
    X(CUresult, cuGraphExecDestroy, (CUgraphExec exec), "cuGraphExecDestroy", NULL) \
    X(CUresult, cuGraphDestroy, (CUgraph graph), "cuGraphDestroy", NULL) \
    X(CUresult, cuEventCreate, (CUevent *event, unsigned int flags), "cuEventCreate", NULL) \
    X(CUresult, cuEventDestroy, (CUevent event), "cuEventDestroy_v2", NULL) \
    X(CUresult, cuEventRecord, (CUevent event, CUstream stream), "cuEventRecord", NULL) \
    X(CUresult, cuEventSynchronize, (CUevent event), "cuEventSynchronize", NULL) \
    X(CUresult, cuEventElapsedTime, (float *milliseconds, CUevent start, CUevent end), "cuEventElapsedTime_v2", "cuEventElapsedTime") \
    X(CUresult, cuModuleLoadData, (CUmodule *module, const void *image), "cuModuleLoadData", NULL) \
    X(CUresult, cuModuleUnload, (CUmodule module), "cuModuleUnload", NULL) \
    X(CUresult, cuModuleGetFunction, (CUfunction *function, CUmodule module, const char *name), "cuModuleGetFunction", NULL) \
    X(CUresult, cuFuncSetAttribute, (CUfunction function, int attribute, int value), "cuFuncSetAttribute", NULL) \
    X(CUresult, cuLaunchKernel, (CUfunction f, unsigned int gridX, unsigned int gridY, unsigned int gridZ, \
        unsigned int blockX, unsigned int blockY, unsigned int blockZ, unsigned int sharedBytes, CUstream stream, \
        void **parameters, void **extra), "cuLaunchKernel", NULL)

#define KC_NVRTC_FUNCS(X) \
    X(nvrtcResult, nvrtcVersion, (int *major, int *minor), "nvrtcVersion", NULL) \
    X(const char *, nvrtcGetErrorString, (nvrtcResult result), "nvrtcGetErrorString", NULL) \
    X(nvrtcResult, nvrtcCreateProgram, (nvrtcProgram *program, const char *source, const char *name, int headerCount, \
        const char *const *headers, const char *const *includeNames), "nvrtcCreateProgram", NULL) \
    X(nvrtcResult, nvrtcCompileProgram, (nvrtcProgram program, int optionCount, const char *const *options), "nvrtcCompileProgram", NULL) \
    X(nvrtcResult, nvrtcGetProgramLogSize, (nvrtcProgram program, size_t *size), "nvrtcGetProgramLogSize", NULL) \
    X(nvrtcResult, nvrtcGetProgramLog, (nvrtcProgram program, char *log), "nvrtcGetProgramLog", NULL) \
    X(nvrtcResult, nvrtcGetCUBINSize, (nvrtcProgram program, size_t *size), "nvrtcGetCUBINSize", NULL) \
    X(nvrtcResult, nvrtcGetCUBIN, (nvrtcProgram program, char *cubin), "nvrtcGetCUBIN", NULL) \
    X(nvrtcResult, nvrtcDestroyProgram, (nvrtcProgram *program), "nvrtcDestroyProgram", NULL)

#define KC_CUBLASLT_FUNCS(X) \
    X(cublasStatus_t, cublasLtCreate, (cublasLtHandle_t *handle), "cublasLtCreate", NULL) \
    X(cublasStatus_t, cublasLtDestroy, (cublasLtHandle_t handle), "cublasLtDestroy", NULL) \
    X(size_t, cublasLtGetVersion, (void), "cublasLtGetVersion", NULL) \
    X(const char *, cublasLtGetStatusString, (cublasStatus_t status), "cublasLtGetStatusString", NULL) \
    X(cublasStatus_t, cublasLtMatmulDescCreate, (cublasLtMatmulDesc_t *desc, int computeType, int scaleType), "cublasLtMatmulDescCreate", NULL) \
    X(cublasStatus_t, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), "cublasLtMatmulDescDestroy", NULL) \
    X(cublasStatus_t, cublasLtMatmulDescSetAttribute, (cublasLtMatmulDesc_t desc, int attribute, const void *value, size_t size), "cublasLtMatmulDescSetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatrixLayoutCreate, (cublasLtMatrixLayout_t *layout, int type, uint64_t rows, uint64_t cols, int64_t ld), "cublasLtMatrixLayoutCreate", NULL) \
    X(cublasStatus_t, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), "cublasLtMatrixLayoutDestroy", NULL) \
    X(cublasStatus_t, cublasLtMatrixLayoutSetAttribute, (cublasLtMatrixLayout_t layout, int attribute, const void *value, size_t size), \
        "cublasLtMatrixLayoutSetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t *pref), "cublasLtMatmulPreferenceCreate", NULL) \
    X(cublasStatus_t, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), "cublasLtMatmulPreferenceDestroy", NULL) \
    X(cublasStatus_t, cublasLtMatmulPreferenceSetAttribute, (cublasLtMatmulPreference_t pref, int attribute, const void *value, size_t size), "cublasLtMatmulPreferenceSetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoGetHeuristic, (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, \
        cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, \
        cublasLtMatmulPreference_t pref, int requested, kc_cublasLtMatmulHeuristicResult_t *results, int *returned), \
        "cublasLtMatmulAlgoGetHeuristic", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoConfigGetAttribute, (const kc_cublasLtMatmulAlgo_t *algo, int attribute, void *buffer, \
        size_t size, size_t *written), "cublasLtMatmulAlgoConfigGetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoConfigSetAttribute, (kc_cublasLtMatmulAlgo_t *algo, int attribute, const void *buffer, \
        size_t size), "cublasLtMatmulAlgoConfigSetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoCapGetAttribute, (const kc_cublasLtMatmulAlgo_t *algo, int attribute, void *buffer, \
        size_t size, size_t *written), "cublasLtMatmulAlgoCapGetAttribute", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoGetIds, (cublasLtHandle_t handle, int computeType, int scaleType, int aType, int bType, \
        int cType, int dType, int requested, int *ids, int *returned), "cublasLtMatmulAlgoGetIds", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoInit, (cublasLtHandle_t handle, int computeType, int scaleType, int aType, int bType, \
        int cType, int dType, int algoId, kc_cublasLtMatmulAlgo_t *algo), "cublasLtMatmulAlgoInit", NULL) \
    X(cublasStatus_t, cublasLtMatmulAlgoCheck, (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, \
        cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, const kc_cublasLtMatmulAlgo_t *algo, \
        kc_cublasLtMatmulHeuristicResult_t *result), "cublasLtMatmulAlgoCheck", NULL) \
    X(cublasStatus_t, cublasLtMatmul, (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, const void *A, \
        cublasLtMatrixLayout_t aDesc, const void *B, cublasLtMatrixLayout_t bDesc, const void *beta, const void *C, \
        cublasLtMatrixLayout_t cDesc, void *D, cublasLtMatrixLayout_t dDesc, const kc_cublasLtMatmulAlgo_t *algo, \
        void *workspace, size_t workspaceBytes, CUstream stream), "cublasLtMatmul", NULL)

// cuDNN: the handle calls and the backend (graph) API.
typedef int cudnnStatus_t;
typedef struct cudnnContext *cudnnHandle_t;
typedef void *cudnnBackendDescriptor_t;

#define KC_CUDNN_FUNCS(X) \
    X(size_t, cudnnGetVersion, (void), "cudnnGetVersion", NULL) \
    X(const char *, cudnnGetErrorString, (cudnnStatus_t status), "cudnnGetErrorString", NULL) \
    X(void, cudnnGetLastErrorString, (char *message, size_t size), "cudnnGetLastErrorString", NULL) \
    X(cudnnStatus_t, cudnnCreate, (cudnnHandle_t *handle), "cudnnCreate", NULL) \
    X(cudnnStatus_t, cudnnDestroy, (cudnnHandle_t handle), "cudnnDestroy", NULL) \
    X(cudnnStatus_t, cudnnSetStream, (cudnnHandle_t handle, CUstream stream), "cudnnSetStream", NULL) \
    X(cudnnStatus_t, cudnnBackendCreateDescriptor, (int type, cudnnBackendDescriptor_t *descriptor), "cudnnBackendCreateDescriptor", NULL) \
    X(cudnnStatus_t, cudnnBackendDestroyDescriptor, (cudnnBackendDescriptor_t descriptor), "cudnnBackendDestroyDescriptor", NULL) \
    X(cudnnStatus_t, cudnnBackendFinalize, (cudnnBackendDescriptor_t descriptor), "cudnnBackendFinalize", NULL) \
    X(cudnnStatus_t, cudnnBackendSetAttribute, (cudnnBackendDescriptor_t descriptor, int name, int type, int64_t count, \
        const void *values), "cudnnBackendSetAttribute", NULL) \
    X(cudnnStatus_t, cudnnBackendGetAttribute, (cudnnBackendDescriptor_t descriptor, int name, int type, int64_t requested, \
        int64_t *count, void *values), "cudnnBackendGetAttribute", NULL) \
    X(cudnnStatus_t, cudnnBackendExecute, (cudnnHandle_t handle, cudnnBackendDescriptor_t plan, cudnnBackendDescriptor_t pack), \
        "cudnnBackendExecute", NULL)

#define KC_MEMBER(ret, name, args, symbol, fallback) ret (*name) args;
typedef struct { KC_DRIVER_FUNCS(KC_MEMBER) } kc_driver_t;
typedef struct { KC_NVRTC_FUNCS(KC_MEMBER) } kc_nvrtc_t;
typedef struct { KC_CUBLASLT_FUNCS(KC_MEMBER) } kc_cublaslt_t;
typedef struct { KC_CUDNN_FUNCS(KC_MEMBER) } kc_cudnn_t;
#undef KC_MEMBER

extern kc_driver_t kc_cu;
extern kc_nvrtc_t kc_nvrtc;
extern kc_cublaslt_t kc_lt;
extern kc_cudnn_t kc_dnn;

/// Which library a loader call opens.
typedef enum { KC_LIB_DRIVER = 0, KC_LIB_NVRTC = 1, KC_LIB_CUBLASLT = 2, KC_LIB_CUDNN = 3 } kc_library_t;

/// Opens a library (search order: KILN_CUDA_LIBS, the system loader, CUDA_HOME and /usr/local/cuda, an active
/// virtual environment's site-packages nvidia/*/lib) and resolves its symbols. Returns 0 on success and writes the
/// path of the file loaded; otherwise non-zero with a message in `message` (what was tried, what is missing).
/// Loading again after success returns 0 at once.
int kc_load(kc_library_t library, char *path, size_t pathSize, char *message, size_t messageSize);

/// 1 when the library's table is filled.
int kc_loaded(kc_library_t library);

/// The folders searched for a library, in order, one per line (for messages and tests).
int kc_search_folders(char *buffer, size_t size);

// MARK: cuDNN fused attention (sdpa.c)

/// A finalized cuDNN execution plan: scaled-dot-product attention (BF16 or FP8) over tensors laid out [B, L, H, D]
/// (the op interface's [B, L, H*D]), or a convolution.
typedef struct kc_sdpa_plan kc_sdpa_plan;

/// Builds the plan (`config`: which of the heuristic's executable engine configs, 0 = first). Returns 0 or a cuDNN
/// status, with a message naming the failing step in `message`; `info` gets the engine's description.
int kc_sdpa_create(cudnnHandle_t handle, int64_t batch, int64_t heads, int64_t queries, int64_t keys, int64_t dim,
                   int config, kc_sdpa_plan **plan, int64_t *workspaceBytes, int *configCount,
                   char *info, size_t infoSize, char *message, size_t messageSize);

/// Enqueues the attention on the handle's stream.
int kc_sdpa_execute(cudnnHandle_t handle, const kc_sdpa_plan *plan, CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                    CUdeviceptr o, float scale, CUdeviceptr workspace, char *message, size_t messageSize);

void kc_sdpa_destroy(kc_sdpa_plan *plan);

/// A plan for FP8 (e4m3) attention on Hopper, inference (no mask, dropout or statistics): Q, K, V and O e4m3 with
/// per-tensor fp32 scales in device memory, fp32 math, the probabilities quantized to e4m3 for the second matmul. Same
/// arguments and results as kc_sdpa_create.
int kc_sdpa_fp8_create(cudnnHandle_t handle, int64_t batch, int64_t heads, int64_t queries, int64_t keys, int64_t dim,
                       int config, kc_sdpa_plan **plan, int64_t *workspaceBytes, int *configCount,
                       char *info, size_t infoSize, char *message, size_t messageSize);

/// Enqueues FP8 attention on the handle's stream: every scale a device fp32 scalar (real value = code x descale;
/// O's codes = value x scaleO, P's = probability x scaleS), amaxS and amaxO receive max |P| and max |O| (unscaled),
/// `attnScale` multiplies the scores by value. No host synchronization: usable under stream capture.
int kc_sdpa_fp8_execute(cudnnHandle_t handle, const kc_sdpa_plan *plan, CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                        CUdeviceptr o, CUdeviceptr descaleQ, CUdeviceptr descaleK, CUdeviceptr descaleV, CUdeviceptr descaleS,
                        CUdeviceptr scaleS, CUdeviceptr scaleO, CUdeviceptr amaxS, CUdeviceptr amaxO, float attnScale,
                        CUdeviceptr workspace, char *message, size_t messageSize);

/// A cuDNN plan for a BF16 2-D convolution over NHWC input, KRSC filter ([O, kh, kw, I]), NHWC output, with the
/// per-channel bias [K] and a residual (NHWC like the output) optionally added in the same kernel, in fp32
/// (destroyed with kc_sdpa_destroy).
int kc_conv_create(cudnnHandle_t handle, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s,
                   int64_t stride, int64_t padTop, int64_t padLeft, int64_t padBottom, int64_t padRight,
                   int64_t outH, int64_t outW, int withBias, int withResidual, int config, kc_sdpa_plan **plan,
                   int64_t *workspaceBytes, int *configCount, char *info, size_t infoSize, char *message, size_t messageSize);

/// `bias` and `residual` are read only where the plan was built with them.
int kc_conv_execute(cudnnHandle_t handle, const kc_sdpa_plan *plan, CUdeviceptr x, CUdeviceptr w, CUdeviceptr y,
                    CUdeviceptr bias, CUdeviceptr residual, CUdeviceptr workspace, char *message, size_t messageSize);

#endif
