/*
 * modules/pop3/pop3.h -- the pop3 module's pure parts (no I/O, no core
 * API), shared by the engine, the unit tests and the fuzz target.
 *
 *   pop3_parse.c    command lines, message numbers, TOP arguments, login
 *                   names, SASL PLAIN responses, the dot-stuffing encoder
 *   pop3_session.c  the state machine of one session (pop3_engine.h)
 *   pop3_trans.c    STAT, LIST, UIDL, DELE, RSET, NOOP; QUIT and UPDATE
 *   pop3_auth.c     USER/PASS, AUTH PLAIN, pop3.login, the key unlock
 *   pop3_retr.c     RETR/TOP: streaming decryption to the client
 *   pop3_throttle.c failed logins per address and (address, mailbox)
 *   pop3_module.c   the descriptor, settings and listeners
 */
#ifndef MG_POP3_H
#define MG_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mailgate/module.h>

/* A command line with CRLF: RFC 2449 allows 255 octets; a little more is
 * tolerated (long proxy user names). AUTH continuation lines carry base64
 * credentials and may be longer. */
#define POP3_LINE_MAX      514
#define POP3_AUTH_LINE_MAX 4098
#define POP3_ARG_MAX       255  /* one command argument (RFC 2449 §4) */
#define POP3_SECRET_MAX    3000 /* decoded SASL PLAIN response */

/** Commands the engine knows. */
enum pop3_cmd {
    POP3_CMD_UNKNOWN = 0,
    POP3_CMD_CAPA,
    POP3_CMD_STLS,
    POP3_CMD_USER,
    POP3_CMD_PASS,
    POP3_CMD_AUTH,
    POP3_CMD_APOP,
    POP3_CMD_STAT,
    POP3_CMD_LIST,
    POP3_CMD_UIDL,
    POP3_CMD_TOP,
    POP3_CMD_RETR,
    POP3_CMD_DELE,
    POP3_CMD_RSET,
    POP3_CMD_NOOP,
    POP3_CMD_QUIT,
};

/** A command line split into verb and argument. */
struct pop3_command {
    enum pop3_cmd cmd;
    const char *verb; /* as sent, verblen bytes (logs) */
    size_t verblen;
    const char *arg; /* after the single space; "" when none */
    size_t arglen;
};

/**
 * Split a command line (without its CRLF). The verb is 1..8 ASCII letters,
 * case-insensitive, followed by nothing or one SP and the argument (the
 * rest of the line, trailing spaces trimmed except for PASS, whose
 * argument is the password as sent). MG_ERROR with a static reason in
 * *why for a NUL, CR or LF, another control character in the verb, an
 * empty line or a verb that is not letters.
 */
int pop3_parse_command(const char *line, size_t len, struct pop3_command *out,
                       const char **why);

/**
 * A message number argument: decimal digits only (no sign, no spaces),
 * 1..UINT32_MAX; the whole argument. MG_ERROR otherwise.
 */
int pop3_parse_msgno(const char *arg, size_t len, uint32_t *n_r);

/**
 * TOP arguments "msg n": msg as pop3_parse_msgno, n decimal digits (a
 * value above UINT64_MAX is taken as UINT64_MAX: the whole body).
 */
int pop3_parse_top(const char *arg, size_t len, uint32_t *msg_r,
                   uint64_t *lines_r);

/**
 * The mailbox id a login name names: the id itself or "<id>@<domain>"
 * with `domain` the email_domain (NULL: ids only); case-insensitive. The
 * id is 8..32 of [a-z0-9], written lower-cased to id_r (33 bytes).
 * MG_DECLINED when the name cannot be a mailbox of this gateway.
 */
int pop3_login_mailbox(const char *user, size_t len, const char *domain,
                       char id_r[33]);

/**
 * Decode a SASL PLAIN response (base64 of authzid NUL authcid NUL passwd,
 * RFC 4616) into out (outsz bytes, NUL-terminated parts). "=" is the empty
 * response (refused). The three parts point into out. MG_ERROR for bad
 * base64, a wrong number of NULs, an empty authcid or password, or a
 * result larger than outsz - 1.
 */
int pop3_sasl_plain(const char *b64, size_t len, char *out, size_t outsz,
                    const char **authzid_r, const char **authcid_r,
                    const char **passwd_r);

/**
 * The dot-stuffing encoder of RETR and TOP (RFC 1939 §3): a '.' at the
 * start of a line gets a second one; `limit` body lines after the header
 * (TOP), or all of them (POP3_ALL_LINES). The terminating line is written
 * by pop3_stuff_end, with a CRLF before it when the message did not end
 * with one.
 */
#define POP3_ALL_LINES UINT64_MAX

struct pop3_stuff {
    uint64_t limit;   /* body lines to send */
    uint64_t lines;   /* body lines sent */
    uint64_t linelen; /* bytes of the current line so far */
    bool in_body;     /* the empty line after the header was seen */
    bool done;        /* the TOP limit was reached: ignore the rest */
    char last[2];     /* the last two bytes written */
};

void pop3_stuff_init(struct pop3_stuff *st, uint64_t limit);

/**
 * Encode `len` input bytes into out (at most 2 * len bytes). Returns the
 * bytes of input taken: all of them, or fewer once the TOP limit is
 * reached (st->done; the rest is not part of the response).
 */
size_t pop3_stuff_feed(struct pop3_stuff *st, const char *in, size_t len,
                       char *out, size_t *outlen);

/** The end of the response into out (at most 5 bytes): [CRLF] "." CRLF. */
size_t pop3_stuff_end(const struct pop3_stuff *st, char *out);

#endif /* MG_POP3_H */
