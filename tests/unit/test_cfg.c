/* tests/unit/test_cfg.c -- configuration loading and checking */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mg.h"

static char cfg_tmp[64];   /* a fresh directory for written configs */
static char cfg_file[128]; /* cfg_tmp/t.conf */

static int
setup(void **state)
{
    (void)state;
    snprintf(cfg_tmp, sizeof(cfg_tmp), "/tmp/mg-test-cfg-XXXXXX");
    if (mkdtemp(cfg_tmp) == NULL)
        return -1;
    snprintf(cfg_file, sizeof(cfg_file), "%s/t.conf", cfg_tmp);
    return 0;
}

static int
teardown(void **state)
{
    char p[256];

    (void)state;
    unlink(cfg_file);
    snprintf(p, sizeof(p), "%s/inc.conf", cfg_tmp);
    unlink(p);
    rmdir(cfg_tmp);
    return 0;
}

static void
write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static struct mg_config *
load_ok(const char *text)
{
    struct mg_config *cfg = NULL;
    const char *err = NULL;

    write_file(cfg_file, text);
    if (mg_config_load(cfg_file, "/usr/lib/mailgate", &cfg, &err) != MG_OK)
        fail_msg("load failed: %s", err);
    return cfg;
}

/* Load text, expect an error starting "cfg_file:LINE: " and containing
 * each of the NULL-terminated substrings. */
static void
load_bad(const char *text, unsigned line, ...)
{
    struct mg_config *cfg = NULL;
    const char *err = NULL;
    char head[256];
    const char *want;
    va_list ap;

    write_file(cfg_file, text);
    assert_int_equal(mg_config_load(cfg_file, NULL, &cfg, &err), MG_ERROR);
    assert_null(cfg);
    assert_non_null(err);
    snprintf(head, sizeof(head), "%s:%u: ", cfg_file, line);
    if (strncmp(err, head, strlen(head)) != 0)
        fail_msg("'%s' does not start with '%s'", err, head);
    va_start(ap, line);
    while ((want = va_arg(ap, const char *)) != NULL) {
        if (strstr(err, want) == NULL)
            fail_msg("'%s' does not contain '%s'", err, want);
    }
    va_end(ap);
}

static void
test_full(void **state)
{
    char path[1024], dir[512];
    const char *src = getenv("MG_TEST_SRCDIR");
    struct mg_config *cfg = NULL;
    const char *err = NULL;
    const struct mg_settings *s;
    const config_setting_t *smtp, *listen, *l1;

    (void)state;
    snprintf(dir, sizeof(dir), "%s/unit/data", src != NULL ? src : "tests");
    snprintf(path, sizeof(path), "%s/full.conf", dir);
    if (mg_config_load(path, "/usr/lib/mailgate", &cfg, &err) != MG_OK)
        fail_msg("%s", err);
    s = &cfg->s;
    assert_string_equal(s->file, path);
    /* relative data_dir: under the config file's directory */
    assert_true(s->data_dir[0] == '/');
    assert_non_null(strstr(s->data_dir, "/unit/data/state"));
    assert_string_equal(s->email_domain, "mail.example.org");
    assert_int_equal(s->log_level, MG_LOG_DEBUG);
    assert_true(s->log_target_set);
    assert_int_equal(s->log_target, MG_LOGT_SYSLOG);
    snprintf(path, sizeof(path), "%s/certs/server.pem", s->data_dir);
    assert_string_equal(s->tls_cert, path);
    assert_string_equal(s->tls_key, "/etc/ssl/private/server.key");
    assert_string_equal(s->user, "root");
    assert_string_equal(s->group, "root");
    assert_non_null(strstr(s->module_dir, "/unit/data/mods"));
    assert_int_equal(s->drain_timeout_ms, 10000);
    assert_int_equal(s->handshake_timeout_ms, 15000);
    assert_int_equal(s->max_connections, 5000);
    assert_int_equal(s->max_connections_per_ip, 20);
    assert_int_equal(s->limit_exempt.n, 3);
    assert_int_equal(s->worker_threads, 4);

    /* modules come from the @include file */
    assert_non_null(cfg->modules);
    assert_int_equal(config_setting_length(cfg->modules), 2);
    smtp = config_setting_get_elem(cfg->modules, 0);
    assert_string_equal(mg_cfg_string(smtp, "name", NULL), "smtp");
    assert_null(mg_cfg_string(smtp, "path", NULL));
    assert_int_equal(mg_cfg_int(smtp, "max_message_size", 0), 26214400);
    assert_string_equal(
        mg_cfg_string(config_setting_get_elem(cfg->modules, 1), "path", NULL),
        "/opt/mailgate/pop3.so");
    assert_non_null(strstr(mg_cfg_where(smtp, "name"), "full-modules.inc:3"));
    assert_string_equal(mg_cfg_path(smtp), "modules.[0]");

    /* listener entries pass the core's listener schema */
    listen = config_setting_get_member(smtp, "listen");
    for (int i = 0; i < config_setting_length(listen); i++) {
        if (mg_cfg_check_group(config_setting_get_elem(listen, (unsigned)i),
                               mg_listener_schema, NULL, "a listener",
                               &err) != MG_OK)
            fail_msg("%s", err);
    }
    l1 = config_setting_get_elem(listen, 1);
    assert_string_equal(mg_cfg_path(config_setting_get_member(l1, "port")),
                        "modules.[0].listen.[1].port");
    assert_int_equal(mg_cfg_int(l1, "port", 0), 4650);
    assert_true(mg_cfg_bool(l1, "proxy_protocol", false));
    assert_false(mg_cfg_bool(l1, "allow_plaintext_auth", false));
    assert_string_equal(mg_cfg_strings(l1, "trusted_proxies", 0), "127.0.0.1");
    assert_null(mg_cfg_strings(l1, "trusted_proxies", 1));
    assert_null(mg_cfg_string(l1, "address", NULL));
    mg_config_free(cfg);
}

