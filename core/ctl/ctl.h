/*
 * core/ctl/ctl.h -- what the files of mailgatectl share: the command
 * context, output helpers, privileges and store access.
 *
 *   mailgatectl.c  main, command table, status, reload
 *   ctl_util.c     config, JSON/time output, argument checks
 *   ctl_priv.c     the data directory's user; opening the store
 *   ctl_mailbox.c  mailbox create|list|show|edit|delete|reset-password
 *   ctl_files.c    file copies for backup and restore
 *   ctl_backup.c   backup, restore
 */
#ifndef MG_CTL_H
#define MG_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "mg.h"

#define CTL_EXIT_OK          0
#define CTL_EXIT_FAIL        1
#define CTL_EXIT_USAGE       2
#define CTL_EXIT_NOT_RUNNING 3

struct mg_store;

/** What every command gets: options and the loaded config (lazily). */
struct ctl {
    const char *conf_file;
    bool json;
    struct mg_config *cfg;
    /* the data directory's owner (config `user`), resolved when root */
    bool priv_switch; /* running as root with a `user`: switch for data */
    uid_t uid;
    gid_t gid;
};

/** One command: `mailgatectl [options] NAME ARGS...`; run() gets argv
 * from NAME on (getopt_long skips argv[0]). */
struct ctl_command {
    const char *name;
    int (*run)(struct ctl *ctl, int argc, char **argv);
    const char *args; /* usage text of its arguments, "" for none */
    const char *summary;
};

/* ---------------------------------------------------------- ctl_util.c */

/** Load the config once; prints the error. */
int ctl_load(struct ctl *ctl);
/** Print "mailgatectl: <text>" to stderr. */
void ctl_err(const char *fmt, ...) MG_PRINTF(1, 2);
/** A JSON string literal (control bytes escaped). */
void ctl_json_string(FILE *out, const char *s);
/** "2025-01-02T03:04:05Z" (UTC); out must hold 21 bytes. */
void ctl_time_iso(uint64_t t, char out[21]);
/** "20250102T030405Z" for file names; out must hold 17 bytes. */
void ctl_time_stamp(uint64_t t, char out[17]);
/** "yes"/"no" → bool; MG_ERROR otherwise. */
int ctl_parse_yesno(const char *s, bool *v);
/** Options [--json] and exactly one argument (`what` names it in the
 * error); argv[0] is the (sub)command. */
int ctl_args_one(struct ctl *ctl, int argc, char **argv, const char *what,
                 const char **arg_r);
/** The store directory: <data_dir>/store (allocated). */
char *ctl_store_dir(struct ctl *ctl);

/* ---------------------------------------------------------- ctl_priv.c */

/**
 * Resolve the config's `user`/`group` when running as root (after
 * ctl_load). Nothing to do otherwise: mailgatectl then runs as itself.
 */
int ctl_priv_resolve(struct ctl *ctl);
/** Become the data directory's user for good (mailbox commands): the
 * data directory is created first when `create`. */
int ctl_priv_drop(struct ctl *ctl, bool create);
/** Effective ids of the data directory's user / back to root (backup and
 * restore read or write both sides). No-ops without a switch. */
int ctl_priv_user(struct ctl *ctl);
int ctl_priv_root(struct ctl *ctl);
/** Make the data directory exist (0700) and belong to the user. */
int ctl_datadir_prepare(struct ctl *ctl);
/**
 * Open the store (vault initialised). MG_DECLINED when it does not exist
 * and !create (nothing printed); errors are printed.
 */
int ctl_store_open(struct ctl *ctl, bool create, bool read_only,
                   struct mg_store **st_r);

/* ------------------------------------------------------- ctl_mailbox.c */

/** `mailbox SUBCOMMAND ...` */
int ctl_mailbox(struct ctl *ctl, int argc, char **argv);

/* -------------------------------------------------------- ctl_files.c */

/** Copy src to dst (created exclusively unless `replace`, with `mode`),
 * fsync'd. The source is opened before the call's credentials change:
 * src_fd is an open descriptor of the source. */
int ctl_copy_fd(int src_fd, const char *dst, mode_t mode, bool replace,
                const char **error_r);
/** Open src read-only and copy it (same credentials for both sides). */
int ctl_copy_file(const char *src, const char *dst, mode_t mode, bool replace,
                  const char **error_r);
/** fsync a directory (after creating or renaming entries in it). */
int ctl_fsync_dir(const char *dir, const char **error_r);
/** MG_OK: dir does not exist or is an empty directory. */
int ctl_dir_usable(const char *dir, bool *exists_r, const char **error_r);
/** True when path is inside dir (lexically, both absolute). */
bool ctl_path_inside(const char *path, const char *dir);

/* ------------------------------------------------------- ctl_backup.c */

/** `backup DIR` */
int ctl_backup(struct ctl *ctl, int argc, char **argv);
/** `restore DIR` */
int ctl_restore(struct ctl *ctl, int argc, char **argv);

#endif /* MG_CTL_H */
