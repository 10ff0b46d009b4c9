/* safetensors.c - map a .safetensors file read-only and validate every entry
 * before any tensor is used, so that a damaged or foreign file fails at load
 * with a message naming the tensor, never later with a crash.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON, then the data
 * area; data_offsets count from the start of the data area. */
#define _GNU_SOURCE /* mremap, MAP_ANONYMOUS, madvise */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "util.h"

/* Same cap as the reference implementation: a bigger header is not a real file. */
#define VX_ST_MAX_HEADER 100000000ull

static const char *const dtype_names[VX_DT_COUNT] = {
    [VX_DT_F32] = "F32", [VX_DT_F16] = "F16", [VX_DT_BF16] = "BF16", [VX_DT_Q8] = "Q8",
    [VX_DT_Q4] = "Q4",   [VX_DT_I8] = "I8",   [VX_DT_U8] = "U8",     [VX_DT_I32] = "I32",
    [VX_DT_I64] = "I64", [VX_DT_F64] = "F64",
};

size_t vx_dtype_size(vx_dtype dt) {
    switch (dt) {
    case VX_DT_F32: return 4;
    case VX_DT_F16: return 2;
    case VX_DT_BF16: return 2;
    case VX_DT_I8: return 1;
    case VX_DT_U8: return 1;
    case VX_DT_I32: return 4;
    case VX_DT_I64: return 8;
    case VX_DT_F64: return 8;
    default: return 0; /* Q8/Q4: see vx_tensor_nbytes */
    }
}

const char *vx_dtype_name(vx_dtype dt) {
    if ((int)dt < 0 || dt >= VX_DT_COUNT) return "?";
    return dtype_names[dt];
}

int vx_tensor_nbytes(vx_dtype dt, const int64_t *shape, int ndim, size_t *out) {
    if (ndim < 0 || ndim > VX_MAX_DIMS || (int)dt < 0 || dt >= VX_DT_COUNT) return -1;
    uint64_t elems = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && elems > UINT64_MAX / d) return -1;
        elems *= d;
    }
    uint64_t bytes;
    if (vx_dt_is_block(dt)) {
        if (ndim < 1 || shape[ndim - 1] % VX_Q_BLOCK_ELEMS != 0) return -1;
        uint64_t blocks = elems / VX_Q_BLOCK_ELEMS;
        uint64_t bb = dt == VX_DT_Q8 ? VX_Q8_BLOCK_BYTES : VX_Q4_BLOCK_BYTES;
        if (blocks > UINT64_MAX / bb) return -1;
        bytes = blocks * bb;
    } else {
        uint64_t es = vx_dtype_size(dt);
        if (elems > UINT64_MAX / es) return -1;
        bytes = elems * es;
    }
    if (bytes > SIZE_MAX) return -1;
    *out = (size_t)bytes;
    return 0;
}

/* "PATH: tensor 'NAME': what" (name may be NULL -> "PATH: what"). */
static int st_fail(char *err, size_t err_len, const char *path, const char *name,
                   const char *fmt, ...) {
    char prefix[4096 + 512];
    if (name) snprintf(prefix, sizeof prefix, "%s: tensor '%s'", path, name);
    va_list ap;
    va_start(ap, fmt);
    vx_verrf(err, err_len, name ? prefix : path, fmt, ap);
    va_end(ap);
    return -1;
}

void vx_fmt_shape(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t o = 0;
    int k = snprintf(buf, n, "[");
    if (k > 0) o = (size_t)k;
    for (int i = 0; i < ndim && o < n; i++) {
        k = snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (k > 0) o += (size_t)k;
    }
    if (o < n) snprintf(buf + o, n - o, "]");
}

