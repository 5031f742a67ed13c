/* core/api.c -- the table of core functions handed to modules */
#include "config.h"

#include <stdio.h>

#include "mg.h"
#include "store.h"

static struct mg_generation *api_building;

void
mg_api_building(struct mg_generation *gen)
{
    api_building = gen;
}

/* Settings that modules read while configuring come from the generation
 * being built; at any other time from the current one. */
static const struct mg_settings *
api_settings(void)
{
    struct mg_generation *gen =
        api_building != NULL ? api_building : mg_generation_current();

    return gen != NULL ? &gen->config->s : NULL;
}

uint64_t
mg_now_ms(void)
{
    return (uint64_t)(ev_now(mg_loop) * 1000.0);
}

static void
api_vlog(struct mg_modctx *m, enum mg_log_level level, const char *fmt,
         va_list ap)
{
    mg_vlogp(level, m != NULL ? m->logname : "module", fmt, ap);
}

static void
api_log(struct mg_modctx *m, enum mg_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    api_vlog(m, level, fmt, ap);
    va_end(ap);
}

static const char *
api_email_domain(void)
{
    const struct mg_settings *s = api_settings();

    return s != NULL ? s->email_domain : NULL;
}

static const char *
api_data_dir(void)
{
    const struct mg_settings *s = api_settings();

    return s != NULL ? s->data_dir : NULL;
}

static const char *
api_setting_where(const config_setting_t *sect, const char *name)
{
    return mg_cfg_where(sect, name);
}

static int
api_listen(struct mg_modctx *m, const config_setting_t *sect,
           const struct mg_listen_default *defaults,
           const struct mg_listener_ops *ops, void *arg, const char **error_r)
{
    config_setting_t *list = config_setting_get_member(sect, "listen");

    if (m->gen == NULL || m->gen != api_building) {
        *error_r = "listen() is only possible inside configure()";
        return MG_ERROR;
    }
    if (ops == NULL || ops->on_accept == NULL || ops->on_shutdown == NULL) {
        *error_r = "listen(): ops need on_accept and on_shutdown";
        return MG_ERROR;
    }
    if (list == NULL) {
        for (const struct mg_listen_default *d = defaults;
             d != NULL && d->port != 0; d++) {
            if (mg_listener_stage(m->gen, m, NULL, d, ops, arg, error_r) !=
                MG_OK)
                return MG_ERROR;
        }
        return MG_OK;
    }
    if (!config_setting_is_list(list) && !config_setting_is_array(list)) {
        *error_r = mg_error("%s: listen must be a list ( { port = …; }, … )",
                            mg_cfg_where(sect, "listen"));
        return MG_ERROR;
    }
    for (int i = 0; i < config_setting_length(list); i++) {
        config_setting_t *entry = config_setting_get_elem(list, (unsigned)i);
        char what[64];

        snprintf(what, sizeof(what), "%s.listen.[%d]", m->logname, i);
        if (!config_setting_is_group(entry)) {
            *error_r = mg_error("%s: %s: expected a group { port = …; }",
                                mg_cfg_where(entry, NULL), what);
            return MG_ERROR;
        }
        if (mg_cfg_check_group(entry, mg_listener_schema, ops->settings, what,
                               error_r) != MG_OK)
            return MG_ERROR;
        if (mg_listener_stage(m->gen, m, entry, NULL, ops, arg, error_r) !=
            MG_OK)
            return MG_ERROR;
    }
    return MG_OK;
}

static int
api_connect(struct mg_modctx *m, const struct mg_connect_spec *spec,
            mg_connect_fn done, void *arg, const char **error_r)
{
    return mg_outbound_connect(m, spec, done, arg, error_r);
}

static int
api_hook_add(struct mg_modctx *m, const char *hook, int prio, mg_hook_fn fn,
             void *arg, const char **error_r)
{
    if (m->gen == NULL || m->gen != api_building) {
        *error_r = "hook_add() is only possible inside configure()";
        return MG_ERROR;
    }
    return mg_hooks_add(m->gen->hooks, hook, prio, fn, arg, m->logname,
                        error_r);
}

/* A session runs the hooks of the generation it started in. */
static struct mg_hooks *
api_hooks_for(uint64_t conn_id)
{
    struct mg_conn *c = conn_id != 0 ? mg_conn_api.find(conn_id) : NULL;
    struct mg_generation *gen =
        c != NULL ? mg_conn_generation(c) : mg_generation_current();

    return gen != NULL ? gen->hooks : NULL;
}

static enum mg_verdict
api_hook_run(struct mg_hook_call *call, mg_hook_done_fn done, void *arg)
{
    struct mg_hooks *h = api_hooks_for(call->conn_id);

    if (h == NULL)
        return MG_PASS;
    return mg_hooks_run(h, call, done, arg);
}

struct api_resume {
    uint64_t id;
    enum mg_verdict v;
    const struct mg_reply *reply;
    int result;
};

static void
api_resume_in(struct mg_generation *gen, void *arg)
{
    struct api_resume *r = arg;

    if (r->result == MG_DECLINED)
        r->result = mg_hooks_resume(gen->hooks, r->id, r->v, r->reply);
}

static int
api_hook_resume(uint64_t call_id, enum mg_verdict v,
                const struct mg_reply *reply)
{
    struct api_resume r = {call_id, v, reply, MG_DECLINED};

    mg_generation_each(api_resume_in, &r);
    return r.result;
}

static bool
api_hook_has(const char *hook)
{
    struct mg_generation *gen =
        api_building != NULL ? api_building : mg_generation_current();

    return gen != NULL && mg_hooks_has(gen->hooks, hook);
}

/* ---------------------------------------------------------------- timers */

