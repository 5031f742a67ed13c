/* tests/unit/test_hooks.c -- core/hooks.c */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mg.h"

/* What the handlers saw: a trace of handler tags in call order. */
static char trace[256];
static int done_calls;
static enum mg_verdict done_verdict;
static struct mg_hook_call *done_call;
static uint64_t seen_id;

/* a handler's behaviour: its tag and the verdict it returns */
struct th {
    char tag;
    enum mg_verdict v;
    int code; /* reply code to set when nonzero */
};

static void
trace_add(char c)
{
    size_t n = strlen(trace);

    if (n + 1 < sizeof(trace)) {
        trace[n] = c;
        trace[n + 1] = '\0';
    }
}

static enum mg_verdict
th_fn(struct mg_hook_call *call, void *arg)
{
    const struct th *t = arg;

    trace_add(t->tag);
    seen_id = call->id;
    if (t->code != 0)
        call->reply.code = t->code;
    return t->v;
}

static void
th_done(struct mg_hook_call *call, enum mg_verdict v, void *arg)
{
    assert_ptr_equal(arg, &done_calls);
    done_calls++;
    done_verdict = v;
    done_call = call;
}

static int
setup(void **state)
{
    *state = mg_hooks_new();
    trace[0] = '\0';
    done_calls = 0;
    done_verdict = MG_PASS;
    done_call = NULL;
    seen_id = 0;
    return 0;
}

static int
teardown(void **state)
{
    mg_hooks_free(*state);
    return 0;
}

static void
add(struct mg_hooks *h, const char *hook, int prio, struct th *t,
    const char *owner)
{
    const char *err = NULL;

    assert_int_equal(mg_hooks_add(h, hook, prio, th_fn, t, owner, &err), MG_OK);
}

static enum mg_verdict
run(struct mg_hooks *h, struct mg_hook_call *call, const char *hook,
    uint64_t conn_id)
{
    memset(call, 0, sizeof(*call));
    call->hook = hook;
    call->conn_id = conn_id;
    return mg_hooks_run(h, call, th_done, &done_calls);
}

static void
test_order(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_PASS, 0}, b = {'b', MG_PASS, 0},
              c = {'c', MG_PASS, 0}, d = {'d', MG_PASS, 0},
              e = {'e', MG_PASS, 0};
    struct mg_hook_call call;
    uint64_t id1;

    add(h, "smtp.rcpt", 10, &a, "m1");
    add(h, "smtp.rcpt", -5, &b, "m2");
    add(h, "smtp.rcpt", 10, &c, "m3");
    add(h, "smtp.rcpt", 0, &d, "m1");
    add(h, "smtp.rcpt", -5, &e, "m2");
    assert_true(mg_hooks_has(h, "smtp.rcpt"));
    assert_false(mg_hooks_has(h, "smtp.mail"));

    assert_int_equal(run(h, &call, "smtp.rcpt", 1), MG_PASS);
    assert_string_equal(trace, "bedac");
    assert_int_equal(done_calls, 0);
    assert_true(call.id != 0);
    id1 = call.id;

    /* a hook without handlers passes and still gets a fresh id */
    assert_int_equal(run(h, &call, "smtp.mail", 1), MG_PASS);
    assert_true(call.id != 0 && call.id != id1);
    assert_string_equal(trace, "bedac");
}

static void
test_stop_verdicts(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_PASS, 0}, b = {'b', MG_PASS, 0},
              c = {'c', MG_PASS, 0};
    enum mg_verdict finals[] = {MG_ACCEPT, MG_TEMPFAIL, MG_PERMFAIL};
    struct mg_hook_call call;
    size_t i;

    add(h, "pop3.login", 1, &a, "m");
    add(h, "pop3.login", 2, &b, "m");
    add(h, "pop3.login", 3, &c, "m");
    for (i = 0; i < 3; i++) {
        trace[0] = '\0';
        b.v = finals[i];
        b.code = 450 + (int)i;
        assert_int_equal(run(h, &call, "pop3.login", 2), finals[i]);
        assert_string_equal(trace, "ab");
        assert_int_equal(call.reply.code, 450 + (int)i);
    }
    assert_int_equal(done_calls, 0);
}

static enum mg_verdict
bad_fn(struct mg_hook_call *call, void *arg)
{
    (void)call;
    (void)arg;
    return (enum mg_verdict)42;
}

