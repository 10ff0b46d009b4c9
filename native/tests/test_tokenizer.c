/* test_tokenizer.c - tekken.json loading (base64 pieces, special ids,
 * malformed files) and the streaming UTF-8 assembler. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"

#include "check.h"

static char dir[256];
static char path[512];
static int n_files = 0;

/* Independent encoder so the test does not trust the decoder it checks. */
static void b64(const unsigned char *in, size_t n, char *out) {
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n) v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = al[(v >> 18) & 63];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = i + 1 < n ? al[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? al[v & 63] : '=';
    }
    out[o] = 0;
}

static void write_file(const char *text) {
    snprintf(path, sizeof path, "%s/tekken%d.json", dir, n_files++);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* The pieces of the main test vocabulary (text ids 3..). */
static const char *const pieces[] = {
    "",          "a",   "ab",  "abc", "\xC3",         "\xA9", "\xF0", "\x9F", "\x98", "\x80",
    " hello",    "\x00\xff", "\xE2\x82\xAC",
};
static const int piece_len[] = {0, 1, 2, 3, 1, 1, 1, 1, 1, 1, 6, 2, 3};
#define N_PIECES 13

/* tekken.json with n_special specials, the pieces above as vocab, then
 * extra_vocab (raw JSON entries, may be ""), and specials (raw JSON or NULL
 * for no special_tokens key). */
static void write_tekken(int n_special, const char *extra_vocab, const char *specials) {
    static char text[8192];
    size_t o = 0;
    o += (size_t)snprintf(text + o, sizeof text - o,
                          "{\"config\": {\"pattern\": \"x\", \"default_num_special_tokens\": %d,"
                          " \"version\": \"v7\"},\n \"vocab\": [",
                          n_special);
    for (int i = 0; i < N_PIECES; i++) {
        char enc[64];
        b64((const unsigned char *)pieces[i], (size_t)piece_len[i], enc);
        o += (size_t)snprintf(text + o, sizeof text - o,
                              "%s\n  {\"rank\": %d, \"token_bytes\": \"%s\", \"token_str\": null}",
                              i ? "," : "", i, enc);
    }
    o += (size_t)snprintf(text + o, sizeof text - o, "%s]", extra_vocab);
    if (specials) o += (size_t)snprintf(text + o, sizeof text - o, ",\n \"special_tokens\": %s", specials);
    snprintf(text + o, sizeof text - o, ",\n \"audio\": {\"sampling_rate\": 16000}}\n");
    write_file(text);
}

static const char *SPECIALS3 =
    "[{\"rank\": 0, \"token_str\": \"<unk>\", \"is_control\": true},"
    " {\"rank\": 2, \"token_str\": \"[STREAMING_PAD]\", \"is_control\": true},"
    " {\"rank\": 1, \"token_str\": \"<s>\", \"is_control\": true}]";

static void test_load(void) {
    vx_tokenizer t;
    char err[512] = "";
    /* extra entries past vocab_size - n_special are ignored, even broken ones */
    write_tekken(3, ", {\"rank\": 13, \"token_bytes\": \"!!!\"}", SPECIALS3);
    int rc = vx_tok_load(path, 3 + N_PIECES, &t, err, sizeof err);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "load failed: %s\n", err);
        return;
    }
    CHECK(t.n_special == 3 && t.vocab_size == 3 + N_PIECES && t.max_token_len == 6);
    for (int i = 0; i < N_PIECES; i++) {
        int len = -1;
        const unsigned char *b = vx_tok_bytes(&t, 3 + i, &len);
        CHECK(b != NULL && len == piece_len[i]);
        if (b && len == piece_len[i] && memcmp(b, pieces[i], (size_t)len) != 0) {
            fprintf(stderr, "piece %d differs\n", i);
            failures++;
        }
    }
    int len = 99;
    CHECK(vx_tok_bytes(&t, 0, &len) == NULL && len == 0); /* control */
    len = 99;
    CHECK(vx_tok_bytes(&t, 2, &len) == NULL && len == 0);
    CHECK(vx_tok_bytes(&t, 3 + N_PIECES, &len) == NULL && len == 0); /* out of range */
    CHECK(vx_tok_bytes(&t, -1, &len) == NULL && len == 0);
    CHECK(vx_tok_special_id(&t, "[STREAMING_PAD]") == 2);
    CHECK(vx_tok_special_id(&t, "<s>") == 1);
    CHECK(vx_tok_special_id(&t, "<unk>") == 0);
    CHECK(vx_tok_special_id(&t, "</s>") == -1);
    CHECK(vx_tok_special_id(&t, "a") == -1); /* text tokens are not specials */
    CHECK(t.special_names && strcmp(t.special_names[2], "[STREAMING_PAD]") == 0);
    vx_tok_free(&t);
    CHECK(t.bytes == NULL && t.special_names == NULL && t.lens == NULL);
    vx_tok_free(&t); /* twice is harmless */

    /* fewer ids in use than entries: a smaller vocab_size loads a prefix */
    write_tekken(3, "", SPECIALS3);
    CHECK(vx_tok_load(path, 5, &t, err, sizeof err) == 0);
    CHECK(vx_tok_bytes(&t, 4, &len) && len == 1 && vx_tok_bytes(&t, 5, &len) == NULL);
    CHECK(t.max_token_len == 1);
    vx_tok_free(&t);

    /* no special_tokens list: allowed, ids below n_special are unnamed controls */
    write_tekken(3, "", NULL);
    rc = vx_tok_load(path, 3 + N_PIECES, &t, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK(vx_tok_special_id(&t, "[STREAMING_PAD]") == -1);
        CHECK(vx_tok_bytes(&t, 1, &len) == NULL && len == 0);
        CHECK(vx_tok_bytes(&t, 4, &len) && len == 1);
        vx_tok_free(&t);
    } else {
        fprintf(stderr, "no-specials load failed: %s\n", err);
    }

    /* no specials at all */
    write_tekken(0, "", "[]");
    CHECK(vx_tok_load(path, N_PIECES, &t, err, sizeof err) == 0);
    CHECK(vx_tok_bytes(&t, 1, &len) && len == 1 && vx_tok_special_id(&t, "x") == -1);
    vx_tok_free(&t);
}

