/* tests/modules/loader_good.c -- a well-formed module for test_loader */
#include "config.h"

#include <mailgate/module.h>

/* calls of configure, start, stop, release; configure hands out the array
 * as the state so the test can read the counts without another export */
static int good_calls[4];

static int
good_configure(struct mg_modctx *m, const struct mg_core_api *api,
               const struct config_setting_t *sect, void **state_r,
               const char **error_r)
{
    (void)m;
    (void)api;
    (void)sect;
    (void)error_r;
    good_calls[0]++;
    *state_r = good_calls;
    return MG_OK;
}

static int
good_start(void *state, const char **error_r)
{
    (void)error_r;
    ((int *)state)[1]++;
    return MG_OK;
}

static void
good_stop(void *state)
{
    ((int *)state)[2]++;
}

static void
good_release(void *state)
{
    ((int *)state)[3]++;
}

MG_MODULE_EXPORT(good) = {
    MG_MODULE_V1,
    .name = "good",
    .description = "loader test: a good module",
    .configure = good_configure,
    .start = good_start,
    .stop = good_stop,
    .release = good_release,
};
