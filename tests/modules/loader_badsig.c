/* tests/modules/loader_badsig.c -- built with another build signature */
#include "config.h"

#include <mailgate/module.h>

static int
badsig_configure(struct mg_modctx *m, const struct mg_core_api *api,
                 const struct config_setting_t *sect, void **state_r,
                 const char **error_r)
{
    (void)m;
    (void)api;
    (void)sect;
    (void)error_r;
    *state_r = NULL;
    return MG_OK;
}

MG_MODULE_EXPORT(badsig) = {
    .abi_version = MG_ABI_VERSION,
    .signature = "not-this-build",
    .name = "badsig",
    .description = "loader test: wrong build signature",
    .configure = badsig_configure,
};
