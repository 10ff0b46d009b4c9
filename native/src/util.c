/* util.c - see util.h. */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

int vx_verrf(char *err, size_t err_len, const char *prefix, const char *fmt, va_list ap) {
    if (!err || err_len == 0) return -1;
    int k = prefix ? snprintf(err, err_len, "%s: ", prefix) : 0;
    if (k < 0) k = 0;
    if ((size_t)k < err_len) vsnprintf(err + k, err_len - (size_t)k, fmt, ap);
    return -1;
}

int vx_errf(char *err, size_t err_len, const char *prefix, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vx_verrf(err, err_len, prefix, fmt, ap);
    va_end(ap);
    return -1;
}

int64_t vx_grow_cap(int64_t cap, int64_t need, int64_t first) {
    if (need <= cap) return cap;
    int64_t c = cap ? cap : first;
    while (c < need) c *= 2;
    return c;
}

int vx_grow(void **buf, int64_t *cap, int64_t need, size_t elem, int64_t first) {
    if (need <= *cap) return 0;
    const int64_t c = vx_grow_cap(*cap, need, first);
    if (elem && (uint64_t)c > SIZE_MAX / elem) return -1;
    void *b = realloc(*buf, (size_t)c * elem);
    if (!b) return -1;
    *buf = b;
    *cap = c;
    return 0;
}

char *vx_read_file(const char *path, size_t *len, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        vx_errf(err, err_len, path, "cannot open (missing file?)");
        return NULL;
    }
    int64_t cap = 0, n = 0;
    char *buf = NULL;
    for (;;) {
        /* room for a byte to read and for the NUL */
        if (vx_grow((void **)&buf, &cap, n + 2, 1, 1 << 16) != 0) {
            free(buf);
            fclose(f);
            vx_errf(err, err_len, path, "out of memory reading the file");
            return NULL;
        }
        size_t got = fread(buf + n, 1, (size_t)(cap - n - 1), f);
        n += (int64_t)got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        vx_errf(err, err_len, path, "read error");
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

int64_t vx_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[128];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (int64_t)kb * 1024;
}

size_t vx_huge_page_size(void) {
    size_t hp = (size_t)2 << 20;
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r");
    if (f) {
        unsigned long long v = 0;
        if (fscanf(f, "%llu", &v) == 1 && v >= 4096 && v <= ((unsigned long long)1 << 30) &&
            (v & (v - 1)) == 0)
            hp = (size_t)v;
        fclose(f);
    }
    return hp;
}
