/* test_json.c - the strict JSON parser: valid documents, every error kind,
 * escapes and surrogate pairs, the depth limit, lookups. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#include "check.h"

/* Parse len bytes from an exact-size heap copy (no NUL after it), so a read
 * past the end shows up under ASan/valgrind. */
static int parse_n(const char *s, size_t len, json_value **out, char *err, size_t err_len) {
    char *buf = malloc(len ? len : 1);
    if (!buf) return -1;
    memcpy(buf, s, len);
    int rc = json_parse(buf, len, out, err, err_len);
    free(buf);
    return rc;
}

static json_value *ok(const char *s, int line) {
    json_value *v = NULL;
    char err[256];
    if (parse_n(s, strlen(s), &v, err, sizeof err) != 0) {
        fprintf(stderr, "%s:%d: expected valid JSON %s, got error: %s\n", __FILE__, line, s, err);
        failures++;
        return NULL;
    }
    return v;
}
#define OK(s) ok(s, __LINE__)

/* Must fail with "line L col C: ..." containing want (and where, if given). */
static void bad_n(const char *s, size_t len, const char *want, const char *where, int line) {
    json_value *v = (json_value *)1;
    char err[256];
    err[0] = 0;
    int rc = parse_n(s, len, &v, err, sizeof err);
    if (rc != -1 || v != NULL) {
        fprintf(stderr, "%s:%d: expected an error for %s\n", __FILE__, line, s);
        failures++;
        if (rc == 0) json_free(v);
        return;
    }
    if (strncmp(err, "line ", 5) != 0 || !strstr(err, " col ") || !strstr(err, want) ||
        (where && !strstr(err, where))) {
        fprintf(stderr, "%s:%d: for %s: message \"%s\" lacks \"%s\"%s%s\n", __FILE__, line, s, err,
                want, where ? " / " : "", where ? where : "");
        failures++;
    }
}
#define BAD(s, want) bad_n(s, strlen(s), want, NULL, __LINE__)
#define BAD_AT(s, want, where) bad_n(s, strlen(s), want, where, __LINE__)

static void test_scalars(void) {
    json_value *v;
    v = OK("null");
    CHECK(v && v->type == JSON_NULL);
    json_free(v);
    v = OK(" true ");
    CHECK(v && v->type == JSON_BOOL && v->boolean == 1);
    json_free(v);
    v = OK("false");
    CHECK(v && v->type == JSON_BOOL && v->boolean == 0);
    json_free(v);
    v = OK("\t\r\n 42 \n");
    CHECK(v && v->type == JSON_NUMBER && v->number == 42);
    json_free(v);
    v = OK("-0");
    CHECK(v && v->type == JSON_NUMBER && v->number == 0);
    json_free(v);
    v = OK("-12.5e-1");
    CHECK(v && v->number == -1.25);
    json_free(v);
    v = OK("1E+3");
    CHECK(v && v->number == 1000);
    json_free(v);
    v = OK("0.000001");
    CHECK(v && v->number == 1e-6);
    json_free(v);
    v = OK("1e-400"); /* underflow to 0 is fine */
    CHECK(v && v->number == 0);
    json_free(v);
    /* a long number token (longer than the parser's stack buffer) */
    v = OK("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899");
    CHECK(v && v->number > 3.14159 && v->number < 3.1416);
    json_free(v);
    /* a number at the very end of a non-NUL-terminated buffer */
    json_value *w = NULL;
    char err[128];
    CHECK(parse_n("1234", 2, &w, err, sizeof err) == 0 && w && w->number == 12);
    json_free(w);
    /* BOM is skipped */
    v = OK("\xEF\xBB\xBF{}");
    CHECK(v && v->type == JSON_OBJECT && v->n == 0);
    json_free(v);
}

static void test_strings(void) {
    json_value *v;
    v = OK("\"\"");
    CHECK(v && v->type == JSON_STRING && v->str_len == 0 && v->str[0] == 0);
    json_free(v);
    v = OK("\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\"");
    CHECK(v && strcmp(v->str, "a\"b\\c/d\be\ff\ng\rh\ti") == 0 && v->str_len == 17);
    json_free(v);
    v = OK("\"\\u0041\\u00e9\\u20AC\"");
    CHECK(v && strcmp(v->str, "A\xC3\xA9\xE2\x82\xAC") == 0);
    json_free(v);
    /* \u0000 keeps its place; str_len counts past it */
    v = OK("\"a\\u0000b\"");
    CHECK(v && v->str_len == 3 && v->str[0] == 'a' && v->str[1] == 0 && v->str[2] == 'b');
    json_free(v);
    /* surrogate pair -> one 4-byte UTF-8 character (U+1F600) */
    v = OK("\"\\uD83D\\uDE00\"");
    CHECK(v && v->str_len == 4 && memcmp(v->str, "\xF0\x9F\x98\x80", 4) == 0);
    json_free(v);
    v = OK("\"\\udbff\\udfff\""); /* U+10FFFF */
    CHECK(v && v->str_len == 4 && memcmp(v->str, "\xF4\x8F\xBF\xBF", 4) == 0);
    json_free(v);
    /* raw UTF-8 passes through */
    v = OK("\"caf\xC3\xA9 \xF0\x9F\x98\x80\"");
    CHECK(v && strcmp(v->str, "caf\xC3\xA9 \xF0\x9F\x98\x80") == 0);
    json_free(v);
    v = OK("\"\x7f\""); /* DEL is not a control character for JSON */
    CHECK(v && v->str_len == 1);
    json_free(v);
}

