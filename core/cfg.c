/* core/cfg.c -- the configuration file: read, check, getters
 *
 * libconfig 1.5 parses; everything else is checked here so that each
 * mistake is reported as "FILE:LINE: SETTING-PATH: problem[; what to do]".
 * Integers are read as int64 and range-checked (1.5 wraps plain integers
 * above 2^31 silently; values with L come as INT64).
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mg.h"

#define CFG_PATH_MAX  512
#define CFG_MSG_MAX   768
#define CFG_DEPTH_MAX 64

/* internal setting type beyond the public enum: a ( ) list of { } groups */
#define CFG_SET_GROUPS MG_SET_LIST

static const char *const cfg_log_levels[] = {"error", "warning", "info",
                                             "debug", NULL};
static const char *const cfg_log_targets[] = {"stderr", "syslog", NULL};
static const char *const cfg_tls_modes[] = {"none", "starttls", "implicit",
                                            NULL};
/* in the order of enum mg_store_cipher */
static const char *const cfg_store_ciphers[] = {"auto", "aes256gcm",
                                                "xchacha20poly1305", NULL};

static const struct mg_setting cfg_top_schema[] = {
    {.name = "data_dir", .type = MG_SET_STRING},
    {.name = "email_domain", .type = MG_SET_STRING},
    {.name = "log_level", .type = MG_SET_STRING, .choices = cfg_log_levels},
    {.name = "log_target", .type = MG_SET_STRING, .choices = cfg_log_targets},
    {.name = "tls", .type = MG_SET_GROUP},
    {.name = "user", .type = MG_SET_STRING},
    {.name = "group", .type = MG_SET_STRING},
    {.name = "module_dir", .type = MG_SET_STRING},
    {.name = "drain_timeout", .type = MG_SET_INT, .min = 0, .max = 300},
    {.name = "handshake_timeout", .type = MG_SET_INT, .min = 1, .max = 300},
    {.name = "max_connections", .type = MG_SET_INT, .min = 1, .max = 1000000},
    {.name = "max_connections_per_ip",
     .type = MG_SET_INT,
     .min = 1,
     .max = 1000000},
    {.name = "limit_exempt", .type = MG_SET_STRINGS},
    {.name = "worker_threads", .type = MG_SET_INT, .min = 1, .max = 64},
    {.name = "store", .type = MG_SET_GROUP},
    {.name = "kdf_concurrency", .type = MG_SET_INT, .min = 1, .max = 64},
    {.name = "log_addresses", .type = MG_SET_BOOL},
    {.name = "modules", .type = CFG_SET_GROUPS},
    {.name = NULL},
};

/* The store map is sparse: its size only bounds growth. */
static const struct mg_setting cfg_store_schema[] = {
    {.name = "map_size",
     .type = MG_SET_INT,
     .min = 16LL << 20,
     .max = 16LL << 40},
    {.name = "reserve", .type = MG_SET_INT, .min = 0, .max = 1LL << 40},
    {.name = "sender_key_lifetime", .type = MG_SET_INT, .min = 0, .max = 3600},
    {.name = "cipher", .type = MG_SET_STRING, .choices = cfg_store_ciphers},
    {.name = "drop_written_pages", .type = MG_SET_BOOL},
    {.name = NULL},
};

static const struct mg_setting cfg_tls_schema[] = {
    {.name = "cert", .type = MG_SET_STRING},
    {.name = "key", .type = MG_SET_STRING},
    {.name = NULL},
};

const struct mg_setting mg_listener_schema[] = {
    {.name = "address", .type = MG_SET_STRING},
    {.name = "port", .type = MG_SET_INT, .min = 1, .max = 65535},
    {.name = "tls", .type = MG_SET_STRING, .choices = cfg_tls_modes},
    {.name = "allow_plaintext_auth", .type = MG_SET_BOOL},
    {.name = "proxy_protocol", .type = MG_SET_BOOL},
    {.name = "trusted_proxies", .type = MG_SET_STRINGS},
    {.name = "max_connections", .type = MG_SET_INT, .min = 0, .max = 1000000},
    {.name = NULL},
};

