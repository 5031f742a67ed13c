/* core/hooks.c -- named hooks: ordered handlers, suspend and resume */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "mg.h"

const char *const mg_hook_names[] = {
    "smtp.connect",
    "smtp.ehlo",
    "smtp.auth",
    "smtp.mail",
    "smtp.rcpt",
    "smtp.data",
    "smtp.bdat",
    "smtp.data.tee",
    "smtp.data.end",
    "smtp.close",
    "pop3.connect",
    "pop3.login",
    "pop3.retr.tee",
    "message.stored",
    "config.reload",
    "cert.changed",
    NULL,
};

/* One handler; (prio, seq) orders them and is the position a parked run
 * remembers, so handlers may come and go while runs are parked. */
struct hooks_handler {
    int prio;
    uint64_t seq;
    mg_hook_fn fn;
    void *arg;
    char *owner;
};

/* The handlers of one hook name, sorted by (prio, seq). */
struct hooks_hook {
    char *name;
    struct hooks_handler *v;
    size_t n, cap;
};

enum hooks_run_state {
    HOOKS_RUN_IDLE,       /* being driven between handlers */
    HOOKS_RUN_IN_HANDLER, /* a handler is executing */
    HOOKS_RUN_PARKED,     /* a handler suspended; waiting for resume */
};

/* One run in progress. It is findable by id while a handler executes, so
 * a handler that resumes itself before returning MG_SUSPEND works. */
struct hooks_run {
    struct hooks_run *next;
    uint64_t id;
    uint64_t conn_id;
    size_t hook; /* index into mg_hooks.hooks (never shrinks) */
    bool started;
    int last_prio; /* position: the last handler run */
    uint64_t last_seq;
    enum hooks_run_state state;
    bool early; /* resumed while its handler was still executing */
    enum mg_verdict early_v;
    bool cancelled; /* cancelled while its handler was executing */
    struct mg_hook_call *call;
    mg_hook_done_fn done;
    void *arg;
};

struct mg_hooks {
    struct hooks_hook *hooks;
    size_t nhooks;
    uint64_t seq;
    struct hooks_run *runs;
};

/* call ids are unique across generations: a late resume for a run of an
 * older hooks table never matches a new one */
static uint64_t hooks_next_id;

struct mg_hooks *
mg_hooks_new(void)
{
    return mg_xcalloc(1, sizeof(struct mg_hooks));
}

static void
hooks_run_unlink(struct mg_hooks *h, struct hooks_run *r)
{
    struct hooks_run **pp;

    for (pp = &h->runs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            return;
        }
    }
}

void
mg_hooks_free(struct mg_hooks *h)
{
    struct hooks_run *r, *next;
    size_t i, j;

    if (h == NULL)
        return;
    /* parked runs are dropped without done: their sessions are gone.
     * Not to be called from inside a handler of h. */
    for (r = h->runs; r != NULL; r = next) {
        next = r->next;
        free(r);
    }
    for (i = 0; i < h->nhooks; i++) {
        for (j = 0; j < h->hooks[i].n; j++)
            free(h->hooks[i].v[j].owner);
        free(h->hooks[i].v);
        free(h->hooks[i].name);
    }
    free(h->hooks);
    free(h);
}

static bool
hooks_name_known(const char *hook)
{
    size_t i;

    if (strncmp(hook, "x-", 2) == 0 && hook[2] != '\0')
        return true;
    for (i = 0; mg_hook_names[i] != NULL; i++) {
        if (strcmp(mg_hook_names[i], hook) == 0)
            return true;
    }
    return false;
}

static const char *
hooks_known_list(void)
{
    static char list[512];
    size_t i, off = 0;

    list[0] = '\0';
    for (i = 0; mg_hook_names[i] != NULL && off < sizeof(list); i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%s",
                                i > 0 ? ", " : "", mg_hook_names[i]);
    return list;
}

