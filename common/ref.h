/** The OCI reference grammars (docs/protocol.md, "Grammars"): repository names, tags, digests.
 * Pure functions over caller memory; used by the router before any I/O and by the cache to
 * turn a digest into a path, which is why they live here rather than in proxy/ or cache/. */
#ifndef WINCH_COMMON_REF_H
#define WINCH_COMMON_REF_H

#include <stdbool.h>
#include <stddef.h>

#define REF_NAME_MAX 255 /* distribution's RepositoryNameTotalLengthMax */
#define REF_TAG_MAX 128
#define REF_DIGEST_MAX 160 /* "sha512:" + 128 hex, with room for other registered algorithms */

enum ref_alg { REF_ALG_SHA256 = 1, REF_ALG_SHA512 = 2 };

/** True if s[0..n) is a repository name: components
 * [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/', at most REF_NAME_MAX bytes. */
bool ref_name_valid(const char *s, size_t n);

/** True if s[0..n) is a tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. */
bool ref_tag_valid(const char *s, size_t n);

/** Parses a digest "alg:encoded". Returns 0 and sets *alg for sha256 (64 lowercase hex) and
 * sha512 (128 lowercase hex). Returns WE_INVALID when s[0..n) does not match the digest grammar
 * or a known algorithm's encoding, and -ENOTSUP for a well-formed digest of an algorithm winch
 * cannot verify. */
int ref_digest_parse(const char *s, size_t n, enum ref_alg *alg);

/** Length in bytes of the raw hash for alg (32 or 64). */
size_t ref_alg_size(enum ref_alg alg);
/** "sha256" / "sha512". */
const char *ref_alg_name(enum ref_alg alg);

#endif
