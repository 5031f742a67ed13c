/* tests/unit/test_loader.c -- core/loader.c against tests/modules/ */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mg.h"

static const char *loader_dir;

static int
setup(void **state)
{
    (void)state;
    mg_module_cache_reset();
    return 0;
}

static char *
mod_path(const char *name)
{
    return mg_xasprintf("%s/%s.so", loader_dir, name);
}

static void
test_good(void **state)
{
    const struct mg_module *m, *m2, *m3;
    const char *err = NULL;
    char *path = mod_path("good");
    char *odd = mg_xasprintf("%s/./good.so", loader_dir);
    void *st = NULL;
    int *calls;

    (void)state;
    m = mg_module_load("good", NULL, loader_dir, &err);
    assert_non_null(m);
    assert_int_equal(m->abi_version, MG_ABI_VERSION);
    assert_string_equal(m->signature, MG_ABI_SIGNATURE);
    assert_string_equal(m->name, "good");
    assert_non_null(m->description);
    assert_non_null(m->configure);
    assert_non_null(m->start);
    assert_non_null(m->stop);
    assert_non_null(m->release);
    assert_int_equal(mg_module_check(m, "good", &err), MG_OK);

    /* the code runs: configure hands out its call counters */
    assert_int_equal(m->configure(NULL, NULL, NULL, &st, &err), MG_OK);
    calls = st;
    assert_int_equal(m->start(st, &err), MG_OK);
    m->stop(st);
    m->release(st);
    assert_int_equal(calls[0], 1);
    assert_int_equal(calls[1], 1);
    assert_int_equal(calls[2], 1);
    assert_int_equal(calls[3], 1);

    /* again: by name, by explicit path, by a path spelled differently */
    m2 = mg_module_load("good", NULL, loader_dir, &err);
    assert_ptr_equal(m, m2);
    m3 = mg_module_load("good", path, NULL, &err);
    assert_ptr_equal(m, m3);
    m3 = mg_module_load("good", odd, "/nonexistent", &err);
    assert_ptr_equal(m, m3);
    free(path);
    free(odd);
}

static void
test_good_exports_one_symbol(void **state)
{
    char *path = mod_path("good");
    char *cmd = mg_xasprintf("nm -D --defined-only '%s'", path);
    char line[512];
    unsigned modsyms = 0, lines = 0;
    FILE *f;

    (void)state;
    f = popen(cmd, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        char addr[64], type[8], name[256];

        if (sscanf(line, "%63s %7s %255s", addr, type, name) != 3)
            continue;
        lines++;
        if (strncmp(name, "mg_module_", 10) == 0) {
            assert_string_equal(name, "mg_module_good");
            modsyms++;
            continue;
        }
        /* linker-made symbols, and ASan's ODR indicator of our symbol */
        if (strcmp(name, "_init") == 0 || strcmp(name, "_fini") == 0 ||
            strcmp(name, "__bss_start") == 0 || strcmp(name, "_edata") == 0 ||
            strcmp(name, "_end") == 0 ||
            strcmp(name, "__odr_asan.mg_module_good") == 0)
            continue;
        fail_msg("good.so exports an unexpected symbol: %s", name);
    }
    assert_int_equal(pclose(f), 0);
    assert_int_equal(modsyms, 1);
    assert_true(lines >= 1);
    free(cmd);
    free(path);
}

static void
test_duplicate(void **state)
{
    char tmpl[] = "/tmp/mg-loader-XXXXXX";
    const struct mg_module *m, *m2;
    const char *err = NULL;
    char *src = mod_path("good"), *dst, *cmd;

    (void)state;
    assert_non_null(mkdtemp(tmpl));
    dst = mg_xasprintf("%s/good.so", tmpl);
    cmd = mg_xasprintf("cp '%s' '%s'", src, dst);
    assert_int_equal(system(cmd), 0);

    m = mg_module_load("good", NULL, loader_dir, &err);
    assert_non_null(m);
    m2 = mg_module_load("good", NULL, tmpl, &err);
    assert_null(m2);
    assert_non_null(strstr(err, "module 'good' is already loaded from "));
    assert_non_null(strstr(err, "cannot load a second copy from "));
    assert_non_null(strstr(err, tmpl));
    m2 = mg_module_load("good", dst, NULL, &err);
    assert_null(m2);
    assert_non_null(strstr(err, "already loaded"));

    unlink(dst);
    rmdir(tmpl);
    free(cmd);
    free(dst);
    free(src);
}

static void
test_badabi(void **state)
{
    const char *err = NULL;
    char want[64];

    (void)state;
    assert_null(mg_module_load("badabi", NULL, loader_dir, &err));
    assert_non_null(err);
    (void)snprintf(want, sizeof(want), "built for ABI %d", MG_ABI_VERSION + 1);
    assert_non_null(strstr(err, want));
    (void)snprintf(want, sizeof(want), "speaks %d", MG_ABI_VERSION);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "badabi.so: "));
    /* refused again, not cached as usable */
    err = NULL;
    assert_null(mg_module_load("badabi", NULL, loader_dir, &err));
    assert_non_null(err);
}