static void
test_defaults(void **state)
{
    struct mg_config *cfg;
    const struct mg_settings *s;
    char path[512];

    (void)state;
    cfg = load_ok("# nothing set\n");
    s = &cfg->s;
    assert_string_equal(s->data_dir, MG_STATE_DIR);
    assert_null(s->email_domain);
    assert_int_equal(s->log_level, MG_LOG_INFO);
    assert_false(s->log_target_set);
    snprintf(path, sizeof(path), "%s/cert.pem", MG_STATE_DIR);
    assert_string_equal(s->tls_cert, path);
    snprintf(path, sizeof(path), "%s/key.pem", MG_STATE_DIR);
    assert_string_equal(s->tls_key, path);
    assert_null(s->user);
    assert_null(s->group);
    assert_string_equal(s->module_dir, "/usr/lib/mailgate");
    assert_int_equal(s->drain_timeout_ms, 5000);
    assert_int_equal(s->handshake_timeout_ms, 30000);
    assert_int_equal(s->max_connections, 1000);
    assert_int_equal(s->max_connections_per_ip, 50);
    assert_int_equal(s->limit_exempt.n, 0);
    assert_int_equal(s->worker_threads, 2);
    assert_null(cfg->modules);
    mg_config_free(cfg);

    /* an empty module list and the edges of the ranges */
    cfg = load_ok("modules = ();\ndrain_timeout = 0;\n"
                  "handshake_timeout = 300;\nworker_threads = 64;\n"
                  "max_connections = 1000000;\nlimit_exempt = ();\n");
    assert_int_equal(config_setting_length(cfg->modules), 0);
    assert_int_equal(cfg->s.drain_timeout_ms, 0);
    assert_int_equal(cfg->s.worker_threads, 64);
    mg_config_free(cfg);
}

