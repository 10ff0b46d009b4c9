/* test_safetensors.c - writes small .safetensors files to a temp dir: one
 * valid file, then one file per kind of damage, each of which must fail with
 * a message naming the file, the tensor and the problem. */
#define _DEFAULT_SOURCE /* truncate, mkdtemp, MAP_ANONYMOUS */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#endif

#include "safetensors.h"
#include "util.h"

#include "check.h"

static char dir[256];
static char path[512];

/* Write header (padded with spaces to a multiple of 8 when pad8) and data. */
static void write_st(const char *name, const char *header, int pad8, const unsigned char *data,
                     size_t data_len) {
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t hl = strlen(header);
    size_t n = pad8 ? (hl + 7) / 8 * 8 : hl;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)n >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, hl, f);
    for (size_t i = hl; i < n; i++) fputc(' ', f);
    if (data_len) fwrite(data, 1, data_len, f);
    fclose(f);
}

static void write_raw(const char *name, const unsigned char *bytes, size_t n) {
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (n) fwrite(bytes, 1, n, f);
    fclose(f);
}

/* Open must fail, leave st zeroed, and the message contain every want. */
static void expect_fail(int line, const char *w1, const char *w2, const char *w3) {
    vx_safetensors st;
    char err[512] = "";
    memset(&st, 0x5a, sizeof st);
    int rc = vx_st_open(path, &st, err, sizeof err);
    if (rc != -1) {
        fprintf(stderr, "%s:%d: %s opened but should have failed\n", __FILE__, line, path);
        failures++;
        vx_st_close(&st);
        return;
    }
    if (st.map || st.tensors || st.path || st.n_tensors) {
        fprintf(stderr, "%s:%d: struct not cleared after failure\n", __FILE__, line);
        failures++;
    }
    if (getenv("VX_TEST_VERBOSE")) printf("  %s\n", err);
    const char *w[4] = {path, w1, w2, w3};
    for (int i = 0; i < 4; i++) {
        if (w[i] && !strstr(err, w[i])) {
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, line, err, w[i]);
            failures++;
        }
    }
}
#define FAILS(w1, w2, w3) expect_fail(__LINE__, w1, w2, w3)

#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
/* In a child whose address space can grow by 1 MB at most: vx_st_into_memory
 * fails for want of memory, and st's tensors still read data's bytes. Also
 * true where the limit is not enforced (qemu-user ignores RLIMIT_AS): the
 * child checks that first and skips. (Sanitizers reserve terabytes of
 * address space, so the check does not run under them.) */