static void
test_badsig(void **state)
{
    const char *err = NULL;

    (void)state;
    assert_null(mg_module_load("badsig", NULL, loader_dir, &err));
    assert_non_null(strstr(err, "signature"));
    assert_non_null(strstr(err, "not-this-build"));
    assert_non_null(strstr(err, MG_ABI_SIGNATURE));
}

static void
test_nosym(void **state)
{
    const char *err = NULL;

    (void)state;
    assert_null(mg_module_load("nosym", NULL, loader_dir, &err));
    assert_non_null(strstr(err, "is not a mailgate module 'nosym'"));
    assert_non_null(strstr(err, "no symbol mg_module_nosym"));
    assert_non_null(strstr(err, "nosym.so"));
}

static void
test_misnamed(void **state)
{
    const char *err = NULL;

    (void)state;
    assert_null(mg_module_load("misnamed", NULL, loader_dir, &err));
    assert_non_null(strstr(err, "misnamed"));
    assert_non_null(strstr(err, "\"other\""));
    /* good.so asked for under another name has no such symbol */
    {
        char *path = mod_path("good");

        assert_null(mg_module_load("alias", path, NULL, &err));
        assert_non_null(strstr(err, "no symbol mg_module_alias"));
        free(path);
    }
}

static void
test_missing(void **state)
{
    const char *err = NULL;
    char *path = mod_path("absent");

    (void)state;
    assert_null(mg_module_load("absent", NULL, loader_dir, &err));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "is it installed in"));
    assert_null(mg_module_load("absent", "/nonexistent/x.so", NULL, &err));
    assert_non_null(strstr(err, "/nonexistent/x.so"));
    free(path);
}

static void
test_not_elf(void **state)
{
    char tmpl[] = "/tmp/mg-loader-XXXXXX";
    const char *err = NULL;
    char *junk;
    FILE *f;

    (void)state;
    assert_non_null(mkdtemp(tmpl));
    junk = mg_xasprintf("%s/junk.so", tmpl);
    f = fopen(junk, "w");
    assert_non_null(f);
    (void)fputs("not a shared object\n", f);
    assert_int_equal(fclose(f), 0);
    assert_null(mg_module_load("junk", NULL, tmpl, &err));
    assert_non_null(strstr(err, "cannot load module 'junk' from "));
    assert_non_null(strstr(err, "junk.so"));
    assert_non_null(strstr(err, "is it installed in"));
    unlink(junk);
    rmdir(tmpl);
    free(junk);
}

static void
test_bad_names(void **state)
{
    const char *err = NULL;

    (void)state;
    assert_null(mg_module_load("../good", NULL, loader_dir, &err));
    assert_non_null(strstr(err, "invalid module name"));
    assert_null(mg_module_load("", NULL, loader_dir, &err));
    assert_null(mg_module_load("good", NULL, NULL, &err));
    assert_non_null(strstr(err, "module_dir"));
}

static void
test_check_pure(void **state)
{
    struct mg_module m = {
        MG_MODULE_V1,
        .name = "x",
    };
    const char *err = NULL;

    (void)state;
    assert_int_equal(mg_module_check(&m, "x", &err), MG_ERROR);
    assert_non_null(strstr(err, "no configure"));
    m.signature = NULL;
    assert_int_equal(mg_module_check(&m, "x", &err), MG_ERROR);
    assert_non_null(strstr(err, "(none)"));
    m.signature = MG_ABI_SIGNATURE;
    m.name = NULL;
    assert_int_equal(mg_module_check(&m, "x", &err), MG_ERROR);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_good, setup),
        cmocka_unit_test_setup(test_good_exports_one_symbol, setup),
        cmocka_unit_test_setup(test_duplicate, setup),
        cmocka_unit_test_setup(test_badabi, setup),
        cmocka_unit_test_setup(test_badsig, setup),
        cmocka_unit_test_setup(test_nosym, setup),
        cmocka_unit_test_setup(test_misnamed, setup),
        cmocka_unit_test_setup(test_missing, setup),
        cmocka_unit_test_setup(test_not_elf, setup),
        cmocka_unit_test_setup(test_bad_names, setup),
        cmocka_unit_test_setup(test_check_pure, setup),
    };
    int rc;

    loader_dir = getenv("MG_TEST_MODULES");
    if (loader_dir == NULL || loader_dir[0] == '\0') {
        (void)fprintf(stderr,
                      "MG_TEST_MODULES is not set (run via make check)\n");
        return 77; /* automake: skipped */
    }
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    mg_module_cache_reset();
    return rc;
}
