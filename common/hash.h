/** String hashing for in-memory tables (single-flight tables, the manifest tier, the index's
 * access guard). Not for anything an attacker could aim at with chosen keys: every table that
 * uses it is keyed by digests or by names the caller validated, and bounded. */
#ifndef WINCH_COMMON_HASH_H
#define WINCH_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

/** FNV-1a over the NUL-terminated s. Digests are uniformly random past their algorithm prefix,
 * so this spreads them well enough for chained tables of a few hundred buckets. */
uint32_t hash_str(const char *s);

/** FNV-1a over n bytes (64-bit: for tables of millions of entries, e.g. retention's model). */
uint64_t hash_bytes64(const void *p, size_t n);

#endif