static void
test_names(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_PASS, 0};
    struct mg_hook_call call;
    const char *err = NULL;
    size_t i;

    assert_int_equal(mg_hooks_add(h, "smtp.rcpx", 0, th_fn, &a, "m", &err),
                     MG_ERROR);
    assert_non_null(strstr(err, "unknown hook 'smtp.rcpx'"));
    assert_non_null(strstr(err, "smtp.rcpt"));
    assert_non_null(strstr(err, "cert.changed"));
    assert_int_equal(mg_hooks_add(h, "x-", 0, th_fn, &a, "m", &err), MG_ERROR);
    assert_int_equal(mg_hooks_add(h, "smtp.rcpt", 0, NULL, &a, "m", &err),
                     MG_ERROR);
    assert_int_equal(mg_hooks_add(h, "x-mycorp.audit", 0, th_fn, &a, "m", &err),
                     MG_OK);
    assert_true(mg_hooks_has(h, "x-mycorp.audit"));
    assert_int_equal(run(h, &call, "x-mycorp.audit", 0), MG_PASS);
    assert_string_equal(trace, "a");

    /* every listed name is accepted */
    for (i = 0; mg_hook_names[i] != NULL; i++)
        assert_int_equal(
            mg_hooks_add(h, mg_hook_names[i], 0, th_fn, &a, "m", &err), MG_OK);
    assert_int_equal(i, 16);

    /* a handler answering garbage fails the run temporarily */
    assert_int_equal(mg_hooks_add(h, "smtp.helo", 0, bad_fn, NULL, "m", &err),
                     MG_ERROR);
    assert_int_equal(mg_hooks_add(h, "x-bad", 0, bad_fn, NULL, "m", &err),
                     MG_OK);
    assert_int_equal(run(h, &call, "x-bad", 0), MG_TEMPFAIL);
}

static void
test_suspend_resume(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_PASS, 0}, b = {'b', MG_SUSPEND, 0},
              c = {'c', MG_PASS, 0}, d = {'d', MG_PERMFAIL, 0};
    const char *lines[] = {"no such user"};
    struct mg_reply r = {550, "5.1.1", 1, lines};
    struct mg_hook_call call;
    uint64_t id;

    add(h, "smtp.rcpt", 1, &a, "m");
    add(h, "smtp.rcpt", 2, &b, "m");
    add(h, "smtp.rcpt", 3, &c, "m");
    add(h, "smtp.rcpt", 4, &d, "m");

    assert_int_equal(run(h, &call, "smtp.rcpt", 7), MG_SUSPEND);
    assert_string_equal(trace, "ab");
    assert_int_equal(done_calls, 0);
    id = call.id;
    assert_true(id != 0);
    assert_int_equal(seen_id, id);

    /* invalid resume verdict, unknown id */
    assert_int_equal(mg_hooks_resume(h, id, MG_SUSPEND, NULL), MG_ERROR);
    assert_int_equal(mg_hooks_resume(h, id + 1000, MG_PASS, NULL), MG_DECLINED);
    assert_int_equal(done_calls, 0);

    /* PASS goes on with c, then d decides */
    assert_int_equal(mg_hooks_resume(h, id, MG_PASS, NULL), MG_OK);
    assert_string_equal(trace, "abcd");
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_verdict, MG_PERMFAIL);
    assert_ptr_equal(done_call, &call);

    /* double resume */
    assert_int_equal(mg_hooks_resume(h, id, MG_PASS, NULL), MG_DECLINED);
    assert_int_equal(done_calls, 1);

    /* a final resume ends the run at once, with the reply copied */
    trace[0] = '\0';
    assert_int_equal(run(h, &call, "smtp.rcpt", 7), MG_SUSPEND);
    assert_true(call.id != id);
    id = call.id;
    assert_int_equal(mg_hooks_resume(h, id, MG_PERMFAIL, &r), MG_OK);
    assert_string_equal(trace, "ab");
    assert_int_equal(done_calls, 2);
    assert_int_equal(done_verdict, MG_PERMFAIL);
    assert_int_equal(call.reply.code, 550);
    assert_string_equal(call.reply.ecode, "5.1.1");
    assert_string_equal(call.reply.lines[0], "no such user");

    /* all pass after resume: MG_PASS to done */
    trace[0] = '\0';
    d.v = MG_PASS;
    assert_int_equal(run(h, &call, "smtp.rcpt", 7), MG_SUSPEND);
    assert_int_equal(mg_hooks_resume(h, call.id, MG_PASS, NULL), MG_OK);
    assert_string_equal(trace, "abcd");
    assert_int_equal(done_calls, 3);
    assert_int_equal(done_verdict, MG_PASS);
}

static void
test_suspend_twice(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_SUSPEND, 0}, b = {'b', MG_PASS, 0},
              c = {'c', MG_SUSPEND, 0}, d = {'d', MG_PASS, 0};
    struct mg_hook_call call;
    uint64_t id;

    add(h, "smtp.auth", 1, &a, "m");
    add(h, "smtp.auth", 2, &b, "m");
    add(h, "smtp.auth", 3, &c, "m");
    add(h, "smtp.auth", 4, &d, "m");
    assert_int_equal(run(h, &call, "smtp.auth", 3), MG_SUSPEND);
    id = call.id;
    assert_string_equal(trace, "a");
    assert_int_equal(mg_hooks_resume(h, id, MG_PASS, NULL), MG_OK);
    assert_string_equal(trace, "abc");
    assert_int_equal(done_calls, 0);
    assert_int_equal(call.id, id); /* parked again under the same id */
    assert_int_equal(mg_hooks_resume(h, id, MG_ACCEPT, NULL), MG_OK);
    assert_string_equal(trace, "abc");
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_verdict, MG_ACCEPT);
    assert_int_equal(mg_hooks_resume(h, id, MG_PASS, NULL), MG_DECLINED);
}

