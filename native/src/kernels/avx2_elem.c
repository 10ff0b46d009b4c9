/* avx2_elem.c - the x86 backends' element-wise loops in 8-lane vectors:
 * elementwise.c's, lane for lane (vecw.h's exponential and vswiglu.h's loop
 * at 8 lanes), so the same bits. Compiled with -mavx2 and without
 * contraction, and without -mfma, so no multiply can fuse into an add
 * (CMakeLists.txt); device_cpu.c has the timings. */
#if defined(VX_HAVE_AVX2)
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"

typedef float vx_f32x8 __attribute__((vector_size(32)));
typedef int32_t vx_i32x8 __attribute__((vector_size(32)));

#define VX_ROUND_NAME vx_round8
#define VX_EXP_NAME vx_exp8
#define VX_EXP_F vx_f32x8
#define VX_EXP_I vx_i32x8
#include "vecw.h"

#define VX_SWIGLU_NAME vx_avx2_swiglu
#define VX_SWIGLU_F vx_f32x8
#define VX_SWIGLU_EXP vx_exp8
#include "vswiglu.h"
#endif
