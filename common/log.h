/** Logging: one line per event on stderr, with a level filter that is checked before any
 * argument is evaluated. Request-scoped lines carry the request id and cache status as the
 * caller formats them ("req=%llu cache=hit ..."). Never log credentials or tokens. */
#ifndef WINCH_COMMON_LOG_H
#define WINCH_COMMON_LOG_H

#include <stddef.h>

enum log_level { WLOG_ERROR = 0, WLOG_WARN = 1, WLOG_INFO = 2, WLOG_DEBUG = 3 };

/** The current threshold; lines above it are skipped. Set once at start (log_set_level). */
extern int log_threshold;

#define LOG(level, ...)                                                                            \
    do {                                                                                           \
        if ((level) <= log_threshold)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define LOG_ERROR(...) LOG(WLOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) LOG(WLOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) LOG(WLOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) LOG(WLOG_DEBUG, __VA_ARGS__)

/** Writes one formatted line with a timestamp and level; thread-safe (one write(2) a line). */
void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Parses "error", "warn", "info", "debug"; returns the level or WE_INVALID. */
int log_level_parse(const char *name);

void log_set_level(int level);

/** Makes src[0..len) safe to put in a log line: printable ASCII (0x20..0x7e) is kept except
 * `\` and `"`, which become \x5c and \x22 like every control and non-ASCII byte (\xHH), so a
 * request can neither split a line, drive a terminal, nor close a quoted field. A value that
 * does not fit in dst[cap] is cut at a whole byte (never inside an escape) and ends in "...".
 * dst is always NUL-terminated when cap > 0. Returns dst. */
const char *log_escape(char *dst, size_t cap, const char *src, size_t len);

#endif
