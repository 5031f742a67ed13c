/* core/limits.c -- connection counting: global, per IP, per listener */
#include "config.h"

#include <string.h>

#include "mg.h"

#define LIMITS_BUCKETS 4096

/* One address with open connections; all generations share the counts. */
struct limits_ip {
    struct limits_ip *next;
    uint8_t key[16];
    size_t keylen;
    unsigned count;
};

static struct limits_ip *limits_table[LIMITS_BUCKETS];
static unsigned limits_total;

static size_t
limits_hash(const uint8_t *key, size_t len)
{
    size_t h = 5381;

    for (size_t i = 0; i < len; i++)
        h = h * 33 + key[i];
    return h % LIMITS_BUCKETS;
}

static struct limits_ip **
limits_slot(const uint8_t *key, size_t len)
{
    struct limits_ip **pp = &limits_table[limits_hash(key, len)];

    while (*pp != NULL &&
           ((*pp)->keylen != len || memcmp((*pp)->key, key, len) != 0))
        pp = &(*pp)->next;
    return pp;
}

int
mg_limits_enter(const struct sockaddr *sa, const struct mg_settings *s,
                struct mg_listener *l, bool *exempt_r)
{
    uint8_t key[16];
    size_t len = mg_sockaddr_key(sa, key);
    struct limits_ip **pp = limits_slot(key, len);
    bool exempt = mg_netlist_match(&s->limit_exempt, sa);

    *exempt_r = exempt;
    if (!exempt) {
        if (limits_total >= (uint64_t)s->max_connections)
            return MG_DECLINED;
        if (*pp != NULL && (*pp)->count >= (uint64_t)s->max_connections_per_ip)
            return MG_DECLINED;
        if (l != NULL && l->max_connections > 0 &&
            l->nconns >= (uint64_t)l->max_connections)
            return MG_DECLINED;
    }
    if (*pp == NULL) {
        *pp = mg_xcalloc(1, sizeof(**pp));
        memcpy((*pp)->key, key, len);
        (*pp)->keylen = len;
    }
    (*pp)->count++;
    limits_total++;
    return MG_OK;
}

void
mg_limits_leave(const struct sockaddr *sa, struct mg_listener *l)
{
    uint8_t key[16];
    size_t len = mg_sockaddr_key(sa, key);
    struct limits_ip **pp = limits_slot(key, len);

    (void)l;
    if (*pp == NULL) {
        mg_fatalx("connection limits: leaving an address never entered");
    } else if (--(*pp)->count == 0) {
        struct limits_ip *dead = *pp;

        *pp = dead->next;
        free(dead);
    }
    limits_total--;
}

unsigned
mg_limits_total(void)
{
    return limits_total;
}
