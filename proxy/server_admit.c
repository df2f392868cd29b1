/* Who gets in (server.h, server_limits_t, says what the limits mean to a client):
 *
 * - The idle LRU: every connection with nothing to do (fresh from accept, or between requests)
 *   is on one list in the order it became idle, and on its address's list too. At a limit the
 *   oldest idle connection is closed to admit a new one: idle sockets cannot lock the others
 *   out, and a connection that is sending a request or being answered is never the victim.
 * - The per-address table: how many connections each peer address has (an IPv4-mapped IPv6
 *   address counts as its IPv4 address). Open addressing with linear probing over a random
 *   keyed hash (an attacker choosing IPv6 addresses cannot aim them at one chain); an entry
 *   lives while its address has connections, so the table is bounded by max_connections.
 * - The fd budget: one fd per connection, FDS_PER_REQUEST more per request in progress. Idle
 *   connections cost one fd each, so thousands can be held, and a request never starts without
 *   the fds it may need (else 503, after closing idle connections to make room).
 * - Accepting pauses at max_connections when nothing idle can be closed (a connection closing
 *   or going idle resumes it), and when accept(2) runs out of fds (EMFILE, ENFILE: resumed by a
 *   closing connection or after RESUME_AFTER_MS), as nginx does: never a loop around a failing
 *   accept, and each of these events is logged at most once per LOG_INTERVAL_MS.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/server.h"
#include "proxy/server_internal.h"

#define ACCEPTS_PER_WAKEUP 64
#define RESUME_AFTER_MS 250
#define LOG_INTERVAL_MS 60000
#define PEERS_MIN 64
/* Idle connections looked at for one without pending input before the oldest is closed. */
#define IDLE_SCAN 8

struct peer {
    client_t *idle_head, *idle_tail; /* its idle connections, oldest first */
    uint32_t conns;
    uint32_t hash;
    uint8_t family; /* 4, 6, or 0 for anything else (one entry for all of those) */
    uint8_t addr[16];
};

/* ---- Rate-limited log lines ---------------------------------------------------------------- */

/* True when the line may go out now; *more then says how many were held back before it. */
static bool ratelog_due(ratelog_t *r, uint64_t *more)
{
    int64_t now = time_mono_ms();
    if (r->ever && now - r->last_ms < LOG_INTERVAL_MS) {
        r->suppressed++;
        return false;
    }
    r->ever = true;
    r->last_ms = now;
    *more = r->suppressed;
    r->suppressed = 0;
    return true;
}

static const char *more_text(char *buf, size_t cap, uint64_t more)
{
    if (more == 0)
        return "";
    snprintf(buf, cap, " (%llu more since the last such line)", (unsigned long long)more);
    return buf;
}

/* ---- The per-address table ------------------------------------------------------------------ */

static void addr_key(const struct sockaddr_storage *ss, uint8_t *family, uint8_t addr[16])
{
    memset(addr, 0, 16);
    *family = 0;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
            *family = 4;
            memcpy(addr, a6->sin6_addr.s6_addr + 12, 4);
        } else {
            *family = 6;
            memcpy(addr, a6->sin6_addr.s6_addr, 16);
        }
    } else if (ss->ss_family == AF_INET) {
        *family = 4;
        memcpy(addr, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    }
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Keyed with the server's random key: not a MAC, but nothing an attacker sees depends on it. */
static uint32_t addr_hash(const server_t *s, uint8_t family, const uint8_t addr[16])
{
    uint64_t a, b;
    memcpy(&a, addr, 8);
    memcpy(&b, addr + 8, 8);
    uint64_t h = mix64(s->peer_key[0] ^ a ^ family);
    h = mix64(h ^ b ^ s->peer_key[1]);
    return (uint32_t)(h >> 32);
}

/* The slot holding (family, addr), or the empty slot where it would go. */
static uint32_t peer_slot(const server_t *s, uint8_t family, const uint8_t addr[16], uint32_t h)
{
    uint32_t mask = s->peers_cap - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        const peer_t *p = s->peers[i];
        if (!p || (p->hash == h && p->family == family && memcmp(p->addr, addr, 16) == 0))
            return i;
    }
}

static int peers_resize(server_t *s, uint32_t cap)
{
    peer_t **old = s->peers;
    uint32_t old_cap = s->peers_cap;
    peer_t **slots = calloc(cap, sizeof(peer_t *));
    if (!slots)
        return -ENOMEM;
    s->peers = slots;
    s->peers_cap = cap;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i])
            s->peers[peer_slot(s, old[i]->family, old[i]->addr, old[i]->hash)] = old[i];
    free(old);
    return 0;
}

