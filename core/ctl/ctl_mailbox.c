/* core/ctl/ctl_mailbox.c -- `mailgatectl mailbox ...`
 *
 * mailgatectl opens the store itself (LMDB allows several processes) and
 * writes through its own writer thread. The daemon reads mailbox records
 * per RCPT and per login, so a committed change is seen at once; there is
 * nothing to signal. Read-modify-write happens inside one write
 * transaction, so counters the daemon updates meanwhile are not lost.
 */
#include "config.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "store.h"

#define MBOX_NAME_MAX        200
#define MBOX_DESCRIPTION_MAX 2000
#define MBOX_TARGET_MAX      255
#define MBOX_LIST_MAX        256
/* deleted ids are remembered so that they are never handed out again */
#define MBOX_TOMBSTONE "mailbox-deleted/"

/* why an op refused */
enum mbox_refusal {
    MBOX_OK = 0,
    MBOX_NOT_FOUND,
    MBOX_EXISTS,
    MBOX_ACTIVE,
    MBOX_NOT_EMPTY,
};

/* changes asked for by `edit`; -1 = unchanged */
struct mbox_edit {
    const char *name;
    const char *description;
    int active;
    int accept_journal;
    int accept_proxy;
    int require_tls;
    bool set_targets;
    char **targets;
    size_t ntargets;
    bool set_networks;
    char **networks;
    size_t nnetworks;
};

/* one write to the store */
struct mbox_op {
    struct mg_store_op op;
    const char *id;
    struct mg_mailbox *mb;        /* create: the record; reset: new keys */
    const struct mbox_edit *edit; /* edit */
    enum mbox_refusal refusal;
    uint64_t nmessages; /* delete/reset refusal: messages present */
};

/* a mailbox as printed */
struct mbox_view {
    struct mg_mailbox mb;
    bool has_oldest;
    uint64_t oldest;
};

/* ------------------------------------------------------------ helpers */

static int
mbox_fail(struct mg_store_op *op, const char *error)
{
    snprintf(op->error, sizeof(op->error), "%s", error);
    return MG_ERROR;
}

static char *
mbox_tombstone_key(const char *id)
{
    return mg_xasprintf("%s%s", MBOX_TOMBSTONE, id);
}

static void
mbox_strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **
mbox_strv_copy(char *const *v, size_t n)
{
    char **out = n > 0 ? mg_xcalloc(n, sizeof(*out)) : NULL;

    for (size_t i = 0; i < n; i++)
        out[i] = mg_xstrdup(v[i]);
    return out;
}

/* text a person typed: bounded, no control characters */
static int
mbox_text_check(const char *what, const char *s, bool required, size_t max)
{
    size_t n = strlen(s);

    if (required && n == 0) {
        ctl_err("the %s must not be empty", what);
        return MG_ERROR;
    }
    if (n > max) {
        ctl_err("the %s is too long (%zu bytes, at most %zu)", what, n, max);
        return MG_ERROR;
    }
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;

        if (c < 0x20 || c == 0x7f) {
            ctl_err("the %s must not contain control characters (line "
                    "breaks, tabs)",
                    what);
            return MG_ERROR;
        }
    }
    return MG_OK;
}

/* "a, b,c" → items; networks are CIDRs, targets host[:port], IP or CIDR */
static int
mbox_list_parse(const char *opt, const char *text, bool networks, char ***v_r,
                size_t *n_r)
{
    char *copy = mg_xstrdup(text), *save = NULL, *item;
    char **v = NULL;
    size_t n = 0;
    const char *error;
    struct mg_cidr cidr;

    for (item = strtok_r(copy, ",", &save); item != NULL;
         item = strtok_r(NULL, ",", &save)) {
        char *end;

        while (*item == ' ')
            item++;
        end = item + strlen(item);
        while (end > item && end[-1] == ' ')
            *--end = '\0';
        if (*item == '\0')
            continue;
        if (n == MBOX_LIST_MAX) {
            ctl_err("%s: too many entries (at most %d)", opt, MBOX_LIST_MAX);
            goto fail;
        }
        if (networks || strchr(item, '/') != NULL) {
            if (mg_cidr_parse(item, &cidr, &error) != MG_OK) {
                ctl_err("%s: '%s' is not an address or network (%s); give "
                        "e.g. 192.0.2.0/24 or 2001:db8::/32, separated by "
                        "commas",
                        opt, item, error);
                goto fail;
            }
        } else if (strlen(item) > MBOX_TARGET_MAX ||
                   strpbrk(item, " \t\r\n\"'\\") != NULL) {
            ctl_err("%s: '%s' is not a host, host:port, address or network",
                    opt, item);
            goto fail;
        }
        v = mg_xrealloc(v, (n + 1) * sizeof(*v));
        v[n++] = mg_xstrdup(item);
    }
    if (n == 0) {
        ctl_err("%s: empty list; give entries separated by commas, or %s", opt,
                networks ? "'any'" : "'none'");
        goto fail;
    }
    free(copy);
    *v_r = v;
    *n_r = n;
    return MG_OK;

fail:
    mbox_strv_free(v, n);
    free(copy);
    return MG_ERROR;
}