/* ------------------------------------------------------ locations */

/* libconfig records an @include by the name written in it, relative to
 * the include directory: make that a usable path (the main file stays as
 * the caller named it). */
static const char *
cfg_resolve_file(const config_t *c, const char *f)
{
    const char *dir = config_get_include_dir(c);

    if (f[0] == '/' || dir == NULL ||
        (c->num_filenames > 0 && strcmp(f, c->filenames[0]) == 0))
        return f;
    return mg_error("%s/%s", dir, f);
}

/* The file a setting comes from. */
static const char *
cfg_file(const config_setting_t *s)
{
    const char *f = s != NULL ? config_setting_source_file(s) : NULL;

    if (f == NULL)
        return "(config)";
    return cfg_resolve_file(s->config, f);
}

/* "modules.[1].listen.[0].port": names, list/array elements as [i] */
static void
cfg_path_build(const config_setting_t *s, char *buf, size_t size)
{
    const config_setting_t *chain[CFG_DEPTH_MAX];
    size_t n = 0, off = 0;

    while (s != NULL && !config_setting_is_root(s) && n < CFG_DEPTH_MAX) {
        chain[n++] = s;
        s = config_setting_parent(s);
    }
    buf[0] = '\0';
    while (n-- > 0) {
        const char *name = config_setting_name(chain[n]);
        int w;

        if (name != NULL)
            w = snprintf(buf + off, size - off, "%s%s", off ? "." : "", name);
        else
            w = snprintf(buf + off, size - off, "%s[%d]", off ? "." : "",
                         config_setting_index(chain[n]));
        if (w < 0 || (size_t)w >= size - off)
            return; /* truncated: keep what fits */
        off += (size_t)w;
    }
}

/* "FILE:LINE: PATH: problem" into *error_r */
static int MG_PRINTF(3, 4)
    cfg_fail(const char **error_r, const config_setting_t *s, const char *fmt,
             ...)
{
    char path[CFG_PATH_MAX], msg[CFG_MSG_MAX];
    va_list ap;

    cfg_path_build(s, path, sizeof(path));
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (path[0] == '\0')
        *error_r = mg_error("%s:%u: %s", cfg_file(s),
                            config_setting_source_line(s), msg);
    else
        *error_r = mg_error("%s:%u: %s: %s", cfg_file(s),
                            config_setting_source_line(s), path, msg);
    return MG_ERROR;
}

const char *
mg_cfg_where(const config_setting_t *group, const char *name)
{
    const config_setting_t *s = group;

    if (group == NULL)
        return "(config)";
    if (name != NULL && config_setting_is_group(group)) {
        const config_setting_t *m = config_setting_get_member(group, name);

        if (m != NULL)
            s = m;
    }
    return mg_error("%s:%u", cfg_file(s), config_setting_source_line(s));
}

const char *
mg_cfg_path(const config_setting_t *s)
{
    char path[CFG_PATH_MAX];

    cfg_path_build(s, path, sizeof(path));
    return mg_error("%s", path);
}

/* ------------------------------------------------------ type checks */

static const char *
cfg_type_name(const config_setting_t *s)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a number with a fraction";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "true or false";
    case CONFIG_TYPE_GROUP:
        return "a group { }";
    case CONFIG_TYPE_ARRAY:
        return "an array [ ]";
    case CONFIG_TYPE_LIST:
        return "a list ( )";
    default:
        return "something else";
    }
}

static bool
cfg_is_int(const config_setting_t *s)
{
    return config_setting_type(s) == CONFIG_TYPE_INT ||
           config_setting_type(s) == CONFIG_TYPE_INT64;
}