/* Load must fail with a message naming the file and containing want. */
static void expect_fail(int line, int vocab_size, const char *want, const char *want2) {
    vx_tokenizer t;
    char err[512] = "";
    memset(&t, 0x5a, sizeof t);
    if (vx_tok_load(path, vocab_size, &t, err, sizeof err) != -1) {
        fprintf(stderr, "%s:%d: load of %s should have failed\n", __FILE__, line, path);
        failures++;
        vx_tok_free(&t);
        return;
    }
    if (getenv("VX_TEST_VERBOSE")) printf("  %s\n", err);
    if (t.bytes || t.lens || t.special_names) {
        fprintf(stderr, "%s:%d: struct not cleared after failure\n", __FILE__, line);
        failures++;
    }
    const char *w[3] = {path, want, want2};
    for (int i = 0; i < 3; i++) {
        if (w[i] && !strstr(err, w[i])) {
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, line, err, w[i]);
            failures++;
        }
    }
}
#define FAILS(vs, w, w2) expect_fail(__LINE__, vs, w, w2)

static void test_bad_files(void) {
    /* too few vocab entries */
    write_tekken(3, "", SPECIALS3);
    FAILS(3 + N_PIECES + 1, "vocab has 13 entries", "needs 14");
    /* base64 that is not */
    const char *bad64[] = {"YQ=", "Y===", "a$==", "YR==", "=YQ=", "YQ==YQ==", "YWJj\n", "YW=j"};
    for (size_t i = 0; i < sizeof bad64 / sizeof bad64[0]; i++) {
        char extra[128];
        snprintf(extra, sizeof extra, ", {\"rank\": 13, \"token_bytes\": \"%s\"}",
                 i == 6 ? "YWJj\\n" : bad64[i]);
        write_tekken(3, extra, SPECIALS3);
        FAILS(3 + N_PIECES + 1, "vocab[13]", "not valid base64");
    }
    write_tekken(3, ", {\"rank\": 13}", SPECIALS3);
    FAILS(3 + N_PIECES + 1, "vocab[13]", "token_bytes");
    write_tekken(3, ", {\"rank\": 13, \"token_bytes\": 5}", SPECIALS3);
    FAILS(3 + N_PIECES + 1, "vocab[13]", "token_bytes");
    write_tekken(3, ", {\"rank\": 99, \"token_bytes\": \"YQ==\"}", SPECIALS3);
    FAILS(3 + N_PIECES + 1, "vocab[13]", "rank");
    /* specials */
    write_tekken(3, "", "[{\"rank\": 3, \"token_str\": \"<x>\"}]");
    FAILS(3 + N_PIECES, "special_tokens[0]", "rank");
    write_tekken(3, "", "[{\"rank\": 1, \"token_str\": \"<x>\"}, {\"rank\": 1, \"token_str\": \"<y>\"}]");
    FAILS(3 + N_PIECES, "special_tokens[1]", "listed twice");
    write_tekken(3, "", "[{\"rank\": 1}]");
    FAILS(3 + N_PIECES, "special_tokens[0]", "token_str");
    write_tekken(3, "", "{\"rank\": 1}");
    FAILS(3 + N_PIECES, "special_tokens", "not an array");
    /* structure */
    write_file("{\"config\": {\"default_num_special_tokens\": 0}, \"vocab\": [}");
    FAILS(1, "invalid JSON", "line 1 col");
    write_file("{\"vocab\": []}");
    FAILS(1, "default_num_special_tokens", NULL);
    write_file("{\"config\": {\"default_num_special_tokens\": 1.5}, \"vocab\": []}");
    FAILS(2, "default_num_special_tokens", NULL);
    write_file("{\"config\": {\"default_num_special_tokens\": 5}, \"vocab\": []}");
    FAILS(4, "default_num_special_tokens", NULL); /* more specials than ids */
    write_file("{\"config\": {\"default_num_special_tokens\": 1}}");
    FAILS(2, "vocab", NULL);
    write_file("[]");
    FAILS(2, "not a JSON object", NULL);
    write_tekken(3, "", SPECIALS3);
    FAILS(0, "vocab_size", NULL);
    snprintf(path, sizeof path, "%s/missing.json", dir);
    FAILS(10, "cannot open", NULL);
}