static int
mbox_check_id(const char *id)
{
    if (mg_mailbox_id_valid(id))
        return MG_OK;
    ctl_err("'%s' is not a mailbox id (8-32 characters a-z, 0-9); see "
            "mailgatectl mailbox list",
            id);
    return MG_ERROR;
}

static int
mbox_need_domain(struct ctl *ctl)
{
    if (ctl->cfg->s.email_domain != NULL && ctl->cfg->s.email_domain[0])
        return MG_OK;
    ctl_err("email_domain is not set in %s: mailbox addresses are "
            "<id>@<email_domain>; add a line like\n"
            "  email_domain = \"msgw.example.com\";\n"
            "to the configuration file",
            ctl->conf_file);
    return MG_ERROR;
}

/* ----------------------------------------------------------- store ops */

static int
mbox_apply_create(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct mbox_op *o = op->arg;
    struct mg_mailbox old = {0};
    struct mg_buf val;
    const char *error;
    char *key;
    int rc;

    rc = mg_rec_mailbox_get(st, txn, o->mb->id, &old, &error);
    if (rc == MG_OK) {
        mg_mailbox_clear(&old);
        o->refusal = MBOX_EXISTS;
        return mbox_fail(op, "the new id exists already");
    }
    if (rc != MG_DECLINED)
        return mbox_fail(op, error);
    key = mbox_tombstone_key(o->mb->id);
    mg_buf_init(&val);
    rc = mg_rec_kv_get(st, txn, key, &val, &error);
    mg_buf_free(&val);
    free(key);
    if (rc == MG_OK) {
        o->refusal = MBOX_EXISTS;
        return mbox_fail(op, "the new id was used before");
    }
    if (rc != MG_DECLINED)
        return mbox_fail(op, error);
    if (mg_rec_mailbox_put(st, txn, o->mb, &error) != MG_OK)
        return mbox_fail(op, error);
    return MG_OK;
}

/* get the mailbox inside the write transaction; MG_DECLINED: refused */
static int
mbox_get_for_write(struct mg_store *st, MDB_txn *txn, struct mbox_op *o,
                   struct mg_mailbox *m)
{
    const char *error;
    int rc = mg_rec_mailbox_get(st, txn, o->id, m, &error);

    if (rc == MG_DECLINED) {
        o->refusal = MBOX_NOT_FOUND;
        mbox_fail(&o->op, "no such mailbox");
        return MG_DECLINED;
    }
    if (rc != MG_OK) {
        mbox_fail(&o->op, error);
        return MG_ERROR;
    }
    return MG_OK;
}

static void
mbox_edit_apply(struct mg_mailbox *m, const struct mbox_edit *e)
{
    if (e->name != NULL) {
        free(m->name);
        m->name = mg_xstrdup(e->name);
    }
    if (e->description != NULL) {
        free(m->description);
        m->description = mg_xstrdup(e->description);
    }
    if (e->active >= 0)
        m->active = e->active;
    if (e->accept_journal >= 0)
        m->accept_journal = e->accept_journal;
    if (e->accept_proxy >= 0)
        m->accept_proxy = e->accept_proxy;
    if (e->require_tls >= 0)
        m->require_tls = e->require_tls;
    if (e->set_targets) {
        mbox_strv_free(m->targets, m->ntargets);
        m->targets = mbox_strv_copy(e->targets, e->ntargets);
        m->ntargets = e->ntargets;
    }
    if (e->set_networks) {
        mbox_strv_free(m->networks, m->nnetworks);
        m->networks = mbox_strv_copy(e->networks, e->nnetworks);
        m->nnetworks = e->nnetworks;
    }
}

static int
mbox_apply_edit(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct mbox_op *o = op->arg;
    struct mg_mailbox m = {0};
    const char *error;
    int rc;

    if (mbox_get_for_write(st, txn, o, &m) != MG_OK)
        return MG_ERROR;
    mbox_edit_apply(&m, o->edit);
    rc = mg_rec_mailbox_put(st, txn, &m, &error);
    mg_mailbox_clear(&m);
    return rc == MG_OK ? MG_OK : mbox_fail(op, error);
}

/* delete and reset-password: only a suspended mailbox without messages
 * (counted ones, and any still being written or held) */
