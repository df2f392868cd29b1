/* The access line (accesslog.h). */
#include "proxy/accesslog.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

static void write_json(const accesslog_entry_t *e)
{
    struct timespec ts;
    struct tm tm;
    char when[96];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:s, s:s, s:s}",
                          "time", when, "level", "info", "msg", "access", "req", (json_int_t)e->id,
                          "peer", e->peer, "method", e->method, "target", e->target, "status",
                          e->status, "bytes", (json_int_t)e->bytes, "ms", (json_int_t)e->ms,
                          "cache", e->cache, "upstream", e->upstream, "ua", e->ua, "user",
                          e->user ? e->user : "-");
    if (o && e->via)
        json_object_set_new(o, "via", json_string(e->via));
    if (o && e->node)
        json_object_set_new(o, "node", json_string(e->node));
    if (o && e->group)
        json_object_set_new(o, "group", json_string(e->group));
    if (o && e->note)
        json_object_set_new(o, "note", json_string(e->note));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        LOG_WARN("req=%llu: access line not written (out of memory)", (unsigned long long)e->id);
        return;
    }
    /* One write(2) per line, like log_write, so lines never interleave. */
    size_t n = strlen(s);
    s[n] = '\n';
    ssize_t w = write(STDERR_FILENO, s, n + 1);
    (void)w;
    free(s);
}

void accesslog_write(const accesslog_entry_t *e, bool json)
{
    if (log_threshold < WLOG_INFO)
        return;
    if (json) {
        write_json(e);
        return;
    }
    LOG_INFO(
        "req=%llu %s %s %d bytes=%llu cache=%s ms=%lld upstream=%s user=%s peer=%s%s%s%s%s%s%s "
        "ua=\"%s\"%s%s%s",
        (unsigned long long)e->id, e->method, e->target, e->status, (unsigned long long)e->bytes,
        e->cache, (long long)e->ms, e->upstream, e->user ? e->user : "-", e->peer,
        e->via ? " via=" : "", e->via ? e->via : "", e->node ? " node=" : "",
        e->node ? e->node : "", e->group ? " group=" : "", e->group ? e->group : "", e->ua,
        e->note ? " (" : "", e->note ? e->note : "", e->note ? ")" : "");
}