static bool
cfg_is_seq(const config_setting_t *s)
{
    return config_setting_is_list(s) || config_setting_is_array(s);
}

static bool
cfg_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*';
}

/*
 * The integer as written in the file, when it differs from the parsed
 * value v. libconfig 1.5 silently wraps a plain integer beyond 32 bits
 * ("4294967321" reads as 25), so the text is read again from the
 * setting's line. false: no difference seen (or the text was not found;
 * then the parsed value is all there is). *huge_r: beyond 64 bits.
 */
static bool
cfg_source_int(const config_setting_t *s, long long v, long long *v_r,
               bool *huge_r)
{
    const char *file = cfg_file(s);
    const char *name = config_setting_name(s);
    unsigned line = config_setting_source_line(s);
    char *buf = NULL;
    size_t cap = 0;
    bool differs = false;
    FILE *fp;

    if (name == NULL || line == 0)
        return false;
    fp = fopen(file, "r");
    if (fp == NULL)
        return false;
    for (unsigned i = 0; i < line; i++) {
        if (getline(&buf, &cap, fp) < 0) {
            free(buf);
            fclose(fp);
            return false;
        }
    }
    fclose(fp);
    for (const char *p = strstr(buf, name); p != NULL;
         p = strstr(p + 1, name)) {
        const char *q = p + strlen(name);
        unsigned long long u;
        long long t;
        bool huge;
        char *end;

        if ((p > buf && cfg_name_char(p[-1])) || cfg_name_char(*q))
            continue;
        while (*q == ' ' || *q == '\t')
            q++;
        if (*q != '=' && *q != ':')
            continue;
        q++;
        while (*q == ' ' || *q == '\t')
            q++;
        errno = 0;
        if (q[0] == '0' && (q[1] == 'x' || q[1] == 'X')) {
            u = strtoull(q, &end, 16);
            huge = errno == ERANGE || u > (unsigned long long)LLONG_MAX;
            t = (long long)u;
        } else {
            t = strtoll(q, &end, 10);
            huge = errno == ERANGE;
        }
        if (end == q)
            continue;
        if (!huge && t == v) {
            /* the same name twice on a line: any exact match wins */
            differs = false;
            break;
        }
        if (!differs) {
            differs = true;
            *v_r = t;
            *huge_r = huge;
        }
    }
    free(buf);
    return differs;
}

static int
cfg_check_choices(const config_setting_t *s, const char *const *choices,
                  const char **error_r)
{
    const char *v = config_setting_get_string(s);
    char list[CFG_MSG_MAX / 2];
    size_t off = 0;

    for (size_t i = 0; choices[i] != NULL; i++) {
        if (strcmp(v, choices[i]) == 0)
            return MG_OK;
    }
    list[0] = '\0';
    for (size_t i = 0; choices[i] != NULL; i++) {
        int w = snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "",
                         choices[i]);

        if (w < 0 || (size_t)w >= sizeof(list) - off)
            break;
        off += (size_t)w;
    }
    return cfg_fail(error_r, s, "'%.64s' is not valid; must be one of: %s", v,
                    list);
}

static int
cfg_check_int(const config_setting_t *s, const struct mg_setting *spec,
              const char **error_r)
{
    long long v, src;
    bool huge;

    if (!cfg_is_int(s))
        return cfg_fail(error_r, s, "expected an integer, got %s",
                        cfg_type_name(s));
    v = config_setting_get_int64(s);
    if (config_setting_type(s) == CONFIG_TYPE_INT &&
        cfg_source_int(s, v, &src, &huge)) {
        if (huge)
            return cfg_fail(error_r, s, "the number is too large");
        if (src >= spec->min && src <= spec->max)
            return cfg_fail(error_r, s,
                            "%lld is beyond 32 bits; write %lldL "
                            "(libconfig wraps plain integers)",
                            src, src);
        v = src; /* report what was written, not the wrapped value */
    }
    if (v < spec->min || v > spec->max)
        return cfg_fail(error_r, s, "%lld is out of range %lld..%lld", v,
                        (long long)spec->min, (long long)spec->max);
    return MG_OK;
}

