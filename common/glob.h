/** Globs over slash-separated names, as policy rules, platform rules, access rules and
 * retention's protect list write them (tests/unit/test_common_glob.c has examples):
 *
 *   *    any run of characters within one path component (never a slash)
 *   **   as a whole component: any number of components, zero included (so a pattern
 *        ending in slash-star-star also matches the name without that last component);
 *        inside a longer component it is the same as one star
 *   ?    one character, never a slash
 *   anything else matches itself (case-sensitive: names are lowercase already)
 *
 * Pure; bounded work (components are matched with backtracking over at most one `**` level
 * at a time, and names are at most a few hundred bytes). */
#ifndef WINCH_COMMON_GLOB_H
#define WINCH_COMMON_GLOB_H

#include <stdbool.h>
#include <stddef.h>

/** Longest pattern accepted by glob_valid. */
#define GLOB_MAX 512

/** True when pattern is a usable glob: non-empty, at most GLOB_MAX bytes, printable ASCII, no
 * empty components ("a//b", leading or trailing '/'). On false, *why (may be NULL) gets a
 * static reason. */
bool glob_valid(const char *pattern, const char **why);

/** True when name matches pattern (both NUL-terminated). */
bool glob_match(const char *pattern, const char *name);

#endif