static int
mbox_check_empty_suspended(struct mg_store *st, MDB_txn *txn, struct mbox_op *o,
                           const struct mg_mailbox *m)
{
    struct mg_msg_ref *v = NULL;
    const char *error;
    size_t n = 0;

    if (m->active) {
        o->refusal = MBOX_ACTIVE;
        return mbox_fail(&o->op, "the mailbox is active");
    }
    if (mg_rec_msg_list(st, txn, m->id, false, &v, &n, &error) != MG_OK)
        return mbox_fail(&o->op, error);
    free(v);
    if (n > 0 || m->messages > 0) {
        o->refusal = MBOX_NOT_EMPTY;
        o->nmessages = n > m->messages ? n : m->messages;
        return mbox_fail(&o->op, "the mailbox holds messages");
    }
    return MG_OK;
}

static int
mbox_apply_delete(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct mbox_op *o = op->arg;
    struct mg_mailbox m = {0};
    const char *error;
    char stamp[32], *key;
    int rc;

    if (mbox_get_for_write(st, txn, o, &m) != MG_OK)
        return MG_ERROR;
    rc = mbox_check_empty_suspended(st, txn, o, &m);
    mg_mailbox_clear(&m);
    if (rc != MG_OK)
        return MG_ERROR;
    if (mg_rec_mailbox_del(st, txn, o->id, &error) != MG_OK)
        return mbox_fail(op, error);
    key = mbox_tombstone_key(o->id);
    snprintf(stamp, sizeof(stamp), "%lld", (long long)time(NULL));
    rc = mg_rec_kv_put(st, txn, key, stamp, strlen(stamp), &error);
    free(key);
    return rc == MG_OK ? MG_OK : mbox_fail(op, error);
}

static int
mbox_apply_reset(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct mbox_op *o = op->arg;
    struct mg_mailbox m = {0};
    const char *error;
    int rc;

    if (mbox_get_for_write(st, txn, o, &m) != MG_OK)
        return MG_ERROR;
    if (mbox_check_empty_suspended(st, txn, o, &m) != MG_OK) {
        mg_mailbox_clear(&m);
        return MG_ERROR;
    }
    memcpy(m.pk, o->mb->pk, sizeof(m.pk));
    memcpy(m.wraps, o->mb->wraps, sizeof(m.wraps));
    m.nwraps = o->mb->nwraps;
    rc = mg_rec_mailbox_put(st, txn, &m, &error);
    mg_mailbox_clear(&m);
    return rc == MG_OK ? MG_OK : mbox_fail(op, error);
}

/* run one op; prints refusals and errors */
static int
mbox_run(struct ctl *ctl, struct mg_store *st, struct mbox_op *o,
         mg_store_apply_fn apply, const char *what)
{
    (void)ctl;
    o->op.apply = apply;
    o->op.arg = o;
    if (mg_store_run(st, &o->op) == MG_OK)
        return MG_OK;
    switch (o->refusal) {
    case MBOX_NOT_FOUND:
        ctl_err("no mailbox '%s'; see mailgatectl mailbox list", o->id);
        break;
    case MBOX_ACTIVE:
        ctl_err("cannot %s mailbox %s: it is active; suspend it first "
                "(mailgatectl mailbox edit %s --status suspended), let the "
                "archiver fetch its messages, then try again",
                what, o->id, o->id);
        break;
    case MBOX_NOT_EMPTY:
        ctl_err("cannot %s mailbox %s: it still holds %llu message(s); let "
                "the archiver fetch and delete them (POP3), then try again",
                what, o->id, (unsigned long long)o->nmessages);
        break;
    case MBOX_EXISTS:
    case MBOX_OK:
    default:
        ctl_err("cannot %s the mailbox: %s%s", what, o->op.error,
                o->op.temporary ? " (temporary: try again later)" : "");
        break;
    }
    return MG_ERROR;
}

/* ------------------------------------------------------------- reading */

static int
mbox_read(struct mg_store *st, const char *id, struct mbox_view *v)
{
    const char *error;
    MDB_txn *txn;
    int rc;

    memset(v, 0, sizeof(*v));
    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        ctl_err("cannot read the store: %s", error);
        return MG_ERROR;
    }
    rc = mg_rec_mailbox_get(st, txn, id, &v->mb, &error);
    if (rc == MG_OK) {
        rc = mg_rec_msg_oldest(st, txn, id, &v->oldest, &error);
        v->has_oldest = rc == MG_OK;
        if (rc == MG_DECLINED)
            rc = MG_OK;
    }
    mg_store_read_end(st, txn);
    if (rc == MG_DECLINED) {
        ctl_err("no mailbox '%s'; see mailgatectl mailbox list", id);
        return MG_DECLINED;
    }
    if (rc != MG_OK) {
        mg_mailbox_clear(&v->mb);
        ctl_err("cannot read mailbox %s: %s", id, error);
        return MG_ERROR;
    }
    return MG_OK;
}

