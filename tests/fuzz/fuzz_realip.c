/* The client behind trusted proxies (proxy/realip.h): X-Forwarded-For lines as an attacker
 * writes them. The first byte picks the socket's peer (trusted or not); the rest is split at
 * '\n' into header lines. Properties: an untrusted peer is the client whatever the lines say;
 * the client found is an IPv4 or IPv6 address that prints and parses back to itself; a walk
 * stopped by garbage ends on a trusted address; every element the parser accepts round-trips. */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "fuzz.h"
#include "proxy/realip.h"

static const config_cidr_t trusted[] = {
    {.v6 = false, .addr = {127, 0, 0, 1}, .prefix = 32},
    {.v6 = false, .addr = {10}, .prefix = 8},
    {.v6 = true, .addr = {0xfd}, .prefix = 8},
};
#define NTRUSTED (sizeof trusted / sizeof trusted[0])

static struct sockaddr_storage peer_of(uint8_t b)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    switch (b % 4) {
    case 0: /* 127.0.0.1, trusted */
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(0x7f000001);
        break;
    case 1: /* 192.0.2.1, not */
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(0xc0000201);
        break;
    case 2: /* fd00::1, trusted */
        in6->sin6_family = AF_INET6;
        in6->sin6_addr.s6_addr[0] = 0xfd;
        in6->sin6_addr.s6_addr[15] = 1;
        break;
    default: /* ::ffff:10.1.2.3, trusted (mapped) */
        in6->sin6_family = AF_INET6;
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        in6->sin6_addr.s6_addr[12] = 10;
        in6->sin6_addr.s6_addr[13] = 1;
        in6->sin6_addr.s6_addr[14] = 2;
        in6->sin6_addr.s6_addr[15] = 3;
        break;
    }
    return ss;
}

static void check_prints_back(const struct sockaddr_storage *a)
{
    char buf[REALIP_STR_MAX];
    struct sockaddr_storage back;
    FUZZ_CHECK(a->ss_family == AF_INET || a->ss_family == AF_INET6);
    realip_format(a, buf, sizeof buf);
    FUZZ_CHECK(realip_parse(buf, strlen(buf), &back));
    char again[REALIP_STR_MAX];
    FUZZ_CHECK(strcmp(realip_format(&back, again, sizeof again), buf) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct sockaddr_storage peer = peer_of(data[0]), out;
    char *s = fuzz_cstr(data + 1, size - 1);
    const char *lines[REALIP_MAX_LINES];
    size_t n = 0;
    for (char *p = s; n < REALIP_MAX_LINES;) {
        lines[n++] = p;
        char *nl = strchr(p, '\n');
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    bool peer_trusted = realip_in(trusted, NTRUSTED, &peer);
    enum realip_how how = realip_client(trusted, NTRUSTED, &peer, lines, n, &out);
    if (!peer_trusted) {
        FUZZ_CHECK(how == REALIP_PEER);
        FUZZ_CHECK(memcmp(&out, &peer, sizeof peer) == 0);
    }
    if (how == REALIP_PEER)
        FUZZ_CHECK(memcmp(&out, &peer, sizeof peer) == 0);
    if (how == REALIP_GARBAGE)
        FUZZ_CHECK(realip_in(trusted, NTRUSTED, &out));
    check_prints_back(&out);
    /* The element grammar alone, on the first line. */
    struct sockaddr_storage one;
    if (realip_parse(lines[0], strlen(lines[0]), &one))
        check_prints_back(&one);
    free(s);
    return 0;
}
