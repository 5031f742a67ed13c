/* tests/unit/test_workers.c -- core/workers.c */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mg.h"

#define NJOBS 1000

static pthread_t main_thread;
static struct ev_loop *loop;
static atomic_int work_runs, work_on_main, work_sig_unblocked;
static int done_runs, done_off_main, post_runs;
static int done_target;
static ev_timer guard;

static void
guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(l, EVBREAK_ALL);
    fail_msg("the loop did not finish in time");
}

/* Run the loop until every job's done ran (the jobs hold refs). */
static void
run_loop(void)
{
    ev_timer_init(&guard, guard_cb, 20., 0.);
    ev_timer_start(loop, &guard);
    ev_unref(loop); /* the guard alone must not keep the loop running */
    ev_run(loop, 0);
    ev_ref(loop);
    ev_timer_stop(loop, &guard);
}

static int
setup(void **state)
{
    const char *err = NULL;

    (void)state;
    main_thread = pthread_self();
    loop = ev_loop_new(EVFLAG_AUTO);
    atomic_store(&work_runs, 0);
    atomic_store(&work_on_main, 0);
    atomic_store(&work_sig_unblocked, 0);
    done_runs = done_off_main = post_runs = 0;
    done_target = 0;
    if (mg_workers_start(loop, 2, &err) != MG_OK)
        fail_msg("start: %s", err);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    mg_workers_stop();
    ev_loop_destroy(loop);
    return 0;
}

static void
job_work(void *arg)
{
    sigset_t cur;

    (void)arg;
    if (pthread_equal(pthread_self(), main_thread))
        atomic_fetch_add(&work_on_main, 1);
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    if (!sigismember(&cur, SIGTERM) || !sigismember(&cur, SIGHUP))
        atomic_fetch_add(&work_sig_unblocked, 1);
    atomic_fetch_add(&work_runs, 1);
}

static void
job_done(void *arg)
{
    int *slot = arg;

    if (!pthread_equal(pthread_self(), main_thread))
        done_off_main++;
    (*slot)++;
    done_runs++;
}

static void
test_many_jobs(void **state)
{
    static int slots[NJOBS];
    int i;

    (void)state;
    memset(slots, 0, sizeof(slots));
    for (i = 0; i < NJOBS; i++)
        assert_int_equal(mg_workers_submit(job_work, job_done, &slots[i]),
                         MG_OK);
    run_loop(); /* returns when the last job released its ref */
    assert_int_equal(atomic_load(&work_runs), NJOBS);
    assert_int_equal(atomic_load(&work_on_main), 0);
    assert_int_equal(atomic_load(&work_sig_unblocked), 0);
    assert_int_equal(done_runs, NJOBS);
    assert_int_equal(done_off_main, 0);
    for (i = 0; i < NJOBS; i++)
        assert_int_equal(slots[i], 1);
}

static void
post_fn(void *arg)
{
    (void)arg;
    assert_true(pthread_equal(pthread_self(), main_thread));
    post_runs++;
}

static void
post_work(void *arg)
{
    (void)arg;
    mg_post(post_fn, NULL);
    mg_post(post_fn, NULL);
}

static void
post_done(void *arg)
{
    (void)arg;
    /* FIFO: the posts made inside the work came first */
    assert_int_equal(post_runs, 2);
    done_runs++;
}

static void
deferred_done(void *arg)
{
    int *order = arg;

    *order = ++done_target;
}

static void
test_post_and_defer(void **state)
{
    int o1 = 0, o2 = 0;

    (void)state;
    assert_int_equal(mg_workers_submit(post_work, post_done, NULL), MG_OK);
    run_loop();
    assert_int_equal(post_runs, 2);
    assert_int_equal(done_runs, 1);

    /* work NULL: done alone runs on the loop, later */
    assert_int_equal(mg_workers_submit(NULL, deferred_done, &o1), MG_OK);
    assert_int_equal(mg_workers_submit(NULL, deferred_done, &o2), MG_OK);
    assert_int_equal(o1, 0);
    run_loop();
    assert_true(o1 > 0 && o2 > 0);

    /* a post from the loop thread itself */
    mg_post(post_fn, NULL);
    ev_run(loop, EVRUN_NOWAIT);
    if (post_runs < 3)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(post_runs, 3);

    assert_int_equal(mg_workers_submit(NULL, NULL, NULL), MG_ERROR);
}

static void
slow_work(void *arg)
{
    (void)arg;
    usleep(1000);
    atomic_fetch_add(&work_runs, 1);
}

static void
test_stop_completes(void **state)
{
    const char *err = NULL;
    int i;

    (void)state;
    for (i = 0; i < 50; i++)
        assert_int_equal(mg_workers_submit(slow_work, job_done, &post_runs),
                         MG_OK);
    /* no loop iteration: stop itself finishes and delivers everything */
    mg_workers_stop();
    assert_int_equal(atomic_load(&work_runs), 50);
    assert_int_equal(done_runs, 50);
    assert_int_equal(done_off_main, 0);
    assert_int_equal(mg_workers_submit(job_work, job_done, &post_runs),
                     MG_ERROR);
    mg_workers_stop();      /* twice is fine */
    mg_post(post_fn, NULL); /* dropped after stop */
    assert_int_equal(post_runs, 50);

    /* start again (teardown stops it) */
    assert_int_equal(mg_workers_start(loop, 1, &err), MG_OK);
    assert_int_equal(mg_workers_start(loop, 1, &err), MG_ERROR);
    assert_non_null(strstr(err, "already"));
}

static void
test_start_errors(void **state)
{
    const char *err = NULL;

    (void)state;
    mg_workers_stop();
    assert_int_equal(mg_workers_start(loop, 0, &err), MG_ERROR);
    assert_non_null(strstr(err, "worker_threads"));
    assert_int_equal(mg_workers_start(loop, 100000, &err), MG_ERROR);
    assert_int_equal(mg_workers_submit(job_work, job_done, &post_runs),
                     MG_ERROR);
    assert_int_equal(mg_workers_start(loop, 2, &err), MG_OK);
}

/* Workers held at a gate so the queue fills up. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open;

static void
gate_work(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&gate_lock);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
    atomic_fetch_add(&work_runs, 1);
}

static void
count_done(void *arg)
{
    (void)arg;
    done_runs++;
}

static void
test_queue_cap(void **state)
{
    int n = 0, rc;

    (void)state;
    gate_open = false;
    for (;;) {
        rc = mg_workers_submit(gate_work, count_done, NULL);
        if (rc != MG_OK)
            break;
        n++;
        assert_true(n <= 65536 + 2);
    }
    assert_int_equal(rc, MG_AGAIN);
    assert_true(n >= 65536 && n <= 65536 + 2);
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    run_loop();
    assert_int_equal(done_runs, n);
    assert_int_equal(atomic_load(&work_runs), n);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_many_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_and_defer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_completes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_cap, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
