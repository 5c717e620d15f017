// The failure counter and EXPECT check shared by the CTest programs: a failed check
// prints its line and the message, and main() returns non-zero when any failed.
#pragma once

#include <stdio.h>

static int g_failures = 0;

#define EXPECT(cond, ...)                          \
  do {                                             \
    if (!(cond)) {                                 \
      ++g_failures;                                \
      fprintf(stderr, "FAIL line %d: ", __LINE__); \
      fprintf(stderr, __VA_ARGS__);                \
      fprintf(stderr, "\n");                       \
    }                                              \
  } while (0)
