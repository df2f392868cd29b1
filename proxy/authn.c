/* Password checks (authn.h): the verification cache, the failure budget per client address,
 * the bounded queue of bcrypt jobs on the threadpool, and the htpasswd reload.
 *
 * A check's life: authn_check -> cache hit (done) | budget spent (THROTTLED) | join the flight
 * of identical credentials (PENDING) | new flight + job: queued, then run on the threadpool
 * when one of max_running slots is free -> done(): the result is cached (success only) or
 * charged to the address's budget (failure), and the flight lands on every waiter.
 *
 * Tables (verification cache, addresses) are fixed arrays with short linear probes; a full
 * probe window evicts its least valuable entry. Their indexes come from keyed hashes (the
 * cache's keys are HMACs already), so nobody can aim collisions at one slot.
 */
#include "proxy/authn.h"

#include <crypt.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/htpasswd.h"

#define KEY_LEN 32
#define CACHE_SLOTS 4096 /* successes remembered at once */
#define PEER_SLOTS 4096  /* client addresses tracked at once */
#define PROBE 8
/* A failed pair is remembered this long at most: clients retry the same wrong password a few
 * times in a row (containerd five times a pull), and a repeat is no new guess, so it costs no
 * bcrypt and no failure budget. */
#define FAILURE_TTL_MS 30000

typedef struct vc_slot {
    uint8_t key[KEY_LEN];
    int64_t expires_ms; /* 0: empty */
    uint64_t gen;       /* htpasswd generation it was verified against */
    bool ok;            /* a success; else a failure, remembered for a shorter time */
} vc_slot_t;

typedef struct peer_key {
    uint8_t b[16]; /* IPv4 in the first 4 bytes, IPv6 by its /64 */
    uint8_t family;
} peer_key_t;

typedef struct peer_slot {
    peer_key_t k;
    bool used;
    int64_t tat_ms;   /* failure budget (GCRA): spent while tat - now > window - interval */
    uint32_t pending; /* checks of this address queued or running */
} peer_slot_t;

typedef struct job job_t;
struct job {
    uv_work_t work;
    authn_t *a;
    flight_t *fl;
    job_t *next; /* queue */
    bool queued;
    bool real_user; /* else a decoy check of an unknown user: the result is discarded */
    bool ok;
    uint64_t gen;
    int64_t started_ms;
    peer_key_t peer;
    uint8_t key[KEY_LEN];
    char hash[HTPASSWD_HASH_LEN + 1];
    char pass[AUTHN_PASS_MAX + 1];
};

struct authn {
    uv_loop_t *loop;
    authn_opts_t o;
    uint8_t hmac_key[KEY_LEN];
    uint64_t peer_seed;
    htpasswd_t *users;
    uint64_t gen; /* bumped by every reload */
    flight_table_t *flights;
    job_t *qhead, *qtail;
    unsigned queued, running;
    bool shut;
    vc_slot_t cache[CACHE_SLOTS];
    peer_slot_t peers[PEER_SLOTS];
    authn_stats_t stats;
    /* Reload. */
    uv_timer_t timer;
    bool timer_open;
    uv_fs_t stat_req;
    bool stat_busy;
    uv_work_t load_work;
    bool load_busy;
    bool load_forced;   /* authn_reload: load even if the metadata looks unchanged */
    htpasswd_t *loaded; /* the worker's result */
    char load_err[512];
    struct stat seen; /* metadata of the file as last read */
};

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ---- The failure budget per address --------------------------------------------------- */

static peer_key_t peer_key_of(const struct sockaddr_storage *ss)
{
    peer_key_t k = {0};
    if (ss && ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)ss;
        memcpy(k.b, &s4->sin_addr, 4);
        k.family = 4;
    } else if (ss && ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)ss;
        const uint8_t *a = s6->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            memcpy(k.b, a + 12, 4);
            k.family = 4;
        } else {
            memcpy(k.b, a, 8); /* one /64 is one client: it owns all of it */
            k.family = 6;
        }
    }
    return k;
}