static int
cfg_check_strings(const config_setting_t *s, const char **error_r)
{
    if (config_setting_type(s) == CONFIG_TYPE_STRING)
        return cfg_fail(error_r, s,
                        "expected a list of strings, got a string; "
                        "write [ \"%.64s\" ]",
                        config_setting_get_string(s));
    if (!cfg_is_seq(s))
        return cfg_fail(error_r, s, "expected a list of strings, got %s",
                        cfg_type_name(s));
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return cfg_fail(error_r, e, "expected a string, got %s",
                            cfg_type_name(e));
    }
    return MG_OK;
}

static int
cfg_check_groups(const config_setting_t *s, const char **error_r)
{
    if (!config_setting_is_list(s))
        return cfg_fail(error_r, s, "expected a list ( ) of groups { }, got %s",
                        cfg_type_name(s));
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

        if (!config_setting_is_group(e))
            return cfg_fail(error_r, e, "expected a group { }, got %s",
                            cfg_type_name(e));
    }
    return MG_OK;
}

static int
cfg_check_value(const config_setting_t *s, const struct mg_setting *spec,
                const char **error_r)
{
    switch (spec->type) {
    case MG_SET_BOOL:
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return cfg_fail(error_r, s, "expected true or false, got %s",
                            cfg_type_name(s));
        return MG_OK;
    case MG_SET_INT:
        return cfg_check_int(s, spec, error_r);
    case MG_SET_STRING:
        if (config_setting_type(s) != CONFIG_TYPE_STRING)
            return cfg_fail(error_r, s, "expected a string, got %s",
                            cfg_type_name(s));
        if (spec->choices != NULL)
            return cfg_check_choices(s, spec->choices, error_r);
        return MG_OK;
    case MG_SET_STRINGS:
        return cfg_check_strings(s, error_r);
    case MG_SET_GROUP:
        if (!config_setting_is_group(s))
            return cfg_fail(error_r, s, "expected a group { }, got %s",
                            cfg_type_name(s));
        return MG_OK;
    default:
        if (spec->type == CFG_SET_GROUPS)
            return cfg_check_groups(s, error_r);
        return cfg_fail(error_r, s, "unsupported setting type %d in the schema",
                        (int)spec->type);
    }
}

static const struct mg_setting *
cfg_find(const struct mg_setting *schema, const char *name)
{
    for (; schema != NULL && schema->name != NULL; schema++) {
        if (strcmp(schema->name, name) == 0)
            return schema;
    }
    return NULL;
}

static void
cfg_known(const struct mg_setting *schema, const struct mg_setting *extra,
          char *buf, size_t size)
{
    const struct mg_setting *lists[2] = {schema, extra};
    size_t off = 0;

    snprintf(buf, size, "none");
    for (size_t l = 0; l < 2; l++) {
        for (const struct mg_setting *p = lists[l]; p != NULL && p->name; p++) {
            int w = snprintf(buf + off, size - off, "%s%s", off ? ", " : "",
                             p->name);

            if (w < 0 || (size_t)w >= size - off)
                return;
            off += (size_t)w;
        }
    }
}

int
mg_cfg_check_group(const config_setting_t *group,
                   const struct mg_setting *schema,
                   const struct mg_setting *extra, const char *what,
                   const char **error_r)
{
    if (group == NULL)
        return MG_OK;
    if (!config_setting_is_group(group))
        return cfg_fail(error_r, group, "expected a group { }, got %s",
                        cfg_type_name(group));
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        const struct mg_setting *spec = cfg_find(schema, name);

        if (spec == NULL)
            spec = cfg_find(extra, name);
        if (spec == NULL) {
            char known[CFG_MSG_MAX / 2];

            cfg_known(schema, extra, known, sizeof(known));
            return cfg_fail(error_r, m, "unknown setting '%s'%s%s (known: %s)",
                            name, what != NULL ? " in " : "",
                            what != NULL ? what : "", known);
        }
        if (cfg_check_value(m, spec, error_r) != MG_OK)
            return MG_ERROR;
    }
    return MG_OK;
}

