/*
 * core/generation.c -- configuration generations.
 *
 * Every start and every SIGHUP builds a new generation: the config is read
 * and checked, each module configures its own state and stages listeners
 * and hooks. Only when all of that worked does the new generation take
 * over the listening sockets (by address) and the old one stop; the old
 * one is released when its last session ends. On any error the new
 * generation is dropped and the old one goes on as if nothing happened.
 */
#include "config.h"

#include <libgen.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mailgate/hooks.h>

#include "mg.h"

static struct mg_generation *gen_current;
static struct mg_generation *gen_live[64]; /* started, not yet released */
static uint64_t gen_next_id = 1;

/* Members of a module entry that belong to the core. */
static const struct mg_setting gen_module_keys[] = {
    {.name = "name", .type = MG_SET_STRING},
    {.name = "path", .type = MG_SET_STRING},
    {.name = "listen", .type = MG_SET_LIST},
    {.name = NULL},
};

struct mg_generation *
mg_generation_current(void)
{
    return gen_current;
}

static void
gen_track(struct mg_generation *gen, bool add)
{
    for (size_t i = 0; i < sizeof(gen_live) / sizeof(gen_live[0]); i++) {
        if (add && gen_live[i] == NULL) {
            gen_live[i] = gen;
            return;
        }
        if (!add && gen_live[i] == gen) {
            gen_live[i] = NULL;
            return;
        }
    }
    if (add)
        mg_log(MG_LOG_WARNING,
               "more than %zu generations alive: sessions "
               "from old configurations are still open",
               sizeof(gen_live) / sizeof(gen_live[0]));
}

void
mg_generation_each(void (*fn)(struct mg_generation *gen, void *arg), void *arg)
{
    for (size_t i = 0; i < sizeof(gen_live) / sizeof(gen_live[0]); i++) {
        if (gen_live[i] != NULL)
            fn(gen_live[i], arg);
    }
}

/* Free what configure() built; the module code stays loaded. */
static void
gen_free(struct mg_generation *gen)
{
    for (size_t i = gen->nmods; i-- > 0;) {
        struct mg_modctx *m = &gen->mods[i];

        if (m->configured && m->mod->release != NULL)
            m->mod->release(m->state);
        free(m->logname);
    }
    if (gen->hooks != NULL)
        mg_hooks_free(gen->hooks);
    mg_listeners_free(gen);
    if (gen->tls != NULL)
        SSL_CTX_free(gen->tls);
    if (gen->config != NULL)
        mg_config_free(gen->config);
    free(gen->mods);
    free(gen);
}

/* A module's path: absolute, or relative to the config file's folder. */
static char *
gen_module_path(const char *config_file, const char *path)
{
    char *copy, *dir, *full;

    if (path == NULL)
        return NULL;
    if (path[0] == '/')
        return mg_xstrdup(path);
    copy = mg_xstrdup(config_file);
    dir = dirname(copy);
    full = mg_xasprintf("%s/%s", dir, path);
    free(copy);
    return full;
}

static bool
gen_has_listen(const config_setting_t *sect)
{
    return config_setting_get_member(sect, "listen") != NULL;
}

static int
gen_configure_module(struct mg_generation *gen, unsigned idx,
                     const char **error_r)
{
    config_setting_t *sect = config_setting_get_elem(gen->config->modules, idx);
    const char *name = mg_cfg_string(sect, "name", "");
    char *path =
        gen_module_path(gen->config->s.file, mg_cfg_string(sect, "path", NULL));
    const struct mg_module *mod;
    struct mg_modctx *m;
    const char *err = NULL;
    size_t before = 0;
    char what[64];

    mod = mg_module_load(name, path, gen->config->s.module_dir, &err);
    free(path);
    if (mod == NULL) {
        *error_r = mg_error("%s: modules.[%u]: %s", mg_cfg_where(sect, "name"),
                            idx, err);
        return MG_ERROR;
    }
    snprintf(what, sizeof(what), "modules.[%u]", idx);
    if (mg_cfg_check_group(sect, mod->settings, gen_module_keys, what,
                           error_r) != MG_OK)
        return MG_ERROR;

    m = &gen->mods[gen->nmods++];
    m->gen = gen;
    m->mod = mod;
    m->sect = sect;
    m->logname = mg_xstrdup(name);
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next)
        before++;
    err = NULL;
    if (mod->configure(m, mg_core_api_get(), sect, &m->state, &err) != MG_OK) {
        *error_r = mg_error("%s: module %s: %s", mg_cfg_where(sect, NULL), name,
                            err != NULL ? err : "configuration failed");
        return MG_ERROR;
    }
    m->configured = true;

    size_t after = 0;

    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next)
        after++;
    if (gen_has_listen(sect) && after == before) {
        *error_r = mg_error("%s: %s.listen: module %s has no listeners",
                            mg_cfg_where(sect, "listen"), what, name);
        return MG_ERROR;
    }
    return MG_OK;
}

/* Remember which certificate this generation serves, so that a reload
 * that brings a new one can say so (cert.changed). */
static void
gen_cert_fingerprint(struct mg_generation *gen)
{
    X509 *x = SSL_CTX_get0_certificate(gen->tls);
    unsigned int n = sizeof(gen->cert_fp);

    if (x == NULL || X509_digest(x, EVP_sha256(), gen->cert_fp, &n) != 1)
        memset(gen->cert_fp, 0, sizeof(gen->cert_fp));
}

int
mg_generation_build(const char *path, const char *module_dir,
                    struct mg_generation **gen_r, const char **error_r)
{
    struct mg_generation *gen = mg_xcalloc(1, sizeof(*gen));
    unsigned n;
    bool tls = false;

