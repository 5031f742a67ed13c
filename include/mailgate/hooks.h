/*
 * include/mailgate/hooks.h -- data structs of the hooks (doc/hooks.md).
 * A handler casts `mg_hook_call.data` to the struct of its hook.
 */
#ifndef MG_HOOKS_H
#define MG_HOOKS_H

#include <stdint.h>

/** "config.reload": a new generation started (fired by the core). */
struct mg_hook_config_reload {
    uint64_t old_generation; /**< 0 at the first start */
    uint64_t new_generation;
    const char *config_file;
};

/** "cert.changed": the certificate files were replaced (fired by the
 * core after it loaded them for new connections). */
struct mg_hook_cert_changed {
    const char *cert_file;
    const char *key_file;
};

#endif /* MG_HOOKS_H */
