/*
 * store/vault_aes.h -- the chunk cipher of encryption scheme 3 (vault.c's
 * helper): AES-256-GCM through OpenSSL EVP, one key per message.
 */
#ifndef MG_VAULT_AES_H
#define MG_VAULT_AES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define MG_VAULT_AES_KEYBYTES 32
#define MG_VAULT_AES_TAGBYTES 16
/** The flags byte in front of each chunk and at the end of its AD. */
#define MG_VAULT_AES_FINAL 0x01

/** Whether OpenSSL provides AES-256-GCM (a FIPS or minimal provider
 * configuration might not). */
bool mg_vault_aes_usable(void);
/** Whether the CPU runs AES and GCM's multiplication in hardware (then
 * scheme 3 is faster than scheme 2 and constant-time). */
bool mg_vault_aes_hardware(void);

/** A context keyed with the message key (its schedule lives inside
 * OpenSSL, which cleanses it when the context is freed). NULL only when
 * AES-256-GCM is not available. */
EVP_CIPHER_CTX *mg_vault_aes_new(const uint8_t key[MG_VAULT_AES_KEYBYTES],
                                 bool encrypt);
/** Chunk i: out = flags || ciphertext || tag (len + 17 bytes), the AD
 * being ad[0..adlen) || flags (ad has room for that byte). */
void mg_vault_aes_seal(EVP_CIPHER_CTX *c, uint64_t i, uint8_t flags,
                       uint8_t *ad, size_t adlen, const uint8_t *in, size_t len,
                       uint8_t *out);
/** The reverse: 0 and *flags, or -1 (bad tag or unknown flags; out is
 * wiped). len ≥ 17 is the caller's check. */
int mg_vault_aes_open(EVP_CIPHER_CTX *c, uint64_t i, uint8_t *ad, size_t adlen,
                      const uint8_t *in, size_t len, uint8_t *out,
                      uint8_t *flags);

#endif
