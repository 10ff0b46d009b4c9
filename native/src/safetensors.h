/* safetensors.h - read-only, memory-mapped safetensors files. */
#ifndef VX_SAFETENSORS_H
#define VX_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
    VX_DT_F32 = 0, VX_DT_F16 = 1, VX_DT_BF16 = 2,
    VX_DT_Q8 = 3,  /* voxd block format: see quant.h */
    VX_DT_Q4 = 4,
    VX_DT_I8 = 5, VX_DT_U8 = 6, VX_DT_I32 = 7, VX_DT_I64 = 8, VX_DT_F64 = 9,
    VX_DT_COUNT
} vx_dtype;

#define VX_MAX_DIMS 4

typedef struct {
    char *name;
    vx_dtype dtype;
    int ndim;
    int64_t shape[VX_MAX_DIMS];
    const void *data;    /* inside the mapping */
    size_t nbytes;
} vx_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    vx_st_tensor *tensors;
    int n_tensors;
} vx_safetensors;

/* Bytes one element takes (0 for block formats), and the name ("BF16"...). */
size_t vx_dtype_size(vx_dtype dt);
const char *vx_dtype_name(vx_dtype dt);

/* Map and validate a file: header length within the file, header is valid JSON,
 * each entry has a known dtype, a shape of <= 4 non-negative dims, offsets
 * inside the data area, byte size == product(shape) * dtype size (block formats:
 * see quant.h), and no two tensors overlap. On failure returns -1 with
 * "PATH: tensor 'NAME': what is wrong" (or "PATH: what") in err. */
int vx_st_open(const char *path, vx_safetensors *st, char *err, size_t err_len);
void vx_st_close(vx_safetensors *st);
const vx_st_tensor *vx_st_find(const vx_safetensors *st, const char *name);
#endif
