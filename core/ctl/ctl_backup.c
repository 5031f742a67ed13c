/* core/ctl/ctl_backup.c -- `mailgatectl backup DIR` and `restore DIR`
 *
 * A backup is DIR/store/data.mdb (LMDB's own compacting copy, taken in
 * one read transaction: consistent while the daemon writes), the config
 * file as DIR/mailgate.conf, the certificate and key as DIR/cert.pem and
 * DIR/key.pem, and DIR/BACKUP-INFO, written last. Copying a live
 * data.mdb with cp is no backup: the copy can mix pages of different
 * transactions.
 *
 * The data directory side is read and written with the ids of the
 * daemon's user, the backup side with the caller's (root: the backup
 * holds keys and should stay root's).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "store.h"

#define BACKUP_INFO   "BACKUP-INFO"
#define BACKUP_CONFIG "mailgate.conf"
#define BACKUP_CERT   "cert.pem"
#define BACKUP_KEY    "key.pem"
#define BACKUP_STORE  "store"

/* what the store held when the copy started */
struct backup_counts {
    char epoch[17];
    uint64_t mailboxes;
    uint64_t messages;
    uint64_t bytes;
};

static int
backup_count(struct mg_store *st, struct backup_counts *bc)
{
    struct mg_mailbox *v = NULL;
    const char *error;
    MDB_txn *txn;
    size_t n = 0;

    memset(bc, 0, sizeof(*bc));
    snprintf(bc->epoch, sizeof(bc->epoch), "%s", mg_store_epoch(st));
    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        ctl_err("cannot read the store: %s", error);
        return MG_ERROR;
    }
    if (mg_rec_mailbox_list(st, txn, &v, &n, &error) != MG_OK) {
        mg_store_read_end(st, txn);
        ctl_err("cannot list the mailboxes: %s", error);
        return MG_ERROR;
    }
    mg_store_read_end(st, txn);
    bc->mailboxes = n;
    for (size_t i = 0; i < n; i++) {
        bc->messages += v[i].messages;
        bc->bytes += v[i].bytes;
        mg_mailbox_clear(&v[i]);
    }
    free(v);
    return MG_OK;
}

/* BACKUP-INFO: plain "key: value" lines, for people and scripts */
static int
backup_write_info(struct ctl *ctl, const char *dir,
                  const struct backup_counts *bc, bool cert, bool key,
                  const char **error_r)
{
    char *path = mg_xasprintf("%s/%s", dir, BACKUP_INFO);
    char t[21];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *f;

    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        *error_r = mg_error("cannot create %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(path);
        return MG_ERROR;
    }
    ctl_time_iso((uint64_t)time(NULL), t);
    fprintf(f, "# mailgate backup (restore with: mailgatectl restore DIR)\n");
    fprintf(f, "time: %s\n", t);
    fprintf(f, "version: %s\n", PACKAGE_VERSION);
    fprintf(f, "epoch: %s\n", bc->epoch);
    fprintf(f, "mailboxes: %llu\n", (unsigned long long)bc->mailboxes);
    fprintf(f, "messages: %llu\n", (unsigned long long)bc->messages);
    fprintf(f, "bytes: %llu\n", (unsigned long long)bc->bytes);
    fprintf(f, "data_dir: %s\n", ctl->cfg->s.data_dir);
    fprintf(f, "config: %s\n", ctl->conf_file);
    if (cert)
        fprintf(f, "cert: %s\n", ctl->cfg->s.tls_cert);
    if (key)
        fprintf(f, "key: %s\n", ctl->cfg->s.tls_key);
    if (fflush(f) != 0 || fsync(fd) != 0) {
        *error_r = mg_error("cannot write %s: %s", path, strerror(errno));
        fclose(f);
        free(path);
        return MG_ERROR;
    }
    fclose(f);
    free(path);
    return MG_OK;
}