typedef struct {
    size_t begin, end;
    int idx;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Validate one header entry and fill t (name already set). */
static int read_entry(const json_value *e, vx_st_tensor *t, const unsigned char *data,
                      size_t data_size, size_t data_start, size_t *begin_out,
                      const char *path, char *err, size_t err_len) {
    const char *nm = t->name;
    if (e->type != JSON_OBJECT)
        return st_fail(err, err_len, path, nm, "header entry is not a JSON object");

    const json_value *dt = json_get(e, "dtype");
    if (!dt) return st_fail(err, err_len, path, nm, "missing dtype");
    if (dt->type != JSON_STRING) return st_fail(err, err_len, path, nm, "dtype is not a string");
    int found = -1;
    for (int i = 0; i < VX_DT_COUNT; i++)
        if (strlen(dtype_names[i]) == dt->str_len && strcmp(dtype_names[i], dt->str) == 0) found = i;
    if (found < 0)
        return st_fail(err, err_len, path, nm,
                       "unknown dtype '%.32s' (supported: F32 F16 BF16 Q8 Q4 I8 U8 I32 I64 F64)",
                       dt->str);
    t->dtype = (vx_dtype)found;

    const json_value *sh = json_get(e, "shape");
    if (!sh) return st_fail(err, err_len, path, nm, "missing shape");
    if (sh->type != JSON_ARRAY) return st_fail(err, err_len, path, nm, "shape is not an array");
    if (sh->n > VX_MAX_DIMS)
        return st_fail(err, err_len, path, nm, "shape has %zu dims (at most %d supported)", sh->n,
                       VX_MAX_DIMS);
    t->ndim = (int)sh->n;
    for (int i = 0; i < t->ndim; i++) {
        long long d;
        if (json_as_int(&sh->items[i], &d) != 0 || d < 0)
            return st_fail(err, err_len, path, nm, "shape[%d] is not a non-negative integer", i);
        t->shape[i] = (int64_t)d;
    }
    char shs[128];
    vx_fmt_shape(shs, sizeof shs, t->shape, t->ndim);

    const json_value *off = json_get(e, "data_offsets");
    if (!off) return st_fail(err, err_len, path, nm, "missing data_offsets");
    long long b, en;
    if (off->type != JSON_ARRAY || off->n != 2 || json_as_int(&off->items[0], &b) != 0 ||
        json_as_int(&off->items[1], &en) != 0 || b < 0 || en < 0)
        return st_fail(err, err_len, path, nm,
                       "data_offsets must be [begin, end] with two non-negative integers");
    if (b > en)
        return st_fail(err, err_len, path, nm, "data_offsets begin %lld is after end %lld", b, en);
    if ((unsigned long long)en > data_size)
        return st_fail(err, err_len, path, nm,
                       "data_offsets end %lld is past the data area (%zu bytes)", en, data_size);

    size_t want;
    if (vx_dt_is_block(t->dtype)) {
        if (t->ndim < 1 || t->shape[t->ndim - 1] % VX_Q_BLOCK_ELEMS != 0)
            return st_fail(err, err_len, path, nm,
                           "%s needs a last dim that is a multiple of %d (shape %s)",
                           vx_dtype_name(t->dtype), VX_Q_BLOCK_ELEMS, shs);
    }
    if (vx_tensor_nbytes(t->dtype, t->shape, t->ndim, &want) != 0)
        return st_fail(err, err_len, path, nm, "shape %s of %s is too large", shs,
                       vx_dtype_name(t->dtype));
    size_t have = (size_t)(en - b);
    if (have != want)
        return st_fail(err, err_len, path, nm,
                       "data_offsets [%lld, %lld] hold %zu bytes but shape %s of %s needs %zu", b,
                       en, have, shs, vx_dtype_name(t->dtype), want);

    /* 2-byte elements (and the fp16 block scales) must sit at even file
     * offsets so readers can load them as uint16_t. */
    int two_byte = t->dtype == VX_DT_F16 || t->dtype == VX_DT_BF16 || t->dtype == VX_DT_Q8 ||
                   t->dtype == VX_DT_Q4;
    if (two_byte && want > 0 && ((data_start + (size_t)b) & 1))
        return st_fail(err, err_len, path, nm,
                       "%s data at odd offset (data_offsets begin %lld, file offset %zu); "
                       "2-byte elements must be 2-byte aligned",
                       vx_dtype_name(t->dtype), b, data_start + (size_t)b);

    t->data = data + b;
    t->nbytes = want;
    *begin_out = (size_t)b;
    return 0;
}

/* ---- where the bytes live
 * The file is mapped read-only at an address aligned to the kernel's huge
 * page (PMD) size, inside a reservation of whole huge pages (st->map_len),
 * so that vx_st_into_memory can later put anonymous huge pages at the very
 * same address: every pointer into the tensors stays valid. */

/* len bytes of fresh anonymous memory (prot) at an address aligned to
 * align (a power of two), or NULL. */
static void *map_aligned(size_t len, size_t align, int prot) {
    unsigned char *res = mmap(NULL, len + align, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                              -1, 0);
    if (res == MAP_FAILED) return NULL;
    unsigned char *a = (unsigned char *)(((uintptr_t)res + align - 1) & ~(uintptr_t)(align - 1));
    if (a > res) munmap(res, (size_t)(a - res));
    if (a + len < res + len + align) munmap(a + len, (size_t)(res + len + align - (a + len)));
    return a;
}

/* Map the file read-only into st->map / st->map_size (see above). */
static int map_file(const char *path, vx_safetensors *st, char *err, size_t err_len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return st_fail(err, err_len, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return st_fail(err, err_len, path, NULL, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return st_fail(err, err_len, path, NULL, "not a regular file");
    }
    if (sb.st_size < 8) {
        close(fd);
        return st_fail(err, err_len, path, NULL,
                       "file is %lld bytes, too short for the 8-byte header length",
                       (long long)sb.st_size);
    }
    if ((unsigned long long)sb.st_size > SIZE_MAX) {
        close(fd);
        return st_fail(err, err_len, path, NULL, "file is too large to map on this system");
    }
    size_t size = (size_t)sb.st_size;
    const size_t hp = vx_huge_page_size(), len = (size + hp - 1) / hp * hp;
    void *map = MAP_FAILED;
    unsigned char *at = len >= size ? map_aligned(len, hp, PROT_NONE) : NULL;
    if (at) {
        map = mmap(at, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
        if (map == MAP_FAILED) munmap(at, len);
    }
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return st_fail(err, err_len, path, NULL, "cannot mmap %zu bytes: %s", size,
                       strerror(map_errno));
    st->map = map;
    st->map_size = size;
    st->map_len = len;
    st->map_align = hp;
    return 0;
}

/* Bytes of the mapping at `start` that sit in huge pages (its AnonHugePages
 * line in /proc/self/smaps), -1 when unknown. */
static int64_t huge_bytes_at(const void *start) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[256];
    int inside = 0;
    long long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            if (inside) break;
            inside = lo == (unsigned long)(uintptr_t)start;
        } else if (inside && sscanf(line, "AnonHugePages: %lld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb < 0 ? -1 : (int64_t)kb * 1024;
}

/* One reader's part of the copy: bytes [begin, end) of the file into dst. */
typedef struct {
    int fd;
    unsigned char *dst;
    size_t begin, end, got; /* got: bytes read from begin on */
    int err;                /* errno of a failed read, else 0 */
} read_part;

static void *read_part_run(void *arg) {
    read_part *p = arg;
    while (p->begin + p->got < p->end) {
        const size_t at = p->begin + p->got, rest = p->end - at;
        const ssize_t r = pread(p->fd, p->dst + at, rest < ((size_t)64 << 20) ? rest : (size_t)64 << 20,
                                (off_t)at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            p->err = r < 0 ? errno : 0;
            break;
        }
        p->got += (size_t)r;
    }
    return NULL;
}

int vx_st_read_parallel(const char *path, unsigned char *dst, size_t size, size_t align,
                        size_t *failed_at) {
    *failed_at = 0;
    if (align == 0) align = 1;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const size_t min_part = VX_ST_MIN_PART_ALIGNS * align;
    int k = cpus < 1 ? 1 : cpus > VX_ST_MAX_READERS ? VX_ST_MAX_READERS : (int)cpus;
    if ((size_t)k > size / min_part + 1) k = (int)(size / min_part + 1);
    read_part part[VX_ST_MAX_READERS];
    pthread_t th[VX_ST_MAX_READERS];
    int started[VX_ST_MAX_READERS] = {0};
    const size_t step = (size / (size_t)k + align - 1) / align * align;
    for (int i = 0; i < k; i++) {
        const size_t b = (size_t)i * step < size ? (size_t)i * step : size;
        part[i] = (read_part){fd, dst, b, b + step < size && i + 1 < k ? b + step : size, 0, 0};
        if (i > 0) started[i] = pthread_create(&th[i], NULL, read_part_run, &part[i]) == 0;
    }
    read_part_run(&part[0]);
    for (int i = 1; i < k; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else read_part_run(&part[i]); /* no thread: read it here */
    }
    close(fd);
    *failed_at = size;
    for (int i = 0; i < k; i++)
        if (part[i].begin + part[i].got < part[i].end) {
            *failed_at = part[i].begin + part[i].got;
            return part[i].err;
        }
    return 0;
}

int vx_st_into_memory(vx_safetensors *st, int64_t reserve, char *note, size_t note_len) {
    const double gb = 1e-9;
    if (!st || !st->map || st->in_memory) return 0;
#ifdef __linux__
    const int64_t avail = vx_mem_available(), size = (int64_t)st->map_size;
    if (avail <= 0) {
        snprintf(note, note_len, "weights mapped from the file (free memory unknown)");
        return -1;
    }
    if (size + reserve > avail) {
        snprintf(note, note_len,
                 "weights mapped from the file: a %.2f GB copy would leave less than %.2f GB "
                 "of the %.2f GB available",
                 size * gb, reserve * gb, avail * gb);
        return -1;
    }
    const size_t len = st->map_len, hp = st->map_align;
    unsigned char *a = map_aligned(len, hp, PROT_READ | PROT_WRITE);
    if (!a) {
        snprintf(note, note_len, "weights mapped from the file: no %.2f GB of anonymous memory (%s)",
                 len * gb, strerror(errno));
        return -1;
    }
    madvise(a, len, MADV_HUGEPAGE); /* a kernel without THP says EINVAL: 4 KB pages then */
    /* read from the file rather than copied from its mapping: no page
     * faults on the way (4 KB each), and the process holds the weights once,
     * not twice, at its peak (the page cache keeps the file for the next
     * start, for as long as memory allows) */
    size_t failed_at = 0;
    const int read_errno = vx_st_read_parallel(st->path, a, st->map_size, hp, &failed_at);
    if (failed_at < st->map_size) { /* the file went away or shrank since it was opened */
        snprintf(note, note_len, "weights mapped from the file: reading it again failed at byte "
                 "%zu of %zu (%s)", failed_at, st->map_size,
                 read_errno ? strerror(read_errno) : "it is shorter now");
        munmap(a, len);
        return -1;
    }
    if (mprotect(a, len, PROT_READ) != 0 ||
        mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, st->map) == MAP_FAILED) {
        snprintf(note, note_len, "weights mapped from the file: moving the copy failed (%s)",
                 strerror(errno));
        munmap(a, len);
        return -1;
    }
    st->in_memory = 1;
    const int64_t huge = huge_bytes_at(st->map);
    if (huge < 0)
        snprintf(note, note_len, "weights copied into memory (%.2f GB)", size * gb);
    else
        snprintf(note, note_len, "weights copied into memory (%.2f GB, %.2f GB of it in huge pages)",
                 size * gb, huge * gb);
    return 0;
#else
    (void)reserve;
    snprintf(note, note_len, "weights mapped from the file (no anonymous memory move here)");
    return -1;
#endif
}

/* The header's entries into st->tensors (their byte spans into spans), and
 * the block layout from __metadata__. */
static int read_entries(const json_value *h, vx_safetensors *st, span *spans,
                        const unsigned char *data, size_t data_size, size_t data_start,
                        const char *path, char *err, size_t err_len) {
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->keys[i], "__metadata__") == 0) {
            const json_value *lay = json_get(&h->items[i], "voxd_q_layout");
            if (lay && lay->type == JSON_STRING && !st->q_layout && !(st->q_layout = strdup(lay->str))) {
                st_fail(err, err_len, path, NULL, "out of memory");
                return -1;
            }
            continue;
        }
        vx_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = strdup(h->keys[i]);
        if (!t->name) {
            st_fail(err, err_len, path, h->keys[i], "out of memory");
            return -1;
        }
        st->n_tensors++; /* counted now so close() frees the name */
        size_t begin = 0;
        if (read_entry(&h->items[i], t, data, data_size, data_start, &begin, path, err, err_len))
            return -1;
        spans[st->n_tensors - 1] = (span){begin, begin + t->nbytes, st->n_tensors - 1};
    }
    return 0;
}

