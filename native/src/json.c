/* json.c - strict RFC 8259 parser into a json_value tree.
 *
 * Strict means: no comments, no trailing commas, no NaN/Infinity, no single
 * quotes, no raw control characters in strings, strings must be valid UTF-8,
 * lone surrogates in \u escapes are rejected, duplicate object keys are
 * rejected (a safetensors header with two entries of the same name must not
 * silently pick one). A leading UTF-8 BOM is skipped (RFC 8259 8.1 allows it).
 *
 * Memory: the root is one malloc'ed json_value; array/object items are one
 * contiguous array per container, owned by it. json_free(root) frees all. */
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define JSON_MAX_DEPTH 64

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    char *err;
    size_t err_len;
    int failed;
} parser;

/* Record the first error at byte offset at, as "line L col C: what".
 * Columns count bytes from 1; only '\n' starts a new line. */
static int fail_at(parser *p, size_t at, const char *fmt, ...) {
    if (p->failed) return -1;
    p->failed = 1;
    if (!p->err || p->err_len == 0) return -1;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < p->len; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    char where[64];
    snprintf(where, sizeof where, "line %zu col %zu", line, col);
    va_list ap;
    va_start(ap, fmt);
    vx_verrf(p->err, p->err_len, where, fmt, ap);
    va_end(ap);
    return -1;
}

