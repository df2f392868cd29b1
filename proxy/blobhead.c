/* The head of a blob response, for hits, fills and blobs passed through (blobhead.h). */
#include "proxy/blobhead.h"

#include "proxy/http.h"
#include "proxy/oci.h"
#include "proxy/reply.h"

void blob_headers(call_t *c, const char *digest, bool verified)
{
    resp_header(c->req, "Content-Type", "application/octet-stream");
    resp_header(c->req, "Docker-Content-Digest", "%s", digest);
    resp_header(c->req, "ETag", "\"%s\"", digest);
    resp_header(c->req, "Accept-Ranges", "bytes");
    resp_header(c->req, "Cache-Control", verified ? "max-age=31536000" : "no-store");
}

void blob_reply_416(call_t *c, uint64_t size)
{
    reply_begin(c, 416);
    resp_header(c->req, "Content-Range", "bytes */%llu", (unsigned long long)size);
    reply_error(c, 0, OCI_RANGE_INVALID, "requested range not satisfiable", NULL);
}

int blob_begin_head(call_t *c, const char *digest, uint64_t size, bool verified, uint64_t *first,
                    uint64_t *count)
{
    uint64_t last;
    int status = http_range_resolve(&c->range, size, first, &last);
    if (status == 416)
        return 416;
    *count = size ? last - *first + 1 : 0;
    reply_begin(c, status);
    blob_headers(c, digest, verified || last + 1 == size);
    if (status == 206)
        resp_header(c->req, "Content-Range", "bytes %llu-%llu/%llu", (unsigned long long)*first,
                    (unsigned long long)last, (unsigned long long)size);
    return status;
}