/* ------------------------------------------------------ getters */

static const config_setting_t *
cfg_member(const config_setting_t *g, const char *name)
{
    if (g == NULL || !config_setting_is_group(g))
        return NULL;
    return config_setting_get_member(g, name);
}

bool
mg_cfg_bool(const config_setting_t *g, const char *name, bool def)
{
    const config_setting_t *m = cfg_member(g, name);

    if (m == NULL || config_setting_type(m) != CONFIG_TYPE_BOOL)
        return def;
    return config_setting_get_bool(m) != 0;
}

int64_t
mg_cfg_int(const config_setting_t *g, const char *name, int64_t def)
{
    const config_setting_t *m = cfg_member(g, name);

    if (m == NULL || !cfg_is_int(m))
        return def;
    return config_setting_get_int64(m);
}

const char *
mg_cfg_string(const config_setting_t *g, const char *name, const char *def)
{
    const config_setting_t *m = cfg_member(g, name);

    if (m == NULL || config_setting_type(m) != CONFIG_TYPE_STRING)
        return def;
    return config_setting_get_string(m);
}

const char *
mg_cfg_strings(const config_setting_t *g, const char *name, unsigned i)
{
    const config_setting_t *m = cfg_member(g, name);
    const config_setting_t *e;

    if (m == NULL || !cfg_is_seq(m) || i >= (unsigned)config_setting_length(m))
        return NULL;
    e = config_setting_get_elem(m, i);
    if (config_setting_type(e) != CONFIG_TYPE_STRING)
        return NULL;
    return config_setting_get_string(e);
}

int
mg_cfg_netlist(const config_setting_t *g, const char *name,
               struct mg_netlist *l, const char **error_r)
{
    const config_setting_t *m = cfg_member(g, name);
    struct mg_netlist tmp = {0};

    if (m == NULL)
        return MG_OK;
    if (!cfg_is_seq(m))
        return cfg_fail(error_r, m, "expected a list of strings, got %s",
                        cfg_type_name(m));
    for (int i = 0; i < config_setting_length(m); i++) {
        const config_setting_t *e = config_setting_get_elem(m, (unsigned)i);
        struct mg_cidr c;
        const char *why;

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            mg_netlist_free(&tmp);
            return cfg_fail(error_r, e, "expected a string, got %s",
                            cfg_type_name(e));
        }
        if (mg_cidr_parse(config_setting_get_string(e), &c, &why) != MG_OK) {
            mg_netlist_free(&tmp);
            return cfg_fail(error_r, e,
                            "%s; write an address or a network such as "
                            "192.0.2.0/24 or 2001:db8::/32",
                            why);
        }
        mg_netlist_add(&tmp, &c);
    }
    /* all or nothing: l only changes when every entry parsed */
    for (size_t i = 0; i < tmp.n; i++)
        mg_netlist_add(l, &tmp.v[i]);
    mg_netlist_free(&tmp);
    return MG_OK;
}

/* ------------------------------------------------------ load */

/* p made absolute against dir ("./x" and "." handled) */
static char *
cfg_abs(const char *dir, const char *p)
{
    if (p[0] == '/')
        return mg_xstrdup(p);
    while (p[0] == '.' && p[1] == '/') {
        p += 2;
        while (*p == '/')
            p++;
    }
    if (p[0] == '\0' || strcmp(p, ".") == 0)
        return mg_xstrdup(dir);
    if (dir[0] != '\0' && dir[strlen(dir) - 1] == '/')
        return mg_xasprintf("%s%s", dir, p);
    return mg_xasprintf("%s/%s", dir, p);
}

