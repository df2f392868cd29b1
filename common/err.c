#include "common/err.h"

#include <string.h>

const char *err_str(int err)
{
    switch (err) {
#define WINCH_ERR_CASE(name, value, text)                                                          \
    case name:                                                                                     \
        return text;
        WINCH_ERRORS(WINCH_ERR_CASE)
#undef WINCH_ERR_CASE
    case 0:
        return "success";
    /* libuv's codes that are not errnos; the numbers are libuv's ABI. */
    case -4095:
        return "end of file";
    case -3008:
        return "unknown host (name resolution failed)";
    case -3001:
        return "temporary name resolution failure";
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