static int
mbox_read_all(struct mg_store *st, struct mbox_view **v_r, size_t *n_r)
{
    struct mg_mailbox *list = NULL;
    struct mbox_view *v;
    const char *error;
    MDB_txn *txn;
    size_t n = 0;
    int rc;

    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        ctl_err("cannot read the store: %s", error);
        return MG_ERROR;
    }
    rc = mg_rec_mailbox_list(st, txn, &list, &n, &error);
    if (rc != MG_OK) {
        mg_store_read_end(st, txn);
        ctl_err("cannot list the mailboxes: %s", error);
        return MG_ERROR;
    }
    v = n > 0 ? mg_xcalloc(n, sizeof(*v)) : NULL;
    for (size_t i = 0; i < n; i++) {
        v[i].mb = list[i]; /* moved: list[i] is not cleared */
        if (rc == MG_OK) {
            int r =
                mg_rec_msg_oldest(st, txn, v[i].mb.id, &v[i].oldest, &error);

            v[i].has_oldest = r == MG_OK;
            if (r != MG_OK && r != MG_DECLINED)
                rc = r;
        }
    }
    free(list);
    mg_store_read_end(st, txn);
    if (rc != MG_OK) {
        for (size_t i = 0; i < n; i++)
            mg_mailbox_clear(&v[i].mb);
        free(v);
        ctl_err("cannot read the mailboxes: %s", error);
        return MG_ERROR;
    }
    *v_r = v;
    *n_r = n;
    return MG_OK;
}

/* ------------------------------------------------------------- output */

static void
mbox_json_strv(FILE *out, char *const *v, size_t n)
{
    fputc('[', out);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            fputc(',', out);
        ctl_json_string(out, v[i]);
    }
    fputc(']', out);
}

static void
mbox_print_json(struct ctl *ctl, const struct mbox_view *v,
                const char *password)
{
    const struct mg_mailbox *m = &v->mb;
    char t[21];
    char *address = mg_xasprintf("%s@%s", m->id, ctl->cfg->s.email_domain);

    fputs("{\"id\":", stdout);
    ctl_json_string(stdout, m->id);
    fputs(",\"address\":", stdout);
    ctl_json_string(stdout, address);
    free(address);
    fputs(",\"name\":", stdout);
    ctl_json_string(stdout, m->name != NULL ? m->name : "");
    fputs(",\"description\":", stdout);
    ctl_json_string(stdout, m->description != NULL ? m->description : "");
    printf(",\"status\":\"%s\",\"messages\":%llu,\"bytes\":%llu,\"oldest\":",
           m->active ? "active" : "suspended", (unsigned long long)m->messages,
           (unsigned long long)m->bytes);
    if (v->has_oldest) {
        ctl_time_iso(v->oldest, t);
        printf("\"%s\"", t);
    } else {
        fputs("null", stdout);
    }
    ctl_time_iso(m->created, t);
    printf(",\"created\":\"%s\",\"accept_journal\":%s,\"accept_proxy\":%s,"
           "\"require_tls\":%s,\"proxy_targets\":",
           t, m->accept_journal ? "true" : "false",
           m->accept_proxy ? "true" : "false",
           m->require_tls ? "true" : "false");
    mbox_json_strv(stdout, m->targets, m->ntargets);
    fputs(",\"sender_networks\":", stdout);
    mbox_json_strv(stdout, m->networks, m->nnetworks);
    if (password != NULL) {
        fputs(",\"password\":", stdout);
        ctl_json_string(stdout, password);
    }
    fputc('}', stdout);
}

static void
mbox_print_strv(const char *label, char *const *v, size_t n, const char *none)
{
    printf("%-17s ", label);
    if (n == 0)
        fputs(none, stdout);
    for (size_t i = 0; i < n; i++)
        printf("%s%s", i > 0 ? ", " : "", v[i]);
    fputc('\n', stdout);
}

static void
mbox_print_human(struct ctl *ctl, const struct mbox_view *v)
{
    const struct mg_mailbox *m = &v->mb;
    char t[21];

    printf("%-17s %s\n", "id:", m->id);
    printf("%-17s %s@%s\n", "address:", m->id, ctl->cfg->s.email_domain);
    printf("%-17s %s\n", "name:", m->name != NULL ? m->name : "");
    printf("%-17s %s\n",
           "description:", m->description != NULL ? m->description : "");
    printf("%-17s %s\n", "status:", m->active ? "active" : "suspended");
    ctl_time_iso(m->created, t);
    printf("%-17s %s\n", "created:", t);
    printf("%-17s %llu\n", "messages:", (unsigned long long)m->messages);
    printf("%-17s %llu\n", "bytes:", (unsigned long long)m->bytes);
    if (v->has_oldest)
        ctl_time_iso(v->oldest, t);
    printf("%-17s %s\n", "oldest message:", v->has_oldest ? t : "-");
    printf("%-17s %s\n", "accept journal:", m->accept_journal ? "yes" : "no");
    printf("%-17s %s\n", "accept proxy:", m->accept_proxy ? "yes" : "no");
    printf("%-17s %s\n", "require TLS:", m->require_tls ? "yes" : "no");
    mbox_print_strv("proxy targets:", m->targets, m->ntargets,
                    "none (the global policy applies)");
    mbox_print_strv("sender networks:", m->networks, m->nnetworks, "any");
}