/* Overlaps: sorted by begin, each non-empty span must start at or after
 * the furthest end seen so far. Empty tensors occupy nothing. */
static int check_overlaps(const vx_safetensors *st, span *spans, size_t n, const char *path,
                          char *err, size_t err_len) {
    if (n > 1) {
        qsort(spans, n, sizeof *spans, span_cmp);
        int far = -1; /* span with the furthest end so far */
        for (size_t i = 0; i < n; i++) {
            if (spans[i].begin == spans[i].end) continue;
            if (far >= 0 && spans[i].begin < spans[far].end) {
                const vx_st_tensor *a = &st->tensors[spans[far].idx];
                const vx_st_tensor *b = &st->tensors[spans[i].idx];
                st_fail(err, err_len, path, b->name,
                        "data_offsets [%zu, %zu] overlap tensor '%s' [%zu, %zu]", spans[i].begin,
                        spans[i].end, a->name, spans[far].begin, spans[far].end);
                return -1;
            }
            if (far < 0 || spans[i].end > spans[far].end) far = (int)i;
        }
    }
    return 0;
}

int vx_st_open(const char *path, vx_safetensors *st, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!st) return -1;
    memset(st, 0, sizeof *st);
    if (!path) return st_fail(err, err_len, "(null)", NULL, "no path");

    if (map_file(path, st, err, err_len) != 0) return -1;
    const size_t size = st->map_size;
    st->path = strdup(path);
    if (!st->path) {
        st_fail(err, err_len, path, NULL, "out of memory");
        goto fail;
    }

    const unsigned char *m = st->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | m[i]; /* little-endian */
    if (hlen > size - 8) {
        st_fail(err, err_len, path, NULL, "header length %llu is past the end of the file (%zu bytes)",
                (unsigned long long)hlen, size);
        goto fail;
    }
    if (hlen > VX_ST_MAX_HEADER) {
        st_fail(err, err_len, path, NULL, "header length %llu is over the %llu-byte limit",
                (unsigned long long)hlen, VX_ST_MAX_HEADER);
        goto fail;
    }
    size_t data_start = 8 + (size_t)hlen;
    size_t data_size = size - data_start;
    const unsigned char *data = m + data_start;

    json_value *h = NULL;
    char jerr[200];
    if (json_parse((const char *)m + 8, (size_t)hlen, &h, jerr, sizeof jerr) != 0) {
        st_fail(err, err_len, path, NULL, "header is not valid JSON: %s", jerr);
        goto fail;
    }
    span *spans = NULL;
    if (h->type != JSON_OBJECT) {
        st_fail(err, err_len, path, NULL, "header is not a JSON object");
        goto fail_h;
    }
    size_t n = 0;
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->keys[i], "__metadata__") != 0) n++;
    if (n > (size_t)0x7fffffff) {
        st_fail(err, err_len, path, NULL, "too many tensors");
        goto fail_h;
    }
    if (n) {
        st->tensors = calloc(n, sizeof *st->tensors);
        spans = malloc(n * sizeof *spans);
        if (!st->tensors || !spans) {
            st_fail(err, err_len, path, NULL, "out of memory for %zu tensors", n);
            goto fail_h;
        }
    }
    if (read_entries(h, st, spans, data, data_size, data_start, path, err, err_len) != 0 ||
        check_overlaps(st, spans, n, path, err, err_len) != 0)
        goto fail_h;
    free(spans);
    json_free(h);
    return 0;

fail_h:
    free(spans);
    json_free(h);
fail:
    vx_st_close(st);
    return -1;
}

void vx_st_close(vx_safetensors *st) {
    if (!st) return;
    if (st->tensors)
        for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    free(st->q_layout);
    if (st->map) munmap(st->map, st->map_len);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const vx_st_tensor *vx_st_find(const vx_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}