/* copy a certificate file when configured; *copied_r says if it was */
static int
backup_copy_opt(const char *src, const char *dir, const char *name, mode_t mode,
                bool *copied_r)
{
    char *dst;
    const char *error;
    int rc;

    *copied_r = false;
    if (src == NULL || access(src, F_OK) != 0)
        return MG_OK;
    dst = mg_xasprintf("%s/%s", dir, name);
    rc = ctl_copy_file(src, dst, mode, false, &error);
    free(dst);
    if (rc != MG_OK) {
        ctl_err("%s", error);
        return MG_ERROR;
    }
    *copied_r = true;
    return MG_OK;
}

int
ctl_backup(struct ctl *ctl, int argc, char **argv)
{
    struct backup_counts bc;
    struct mg_store *st = NULL;
    const char *dir, *error;
    char *store_dir = NULL, *conf_dst = NULL;
    bool exists, cert = false, key = false;
    int rc;

    if (ctl_args_one(ctl, argc, argv, "one directory", &dir) != MG_OK)
        return CTL_EXIT_USAGE;
    if (ctl_load(ctl) != MG_OK || ctl_priv_resolve(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    if (ctl_dir_usable(dir, &exists, &error) != MG_OK) {
        ctl_err("cannot back up into %s: %s; give a new or empty directory",
                dir, error);
        return CTL_EXIT_FAIL;
    }
    if (!exists && mkdir(dir, 0700) != 0) {
        ctl_err("cannot create %s: %s", dir, strerror(errno));
        return CTL_EXIT_FAIL;
    }

    /* the store is opened as the daemon's user: its lock file is shared */
    if (ctl_priv_user(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    rc = ctl_store_open(ctl, false, true, &st);
    if (rc == MG_OK)
        rc = backup_count(st, &bc);
    if (ctl_priv_root(ctl) != MG_OK)
        rc = MG_ERROR;
    if (rc == MG_DECLINED) {
        ctl_err("nothing to back up: there is no store in %s yet (is "
                "data_dir in %s right?)",
                ctl->cfg->s.data_dir, ctl->conf_file);
        return CTL_EXIT_FAIL;
    }
    if (rc != MG_OK)
        goto fail;

    rc = MG_ERROR;
    store_dir = mg_xasprintf("%s/%s", dir, BACKUP_STORE);
    if (mkdir(store_dir, 0700) != 0) {
        ctl_err("cannot create %s: %s", store_dir, strerror(errno));
        goto fail;
    }
    if (mg_store_backup(st, store_dir, &error) != MG_OK) {
        ctl_err("the store copy failed: %s", error);
        goto fail;
    }
    {
        char *data = mg_xasprintf("%s/data.mdb", store_dir);

        /* LMDB creates it with the umask's mode */
        if (chmod(data, 0600) != 0) {
            ctl_err("cannot chmod %s: %s", data, strerror(errno));
            free(data);
            goto fail;
        }
        free(data);
    }
    mg_store_close(st);
    st = NULL;
    conf_dst = mg_xasprintf("%s/%s", dir, BACKUP_CONFIG);
    if (ctl_copy_file(ctl->conf_file, conf_dst, 0600, false, &error) != MG_OK) {
        ctl_err("%s", error);
        goto fail;
    }
    if (backup_copy_opt(ctl->cfg->s.tls_cert, dir, BACKUP_CERT, 0644, &cert) !=
            MG_OK ||
        backup_copy_opt(ctl->cfg->s.tls_key, dir, BACKUP_KEY, 0600, &key) !=
            MG_OK)
        goto fail;
    if (ctl_fsync_dir(store_dir, &error) != MG_OK ||
        backup_write_info(ctl, dir, &bc, cert, key, &error) != MG_OK ||
        ctl_fsync_dir(dir, &error) != MG_OK) {
        ctl_err("%s", error);
        goto fail;
    }

    if (ctl->json) {
        fputs("{\"dir\":", stdout);
        ctl_json_string(stdout, dir);
        printf(",\"epoch\":\"%s\",\"mailboxes\":%llu,\"messages\":%llu,"
               "\"bytes\":%llu,\"cert\":%s,\"key\":%s}\n",
               bc.epoch, (unsigned long long)bc.mailboxes,
               (unsigned long long)bc.messages, (unsigned long long)bc.bytes,
               cert ? "true" : "false", key ? "true" : "false");
    } else {
        printf("backup written to %s\n", dir);
        printf("  %-16s %s/ (consistent copy of %s/store, epoch %s)\n",
               "store:", store_dir, ctl->cfg->s.data_dir, bc.epoch);
        printf("  %-16s %llu mailbox(es), %llu message(s), %llu bytes\n",
               "contents:", (unsigned long long)bc.mailboxes,
               (unsigned long long)bc.messages, (unsigned long long)bc.bytes);
        printf("  %-16s %s (copy of %s)\n", "configuration:", conf_dst,
               ctl->conf_file);
        printf("  %-16s %s\n", "certificate:",
               cert ? "cert.pem" : "none configured or not found");
        printf("  %-16s %s\n", "key:",
               key ? "key.pem (mode 0600)" : "none configured or not found");
        if (key)
            printf("Keep the backup private: it holds the TLS key. ");
        printf("Messages in the backup stay encrypted\nto their mailboxes' "
               "passwords.\n");
    }
    free(store_dir);
    free(conf_dst);
    return CTL_EXIT_OK;

fail:
    if (st != NULL)
        mg_store_close(st);
    ctl_err("the backup in %s is incomplete (no %s): remove it and try "
            "again",
            dir, BACKUP_INFO);
    free(store_dir);
    free(conf_dst);
    return CTL_EXIT_FAIL;
}

/* ------------------------------------------------------------- restore */

/* open a backup file with the caller's ids (-1 and no error: missing) */
static int
restore_open_src(const char *dir, const char *name, bool required)
{
    char *path = mg_xasprintf("%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 && (required || errno != ENOENT))
        ctl_err("cannot open %s: %s%s", path, strerror(errno),
                required ? "; is this a backup made by mailgatectl backup?"
                         : "");
    free(path);
    return fd;
}

/* put a file back where the config names it; an existing one is kept
 * aside, never deleted. Outside the data directory the file is left
 * alone and the backed-up copy goes beside it. */
static int
restore_cert_file(struct ctl *ctl, int fd, const char *path, mode_t mode,
                  const char *stamp, char **done_r)
{
    const char *error;
    char *aside = NULL, *dst;
    bool inside = ctl_path_inside(path, ctl->cfg->s.data_dir);
    int rc;

    if (inside) {
        if (ctl_priv_user(ctl) != MG_OK)
            return MG_ERROR;
        dst = mg_xstrdup(path);
        if (access(path, F_OK) == 0) {
            aside = mg_xasprintf("%s.before-restore-%s", path, stamp);
            if (rename(path, aside) != 0) {
                ctl_err("cannot move %s aside: %s", path, strerror(errno));
                free(aside);
                free(dst);
                return MG_ERROR;
            }
        }
    } else {
        dst = mg_xasprintf("%s.from-backup", path);
    }
    rc = ctl_copy_fd(fd, dst, mode, !inside, &error);
    if (ctl_priv_root(ctl) != MG_OK)
        rc = MG_ERROR;
    if (rc != MG_OK) {
        ctl_err("%s", error);
        free(aside);
        free(dst);
        return MG_ERROR;
    }
    if (aside != NULL)
        *done_r = mg_xasprintf("%s (the old one is %s)", dst, aside);
    else if (!inside)
        *done_r = mg_xasprintf("%s (outside the data directory: %s was "
                               "left as it is)",
                               dst, path);
    else
        *done_r = mg_xstrdup(dst);
    free(aside);
    free(dst);
    return MG_OK;
}

/* "<base>", or "<base>-2", "-3", … when a restore ran in the same second */
static char *
restore_unique(const char *base)
{
    char *path = mg_xstrdup(base);
    struct stat sb;

    for (int i = 2; lstat(path, &sb) == 0; i++) {
        free(path);
        path = mg_xasprintf("%s-%d", base, i);
    }
    return path;
}

/* the store copy goes in beside the old store, which is then moved
 * aside: there is always one complete store under some name */
static int
restore_store(struct ctl *ctl, int fd, const char *stamp, char **aside_r)
{
    const char *data_dir = ctl->cfg->s.data_dir, *error;
    char *store = ctl_store_dir(ctl);
    char *base = mg_xasprintf("%s/store.restoring-%s", data_dir, stamp);
    char *tmp = restore_unique(base);
    char *file = mg_xasprintf("%s/data.mdb", tmp);
    char *aside;
    int rc = MG_ERROR;
    struct stat sb;

    free(base);
    base = mg_xasprintf("%s/store.before-restore-%s", data_dir, stamp);
    aside = restore_unique(base);
    free(base);

    *aside_r = NULL;
    if (mkdir(tmp, 0700) != 0) {
        ctl_err("cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (ctl_copy_fd(fd, file, 0600, false, &error) != MG_OK) {
        ctl_err("%s", error);
        /* only our own partial copy: the old store is untouched */
        unlink(file);
        rmdir(tmp);
        goto out;
    }
    if (stat(store, &sb) == 0) {
        if (rename(store, aside) != 0) {
            ctl_err("cannot move %s aside: %s", store, strerror(errno));
            unlink(file);
            rmdir(tmp);
            goto out;
        }
        *aside_r = aside;
        aside = NULL;
    }
    if (rename(tmp, store) != 0) {
        ctl_err("cannot move %s to %s: %s; the previous store is %s", tmp,
                store, strerror(errno), *aside_r != NULL ? *aside_r : "none");
        goto out;
    }
    if (ctl_fsync_dir(data_dir, &error) != MG_OK) {
        ctl_err("%s", error);
        goto out;
    }
    rc = MG_OK;
out:
    free(store);
    free(tmp);
    free(file);
    free(aside);
    return rc;
}

static int
restore_refuse_running(struct ctl *ctl, long pid)
{
    ctl_err("mailgated is running (pid %ld) on %s: stop it first (e.g. "
            "systemctl stop mailgated), then run restore again",
            pid, ctl->cfg->s.data_dir);
    return CTL_EXIT_FAIL;
}

int
ctl_restore(struct ctl *ctl, int argc, char **argv)
{
    const char *dir, *error;
    char stamp[17], *aside = NULL, *conf_dst = NULL;
    char *cert_done = NULL, *key_done = NULL;
    int fd_store = -1, fd_conf = -1, fd_cert = -1, fd_key = -1;
    struct backup_counts bc;
    struct mg_store *st = NULL;
    long pid;
    int rc = CTL_EXIT_FAIL;

    if (ctl_args_one(ctl, argc, argv, "one directory", &dir) != MG_OK)
        return CTL_EXIT_USAGE;
    if (ctl_load(ctl) != MG_OK || ctl_priv_resolve(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    ctl_time_stamp((uint64_t)time(NULL), stamp);
    pid = mg_pidfile_running(ctl->cfg->s.data_dir);
    if (pid != 0)
        return restore_refuse_running(ctl, pid);

    /* the backup side, with the caller's ids */
    {
        char *info = mg_xasprintf("%s/%s", dir, BACKUP_INFO);
        int ok = access(info, R_OK);

        free(info);
        if (ok != 0) {
            ctl_err("%s has no %s: not a complete backup made by "
                    "mailgatectl backup",
                    dir, BACKUP_INFO);
            return CTL_EXIT_FAIL;
        }
    }
    fd_store = restore_open_src(dir, BACKUP_STORE "/data.mdb", true);
    if (fd_store < 0)
        goto out;
    fd_conf = restore_open_src(dir, BACKUP_CONFIG, false);
    fd_cert = restore_open_src(dir, BACKUP_CERT, false);
    fd_key = restore_open_src(dir, BACKUP_KEY, false);

    /* the data directory side, as the daemon's user; holding the daemon's
     * own lock keeps a daemon from starting meanwhile */
    if (ctl_datadir_prepare(ctl) != MG_OK || ctl_priv_user(ctl) != MG_OK)
        goto out;
    switch (mg_pidfile_lock(ctl->cfg->s.data_dir, &pid, &error)) {
    case MG_OK:
        break;
    case MG_DECLINED:
        ctl_priv_root(ctl);
        restore_refuse_running(ctl, pid);
        goto out;
    default:
        ctl_priv_root(ctl);
        ctl_err("%s", error);
        goto out;
    }
    if (restore_store(ctl, fd_store, stamp, &aside) != MG_OK)
        goto out_root;
    if (ctl_store_open(ctl, false, false, &st) != MG_OK)
        goto broken;
    if (mg_store_new_epoch(st, &error) != MG_OK) {
        ctl_err("cannot set a new epoch: %s", error);
        goto broken;
    }
    if (backup_count(st, &bc) != MG_OK)
        goto broken;
    mg_store_close(st);
    st = NULL;
    if (ctl_priv_root(ctl) != MG_OK)
        goto out;

    if (fd_cert >= 0 && ctl->cfg->s.tls_cert != NULL &&
        restore_cert_file(ctl, fd_cert, ctl->cfg->s.tls_cert, 0644, stamp,
                          &cert_done) != MG_OK)
        goto out;
    if (fd_key >= 0 && ctl->cfg->s.tls_key != NULL &&
        restore_cert_file(ctl, fd_key, ctl->cfg->s.tls_key, 0600, stamp,
                          &key_done) != MG_OK)
        goto out;
    /* never the -c file itself: the operator compares and decides */
    if (fd_conf >= 0) {
        conf_dst = mg_xasprintf("%s.from-backup", ctl->conf_file);
        if (ctl_copy_fd(fd_conf, conf_dst, 0600, true, &error) != MG_OK) {
            ctl_err("%s", error);
            goto out;
        }
    }

    if (ctl->json) {
        fputs("{\"dir\":", stdout);
        ctl_json_string(stdout, dir);
        printf(",\"epoch\":\"%s\",\"mailboxes\":%llu,\"messages\":%llu,"
               "\"bytes\":%llu,\"previous_store\":",
               bc.epoch, (unsigned long long)bc.mailboxes,
               (unsigned long long)bc.messages, (unsigned long long)bc.bytes);
        if (aside != NULL)
            ctl_json_string(stdout, aside);
        else
            fputs("null", stdout);
        fputs(",\"config_from_backup\":", stdout);
        if (conf_dst != NULL)
            ctl_json_string(stdout, conf_dst);
        else
            fputs("null", stdout);
        fputs("}\n", stdout);
    } else {
        printf("restored %s into %s/store\n", dir, ctl->cfg->s.data_dir);
        printf("  %-16s %llu mailbox(es), %llu message(s), %llu bytes\n",
               "contents:", (unsigned long long)bc.mailboxes,
               (unsigned long long)bc.messages, (unsigned long long)bc.bytes);
        printf("  %-16s %s (new: POP3 UIDLs never repeat old ones)\n",
               "epoch:", bc.epoch);
        printf("  %-16s %s\n",
               "previous store:", aside != NULL ? aside : "none");
        printf("  %-16s %s\n", "certificate:",
               cert_done != NULL ? cert_done : "not in the backup");
        printf("  %-16s %s\n",
               "key:", key_done != NULL ? key_done : "not in the backup");
        if (conf_dst != NULL)
            printf("  %-16s %s (compare it with %s; that file was not "
                   "changed)\n",
                   "configuration:", conf_dst, ctl->conf_file);
        printf("Start mailgated when ready.%s\n",
               aside != NULL ? " Remove the previous store once you no "
                               "longer need it."
                             : "");
    }
    rc = CTL_EXIT_OK;
    goto out;

broken:
    ctl_err("the restored store in %s/store cannot be used; to go back, "
            "move it away%s%s%s",
            ctl->cfg->s.data_dir, aside != NULL ? " and rename " : "",
            aside != NULL ? aside : "", aside != NULL ? " to store" : "");
out_root:
    ctl_priv_root(ctl);
out:
    if (st != NULL)
        mg_store_close(st);
    if (fd_store >= 0)
        close(fd_store);
    if (fd_conf >= 0)
        close(fd_conf);
    if (fd_cert >= 0)
        close(fd_cert);
    if (fd_key >= 0)
        close(fd_key);
    free(aside);
    free(conf_dst);
    free(cert_done);
    free(key_done);
    return rc;
}