/* the directory of the config file, absolute */
static char *
cfg_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir, *abs;
    char cwd[4096];

    if (slash == NULL)
        dir = mg_xstrdup(".");
    else if (slash == path)
        dir = mg_xstrdup("/");
    else
        dir = mg_xstrndup(path, (size_t)(slash - path));
    if (dir[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
        return dir;
    abs = cfg_abs(cwd, dir);
    free(dir);
    return abs;
}

static bool
cfg_ldh(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-';
}

/* NULL if d is a syntactically valid domain name, else the problem */
static const char *
cfg_domain_problem(const char *d)
{
    size_t len = strlen(d), label = 0, dots = 0;

    if (len == 0 || len > 253)
        return "a domain name has 1 to 253 characters";
    for (size_t i = 0; i < len; i++) {
        char c = d[i];

        if (c == '.') {
            if (label == 0)
                return "empty label in the domain name";
            if (d[i - 1] == '-')
                return "a label of the domain name ends with '-'";
            dots++;
            label = 0;
            continue;
        }
        if (!cfg_ldh(c))
            return mg_error("invalid character 0x%02x in the domain name "
                            "(letters, digits, '-' and '.' only)",
                            (unsigned)(unsigned char)c);
        if (label == 0 && c == '-')
            return "a label of the domain name starts with '-'";
        if (++label > 63)
            return "a label of the domain name is longer than 63 characters";
    }
    if (label == 0)
        return "empty label in the domain name (no trailing dot)";
    if (d[len - 1] == '-')
        return "a label of the domain name ends with '-'";
    if (dots == 0)
        return "not a fully qualified domain name (no dot)";
    return NULL;
}

static bool
cfg_module_name_ok(const char *n)
{
    size_t len = strlen(n);

    if (len == 0 || len > 32)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') ||
              n[i] == '_'))
            return false;
    }
    return true;
}

static int
cfg_check_modules(const config_setting_t *mods, const char **error_r)
{
    int n = mods != NULL ? config_setting_length(mods) : 0;

    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(mods, (unsigned)i);
        const config_setting_t *name = config_setting_get_member(g, "name");
        const config_setting_t *path = config_setting_get_member(g, "path");
        const char *v;

        if (name == NULL)
            return cfg_fail(error_r, g,
                            "missing 'name'; every module needs "
                            "name = \"...\"");
        if (config_setting_type(name) != CONFIG_TYPE_STRING)
            return cfg_fail(error_r, name, "expected a string, got %s",
                            cfg_type_name(name));
        v = config_setting_get_string(name);
        if (!cfg_module_name_ok(v))
            return cfg_fail(error_r, name,
                            "'%.64s' is not a module name; use 1 to 32 of "
                            "a-z, 0-9 and _",
                            v);
        if (path != NULL && config_setting_type(path) != CONFIG_TYPE_STRING)
            return cfg_fail(error_r, path, "expected a string, got %s",
                            cfg_type_name(path));
        for (int j = 0; j < i; j++) {
            const config_setting_t *o = config_setting_get_member(
                config_setting_get_elem(mods, (unsigned)j), "name");

            if (strcmp(config_setting_get_string(o), v) == 0)
                return cfg_fail(error_r, name,
                                "module '%s' is configured twice (first at "
                                "%s:%u); merge the two sections",
                                v, cfg_file(o), config_setting_source_line(o));
        }
    }
    return MG_OK;
}

/* Whether the account / group exists (reentrant: a reload may run while
 * worker threads do) */
static bool
cfg_user_exists(const char *name)
{
    struct passwd pw, *res = NULL;
    char buf[16384];

    return getpwnam_r(name, &pw, buf, sizeof(buf), &res) == 0 && res != NULL;
}

static bool
cfg_group_exists(const char *name)
{
    struct group gr, *res = NULL;
    char buf[16384];

    return getgrnam_r(name, &gr, buf, sizeof(buf), &res) == 0 && res != NULL;
}

