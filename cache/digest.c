/* Incremental SHA-256/512 over OpenSSL's EVP interface. OpenSSL's error queue never leaves this
 * file: failures are logged, the queue cleared, and a plain error code returned. */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "common/err.h"
#include "common/log.h"

struct digester {
    EVP_MD_CTX *ctx;
    enum ref_alg alg;
    bool failed;    /* an update failed: final reports it instead of a wrong hash */
    bool finalized; /* the context can not take more data */
};

/* OpenSSL 3 fetches an implementation on every EVP_sha256() init unless the caller fetches
 * once; fills and verifications are frequent enough to keep the fetched methods. */
static uv_once_t md_once = UV_ONCE_INIT;
static EVP_MD *md_sha256, *md_sha512;

static void md_fetch(void)
{
    md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    md_sha512 = EVP_MD_fetch(NULL, "SHA512", NULL);
    if (!md_sha256 || !md_sha512) {
        LOG_ERROR("digest: OpenSSL has no SHA-256/SHA-512 implementation");
        ERR_clear_error();
    }
}

static const EVP_MD *md_for(enum ref_alg alg)
{
    uv_once(&md_once, md_fetch);
    switch (alg) {
    case REF_ALG_SHA256:
        return md_sha256;
    case REF_ALG_SHA512:
        return md_sha512;
    }
    return NULL;
}

static int openssl_fail(const char *what)
{
    unsigned long e = ERR_get_error();
    char msg[256];
    ERR_error_string_n(e, msg, sizeof msg);
    LOG_ERROR("digest: %s failed: %s", what, msg);
    ERR_clear_error();
    return -EIO;
}

static void hex_encode(const unsigned char *raw, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Formats "alg:hex" into out (REF_DIGEST_MAX + 1 bytes). */
static void format_digest(enum ref_alg alg, const unsigned char *raw, size_t n, char *out)
{
    const char *name = ref_alg_name(alg);
    size_t nl = strlen(name);
    memcpy(out, name, nl);
    out[nl] = ':';
    hex_encode(raw, n, out + nl + 1);
}

int digester_new(digester_t **out, enum ref_alg alg)
{
    int rc;
    digester_t *d = NULL;
    const EVP_MD *md = md_for(alg);
    if (!md)
        return -ENOTSUP;
    d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->alg = alg;
    d->ctx = EVP_MD_CTX_new();
    if (!d->ctx) {
        rc = -ENOMEM;
        goto fail;
    }
    if (EVP_DigestInit_ex(d->ctx, md, NULL) != 1) {
        rc = openssl_fail("EVP_DigestInit_ex");
        goto fail;
    }
    *out = d;
    return 0;
fail:
    digester_free(d);
    return rc;
}

void digester_update(digester_t *d, const void *data, size_t len)
{
    if (d->failed || d->finalized || len == 0)
        return;
    if (EVP_DigestUpdate(d->ctx, data, len) != 1) {
        openssl_fail("EVP_DigestUpdate");
        d->failed = true;
    }
}

int digester_final(digester_t *d, char out[REF_DIGEST_MAX + 1])
{
    unsigned char raw[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (d->failed)
        return -EIO;
    if (d->finalized)
        return -EINVAL;
    d->finalized = true;
    if (EVP_DigestFinal_ex(d->ctx, raw, &n) != 1)
        return openssl_fail("EVP_DigestFinal_ex");
    if (n != ref_alg_size(d->alg))
        return -EIO;
    format_digest(d->alg, raw, n, out);
    return 0;
}

void digester_free(digester_t *d)
{
    if (!d)
        return;
    EVP_MD_CTX_free(d->ctx);
    free(d);
}

int digest_verify(const char *digest, const void *bytes, size_t len)
{
    enum ref_alg alg;
    unsigned char raw[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char got[REF_DIGEST_MAX + 1];
    size_t dl = strnlen(digest, REF_DIGEST_MAX + 1);
    if (dl > REF_DIGEST_MAX)
        return WE_INVALID;
    int rc = ref_digest_parse(digest, dl, &alg);
    if (rc)
        return rc;
    const EVP_MD *md = md_for(alg);
    if (!md)
        return -ENOTSUP;
    if (EVP_Digest(bytes, len, raw, &n, md, NULL) != 1)
        return openssl_fail("EVP_Digest");
    format_digest(alg, raw, n, got);
    return strcmp(got, digest) == 0 ? 0 : WE_DIGEST;
}
