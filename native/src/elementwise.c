/* elementwise.c - the element-wise loops a backend may replace with wider
 * vectors (engine.h's vx_backend), in vec4.h's 4 lanes: these define the
 * bits. Built without contraction (CMakeLists.txt), as vec4.h needs. */
#include <stddef.h>
#include <string.h>

#include "engine.h"
#include "vec4.h"

#define VX_SWIGLU_NAME vx_swiglu4
#define VX_SWIGLU_F vx_f32x4
#define VX_SWIGLU_EXP vx_exp4
#include "vswiglu.h"