static struct hooks_hook *
hooks_find(const struct mg_hooks *h, const char *hook, size_t *idx_r)
{
    size_t i;

    for (i = 0; i < h->nhooks; i++) {
        if (strcmp(h->hooks[i].name, hook) == 0) {
            if (idx_r != NULL)
                *idx_r = i;
            return &h->hooks[i];
        }
    }
    return NULL;
}

int
mg_hooks_add(struct mg_hooks *h, const char *hook, int prio, mg_hook_fn fn,
             void *arg, const char *owner, const char **error_r)
{
    struct hooks_hook *hk;
    size_t pos;

    if (hook == NULL || !hooks_name_known(hook)) {
        *error_r = mg_error("unknown hook '%s' (known: %s; custom hooks "
                            "start with \"x-\")",
                            hook != NULL ? hook : "", hooks_known_list());
        return MG_ERROR;
    }
    if (fn == NULL) {
        *error_r = mg_error("hook '%s': no handler function", hook);
        return MG_ERROR;
    }
    hk = hooks_find(h, hook, NULL);
    if (hk == NULL) {
        h->hooks = mg_xrealloc(h->hooks, (h->nhooks + 1) * sizeof(*h->hooks));
        hk = &h->hooks[h->nhooks++];
        memset(hk, 0, sizeof(*hk));
        hk->name = mg_xstrdup(hook);
    }
    if (hk->n == hk->cap) {
        hk->cap = hk->cap ? hk->cap * 2 : 4;
        hk->v = mg_xrealloc(hk->v, hk->cap * sizeof(*hk->v));
    }
    /* after every handler of the same priority: ties run in adding order */
    for (pos = hk->n; pos > 0 && hk->v[pos - 1].prio > prio; pos--)
        ;
    memmove(&hk->v[pos + 1], &hk->v[pos], (hk->n - pos) * sizeof(*hk->v));
    hk->v[pos].prio = prio;
    hk->v[pos].seq = ++h->seq;
    hk->v[pos].fn = fn;
    hk->v[pos].arg = arg;
    hk->v[pos].owner = mg_xstrdup(owner != NULL ? owner : "");
    hk->n++;
    return MG_OK;
}

void
mg_hooks_remove_owner(struct mg_hooks *h, const char *owner)
{
    size_t i, j, k;

    if (owner == NULL)
        owner = "";
    for (i = 0; i < h->nhooks; i++) {
        struct hooks_hook *hk = &h->hooks[i];

        for (j = k = 0; j < hk->n; j++) {
            if (strcmp(hk->v[j].owner, owner) == 0)
                free(hk->v[j].owner);
            else
                hk->v[k++] = hk->v[j];
        }
        hk->n = k;
    }
}

bool
mg_hooks_has(const struct mg_hooks *h, const char *hook)
{
    const struct hooks_hook *hk = hooks_find(h, hook, NULL);

    return hk != NULL && hk->n > 0;
}

/* The first handler after the run's position, or NULL. */
static const struct hooks_handler *
hooks_next(const struct mg_hooks *h, const struct hooks_run *r)
{
    const struct hooks_hook *hk = &h->hooks[r->hook];
    size_t i;

    if (!r->started)
        return hk->n > 0 ? &hk->v[0] : NULL;
    for (i = 0; i < hk->n; i++) {
        const struct hooks_handler *hd = &hk->v[i];

        if (hd->prio > r->last_prio ||
            (hd->prio == r->last_prio && hd->seq > r->last_seq))
            return hd;
    }
    return NULL;
}

/*
 * Run handlers from the run's position on. Returns a final verdict (the
 * run is freed), or MG_SUSPEND (the run is parked, or was cancelled from
 * inside a handler and freed).
 */
