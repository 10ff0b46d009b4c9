/* check.h - the C tests' assertions: report and count, never abort, so one
 * run lists every failure. main() returns failures != 0.
 *   CHECK(cond)            reports the condition's text;
 *   CHECKF(cond, fmt, ...) also a printf-style message with the values;
 *   check_report(name)     prints the tally, returns main()'s status. */
#ifndef VX_TEST_CHECK_H
#define VX_TEST_CHECK_H
#include <stdio.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond) CHECKF(cond, "%s", "")

/* At most 40 failures are printed: past that a broken kernel would drown
 * the log in one message per output. */
#define CHECKF(cond, ...)                                                              \
    do {                                                                               \
        checks++;                                                                      \
        if (!(cond)) {                                                                 \
            if (failures < 40) {                                                       \
                fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
                fprintf(stderr, __VA_ARGS__);                                          \
                fputc('\n', stderr);                                                   \
            }                                                                          \
            failures++;                                                                \
        }                                                                              \
    } while (0)

/* The closing line of a test and main()'s exit status. */
static inline int check_report(const char *test) {
    if (failures) {
        fprintf(stderr, "%s: %d of %d checks failed\n", test, failures, checks);
        return 1;
    }
    printf("%s: all %d checks passed\n", test, checks);
    return 0;
}
#endif
