/* tests/modules/loader_misnamed.c -- descriptor name differs from symbol */
#include "config.h"

#include <mailgate/module.h>

static int
misnamed_configure(struct mg_modctx *m, const struct mg_core_api *api,
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

MG_MODULE_EXPORT(misnamed) = {
    MG_MODULE_V1,
    .name = "other",
    .description = "loader test: name does not match the symbol",
    .configure = misnamed_configure,
};
