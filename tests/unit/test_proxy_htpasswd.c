/* proxy/htpasswd.c: the bcrypt-only htpasswd grammar, every error naming the file and line and
 * never a hash, duplicates, bounds, lookups, and loading from a file. */
#include "proxy/htpasswd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

/* Real `htpasswd -B` output (apache2-utils), cost 5. */
#define H_ALICE "$2y$05$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY."
#define H_BOB "$2y$05$xr383pOEVvUbPSjGBVfFYe1CnenxLLnr67Fg02abkdT75Exhmr4ia"

static htpasswd_t *parse_ok(const char *text)
{
    htpasswd_t *h = NULL;
    char err[256] = "";
    int rc = htpasswd_parse(&h, text, strlen(text), "pw", err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "text: %s\nunexpected error: %s\n", text, err);
        CHECK(0);
    }
    return h;
}

/* The message must contain want, end without a newline, and never contain secret (a hash, or
 * anything else from the line that is not a user name). */
static void parse_err_n(const char *text, size_t len, const char *want, const char *secret)
{
    htpasswd_t *h = (htpasswd_t *)1;
    char err[256] = "";
    int rc = htpasswd_parse(&h, text, len, "pw", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want) || (secret && strstr(err, secret))) {
        fprintf(stderr, "want: %s\ngot rc=%d err: %s\n", want, rc, err);
        CHECK(0);
    }
    CHECK(h == NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static void parse_err(const char *text, const char *want, const char *secret)
{
    parse_err_n(text, strlen(text), want, secret);
}

static void test_valid(void)
{
    htpasswd_t *h =
        parse_ok("# users\n"
                 "alice:" H_ALICE "\r\n"
                 "\n"
                 "   \t\n"
                 "  # indented comment\n"
                 "bob:" H_BOB "   \n"
                 "carol smith:$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
                 "\n"
                 "d\xc3\xa9:$2a$31$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ./123");
    CHECK_INT(htpasswd_count(h), 4);
    CHECK_STR(htpasswd_hash(h, "alice"), H_ALICE);
    CHECK_STR(htpasswd_hash(h, "bob"), H_BOB);
    CHECK(htpasswd_hash(h, "carol smith") != NULL);
    CHECK(htpasswd_hash(h, "d\xc3\xa9") != NULL);
    CHECK(htpasswd_hash(h, "carol") == NULL);
    CHECK(htpasswd_hash(h, "Alice") == NULL);
    CHECK(htpasswd_hash(h, "") == NULL);
    CHECK(htpasswd_hash(NULL, "alice") == NULL);
    CHECK_STR(htpasswd_any_hash(h), H_ALICE); /* first in sorted order */
    htpasswd_free(h);

    /* An empty file and a file of comments have no users, which is not an error. */
    h = parse_ok("");
    CHECK_INT(htpasswd_count(h), 0);
    CHECK(htpasswd_any_hash(h) == NULL);
    htpasswd_free(h);
    h = parse_ok("# nobody yet\n\n");
    CHECK_INT(htpasswd_count(h), 0);
    htpasswd_free(h);
    htpasswd_free(NULL);
}

static void test_errors(void)
{
    char t[512];
    /* Each names the line; none shows the hash. */
    parse_err("alice:" H_ALICE "\nbob\n", "pw:2: not USER:HASH (no ':')", NULL);
    parse_err(":" H_ALICE "\n", "pw:1: empty user name", H_ALICE);
    parse_err("alice:$apr1$abcdefgh$0123456789abcdefghijk.\n", "pw:1: user \"alice\": an MD5",
              "abcdefgh");
    parse_err("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "a SHA-1 hash", "W6ph5");
    parse_err("alice:$6$salt$hash\n", "a SHA-crypt hash", "salt");
    parse_err("alice:plaintextpassword\n", "not a bcrypt hash", "plaintext");
    parse_err("alice:$2x$05$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY.\n",
              "not a bcrypt hash", "NfGS1");
    parse_err("alice:$2y$05$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY\n",
              "must be 60 characters", "NfGS1");
    parse_err("alice:$2y$03$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY.\n",
              "bad bcrypt cost", "NfGS1");
    parse_err("alice:$2y$32$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY.\n",
              "bad bcrypt cost", "NfGS1");
    parse_err("alice:$2y$x5$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY.\n",
              "bad bcrypt cost", "NfGS1");
    parse_err("alice:$2y$05$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQf*.\n",
              "only [./A-Za-z0-9]", "NfGS1");
    /* A pasted password with no colon: nothing of it is echoed. */
    parse_err("alice:" H_ALICE "\ncorrect horse battery staple\n", "pw:2: not USER:HASH", "horse");
    /* Duplicates: the second line is blamed, the first named. */
    snprintf(t, sizeof t, "bob:%s\nalice:%s\n#\nbob:%s\n", H_BOB, H_ALICE, H_ALICE);
    parse_err(t, "pw:4: user \"bob\" appears again (first on line 1)", H_BOB);
    /* Control bytes and NULs. */
    snprintf(t, sizeof t, "al\x01ice:%s\n", H_ALICE);
    parse_err(t, "pw:1: control character in the user name", H_ALICE);
    char nul[80] = "alice:" H_ALICE "\n";
    nul[3] = '\0';
    parse_err_n(nul, 6 + 60 + 1, "pw:1: contains a NUL byte", NULL);
    /* A long user name. */
    char *longu = malloc(HTPASSWD_USER_MAX + 80);
    memset(longu, 'u', HTPASSWD_USER_MAX + 1);
    snprintf(longu + HTPASSWD_USER_MAX + 1, 79, ":%s\n", H_ALICE);
    parse_err(longu, "pw:1: user name longer than 256 bytes", H_ALICE);
    free(longu);
    /* A user name in a message is made printable and cut. */
    snprintf(t, sizeof t, "\xff\xfe\"x:nothash\n");
    parse_err(t, "pw:1: user \"???x\": not a bcrypt hash", "nothash");
}

static void test_bounds(void)
{
    /* Over the byte bound: refused before parsing. */
    size_t big = HTPASSWD_MAX_BYTES + 1;
    char *text = malloc(big);
    memset(text, '#', big);
    parse_err_n(text, big, "pw: larger than", NULL);
    free(text);

    /* Many users are fine and found by binary search. */
    size_t n = 5000;
    text = malloc(n * 80);
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(text + o, 80, "user%05zu:%s\n", (i * 7919) % n, H_BOB);
    htpasswd_t *h = NULL;
    char err[256];
    CHECK_INT(htpasswd_parse(&h, text, o, "pw", err, sizeof err), 0);
    CHECK_INT(htpasswd_count(h), n);
    char name[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(name, sizeof name, "user%05zu", i);
        CHECK(htpasswd_hash(h, name) != NULL);
    }
    CHECK(htpasswd_hash(h, "user99999") == NULL);
    htpasswd_free(h);
    free(text);
}

static void test_load(void)
{
    const char *dir = test_tmpdir("winch-htpasswd");
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/htpasswd", dir);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "alice:%s\nbob:%s", H_ALICE, H_BOB); /* no final newline */
    CHECK_INT(fclose(f), 0);
    htpasswd_t *h = NULL;
    CHECK_INT(htpasswd_load(&h, path, err, sizeof err), 0);
    CHECK_INT(htpasswd_count(h), 2);
    CHECK_STR(htpasswd_hash(h, "bob"), H_BOB);
    htpasswd_free(h);

    /* Errors name the file. */
    f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "alice:%s\nbob:%s\nalice:%s\n", H_ALICE, H_BOB, H_BOB);
    CHECK_INT(fclose(f), 0);
    CHECK_INT(htpasswd_load(&h, path, err, sizeof err), WE_CONFIG);
    CHECK(strstr(err, path) && strstr(err, ":3: user \"alice\" appears again"));
    CHECK(!strstr(err, H_BOB) && !strstr(err, H_ALICE));
    CHECK(h == NULL);

    char missing[600];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    CHECK_INT(htpasswd_load(&h, missing, err, sizeof err), WE_CONFIG);
    CHECK(strstr(err, "nope: cannot open: No such file or directory"));
    CHECK_INT(htpasswd_load(&h, dir, err, sizeof err), WE_CONFIG);
    CHECK(strstr(err, "not a regular file"));
}

static const test_case_t cases[] = {TEST_CASE(test_valid), TEST_CASE(test_errors),
                                    TEST_CASE(test_bounds), TEST_CASE(test_load)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