static void
mbox_print(struct ctl *ctl, const struct mbox_view *v)
{
    if (ctl->json) {
        mbox_print_json(ctl, v, NULL);
        fputc('\n', stdout);
    } else {
        mbox_print_human(ctl, v);
    }
}

static void
mbox_print_password(struct ctl *ctl, const struct mbox_view *v,
                    const char *password, const char *headline)
{
    if (ctl->json) {
        mbox_print_json(ctl, v, password);
        fputc('\n', stdout);
        return;
    }
    printf("%s\n\n", headline);
    printf("%-10s %s\n", "id:", v->mb.id);
    printf("%-10s %s@%s\n", "address:", v->mb.id, ctl->cfg->s.email_domain);
    printf("%-10s %s\n\n", "password:", password);
    printf("Keep this password now: it is shown only this once. It is not "
           "stored\nanywhere and cannot be recovered; without it the "
           "mailbox's messages\ncannot be read.\n");
}

/* ------------------------------------------------------------ commands */

/* load, drop to the data directory's user, open; MG_DECLINED = no store */
static int
mbox_open(struct ctl *ctl, bool create, bool read_only, bool need_domain,
          struct mg_store **st_r)
{
    if (ctl_load(ctl) != MG_OK)
        return MG_ERROR;
    if (need_domain && mbox_need_domain(ctl) != MG_OK)
        return MG_ERROR;
    if (ctl_priv_drop(ctl, create) != MG_OK)
        return MG_ERROR;
    return ctl_store_open(ctl, create, read_only, st_r);
}

static int
mbox_cmd_create(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'},
        {"description", required_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *name = NULL, *description = "", *error;
    char password[MG_VAULT_PASSWORD_MAX];
    uint64_t ops, mem;
    struct mbox_view v;
    struct mbox_op o;
    struct mg_store *st;
    int c, rc;

    optind = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'n')
            name = optarg;
        else if (c == 'd')
            description = optarg;
        else if (c == 'j')
            ctl->json = true;
        else
            return CTL_EXIT_USAGE;
    }
    if (optind < argc) {
        ctl_err("mailbox create: unexpected argument '%s'", argv[optind]);
        return CTL_EXIT_USAGE;
    }
    if (name == NULL) {
        ctl_err("mailbox create needs --name NAME");
        return CTL_EXIT_USAGE;
    }
    if (mbox_text_check("name", name, true, MBOX_NAME_MAX) != MG_OK ||
        mbox_text_check("description", description, false,
                        MBOX_DESCRIPTION_MAX) != MG_OK)
        return CTL_EXIT_USAGE;
    if (mbox_open(ctl, true, false, true, &st) != MG_OK)
        return CTL_EXIT_FAIL;

    memset(&v, 0, sizeof(v));
    v.mb.name = mg_xstrdup(name);
    v.mb.description = mg_xstrdup(description);
    v.mb.active = true;
    v.mb.created = (uint64_t)time(NULL);
    v.mb.accept_journal = true;
    v.mb.accept_proxy = true;
    v.mb.require_tls = false;
    mg_vault_password_new(password);
    mg_vault_default_limits(&ops, &mem);
    if (mg_vault_keys_new(password, ops, mem, v.mb.pk, &v.mb.wraps[0],
                          &error) != MG_OK) {
        ctl_err("cannot make the mailbox keys: %s", error);
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    v.mb.wraps[0].kind = MG_WRAP_PASSWORD;
    v.mb.nwraps = 1;
    /* a clash of ≥80 random bits means a broken generator: few tries */
    for (int i = 0;; i++) {
        mg_mailbox_id_new(v.mb.id);
        memset(&o, 0, sizeof(o));
        o.id = v.mb.id;
        o.mb = &v.mb;
        o.op.apply = mbox_apply_create;
        o.op.new_data = true;
        o.op.arg = &o;
        if (mg_store_run(st, &o.op) == MG_OK)
            break;
        if (o.refusal != MBOX_EXISTS || i == 3) {
            ctl_err("cannot create the mailbox: %s%s", o.op.error,
                    o.op.temporary ? " (temporary: try again later)" : "");
            rc = CTL_EXIT_FAIL;
            goto out;
        }
    }
    mbox_print_password(ctl, &v, password, "mailbox created");
    rc = CTL_EXIT_OK;
out:
    explicit_bzero(password, sizeof(password));
    mg_mailbox_clear(&v.mb);
    mg_store_close(st);
    return rc;
}

