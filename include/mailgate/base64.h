/*
 * include/mailgate/base64.h -- standard base64 (RFC 4648 §4, with padding)
 * for SASL exchanges. Header-only, so that a module's pure parser
 * can use it without the core's API table.
 */
#ifndef MG_BASE64_H
#define MG_BASE64_H

#include <stddef.h>
#include <stdint.h>

static inline int
mg_base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/** Decode `len` characters into out (at most `outsz` bytes): the number
 * of bytes, or -1 for bad input (wrong length, a character outside the
 * alphabet, padding anywhere but the end) or when out is too small. An
 * empty input decodes to 0 bytes. */
static inline long
mg_base64_decode(const char *in, size_t len, void *out, size_t outsz)
{
    unsigned char *o = out;
    uint32_t acc = 0;
    size_t n = 0, pad = 0;
    unsigned bits = 0;

    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v;

        if (in[i] == '=' && i >= len - 2) {
            pad++;
            continue;
        }
        v = mg_base64_value((unsigned char)in[i]);
        if (v < 0 || pad > 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= outsz)
                return -1;
            o[n++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    return (long)n;
}

/** Encode `len` bytes into out, which holds 4 * ((len + 2) / 3) + 1
 * bytes; the text is NUL-terminated. */
static inline void
mg_base64_encode(const void *in, size_t len, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t o = 0;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;

        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

#endif /* MG_BASE64_H */
