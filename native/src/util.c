/* util.c - see util.h. */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The integer after "key" (at a line's start; NULL: the file's first) in
 * file dir/name, or -1; "max" (cgroup v2's no limit) reads as INT64_MAX. */
static int64_t read_value(const char *dir, const char *name, const char *key) {
    char path[4352];
    const int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path) return -1;
    size_t len;
    char *text = vx_read_file(path, &len, NULL, 0);
    if (!text) return -1;
    const size_t kl = key ? strlen(key) : 0;
    const char *p = text;
    while (key && p && !(strncmp(p, key, kl) == 0 && (p[kl] == ' ' || p[kl] == ':')))
        if ((p = strchr(p, '\n')) != NULL) p++;
    long long v = -1;
    if (p) {
        p += kl + (key != NULL);
        if (strncmp(p, "max", 3) == 0) v = INT64_MAX;
        else if (sscanf(p, "%lld", &v) != 1) v = -1;
    }
    free(text);
    return (int64_t)v;
}

/* The headroom of cgroup dir and its ancestors up to top (both under the
 * same hierarchy), least first: v2 names its files memory.max / memory.current
 * and inactive_file, v1 memory.limit_in_bytes / memory.usage_in_bytes and
 * total_inactive_file (a v1 "no limit" is near 2^63). */
static int64_t headroom_up(char *dir, size_t top, int v2) {
    int64_t least = INT64_MAX;
    for (;;) {
        const int64_t lim = read_value(dir, v2 ? "memory.max" : "memory.limit_in_bytes", NULL);
        if (lim >= 0 && lim < ((int64_t)1 << 62)) {
            const int64_t use = read_value(dir, v2 ? "memory.current" : "memory.usage_in_bytes", NULL);
            int64_t idle = read_value(dir, "memory.stat", v2 ? "inactive_file" : "total_inactive_file");
            if (idle < 0) idle = 0;
            int64_t room = use < 0 ? lim : lim - use + idle;
            if (room < 0) room = 0;
            if (room < least) least = room;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < top) break;
        *slash = 0;
    }
    return least;
}

int64_t vx_cgroup_headroom(const char *proc_cgroup, const char *root) {
    FILE *f = fopen(proc_cgroup, "r");
    if (!f) return INT64_MAX;
    char line[4096], dir[4096];
    int64_t least = INT64_MAX;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/') continue;
        *c1 = *c2 = 0; /* line: the hierarchy's number */
        const char *ctrl = c1 + 1, *path = c2 + 1;
        int v2 = strcmp(line, "0") == 0 && ctrl[0] == 0, v1 = 0;
        for (const char *p = ctrl; !v2 && *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] != 0))
            if (strncmp(p, "memory", 6) == 0 && (p[6] == ',' || p[6] == 0)) v1 = 1;
        if (!v1 && !v2) continue;
        const int k = snprintf(dir, sizeof dir, "%s%s", root, v1 ? "/memory" : "");
        if (k < 0 || (size_t)k >= sizeof dir) continue;
        const size_t top = (size_t)k;
        snprintf(dir + top, sizeof dir - top, "%s", strcmp(path, "/") == 0 ? "" : path);
        const int64_t room = headroom_up(dir, top, v2);
        if (room < least) least = room;
    }
    fclose(f);
    return least;
}

int64_t vx_mem_available(void) {
    const int64_t kb = read_value("/proc", "meminfo", "MemAvailable");
    if (kb < 0) return 0;
    const int64_t avail = kb * 1024;
    const int64_t room = vx_cgroup_headroom("/proc/self/cgroup", "/sys/fs/cgroup");
    return room < avail ? room : avail;
}

size_t vx_huge_page_size(void) {
    const int64_t v = read_value("/sys/kernel/mm/transparent_hugepage", "hpage_pmd_size", NULL);
    /* a power of two from 4 KB to 1 GB, else x86-64's and arm64's 2 MiB */
    return v >= 4096 && v <= ((int64_t)1 << 30) && (v & (v - 1)) == 0 ? (size_t)v : (size_t)2 << 20;
}
