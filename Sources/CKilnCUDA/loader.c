// Run-time loading of the CUDA driver, NVRTC and cuBLASLt with dlopen; see CKilnCUDA.h.
#define _GNU_SOURCE
#include "CKilnCUDA.h"
#include <dlfcn.h>
#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kc_driver_t kc_cu;
kc_nvrtc_t kc_nvrtc;
kc_cublaslt_t kc_lt;
kc_cudnn_t kc_dnn;

static pthread_mutex_t kc_lock = PTHREAD_MUTEX_INITIALIZER;
static int kc_done[4];
static char kc_paths[4][1024];

typedef struct { const char *field; const char *symbol; const char *fallback; size_t offset; } kc_symbol_t;

#define KC_SYM_DRIVER(ret, name, args, symbol, fallback) { #name, symbol, fallback, offsetof(kc_driver_t, name) },
#define KC_SYM_NVRTC(ret, name, args, symbol, fallback) { #name, symbol, fallback, offsetof(kc_nvrtc_t, name) },
#define KC_SYM_LT(ret, name, args, symbol, fallback) { #name, symbol, fallback, offsetof(kc_cublaslt_t, name) },
#define KC_SYM_DNN(ret, name, args, symbol, fallback) { #name, symbol, fallback, offsetof(kc_cudnn_t, name) },
static const kc_symbol_t kc_driver_symbols[] = { KC_DRIVER_FUNCS(KC_SYM_DRIVER) };
static const kc_symbol_t kc_nvrtc_symbols[] = { KC_NVRTC_FUNCS(KC_SYM_NVRTC) };
static const kc_symbol_t kc_lt_symbols[] = { KC_CUBLASLT_FUNCS(KC_SYM_LT) };
static const kc_symbol_t kc_dnn_symbols[] = { KC_CUDNN_FUNCS(KC_SYM_DNN) };

static const char *const kc_driver_names[] = { "libcuda.so.1", "libcuda.so", NULL };
static const char *const kc_nvrtc_names[] = { "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", NULL };
static const char *const kc_lt_names[] = { "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so", NULL };
static const char *const kc_dnn_names[] = { "libcudnn.so.9", "libcudnn.so", NULL };

static const char *const kc_labels[] = { "CUDA driver (libcuda.so.1)", "NVRTC (libnvrtc.so)", "cuBLASLt (libcublasLt.so)", "cuDNN (libcudnn.so.9)" };
static const char *const kc_hints[] = {
    "install the NVIDIA driver (libcuda.so.1 comes with it) and run on a machine with an NVIDIA GPU",
    "pip install nvidia-cuda-nvrtc (in an active virtual environment), or install the CUDA toolkit, "
    "or set KILN_CUDA_LIBS to the folder holding libnvrtc.so.13",
    "pip install nvidia-cublas (in an active virtual environment), or install the CUDA toolkit, "
    "or set KILN_CUDA_LIBS to the folder holding libcublasLt.so.13",
    "pip install nvidia-cudnn-cu13 (in an active virtual environment), or install cuDNN 9, "
    "or set KILN_CUDA_LIBS to the folder holding libcudnn.so.9",
};

#define KC_MAX_FOLDERS 64
typedef struct { char *items[KC_MAX_FOLDERS]; int count; } kc_folders_t;

static void kc_add(kc_folders_t *f, const char *folder) {
    if (!folder || !*folder || f->count >= KC_MAX_FOLDERS) return;
    for (int i = 0; i < f->count; i++) if (f->items[i] && strcmp(f->items[i], folder) == 0) return;
    f->items[f->count++] = strdup(folder);
}

static void kc_add_system(kc_folders_t *f) {
    if (f->count < KC_MAX_FOLDERS) f->items[f->count++] = NULL;  // NULL: the system loader's own search
}

static void kc_folders(kc_folders_t *f) {
    memset(f, 0, sizeof *f);
    const char *list = getenv("KILN_CUDA_LIBS");
    if (list && *list) {
        char *copy = strdup(list), *save = NULL;
        for (char *p = strtok_r(copy, ":", &save); p; p = strtok_r(NULL, ":", &save)) kc_add(f, p);
        free(copy);
    }
    kc_add_system(f);
    char buffer[1024];
    const char *homes[] = { getenv("CUDA_HOME"), getenv("CUDA_PATH"), "/usr/local/cuda" };
    for (int i = 0; i < 3; i++) {
        if (!homes[i] || !*homes[i]) continue;
        snprintf(buffer, sizeof buffer, "%s/lib64", homes[i]); kc_add(f, buffer);
        snprintf(buffer, sizeof buffer, "%s/targets/x86_64-linux/lib", homes[i]); kc_add(f, buffer);
        snprintf(buffer, sizeof buffer, "%s/lib", homes[i]); kc_add(f, buffer);
    }
    kc_add(f, "/usr/local/nvidia/lib64");
    const char *venv = getenv("VIRTUAL_ENV");
    if (venv && *venv) {
        snprintf(buffer, sizeof buffer, "%s/lib/python3*/site-packages/nvidia/*/lib", venv);
        glob_t g;
        if (glob(buffer, 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) kc_add(f, g.gl_pathv[i]);
        }
        globfree(&g);
    }
}

static void kc_free_folders(kc_folders_t *f) {
    for (int i = 0; i < f->count; i++) free(f->items[i]);
}

