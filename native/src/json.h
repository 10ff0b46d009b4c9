/* json.h - a small strict JSON parser (RFC 8259) for params.json, tekken.json
 * and safetensors headers. The whole document is parsed into a tree of
 * json_value nodes owned by the root. */
#ifndef VX_JSON_H
#define VX_JSON_H
#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    int boolean;                 /* JSON_BOOL */
    double number;               /* JSON_NUMBER */
    char *str;                   /* JSON_STRING: UTF-8, NUL-terminated (escapes decoded) */
    size_t str_len;              /* bytes in str (may contain NUL from \u0000) */
    size_t n;                    /* JSON_ARRAY / JSON_OBJECT: number of items */
    struct json_value *items;    /* array elements / object values, in document order */
    char **keys;                 /* JSON_OBJECT: keys, parallel to items */
} json_value;

/* Parse len bytes of text. Returns 0 and sets *out on success; on failure
 * returns -1 and writes "line L col C: what" to err. Depth is limited (64). */
int json_parse(const char *text, size_t len, json_value **out, char *err, size_t err_len);
void json_free(json_value *v);
/* Read and parse the file at path: 0 and *out, or -1 with "PATH: what" in err
 * ("PATH: invalid JSON: line L col C: what" for a parse error). */
int json_load_file(const char *path, json_value **out, char *err, size_t err_len);

/* Object member by key, or NULL (also when obj is not an object). */
const json_value *json_get(const json_value *obj, const char *key);
/* Dotted path through nested objects: "multimodal.whisper_model_args.encoder_args". */
const json_value *json_path(const json_value *root, const char *dotted);
/* Number as int if it is an integral JSON number in int range: 0 ok, -1 not. */
int json_as_int(const json_value *v, long long *out);
#endif
