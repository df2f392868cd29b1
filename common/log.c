#include "common/log.h"

#include "common/err.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log_threshold = WLOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(int level)
{
    log_threshold = level;
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return WE_INVALID;
}

void log_write(int level, const char *fmt, ...)
{
    /* One buffer and one write(2) per line, so lines from the loop and the threadpool never
     * interleave mid-line. Long lines are cut, never allocated. */
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000,
                     level >= 0 && level <= WLOG_DEBUG ? level_names[level] : "?");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

static bool log_plain(unsigned char ch)
{
    return ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '"';
}

const char *log_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (cap == 0)
        return dst;
    /* Whole, or cut with room kept for the "..." that says so. */
    size_t total = 0;
    for (size_t i = 0; i < len && total < cap; i++)
        total += log_plain((unsigned char)src[i]) ? 1 : 4;
    bool cut = total >= cap;
    size_t limit = cap - 1;
    if (cut)
        limit = limit >= 3 ? limit - 3 : 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        bool plain = log_plain(ch);
        if (o + (plain ? 1 : 4) > limit)
            break;
        if (plain) {
            dst[o++] = (char)ch;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[ch >> 4];
            dst[o++] = hex[ch & 15];
        }
    }
    if (cut && o + 3 <= cap - 1) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}
