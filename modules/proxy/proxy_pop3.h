/*
 * modules/proxy/proxy_pop3.h -- the POP3 half of the recording proxy:
 * what its three files share. The session and its state are declared in
 * proxy.h (the upstream and recording files use them too).
 *
 *   proxy_pop3.c        the pop3.login takeover, the session's lifetime
 *                       (the list, kill, free), the client's events and
 *                       the batched output to the client
 *   proxy_pop3_relay.c  the relay: the client's commands parsed and sent
 *                       upstream one at a time, the upstream's replies
 *                       checked and passed on, RETR and DELE recorded
 *   proxy_pop3_ahead.c  record-ahead: the next messages retrieved and
 *                       recorded while the client reads the one before,
 *                       then served from memory
 *
 * The relay drives the session (proxy_relay_resume); it asks the
 * record-ahead part to start, step and serve, and the record-ahead part
 * asks the relay only whether the client's next command can be answered
 * from memory.
 */
#ifndef MG_PROXY_POP3_H
#define MG_PROXY_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"

/** The core's connection calls, for the client and the upstream. */
static inline const struct mg_conn_api *
proxy_conn(const struct proxy_session *s)
{
    return s->st->api->conn;
}

/* ------------------------------------------------------ proxy_pop3.c */

/** End the session: the upstream without QUIT (nothing is deleted
 * there), the client after what is queued; `why` goes to the log. */
void proxy_session_kill(struct proxy_session *s, const char *why);
/** Queue output for the client; written once PROXY_FLUSH bytes wait. */
void proxy_out_add(struct proxy_session *s, const char *data, size_t len);
/** Queue a line for the client (CRLF added). */
void proxy_out_line(struct proxy_session *s, const char *line, size_t len);
/** Write the queued output; s->blocked when the client is behind. */
void proxy_out_flush(struct proxy_session *s);
/** A status line for the client, written at once. */
void proxy_out_reply(struct proxy_session *s, const char *fmt, ...)
    MG_PRINTF(2, 3);
/** The upstream's queue of commands awaiting replies (s->upq): a command
 * went upstream for `who` (a slot of s->pf or PROXY_UPQ_CLIENT); who the
 * next reply is for (-1: none); that reply is complete; how many of the
 * awaited ones are read ahead. More than one is awaited only at an
 * upstream that announced PIPELINING. */
void proxy_upq_push(struct proxy_session *s, uint8_t who);
int proxy_upq_head(const struct proxy_session *s);
void proxy_upq_pop(struct proxy_session *s);
unsigned proxy_upq_ahead(const struct proxy_session *s);

/* ------------------------------------------------ proxy_pop3_relay.c */

/** The client's next command (already received) is RETR of a message
 * read ahead: it can be answered without the upstream. */
bool proxy_relay_next_local(struct proxy_session *s);

/* ------------------------------------------------ proxy_pop3_ahead.c */

/** The slot whose message the upstream is sending, or NULL. */
struct proxy_prefetch *proxy_pf_reading(struct proxy_session *s);
/** The message n read ahead completely, or NULL. */
struct proxy_prefetch *proxy_pf_ready(struct proxy_session *s, uint32_t n);
/** A copy read ahead still being committed (any message when n is 0). */
bool proxy_pf_committing(struct proxy_session *s, uint32_t n);
/** Start the commits held back to share one with the next message's. */
void proxy_pf_commit_held(struct proxy_session *s);
/** Forget a message read ahead; a copy already committed stays. */
void proxy_pf_drop(struct proxy_session *s, struct proxy_prefetch *pf);
/** Read ahead from message n on, if the upstream is idle, a slot is free
 * and n qualifies (else n + 1 … while they are merely recorded already). */
void proxy_pf_start(struct proxy_session *s, uint32_t n);
/** Read further ahead after the last message read ahead, if any (the
 * client's command was answered). */
void proxy_pf_continue(struct proxy_session *s);
/** One step of reading ahead; false to stop for now. */
bool proxy_pf_step(struct proxy_session *s, struct proxy_prefetch *pf);
/** The upstream went away while pf was being read ahead: nothing of it
 * is kept. */
void proxy_pf_lost(struct proxy_session *s, struct proxy_prefetch *pf);
/** RETR of a message read ahead: answered from memory, its "." once its
 * copy is durable. */
void proxy_pf_serve(struct proxy_session *s, struct proxy_prefetch *pf);
/** pf's copy is durable (ok), or could not be stored (s->why). */
void proxy_pf_recorded(struct proxy_session *s, struct proxy_prefetch *pf,
                       bool ok);

#endif /* MG_PROXY_POP3_H */