static int no_memory_keeps_the_file(vx_safetensors *st, const unsigned char *data) {
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1) _exit(2);
        fclose(f);
        const rlim_t size = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
        struct rlimit lim = {size + (1u << 20), size + (1u << 20)};
        if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(3);
        void *probe = mmap(NULL, 64u << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (probe != MAP_FAILED) { /* not enforced here: nothing to check */
            printf("  (address-space limit not enforced: the no-memory case is skipped)\n");
            _exit(0);
        }
        char note[256] = "";
        const int rc = vx_st_into_memory(st, 0, note, sizeof note);
        const vx_st_tensor *t = vx_st_find(st, "emb");
        const int ok = rc == -1 && !st->in_memory && strstr(note, "anonymous memory") &&
                       t && memcmp(t->data, data + 16, 12) == 0;
        if (!ok) fprintf(stderr, "no-memory case: rc %d, note \"%s\"\n", rc, note);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return 0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
#endif

static void test_valid(void) {
    /* data: F32 [4] | BF16 [2,3] | Q8 [2,32] | Q4 [1,64] | I64 [] | F16 [0,5] */
    unsigned char data[140];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7 + 1);
    float f4[4] = {1.0f, -2.5f, 3.25f, 1e-3f};
    memcpy(data, f4, sizeof f4);
    const char *h =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
        "\"emb\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
        "\"q8w\":{\"dtype\":\"Q8\",\"shape\":[2,32],\"data_offsets\":[28,96]},"
        "\"q4w\":{\"dtype\":\"Q4\",\"shape\":[1,64],\"data_offsets\":[96,132]},"
        "\"scalar\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[132,140]},"
        "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[140,140]}}";
    write_st("valid.safetensors", h, 1, data, sizeof data);
    vx_safetensors st;
    char err[512] = "";
    int rc = vx_st_open(path, &st, err, sizeof err);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "valid file failed: %s\n", err);
        return;
    }
    CHECK(st.n_tensors == 6); /* __metadata__ is not a tensor */
    CHECK(strcmp(st.path, path) == 0);
    size_t hl = (strlen(h) + 7) / 8 * 8;
    CHECK(st.map_size == 8 + hl + sizeof data);
    const unsigned char *base = (const unsigned char *)st.map + 8 + hl;

    const vx_st_tensor *t = vx_st_find(&st, "norm.weight");
    CHECK(t && t->dtype == VX_DT_F32 && t->ndim == 1 && t->shape[0] == 4 && t->nbytes == 16);
    CHECK(t && t->data == base); /* points into the mapping, no copy */
    if (t) {
        float g[4];
        memcpy(g, t->data, sizeof g);
        CHECK(g[0] == 1.0f && g[1] == -2.5f && g[2] == 3.25f && g[3] == 1e-3f);
    }
    t = vx_st_find(&st, "emb");
    CHECK(t && t->dtype == VX_DT_BF16 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t && t->nbytes == 12 && t->data == base + 16 && memcmp(t->data, data + 16, 12) == 0);
    t = vx_st_find(&st, "q8w");
    CHECK(t && t->dtype == VX_DT_Q8 && t->nbytes == 2 * VX_Q8_BLOCK_BYTES && t->data == base + 28);
    t = vx_st_find(&st, "q4w");
    CHECK(t && t->dtype == VX_DT_Q4 && t->nbytes == 2 * VX_Q4_BLOCK_BYTES && t->data == base + 96);
    t = vx_st_find(&st, "scalar");
    CHECK(t && t->dtype == VX_DT_I64 && t->ndim == 0 && t->nbytes == 8);
    t = vx_st_find(&st, "empty");
    CHECK(t && t->dtype == VX_DT_F16 && t->ndim == 2 && t->shape[0] == 0 && t->nbytes == 0);
    CHECK(vx_st_find(&st, "__metadata__") == NULL);
    CHECK(vx_st_find(&st, "missing") == NULL);
    CHECK(vx_st_find(&st, NULL) == NULL);
    vx_st_close(&st);
    CHECK(st.map == NULL && st.tensors == NULL && st.path == NULL);
    vx_st_close(&st); /* twice is harmless */

    /* into memory: the same bytes at the same addresses, no longer the file's */
    rc = vx_st_open(path, &st, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        const void *before = vx_st_find(&st, "q8w")->data;
        CHECK(((uintptr_t)st.map & 4095) == 0 && st.map_len >= st.map_size);
        char note[256] = "";
        rc = vx_st_into_memory(&st, 0, note, sizeof note);
#ifdef __linux__
        CHECK(rc == 0 && st.in_memory && strstr(note, "copied into memory"));
#else
        CHECK(rc == -1 && strstr(note, "mapped from the file"));
#endif
        t = vx_st_find(&st, "q8w");
        CHECK(t && t->data == before && memcmp(t->data, data + 28, 68) == 0);
        t = vx_st_find(&st, "norm.weight");
        CHECK(t && memcmp(t->data, data, 16) == 0);
        /* once moved, a second call changes nothing */
        CHECK(vx_st_into_memory(&st, 0, note, sizeof note) == 0);
        /* a file rewritten on disk no longer shows through */
        FILE *f = fopen(path, "r+b");
        CHECK(f != NULL);
        if (f) {
            fseek(f, (long)(8 + hl), SEEK_SET);
            fputc(0x55, f);
            fclose(f);
        }
        t = vx_st_find(&st, "norm.weight");
#ifdef __linux__
        CHECK(t && memcmp(t->data, data, 16) == 0);
#endif
        vx_st_close(&st);
        write_st("valid.safetensors", h, 1, data, sizeof data);
    }
