/*
 * store/dedup.h -- the proxy de-duplication index behind mg_store_api
 * (dedup_get, dedup_put); the records are in records.c.
 */
#ifndef MG_STORE_DEDUP_H
#define MG_STORE_DEDUP_H

#include <stdint.h>

#include <mailgate/store.h>

struct mg_store;

/** The store the two calls below use (NULL when it is closed). */
void mg_dedup_api_init(struct mg_store *st);

int mg_dedup_api_get(const char *mailbox_id, const char *upstream,
                     const char *user, const char *uidl, uint64_t *msg_id_r,
                     const char **error_r);
int mg_dedup_api_put(const char *mailbox_id, const char *upstream,
                     const char *user, const char *uidl, uint64_t msg_id,
                     uint64_t conn_id, mg_store_done_fn done, void *arg);

#endif /* MG_STORE_DEDUP_H */
