/* util.h - the engine's small shared utilities, one of each: the error
 * message formatter, the grow-by-doubling buffer, the whole-file reader, the
 * memory the kernel can hand out and its huge page size. */
#ifndef VX_UTIL_H
#define VX_UTIL_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Write "PREFIX: message" (just "message" when prefix is NULL) into err,
 * cut to err_len - 1 bytes. Does nothing when err is NULL or err_len is 0.
 * Returns -1, so that a failing function can `return vx_errf(...)`. */
int vx_verrf(char *err, size_t err_len, const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
int vx_errf(char *err, size_t err_len, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The capacity that holds need elements: cap (first when cap is 0) doubled
 * as often as needed; cap itself when it already holds them. */
int64_t vx_grow_cap(int64_t cap, int64_t need, int64_t first);
/* Make *buf (realloc'ed, contents kept) hold at least need elements of elem
 * bytes, the capacity growing as vx_grow_cap says. 0, or -1 with *buf and
 * *cap unchanged when memory runs out or the size overflows. */
int vx_grow(void **buf, int64_t *cap, int64_t need, size_t elem, int64_t first);

/* The whole file (read to its end, so pipes work too), NUL-terminated, its
 * length in *len; NULL with "PATH: what" in err when it cannot be read. */
char *vx_read_file(const char *path, size_t *len, char *err, size_t err_len);

/* What this process can still take in bytes: MemAvailable of /proc/meminfo
 * (what the kernel can hand out without swapping, its reclaimable page cache
 * included), or less where its memory cgroup's limit leaves less
 * (vx_cgroup_headroom); 0 when unknown. */
int64_t vx_mem_available(void);

/* The least headroom of the memory cgroups this process is in (proc_cgroup:
 * its /proc/self/cgroup) and their ancestors, under root (/sys/fs/cgroup):
 * limit - usage + inactive page cache, cgroup v2 (memory.max) or v1
 * (memory.limit_in_bytes); INT64_MAX where none has a limit, 0 where the
 * usage is past it. A systemd MemoryMax= or a container's limit is what the
 * OOM killer enforces, whatever the machine has free. */
int64_t vx_cgroup_headroom(const char *proc_cgroup, const char *root);

/* The kernel's PMD-sized transparent huge page (2 MiB on x86-64 and on arm64
 * with 4 KB pages, 32 MiB with the Pi 5's 16 KB pages), else 2 MiB. */
size_t vx_huge_page_size(void);
#endif