static int
mbox_cmd_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    struct mbox_view *v = NULL;
    struct mg_store *st;
    size_t n = 0;
    int c, rc;

    optind = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'j')
            return CTL_EXIT_USAGE;
        ctl->json = true;
    }
    if (optind < argc) {
        ctl_err("mailbox list takes no arguments (got '%s')", argv[optind]);
        return CTL_EXIT_USAGE;
    }
    rc = mbox_open(ctl, false, true, true, &st);
    if (rc == MG_ERROR)
        return CTL_EXIT_FAIL;
    if (rc == MG_OK) {
        rc = mbox_read_all(st, &v, &n);
        mg_store_close(st);
        if (rc != MG_OK)
            return CTL_EXIT_FAIL;
    }
    if (ctl->json) {
        fputc('[', stdout);
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                fputc(',', stdout);
            mbox_print_json(ctl, &v[i], NULL);
        }
        fputs("]\n", stdout);
    } else if (n == 0) {
        printf("no mailboxes yet; create one with: mailgatectl mailbox "
               "create --name NAME\n");
    } else {
        int wid = 2, wmsg = 8, wbytes = 5;
        char t[21], num[24];

        for (size_t i = 0; i < n; i++) {
            int l = (int)strlen(v[i].mb.id);

            wid = l > wid ? l : wid;
            l = snprintf(num, sizeof(num), "%llu",
                         (unsigned long long)v[i].mb.messages);
            wmsg = l > wmsg ? l : wmsg;
            l = snprintf(num, sizeof(num), "%llu",
                         (unsigned long long)v[i].mb.bytes);
            wbytes = l > wbytes ? l : wbytes;
        }
        printf("%-*s  %-9s  %*s  %*s  %-20s  %s\n", wid, "ID", "STATUS", wmsg,
               "MESSAGES", wbytes, "BYTES", "OLDEST", "NAME");
        for (size_t i = 0; i < n; i++) {
            const struct mg_mailbox *m = &v[i].mb;

            if (v[i].has_oldest)
                ctl_time_iso(v[i].oldest, t);
            printf("%-*s  %-9s  %*llu  %*llu  %-20s  %s\n", wid, m->id,
                   m->active ? "active" : "suspended", wmsg,
                   (unsigned long long)m->messages, wbytes,
                   (unsigned long long)m->bytes, v[i].has_oldest ? t : "-",
                   m->name != NULL ? m->name : "");
        }
    }
    for (size_t i = 0; i < n; i++)
        mg_mailbox_clear(&v[i].mb);
    free(v);
    return CTL_EXIT_OK;
}

static int
mbox_no_store(const char *id)
{
    ctl_err("no mailbox '%s': the store does not exist yet; create a "
            "mailbox with mailgatectl mailbox create --name NAME",
            id);
    return CTL_EXIT_FAIL;
}

static int
mbox_cmd_show(struct ctl *ctl, int argc, char **argv)
{
    struct mbox_view v;
    struct mg_store *st;
    const char *id;
    int rc;

    if (ctl_args_one(ctl, argc, argv, "one mailbox id", &id) != MG_OK)
        return CTL_EXIT_USAGE;
    if (mbox_check_id(id) != MG_OK)
        return CTL_EXIT_FAIL;
    rc = mbox_open(ctl, false, true, true, &st);
    if (rc == MG_DECLINED)
        return mbox_no_store(id);
    if (rc != MG_OK)
        return CTL_EXIT_FAIL;
    rc = mbox_read(st, id, &v);
    mg_store_close(st);
    if (rc != MG_OK)
        return CTL_EXIT_FAIL;
    mbox_print(ctl, &v);
    mg_mailbox_clear(&v.mb);
    return CTL_EXIT_OK;
}

/* A list option of edit: replaces the list; `empty` ("none", "any")
 * clears it. */
static int
mbox_edit_list(const char *opt, const char *text, const char *empty,
               bool networks, char ***v, size_t *n)
{
    mbox_strv_free(*v, *n);
    *v = NULL;
    *n = 0;
    if (strcmp(text, empty) == 0)
        return MG_OK;
    return mbox_list_parse(opt, text, networks, v, n);
}

static int
mbox_edit_bool(const char *opt, const char *arg, int *v)
{
    bool b;

    if (ctl_parse_yesno(arg, &b) != MG_OK) {
        ctl_err("%s takes yes or no (got '%s')", opt, arg);
        return MG_ERROR;
    }
    *v = b;
    return MG_OK;
}