/* ---- streaming UTF-8 ---- */

static size_t push(vx_utf8_stream *u, const char *in, size_t n, char *out) {
    return vx_utf8_push(u, (const unsigned char *)in, n, out, 3 * (n + 4) + 1);
}

#define FFFD "\xEF\xBF\xBD"

static void check_push(int line, vx_utf8_stream *u, const char *in, size_t n, const char *want) {
    char out[256];
    memset(out, 'x', sizeof out);
    size_t k = push(u, in, n, out);
    if (k != strlen(want) || memcmp(out, want, k) != 0 || out[k] != 0) {
        fprintf(stderr, "%s:%d: push gave %zu bytes \"%.*s\", want \"%s\"\n", __FILE__, line, k,
                (int)k, out, want);
        failures++;
    }
}
#define PUSH(u, s, want) check_push(__LINE__, u, s, sizeof(s) - 1, want)

static void check_flush(int line, vx_utf8_stream *u, const char *want) {
    char out[16];
    memset(out, 'x', sizeof out);
    size_t k = vx_utf8_flush(u, out, sizeof out);
    if (k != strlen(want) || memcmp(out, want, k) != 0 || out[k] != 0) {
        fprintf(stderr, "%s:%d: flush gave %zu bytes, want %zu\n", __FILE__, line, k, strlen(want));
        failures++;
    }
}
#define FLUSH(u, want) check_flush(__LINE__, u, want)

