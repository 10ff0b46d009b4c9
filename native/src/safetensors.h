/* safetensors.h - read-only safetensors files: memory-mapped, or copied into
 * the process's memory (vx_st_into_memory). */
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

/* voxd block formats (one block = 32 consecutive elements of the last dim):
 * Q8: 2-byte fp16 scale + 32 int8               = 34 bytes
 * Q4: 2-byte fp16 scale + 16 bytes of 4-bit pairs = 18 bytes
 * A Q8/Q4 tensor's last dim must be a multiple of VX_Q_BLOCK_ELEMS and its
 * size is product(shape) / 32 * block bytes. */
#define VX_Q_BLOCK_ELEMS 32
#define VX_Q8_BLOCK_BYTES 34
#define VX_Q4_BLOCK_BYTES 18

/* Q8 or Q4: a block format (matmuls take its int8 path, quant.h's layout). */
static inline int vx_dt_is_block(int dt) { return dt == VX_DT_Q8 || dt == VX_DT_Q4; }

/* Alignment of vx_st_tensor.data: the mapping is page-aligned, but the data
 * area starts at 8 + header length, which need not be a multiple of 4 or 8.
 * vx_st_open guarantees only 2-byte alignment, and only for dtypes whose
 * elements or block scales are 2 bytes (F16, BF16, Q8, Q4): an odd file
 * offset for those is rejected. Readers may load those as uint16_t, but must
 * read anything wider (F32, I32, I64, F64) with memcpy unless they check
 * the pointer's alignment themselves. */

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
    size_t map_size;  /* the file's bytes at map */
    size_t map_len;   /* the reservation map heads: map_size rounded up to huge pages */
    size_t map_align; /* the huge page size map and map_len are aligned to */
    int in_memory;    /* vx_st_into_memory moved the bytes into anonymous memory */
    vx_st_tensor *tensors;
    int n_tensors;
    char *q_layout; /* __metadata__'s "voxd_q_layout" (quant.h), or NULL */
} vx_safetensors;

/* Bytes one element takes (0 for block formats), and the name ("BF16"...). */
size_t vx_dtype_size(vx_dtype dt);
const char *vx_dtype_name(vx_dtype dt);
/* Bytes a tensor of this dtype and shape takes: returns 0 and sets *out, or
 * -1 when the shape does not fit the dtype (negative dim; block format with
 * no dims or a last dim that is not a multiple of 32) or the size overflows. */
int vx_tensor_nbytes(vx_dtype dt, const int64_t *shape, int ndim, size_t *out);
/* A shape as "[d0, d1, ...]" for messages (cut to n - 1 bytes). */
void vx_fmt_shape(char *buf, size_t n, const int64_t *shape, int ndim);

/* Map and validate a file: header length within the file, header is valid JSON,
 * each entry has a known dtype, a shape of <= 4 non-negative dims, offsets
 * inside the data area, byte size == product(shape) * dtype size (block formats:
 * see quant.h), and no two tensors overlap. On failure returns -1 with
 * "PATH: tensor 'NAME': what is wrong" (or "PATH: what") in err. */
int vx_st_open(const char *path, vx_safetensors *st, char *err, size_t err_len);
void vx_st_close(vx_safetensors *st);
/* Move the file's bytes into anonymous memory, in huge pages where the
 * kernel has them, at the same address (every tensor pointer stays valid).
 * The decoder reads every weight at every step: a q4 step took 85-92 ms on
 * a 2-core Xeon from the file's page cache (4 KB pages), 81 ms from
 * anonymous 4 KB pages and 72-75 ms from huge pages (fewer TLB misses, and
 * the prefetchers stop at page ends). Done only
 * when the copy leaves `reserve` bytes of MemAvailable (the page cache the
 * file sits in counts as available: the kernel drops it once copied); else
 * the file stays mapped. note says which, with the numbers. 0 when the
 * bytes are in memory, -1 when they stay mapped. */
int vx_st_into_memory(vx_safetensors *st, int64_t reserve, char *note, size_t note_len);
/* The first size bytes of the file at path into dst, by up to
 * VX_ST_MAX_READERS readers at once (one per core): faulting in and zeroing
 * fresh pages is most of the work, and it runs on every core. Each reader
 * takes whole units of align bytes (the huge page: no two fault the same one)
 * and at least VX_ST_MIN_PART_ALIGNS of them (256 MB of 2 MiB pages: a
 * thread for less does not pay). *failed_at is size when all was read, else the first byte
 * not read; returns that failure's errno (0: the file ended early). */
#define VX_ST_MIN_PART_ALIGNS 128
#define VX_ST_MAX_READERS 4 /* readers at most */
int vx_st_read_parallel(const char *path, unsigned char *dst, size_t size, size_t align,
                        size_t *failed_at);
const vx_st_tensor *vx_st_find(const vx_safetensors *st, const char *name);
#endif