static void
test_relative_paths(void **state)
{
    struct mg_config *cfg;
    const char *err = NULL;
    char want[512], cwd[512], rel[256];

    (void)state;
    cfg = load_ok("data_dir = \"./state\";\n"
                  "tls = { cert = \"tls/c.pem\"; key = \"/k.pem\"; };\n"
                  "module_dir = \"../mods\";\n");
    snprintf(want, sizeof(want), "%s/state", cfg_tmp);
    assert_string_equal(cfg->s.data_dir, want);
    snprintf(want, sizeof(want), "%s/state/tls/c.pem", cfg_tmp);
    assert_string_equal(cfg->s.tls_cert, want);
    assert_string_equal(cfg->s.tls_key, "/k.pem");
    snprintf(want, sizeof(want), "%s/../mods", cfg_tmp);
    assert_string_equal(cfg->s.module_dir, want);
    mg_config_free(cfg);

    cfg = load_ok("data_dir = \"/var/lib/x\";\n");
    assert_string_equal(cfg->s.data_dir, "/var/lib/x");
    assert_string_equal(cfg->s.tls_cert, "/var/lib/x/cert.pem");
    mg_config_free(cfg);

    /* the config file named by a relative path */
    write_file(cfg_file, "data_dir = \"d\";\n");
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir("/tmp"), 0);
    snprintf(rel, sizeof(rel), "%s/t.conf", cfg_tmp + strlen("/tmp/"));
    if (mg_config_load(rel, NULL, &cfg, &err) != MG_OK)
        fail_msg("%s", err);
    assert_int_equal(chdir(cwd), 0);
    snprintf(want, sizeof(want), "%s/d", cfg_tmp);
    assert_string_equal(cfg->s.data_dir, want);
    assert_null(cfg->s.module_dir);
    mg_config_free(cfg);
}

static void
test_syntax_and_io(void **state)
{
    struct mg_config *cfg = NULL;
    const char *err = NULL;
    char inc[256], text[512], head[512];

    (void)state;
    load_bad("a_ok = 1;\nworker_threads = ;\n", 2, "syntax error", NULL);
    load_bad("worker_threads = 2;\nworker_threads = 3;\n", 2, "syntax error",
             "duplicate", NULL);

    assert_int_equal(
        mg_config_load("/nonexistent/mailgate.conf", NULL, &cfg, &err),
        MG_ERROR);
    assert_non_null(strstr(err, "/nonexistent/mailgate.conf"));
    assert_non_null(strstr(err, "No such file"));

    /* errors inside an @include name the included file */
    snprintf(inc, sizeof(inc), "%s/inc.conf", cfg_tmp);
    write_file(inc, "\n\nworker_threads = 99;\n");
    snprintf(text, sizeof(text),
             "log_level = \"info\";\n@include \"inc.conf\"\n");
    write_file(cfg_file, text);
    assert_int_equal(mg_config_load(cfg_file, NULL, &cfg, &err), MG_ERROR);
    snprintf(head, sizeof(head),
             "%s:3: worker_threads: 99 is out of range 1..64", inc);
    assert_string_equal(err, head);

    /* the wrap check re-reads the included file, not a cwd-relative one */
    write_file(inc, "max_connections_per_ip = 4294967346;\n");
    assert_int_equal(mg_config_load(cfg_file, NULL, &cfg, &err), MG_ERROR);
    snprintf(head, sizeof(head),
             "%s:1: max_connections_per_ip: 4294967346 is out of range", inc);
    if (strncmp(err, head, strlen(head)) != 0)
        fail_msg("%s", err);

    write_file(inc, "x = ;\n");
    assert_int_equal(mg_config_load(cfg_file, NULL, &cfg, &err), MG_ERROR);
    snprintf(head, sizeof(head), "%s:1: syntax error", inc);
    if (strstr(err, head) == NULL)
        fail_msg("%s", err);
}

