/** Clocks. Wall time is for what is stored (tag check times, access times); monotonic time is
 * for timeouts and durations. */
#ifndef WINCH_COMMON_TIMEUTIL_H
#define WINCH_COMMON_TIMEUTIL_H

#include <stdint.h>

/** Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t time_wall_ms(void);
/** Milliseconds from an arbitrary origin that never jumps (CLOCK_MONOTONIC). */
int64_t time_mono_ms(void);

#endif