static void test_containers(void) {
    json_value *v = OK("{\"a\": [1, 2.5, \"x\", null, true, {\"b\": {}}], \"c\": {\"d\": {\"e\": 7}}, \"e\": []}");
    CHECK(v && v->type == JSON_OBJECT && v->n == 3);
    const json_value *a = json_get(v, "a");
    CHECK(a && a->type == JSON_ARRAY && a->n == 6);
    CHECK(a && a->items[1].number == 2.5 && strcmp(a->items[2].str, "x") == 0);
    CHECK(a && a->items[3].type == JSON_NULL && a->items[4].boolean);
    CHECK(a && json_get(&a->items[5], "b") && json_get(&a->items[5], "b")->type == JSON_OBJECT);
    CHECK(json_get(v, "zz") == NULL);
    CHECK(json_get(a, "a") == NULL); /* not an object */
    CHECK(json_get(NULL, "a") == NULL);
    const json_value *e = json_path(v, "c.d.e");
    long long x = 0;
    CHECK(e && json_as_int(e, &x) == 0 && x == 7);
    CHECK(json_path(v, "c.d") && json_path(v, "c.d")->type == JSON_OBJECT);
    CHECK(json_path(v, "c.x.e") == NULL);
    CHECK(json_path(v, "a.b") == NULL); /* through an array */
    CHECK(json_path(v, "c.d.e.f") == NULL);
    CHECK(json_path(v, "c") == json_get(v, "c"));
    const json_value *empty = json_get(v, "e");
    CHECK(empty && empty->type == JSON_ARRAY && empty->n == 0);
    /* document order kept */
    CHECK(v && strcmp(v->keys[0], "a") == 0 && strcmp(v->keys[1], "c") == 0 &&
          strcmp(v->keys[2], "e") == 0);
    json_free(v);

    /* many members: growth and the duplicate check on a bigger object */
    char *big = malloc(200000);
    CHECK(big != NULL);
    if (big) {
        size_t o = 0;
        big[o++] = '{';
        for (int i = 0; i < 5000; i++) o += (size_t)sprintf(big + o, "%s\"k%d\":[%d]", i ? "," : "", i, i);
        big[o++] = '}';
        json_value *b = NULL;
        char err[128];
        CHECK(parse_n(big, o, &b, err, sizeof err) == 0);
        CHECK(b && b->n == 5000 && json_get(b, "k4999") && json_get(b, "k4999")->items[0].number == 4999);
        json_free(b);
        /* the same with a duplicate at the end */
        o--;
        o += (size_t)sprintf(big + o, ",\"k17\":1}");
        bad_n(big, o, "duplicate key \"k17\"", NULL, __LINE__);
        free(big);
    }
}

static void test_ints(void) {
    long long x = 0;
    json_value *v = OK("[1.0, 1.5, 1e20, -5, \"3\", 9007199254740992, 9007199254740994, -0]");
    CHECK(v);
    if (!v) return;
    CHECK(json_as_int(&v->items[0], &x) == 0 && x == 1);
    CHECK(json_as_int(&v->items[1], &x) == -1);
    CHECK(json_as_int(&v->items[2], &x) == -1);
    CHECK(json_as_int(&v->items[3], &x) == 0 && x == -5);
    CHECK(json_as_int(&v->items[4], &x) == -1);
    CHECK(json_as_int(&v->items[5], &x) == 0 && x == 9007199254740992LL);
    CHECK(json_as_int(&v->items[6], &x) == -1); /* beyond 2^53: may be rounded */
    CHECK(json_as_int(&v->items[7], &x) == 0 && x == 0);
    CHECK(json_as_int(NULL, &x) == -1);
    json_free(v);
}