static void
test_top_level_errors(void **state)
{
    (void)state;
    load_bad("data_dir = \"/x\";\nfoo = 2;\n", 2,
             "foo: unknown setting 'foo' (known: data_dir, ", "modules", NULL);
    load_bad("\ndata_dir = 5;\n", 2, "data_dir: expected a string", NULL);
    load_bad("worker_threads = \"2\";\n", 1,
             "worker_threads: expected an integer, got a string", NULL);
    load_bad("worker_threads = 2.0;\n", 1,
             "worker_threads: expected an integer", NULL);
    load_bad("limit_exempt = \"10.0.0.0/8\";\n", 1,
             "limit_exempt: expected a list of strings", NULL);
    load_bad("limit_exempt = [ 1, 2 ];\n", 1,
             "limit_exempt.[0]: expected a "
             "string",
             NULL);
    load_bad("limit_exempt = ( \"10.0.0.0/8\",\n \"bogus\" );\n", 2,
             "limit_exempt.[1]: 'bogus' is not an IP address", NULL);
    load_bad("limit_exempt = [ \"10.0.0.0/33\" ];\n", 1,
             "limit_exempt.[0]: ", "out of range 0..32", NULL);
    load_bad("tls = 1;\n", 1, "tls: expected a group", NULL);
    load_bad("tls = {\n cert = \"a\";\n foo = 1;\n};\n", 3,
             "tls.foo: unknown setting 'foo' in tls (known: cert, key)", NULL);
    load_bad("tls = { cert = 5; };\n", 1, "tls.cert: expected a string", NULL);
    load_bad("log_level = \"verbose\";\n", 1,
             "log_level: 'verbose' is not valid; must be one of: error, "
             "warning, info, debug",
             NULL);
    load_bad("log_target = \"file\";\n", 1, "must be one of: stderr, syslog",
             NULL);
    load_bad("drain_timeout = 301;\n", 1,
             "drain_timeout: 301 is out of range 0..300", NULL);
    load_bad("handshake_timeout = 0;\n", 1,
             "handshake_timeout: 0 is out of range 1..300", NULL);
    load_bad("max_connections_per_ip = -1;\n", 1,
             "-1 is out of range 1..1000000", NULL);
    load_bad("worker_threads = 65;\n", 1, "65 is out of range 1..64", NULL);
    load_bad("modules = { name = \"x\"; };\n", 1,
             "modules: expected a list ( ) of groups", NULL);
    load_bad("modules = ( \"smtp\" );\n", 1, "modules.[0]: expected a group",
             NULL);
}

static void
test_int_overflow(void **state)
{
    const struct mg_setting port[] = {
        {.name = "port", .type = MG_SET_INT, .min = 1, .max = 65535},
        {.name = "size", .type = MG_SET_INT, .min = 0, .max = INT64_MAX},
        {.name = NULL},
    };
    struct mg_config *cfg;
    const config_setting_t *g;
    const char *err = NULL;
    char want[300];

    (void)state;
    load_bad("max_connections = 5000000000;\n", 1,
             "max_connections: 5000000000 is out of range 1..1000000", NULL);
    load_bad("max_connections = 5000000000L;\n", 1,
             "max_connections: 5000000000 is out of range 1..1000000", NULL);
    /* 2^32 + 50 would wrap to exactly 50 */
    load_bad("max_connections_per_ip = 4294967346;\n", 1,
             "4294967346 is out of range", NULL);
    load_bad("max_connections = 99999999999999999999;\n", 1,
             "max_connections: the number is too large", NULL);
    load_bad("worker_threads = 0x100000002;\n", 1, "out of range 1..64", NULL);

    /* the same in a module section checked against a schema */
    cfg = load_ok("modules = (\n { name = \"m\"; port = 5000000000; },\n"
                  " { name = \"n\"; port = 5000000000L; },\n"
                  " { name = \"o\"; port = 4294967321; },\n"
                  " { name = \"p\"; size = 10000000000; },\n"
                  " { name = \"q\"; size = 10000000000L; port = 25; }\n);\n");
    const char *const expect[] = {
        ":2: modules.[0].port: 5000000000 is out of range 1..65535",
        ":3: modules.[1].port: 5000000000 is out of range 1..65535",
        ":4: modules.[2].port: 4294967321 is out of range 1..65535",
        ":5: modules.[3].size: 10000000000 is beyond 32 bits; write "
        "10000000000L",
    };
    const struct mg_setting name[] = {
        {.name = "name", .type = MG_SET_STRING},
        {.name = NULL},
    };
    for (unsigned i = 0; i < 4; i++) {
        g = config_setting_get_elem(cfg->modules, i);
        assert_int_equal(mg_cfg_check_group(g, port, name, "module", &err),
                         MG_ERROR);
        snprintf(want, sizeof(want), "%s%s", cfg_file, expect[i]);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("'%s' is not '%s'", err, want);
    }
    g = config_setting_get_elem(cfg->modules, 4);
    assert_int_equal(mg_cfg_check_group(g, port, name, "module", &err), MG_OK);
    assert_int_equal(mg_cfg_int(g, "size", 0), 10000000000LL);
    mg_config_free(cfg);
}

