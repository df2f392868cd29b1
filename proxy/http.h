/** Bits of HTTP/1.1 grammar that the server and the registry handlers share: the Range header,
 * ETag lists, reason phrases. Pure functions over caller memory; no I/O. */
#ifndef WINCH_PROXY_HTTP_H
#define WINCH_PROXY_HTTP_H

#include <stdbool.h>
#include <stdint.h>

enum http_range_kind {
    HTTP_RANGE_NONE = 0, /* no Range header */
    HTTP_RANGE_OK = 1,   /* one usable byte range */
    HTTP_RANGE_BAD = 2,  /* unusable (a list, another unit, junk): ignored, as RFC 9110 allows */
};

typedef struct http_range {
    enum http_range_kind kind;
    bool suffix;    /* bytes=-N: the last N bytes, N in `last` */
    uint64_t first; /* bytes=first-last */
    uint64_t last;  /* UINT64_MAX when open-ended (bytes=first-) */
} http_range_t;

/** Parses one Range header value ("bytes=0-9", "bytes=5-", "bytes=-20"). Only a single range
 * is supported; anything else gives HTTP_RANGE_BAD, which means a full 200 answer. */
void http_range_parse(const char *value, http_range_t *out);

/** Resolves r against a representation of size bytes. Returns 200 (no usable range: the whole
 * thing), 206 with [*first, *last], or 416 (unsatisfiable). For 200, [*first, *last] spans
 * everything (0, size - 1; both 0 when size is 0). */
int http_range_resolve(const http_range_t *r, uint64_t size, uint64_t *first, uint64_t *last);

/** True if an If-None-Match value names the entity tag "<digest>": a quoted or weak tag, a
 * bare digest, a comma list of them, or `*`. */
bool http_etag_matches(const char *if_none_match, const char *digest);

/** The reason phrase for status ("Not Found"); "Unknown" for one winch never sends. Static. */
const char *http_reason(int status);

#endif
