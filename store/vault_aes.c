/*
 * store/vault_aes.c -- AES-256-GCM chunks of encryption scheme 3.
 *
 * OpenSSL's EVP AES-256-GCM (VAES/AVX-512 or AES-NI with carry-less
 * multiplication) runs at 3-4 times the speed of libsodium's
 * secretstream on the CPUs we measured, and libsodium's own AES-GCM uses
 * only the older AES-NI code. The key schedule lives in the EVP context
 * (OpenSSL heap, cleansed when the context is freed); the message key it
 * was made from stays with the caller in sodium_malloc memory.
 *
 * Each context belongs to one message, so the nonce need only be unique
 * within it: 4 zero bytes and the chunk number, 64 bits big-endian.
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <sodium.h>

#include "mg.h"
#include "vault_aes.h"

#define AES_IVBYTES 12

static pthread_once_t aes_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *aes_gcm; /* fetched once: an implicit fetch per
                               message would look the provider up again */

static void
aes_fetch(void)
{
    aes_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

bool
mg_vault_aes_usable(void)
{
    pthread_once(&aes_once, aes_fetch);
    return aes_gcm != NULL;
}

bool
mg_vault_aes_hardware(void)
{
    /* AES-NI and PCLMULQDQ (libsodium checks at sodium_init); OpenSSL
     * uses them, or wider forms of them, where they are */
    return crypto_aead_aes256gcm_is_available() != 0;
}

EVP_CIPHER_CTX *
mg_vault_aes_new(const uint8_t key[MG_VAULT_AES_KEYBYTES], bool encrypt)
{
    EVP_CIPHER_CTX *c;

    if (!mg_vault_aes_usable())
        return NULL;
    c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        mg_fatalx("vault: out of memory for a cipher context");
    if (EVP_CipherInit_ex2(c, aes_gcm, key, NULL, encrypt ? 1 : 0, NULL) != 1) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return c;
}

static void
aes_iv(uint8_t iv[AES_IVBYTES], uint64_t i)
{
    memset(iv, 0, 4);
    for (int k = 0; k < 8; k++)
        iv[4 + k] = (uint8_t)(i >> (56 - 8 * k));
}

/* One GCM operation under the context's key: nonce iv, then the AD, then
 * len bytes of in to out; *outlen what the update wrote. 0 or -1. */
static int
aes_begin(EVP_CIPHER_CTX *c, const uint8_t iv[AES_IVBYTES], const uint8_t *ad,
          size_t adlen, const uint8_t *in, size_t len, uint8_t *out,
          int *outlen)
{
    int n = 0;

    *outlen = 0;
    if (EVP_CipherInit_ex2(c, NULL, NULL, iv, -1, NULL) != 1 ||
        EVP_CipherUpdate(c, NULL, &n, ad, (int)adlen) != 1)
        return -1;
    if (len > 0 && EVP_CipherUpdate(c, out, outlen, in, (int)len) != 1)
        return -1;
    return 0;
}

void
mg_vault_aes_seal(EVP_CIPHER_CTX *c, uint64_t i, uint8_t flags, uint8_t *ad,
                  size_t adlen, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t iv[AES_IVBYTES];
    int n = 0, m = 0;

    aes_iv(iv, i);
    ad[adlen] = flags;
    out[0] = flags;
    /* a keyed GCM context cannot fail here short of memory corruption;
     * going on would store what nobody can read */
    if (aes_begin(c, iv, ad, adlen + 1, in, len, out + 1, &n) != 0 ||
        EVP_EncryptFinal_ex(c, out + 1 + n, &m) != 1 ||
        (size_t)(n + m) != len ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, MG_VAULT_AES_TAGBYTES,
                            out + 1 + len) != 1)
        mg_fatalx("vault: AES-256-GCM encryption failed");
}

int
mg_vault_aes_open(EVP_CIPHER_CTX *c, uint64_t i, uint8_t *ad, size_t adlen,
                  const uint8_t *in, size_t len, uint8_t *out, uint8_t *flags)
{
    size_t clen = len - 1 - MG_VAULT_AES_TAGBYTES;
    uint8_t iv[AES_IVBYTES];
    int n = 0, m = 0;

    *flags = in[0];
    if ((in[0] & ~MG_VAULT_AES_FINAL) != 0)
        return -1; /* a flag this version does not know */
    aes_iv(iv, i);
    ad[adlen] = in[0];
    if (aes_begin(c, iv, ad, adlen + 1, in + 1, clen, out, &n) != 0 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, MG_VAULT_AES_TAGBYTES,
                            (void *)(in + 1 + clen)) != 1 ||
        EVP_DecryptFinal_ex(c, out + n, &m) != 1 || (size_t)(n + m) != clen) {
        /* GCM decrypts before the tag is checked */
        OPENSSL_cleanse(out, clen);
        return -1;
    }
    return 0;
}
