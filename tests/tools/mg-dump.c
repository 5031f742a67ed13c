/*
 * tests/tools/mg-dump.c -- list and decrypt a mailbox's messages (test-only).
 *
 *   mg-dump DATA_DIR MAILBOX_ID [--password P | --password-file F]
 *           [--write DIR] [--keys]
 *
 * Opens DATA_DIR/store read-only, unlocks the mailbox key (the password is
 * read from stdin when neither option is given), prints one line per
 * visible message:
 *
 *   id=N uidl=U received=T size=S source=X sender=<a> rcpts=<b>,<c>
 *
 * and with --write stores each decrypted body as DIR/<id>.eml. Every
 * message is decrypted (and so checked) even without --write. With
 * --keys the line says how the message is encrypted instead:
 *
 *   id=N alg=A sender_key=HEX cipher=C  (schemes 2 and 3: the sender
 *                                        public key E; C xchacha20poly1305
 *                                        or aes256gcm)
 *   id=N alg=1 sender_key=- cipher=xchacha20poly1305  (scheme 1: a
 *                                        sealed message key)
 *
 *   mg-dump DATA_DIR MAILBOX_ID --stat
 *
 * needs no password and prints one line of counts: the store's last
 * committed transaction (how many durable commits were made) and the
 * mailbox's messages by state:
 *
 *   txnid=N writing=N held=N visible=N unconfirmed=N
 *
 * Exit 0: all fine; 1: any error ("wrong password" for a bad password).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static void
dump_usage(void)
{
    fprintf(stderr, "usage: mg-dump DATA_DIR MAILBOX_ID [--password P | "
                    "--password-file F] [--write DIR] [--keys]\n"
                    "       mg-dump DATA_DIR MAILBOX_ID --stat\n");
    exit(1);
}

/* The first line of a file or of stdin, without its line end. */
static int
dump_read_password(FILE *f, char *out, size_t size)
{
    size_t n;

    if (fgets(out, (int)size, f) == NULL)
        return -1;
    n = strcspn(out, "\r\n");
    out[n] = '\0';
    return 0;
}

static int
dump_unlock(struct mg_store *st, const char *mailbox_id, const char *password,
            struct mg_vault_key **key_r)
{
    struct mg_mailbox m;
    const char *error = NULL;
    MDB_txn *txn;
    int rc;

    memset(&m, 0, sizeof(m));
    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error);
        return -1;
    }
    rc = mg_rec_mailbox_get(st, txn, mailbox_id, &m, &error);
    mg_store_read_end(st, txn);
    if (rc == MG_DECLINED) {
        fprintf(stderr, "mg-dump: no mailbox %s\n", mailbox_id);
        return -1;
    }
    if (rc != MG_OK) {
        fprintf(stderr, "mg-dump: mailbox %s: %s\n", mailbox_id, error);
        return -1;
    }
    rc = MG_DECLINED;
    for (unsigned i = 0; i < m.nwraps && rc == MG_DECLINED; i++) {
        if (m.wraps[i].kind != MG_WRAP_PASSWORD)
            continue;
        rc = mg_vault_unlock(&m.wraps[i], m.pk, password, key_r, &error);
    }
    mg_mailbox_clear(&m);
    if (rc == MG_DECLINED) {
        fprintf(stderr, "mg-dump: wrong password\n");
        return -1;
    }
    if (rc != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error);
        return -1;
    }
    return 0;
}

/* The --keys line: the header's scheme, sender key and chunk cipher. */
static int
dump_key_line(struct mg_store *st, const char *mailbox_id, uint64_t id)
{
    struct mg_msg_header h;
    const char *error = NULL;
    char hex[2 * MG_VAULT_PK_BYTES + 1];
    MDB_txn *txn;
    int rc;

    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error);
        return -1;
    }
    rc = mg_rec_msg_get(st, txn, mailbox_id, id, &h, &error);
    mg_store_read_end(st, txn);
    if (rc != MG_OK) {
        fprintf(stderr, "mg-dump: message %" PRIu64 ": %s\n", id,
                error != NULL ? error : "gone");
        return -1;
    }
    if (h.alg == MG_VAULT_ALG_V2 || h.alg == MG_VAULT_ALG_V3) {
        for (size_t i = 0; i < MG_VAULT_PK_BYTES; i++)
            snprintf(hex + 2 * i, 3, "%02x", h.epk[i]);
    } else {
        snprintf(hex, sizeof(hex), "-");
    }
    printf("id=%" PRIu64 " alg=%u sender_key=%s cipher=%s\n", id, h.alg, hex,
           mg_vault_alg_cipher(h.alg));
    return 0;
}