/* Describe the byte at pos for "unexpected ..." messages. */
static int fail_unexpected(parser *p, size_t at, const char *ctx) {
    if (at >= p->len) return fail_at(p, at, "unexpected end of input%s", ctx);
    unsigned char c = p->s[at];
    if (c >= 0x20 && c < 0x7f) return fail_at(p, at, "unexpected character '%c'%s", c, ctx);
    return fail_at(p, at, "unexpected byte 0x%02x%s", c, ctx);
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Length (2..4) of a valid multi-byte UTF-8 sequence at s, or 0 when it is
 * invalid: bad lead, bad/missing continuation, overlong, surrogate, > U+10FFFF. */
static int utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    int n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;      /* overlong */
        else if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;      /* overlong */
        else if (c == 0xF4) hi = 0x8F; /* > U+10FFFF */
    } else {
        return 0;
    }
    if (avail < (size_t)n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return n;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* 4 hex digits at pos, or -1. */
static long hex4(const parser *p, size_t pos) {
    if (pos + 4 > p->len) return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p->s[pos + (size_t)i];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* String starting at the opening quote. Decoded bytes never outnumber the
 * raw ones (\uXXXX: 6 -> <=3, a pair: 12 -> 4), so one pass into a buffer of
 * the raw length suffices once the closing quote is found. */
static int parse_string(parser *p, char **out, size_t *out_len) {
    size_t start = p->pos + 1, end = start;
    /* find the closing quote (skipping escaped characters) */
    while (end < p->len && p->s[end] != '"') {
        if (p->s[end] == '\\') end++;
        end++;
    }
    if (end >= p->len) return fail_at(p, p->pos, "unterminated string");
    char *buf = malloc(end - start + 1);
    if (!buf) return fail_at(p, p->pos, "out of memory");
    size_t o = 0, i = start;
    while (i < end) {
        unsigned char c = p->s[i];
        if (c < 0x20) {
            fail_at(p, i, "control character 0x%02x in string (must be escaped)", c);
            goto bad;
        }
        if (c >= 0x80) {
            int n = utf8_seq_len(p->s + i, end - i);
            if (n == 0) {
                fail_at(p, i, "invalid UTF-8 byte 0x%02x in string", c);
                goto bad;
            }
            memcpy(buf + o, p->s + i, (size_t)n);
            o += (size_t)n;
            i += (size_t)n;
            continue;
        }
        if (c != '\\') {
            buf[o++] = (char)c;
            i++;
            continue;
        }
        unsigned char e = p->s[i + 1]; /* i+1 < end: end is a '"' not escaped */
        switch (e) {
        case '"': buf[o++] = '"'; break;
        case '\\': buf[o++] = '\\'; break;
        case '/': buf[o++] = '/'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 'n': buf[o++] = '\n'; break;
        case 'r': buf[o++] = '\r'; break;
        case 't': buf[o++] = '\t'; break;
        case 'u': {
            long u = i + 6 <= end ? hex4(p, i + 2) : -1;
            if (u < 0) {
                fail_at(p, i, "invalid \\u escape (needs 4 hex digits)");
                goto bad;
            }
            uint32_t cp = (uint32_t)u;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail_at(p, i, "lone low surrogate \\u%04lX", u);
                goto bad;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = -1;
                if (i + 12 <= end && p->s[i + 6] == '\\' && p->s[i + 7] == 'u')
                    lo = hex4(p, i + 8);
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    fail_at(p, i, "lone high surrogate \\u%04lX (not followed by \\uDC00..\\uDFFF)", u);
                    goto bad;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
                i += 6;
            }
            o += put_utf8(buf + o, cp);
            i += 6;
            continue;
        }
        default:
            if (e >= 0x20 && e < 0x7f) fail_at(p, i, "invalid escape '\\%c' in string", e);
            else fail_at(p, i, "invalid escape (byte 0x%02x after '\\') in string", e);
            goto bad;
        }
        i += 2;
    }
    buf[o] = 0;
    *out = buf;
    *out_len = o;
    p->pos = end + 1;
    return 0;
bad:
    free(buf);
    return -1;
}

static int parse_number(parser *p, json_value *v) {
    size_t i = p->pos, b = i;
    const unsigned char *s = p->s;
    size_t n = p->len;
    if (i < n && s[i] == '-') i++;
    if (i >= n || s[i] < '0' || s[i] > '9') return fail_at(p, i, "invalid number: expected a digit");
    if (s[i] == '0') {
        i++;
        if (i < n && s[i] >= '0' && s[i] <= '9')
            return fail_at(p, i, "invalid number: leading zero");
    } else {
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9')
            return fail_at(p, i, "invalid number: expected a digit after '.'");
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || s[i] < '0' || s[i] > '9')
            return fail_at(p, i, "invalid number: expected a digit in the exponent");
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    /* The text is not NUL-terminated: copy the validated token for strtod.
     * strtod follows LC_NUMERIC, so use the locale's decimal point. */
    size_t tl = i - b;
    char small[64];
    char *tok = tl < sizeof small - 8 ? small : malloc(tl + 8);
    if (!tok) return fail_at(p, b, "out of memory");
    const char *dp = localeconv()->decimal_point;
    if (!dp || !dp[0] || strlen(dp) > 7) dp = ".";
    size_t dpl = strlen(dp);
    size_t o = 0;
    for (size_t k = b; k < i; k++) {
        if (s[k] == '.') {
            memcpy(tok + o, dp, dpl);
            o += dpl;
        } else {
            tok[o++] = (char)s[k];
        }
    }
    tok[o] = 0;
    char *endp = NULL;
    double d = strtod(tok, &endp);
    int ok = endp == tok + o;
    if (tok != small) free(tok);
    if (!ok) return fail_at(p, b, "invalid number");
    if (isinf(d)) return fail_at(p, b, "number out of range");
    v->type = JSON_NUMBER;
    v->number = d;
    p->pos = i;
    return 0;
}

static void free_contents(json_value *v) {
    if (!v) return;
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        if (v->items) free_contents(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

/* Grow items (and keys) to hold one more. */
static int grow(json_value *v, size_t *cap, int with_keys) {
    if (v->n < *cap) return 0;
    const int64_t nc = vx_grow_cap((int64_t)*cap, (int64_t)v->n + 1, 4);
    if ((uint64_t)nc > SIZE_MAX / sizeof(json_value)) return -1;
    json_value *ni = realloc(v->items, (size_t)nc * sizeof *ni);
    if (!ni) return -1;
    v->items = ni;
    if (with_keys) {
        char **nk = realloc(v->keys, (size_t)nc * sizeof *nk);
        if (!nk) return -1;
        v->keys = nk;
    }
    *cap = (size_t)nc;
    return 0;
}

/* Give back unused capacity: tekken.json holds ~150k small objects. */
static void shrink(json_value *v, size_t cap) {
    if (v->n == 0 || v->n == cap) return;
    json_value *ni = realloc(v->items, v->n * sizeof *ni);
    if (ni) v->items = ni;
    if (v->keys) {
        char **nk = realloc(v->keys, v->n * sizeof *nk);
        if (nk) v->keys = nk;
    }
}

typedef struct {
    const char *s;
    size_t len;
    size_t pos; /* where the key starts, for the message */
} keyref;

static int keyref_cmp(const void *a, const void *b) {
    const keyref *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, m);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

static int parse_value(parser *p, json_value *v, int depth);

static int parse_array(parser *p, json_value *v, int depth) {
    size_t cap = 0;
    v->type = JSON_ARRAY;
    p->pos++; /* '[' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        if (grow(v, &cap, 0)) return fail_at(p, p->pos, "out of memory");
        memset(&v->items[v->n], 0, sizeof v->items[0]);
        v->n++; /* counted before parsing so a partial child gets freed */
        if (parse_value(p, &v->items[v->n - 1], depth)) return -1;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ']')
                return fail_at(p, p->pos, "trailing comma in array");
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == ']') {
            p->pos++;
            shrink(v, cap);
            return 0;
        }
        return fail_unexpected(p, p->pos, ": expected ',' or ']' in array");
    }
}