static uint32_t peer_hash(const authn_t *a, const peer_key_t *k)
{
    uint64_t h = a->peer_seed ^ k->family;
    for (size_t i = 0; i < sizeof k->b; i++)
        h = (h ^ k->b[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

static bool peer_eq(const peer_key_t *x, const peer_key_t *y)
{
    return x->family == y->family && memcmp(x->b, y->b, sizeof x->b) == 0;
}

static int64_t interval_ms(const authn_t *a)
{
    int64_t t = (int64_t)a->o.failure_window_ms / a->o.max_failures;
    return t > 0 ? t : 1;
}

/* An entry without debt and without pending checks carries nothing: its slot is free. */
static bool peer_idle(const authn_t *a, const peer_slot_t *p, int64_t now)
{
    (void)a;
    return !p->used || (p->tat_ms <= now && p->pending == 0);
}

/* The slot of k; create: claim one (evicting the probe window's least indebted idle entry, or
 * failing that the least indebted one). NULL when absent and not created. */
static peer_slot_t *peer_find(authn_t *a, const peer_key_t *k, bool create)
{
    int64_t now = time_mono_ms();
    uint32_t h = peer_hash(a, k);
    peer_slot_t *victim = NULL;
    for (unsigned i = 0; i < PROBE; i++) {
        peer_slot_t *p = &a->peers[(h + i) % PEER_SLOTS];
        if (p->used && peer_eq(&p->k, k))
            return p;
        if (!victim || (peer_idle(a, p, now) && !peer_idle(a, victim, now)) ||
            (peer_idle(a, p, now) == peer_idle(a, victim, now) && p->tat_ms < victim->tat_ms))
            victim = p;
    }
    if (!create)
        return NULL;
    *victim = (peer_slot_t){.k = *k, .used = true, .tat_ms = now};
    return victim;
}

/* 0 when the address may start a check; else the seconds until it may. */
static uint32_t peer_wait_s(const authn_t *a, const peer_slot_t *p)
{
    if (!p)
        return 0;
    int64_t now = time_mono_ms();
    int64_t allowed = (int64_t)a->o.failure_window_ms - interval_ms(a);
    int64_t debt = p->tat_ms - now;
    if (debt <= allowed)
        return 0;
    return (uint32_t)((debt - allowed + 999) / 1000);
}

static void peer_charge(authn_t *a, const peer_key_t *k)
{
    peer_slot_t *p = peer_find(a, k, true);
    int64_t now = time_mono_ms();
    if (p->tat_ms < now)
        p->tat_ms = now;
    p->tat_ms += interval_ms(a);
}

/* ---- The verification cache ----------------------------------------------------------- */

static void cache_key(const authn_t *a, const char *user, size_t ulen, const char *pass,
                      size_t plen, uint8_t out[KEY_LEN])
{
    /* user \0 pass: user names hold no NUL, so the split is unambiguous. */
    unsigned int n = 0;
    uint8_t buf[AUTHN_USER_MAX + 1 + AUTHN_PASS_MAX];
    memcpy(buf, user, ulen);
    buf[ulen] = '\0';
    memcpy(buf + ulen + 1, pass, plen);
    HMAC(EVP_sha256(), a->hmac_key, KEY_LEN, buf, ulen + 1 + plen, out, &n);
    wipe(buf, sizeof buf);
}

static vc_slot_t *cache_find(authn_t *a, const uint8_t key[KEY_LEN], bool create)
{
    uint32_t h;
    memcpy(&h, key, sizeof h);
    int64_t now = time_mono_ms();
    vc_slot_t *victim = NULL;
    for (unsigned i = 0; i < PROBE; i++) {
        vc_slot_t *s = &a->cache[(h + i) % CACHE_SLOTS];
        if (s->expires_ms > now && s->gen == a->gen && CRYPTO_memcmp(s->key, key, KEY_LEN) == 0)
            return s;
        if (!victim || s->expires_ms < victim->expires_ms)
            victim = s;
    }
    return create ? victim : NULL;
}

/* ---- Jobs ----------------------------------------------------------------------------- */

static void job_work(uv_work_t *w)
{
    job_t *j = container_of(w, job_t, work);
    struct crypt_data *cd = calloc(1, sizeof *cd);
    if (!cd) {
        j->ok = false;
        return;
    }
    const char *out = crypt_rn(j->pass, j->hash, cd, (int)sizeof *cd);
    j->ok = out && strlen(out) == HTPASSWD_HASH_LEN &&
            CRYPTO_memcmp(out, j->hash, HTPASSWD_HASH_LEN) == 0;
    wipe(cd, sizeof *cd);
    free(cd);
}

static void job_free(job_t *j)
{
    wipe(j->pass, sizeof j->pass);
    free(j);
}

static void pump(authn_t *a);

/* The result every waiter of a flight is told. */
typedef struct landing {
    enum authn_result r;
} landing_t;

static void job_done(uv_work_t *w, int status)
{
    job_t *j = container_of(w, job_t, work);
    authn_t *a = j->a;
    a->running--;
    bool ok = status == 0 && j->real_user && j->ok;
    peer_slot_t *p = peer_find(a, &j->peer, false);
    if (p && p->pending)
        p->pending--;
    if (a->o.cache_ttl_ms && j->gen == a->gen && !a->shut) {
        uint32_t ttl = ok || a->o.cache_ttl_ms < FAILURE_TTL_MS ? a->o.cache_ttl_ms
                                                                : FAILURE_TTL_MS;
        vc_slot_t *s = cache_find(a, j->key, true);
        memcpy(s->key, j->key, KEY_LEN);
        s->expires_ms = time_mono_ms() + ttl;
        s->gen = j->gen;
        s->ok = ok;
    }
    if (!ok) {
        a->stats.failures++;
        peer_charge(a, &j->peer);
    }
    LOG_DEBUG("password check (bcrypt): %s in %lld ms", ok ? "ok" : "failed",
              (long long)(time_mono_ms() - j->started_ms));
    landing_t l = {ok ? AUTHN_OK : AUTHN_BAD};
    flight_land(j->fl, &l);
    job_free(j);
    pump(a);
}

static void pump(authn_t *a)
{
    while (!a->shut && a->running < a->o.max_running && a->qhead) {
        job_t *j = a->qhead;
        a->qhead = j->next;
        if (!a->qhead)
            a->qtail = NULL;
        a->queued--;
        j->queued = false;
        a->running++;
        a->stats.bcrypt_runs++;
        j->started_ms = time_mono_ms();
        /* uv_queue_work fails only for a NULL work callback. */
        uv_queue_work(a->loop, &j->work, job_work, job_done);
    }
}

static void queue_remove(authn_t *a, job_t *j)
{
    job_t **pp = &a->qhead;
    job_t *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = j->next;
    if (a->qtail == j)
        a->qtail = prev;
    a->queued--;
    j->queued = false;
}

static void on_land(flight_waiter_t *fw, void *result)
{
    authn_wait_t *w = container_of(fw, authn_wait_t, fw);
    const landing_t *l = result;
    w->cb(w, l->r, 0);
}

void authn_cancel(authn_wait_t *w)
{
    flight_t *fl = flight_leave(&w->fw);
    if (!fl)
        return;
    job_t *j = flight_op(fl);
    if (j && j->queued) {
        /* Nobody waits and no thread has it: forget it. */
        authn_t *a = w->a;
        queue_remove(a, j);
        peer_slot_t *p = peer_find(a, &j->peer, false);
        if (p && p->pending)
            p->pending--;
        flight_drop(fl);
        job_free(j);
    }
    /* A running check finishes; its success is cached for the next request. */
}

/* Starts a check for credentials nobody is checking yet. Returns AUTHN_PENDING, or
 * AUTHN_BUSY / AUTHN_THROTTLED when a bound is reached. */
static enum authn_result start_job(authn_t *a, flight_t *fl, const uint8_t key[KEY_LEN],
                                   const char *hash, bool real_user, const char *pass, size_t plen,
                                   const peer_key_t *pk)
{
    if (a->queued + a->running >= a->o.max_queued + a->o.max_running) {
        a->stats.busy++;
        return AUTHN_BUSY;
    }
    peer_slot_t *p = peer_find(a, pk, true);
    if (p->pending >= a->o.max_per_peer) {
        a->stats.throttled++;
        return AUTHN_THROTTLED;
    }
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        a->stats.busy++;
        return AUTHN_BUSY;
    }
    j->a = a;
    j->fl = fl;
    j->real_user = real_user;
    j->gen = a->gen;
    j->peer = *pk;
    memcpy(j->key, key, KEY_LEN);
    memcpy(j->hash, hash, HTPASSWD_HASH_LEN + 1);
    memcpy(j->pass, pass, plen);
    j->pass[plen] = '\0';
    p->pending++;
    flight_set_op(fl, j);
    j->queued = true;
    if (a->qtail)
        a->qtail->next = j;
    else
        a->qhead = j;
    a->qtail = j;
    a->queued++;
    pump(a);
    return AUTHN_PENDING;
}

enum authn_result authn_check(authn_t *a, const char *user, size_t ulen, const char *pass,
                              size_t plen, const struct sockaddr_storage *peer, authn_wait_t *w,
                              authn_cb cb, uint32_t *retry_after_s)
{
    *retry_after_s = 0;
    if (ulen == 0 || ulen > AUTHN_USER_MAX || plen > AUTHN_PASS_MAX || memchr(pass, '\0', plen) ||
        memchr(user, '\0', ulen))
        return AUTHN_BAD;
    char name[AUTHN_USER_MAX + 1];
    memcpy(name, user, ulen);
    name[ulen] = '\0';
    const char *hash = htpasswd_hash(a->users, name);
    bool real_user = hash != NULL;
    if (!hash)
        hash = htpasswd_any_hash(a->users);
    if (!hash || a->shut)
        return AUTHN_BAD; /* no users at all: nothing to time */
    uint8_t key[KEY_LEN];
    cache_key(a, user, ulen, pass, plen, key);
    const vc_slot_t *hit = a->o.cache_ttl_ms ? cache_find(a, key, false) : NULL;
    if (hit && hit->ok && real_user) {
        a->stats.cache_hits++;
        return AUTHN_OK;
    }
    if (hit && !hit->ok) {
        a->stats.repeats++;
        return AUTHN_BAD;
    }
    peer_key_t pk = peer_key_of(peer);
    uint32_t wait_s = peer_wait_s(a, peer_find(a, &pk, false));
    if (wait_s) {
        a->stats.throttled++;
        *retry_after_s = wait_s;
        return AUTHN_THROTTLED;
    }
    char hex[2 * KEY_LEN + 1];
    for (size_t i = 0; i < KEY_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    *w = (authn_wait_t){.cb = cb, .a = a};
    flight_t *fl = NULL;
    bool created = false;
    if (flight_join(a->flights, hex, &w->fw, on_land, &fl, &created) < 0) {
        a->stats.busy++;
        *retry_after_s = 1;
        return AUTHN_BUSY;
    }
    if (!created) {
        a->stats.joined++;
        return AUTHN_PENDING;
    }
    enum authn_result r = start_job(a, fl, key, hash, real_user, pass, plen, &pk);
    if (r != AUTHN_PENDING) {
        flight_t *alone = flight_leave(&w->fw); /* the only waiter: the flight comes back */
        if (alone)
            flight_drop(alone);
        *retry_after_s = 1;
    }
    return r;
}

/* ---- Reload --------------------------------------------------------------------------- */

static bool same_file(const struct stat *x, const uv_stat_t *y)
{
    return (uint64_t)x->st_ino == y->st_ino && (uint64_t)x->st_size == y->st_size &&
           x->st_mtim.tv_sec == y->st_mtim.tv_sec && x->st_mtim.tv_nsec == y->st_mtim.tv_nsec &&
           x->st_ctim.tv_sec == y->st_ctim.tv_sec && x->st_ctim.tv_nsec == y->st_ctim.tv_nsec;
}

static void start_load(authn_t *a);

static void load_work(uv_work_t *w)
{
    authn_t *a = container_of(w, authn_t, load_work);
    struct stat st;
    a->load_err[0] = '\0';
    /* The metadata first: a write racing the read is seen as another change next time. */
    if (stat(a->o.htpasswd_path, &st) == 0)
        a->seen = st;
    htpasswd_load(&a->loaded, a->o.htpasswd_path, a->load_err, sizeof a->load_err);
}

static void load_done(uv_work_t *w, int status)
{
    authn_t *a = container_of(w, authn_t, load_work);
    a->load_busy = false;
    if (status != 0 || a->shut || !a->loaded) {
        if (a->load_err[0] && !a->shut)
            LOG_ERROR("htpasswd not reloaded, the previous users stay: %s", a->load_err);
        htpasswd_free(a->loaded);
        a->loaded = NULL;
        if (a->load_forced)
            start_load(a);
        return;
    }
    htpasswd_free(a->users);
    a->users = a->loaded;
    a->loaded = NULL;
    a->gen++; /* every cached success was checked against the old file */
    a->stats.reloads++;
    LOG_INFO("htpasswd reloaded: %zu users", htpasswd_count(a->users));
    if (a->load_forced)
        start_load(a);
}

static void start_load(authn_t *a)
{
    if (a->shut)
        return;
    if (a->load_busy || a->stat_busy) {
        /* Either one touches a->seen on its own: load once they are done. */
        a->load_forced = true;
        return;
    }
    a->load_busy = true;
    a->load_forced = false;
    uv_queue_work(a->loop, &a->load_work, load_work, load_done);
}

static void on_stat(uv_fs_t *req)
{
    authn_t *a = container_of(req, authn_t, stat_req);
    a->stat_busy = false;
    bool changed = req->result == 0 && !same_file(&a->seen, &req->statbuf);
    if (req->result < 0 && !a->shut)
        LOG_DEBUG("htpasswd: stat failed: %s", err_str((int)req->result));
    uv_fs_req_cleanup(req);
    if (changed || a->load_forced)
        start_load(a);
}

static void on_timer(uv_timer_t *t)
{
    authn_t *a = t->data;
    if (a->stat_busy || a->load_busy || a->shut)
        return;
    if (uv_fs_stat(a->loop, &a->stat_req, a->o.htpasswd_path, on_stat) == 0)
        a->stat_busy = true;
}

void authn_reload(authn_t *a)
{
    a->load_forced = true;
    start_load(a);
}

/* ---- Lifecycle ------------------------------------------------------------------------ */

static unsigned default_running(void)
{
    unsigned n = uv_available_parallelism() / 2;
    return n < 1 ? 1 : n > 4 ? 4 : n;
}

int authn_create(authn_t **out, const authn_opts_t *o, char *err, size_t errlen)
{
    *out = NULL;
    authn_t *a = calloc(1, sizeof *a);
    int rc = -ENOMEM;
    if (!a || flight_table_create(&a->flights) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    a->loop = o->loop;
    a->o = *o;
    if (!a->o.max_failures)
        a->o.max_failures = 1;
    if (!a->o.max_running)
        a->o.max_running = default_running();
    if (!a->o.max_queued)
        a->o.max_queued = 1024;
    if (!a->o.max_per_peer)
        a->o.max_per_peer = 64;
    if (RAND_bytes(a->hmac_key, KEY_LEN) != 1 ||
        RAND_bytes((unsigned char *)&a->peer_seed, sizeof a->peer_seed) != 1) {
        snprintf(err, errlen, "cannot draw a random key");
        rc = WE_INVALID;
        goto fail;
    }
    if (stat(o->htpasswd_path, &a->seen) < 0)
        memset(&a->seen, 0, sizeof a->seen);
    if ((rc = htpasswd_load(&a->users, o->htpasswd_path, err, errlen)) < 0)
        goto fail;
    if (o->reload_check_ms) {
        uv_timer_init(a->loop, &a->timer);
        a->timer.data = a;
        a->timer_open = true;
        uv_timer_start(&a->timer, on_timer, o->reload_check_ms, o->reload_check_ms);
        uv_unref((uv_handle_t *)&a->timer); /* never keeps the loop alive by itself */
    }
    *out = a;
    return 0;
fail:
    authn_free(a);
    return rc;
}

void authn_shutdown(authn_t *a)
{
    if (!a || a->shut)
        return;
    a->shut = true;
    if (a->timer_open) {
        a->timer_open = false;
        uv_close((uv_handle_t *)&a->timer, NULL);
    }
}

void authn_free(authn_t *a)
{
    if (!a)
        return;
    /* Jobs still queued have no thread; their waiters are gone (the server closed every
     * connection before the loop drained). */
    while (a->qhead) {
        job_t *j = a->qhead;
        a->qhead = j->next;
        job_free(j);
    }
    if (a->flights && flight_table_count(a->flights))
        LOG_ERROR("%zu password checks still waited for at exit", flight_table_count(a->flights));
    flight_table_free(a->flights);
    htpasswd_free(a->users);
    htpasswd_free(a->loaded);
    wipe(a->hmac_key, sizeof a->hmac_key);
    wipe(a->cache, sizeof a->cache);
    free(a);
}

bool authn_has_user(const authn_t *a, const char *user)
{
    return htpasswd_hash(a->users, user) != NULL;
}

size_t authn_user_count(const authn_t *a)
{
    return htpasswd_count(a->users);
}

void authn_get_stats(const authn_t *a, authn_stats_t *out)
{
    *out = a->stats;
}

/* ---- HTTP Basic ----------------------------------------------------------------------- */

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Strict base64 (RFC 4648 alphabet, '=' padding optional). Returns the decoded length, or -1. */
static long b64_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    while (n > 0 && s[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (long)o;
}

int authn_basic_parse(const char *value, char *user, size_t user_cap, size_t *ulen, char *pass,
                      size_t pass_cap, size_t *plen)
{
    while (*value == ' ' || *value == '\t')
        value++;
    if (strncasecmp(value, "basic", 5) != 0 ||
        (value[5] != ' ' && value[5] != '\t' && value[5] != '\0'))
        return 1;
    const char *p = value + 5;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    uint8_t buf[AUTHN_USER_MAX + 1 + AUTHN_PASS_MAX] = {0}; /* zeroed: plain to the analyser */
    if (n == 0 || n > (sizeof buf / 3 + 1) * 4)
        return WE_INVALID;
    long len = b64_decode(p, n, buf, sizeof buf);
    int rc = WE_INVALID;
    const uint8_t *colon = len > 0 ? memchr(buf, ':', (size_t)len) : NULL;
    if (!colon)
        goto out;
    size_t u = (size_t)(colon - buf), pw = (size_t)len - u - 1;
    if (u > AUTHN_USER_MAX || u >= user_cap || pw > AUTHN_PASS_MAX || pw >= pass_cap ||
        memchr(colon + 1, '\0', pw))
        goto out;
    for (size_t i = 0; i < u; i++)
        if (buf[i] < 0x20 || buf[i] == 0x7f)
            goto out;
    memcpy(user, buf, u);
    user[u] = '\0';
    memcpy(pass, colon + 1, pw);
    pass[pw] = '\0';
    *ulen = u;
    *plen = pw;
    rc = 0;
out:
    wipe(buf, sizeof buf);
    return rc;
}