int kc_search_folders(char *out, size_t size) {
    kc_folders_t f;
    kc_folders(&f);
    size_t used = 0;
    if (size) out[0] = 0;
    for (int i = 0; i < f.count && used < size; i++) {
        int n = snprintf(out + used, size - used, "%s\n", f.items[i] ? f.items[i] : "(system loader)");
        if (n > 0) used += (size_t)n;
    }
    kc_free_folders(&f);
    return f.count;
}

/// NVRTC from pip wheels has no RPATH: preload its builtins library from the same folder.
static void kc_preload_builtins(const char *folder) {
    char pattern[1200];
    snprintf(pattern, sizeof pattern, "%s/libnvrtc-builtins.so.*", folder);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (strstr(g.gl_pathv[i], ".alt.")) continue;
            if (dlopen(g.gl_pathv[i], RTLD_NOW | RTLD_GLOBAL)) break;
        }
    }
    globfree(&g);
}

int kc_loaded(kc_library_t library) {
    return (library >= 0 && library <= 3) ? kc_done[library] : 0;
}

int kc_load(kc_library_t library, char *path, size_t pathSize, char *message, size_t messageSize) {
    if (library < 0 || library > 3) return -1;
    pthread_mutex_lock(&kc_lock);
    if (kc_done[library]) {
        if (path && pathSize) snprintf(path, pathSize, "%s", kc_paths[library]);
        pthread_mutex_unlock(&kc_lock);
        return 0;
    }
    const char *const *names;
    const kc_symbol_t *symbols;
    size_t symbolCount, tableSize;
    char *table;
    switch (library) {
    case KC_LIB_DRIVER: names = kc_driver_names; symbols = kc_driver_symbols; symbolCount = sizeof kc_driver_symbols / sizeof *symbols;
        table = (char *)&kc_cu; tableSize = sizeof kc_cu; break;
    case KC_LIB_NVRTC: names = kc_nvrtc_names; symbols = kc_nvrtc_symbols; symbolCount = sizeof kc_nvrtc_symbols / sizeof *symbols;
        table = (char *)&kc_nvrtc; tableSize = sizeof kc_nvrtc; break;
    case KC_LIB_CUBLASLT: names = kc_lt_names; symbols = kc_lt_symbols; symbolCount = sizeof kc_lt_symbols / sizeof *symbols;
        table = (char *)&kc_lt; tableSize = sizeof kc_lt; break;
    default: names = kc_dnn_names; symbols = kc_dnn_symbols; symbolCount = sizeof kc_dnn_symbols / sizeof *symbols;
        table = (char *)&kc_dnn; tableSize = sizeof kc_dnn; break;
    }

    kc_folders_t f;
    kc_folders(&f);
    char tried[2048] = "";
    size_t triedUsed = 0;
    void *handle = NULL;
    char candidate[1200];
    for (int i = 0; i < f.count && !handle; i++) {
        if (f.items[i] && triedUsed < sizeof tried) {
            int w = snprintf(tried + triedUsed, sizeof tried - triedUsed, " %s", f.items[i]);
            if (w > 0) triedUsed += (size_t)w;
        }
        for (int n = 0; names[n] && !handle; n++) {
            if (f.items[i]) {
                snprintf(candidate, sizeof candidate, "%s/%s", f.items[i], names[n]);
                if (library == KC_LIB_NVRTC) {
                    FILE *probe = fopen(candidate, "rb");
                    if (!probe) continue;
                    fclose(probe);
                    kc_preload_builtins(f.items[i]);
                }
            } else {
                snprintf(candidate, sizeof candidate, "%s", names[n]);
            }
            handle = dlopen(candidate, RTLD_NOW | RTLD_LOCAL);
        }
    }
    kc_free_folders(&f);
    if (!handle) {
        snprintf(message, messageSize, "%s not found (searched KILN_CUDA_LIBS, the system loader path, and:%s); %s",
                 kc_labels[library], tried, kc_hints[library]);
        pthread_mutex_unlock(&kc_lock);
        return 1;
    }
    for (size_t i = 0; i < symbolCount; i++) {
        void *address = dlsym(handle, symbols[i].symbol);
        if (!address && symbols[i].fallback) address = dlsym(handle, symbols[i].fallback);
        if (!address) {
            snprintf(message, messageSize, "%s at %s lacks the symbol %s (library too old?); %s",
                     kc_labels[library], candidate, symbols[i].symbol, kc_hints[library]);
            memset(table, 0, tableSize);
            dlclose(handle);
            pthread_mutex_unlock(&kc_lock);
            return 2;
        }
        memcpy(table + symbols[i].offset, &address, sizeof address);
    }
    // The file actually loaded, as the dynamic loader resolved it.
    Dl_info info;
    void *first;
    memcpy(&first, table + symbols[0].offset, sizeof first);
    if (dladdr(first, &info) && info.dli_fname) snprintf(kc_paths[library], sizeof kc_paths[library], "%s", info.dli_fname);
    else snprintf(kc_paths[library], sizeof kc_paths[library], "%s", candidate);
    if (path && pathSize) snprintf(path, pathSize, "%s", kc_paths[library]);
    kc_done[library] = 1;
    pthread_mutex_unlock(&kc_lock);
    return 0;
}