static int
cfg_settings(struct mg_config *cfg, const char *dir,
             const char *default_module_dir, const char **error_r)
{
    config_setting_t *root = config_root_setting(&cfg->cfg);
    struct mg_settings *s = &cfg->s;
    const config_setting_t *m, *tls;
    const char *v;

    if (mg_cfg_check_group(root, cfg_top_schema, NULL, NULL, error_r) != MG_OK)
        return MG_ERROR;

    s->data_dir = cfg_abs(dir, mg_cfg_string(root, "data_dir", MG_STATE_DIR));

    m = config_setting_get_member(root, "email_domain");
    if (m != NULL) {
        const char *why = cfg_domain_problem(config_setting_get_string(m));

        if (why != NULL)
            return cfg_fail(error_r, m, "%s", why);
        s->email_domain = mg_xstrdup(config_setting_get_string(m));
        for (char *p = s->email_domain; *p != '\0'; p++) {
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        }
    }

    s->log_level = MG_LOG_INFO;
    v = mg_cfg_string(root, "log_level", NULL);
    if (v != NULL && mg_log_level_parse(v, &s->log_level) != MG_OK)
        return cfg_fail(error_r, config_setting_get_member(root, "log_level"),
                        "unknown log level '%s'", v);
    v = mg_cfg_string(root, "log_target", NULL);
    if (v != NULL) {
        s->log_target_set = true;
        s->log_target =
            strcmp(v, "syslog") == 0 ? MG_LOGT_SYSLOG : MG_LOGT_STDERR;
    }

    tls = config_setting_get_member(root, "tls");
    if (mg_cfg_check_group(tls, cfg_tls_schema, NULL, "tls", error_r) != MG_OK)
        return MG_ERROR;
    s->tls_cert = cfg_abs(s->data_dir, mg_cfg_string(tls, "cert", "cert.pem"));
    s->tls_key = cfg_abs(s->data_dir, mg_cfg_string(tls, "key", "key.pem"));

    m = config_setting_get_member(root, "user");
    if (m != NULL) {
        v = config_setting_get_string(m);
        if (!cfg_user_exists(v))
            return cfg_fail(error_r, m,
                            "unknown user '%.64s'; create the account or "
                            "fix the setting",
                            v);
        s->user = mg_xstrdup(v);
    }
    m = config_setting_get_member(root, "group");
    if (m != NULL) {
        v = config_setting_get_string(m);
        if (!cfg_group_exists(v))
            return cfg_fail(error_r, m,
                            "unknown group '%.64s'; create the group or "
                            "fix the setting",
                            v);
        s->group = mg_xstrdup(v);
    }

    v = mg_cfg_string(root, "module_dir", NULL);
    if (v != NULL)
        s->module_dir = cfg_abs(dir, v);
    else if (default_module_dir != NULL)
        s->module_dir = mg_xstrdup(default_module_dir);

    s->drain_timeout_ms = (uint32_t)mg_cfg_int(root, "drain_timeout", 5) * 1000;
    s->handshake_timeout_ms =
        (uint32_t)mg_cfg_int(root, "handshake_timeout", 30) * 1000;
    s->max_connections = mg_cfg_int(root, "max_connections", 1000);
    s->max_connections_per_ip = mg_cfg_int(root, "max_connections_per_ip", 50);
    s->worker_threads = (unsigned)mg_cfg_int(root, "worker_threads", 2);
    s->kdf_concurrency = (unsigned)mg_cfg_int(root, "kdf_concurrency", 2);
    s->log_addresses = mg_cfg_bool(root, "log_addresses", false);

    m = config_setting_get_member(root, "store");
    if (mg_cfg_check_group(m, cfg_store_schema, NULL, "store", error_r) !=
        MG_OK)
        return MG_ERROR;
    s->store_map_size = (uint64_t)mg_cfg_int(m, "map_size", 64LL << 30);
    s->store_reserve = (uint64_t)mg_cfg_int(m, "reserve", 64LL << 20);
    s->store_sender_key_lifetime =
        (unsigned)mg_cfg_int(m, "sender_key_lifetime", 60);
    {
        const char *c = mg_cfg_string(m, "cipher", "auto");

        s->store_cipher = MG_CIPHER_AUTO;
        for (size_t i = 0; cfg_store_ciphers[i] != NULL; i++)
            if (strcmp(c, cfg_store_ciphers[i]) == 0)
                s->store_cipher = (enum mg_store_cipher)i;
    }
    s->store_drop_written_pages = mg_cfg_bool(m, "drop_written_pages", true);
    if (s->store_reserve * 10 > s->store_map_size)
        return cfg_fail(error_r, config_setting_get_member(m, "reserve"),
                        "reserve must be at most a tenth of map_size");
    if (mg_cfg_netlist(root, "limit_exempt", &s->limit_exempt, error_r) !=
        MG_OK)
        return MG_ERROR;

    cfg->modules = config_setting_get_member(root, "modules");
    return cfg_check_modules(cfg->modules, error_r);
}

