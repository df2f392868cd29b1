/** The few macros the conventions allow outside tables and logging. */
#ifndef WINCH_COMMON_UTIL_H
#define WINCH_COMMON_UTIL_H

#include <stddef.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