    *gen_r = NULL;
    if (mg_config_load(path, module_dir, &gen->config, error_r) != MG_OK) {
        free(gen);
        return MG_ERROR;
    }
    gen->id = gen_next_id++;
    gen->hooks = mg_hooks_new();
    n = gen->config->modules != NULL
            ? (unsigned)config_setting_length(gen->config->modules)
            : 0;
    gen->mods = mg_xcalloc(n ? n : 1, sizeof(*gen->mods));
    mg_api_building(gen);
    for (unsigned i = 0; i < n; i++) {
        if (gen_configure_module(gen, i, error_r) != MG_OK) {
            mg_api_building(NULL);
            gen_free(gen);
            return MG_ERROR;
        }
    }
    mg_api_building(NULL);

    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next)
        tls = tls || l->tls != MG_TLS_NONE;
    if (tls) {
        const char *err;

        gen->tls = mg_tls_server_ctx(gen->config->s.tls_cert,
                                     gen->config->s.tls_key, &err);
        if (gen->tls == NULL) {
            *error_r = mg_error("%s: TLS listeners need a certificate: %s",
                                gen->config->s.file, err);
            gen_free(gen);
            return MG_ERROR;
        }
        gen_cert_fingerprint(gen);
    }
    *gen_r = gen;
    return MG_OK;
}

static void
gen_fire_cert_changed(struct mg_generation *gen, struct mg_generation *old,
                      const char *source)
{
    struct mg_hook_cert_changed data = {
        .cert = gen->config->s.tls_cert,
        .key = gen->config->s.tls_key,
        .source = source,
    };
    struct mg_hook_call call = {
        .hook = "cert.changed",
        .data = &data,
    };

    if (gen->tls == NULL || old == NULL || old->tls == NULL ||
        memcmp(gen->cert_fp, old->cert_fp, sizeof(gen->cert_fp)) == 0)
        return;
    data.description = mg_tls_ctx_describe(gen->tls);
    mg_log(MG_LOG_INFO, "new certificate for new connections (%s): %s", source,
           data.description);
    if (mg_hooks_run(gen->hooks, &call, NULL, NULL) == MG_SUSPEND)
        mg_log(MG_LOG_WARNING, "a cert.changed handler suspended; "
                               "cert.changed is informational");
}

static void
gen_stop_modules(struct mg_generation *gen)
{
    for (size_t i = gen->nmods; i-- > 0;) {
        struct mg_modctx *m = &gen->mods[i];

        if (m->started && m->mod->stop != NULL)
            m->mod->stop(m->state);
        m->started = false;
    }
}

static void
gen_fire_reload(struct mg_generation *gen, struct mg_generation *old)
{
    struct mg_hook_config_reload data = {
        .old_generation = old != NULL ? old->id : 0,
        .new_generation = gen->id,
        .file = gen->config->s.file,
    };
    struct mg_hook_call call = {
        .hook = "config.reload",
        .data = &data,
    };

    if (old == NULL)
        return; /* the first start is no reload */
    /* informational: a handler that suspends is not waited for */
    if (mg_hooks_run(gen->hooks, &call, NULL, NULL) == MG_SUSPEND)
        mg_log(MG_LOG_WARNING, "a config.reload handler suspended; "
                               "config.reload is informational");
}

int
mg_generation_start(struct mg_generation *gen, struct mg_generation *old,
                    const char *source, const char **error_r)
{
    if (mg_listeners_open(gen, old, error_r) != MG_OK)
        return MG_ERROR;
    for (size_t i = 0; i < gen->nmods; i++) {
        struct mg_modctx *m = &gen->mods[i];
        const char *err = NULL;

        if (m->mod->start != NULL && m->mod->start(m->state, &err) != MG_OK) {
            *error_r = mg_error("module %s did not start: %s", m->logname,
                                err != NULL ? err : "unknown error");
            gen_stop_modules(gen);
            mg_listeners_close(gen);
            return MG_ERROR;
        }
        m->started = true;
    }
    mg_listeners_start(gen);
    mg_listeners_commit(gen, old);
    gen->started = true;
    gen->refs++; /* held while current */
    gen_track(gen, true);
    gen_current = gen;
    /* the hooks see the old generation before it may be released */
    gen_fire_cert_changed(gen, old, source);
    gen_fire_reload(gen, old);
    if (old != NULL)
        mg_generation_stop(old);
    return MG_OK;
}

void
mg_generation_stop(struct mg_generation *gen)
{
    if (gen->stopping)
        return;
    gen->stopping = true;
    mg_listeners_stop(gen);
    mg_listeners_close(gen); /* removed listeners refuse at once */
    gen_stop_modules(gen);
    if (gen_current == gen)
        gen_current = NULL;
    mg_log(MG_LOG_DEBUG, "generation %llu stopped (%u references)",
           (unsigned long long)gen->id, gen->refs);
    mg_generation_unref(gen);
}

void
mg_generation_ref(struct mg_generation *gen)
{
    gen->refs++;
}

void
mg_generation_unref(struct mg_generation *gen)
{
    if (gen->refs == 0)
        mg_fatalx("generation %llu: unbalanced unref",
                  (unsigned long long)gen->id);
    if (--gen->refs > 0 || !gen->stopping)
        return;
    mg_log(MG_LOG_DEBUG, "generation %llu released",
           (unsigned long long)gen->id);
    gen_track(gen, false);
    gen_free(gen);
}

void
mg_generation_discard(struct mg_generation *gen)
{
    if (gen == NULL)
        return;
    if (gen->started)
        mg_fatalx("discarding a started generation");
    gen_free(gen);
}
