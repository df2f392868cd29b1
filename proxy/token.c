/* Bearer tokens for winch's clients (token.h). */
#include "proxy/token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

#define PREFIX "wt1."
#define MAC_LEN 32
#define USER_MAX 256

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding; returns the length written, or 0 when cap is too small. */
static size_t enc(const uint8_t *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        if (o + chars >= cap)
            return 0;
        for (size_t k = 0; k < chars; k++)
            out[o++] = b64url[(v >> (18 - 6 * k)) & 63];
    }
    out[o] = '\0';
    return o;
}

static int dec_char(char ch)
{
    const char *p = ch ? strchr(b64url, ch) : NULL;
    return p ? (int)(p - b64url) : -1;
}

/* Strict base64url without padding; returns the decoded length, or -1. */
static long dec(const char *in, size_t n, uint8_t *out, size_t cap)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = dec_char(in[i]);
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
    /* Leftover bits must be zero: one token, one spelling. */
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;
    return (long)o;
}

static void mac(const token_key_t *key, const char *signed_part, size_t n, uint8_t out[MAC_LEN])
{
    unsigned int len = 0;
    HMAC(EVP_sha256(), key->k, TOKEN_KEY_LEN, (const unsigned char *)signed_part, n, out, &len);
}

int token_key_init(token_key_t *key)
{
    return RAND_bytes(key->k, TOKEN_KEY_LEN) == 1 ? 0 : WE_INVALID;
}

int token_mint(const token_key_t *key, const char *user, int64_t expires_ms, char *out, size_t cap)
{
    char payload[USER_MAX + 32];
    size_t ul = strlen(user);
    if (ul > USER_MAX || strchr(user, '\n') || expires_ms < 0)
        return WE_INVALID;
    int pn = snprintf(payload, sizeof payload, "%s\n%lld", user, (long long)expires_ms);
    if (pn < 0 || (size_t)pn >= sizeof payload || cap < sizeof PREFIX)
        return WE_TOOBIG;
    memcpy(out, PREFIX, sizeof PREFIX);
    size_t o = sizeof PREFIX - 1;
    size_t n = enc((const uint8_t *)payload, (size_t)pn, out + o, cap - o);
    if (!n || o + n + 1 >= cap)
        return WE_TOOBIG;
    o += n;
    uint8_t m[MAC_LEN];
    mac(key, out, o, m);
    out[o++] = '.';
    if (!enc(m, MAC_LEN, out + o, cap - o))
        return WE_TOOBIG;
    return 0;
}

int token_verify(const token_key_t *key, const char *tok, int64_t now_ms, char *user, size_t cap)
{
    size_t n = strnlen(tok, TOKEN_MAX + 1);
    if (n > TOKEN_MAX || strncmp(tok, PREFIX, sizeof PREFIX - 1) != 0)
        return WE_INVALID;
    const char *body = tok + sizeof PREFIX - 1;
    const char *dot = strchr(body, '.');
    if (!dot)
        return WE_INVALID;
    uint8_t got[MAC_LEN + 1], want[MAC_LEN];
    if (dec(dot + 1, strlen(dot + 1), got, sizeof got) != MAC_LEN)
        return WE_INVALID;
    mac(key, tok, (size_t)(dot - tok), want);
    if (CRYPTO_memcmp(got, want, MAC_LEN) != 0)
        return WE_INVALID;
    /* Signed by us: the payload is ours, but parse it as carefully as any input. */
    uint8_t payload[USER_MAX + 32];
    long pn = dec(body, (size_t)(dot - body), payload, sizeof payload - 1);
    if (pn < 2)
        return WE_INVALID;
    payload[pn] = '\0';
    const char *nl = memchr(payload, '\n', (size_t)pn);
    if (!nl)
        return WE_INVALID;
    size_t ul = (size_t)(nl - (const char *)payload);
    long long exp = 0;
    for (const char *p = nl + 1; *p; p++) {
        if (*p < '0' || *p > '9' || exp > (INT64_MAX - 9) / 10)
            return WE_INVALID;
        exp = exp * 10 + (*p - '0');
    }
    if (ul >= cap)
        return WE_INVALID;
    if (exp <= now_ms)
        return WE_NOTFOUND;
    memcpy(user, payload, ul);
    user[ul] = '\0';
    return 0;
}
