/** The access log: one line per request, as text (the log's usual prefix, then key=value pairs)
 * or, with `log_format: "json"`, one JSON object per line. Every value that came from the client
 * (target, user agent) is escaped by the caller (log_escape): never a control byte, never a
 * credential (winch never logs headers other than the user agent). Internal to proxy/. */
#ifndef WINCH_PROXY_ACCESSLOG_H
#define WINCH_PROXY_ACCESSLOG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct accesslog_entry {
    uint64_t id;
    const char *peer, *method, *target, *ua; /* borrowed; escaped printable ASCII */
    /* The socket's peer when peer is the client a trusted proxy named (X-Forwarded-For), else
     * NULL. */
    const char *via;
    const char *node;     /* the node's name ("node_name" set in the configuration), or NULL */
    const char *group;    /* the client's group (client_groups[].name), or NULL */
    const char *user;     /* the authenticated client (escaped), or "-" */
    const char *upstream; /* the configured name, or "-" */
    const char *cache;    /* the cache result word */
    int status;
    uint64_t bytes;
    int64_t ms;
    const char *note; /* "client gone", "tls handshake on the plain listener", or NULL */
} accesslog_entry_t;

/** Writes e at info level, as JSON when json. */
void accesslog_write(const accesslog_entry_t *e, bool json);

#endif
