/* avx512vnni.c - the AVX2 backend with AVX512-VNNI's vpdpbusd (EVEX; zmm in
 * the batched tiles) in its Q8/Q4 kernels (x86_q.h with XQ_VNNI 2); its float
 * paths are the AVX2 file's. Compiled with -mavx512vnni -mavx512vl -mavx512f
 * -mavx512bw (CMakeLists.txt) and chosen at run time only where the CPU has
 * all four; on other architectures this file is empty. */
#if defined(VX_HAVE_AVX512VNNI)
#include "engine.h"

#define INLINE static inline __attribute__((always_inline))
#define XQ_VNNI 2
#include "x86_q.h"

static const vx_backend avx512vnni = {"avx2+avx512vnni", vx_avx2_matmul_rows, x86_matmul_rows_q,
                                      VX_WEIGHT_DTYPES,  vx_avx2_attn_scores, vx_avx2_attn_values,
                                      vx_avx2_quantize_act, vx_avx2_swiglu};

const vx_backend *vx_backend_avx512vnni(void) {
    __builtin_cpu_init();
    if (vx_backend_avx2() && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw"))
        return &avx512vnni;
    return NULL;
}
#endif
