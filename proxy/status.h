/** The status page, `GET /_winch/`: one self-contained HTML document (inline CSS and SVG, no
 * script, no external asset) with what an operator looks at first: hit ratio and bytes saved
 * since start, requests by cache result, fills and fetches in progress, each upstream's breaker
 * state and Docker Hub rate-limit remaining, the cache's size against its bound, and the most
 * pulled tags and the images served the most bytes. Every text that came from a client or an upstream (names, tags) is HTML-escaped.
 * Internal to proxy/; ops.c routes to it. */
#ifndef WINCH_PROXY_STATUS_H
#define WINCH_PROXY_STATUS_H

#include "common/buf.h"
#include "proxy/call.h"
#include "proxy/ops_env.h"

/** Answers c (GET or HEAD) with the page, at once. */
void status_answer(call_t *c, const ops_env_t *e);

/** Answers c (GET or HEAD) with the same as one JSON object, at once (status_json.c): version,
 * uptime, requests and hit ratio, bytes, the last hour, fills in progress (the first 50),
 * upstreams, the cache's size and bound, the top images by bytes served (10). */
void status_json_answer(call_t *c, const ops_env_t *e);

/** Appends s[0..n) to out HTML-escaped (& < > " '); control bytes become "?".
 * Returns 0 or what buf_append returned. For tests too. */
int status_html_escape(buf_t *out, const char *s, size_t n);

#endif