static void
test_cancel_conn(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_SUSPEND, 0}, b = {'b', MG_PASS, 0};
    struct mg_hook_call c1, c2;

    add(h, "smtp.mail", 1, &a, "m");
    add(h, "smtp.mail", 2, &b, "m");
    assert_int_equal(run(h, &c1, "smtp.mail", 11), MG_SUSPEND);
    assert_int_equal(run(h, &c2, "smtp.mail", 12), MG_SUSPEND);
    mg_hooks_cancel_conn(h, 0); /* no-op */
    mg_hooks_cancel_conn(h, 11);
    assert_int_equal(mg_hooks_resume(h, c1.id, MG_PASS, NULL), MG_DECLINED);
    assert_int_equal(done_calls, 0);
    assert_string_equal(trace, "aa");
    /* the other conn's run is untouched */
    assert_int_equal(mg_hooks_resume(h, c2.id, MG_PASS, NULL), MG_OK);
    assert_string_equal(trace, "aab");
    assert_int_equal(done_calls, 1);
    assert_ptr_equal(done_call, &c2);
}

static void
test_remove_owner_parked(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_SUSPEND, 0}, b = {'b', MG_PASS, 0},
              c = {'c', MG_PASS, 0}, d = {'d', MG_PASS, 0},
              e = {'e', MG_PASS, 0};
    struct mg_hook_call call;

    add(h, "pop3.login", 1, &a, "susp");
    add(h, "pop3.login", 2, &b, "gone");
    add(h, "pop3.login", 3, &c, "stay");
    add(h, "pop3.login", 4, &d, "gone");
    assert_int_equal(run(h, &call, "pop3.login", 5), MG_SUSPEND);
    assert_string_equal(trace, "a");

    /* the suspending handler's owner goes too; e is added before a */
    mg_hooks_remove_owner(h, "gone");
    mg_hooks_remove_owner(h, "susp");
    add(h, "pop3.login", 0, &e, "late");
    assert_int_equal(mg_hooks_resume(h, call.id, MG_PASS, NULL), MG_OK);
    assert_string_equal(trace, "ac");
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_verdict, MG_PASS);

    mg_hooks_remove_owner(h, "stay");
    mg_hooks_remove_owner(h, "late");
    assert_false(mg_hooks_has(h, "pop3.login"));
    mg_hooks_remove_owner(h, "nobody");
}

static void
test_free_parked(void **state)
{
    struct mg_hooks *h = *state;
    struct th a = {'a', MG_SUSPEND, 0};
    struct mg_hook_call c1, c2, c3;

    add(h, "message.stored", 1, &a, "m");
    assert_int_equal(run(h, &c1, "message.stored", 1), MG_SUSPEND);
    assert_int_equal(run(h, &c2, "message.stored", 2), MG_SUSPEND);
    assert_int_equal(run(h, &c3, "message.stored", 0), MG_SUSPEND);
    /* teardown frees h with three parked runs: no done, no leak */
}

/* A handler that answers before it returns MG_SUSPEND. */
static struct mg_hooks *sync_h;

static enum mg_verdict
sync_fn(struct mg_hook_call *call, void *arg)
{
    (void)arg;
    trace_add('s');
    assert_int_equal(mg_hooks_resume(sync_h, call->id, MG_PASS, NULL), MG_OK);
    assert_int_equal(mg_hooks_resume(sync_h, call->id, MG_PASS, NULL),
                     MG_DECLINED);
    return MG_SUSPEND;
}

static enum mg_verdict
cancel_fn(struct mg_hook_call *call, void *arg)
{
    (void)arg;
    trace_add('x');
    mg_hooks_cancel_conn(sync_h, call->conn_id);
    return MG_SUSPEND;
}

static void
test_resume_inside_handler(void **state)
{
    struct mg_hooks *h = *state;
    struct th b = {'b', MG_TEMPFAIL, 0};
    struct mg_hook_call call;
    const char *err = NULL;

    sync_h = h;
    assert_int_equal(mg_hooks_add(h, "smtp.ehlo", 1, sync_fn, NULL, "m", &err),
                     MG_OK);
    add(h, "smtp.ehlo", 2, &b, "m");
    /* all synchronous: the verdict is returned, done is not called */
    assert_int_equal(run(h, &call, "smtp.ehlo", 4), MG_TEMPFAIL);
    assert_string_equal(trace, "sb");
    assert_int_equal(done_calls, 0);

    /* the conn closes from inside a handler: nothing more happens */
    trace[0] = '\0';
    assert_int_equal(
        mg_hooks_add(h, "smtp.data", 1, cancel_fn, NULL, "m", &err), MG_OK);
    add(h, "smtp.data", 2, &b, "m");
    assert_int_equal(run(h, &call, "smtp.data", 4), MG_SUSPEND);
    assert_string_equal(trace, "x");
    assert_int_equal(mg_hooks_resume(h, call.id, MG_PASS, NULL), MG_DECLINED);
    assert_int_equal(done_calls, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_verdicts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suspend_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suspend_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_conn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_owner_parked, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_inside_handler, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
