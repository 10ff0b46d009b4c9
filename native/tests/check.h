/* check.h - the C tests' one assertion: report and count, never abort, so
 * one run lists every failure. main() returns failures != 0. */
#ifndef VX_TEST_CHECK_H
#define VX_TEST_CHECK_H
#include <stdio.h>

static int failures = 0;
#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)
#endif