/* The entry of ss's address, created with no connections when absent; NULL without memory. */
static peer_t *peer_get(server_t *s, const struct sockaddr_storage *ss)
{
    uint8_t family, addr[16];
    addr_key(ss, &family, addr);
    uint32_t h = addr_hash(s, family, addr);
    /* At most half full: probe sequences stay short. */
    if ((s->npeers + 1) * 2 > s->peers_cap &&
        peers_resize(s, s->peers_cap ? s->peers_cap * 2 : PEERS_MIN) < 0)
        return NULL;
    uint32_t i = peer_slot(s, family, addr, h);
    if (s->peers[i])
        return s->peers[i];
    peer_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->family = family;
    memcpy(p->addr, addr, 16);
    p->hash = h;
    s->peers[i] = p;
    s->npeers++;
    return p;
}

/* Removes p (no connections left) and frees it; later entries of its probe run move back so
 * that lookups never stop at the hole (backward-shift deletion). */
static void peer_remove(server_t *s, peer_t *p)
{
    uint32_t mask = s->peers_cap - 1;
    uint32_t i = peer_slot(s, p->family, p->addr, p->hash);
    s->peers[i] = NULL;
    for (uint32_t j = (i + 1) & mask; s->peers[j]; j = (j + 1) & mask) {
        uint32_t home = s->peers[j]->hash & mask;
        /* The entry at j may fill the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->peers[i] = s->peers[j];
            s->peers[j] = NULL;
            i = j;
        }
    }
    s->npeers--;
    free(p);
}

/* ---- The idle LRU ----------------------------------------------------------------------------- */

static void resume(server_t *s);

void admit_idle_add(client_t *c)
{
    server_t *s = c->srv;
    if (c->idle_listed || c->state == CS_CLOSING)
        return;
    c->idle_listed = true;
    c->lru_next = NULL;
    c->lru_prev = s->lru_tail;
    if (s->lru_tail)
        s->lru_tail->lru_next = c;
    else
        s->lru_head = c;
    s->lru_tail = c;
    s->nidle++;
    peer_t *p = c->peer;
    if (p) {
        c->plru_next = NULL;
        c->plru_prev = p->idle_tail;
        if (p->idle_tail)
            p->idle_tail->plru_next = c;
        else
            p->idle_head = c;
        p->idle_tail = c;
    }
    /* Something can be closed to admit a waiting connection now. */
    if (s->paused == PAUSE_LIMIT)
        resume(s);
}

void admit_idle_remove(client_t *c)
{
    server_t *s = c->srv;
    if (!c->idle_listed)
        return;
    c->idle_listed = false;
    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        s->lru_head = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        s->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
    s->nidle--;
    peer_t *p = c->peer;
    if (p) {
        if (c->plru_prev)
            c->plru_prev->plru_next = c->plru_next;
        else
            p->idle_head = c->plru_next;
        if (c->plru_next)
            c->plru_next->plru_prev = c->plru_prev;
        else
            p->idle_tail = c->plru_prev;
        c->plru_prev = c->plru_next = NULL;
    }
}

/* ---- The fd budget ---------------------------------------------------------------------------- */

static uint64_t fds_used(const server_t *s)
{
    return s->nclients + (uint64_t)FDS_PER_REQUEST * s->nbudgeted;
}

/* Closes the oldest idle connection; false when there is none. One whose next request has
 * already arrived (not read yet: this poll round reaches it later) is passed over for an idle
 * one among the next few: closing it would cut a request the client just sent. */
static bool close_oldest_idle(server_t *s)
{
    client_t *v = s->lru_head;
    if (!v)
        return false;
    int looked = 0;
    for (client_t *c = v; c && looked < IDLE_SCAN; c = c->lru_next, looked++) {
        if (!conn_input_pending(&c->conn)) {
            v = c;
            break;
        }
    }
    LOG_DEBUG("closing the idle connection of %s (the oldest of %u idle, %u connections, %u "
              "requests in progress) to admit another",
              v->peer_str, s->nidle, s->nclients, s->nbudgeted);
    client_close(v);
    return true;
}

static bool at_limit(const server_t *s)
{
    return s->nclients >= s->plan.max_connections || fds_used(s) + 1 > s->plan.max_fds;
}

/* Room for one more connection, closing idle ones as needed. */
static bool room_for_connection(server_t *s)
{
    bool closed = false;
    while (at_limit(s)) {
        if (!close_oldest_idle(s))
            return false;
        closed = true;
    }
    uint64_t more;
    char mtext[64];
    if (closed && ratelog_due(&s->log_limit, &more))
        LOG_WARN("at the connection limit (%u connections, fd budget %u): closing the oldest idle "
                 "connections to admit new ones%s",
                 s->plan.max_connections, s->plan.max_fds, more_text(mtext, sizeof mtext, more));
    return true;
}

bool admit_request(client_t *c)
{
    server_t *s = c->srv;
    while (fds_used(s) + FDS_PER_REQUEST > s->plan.max_fds) {
        if (!close_oldest_idle(s)) {
            uint64_t more;
            char mtext[64];
            if (ratelog_due(&s->log_busy, &more))
                LOG_WARN("fd budget (%u) spent by requests in progress: answering 503%s",
                         s->plan.max_fds, more_text(mtext, sizeof mtext, more));
            return false;
        }
    }
    c->budgeted = true;
    s->nbudgeted++;
    return true;
}

void admit_request_done(client_t *c)
{
    if (!c->budgeted)
        return;
    c->budgeted = false;
    c->srv->nbudgeted--;
}

void admit_release(client_t *c)
{
    server_t *s = c->srv;
    admit_idle_remove(c);
    admit_request_done(c);
    if (c->peer) {
        if (--c->peer->conns == 0)
            peer_remove(s, c->peer);
        c->peer = NULL;
    }
    /* A slot and an fd are free again. */
    if (s->paused != PAUSE_NONE)
        resume(s);
}

/* ---- Accepting --------------------------------------------------------------------------------- */

void admit_poll_listeners(server_t *s, bool on)
{
    for (int i = 0; i < s->nlisteners; i++) {
        if (s->listen_fd[i] < 0)
            continue;
        if (on)
            uv_poll_start(&s->listen_poll[i], UV_READABLE, admit_on_listen_ready);
        else
            uv_poll_stop(&s->listen_poll[i]);
    }
    s->accepting = on && s->nlisteners > 0;
}

static void on_resume_timer(uv_timer_t *t)
{
    resume(t->data);
}

static void resume(server_t *s)
{
    if (s->shutting_down)
        return;
    s->paused = PAUSE_NONE;
    if (s->resume_timer_open)
        uv_timer_stop(&s->resume_timer);
    if (!s->accepting)
        admit_poll_listeners(s, true);
}

static void pause_accepting(server_t *s, enum accept_pause why)
{
    admit_poll_listeners(s, false);
    s->paused = why;
    if (why != PAUSE_FDS)
        return;
    if (!s->resume_timer_open) {
        uv_timer_init(s->loop, &s->resume_timer);
        s->resume_timer.data = s;
        s->resume_timer_open = true;
    }
    uv_timer_start(&s->resume_timer, on_resume_timer, RESUME_AFTER_MS, 0);
}

/* accept(2) failed with err: go on (true) or stop this round (false). */
static bool accept_failed(server_t *s, int err)
{
    uint64_t more;
    char mtext[64];
    switch (err) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
        return false;
    case EINTR:
    case ECONNABORTED: /* the client gave up while in the backlog */
    case EPROTO:
    case EPERM: /* a firewall rule */
        return true;
    default:
        /* Out of fds (EMFILE, ENFILE) or kernel memory, or something unexpected: trying again
         * at once would fail again, as fast as the loop turns. */
        pause_accepting(s, PAUSE_FDS);
        if (ratelog_due(&s->log_fds, &more))
            LOG_WARN("accept: %s (fd limit %llu, %u connections): accepting paused until a "
                     "connection closes or %d ms pass%s",
                     strerror(err), (unsigned long long)s->plan.nofile, s->nclients,
                     RESUME_AFTER_MS, more_text(mtext, sizeof mtext, more));
        return false;
    }
}

/* At max_connections_per_client: closes p's oldest idle connection; false when it has none
 * (the new connection is then refused). */
static bool room_for_peer(server_t *s, peer_t *p, const char *who)
{
    if (p->idle_head) {
        LOG_DEBUG("closing an idle connection of %s: at max_connections_per_client", who);
        client_close(p->idle_head);
        return true;
    }
    uint64_t more;
    char mtext[64];
    if (ratelog_due(&s->log_refused, &more))
        LOG_WARN("%s has max_connections_per_client (%u) connections, none idle: refusing "
                 "another%s",
                 who, s->limits.max_connections_per_client, more_text(mtext, sizeof mtext, more));
    return false;
}

/* The text of addr, for log lines. */
static void addr_text(const struct sockaddr_storage *addr, char *out, size_t cap)
{
    const void *a = addr->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)addr)->sin_addr;
    if (!inet_ntop(addr->ss_family, a, out, (socklen_t)cap))
        snprintf(out, cap, "-");
}

