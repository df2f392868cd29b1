/** Error codes shared by every module.
 *
 * Every fallible function returns an int: 0 on success, negative on failure. System errors
 * are -errno, so libuv's codes (UV_E*) pass through untouched. winch's own codes live in one
 * table below, in a range clear of libuv (-1 .. -4095, UV_EAI_* around -3000) and of LMDB
 * (-30799 .. -30780). LMDB's positive errnos and OpenSSL's error queue are translated at
 * their boundary, never passed up raw.
 */
#ifndef WINCH_COMMON_ERR_H
#define WINCH_COMMON_ERR_H

#define WINCH_ERRORS(X)                                                                            \
    X(WE_INVALID, -20001, "invalid input")                                                         \
    X(WE_NOTFOUND, -20002, "not found")                                                            \
    X(WE_TOOBIG, -20003, "size limit exceeded")                                                    \
    X(WE_DIGEST, -20004, "digest mismatch")                                                        \
    X(WE_PROTO, -20005, "protocol error from peer")                                                \
    X(WE_UPSTREAM, -20006, "upstream answered with an error status")                               \
    X(WE_CONFIG, -20007, "configuration error")                                                    \
    X(WE_INDEX, -20008, "index (LMDB) error")                                                      \
    X(WE_CANCELLED, -20009, "cancelled")                                                           \
    X(WE_DENIED, -20010, "denied by policy")                                                       \
    X(WE_TLS, -20011, "TLS error")                                                                 \
    X(WE_SHORT, -20012, "stream ended before the announced length")                                \
    X(WE_RATELIMIT, -20013, "upstream rate limit reached")                                         \
    X(WE_DOWN, -20014, "upstream is down")                                                         \
    X(WE_BUSY, -20015, "upstream busy: too many requests waiting, or waited too long")             \
    X(WE_FORBIDDEN, -20016, "redirect or token realm names an address winch may not reach")

enum winch_err {
#define WINCH_ERR_ENUM(name, value, text) name = (value),
    WINCH_ERRORS(WINCH_ERR_ENUM)
#undef WINCH_ERR_ENUM
};

/** Text for any error this project returns: winch codes, -errno and libuv's own codes.
 * Returns a static string (borrowed, never freed). */
const char *err_str(int err);

#endif