static void test_errors(void) {
    /* end of input */
    BAD("", "unexpected end of input");
    BAD("   \n ", "unexpected end of input");
    BAD("[1, 2", "unexpected end of input");
    BAD("{\"a\": ", "unexpected end of input");
    BAD("{\"a\"", "unexpected end of input");
    /* structure */
    BAD("[1,]", "trailing comma in array");
    BAD("{\"a\":1,}", "trailing comma in object");
    BAD("{\"a\" 1}", "expected ':'");
    BAD("{1: 2}", "expected a string key");
    BAD("{'a': 2}", "unexpected character '''");
    BAD("[1 2]", "expected ',' or ']'");
    BAD("{\"a\":1 \"b\":2}", "expected ',' or '}'");
    BAD("[,1]", "unexpected character ','");
    BAD("]", "unexpected character ']'");
    BAD("1 2", "trailing data");
    BAD("{} {}", "trailing data");
    BAD("[1] x", "trailing data");
    BAD("{\"a\":1,\"a\":2}", "duplicate key \"a\"");
    BAD("/* c */ 1", "unexpected character '/'");
    BAD("\x01", "unexpected byte 0x01");
    /* literals */
    BAD("tru", "invalid literal");
    BAD("nul", "invalid literal");
    BAD("falsey", "trailing data");
    BAD("True", "unexpected character 'T'");
    BAD("NaN", "unexpected character 'N'");
    BAD("Infinity", "unexpected character 'I'");
    /* numbers */
    BAD("01", "leading zero");
    BAD("-01", "leading zero");
    BAD("1.", "digit after '.'");
    BAD("1.e5", "digit after '.'");
    BAD("-", "expected a digit");
    BAD("-a", "expected a digit");
    BAD("1e", "exponent");
    BAD("1e+", "exponent");
    BAD("+1", "unexpected character '+'");
    BAD(".5", "unexpected character '.'");
    BAD("0x10", "trailing data");
    BAD("1e400", "number out of range");
    BAD("-1e400", "number out of range");
    /* strings */
    BAD("\"abc", "unterminated string");
    BAD("\"abc\\\"", "unterminated string");
    BAD("\"a\nb\"", "control character 0x0a");
    BAD("\"a\tb\"", "control character 0x09");
    BAD("\"\\q\"", "invalid escape '\\q'");
    BAD("\"\\x41\"", "invalid escape '\\x'");
    BAD("\"\\u12\"", "invalid \\u escape");
    BAD("\"\\u12G4\"", "invalid \\u escape");
    BAD("\"\\uD800\"", "lone high surrogate");
    BAD("\"\\uD83Dabcdef\"", "lone high surrogate");
    BAD("\"\\uD800\\u0041\"", "lone high surrogate");
    BAD("\"\\uD800\\uD800\"", "lone high surrogate");
    BAD("\"\\uDC00\"", "lone low surrogate");
    BAD("\"\\uDE00\\uD83D\"", "lone low surrogate");
    BAD("\"\xC3\x28\"", "invalid UTF-8");
    BAD("\"\xC0\xAF\"", "invalid UTF-8"); /* overlong '/' */
    BAD("\"\xE0\x80\xAF\"", "invalid UTF-8"); /* overlong */
    BAD("\"\xED\xA0\x80\"", "invalid UTF-8"); /* encoded surrogate */
    BAD("\"\xF4\x90\x80\x80\"", "invalid UTF-8"); /* > U+10FFFF */
    BAD("\"\xFF\"", "invalid UTF-8");
    BAD("\"\xE2\x82\"", "invalid UTF-8"); /* truncated before the quote */
    /* positions: line and column of the offending byte */
    BAD_AT("{\n  \"a\": tru\n}", "invalid literal", "line 2 col 8:");
    BAD_AT("[1,\n2,\n]", "trailing comma", "line 3 col 1:");
    BAD_AT("\"x\\qy\"", "invalid escape", "line 1 col 3:");
    /* NUL inside the length is just a bad byte, not the end */
    bad_n("[1,\0 2]", 7, "unexpected byte 0x00", NULL, __LINE__);
}

static void test_depth(void) {
    char buf[400];
    /* 64 levels parse */
    for (int i = 0; i < 64; i++) buf[i] = '[';
    for (int i = 0; i < 64; i++) buf[64 + i] = ']';
    json_value *v = NULL;
    char err[128];
    CHECK(parse_n(buf, 128, &v, err, sizeof err) == 0);
    json_free(v);
    /* 65 do not */
    for (int i = 0; i < 65; i++) buf[i] = '[';
    for (int i = 0; i < 65; i++) buf[65 + i] = ']';
    bad_n(buf, 130, "nesting deeper than 64", "col 65:", __LINE__);
    /* objects count too */
    size_t o = 0;
    for (int i = 0; i < 65; i++) o += (size_t)sprintf(buf + o, "{\"a\":");
    bad_n(buf, o, "nesting deeper than 64", NULL, __LINE__);
    /* a hostile 1 MB of '[' fails cleanly, without deep recursion */
    size_t n = 1 << 20;
    char *deep = malloc(n);
    CHECK(deep != NULL);
    if (deep) {
        memset(deep, '[', n);
        bad_n(deep, n, "nesting deeper than 64", NULL, __LINE__);
        free(deep);
    }
}

static void test_err_buffer(void) {
    /* a tiny or absent error buffer must not overflow */
    char small[8];
    memset(small, 'x', sizeof small);
    json_value *v = NULL;
    CHECK(json_parse("[1,]", 4, &v, small, sizeof small) == -1 && v == NULL);
    CHECK(memchr(small, 0, sizeof small) != NULL);
    CHECK(json_parse("[1,]", 4, &v, NULL, 0) == -1);
    json_free(NULL); /* allowed */
}

int main(void) {
    test_scalars();
    test_strings();
    test_containers();
    test_ints();
    test_errors();
    test_depth();
    test_err_buffer();
    if (failures) {
        fprintf(stderr, "test_json: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_json: all passed\n");
    return 0;
}
