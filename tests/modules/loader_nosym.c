/* tests/modules/loader_nosym.c -- a shared object that is not a module */
#include "config.h"

#include <mailgate/module.h>

extern MG_EXPORT int nosym_answer(void);

MG_EXPORT int
nosym_answer(void)
{
    return 42;
}