static int parse_object(parser *p, json_value *v, int depth) {
    size_t cap = 0;
    v->type = JSON_OBJECT;
    size_t open = p->pos;
    p->pos++; /* '{' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return 0;
    }
    size_t *key_pos = NULL, *key_len = NULL, kcap = 0;
    int rc = -1;
    for (;;) {
        if (p->pos >= p->len || p->s[p->pos] != '"') {
            fail_unexpected(p, p->pos, ": expected a string key in object");
            goto out;
        }
        if (grow(v, &cap, 1)) {
            fail_at(p, p->pos, "out of memory");
            goto out;
        }
        if (v->n >= kcap) {
            size_t nc = kcap ? kcap * 2 : 4;
            size_t *a = realloc(key_pos, nc * sizeof *a);
            if (a) key_pos = a;
            size_t *b = a ? realloc(key_len, nc * sizeof *b) : NULL;
            if (b) key_len = b;
            if (!a || !b) {
                fail_at(p, p->pos, "out of memory");
                goto out;
            }
            kcap = nc;
        }
        memset(&v->items[v->n], 0, sizeof v->items[0]);
        v->keys[v->n] = NULL;
        v->n++;
        key_pos[v->n - 1] = p->pos;
        if (parse_string(p, &v->keys[v->n - 1], &key_len[v->n - 1])) goto out;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') {
            fail_unexpected(p, p->pos, ": expected ':' after object key");
            goto out;
        }
        p->pos++;
        if (parse_value(p, &v->items[v->n - 1], depth)) goto out;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == '}') {
                fail_at(p, p->pos, "trailing comma in object");
                goto out;
            }
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == '}') {
            p->pos++;
            break;
        }
        fail_unexpected(p, p->pos, ": expected ',' or '}' in object");
        goto out;
    }
    /* Duplicate keys: sort references, compare neighbours (keys may hold NUL). */
    if (v->n > 1) {
        keyref *r = malloc(v->n * sizeof *r);
        if (!r) {
            fail_at(p, open, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < v->n; i++) r[i] = (keyref){v->keys[i], key_len[i], key_pos[i]};
        qsort(r, v->n, sizeof *r, keyref_cmp);
        for (size_t i = 1; i < v->n; i++) {
            if (r[i].len == r[i - 1].len && memcmp(r[i].s, r[i - 1].s, r[i].len) == 0) {
                fail_at(p, r[i].pos, "duplicate key \"%.*s\" in object", (int)(r[i].len > 80 ? 80 : r[i].len),
                        r[i].s);
                free(r);
                goto out;
            }
        }
        free(r);
    }
    shrink(v, cap);
    rc = 0;
out:
    free(key_pos);
    free(key_len);
    return rc;
}

static int parse_literal(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->pos + n > p->len || memcmp(p->s + p->pos, word, n) != 0)
        return fail_at(p, p->pos, "invalid literal (expected '%s')", word);
    p->pos += n;
    return 0;
}