/* Print one message's line; decrypt it, into DIR/<id>.eml with a dir. */
static int
dump_message(struct mg_store *st, const struct mg_vault_key *key,
             const char *mailbox_id, const struct mg_msg_ref *ref,
             const char *dir, bool keys)
{
    struct mg_store_reader *r;
    const struct mg_envelope *env;
    const char *error = NULL;
    char uidl[40], path[4096], tmp[4200];
    const void *data;
    FILE *out = NULL;
    uint64_t total = 0;
    size_t len;
    int rc;

    rc = mg_store_reader_open(st, key, mailbox_id, ref->id, &r, &error);
    if (rc != MG_OK) {
        fprintf(stderr, "mg-dump: message %" PRIu64 ": %s\n", ref->id, error);
        return -1;
    }
    if (dir != NULL) {
        snprintf(path, sizeof(path), "%s/%" PRIu64 ".eml", dir, ref->id);
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        out = fopen(tmp, "w");
        if (out == NULL) {
            fprintf(stderr, "mg-dump: %s: %s\n", tmp, strerror(errno));
            mg_store_reader_close(r);
            return -1;
        }
    }
    while ((rc = mg_store_reader_next(r, &data, &len, &error)) == MG_OK) {
        total += len;
        if (out != NULL && fwrite(data, 1, len, out) != len) {
            rc = MG_ERROR;
            error = strerror(errno);
            break;
        }
    }
    if (out != NULL && fclose(out) != 0 && rc == MG_DECLINED) {
        rc = MG_ERROR;
        error = strerror(errno);
    }
    if (rc != MG_DECLINED) {
        fprintf(stderr, "mg-dump: message %" PRIu64 ": %s\n", ref->id, error);
        if (dir != NULL)
            remove(tmp);
        mg_store_reader_close(r);
        return -1;
    }
    if (dir != NULL && rename(tmp, path) != 0) {
        fprintf(stderr, "mg-dump: %s: %s\n", path, strerror(errno));
        mg_store_reader_close(r);
        return -1;
    }
    if (keys) {
        mg_store_reader_close(r);
        return dump_key_line(st, mailbox_id, ref->id);
    }
    env = mg_store_reader_envelope(r);
    mg_msg_uidl(st, ref->id, uidl);
    printf("id=%" PRIu64 " uidl=%s received=%" PRIu64 " size=%" PRIu64
           " source=%s sender=<%s> rcpts=",
           ref->id, uidl, ref->received, total, env->source, env->sender);
    for (size_t i = 0; i < env->nrcpts; i++)
        printf("%s<%s>", i > 0 ? "," : "", env->rcpts[i]);
    printf("\n");
    mg_store_reader_close(r);
    return 0;
}

/* The --stat line (see the top comment). */
static int
dump_stat(struct mg_store *st, const char *mailbox_id)
{
    unsigned long long count[4] = {0}, unconfirmed = 0;
    struct mg_msg_ref *v = NULL;
    struct mg_msg_header h;
    const char *error = NULL;
    MDB_envinfo info;
    MDB_txn *txn;
    size_t n = 0;
    int rc = 0;

    if (mdb_env_info(mg_store_env(st), &info) != 0 ||
        mg_store_read_begin(st, &txn, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error != NULL ? error : "env info");
        return 1;
    }
    if (mg_rec_msg_list(st, txn, mailbox_id, false, &v, &n, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: listing: %s\n", error);
        rc = 1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (mg_rec_msg_get(st, txn, mailbox_id, v[i].id, &h, &error) != MG_OK) {
            fprintf(stderr, "mg-dump: message %llu: %s\n",
                    (unsigned long long)v[i].id, error);
            rc = 1;
            break;
        }
        count[h.state < 4 ? h.state : 0]++;
        if (h.flags & MG_MSG_F_UNCONFIRMED)
            unconfirmed++;
    }
    mg_store_read_end(st, txn);
    free(v);
    if (rc == 0)
        printf("txnid=%llu writing=%llu held=%llu visible=%llu "
               "unconfirmed=%llu\n",
               (unsigned long long)info.me_last_txnid, count[MG_MSG_WRITING],
               count[MG_MSG_HELD], count[MG_MSG_VISIBLE], unconfirmed);
    return rc;
}

int
main(int argc, char **argv)
{
    struct mg_store_config cfg = {.read_only = true};
    const char *password = NULL, *pwfile = NULL, *dir = NULL;
    const char *error = NULL;
    char storedir[4096], pwbuf[1024];
    struct mg_store *st;
    struct mg_vault_key *key = NULL;
    struct mg_msg_ref *v = NULL;
    MDB_txn *txn;
    size_t n = 0;
    int status = 0;
    bool keys = false;
    bool stat = false;

    if (argc < 3)
        dump_usage();
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--stat") == 0)
            stat = true;
        else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
            password = argv[++i];
        else if (strcmp(argv[i], "--password-file") == 0 && i + 1 < argc)
            pwfile = argv[++i];
        else if (strcmp(argv[i], "--write") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--keys") == 0)
            keys = true;
        else
            dump_usage();
    }
    if (password == NULL && !stat) {
        FILE *f = pwfile != NULL ? fopen(pwfile, "r") : stdin;

        if (f == NULL || dump_read_password(f, pwbuf, sizeof(pwbuf)) != 0) {
            fprintf(stderr, "mg-dump: cannot read the password\n");
            return 1;
        }
        if (f != stdin)
            fclose(f);
        password = pwbuf;
    }
    if (!mg_mailbox_id_valid(argv[2])) {
        fprintf(stderr, "mg-dump: invalid mailbox id\n");
        return 1;
    }
    if (mg_vault_init(1, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error);
        return 1;
    }
    snprintf(storedir, sizeof(storedir), "%s/store", argv[1]);
    cfg.dir = storedir;
    if (mg_store_open(&cfg, &st, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s: %s\n", storedir, error);
        return 1;
    }
    if (stat) {
        status = dump_stat(st, argv[2]);
        mg_store_close(st);
        return status;
    }
    if (dump_unlock(st, argv[2], password, &key) != 0) {
        mg_store_close(st);
        return 1;
    }
    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        fprintf(stderr, "mg-dump: %s\n", error);
        status = 1;
    } else {
        if (mg_rec_msg_list(st, txn, argv[2], true, &v, &n, &error) != MG_OK) {
            fprintf(stderr, "mg-dump: listing: %s\n", error);
            status = 1;
        }
        mg_store_read_end(st, txn);
    }
    for (size_t i = 0; i < n; i++) {
        if (dump_message(st, key, argv[2], &v[i], dir, keys) != 0)
            status = 1;
    }
    free(v);
    mg_vault_key_free(key);
    mg_store_close(st);
    return status;
}