/* An accepted fd (taken): its address's limit first (so that a refused connection never costs
 * another client its idle connection), then the global one. */
static void admit_one(server_t *s, int fd, const struct sockaddr_storage *addr, int li)
{
    SSL_CTX *tls = s->listen_tls[li];
    peer_t *p = NULL;
    uint32_t per = s->limits.max_connections_per_client;
    if (per) {
        p = peer_get(s, addr);
        if (p && p->conns >= per) {
            char who[INET6_ADDRSTRLEN];
            addr_text(addr, who, sizeof who);
            if (!room_for_peer(s, p, who)) {
                close(fd);
                return;
            }
            p = peer_get(s, addr); /* closing may have freed the entry */
        }
        if (!p) {
            close(fd);
            return;
        }
    }
    bool room = room_for_connection(s);
    /* The idle connections closed to make room may have held p's last count, and p went with
     * it: look the address up again (a new entry when so). */
    if (per && (p = peer_get(s, addr)) == NULL) {
        close(fd);
        return;
    }
    client_t *c = NULL;
    if (room)
        c = client_accept(s, fd, addr, p, tls); /* closes fd on failure */
    else
        close(fd); /* not reached: at_limit was checked with something idle to close */
    if (c)
        c->listener = (uint8_t)li;
    if (p) {
        if (c)
            p->conns++;
        else if (p->conns == 0)
            peer_remove(s, p);
    }
}