int
mg_config_load(const char *path, const char *default_module_dir,
               struct mg_config **cfg_r, const char **error_r)
{
    struct mg_config *cfg = mg_xcalloc(1, sizeof(*cfg));
    char *dir = cfg_dir_of(path);
    FILE *fp;

    config_init(&cfg->cfg);
    config_set_include_dir(&cfg->cfg, dir);
    cfg->s.file = mg_xstrdup(path);

    /* libconfig only says "file I/O error": find out why first */
    fp = fopen(path, "r");
    if (fp == NULL) {
        *error_r = mg_error("%s: cannot read the configuration file: %s", path,
                            strerror(errno));
        goto fail;
    }
    fclose(fp);
    if (config_read_file(&cfg->cfg, path) != CONFIG_TRUE) {
        const char *f = config_error_file(&cfg->cfg);
        const char *file = f != NULL ? cfg_resolve_file(&cfg->cfg, f) : path;
        const char *text = config_error_text(&cfg->cfg);

        if (text == NULL)
            text = "unknown error";
        if (config_error_type(&cfg->cfg) == CONFIG_ERR_FILE_IO)
            *error_r = mg_error("%s: cannot read the file or a file it "
                                "includes: %s",
                                file, text);
        else if (strcmp(text, "syntax error") == 0)
            *error_r = mg_error("%s:%d: syntax error", file,
                                config_error_line(&cfg->cfg));
        else
            *error_r = mg_error("%s:%d: syntax error: %s", file,
                                config_error_line(&cfg->cfg), text);
        goto fail;
    }
    if (cfg_settings(cfg, dir, default_module_dir, error_r) != MG_OK)
        goto fail;
    free(dir);
    *cfg_r = cfg;
    return MG_OK;

fail:
    free(dir);
    mg_config_free(cfg);
    return MG_ERROR;
}

void
mg_config_free(struct mg_config *cfg)
{
    struct mg_settings *s;

    if (cfg == NULL)
        return;
    s = &cfg->s;
#if LIBCONFIG_VER_MAJOR == 1 && LIBCONFIG_VER_MINOR == 5
    /* 1.5's config_destroy() forgets the copy config_set_include_dir()
     * made (seen with LeakSanitizer) */
    free((void *)cfg->cfg.include_dir);
    cfg->cfg.include_dir = NULL;
#endif
    config_destroy(&cfg->cfg);
    free(s->file);
    free(s->data_dir);
    free(s->email_domain);
    free(s->tls_cert);
    free(s->tls_key);
    free(s->user);
    free(s->group);
    free(s->module_dir);
    mg_netlist_free(&s->limit_exempt);
    free(cfg);
}