static enum mg_verdict
hooks_drive(struct mg_hooks *h, struct hooks_run *r)
{
    const struct hooks_handler *hd;
    enum mg_verdict v;

    for (;;) {
        mg_hook_fn fn;
        void *arg;

        hd = hooks_next(h, r);
        if (hd == NULL) {
            v = MG_PASS;
            break;
        }
        r->started = true;
        r->last_prio = hd->prio;
        r->last_seq = hd->seq;
        /* the handler may add or remove handlers: hd is not used after */
        fn = hd->fn;
        arg = hd->arg;
        r->state = HOOKS_RUN_IN_HANDLER;
        r->early = false;
        v = fn(r->call, arg);
        r->state = HOOKS_RUN_IDLE;
        if (r->cancelled) {
            hooks_run_unlink(h, r);
            free(r);
            return MG_SUSPEND;
        }
        if (v == MG_SUSPEND && r->early) {
            v = r->early_v;
            r->early = false;
        }
        if (v == MG_PASS)
            continue;
        if (v == MG_SUSPEND) {
            r->state = HOOKS_RUN_PARKED;
            return MG_SUSPEND;
        }
        if (v != MG_ACCEPT && v != MG_TEMPFAIL && v != MG_PERMFAIL) {
            /* a module returned garbage: fail safe, and temporarily */
            mg_log(MG_LOG_ERROR,
                   "hook %s: a handler returned %d; treated "
                   "as a temporary failure",
                   r->call->hook, (int)v);
            v = MG_TEMPFAIL;
        }
        break;
    }
    hooks_run_unlink(h, r);
    free(r);
    return v;
}

enum mg_verdict
mg_hooks_run(struct mg_hooks *h, struct mg_hook_call *call,
             mg_hook_done_fn done, void *arg)
{
    struct hooks_run *r;
    size_t idx;

    call->id = ++hooks_next_id;
    if (hooks_find(h, call->hook, &idx) == NULL)
        return MG_PASS;
    r = mg_xcalloc(1, sizeof(*r));
    r->id = call->id;
    r->conn_id = call->conn_id;
    r->hook = idx;
    r->call = call;
    r->done = done;
    r->arg = arg;
    r->next = h->runs;
    h->runs = r;
    return hooks_drive(h, r);
}

int
mg_hooks_resume(struct mg_hooks *h, uint64_t call_id, enum mg_verdict v,
                const struct mg_reply *reply)
{
    struct hooks_run *r;
    struct mg_hook_call *call;
    mg_hook_done_fn done;
    void *arg;

    for (r = h->runs; r != NULL; r = r->next) {
        if (r->id == call_id && !r->cancelled)
            break;
    }
    if (r == NULL)
        return MG_DECLINED;
    if (v != MG_PASS && v != MG_ACCEPT && v != MG_TEMPFAIL && v != MG_PERMFAIL)
        return MG_ERROR;
    if (r->state == HOOKS_RUN_IN_HANDLER) {
        /* the handler answers before returning MG_SUSPEND: remember */
        if (r->early)
            return MG_DECLINED;
        if (reply != NULL)
            r->call->reply = *reply;
        r->early = true;
        r->early_v = v;
        return MG_OK;
    }
    if (r->state != HOOKS_RUN_PARKED)
        return MG_DECLINED;
    if (reply != NULL)
        r->call->reply = *reply;
    call = r->call;
    done = r->done;
    arg = r->arg;
    if (v == MG_PASS) {
        r->state = HOOKS_RUN_IDLE;
        v = hooks_drive(h, r);
        if (v == MG_SUSPEND)
            return MG_OK; /* parked again under the same id */
    } else {
        hooks_run_unlink(h, r);
        free(r);
    }
    if (done != NULL)
        done(call, v, arg);
    return MG_OK;
}

void
mg_hooks_cancel_conn(struct mg_hooks *h, uint64_t conn_id)
{
    struct hooks_run **pp = &h->runs;

    if (conn_id == 0)
        return; /* 0 is "no conn", never a session to cancel */
    while (*pp != NULL) {
        struct hooks_run *r = *pp;

        if (r->conn_id != conn_id) {
            pp = &r->next;
        } else if (r->state == HOOKS_RUN_PARKED) {
            *pp = r->next;
            free(r);
        } else {
            /* its handler is on the stack: hooks_drive frees it */
            r->cancelled = true;
            pp = &r->next;
        }
    }
}
