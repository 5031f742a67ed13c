/*
 * modules/smtp/smtp.h -- the smtp module's own declarations.
 *
 *   smtp_parse.c    pure: command lines, paths, ESMTP parameters, BDAT
 *   smtp_data.c     pure: the DATA byte stream (end of data, dot-unstuffing,
 *                   bare CR/LF normalisation) -- no I/O
 *   smtp_session.c  the state machine of one session (conn, hooks, store),
 *                   with the files listed in smtp_session.h
 *   smtp_module.c   the descriptor, settings and listeners
 *
 * Only smtp_module.c and the session's files see the core API; the parsers
 * are plain C so that unit tests and the fuzz target can drive them alone.
 */
#ifndef MG_SMTP_H
#define MG_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mailgate/module.h>

#define SMTP_LINE_MAX   1002 /* command line with CRLF (RFC 5321 4.5.3.1.4) */
#define SMTP_PATH_MAX   512  /* forward/reverse path without <> */
#define SMTP_LOCAL_MAX  64   /* local part (RFC 5321 4.5.3.1.1) */
#define SMTP_DOMAIN_MAX 255  /* domain (RFC 5321 4.5.3.1.2) */

/* ============================================================ smtp_parse.c */

/** Commands the engine knows. */
enum smtp_cmd {
    SMTP_CMD_UNKNOWN = 0,
    SMTP_CMD_HELO,
    SMTP_CMD_EHLO,
    SMTP_CMD_MAIL,
    SMTP_CMD_RCPT,
    SMTP_CMD_DATA,
    SMTP_CMD_BDAT,
    SMTP_CMD_RSET,
    SMTP_CMD_NOOP,
    SMTP_CMD_QUIT,
    SMTP_CMD_VRFY,
    SMTP_CMD_EXPN,
    SMTP_CMD_HELP,
    SMTP_CMD_STARTTLS,
    SMTP_CMD_AUTH,
};

/** A reply the parser wants sent for a refused input. */
struct smtp_error {
    int code;          /* 500, 501, 552, 553, 555 */
    const char *ecode; /* "5.5.2" */
    const char *text;  /* static text, no CR/LF */
};

/** A command line split into verb and argument. */
struct smtp_command {
    enum smtp_cmd cmd;
    const char *verb; /* as sent (for logs), verblen bytes */
    size_t verblen;
    const char *arg; /* after the single space; "" when none */
    size_t arglen;
};

/**
 * Split a command line (without its CRLF). Verbs are case-insensitive;
 * exactly one SP separates verb and argument (a TAB or several spaces are
 * tolerated only where RFC 5321 clients are known to send them: trailing
 * spaces are trimmed). A NUL or a bare CR anywhere → 500 5.5.2. An empty
 * line → 500 5.5.2. MG_OK or MG_ERROR with *err.
 */
int smtp_parse_command(const char *line, size_t len, struct smtp_command *out,
                       struct smtp_error *err);

/** BODY= values. */
enum smtp_body {
    SMTP_BODY_NONE = 0,
    SMTP_BODY_7BIT,
    SMTP_BODY_8BITMIME,
};

/** MAIL FROM arguments. */
struct smtp_mail_args {
    char path[SMTP_PATH_MAX + 1]; /* reverse-path without <>; "" for <> */
    bool has_size;
    uint64_t size; /* SIZE= */
    enum smtp_body body;
    bool smtputf8;
};

/**
 * Parse the argument of MAIL ("FROM:<path> [params]"). Accepts <> and
 * source routes (@a,@b:user@dom, the route dropped). Refuses: missing
 * FROM:, missing <>, overlong paths (553 5.1.7 / 501 5.5.4), control
 * characters, unknown parameters (555 5.5.4), duplicate parameters (501),
 * SIZE not all digits or above 2^63 (501 5.5.4), BODY other than 7BIT and
 * 8BITMIME (555; BINARYMIME is not offered), SMTPUTF8 with a value (501);
 * DSN parameters RET= and ENVID= are checked for syntax and ignored.
 * A non-ASCII path needs SMTPUTF8 (553 5.6.7).
 */
int smtp_parse_mail(const char *arg, size_t len, struct smtp_mail_args *out,
                    struct smtp_error *err);

/** RCPT TO arguments. */
struct smtp_rcpt_args {
    char path[SMTP_PATH_MAX + 1]; /* forward-path without <> */
};

/**
 * Parse the argument of RCPT ("TO:<path> [params]"); <> is refused, and
 * so is <Postmaster> only in the sense that it has no domain (the caller
 * decides). NOTIFY= and ORCPT= are syntax-checked and ignored; other
 * parameters → 555 5.5.4.
 */
int smtp_parse_rcpt(const char *arg, size_t len, struct smtp_rcpt_args *out,
                    struct smtp_error *err);

/** BDAT <size> [LAST]: size ≤ 2^63, digits only. */
int smtp_parse_bdat(const char *arg, size_t len, uint64_t *size_r, bool *last_r,
                    struct smtp_error *err);

/**
 * Split a path into local part and domain (at the last '@'). The domain
 * is lower-cased into `domain`; the local part is copied as is. MG_ERROR
 * when there is no '@', a part is empty or too long.
 */
int smtp_split_address(const char *path, char *local, size_t localsz,
                       char *domain, size_t domainsz);

/** HELO/EHLO argument: a domain or an address literal, printable ASCII
 * without spaces; copied (at most outsz-1 bytes). MG_ERROR if empty or
 * invalid (501 5.5.4). */
int smtp_parse_helo(const char *arg, size_t len, char *out, size_t outsz,
                    struct smtp_error *err);

/* ============================================================= smtp_data.c */

/**
 * The DATA stream: the end is only <CRLF>.<CRLF> with real CRLFs (a line
 * "." after a bare LF or bare CR, or ended by one, is content: SMTP
 * smuggling never splits a message). Lines that start with '.' lose that
 * dot (RFC 5321 4.5.2). Lines ending in a bare LF or a bare CR are written
 * with CRLF. Everything else is passed byte for byte; lines may have any
 * length.
 */
struct smtp_data {
    int state;      /* private */
    bool done;      /* the end of data was consumed */
    uint64_t bytes; /* message bytes produced so far */
};

void smtp_data_init(struct smtp_data *d);

/**
 * Feed input: message bytes are appended to out (out grows by at most
 * 2 * len + 2 bytes). Returns the input bytes consumed: all of `len`, or
 * fewer when the end of data was reached (d->done; the rest is the next
 * command). A CR at the end of the input is held until the next byte.
 */
size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t len,
                      char *out, size_t *outlen);

#endif /* MG_SMTP_H */
