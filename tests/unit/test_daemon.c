/* tests/unit/test_daemon.c -- pid file lock, privilege drop, hardening */
#include "config.h"

#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "mg.h"

static char dmn_dir[64];

static int
setup(void **state)
{
    (void)state;
    snprintf(dmn_dir, sizeof(dmn_dir), "/tmp/mg-test-daemon-XXXXXX");
    return mkdtemp(dmn_dir) != NULL ? 0 : -1;
}

static int
teardown(void **state)
{
    char p[128];

    (void)state;
    snprintf(p, sizeof(p), "%s/mailgated.pid", dmn_dir);
    unlink(p);
    rmdir(dmn_dir);
    return 0;
}

/* Run fn in a child; true if it exited 0. */
static bool
in_child(int (*fn)(void))
{
    pid_t pid = fork();
    int status;

    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn());
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int
child_sees_parent(void)
{
    long pid = 0;
    const char *err = NULL;

    if (mg_pidfile_lock(dmn_dir, &pid, &err) != MG_DECLINED)
        return 1;
    if (pid != (long)getppid() || err == NULL)
        return 2;
    if (mg_pidfile_running(dmn_dir) != (long)getppid())
        return 3;
    return 0;
}

static void
test_pidfile(void **state)
{
    int up[2], down[2];
    long pid = 0;
    const char *err = NULL;
    char c = 0, path[128], text[32];
    pid_t child;
    int status;
    FILE *fp;
    struct stat st;

    (void)state;
    assert_int_equal(mg_pidfile_running(dmn_dir), 0); /* no file */

    /* a child takes the lock and holds it until told to go */
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        int rc = mg_pidfile_lock(dmn_dir, &pid, &err);

        c = rc == MG_OK && pid == (long)getpid() ? 'y' : 'n';
        if (write(up[1], &c, 1) != 1 || read(down[0], &c, 1) != 1)
            _exit(1);
        _exit(0);
    }
    assert_int_equal(read(up[0], &c, 1), 1);
    assert_int_equal(c, 'y');
    assert_int_equal(mg_pidfile_running(dmn_dir), (long)child);
    assert_int_equal(mg_pidfile_lock(dmn_dir, &pid, &err), MG_DECLINED);
    assert_int_equal(pid, (long)child);
    assert_non_null(strstr(err, "locked by another mailgated"));

    /* it exits: the lock is gone with it, the stale file stays */
    assert_int_equal(write(down[1], "x", 1), 1);
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(mg_pidfile_running(dmn_dir), 0);
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);

    /* now we take it over */
    assert_int_equal(mg_pidfile_lock(dmn_dir, &pid, &err), MG_OK);
    assert_int_equal(pid, (long)getpid());
    snprintf(path, sizeof(path), "%s/mailgated.pid", dmn_dir);
    fp = fopen(path, "r");
    assert_non_null(fp);
    assert_non_null(fgets(text, sizeof(text), fp));
    fclose(fp);
    snprintf(path, sizeof(path), "%ld\n", (long)getpid());
    assert_string_equal(text, path);
    snprintf(path, sizeof(path), "%s/mailgated.pid", dmn_dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    assert_true(in_child(child_sees_parent));
}

static void
test_pidfile_errors(void **state)
{
    long pid = 1;
    const char *err = NULL;

    (void)state;
    assert_int_equal(mg_pidfile_lock("/nonexistent/dir", &pid, &err), MG_ERROR);
    assert_non_null(strstr(err, "/nonexistent/dir/mailgated.pid"));
    assert_int_equal(pid, 0);
    assert_int_equal(mg_pidfile_running("/nonexistent/dir"), 0);
}

static int
child_privdrop(void)
{
    const char *err = NULL;
    struct passwd *pw = getpwnam("nobody");
    struct stat st;

    if (pw == NULL)
        return 0; /* nothing to test against */
    if (mg_privdrop("nobody", NULL, dmn_dir, &err) != MG_OK)
        return 1;
    if (getuid() != pw->pw_uid || geteuid() != pw->pw_uid ||
        getegid() != pw->pw_gid)
        return 2;
    if (setuid(0) == 0)
        return 3;
    if (stat(dmn_dir, &st) != 0 || st.st_uid != pw->pw_uid)
        return 4;
    return 0;
}

static int
child_harden(void)
{
    struct rlimit rl;

    mg_harden_process();
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
        return 1;
    if (getrlimit(RLIMIT_CORE, &rl) != 0 || rl.rlim_cur != 0 ||
        rl.rlim_max != 0)
        return 2;
    return 0;
}

static void
test_privdrop(void **state)
{
    const char *err = NULL;

    (void)state;
    assert_int_equal(mg_privdrop(NULL, NULL, dmn_dir, &err), MG_OK);
    assert_int_equal(mg_privdrop("no-such-user-mg", NULL, dmn_dir, &err),
                     MG_ERROR);
    assert_non_null(strstr(err, "unknown user"));
    assert_int_equal(mg_privdrop("root", "no-such-group-mg", dmn_dir, &err),
                     MG_ERROR);
    assert_non_null(strstr(err, "unknown group"));
    /* the real drop only as root, and only in a child */
    if (geteuid() == 0)
        assert_true(in_child(child_privdrop));
    assert_true(in_child(child_harden));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pidfile),
        cmocka_unit_test(test_pidfile_errors),
        cmocka_unit_test(test_privdrop),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
