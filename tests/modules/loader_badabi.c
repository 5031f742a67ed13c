/* tests/modules/loader_badabi.c -- built for another ABI version */
#include "config.h"

#include <mailgate/module.h>

static int
badabi_configure(struct mg_modctx *m, const struct mg_core_api *api,
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

MG_MODULE_EXPORT(badabi) = {
    .abi_version = MG_ABI_VERSION + 1,
    .signature = MG_ABI_SIGNATURE,
    .name = "badabi",
    .description = "loader test: wrong ABI version",
    .configure = badabi_configure,
};