static void
test_domain_and_accounts(void **state)
{
    struct mg_config *cfg;
    char long_label[200], long_name[400];

    (void)state;
    cfg = load_ok("email_domain = \"EXAMPLE.com\";\n");
    assert_string_equal(cfg->s.email_domain, "example.com");
    mg_config_free(cfg);
    cfg = load_ok("email_domain = \"a-b.c-d.example\";\n");
    mg_config_free(cfg);

    load_bad("email_domain = \"localhost\";\n", 1, "email_domain: ", "no dot",
             NULL);
    load_bad("email_domain = \"-a.example\";\n", 1, "starts with '-'", NULL);
    load_bad("email_domain = \"a-.example\";\n", 1, "ends with '-'", NULL);
    load_bad("email_domain = \"a.example-\";\n", 1, "ends with '-'", NULL);
    load_bad("email_domain = \"a..example\";\n", 1, "empty label", NULL);
    load_bad("email_domain = \"example.com.\";\n", 1, "empty label", NULL);
    load_bad("email_domain = \"\";\n", 1, "1 to 253", NULL);
    load_bad("email_domain = \"a_b.example\";\n", 1, "invalid character", NULL);
    load_bad("email_domain = \"user@example.com\";\n", 1, "invalid character",
             NULL);
    memset(long_label, 'a', 64);
    snprintf(long_label + 64, sizeof(long_label) - 64, ".example\";\n");
    snprintf(long_name, sizeof(long_name), "email_domain = \"%s", long_label);
    load_bad(long_name, 1, "longer than 63", NULL);

    load_bad("user = \"no-such-user-mg\";\n", 1,
             "user: unknown user 'no-such-user-mg'", NULL);
    load_bad("group = \"no-such-group-mg\";\n", 1,
             "group: unknown group 'no-such-group-mg'", NULL);
}

static void
test_modules(void **state)
{
    const struct mg_setting schema[] = {
        {.name = "listen", .type = MG_SET_STRINGS},
        {.name = NULL},
    };
    const struct mg_setting core[] = {
        {.name = "name", .type = MG_SET_STRING},
        {.name = "path", .type = MG_SET_STRING},
        {.name = NULL},
    };
    struct mg_config *cfg;
    const char *err = NULL;
    char want[300];

    (void)state;
    /* an unknown member is the module's business: load leaves it */
    cfg =
        load_ok("modules = (\n {\n  name = \"smtp\";\n  bogus = 1;\n }\n);\n");
    assert_int_equal(
        mg_cfg_check_group(config_setting_get_elem(cfg->modules, 0), schema,
                           core, "module smtp", &err),
        MG_ERROR);
    snprintf(want, sizeof(want),
             "%s:4: modules.[0].bogus: unknown setting 'bogus' in module "
             "smtp (known: listen, name, path)",
             cfg_file);
    assert_string_equal(err, want);
    /* with neither schema nothing is known */
    assert_int_equal(
        mg_cfg_check_group(config_setting_get_elem(cfg->modules, 0), NULL, NULL,
                           NULL, &err),
        MG_ERROR);
    assert_non_null(strstr(err, "(known: none)"));
    mg_config_free(cfg);

    load_bad("modules = (\n { path = \"/x.so\"; }\n);\n", 2,
             "modules.[0]: missing 'name'", NULL);
    load_bad("modules = ( { name = 5; } );\n", 1,
             "modules.[0].name: expected a string", NULL);
    load_bad("modules = ( { name = \"Smtp\"; } );\n", 1,
             "modules.[0].name: 'Smtp' is not a module name", NULL);
    load_bad("modules = ( { name = \"\"; } );\n", 1, "is not a module name",
             NULL);
    load_bad("modules = ( { name = \"abcdefghijabcdefghijabcdefghijabc\"; "
             "} );\n",
             1, "is not a module name", NULL);
    load_bad("modules = ( { name = \"x\"; path = true; } );\n", 1,
             "modules.[0].path: expected a string", NULL);
    snprintf(want, sizeof(want), "(first at %s:2)", cfg_file);
    load_bad("modules = (\n { name = \"smtp\"; },\n { name = \"pop3\"; },\n"
             " { name = \"smtp\"; }\n);\n",
             4, "modules.[2].name: module 'smtp' is configured twice", want,
             NULL);
}