void admit_on_listen_ready(uv_poll_t *h, int status, int events)
{
    server_t *s = h->data;
    int li = (int)(h - s->listen_poll);
    (void)events;
    if (status < 0 || s->shutting_down)
        return;
    for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        if (at_limit(s) && !s->lru_head) {
            /* Nothing idle to close: further connections wait in the kernel's backlog until a
             * connection closes or goes idle. */
            pause_accepting(s, PAUSE_LIMIT);
            uint64_t more;
            char mtext[64];
            if (ratelog_due(&s->log_limit, &more))
                LOG_WARN("at the connection limit (%u connections, fd budget %u), none idle: "
                         "accepting paused until one closes%s",
                         s->plan.max_connections, s->plan.max_fds,
                         more_text(mtext, sizeof mtext, more));
            return;
        }
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        /* accept4 is a GNU extension; two fcntl calls per connection cost nothing here. */
        int fd = accept(s->listen_fd[li], (struct sockaddr *)&peer, &pl);
        if (fd < 0) {
            if (accept_failed(s, errno))
                continue;
            return;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        admit_one(s, fd, &peer, li);
    }
}

/* ---- Plan, lifecycle ---------------------------------------------------------------------------- */

int server_raise_nofile(uint64_t *was, uint64_t *now)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (was)
        *was = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return -errno;
    }
    if (now)
        *now = rl.rlim_cur;
    return 0;
}

void admit_plan(server_t *s)
{
    struct rlimit rl;
    uint64_t nofile = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        nofile = rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : rl.rlim_cur;
    uint64_t budget = s->limits.max_fds;
    if (!budget) {
        uint64_t reserve = s->limits.reserve_fds;
        if (reserve > nofile / 2)
            reserve = nofile / 2;
        budget = nofile - reserve;
    }
    if (budget > UINT32_MAX)
        budget = UINT32_MAX;
    if (budget < 1)
        budget = 1;
    s->plan.nofile = nofile;
    s->plan.max_fds = (uint32_t)budget;
    s->plan.max_connections = s->limits.max_connections < budget ? s->limits.max_connections
                                                                 : (uint32_t)budget;
}

void admit_init(server_t *s)
{
    if (RAND_bytes((unsigned char *)s->peer_key, sizeof s->peer_key) != 1) {
        /* No entropy source: a predictable key only makes collisions easier to aim. */
        s->peer_key[0] = (uint64_t)time_wall_ms() ^ (uint64_t)(uintptr_t)s;
        s->peer_key[1] = mix64(s->peer_key[0]);
    }
    admit_plan(s);
}

void admit_shutdown(server_t *s)
{
    s->paused = PAUSE_NONE;
    if (s->resume_timer_open) {
        uv_close((uv_handle_t *)&s->resume_timer, NULL);
        s->resume_timer_open = false;
    }
}

void admit_free(server_t *s)
{
    for (uint32_t i = 0; i < s->peers_cap; i++)
        free(s->peers[i]);
    free(s->peers);
    s->peers = NULL;
    s->peers_cap = s->npeers = 0;
}
