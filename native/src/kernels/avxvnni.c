/* avxvnni.c - the AVX2 backend with AVX-VNNI's vpdpbusd (VEX, on ymm) in its
 * Q8/Q4 kernels (x86_q.h with XQ_VNNI 1); its float paths are the AVX2
 * file's. Compiled with -mavxvnni (CMakeLists.txt) and chosen at run time
 * only where the CPU has AVX-VNNI; on other architectures this file is
 * empty. */
#if defined(VX_HAVE_AVXVNNI)
#include "engine.h"

#define INLINE static inline __attribute__((always_inline))
#define XQ_VNNI 1
#include "x86_q.h"

static const vx_backend avxvnni = {"avx2+avxvnni",   vx_avx2_matmul_rows, x86_matmul_rows_q,
                                   VX_WEIGHT_DTYPES, vx_avx2_attn_scores, vx_avx2_attn_values,
                                   vx_avx2_quantize_act, vx_avx2_swiglu};

const vx_backend *vx_backend_avxvnni(void) {
    __builtin_cpu_init();
    if (vx_backend_avx2() && __builtin_cpu_supports("avxvnni")) return &avxvnni;
    return NULL;
}
#endif