static void test_utf8(void) {
    vx_utf8_stream u = {{0}, 0};
    /* "é" = C3 A9 as two pieces */
    PUSH(&u, "\xC3", "");
    CHECK(u.n_pend == 1);
    PUSH(&u, "\xA9", "\xC3\xA9");
    CHECK(u.n_pend == 0);
    /* 4-byte emoji in 4 pieces */
    PUSH(&u, "\xF0", "");
    PUSH(&u, "\x9F", "");
    PUSH(&u, "\x98", "");
    PUSH(&u, "\x80", "\xF0\x9F\x98\x80");
    /* mixed with ASCII on both sides */
    PUSH(&u, " caf\xC3", " caf");
    PUSH(&u, "\xA9 ok \xE2\x82", "\xC3\xA9 ok ");
    PUSH(&u, "\xAC!", "\xE2\x82\xAC!");
    /* ASCII passes through, empty push keeps state */
    PUSH(&u, "hello", "hello");
    PUSH(&u, "\xE2", "");
    PUSH(&u, "", "");
    PUSH(&u, "\x82\xAC", "\xE2\x82\xAC");

    /* invalid bytes become U+FFFD (one per maximal subpart) */
    PUSH(&u, "\x80", FFFD);                       /* lone continuation */
    PUSH(&u, "a\xBFz", "a" FFFD "z");
    PUSH(&u, "\xC0\xAF", FFFD FFFD);              /* overlong '/' */
    PUSH(&u, "\xC1\x81", FFFD FFFD);
    PUSH(&u, "\xE0\x80\xAF", FFFD FFFD FFFD);     /* overlong 3-byte */
    PUSH(&u, "\xF0\x80\x80\x80", FFFD FFFD FFFD FFFD); /* overlong 4-byte */
    PUSH(&u, "\xED\xA0\x80", FFFD FFFD FFFD);     /* surrogate U+D800 */
    PUSH(&u, "\xED\x9F\xBF", "\xED\x9F\xBF");     /* U+D7FF is fine */
    PUSH(&u, "\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD); /* > U+10FFFF */
    PUSH(&u, "\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"); /* U+10FFFF is fine */
    PUSH(&u, "\xF5\xFE\xFF", FFFD FFFD FFFD);
    CHECK(u.n_pend == 0);

    /* a truncated sequence followed by a non-continuation byte */
    PUSH(&u, "\xC3" "A", FFFD "A");
    PUSH(&u, "\xE2\x82", "");
    PUSH(&u, "x", FFFD "x");                      /* across pieces */
    PUSH(&u, "\xE2\x82\xC3\xA9", FFFD "\xC3\xA9"); /* a new lead ends the old one */
    PUSH(&u, "\xF0\x9F", "");
    PUSH(&u, "\xF0\x9F\x98\x80", FFFD "\xF0\x9F\x98\x80");
    PUSH(&u, "\xE0", "");
    PUSH(&u, "\x9F", FFFD FFFD);                  /* E0 needs A0..BF next */

    /* flush of a partial character */
    PUSH(&u, "ok\xE2\x82", "ok");
    FLUSH(&u, FFFD);
    FLUSH(&u, "");                                /* nothing left */
    PUSH(&u, "\xF0\x9F\x98", "");
    FLUSH(&u, FFFD);
    PUSH(&u, "\xA9", FFFD);                       /* after a flush, a continuation is stray */
    FLUSH(&u, "");

    /* worst case fits the documented bound: every byte invalid after a pending lead */
    {
        vx_utf8_stream w = {{0}, 0};
        char out[3 * (10 + 4) + 1];
        push(&w, "\xF0\x9F\x98", 3, out);
        size_t k = vx_utf8_push(&w, (const unsigned char *)"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF",
                                10, out, sizeof out);
        CHECK(k == 33 && out[33] == 0);
    }
    /* a too-small buffer never gets a cut character, and stays NUL-terminated */
    {
        vx_utf8_stream w = {{0}, 0};
        char out[3];
        size_t k = vx_utf8_push(&w, (const unsigned char *)"a\xE2\x82\xAC", 4, out, sizeof out);
        CHECK(k == 1 && out[0] == 'a' && out[1] == 0);
        k = vx_utf8_push(&w, (const unsigned char *)"\xC3\xA9", 2, out, sizeof out);
        CHECK(k == 2 && memcmp(out, "\xC3\xA9", 3) == 0);
        CHECK(vx_utf8_push(&w, (const unsigned char *)"abc", 3, out, 0) == 0);
    }

    /* decode pieces from a loaded tokenizer, as the stream will */
    {
        vx_tokenizer t;
        char err[512];
        write_tekken(3, "", SPECIALS3);
        if (vx_tok_load(path, 3 + N_PIECES, &t, err, sizeof err) == 0) {
            /* ids: " hello"=13, "\xC3"=7, "\xA9"=8, "\xF0"=9 .. "\x80"=12, "€"=15 */
            int ids[] = {13, 1, 7, 8, 9, 10, 11, 12, 15};
            char text[128] = "";
            size_t tl = 0;
            vx_utf8_stream w = {{0}, 0};
            for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
                int len;
                const unsigned char *b = vx_tok_bytes(&t, ids[i], &len);
                if (!b) continue; /* control id */
                char out[64];
                size_t k = vx_utf8_push(&w, b, (size_t)len, out, sizeof out);
                memcpy(text + tl, out, k);
                tl += k;
            }
            tl += vx_utf8_flush(&w, text + tl, sizeof text - tl);
            CHECK(tl == strlen(" hello\xC3\xA9\xF0\x9F\x98\x80\xE2\x82\xAC") &&
                  memcmp(text, " hello\xC3\xA9\xF0\x9F\x98\x80\xE2\x82\xAC", tl) == 0);
            vx_tok_free(&t);
        } else {
            fprintf(stderr, "load failed: %s\n", err);
            failures++;
        }
    }
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vx_tok_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_load();
    test_bad_files();
    test_utf8();
    for (int i = 0; i < n_files; i++) {
        snprintf(path, sizeof path, "%s/tekken%d.json", dir, i);
        unlink(path);
    }
    if (rmdir(dir) != 0) fprintf(stderr, "note: could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "test_tokenizer: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_tokenizer: all passed\n");
    return 0;
}