static int parse_value(parser *p, json_value *v, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) return fail_at(p, p->pos, "unexpected end of input: expected a value");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{':
    case '[':
        if (depth >= JSON_MAX_DEPTH)
            return fail_at(p, p->pos, "nesting deeper than %d levels", JSON_MAX_DEPTH);
        return c == '{' ? parse_object(p, v, depth + 1) : parse_array(p, v, depth + 1);
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->str, &v->str_len);
    case 't':
        v->type = JSON_BOOL;
        v->boolean = 1;
        return parse_literal(p, "true");
    case 'f':
        v->type = JSON_BOOL;
        return parse_literal(p, "false");
    case 'n':
        v->type = JSON_NULL;
        return parse_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, v);
        return fail_unexpected(p, p->pos, ": expected a value");
    }
}

int json_parse(const char *text, size_t len, json_value **out, char *err, size_t err_len) {
    parser p = {(const unsigned char *)text, len, 0, err, err_len, 0};
    if (out) *out = NULL;
    if (err && err_len) err[0] = 0;
    if (!out || (!text && len)) return fail_at(&p, 0, "no input");
    json_value *root = calloc(1, sizeof *root);
    if (!root) return fail_at(&p, 0, "out of memory");
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) p.pos = 3;
    if (parse_value(&p, root, 0) == 0) {
        skip_ws(&p);
        if (p.pos == p.len) {
            *out = root;
            return 0;
        }
        fail_unexpected(&p, p.pos, " after the JSON value (trailing data)");
    }
    json_free(root);
    return -1;
}

void json_free(json_value *v) {
    if (!v) return;
    free_contents(v);
    free(v);
}

const json_value *json_get(const json_value *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT || !key) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

const json_value *json_path(const json_value *root, const char *dotted) {
    if (!root || !dotted) return NULL;
    const json_value *v = root;
    const char *s = dotted;
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (!v || v->type != JSON_OBJECT) return NULL;
        const json_value *next = NULL;
        for (size_t i = 0; i < v->n; i++) {
            if (strncmp(v->keys[i], s, n) == 0 && v->keys[i][n] == 0) {
                next = &v->items[i];
                break;
            }
        }
        v = next;
        if (!dot) return v;
        s = dot + 1;
    }
}

int json_as_int(const json_value *v, long long *out) {
    if (!v || v->type != JSON_NUMBER) return -1;
    double d = v->number;
    /* Only integers a double holds exactly (|x| <= 2^53): a bigger token may
     * already have been rounded by strtod. */
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0)) return -1;
    if (d != floor(d)) return -1;
    if (out) *out = (long long)d;
    return 0;
}

int json_load_file(const char *path, json_value **out, char *err, size_t err_len) {
    size_t len = 0;
    char *text = vx_read_file(path, &len, err, err_len);
    if (!text) return -1;
    char jerr[256];
    const int rc = json_parse(text, len, out, jerr, sizeof jerr);
    if (rc != 0) vx_errf(err, err_len, path, "invalid JSON: %s", jerr);
    free(text); /* the tree holds everything */
    return rc;
}
