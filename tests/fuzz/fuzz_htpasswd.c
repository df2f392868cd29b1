/* htpasswd files (proxy/htpasswd.h): htpasswd_parse over arbitrary bytes. An accepted file holds
 * at most one user a line, and every line of the form USER:HASH that it accepted can be looked
 * up again; a refused one comes with a one-line message naming the origin, never holding a
 * '$' (no hash is ever echoed: the grammar's own words name hashes without one). */
#include "common/err.h"
#include "fuzz.h"
#include "proxy/htpasswd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    htpasswd_t *h = NULL;
    char err[512];
    err[0] = '\0';
    int rc = htpasswd_parse(&h, (const char *)data, size, "fz", err, sizeof err);
    if (rc != 0) {
        FUZZ_CHECK(rc == WE_CONFIG);
        FUZZ_CHECK(h == NULL);
        FUZZ_CHECK(strncmp(err, "fz:", 3) == 0);
        FUZZ_CHECK(fuzz_printable_line(err));
        return 0;
    }
    size_t lines = 1;
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    FUZZ_CHECK(htpasswd_count(h) <= lines);
    FUZZ_CHECK((htpasswd_count(h) == 0) == (htpasswd_any_hash(h) == NULL));
    /* Every entry line's user finds a 60-byte bcrypt hash. */
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        char *line = fuzz_cstr(data + start, i - start);
        char *colon = strchr(line, ':');
        if (colon && line[0] != '#' && line[0] != ' ' && line[0] != '\t' && colon != line) {
            *colon = '\0';
            const char *hash = htpasswd_hash(h, line);
            FUZZ_CHECK(hash != NULL);
            FUZZ_CHECK(strlen(hash) == HTPASSWD_HASH_LEN && hash[0] == '$' && hash[1] == '2');
        }
        free(line);
        start = i + 1;
    }
    htpasswd_free(h);
    return 0;
}
