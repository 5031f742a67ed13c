/*
 * modules/pop3/pop3_throttle.c -- failed logins counted per client address
 * and per (client address, mailbox), never per mailbox alone: the journal
 * address is public, and a count per mailbox would let anyone lock the
 * archiver out. IPv6 clients count per /64 (one host has a whole /64).
 *
 * A fixed table (no allocation, bounded memory under a flood of
 * addresses): a full bucket forgets its oldest entry. A count ends
 * auth_throttle_window seconds after its first failure. Networks
 * in auth_throttle_exempt (the archiver's) are never throttled.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "pop3_engine.h"

#define POP3_TH_SLOTS 4096 /* entries */
#define POP3_TH_WAYS  8    /* entries searched per key */
#define POP3_TH_KEY   112

struct pop3_th_entry {
    char key[POP3_TH_KEY]; /* "a:<addr>" or "m:<addr> <mailbox>"; "" free */
    unsigned failures;
    uint64_t first_ms; /* of the window's first failure */
};

/* one table per process: counts survive a reload */
static struct pop3_th_entry pop3_th[POP3_TH_SLOTS];

static uint64_t
pop3_th_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The client as counted: its IPv4 address, or its IPv6 /64. */
static void
pop3_th_client(const struct mg_peer *p, char *out, size_t size)
{
    if (p->sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&p->sa;
        struct in6_addr a = in6->sin6_addr;

        if (!IN6_IS_ADDR_V4MAPPED(&a)) {
            memset(&a.s6_addr[8], 0, 8);
            if (inet_ntop(AF_INET6, &a, out, (socklen_t)size) != NULL)
                return;
        }
    }
    snprintf(out, size, "%s", p->addr != NULL ? p->addr : "?");
}

static bool
pop3_th_exempt(const struct pop3_state *st, const struct mg_peer *p)
{
    for (size_t i = 0; i < st->nthrottle_exempt; i++) {
        if (pop3_api->net_match(st->throttle_exempt[i],
                                (const struct sockaddr *)&p->sa, NULL) == 1)
            return true;
    }
    return false;
}

/* The entry for key (create: a free or the oldest slot of its bucket). */
static struct pop3_th_entry *
pop3_th_get(const char *key, bool create, uint64_t now, uint64_t window_ms)
{
    size_t base = (size_t)(pop3_th_hash(key) % (POP3_TH_SLOTS / POP3_TH_WAYS)) *
                  POP3_TH_WAYS;
    struct pop3_th_entry *victim = NULL;

    for (size_t i = 0; i < POP3_TH_WAYS; i++) {
        struct pop3_th_entry *e = &pop3_th[base + i];

        if (e->key[0] != '\0' && now - e->first_ms >= window_ms)
            e->key[0] = '\0'; /* the window is over */
        if (e->key[0] != '\0' && strcmp(e->key, key) == 0)
            return e;
        if (victim == NULL || e->key[0] == '\0' ||
            (victim->key[0] != '\0' && e->first_ms < victim->first_ms))
            victim = e;
    }
    if (!create)
        return NULL;
    snprintf(victim->key, sizeof(victim->key), "%s", key);
    victim->failures = 0;
    victim->first_ms = now;
    return victim;
}

static void
pop3_th_keys(const struct mg_peer *p, const char *mailbox, char *akey,
             char *mkey)
{
    char client[64];

    pop3_th_client(p, client, sizeof(client));
    snprintf(akey, POP3_TH_KEY, "a:%s", client);
    snprintf(mkey, POP3_TH_KEY, "m:%s %.40s", client, mailbox);
}

bool
pop3_throttled(const struct pop3_state *st, const struct mg_peer *p,
               const char *mailbox)
{
    char akey[POP3_TH_KEY], mkey[POP3_TH_KEY];
    uint64_t now = pop3_api->now_ms(), win = st->throttle_window_s * 1000ULL;
    const struct pop3_th_entry *a, *m;

    if (pop3_th_exempt(st, p))
        return false;
    pop3_th_keys(p, mailbox, akey, mkey);
    a = pop3_th_get(akey, false, now, win);
    m = pop3_th_get(mkey, false, now, win);
    return (a != NULL && a->failures >= st->throttle_addr) ||
           (m != NULL && m->failures >= st->throttle_mailbox);
}

void
pop3_throttle_fail(const struct pop3_state *st, const struct mg_peer *p,
                   const char *mailbox)
{
    char akey[POP3_TH_KEY], mkey[POP3_TH_KEY];
    uint64_t now = pop3_api->now_ms(), win = st->throttle_window_s * 1000ULL;

    if (pop3_th_exempt(st, p))
        return;
    pop3_th_keys(p, mailbox, akey, mkey);
    pop3_th_get(akey, true, now, win)->failures++;
    pop3_th_get(mkey, true, now, win)->failures++;
}

void
pop3_throttle_success(const struct pop3_state *st, const struct mg_peer *p,
                      const char *mailbox)
{
    char akey[POP3_TH_KEY], mkey[POP3_TH_KEY];
    struct pop3_th_entry *m;
    uint64_t now = pop3_api->now_ms(), win = st->throttle_window_s * 1000ULL;

    /* the right password forgives its own (address, mailbox) count, not
     * the address's: one good login must not reset a guesser's budget */
    pop3_th_keys(p, mailbox, akey, mkey);
    m = pop3_th_get(mkey, false, now, win);
    if (m != NULL)
        m->key[0] = '\0';
}