static int
mbox_edit_parse(int argc, char **argv, struct ctl *ctl, struct mbox_edit *e,
                bool *changed_r)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'},
        {"description", required_argument, NULL, 'd'},
        {"status", required_argument, NULL, 's'},
        {"accept-journal", required_argument, NULL, 'J'},
        {"accept-proxy", required_argument, NULL, 'P'},
        {"require-tls", required_argument, NULL, 'T'},
        {"proxy-targets", required_argument, NULL, 't'},
        {"sender-networks", required_argument, NULL, 'N'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    int c;

    optind = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (mbox_text_check("name", optarg, true, MBOX_NAME_MAX) != MG_OK)
                return MG_ERROR;
            e->name = optarg;
            break;
        case 'd':
            if (mbox_text_check("description", optarg, false,
                                MBOX_DESCRIPTION_MAX) != MG_OK)
                return MG_ERROR;
            e->description = optarg;
            break;
        case 's':
            if (strcmp(optarg, "active") == 0) {
                e->active = 1;
            } else if (strcmp(optarg, "suspended") == 0) {
                e->active = 0;
            } else {
                ctl_err("--status takes active or suspended (got '%s')",
                        optarg);
                return MG_ERROR;
            }
            break;
        case 'J':
            if (mbox_edit_bool("--accept-journal", optarg,
                               &e->accept_journal) != MG_OK)
                return MG_ERROR;
            break;
        case 'P':
            if (mbox_edit_bool("--accept-proxy", optarg, &e->accept_proxy) !=
                MG_OK)
                return MG_ERROR;
            break;
        case 'T':
            if (mbox_edit_bool("--require-tls", optarg, &e->require_tls) !=
                MG_OK)
                return MG_ERROR;
            break;
        case 't':
            e->set_targets = true;
            if (mbox_edit_list("--proxy-targets", optarg, "none", false,
                               &e->targets, &e->ntargets) != MG_OK)
                return MG_ERROR;
            break;
        case 'N':
            e->set_networks = true;
            if (mbox_edit_list("--sender-networks", optarg, "any", true,
                               &e->networks, &e->nnetworks) != MG_OK)
                return MG_ERROR;
            break;
        case 'j':
            ctl->json = true;
            continue;
        default:
            return MG_ERROR;
        }
        *changed_r = true;
    }
    return MG_OK;
}

static int
mbox_cmd_edit(struct ctl *ctl, int argc, char **argv)
{
    struct mbox_edit e = {
        .active = -1,
        .accept_journal = -1,
        .accept_proxy = -1,
        .require_tls = -1,
    };
    bool changed = false;
    struct mbox_view v;
    struct mbox_op o;
    struct mg_store *st = NULL;
    const char *id;
    int rc = CTL_EXIT_USAGE;

    if (mbox_edit_parse(argc, argv, ctl, &e, &changed) != MG_OK)
        goto out;
    if (argc - optind != 1) {
        ctl_err("mailbox edit takes one mailbox id, then the changes");
        goto out;
    }
    id = argv[optind];
    if (!changed) {
        ctl_err("mailbox edit %s: nothing to change; give --name, "
                "--description, --status, --accept-journal, --accept-proxy, "
                "--require-tls, --proxy-targets or --sender-networks",
                id);
        goto out;
    }
    rc = CTL_EXIT_FAIL;
    if (mbox_check_id(id) != MG_OK)
        goto out;
    switch (mbox_open(ctl, false, false, true, &st)) {
    case MG_OK:
        break;
    case MG_DECLINED:
        rc = mbox_no_store(id);
        goto out;
    default:
        goto out;
    }
    memset(&o, 0, sizeof(o));
    o.id = id;
    o.edit = &e;
    if (mbox_run(ctl, st, &o, mbox_apply_edit, "edit") != MG_OK)
        goto out;
    if (mbox_read(st, id, &v) != MG_OK)
        goto out;
    mbox_print(ctl, &v);
    mg_mailbox_clear(&v.mb);
    rc = CTL_EXIT_OK;
out:
    if (st != NULL)
        mg_store_close(st);
    mbox_strv_free(e.targets, e.ntargets);
    mbox_strv_free(e.networks, e.nnetworks);
    return rc;
}

static int
mbox_cmd_delete(struct ctl *ctl, int argc, char **argv)
{
    struct mg_store *st;
    struct mbox_op o;
    const char *id;
    int rc;

    if (ctl_args_one(ctl, argc, argv, "one mailbox id", &id) != MG_OK)
        return CTL_EXIT_USAGE;
    if (mbox_check_id(id) != MG_OK)
        return CTL_EXIT_FAIL;
    rc = mbox_open(ctl, false, false, false, &st);
    if (rc == MG_DECLINED)
        return mbox_no_store(id);
    if (rc != MG_OK)
        return CTL_EXIT_FAIL;
    memset(&o, 0, sizeof(o));
    o.id = id;
    rc = mbox_run(ctl, st, &o, mbox_apply_delete, "delete");
    mg_store_close(st);
    if (rc != MG_OK)
        return CTL_EXIT_FAIL;
    if (ctl->json) {
        fputs("{\"id\":", stdout);
        ctl_json_string(stdout, id);
        fputs(",\"deleted\":true}\n", stdout);
    } else {
        printf("mailbox %s deleted (its id is never used again)\n", id);
    }
    return CTL_EXIT_OK;
}