struct api_timer {
    ev_timer w;
    uint64_t id;
    mg_timer_fn fn;
    void *arg;
    struct api_timer *next;
};

#define API_TIMER_BUCKETS 1024
static struct api_timer *api_timers[API_TIMER_BUCKETS];
static uint64_t api_timer_next = 1;

static struct api_timer **
api_timer_slot(uint64_t id)
{
    struct api_timer **pp = &api_timers[id % API_TIMER_BUCKETS];

    while (*pp != NULL && (*pp)->id != id)
        pp = &(*pp)->next;
    return pp;
}

static void
api_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct api_timer *t = w->data;
    struct api_timer **pp = api_timer_slot(t->id);

    (void)loop;
    (void)revents;
    *pp = t->next;
    t->fn(t->arg);
    free(t);
}

static uint64_t
api_timer_add(struct mg_modctx *m, uint64_t ms, mg_timer_fn fn, void *arg)
{
    struct api_timer *t = mg_xcalloc(1, sizeof(*t));

    (void)m;
    t->id = api_timer_next++;
    t->fn = fn;
    t->arg = arg;
    ev_timer_init(&t->w, api_timer_cb, (double)ms / 1000.0, 0.);
    t->w.data = t;
    t->next = api_timers[t->id % API_TIMER_BUCKETS];
    api_timers[t->id % API_TIMER_BUCKETS] = t;
    ev_timer_start(mg_loop, &t->w);
    return t->id;
}

static void
api_timer_cancel(uint64_t id)
{
    struct api_timer **pp = api_timer_slot(id);
    struct api_timer *t = *pp;

    if (t == NULL)
        return;
    *pp = t->next;
    ev_timer_stop(mg_loop, &t->w);
    free(t);
}

/** Cancel every timer still pending (at exit, after the modules). */
void
mg_api_timers_free(void)
{
    for (size_t i = 0; i < API_TIMER_BUCKETS; i++) {
        while (api_timers[i] != NULL)
            api_timer_cancel(api_timers[i]->id);
    }
}

/* A job in flight keeps its generation (and so the module's state)
 * alive until its completion ran. */
struct api_job {
    struct mg_generation *gen;
    mg_work_fn work;
    mg_work_done_fn done;
    void *arg;
};

static void
api_job_work(void *p)
{
    struct api_job *j = p;

    if (j->work != NULL)
        j->work(j->arg);
}

static void
api_job_done(void *p)
{
    struct api_job *j = p;

    if (j->done != NULL)
        j->done(j->arg);
    if (j->gen != NULL)
        mg_generation_unref(j->gen);
    free(j);
}

static int
api_work_submit(struct mg_modctx *m, mg_work_fn work, mg_work_done_fn done,
                void *arg)
{
    struct api_job *j = mg_xcalloc(1, sizeof(*j));
    int r;

    j->gen = m != NULL ? m->gen : NULL;
    j->work = work;
    j->done = done;
    j->arg = arg;
    if (j->gen != NULL)
        mg_generation_ref(j->gen);
    r = mg_workers_submit(api_job_work, api_job_done, j);
    if (r != MG_OK) {
        if (j->gen != NULL)
            mg_generation_unref(j->gen);
        free(j);
    }
    return r;
}

static bool
api_setting_bool(const config_setting_t *sect, const char *name, bool def)
{
    return mg_cfg_bool(sect, name, def);
}

static int64_t
api_setting_int(const config_setting_t *sect, const char *name, int64_t def)
{
    return mg_cfg_int(sect, name, def);
}

static const char *
api_setting_string(const config_setting_t *sect, const char *name,
                   const char *def)
{
    return mg_cfg_string(sect, name, def);
}

static const char *
api_setting_strings(const config_setting_t *sect, const char *name, unsigned i)
{
    return mg_cfg_strings(sect, name, i);
}

void (*mg_reload_request)(const char *source);

static void
api_reload(const char *source)
{
    if (mg_reload_request != NULL)
        mg_reload_request(source != NULL ? source : "module");
}

static int
api_net_match(const char *net, const struct sockaddr *sa, const char **error_r)
{
    struct mg_cidr c;
    const char *error = NULL;

    if (mg_cidr_parse(net, &c, &error) != MG_OK) {
        if (error_r != NULL)
            *error_r = error;
        return MG_ERROR;
    }
    return sa != NULL && mg_cidr_match(&c, sa) ? 1 : 0;
}

static const struct mg_core_api api_table = {
    .abi_version = MG_ABI_VERSION,
    .size = sizeof(struct mg_core_api),
    .conn = &mg_conn_api,
    .store = NULL,
    .log = api_log,
    .vlog = api_vlog,
    .setting_bool = api_setting_bool,
    .setting_int = api_setting_int,
    .setting_string = api_setting_string,
    .setting_strings = api_setting_strings,
    .setting_where = api_setting_where,
    .email_domain = api_email_domain,
    .data_dir = api_data_dir,
    .listen = api_listen,
    .connect = api_connect,
    .hook_add = api_hook_add,
    .hook_run = api_hook_run,
    .hook_resume = api_hook_resume,
    .hook_has = api_hook_has,
    .timer_add = api_timer_add,
    .timer_cancel = api_timer_cancel,
    .work_submit = api_work_submit,
    .post = mg_post,
    .now_ms = mg_now_ms,
    .reload = api_reload,
    .net_match = api_net_match,
};

static struct mg_core_api api_live;

const struct mg_core_api *
mg_core_api_get(void)
{
    /* the loop pointer is only known at run time */
    if (api_live.size == 0) {
        api_live = api_table;
        api_live.loop = mg_loop;
    }
    api_live.store = mg_store_api_get(); /* NULL until the store is open */
    return &api_live;
}
