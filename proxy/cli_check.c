/* `winch check-config`: validates a configuration as `winch serve` would at start (the file,
 * the flags, the policy's regexes) without opening the cache or a socket, and prints the
 * effective configuration, secrets redacted (like `nginx -t`). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "policy/policy.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

int cli_check_config(int argc, char **argv)
{
    char err[512];
    config_t *cfg = NULL;
    policy_t *pol = NULL;
    char *text = NULL;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_print_cmd(stdout, "check-config");
            return 0;
        }
    }
    if (config_load(&cfg, argc - 1, argv + 1, err, sizeof err) < 0 ||
        policy_create(&pol, cfg, err, sizeof err) < 0) {
        fprintf(stderr, "winch: %s\n", err);
        goto out;
    }
    text = config_dump_json(cfg);
    if (!text) {
        fputs("winch: out of memory\n", stderr);
        rc = 1;
        goto out;
    }
    printf("%s\n", text);
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    free(text);
    policy_free(pol);
    config_free(cfg);
    return rc;
}
