/* The log line of a notable decision (policy_describe): the rule that made it and what it did.
 * A refused client reads d->message (written by policy.c); the log says the same and more: pins,
 * soaks and freezes are invisible to clients. */
#include <stdio.h>
#include <string.h>

#include "common/sbuf.h"
#include "policy/policy.h"

static void rule_name(sbuf_t *b, const policy_decision_t *d)
{
    if (d->rule >= 0)
        sbuf_printf(b, "policy rule %d (%s)", d->rule + 1, d->match);
    else
        sbuf_puts(b, "policy (no rule matches)");
}

void policy_describe(const policy_decision_t *d, char *out, size_t len)
{
    sbuf_t b;
    sbuf_init(&b, out, len);
    rule_name(&b, d);
    if (d->verdict == POLICY_DENY) {
        sbuf_printf(&b, " refuses: %s", d->message);
        return;
    }
    const char *sep = ": ";
    if (d->audited) {
        sbuf_printf(&b, "%saudit: would refuse: %s", sep, d->message);
        sep = "; ";
    }
    if (d->pin == POLICY_PIN_CONFIG) {
        sbuf_printf(&b, "%stag pinned to %s by the configuration%s", sep, d->serve,
                    d->pin_overrides_stored ? " (over a different stored pin)" : "");
        sep = "; ";
    } else if (d->pin == POLICY_PIN_STORED) {
        sbuf_printf(&b, "%stag pinned to %s by winch pin", sep, d->serve);
        sep = "; ";
    }
    if (d->soak_hold) {
        sbuf_printf(&b, "%ssoak: %s is new for this tag, served in %llds; serving the previous %s",
                    sep, d->seen ? d->seen : "?", (long long)((d->soak_left_ms + 999) / 1000),
                    d->serve);
        sep = "; ";
    } else if (d->soak_first) {
        sbuf_printf(&b, "%ssoak: no previous digest for this tag; serving %s at once", sep,
                    d->serve ? d->serve : "?");
        sep = "; ";
    } else if (d->soak_done) {
        sbuf_printf(&b, "%ssoak: %s has soaked; serving it", sep, d->serve ? d->serve : "?");
        sep = "; ";
    }
    if (d->freeze)
        sbuf_printf(&b, "%sfreeze: the cached tag is not revalidated", sep);
}