#ifdef __linux__
    /* a file cut short since it was opened: no copy, and the note says why */
    rc = vx_st_open(path, &st, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        char note[256] = "";
        CHECK(truncate(path, (off_t)(8 + hl)) == 0);
        CHECK(vx_st_into_memory(&st, 0, note, sizeof note) == -1 && !st.in_memory);
        CHECK(strstr(note, "reading it again failed") && strstr(note, "shorter now"));
        vx_st_close(&st);
        write_st("valid.safetensors", h, 1, data, sizeof data);
    }
#endif
#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* no anonymous memory to be had (an address-space limit, in a child):
     * the file stays mapped, readable, and the note says why */
    rc = vx_st_open(path, &st, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK(no_memory_keeps_the_file(&st, data));
        vx_st_close(&st);
    }
#endif
    /* a copy that would not leave the reserve free keeps the file mapped, and says so */
    rc = vx_st_open(path, &st, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        char note[256] = "";
        CHECK(vx_st_into_memory(&st, INT64_MAX / 4, note, sizeof note) == -1 && !st.in_memory);
        CHECK(strstr(note, "mapped from the file") != NULL);
#ifdef __linux__
        CHECK(strstr(note, "GB available") != NULL);
#endif
        t = vx_st_find(&st, "emb");
        CHECK(t && memcmp(t->data, data + 16, 12) == 0);
        vx_st_close(&st);
    }

    /* an empty header object is a valid file with no tensors */
    write_st("none.safetensors", "{}", 1, NULL, 0);
    CHECK(vx_st_open(path, &st, err, sizeof err) == 0 && st.n_tensors == 0);
    vx_st_close(&st);
}

static void test_dtypes(void) {
    CHECK(vx_dtype_size(VX_DT_F32) == 4 && vx_dtype_size(VX_DT_BF16) == 2 &&
          vx_dtype_size(VX_DT_F16) == 2 && vx_dtype_size(VX_DT_I8) == 1 &&
          vx_dtype_size(VX_DT_U8) == 1 && vx_dtype_size(VX_DT_I32) == 4 &&
          vx_dtype_size(VX_DT_I64) == 8 && vx_dtype_size(VX_DT_F64) == 8);
    CHECK(vx_dtype_size(VX_DT_Q8) == 0 && vx_dtype_size(VX_DT_Q4) == 0);
    CHECK(strcmp(vx_dtype_name(VX_DT_BF16), "BF16") == 0 && strcmp(vx_dtype_name(VX_DT_Q4), "Q4") == 0);
    CHECK(strcmp(vx_dtype_name(VX_DT_COUNT), "?") == 0);
    size_t nb = 0;
    int64_t s1[2] = {3, 64};
    CHECK(vx_tensor_nbytes(VX_DT_Q8, s1, 2, &nb) == 0 && nb == 6 * 34);
    CHECK(vx_tensor_nbytes(VX_DT_Q4, s1, 2, &nb) == 0 && nb == 6 * 18);
    CHECK(vx_tensor_nbytes(VX_DT_BF16, s1, 2, &nb) == 0 && nb == 3 * 64 * 2);
    int64_t s2[2] = {64, 33};
    CHECK(vx_tensor_nbytes(VX_DT_Q8, s2, 2, &nb) == -1);
    CHECK(vx_tensor_nbytes(VX_DT_Q8, s2, 0, &nb) == -1); /* block format needs a dim */
    int64_t s3[4] = {1LL << 40, 1LL << 40, 1LL << 40, 2};
    CHECK(vx_tensor_nbytes(VX_DT_F32, s3, 4, &nb) == -1); /* overflow */
}