static void
test_check_group(void **state)
{
    static const char *const colors[] = {"red", "green", NULL};
    const struct mg_setting schema[] = {
        {.name = "b", .type = MG_SET_BOOL},
        {.name = "i", .type = MG_SET_INT, .min = -5, .max = 5},
        {.name = "s", .type = MG_SET_STRING},
        {.name = "c", .type = MG_SET_STRING, .choices = colors},
        {.name = "l", .type = MG_SET_STRINGS},
        {.name = "g", .type = MG_SET_GROUP},
        {.name = NULL},
    };
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"b = 1;", "m.b: expected true or false, got an integer"},
        {"i = 6;", "m.i: 6 is out of range -5..5"},
        {"i = -6;", "m.i: -6 is out of range -5..5"},
        {"i = true;", "m.i: expected an integer"},
        {"i = 1.5;", "m.i: expected an integer, got a number with a fraction"},
        {"s = [ \"a\" ];", "m.s: expected a string, got an array"},
        {"c = \"blue\";",
         "m.c: 'blue' is not valid; must be one of: red, green"},
        {"l = \"a\";", "m.l: expected a list of strings, got a string"},
        {"l = ( \"a\", 1 );", "m.l.[1]: expected a string"},
        {"l = { };", "m.l: expected a list of strings, got a group"},
        {"g = 1;", "m.g: expected a group"},
        {"zz = 1;", "m.zz: unknown setting 'zz' in thing (known: b, i, s, "
                    "c, l, g)"},
    };
    struct mg_config *cfg;
    const config_setting_t *mod, *m;
    const char *err = NULL;
    char text[256], want[512];

    (void)state;
    cfg = load_ok("modules = ( { name = \"x\";\n"
                  "m = { b = false; i = -5; s = \"\"; c = \"green\";\n"
                  "l = []; g = { anything = 1; }; }; } );\n");
    mod = config_setting_get_elem(cfg->modules, 0);
    m = config_setting_get_member(mod, "m");
    if (mg_cfg_check_group(m, schema, NULL, "thing", &err) != MG_OK)
        fail_msg("%s", err);
    assert_false(mg_cfg_bool(m, "b", true));
    assert_int_equal(mg_cfg_int(m, "i", 0), -5);
    assert_string_equal(mg_cfg_string(m, "s", "def"), "");
    assert_string_equal(mg_cfg_string(m, "nope", "def"), "def");
    assert_int_equal(mg_cfg_int(m, "nope", 42), 42);
    assert_true(mg_cfg_bool(m, "nope", true));
    assert_null(mg_cfg_strings(m, "l", 0));
    assert_null(mg_cfg_strings(m, "nope", 0));
    assert_int_equal(mg_cfg_int(NULL, "i", 7), 7);
    /* an absent group passes */
    assert_int_equal(mg_cfg_check_group(NULL, schema, NULL, "x", &err), MG_OK);
    /* not a group */
    assert_int_equal(mg_cfg_check_group(config_setting_get_member(mod, "name"),
                                        schema, NULL, "x", &err),
                     MG_ERROR);
    assert_non_null(strstr(err, "modules.[0].name: expected a group"));
    snprintf(want, sizeof(want), "%s:2", cfg_file);
    assert_string_equal(mg_cfg_where(m, "b"), want);
    assert_string_equal(mg_cfg_where(m, NULL), want);
    assert_string_equal(mg_cfg_where(m, "absent"), want);
    mg_config_free(cfg);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 "modules = ( { name = \"x\";\n"
                 "m = { %s }; } );\n",
                 bad[i].text);
        cfg = load_ok(text);
        m = config_setting_get_member(config_setting_get_elem(cfg->modules, 0),
                                      "m");
        assert_int_equal(mg_cfg_check_group(m, schema, NULL, "thing", &err),
                         MG_ERROR);
        snprintf(want, sizeof(want), "%s:2: modules.[0].%s", cfg_file,
                 bad[i].want);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("'%s' is not '%s'", err, want);
        mg_config_free(cfg);
    }
}

