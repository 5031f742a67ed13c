/* core/loader.c -- find, dlopen and check modules; a process-wide cache */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"

/*
 * One loaded module. Entries are never dlclose'd: a module may have left
 * callbacks, timers or thread-local destructors behind, and an old
 * generation may still run its code while a new one starts. The cache is
 * used from the loop thread only.
 */
struct loader_entry {
    struct loader_entry *next;
    char *name;
    char *path; /* realpath of the file */
    void *handle;
    const struct mg_module *mod;
};

static struct loader_entry *loader_cache;

/* The name becomes part of a symbol and of a file name: keep it tame
 * (this also refuses "../x" and "a/b"). */
static bool
loader_name_ok(const char *name)
{
    size_t i;

    if (name == NULL || name[0] == '\0' || strlen(name) > 64)
        return false;
    for (i = 0; name[i] != '\0'; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

static struct loader_entry *
loader_find(const char *name)
{
    struct loader_entry *e;

    for (e = loader_cache; e != NULL; e = e->next) {
        if (strcmp(e->name, name) == 0)
            return e;
    }
    return NULL;
}

int
mg_module_check(const struct mg_module *mod, const char *name,
                const char **error_r)
{
    /* the version first: every later field depends on the layout */
    if (mod->abi_version != MG_ABI_VERSION) {
        *error_r = mg_error("module %s was built for ABI %u, this mailgated "
                            "speaks %u: rebuild it against this version's "
                            "headers",
                            name, (unsigned)mod->abi_version,
                            (unsigned)MG_ABI_VERSION);
        return MG_ERROR;
    }
    if (mod->signature == NULL ||
        strcmp(mod->signature, MG_ABI_SIGNATURE) != 0) {
        *error_r =
            mg_error("module %s was built with signature \"%s\", this "
                     "mailgated has \"%s\": rebuild it against this "
                     "build's headers",
                     name, mod->signature != NULL ? mod->signature : "(none)",
                     MG_ABI_SIGNATURE);
        return MG_ERROR;
    }
    if (mod->name == NULL || strcmp(mod->name, name) != 0) {
        *error_r = mg_error("module %s calls itself \"%s\": the descriptor "
                            "name must match the module name",
                            name, mod->name != NULL ? mod->name : "(null)");
        return MG_ERROR;
    }
    if (mod->configure == NULL) {
        *error_r = mg_error("module %s has no configure function", name);
        return MG_ERROR;
    }
    return MG_OK;
}

const struct mg_module *
mg_module_load(const char *name, const char *path, const char *module_dir,
               const char **error_r)
{
    char resolved[PATH_MAX], sym[96];
    struct loader_entry *e;
    const struct mg_module *mod;
    const char *file;
    char *owned = NULL;
    void *handle;

    if (!loader_name_ok(name)) {
        *error_r = mg_error("invalid module name '%s' (use a-z, 0-9 and _)",
                            name != NULL ? name : "");
        return NULL;
    }
    if (path == NULL && (module_dir == NULL || module_dir[0] == '\0')) {
        *error_r = mg_error("cannot load module '%s': no path and no "
                            "module_dir",
                            name);
        return NULL;
    }
    file = path;
    if (file == NULL)
        file = owned = mg_xasprintf("%s/%s.so", module_dir, name);

    if (realpath(file, resolved) == NULL) {
        int err = errno;

        if (path == NULL)
            *error_r = mg_error("cannot load module '%s' from %s: %s; is it "
                                "installed in %s?",
                                name, file, strerror(err), module_dir);
        else
            *error_r = mg_error("cannot load module '%s' from %s: %s", name,
                                file, strerror(err));
        free(owned);
        return NULL;
    }

    e = loader_find(name);
    if (e != NULL) {
        if (strcmp(e->path, resolved) == 0) {
            free(owned);
            return e->mod;
        }
        *error_r = mg_error("module '%s' is already loaded from %s; cannot "
                            "load a second copy from %s",
                            name, e->path, resolved);
        free(owned);
        return NULL;
    }

    /* RTLD_LOCAL: a module's symbols never satisfy another module's
     * references; RTLD_NOW: an unresolved symbol fails here, not later */
    handle = dlopen(resolved, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *de = dlerror();

        if (path == NULL)
            *error_r =
                mg_error("cannot load module '%s' from %s: %s; is it "
                         "installed in %s?",
                         name, resolved, de != NULL ? de : "?", module_dir);
        else
            *error_r = mg_error("cannot load module '%s' from %s: %s", name,
                                resolved, de != NULL ? de : "?");
        free(owned);
        return NULL;
    }
    free(owned);

    (void)snprintf(sym, sizeof(sym), "mg_module_%s", name);
    mod = dlsym(handle, sym);
    if (mod == NULL) {
        *error_r = mg_error("%s is not a mailgate module '%s' (no symbol %s)",
                            resolved, name, sym);
        /* Safe to close: nothing of it ran except its constructors and no
         * pointer into it was kept. */
        dlclose(handle);
        return NULL;
    }
    if (mg_module_check(mod, name, error_r) != MG_OK) {
        *error_r = mg_error("%s: %s", resolved, *error_r);
        /* Closed like the no-symbol case: only its descriptor was read.
         * Keeping it mapped would make a reload after a rebuild find the
         * stale copy (dlopen matches by path) instead of the fixed file. */
        dlclose(handle);
        return NULL;
    }

    e = mg_xcalloc(1, sizeof(*e));
    e->name = mg_xstrdup(name);
    e->path = mg_xstrdup(resolved);
    e->handle = handle;
    e->mod = mod;
    e->next = loader_cache;
    loader_cache = e;
    return mod;
}

void
mg_module_cache_reset(void)
{
    struct loader_entry *e, *next;

    /* the handles stay open on purpose (see struct loader_entry) */
    for (e = loader_cache; e != NULL; e = next) {
        next = e->next;
        free(e->name);
        free(e->path);
        free(e);
    }
    loader_cache = NULL;
}