static void test_broken(void) {
    unsigned char data[64];
    memset(data, 0, sizeof data);

    /* missing file */
    snprintf(path, sizeof path, "%s/nope.safetensors", dir);
    FAILS("cannot open", NULL, NULL);

    /* file shorter than the length field */
    write_raw("short.safetensors", (const unsigned char *)"\x10\0\0\0\0", 5);
    FAILS("5 bytes", "too short", NULL);
    write_raw("zero.safetensors", NULL, 0);
    FAILS("0 bytes", "too short", NULL);

    /* header length past EOF: 9999999 in a 1234-byte file */
    {
        unsigned char b[1234];
        memset(b, ' ', sizeof b);
        uint64_t n = 9999999;
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
        write_raw("hlen.safetensors", b, sizeof b);
        FAILS("header length 9999999 is past the end of the file (1234 bytes)", NULL, NULL);
        /* a huge length must not wrap around */
        for (int i = 0; i < 8; i++) b[i] = 0xff;
        write_raw("hlen2.safetensors", b, sizeof b);
        FAILS("header length 18446744073709551615 is past the end", NULL, NULL);
    }

    /* header is not JSON / not an object / empty */
    write_st("badjson.safetensors", "{\"a\": {\"dtype\": \"F32\",}}", 1, data, 4);
    FAILS("header is not valid JSON", "line 1 col", "trailing comma");
    write_st("array.safetensors", "[1, 2]", 1, data, 4);
    FAILS("header is not a JSON object", NULL, NULL);
    write_st("emptyh.safetensors", "", 0, data, 4);
    FAILS("header is not valid JSON", "unexpected end of input", NULL);

    /* a file cut short: the last tensor now runs past the end */
    write_st("trunc.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[16,48]}}",
             1, data, 40);
    FAILS("tensor 'b'", "data_offsets end 48 is past the data area (40 bytes)", NULL);

    /* offsets past the end (the message format from the brief) */
    {
        unsigned char *big = calloc(1, 1000);
        CHECK(big != NULL);
        if (big) {
            write_st("past.safetensors",
                     "{\"norm.weight\":{\"dtype\":\"U8\",\"shape\":[1234],\"data_offsets\":[0,1234]}}", 1,
                     big, 1000);
            FAILS("tensor 'norm.weight'", "data_offsets end 1234 is past the data area (1000 bytes)",
                  NULL);
            free(big);
        }
    }

    /* unknown dtype */
    write_st("dtype.safetensors",
             "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 1, data, 4);
    FAILS("tensor 'w'", "unknown dtype 'F8_E4M3'", NULL);
    write_st("dtype2.safetensors", "{\"w\":{\"dtype\":5,\"shape\":[4],\"data_offsets\":[0,4]}}", 1,
             data, 4);
    FAILS("tensor 'w'", "dtype is not a string", NULL);

    /* wrong byte size for the shape */
    write_st("size.safetensors",
             "{\"layers.0.wq\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 1, data,
             20);
    FAILS("tensor 'layers.0.wq'", "hold 20 bytes but shape [2, 3] of F32 needs 24", NULL);
    write_st("qsize.safetensors", "{\"q\":{\"dtype\":\"Q8\",\"shape\":[1,32],\"data_offsets\":[0,32]}}",
             1, data, 40);
    FAILS("tensor 'q'", "hold 32 bytes but shape [1, 32] of Q8 needs 34", NULL);
    write_st("qdim.safetensors", "{\"q\":{\"dtype\":\"Q4\",\"shape\":[2,48],\"data_offsets\":[0,54]}}",
             1, data, 54);
    FAILS("tensor 'q'", "Q4 needs a last dim that is a multiple of 32", "[2, 48]");
    write_st("qscalar.safetensors", "{\"q\":{\"dtype\":\"Q8\",\"shape\":[],\"data_offsets\":[0,34]}}",
             1, data, 34);
    FAILS("tensor 'q'", "multiple of 32", NULL);

    /* overlapping tensors (declared out of order: sorting finds them) */
    write_st("overlap.safetensors",
             "{\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]},"
             "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
             1, data, 32);
    FAILS("tensor 'b'", "overlap tensor 'a'", NULL);
    /* a small tensor inside a big one */
    write_st("overlap2.safetensors",
             "{\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
             "\"mid\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
             "\"late\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[20,24]}}",
             1, data, 32);
    FAILS("tensor 'mid'", "overlap tensor 'big'", NULL);
    /* touching is fine, and empty tensors overlap nothing */
    write_st("touch.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[8,16]}}",
             1, data, 16);
    {
        vx_safetensors st;
        char err[512] = "";
        CHECK(vx_st_open(path, &st, err, sizeof err) == 0);
        if (err[0]) fprintf(stderr, "touch: %s\n", err);
        vx_st_close(&st);
    }

    /* BF16 at an odd offset */
    write_st("odd.safetensors",
             "{\"flag\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"emb\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[1,5]}}",
             1, data, 5);
    FAILS("tensor 'emb'", "BF16 data at odd offset", "begin 1");
    /* ... or at an even begin after an odd-length header (file offset 8 + N odd) */
    {
        char h[128];
        snprintf(h, sizeof h, "%s", "{\"emb\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}");
        if (strlen(h) % 2 == 0) strcat(h, " ");
        write_st("oddh.safetensors", h, 0, data, 4);
        FAILS("tensor 'emb'", "odd offset", "begin 0");
    }

    /* shape problems */
    write_st("dims.safetensors",
             "{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, data, 1);
    FAILS("tensor 'x'", "shape has 5 dims (at most 4", NULL);
    write_st("neg.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,0]}}",
             1, data, 1);
    FAILS("tensor 'x'", "shape[1] is not a non-negative integer", NULL);
    write_st("frac.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}",
             1, data, 1);
    FAILS("tensor 'x'", "shape[0]", NULL);
    write_st("noshape.safetensors", "{\"x\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, data, 1);
    FAILS("tensor 'x'", "missing shape", NULL);
    write_st("nodtype.safetensors", "{\"x\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, data, 1);
    FAILS("tensor 'x'", "missing dtype", NULL);
    write_st("nooff.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, data, 1);
    FAILS("tensor 'x'", "missing data_offsets", NULL);
    write_st("off3.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}",
             1, data, 2);
    FAILS("tensor 'x'", "data_offsets must be [begin, end]", NULL);
    write_st("offneg.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}",
             1, data, 2);
    FAILS("tensor 'x'", "data_offsets must be [begin, end]", NULL);
    write_st("backw.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,1]}}", 1,
             data, 2);
    FAILS("tensor 'x'", "begin 2 is after end 1", NULL);
    write_st("notobj.safetensors", "{\"x\":[1,2]}", 1, data, 2);
    FAILS("tensor 'x'", "not a JSON object", NULL);
    /* duplicate names are caught by the JSON parser */
    write_st("dup.safetensors",
             "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
             1, data, 2);
    FAILS("duplicate key \"x\"", NULL, NULL);
}

/* The copy's readers in parallel: each part lands where it belongs, and a
 * file shorter than asked names the first byte missing. 4 KB units make
 * parts of 512 KB, so a file of 1.1 MB takes every reader this CPU gives. */
static void test_read_parallel(void) {
    const size_t unit = 4096, n = 2 * VX_ST_MIN_PART_ALIGNS * unit + 123 * 1024 + 77;
    unsigned char *src = malloc(n), *dst = malloc(n + 8192);
    CHECK(src && dst);
    if (!src || !dst) {
        free(src);
        free(dst);
        return;
    }
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 2654435761u >> 13);
    write_raw("parts.bin", src, n);
    size_t at = 1;
    memset(dst, 0, n);
    CHECK(vx_st_read_parallel(path, dst, n, unit, &at) == 0 && at == n && memcmp(dst, src, n) == 0);
    /* more than the file holds: the readers stop at its end */
    CHECK(vx_st_read_parallel(path, dst, n + 8192, unit, &at) == 0 && at == n);
    CHECK(memcmp(dst, src, n) == 0);
    /* one part only (units past the size) */
    memset(dst, 0, n);
    CHECK(vx_st_read_parallel(path, dst, n, (size_t)1 << 20, &at) == 0 && at == n &&
          memcmp(dst, src, n) == 0);
    unlink(path);
    /* no file: nothing read, and why */
    CHECK(vx_st_read_parallel(path, dst, n, unit, &at) == ENOENT && at == 0);
    free(src);
    free(dst);
}

/* dir/rel (its parent directories made), holding text. */
static void put(const char *rel, const char *text) {
    char p[768];
    snprintf(p, sizeof p, "%s/cg/%s", dir, rel);
    for (char *s = p + strlen(dir) + 1; (s = strchr(s, '/')) != NULL; s++) {
        *s = 0;
        mkdir(p, 0700);
        *s = '/';
    }
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* The memory a copy may take: a memory cgroup's limit binds before the
 * machine's free memory (fake /proc/self/cgroup and /sys/fs/cgroup trees). */
static void test_cgroup_headroom(void) {
    char proc[512], root[512];
    snprintf(proc, sizeof proc, "%s/cg/proc", dir);
    snprintf(root, sizeof root, "%s/cg/root", dir);
    /* cgroup v2, the limit on the parent: limit - usage + inactive page cache */
    put("proc", "0::/a/b\n");
    put("root/a/memory.max", "1000000000\n");
    put("root/a/memory.current", "600000000\n");
    put("root/a/memory.stat", "anon 5\ninactive_file 100000000\nactive_file 7\n");
    put("root/a/b/memory.max", "max\n");
    put("root/a/b/memory.current", "500000000\n");
    CHECK(vx_cgroup_headroom(proc, root) == 500000000);
    /* usage past the limit: no room */
    put("root/a/b/memory.max", "400000000\n");
    CHECK(vx_cgroup_headroom(proc, root) == 0);
    /* cgroup v1, the memory controller among others */
    put("proc", "5:cpu,cpuacct:/\n4:memory:/x\n0::/\n");
    put("root/memory/x/memory.limit_in_bytes", "2000000000\n");
    put("root/memory/x/memory.usage_in_bytes", "500000000\n");
    put("root/memory/x/memory.stat", "cache 1\ntotal_inactive_file 250000000\n");
    CHECK(vx_cgroup_headroom(proc, root) == 1750000000);
    /* v1's "no limit", and no cgroup file at all */
    put("root/memory/x/memory.limit_in_bytes", "9223372036854771712\n");
    CHECK(vx_cgroup_headroom(proc, root) == INT64_MAX);
    char none[512];
    snprintf(none, sizeof none, "%s/cg/none", dir);
    CHECK(vx_cgroup_headroom(none, root) == INT64_MAX);
    /* this machine: never more than MemAvailable, never negative */
    CHECK(vx_mem_available() >= 0);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vx_st_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtypes();
    test_valid();
    test_cgroup_headroom();
    test_read_parallel();
    test_broken();
    /* clean up: every file this test wrote */
    static const char *names[] = {
        "valid", "none", "short", "zero", "hlen", "hlen2", "badjson", "array", "emptyh", "trunc",
        "past", "dtype", "dtype2", "size", "qsize", "qdim", "qscalar", "overlap", "overlap2",
        "touch", "odd", "oddh", "dims", "neg", "frac", "noshape", "nodtype", "nooff", "off3",
        "offneg", "backw", "notobj", "dup"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, names[i]);
        unlink(path);
    }
    char rm[600];
    snprintf(rm, sizeof rm, "rm -rf '%s/cg'", dir);
    if (system(rm) != 0) fprintf(stderr, "note: could not remove %s/cg\n", dir);
    if (rmdir(dir) != 0) fprintf(stderr, "note: could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "test_safetensors: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_safetensors: all passed\n");
    return 0;
}
