/* core/ctl/ctl_priv.c -- the data directory's owner, and the store
 *
 * The daemon drops to the config's `user` and keeps writing the data
 * directory as that user. mailgatectl started as root must not leave a
 * root-owned file there (a lock file, a new store, a restored copy), or
 * the daemon could not open it any more: it takes the user's ids before
 * it opens or creates anything in the data directory.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"
#include "store.h"

/* derivations run one at a time: mailgatectl makes one key pair */
#define CTL_VAULT_DERIVATIONS 1

int
ctl_priv_resolve(struct ctl *ctl)
{
    const struct mg_settings *s = &ctl->cfg->s;
    struct passwd pw, *pwr = NULL;
    struct group gr, *grr = NULL;
    char buf[16384];

    ctl->priv_switch = false;
    if (geteuid() != 0 || s->user == NULL)
        return MG_OK;
    if (getpwnam_r(s->user, &pw, buf, sizeof(buf), &pwr) != 0 || pwr == NULL) {
        ctl_err("unknown user '%s' (the `user` setting of %s); create it or "
                "fix the setting",
                s->user, ctl->conf_file);
        return MG_ERROR;
    }
    ctl->uid = pw.pw_uid;
    ctl->gid = pw.pw_gid;
    if (s->group != NULL) {
        if (getgrnam_r(s->group, &gr, buf, sizeof(buf), &grr) != 0 ||
            grr == NULL) {
            ctl_err("unknown group '%s' (the `group` setting of %s); "
                    "create it or fix the setting",
                    s->group, ctl->conf_file);
            return MG_ERROR;
        }
        ctl->gid = gr.gr_gid;
    }
    ctl->priv_switch = ctl->uid != 0;
    return MG_OK;
}

int
ctl_datadir_prepare(struct ctl *ctl)
{
    const char *dir = ctl->cfg->s.data_dir;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        ctl_err("cannot create the data directory %s: %s; create it (or "
                "its parent) or fix data_dir in %s",
                dir, strerror(errno), ctl->conf_file);
        return MG_ERROR;
    }
    /* as the daemon does at every start */
    if (ctl->priv_switch && chown(dir, ctl->uid, ctl->gid) != 0) {
        ctl_err("cannot give %s to user %s: %s", dir, ctl->cfg->s.user,
                strerror(errno));
        return MG_ERROR;
    }
    return MG_OK;
}

int
ctl_priv_drop(struct ctl *ctl, bool create)
{
    const struct mg_settings *s = &ctl->cfg->s;
    const char *error;
    struct stat sb;

    if (ctl_priv_resolve(ctl) != MG_OK)
        return MG_ERROR;
    if (create) {
        if (ctl_datadir_prepare(ctl) != MG_OK)
            return MG_ERROR;
    } else if (stat(s->data_dir, &sb) != 0) {
        /* nothing to read, and nothing will be created */
        return MG_OK;
    }
    if (ctl->priv_switch) {
        if (mg_privdrop(s->user, s->group, s->data_dir, &error) != MG_OK) {
            ctl_err("cannot become user %s: %s", s->user, error);
            return MG_ERROR;
        }
        ctl->priv_switch = false; /* for good */
    }
    mg_harden_process(); /* keys and passwords pass through memory */
    return MG_OK;
}

int
ctl_priv_user(struct ctl *ctl)
{
    if (!ctl->priv_switch)
        return MG_OK;
    if (setegid(ctl->gid) != 0 || seteuid(ctl->uid) != 0) {
        ctl_err("cannot take the ids of user %s: %s", ctl->cfg->s.user,
                strerror(errno));
        return MG_ERROR;
    }
    return MG_OK;
}

int
ctl_priv_root(struct ctl *ctl)
{
    if (!ctl->priv_switch)
        return MG_OK;
    if (seteuid(0) != 0 || setegid(0) != 0) {
        ctl_err("cannot return to root: %s", strerror(errno));
        return MG_ERROR;
    }
    return MG_OK;
}

int
ctl_store_open(struct ctl *ctl, bool create, bool read_only,
               struct mg_store **st_r)
{
    static bool vault_ready;
    struct mg_store_config cfg = {.read_only = read_only};
    const char *error;
    char *dir = ctl_store_dir(ctl);
    struct stat sb;

    if (!create && stat(dir, &sb) != 0 && errno == ENOENT) {
        free(dir);
        return MG_DECLINED;
    }
    if (!vault_ready) {
        if (mg_vault_init(CTL_VAULT_DERIVATIONS, &error) != MG_OK) {
            ctl_err("cannot initialise the vault: %s", error);
            free(dir);
            return MG_ERROR;
        }
        vault_ready = true;
    }
    cfg.dir = dir;
    if (mg_store_open(&cfg, st_r, &error) != MG_OK) {
        ctl_err("cannot open the store %s: %s", dir, error);
        free(dir);
        return MG_ERROR;
    }
    free(dir);
    return MG_OK;
}