static void
test_listener_schema(void **state)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"port = 70000;", "port: 70000 is out of range 1..65535"},
        {"port = 0;", "port: 0 is out of range 1..65535"},
        {"port = 4294967321;", "port: 4294967321 is out of range 1..65535"},
        {"tls = \"yes\";",
         "tls: 'yes' is not valid; must be one of: none, starttls, implicit"},
        {"address = 127;", "address: expected a string"},
        {"proxy_protocol = \"yes\";", "proxy_protocol: expected true or false"},
        {"allow_plaintext_auth = 1;", "allow_plaintext_auth: expected true"},
        {"trusted_proxies = \"127.0.0.1\";",
         "trusted_proxies: expected a list of strings"},
        {"max_connections = -1;", "max_connections: -1 is out of range"},
        {"backlog = 5;", "backlog: unknown setting 'backlog' in a listener "
                         "(known: address, port, tls, allow_plaintext_auth, "
                         "proxy_protocol, trusted_proxies, max_connections)"},
    };
    struct mg_config *cfg;
    const char *err = NULL;
    char text[256], want[512];
    const config_setting_t *l;
    struct mg_netlist nl = {0};

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 "modules = ( { name = \"x\";\n listen = (\n { port = 25; "
                 "},\n { %s }\n ); } );\n",
                 bad[i].text);
        cfg = load_ok(text);
        l = config_setting_get_elem(
            config_setting_get_member(config_setting_get_elem(cfg->modules, 0),
                                      "listen"),
            1);
        assert_int_equal(
            mg_cfg_check_group(l, mg_listener_schema, NULL, "a listener", &err),
            MG_ERROR);
        snprintf(want, sizeof(want), "%s:4: modules.[0].listen.[1].%s",
                 cfg_file, bad[i].want);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("'%s' is not '%s'", err, want);
        mg_config_free(cfg);
    }

    /* trusted_proxies through mg_cfg_netlist: all or nothing */
    cfg = load_ok("modules = ( { name = \"x\";\n l = {\n"
                  " good = [ \"127.0.0.1\", \"::1\" ];\n"
                  " bad = [ \"127.0.0.1\", \"nope\" ];\n"
                  " notlist = 5; }; } );\n");
    l = config_setting_get_member(config_setting_get_elem(cfg->modules, 0),
                                  "l");
    assert_int_equal(mg_cfg_netlist(l, "good", &nl, &err), MG_OK);
    assert_int_equal(nl.n, 2);
    assert_int_equal(mg_cfg_netlist(l, "absent", &nl, &err), MG_OK);
    assert_int_equal(nl.n, 2);
    assert_int_equal(mg_cfg_netlist(l, "bad", &nl, &err), MG_ERROR);
    assert_int_equal(nl.n, 2);
    snprintf(want, sizeof(want), "%s:4: modules.[0].l.bad.[1]: 'nope'",
             cfg_file);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("'%s' is not '%s'", err, want);
    assert_int_equal(mg_cfg_netlist(l, "notlist", &nl, &err), MG_ERROR);
    assert_non_null(strstr(err, "expected a list of strings"));
    mg_netlist_free(&nl);
    mg_config_free(cfg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_syntax_and_io),
        cmocka_unit_test(test_top_level_errors),
        cmocka_unit_test(test_int_overflow),
        cmocka_unit_test(test_domain_and_accounts),
        cmocka_unit_test(test_modules),
        cmocka_unit_test(test_check_group),
        cmocka_unit_test(test_listener_schema),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