static int
mbox_cmd_reset(struct ctl *ctl, int argc, char **argv)
{
    char password[MG_VAULT_PASSWORD_MAX];
    struct mg_mailbox keys = {0};
    struct mg_store *st;
    struct mbox_view v;
    struct mbox_op o;
    const char *id, *error;
    uint64_t ops, mem;
    int rc;

    if (ctl_args_one(ctl, argc, argv, "one mailbox id", &id) != MG_OK)
        return CTL_EXIT_USAGE;
    if (mbox_check_id(id) != MG_OK)
        return CTL_EXIT_FAIL;
    rc = mbox_open(ctl, false, false, true, &st);
    if (rc == MG_DECLINED)
        return mbox_no_store(id);
    if (rc != MG_OK)
        return CTL_EXIT_FAIL;
    /* refuse early without the slow derivation; checked again below */
    if (mbox_read(st, id, &v) != MG_OK) {
        mg_store_close(st);
        return CTL_EXIT_FAIL;
    }
    mg_mailbox_clear(&v.mb);
    mg_vault_password_new(password);
    mg_vault_default_limits(&ops, &mem);
    rc = CTL_EXIT_FAIL;
    if (mg_vault_keys_new(password, ops, mem, keys.pk, &keys.wraps[0],
                          &error) != MG_OK) {
        ctl_err("cannot make the mailbox keys: %s", error);
        goto out;
    }
    keys.wraps[0].kind = MG_WRAP_PASSWORD;
    keys.nwraps = 1;
    memset(&o, 0, sizeof(o));
    o.id = id;
    o.mb = &keys;
    if (mbox_run(ctl, st, &o, mbox_apply_reset, "reset the password of") !=
        MG_OK)
        goto out;
    if (mbox_read(st, id, &v) != MG_OK)
        goto out;
    mbox_print_password(ctl, &v, password,
                        "new key pair and password for the mailbox");
    mg_mailbox_clear(&v.mb);
    rc = CTL_EXIT_OK;
out:
    explicit_bzero(password, sizeof(password));
    explicit_bzero(&keys, sizeof(keys));
    mg_store_close(st);
    return rc;
}

/* ------------------------------------------------------------ dispatch */

static const struct ctl_command mbox_commands[] = {
    {"create", mbox_cmd_create, "--name NAME [--description TEXT]",
     "create a mailbox; prints its id, address and password"},
    {"list", mbox_cmd_list, "", "list the mailboxes"},
    {"show", mbox_cmd_show, "ID", "show a mailbox, its counters and policy"},
    {"edit", mbox_cmd_edit,
     "ID [--name NAME] [--description TEXT] [--status active|suspended]\n"
     "       [--accept-journal yes|no] [--accept-proxy yes|no] "
     "[--require-tls yes|no]\n"
     "       [--proxy-targets LIST|none] [--sender-networks LIST|any]",
     "change a mailbox (LIST: comma-separated)"},
    {"delete", mbox_cmd_delete, "ID", "delete an empty, suspended mailbox"},
    {"reset-password", mbox_cmd_reset, "ID",
     "new keys and password for an empty, suspended mailbox"},
    {NULL, NULL, NULL, NULL},
};

static void
mbox_usage(FILE *out)
{
    fputs("usage: mailgatectl [-c FILE] mailbox SUBCOMMAND [--json] ...\n\n",
          out);
    for (const struct ctl_command *c = mbox_commands; c->name != NULL; c++)
        fprintf(out, "  mailbox %s %s\n      %s\n", c->name, c->args,
                c->summary);
}

int
ctl_mailbox(struct ctl *ctl, int argc, char **argv)
{
    const struct ctl_command *c;

    argc--; /* argv[0] is "mailbox": the subcommand is next */
    argv++;
    if (argc < 1) {
        ctl_err("mailbox: no subcommand given");
        mbox_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        mbox_usage(stdout);
        return CTL_EXIT_OK;
    }
    for (c = mbox_commands; c->name != NULL; c++) {
        if (strcmp(c->name, argv[0]) == 0)
            break;
    }
    if (c->name == NULL) {
        ctl_err("mailbox: unknown subcommand '%s'", argv[0]);
        mbox_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    return c->run(ctl, argc, argv);
}
