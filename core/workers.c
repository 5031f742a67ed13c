/* core/workers.c -- a fixed pool of threads; completions return on the loop
 *
 * Threads: mg_workers_start/submit/stop run on the loop thread; mg_post may
 * be called from any thread between start and stop (before start is a bug
 * and aborts; after stop the call is dropped: nobody runs the loop any
 * more). Worker threads block every signal, so signals reach the loop.
 */
#include "config.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "mg.h"

#define WORKERS_MAX       256
#define WORKERS_QUEUE_MAX 65536

/* A job waiting for a worker, or a completion waiting for the loop. */
struct workers_item {
    struct workers_item *next;
    mg_work_fn work;
    void (*done)(void *arg);
    void *arg;
    bool job; /* a submitted job (holds a loop ref), not an mg_post */
};

struct workers_queue {
    struct workers_item *head, *tail;
    size_t n;
};

enum workers_state {
    WORKERS_IDLE,
    WORKERS_RUNNING,
    WORKERS_STOPPING, /* threads finish the queue and exit */
    WORKERS_STOPPED,  /* may be started again */
};

/* One lock for both queues and the state: the critical sections are a
 * few pointer moves. */
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t workers_cond = PTHREAD_COND_INITIALIZER;
static enum workers_state workers_state;
static struct workers_queue workers_jobs, workers_done;
static pthread_t *workers_threads;
static unsigned workers_n;
static struct ev_loop *workers_loop;
static ev_async workers_async;

static void
workers_push(struct workers_queue *q, struct workers_item *it)
{
    it->next = NULL;
    if (q->tail != NULL)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->n++;
}

static struct workers_item *
workers_pop(struct workers_queue *q)
{
    struct workers_item *it = q->head;

    if (it != NULL) {
        q->head = it->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->n--;
    }
    return it;
}

static struct workers_item *
workers_take_all(struct workers_queue *q)
{
    struct workers_item *it = q->head;

    q->head = q->tail = NULL;
    q->n = 0;
    return it;
}

/* Run completions on the loop thread, in the order they arrived. */
static void
workers_run_completions(struct workers_item *it)
{
    while (it != NULL) {
        struct workers_item *next = it->next;

        if (it->done != NULL)
            it->done(it->arg);
        if (it->job)
            ev_unref(workers_loop);
        free(it);
        it = next;
    }
}

static void
workers_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct workers_item *list;

    (void)loop;
    (void)w;
    (void)revents;
    pthread_mutex_lock(&workers_lock);
    list = workers_take_all(&workers_done);
    pthread_mutex_unlock(&workers_lock);
    workers_run_completions(list);
}

static void *
workers_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&workers_lock);
    for (;;) {
        struct workers_item *it = workers_pop(&workers_jobs);

        if (it == NULL) {
            if (workers_state == WORKERS_STOPPING)
                break;
            pthread_cond_wait(&workers_cond, &workers_lock);
            continue;
        }
        pthread_mutex_unlock(&workers_lock);
        if (it->work != NULL)
            it->work(it->arg);
        pthread_mutex_lock(&workers_lock);
        workers_push(&workers_done, it);
        ev_async_send(workers_loop, &workers_async);
    }
    pthread_mutex_unlock(&workers_lock);
    return NULL;
}

/* Join the first n threads (after setting STOPPING). */
static void
workers_join(unsigned n)
{
    unsigned i;

    pthread_mutex_lock(&workers_lock);
    workers_state = WORKERS_STOPPING;
    pthread_cond_broadcast(&workers_cond);
    pthread_mutex_unlock(&workers_lock);
    for (i = 0; i < n; i++)
        pthread_join(workers_threads[i], NULL);
}

int
mg_workers_start(struct ev_loop *loop, unsigned n, const char **error_r)
{
    sigset_t all, old;
    unsigned i;
    int err = 0;

    if (workers_state != WORKERS_IDLE && workers_state != WORKERS_STOPPED) {
        *error_r = mg_error("worker threads are already running");
        return MG_ERROR;
    }
    if (n == 0 || n > WORKERS_MAX) {
        *error_r = mg_error("worker_threads must be between 1 and %u, not %u",
                            WORKERS_MAX, n);
        return MG_ERROR;
    }
    workers_loop = loop;
    ev_async_init(&workers_async, workers_async_cb);
    ev_async_start(loop, &workers_async);
    /* the watcher alone does not keep the loop alive; each job does */
    ev_unref(loop);

    workers_threads = mg_xcalloc(n, sizeof(*workers_threads));
    pthread_mutex_lock(&workers_lock);
    workers_state = WORKERS_RUNNING;
    pthread_mutex_unlock(&workers_lock);

    /* threads inherit the mask: signals are for the loop thread only */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (i = 0; i < n; i++) {
        err = pthread_create(&workers_threads[i], NULL, workers_main, NULL);
        if (err != 0)
            break;
        pthread_setname_np(workers_threads[i], "mg-worker");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (err != 0) {
        workers_n = i;
        mg_workers_stop();
        *error_r = mg_error("cannot start worker thread %u of %u: %s", i + 1, n,
                            strerror(err));
        return MG_ERROR;
    }
    workers_n = n;
    return MG_OK;
}

int
mg_workers_submit(mg_work_fn work, mg_work_done_fn done, void *arg)
{
    struct workers_item *it;

    if (work == NULL && done == NULL)
        return MG_ERROR;
    pthread_mutex_lock(&workers_lock);
    if (workers_state != WORKERS_RUNNING) {
        pthread_mutex_unlock(&workers_lock);
        return MG_ERROR;
    }
    if (workers_jobs.n >= WORKERS_QUEUE_MAX) {
        pthread_mutex_unlock(&workers_lock);
        return MG_AGAIN;
    }
    it = mg_xcalloc(1, sizeof(*it));
    it->work = work;
    it->done = done;
    it->arg = arg;
    it->job = true;
    workers_push(&workers_jobs, it);
    pthread_cond_signal(&workers_cond);
    pthread_mutex_unlock(&workers_lock);
    /* a pending job keeps the loop running until its done() ran */
    ev_ref(workers_loop);
    return MG_OK;
}

void
mg_post(void (*fn)(void *), void *arg)
{
    struct workers_item *it;

    it = mg_xcalloc(1, sizeof(*it));
    it->done = fn;
    it->arg = arg;
    pthread_mutex_lock(&workers_lock);
    if (workers_state == WORKERS_IDLE)
        mg_fatalx("mg_post() before mg_workers_start()");
    if (workers_state == WORKERS_STOPPED) {
        /* stopped: the loop will not drain the queue any more */
        pthread_mutex_unlock(&workers_lock);
        free(it);
        return;
    }
    workers_push(&workers_done, it);
    /* under the lock, so stop cannot stop the watcher in between */
    ev_async_send(workers_loop, &workers_async);
    pthread_mutex_unlock(&workers_lock);
}

void
mg_workers_stop(void)
{
    struct workers_item *list;

    if (workers_threads == NULL)
        return; /* never started, or stopped already */
    workers_join(workers_n);

    /* every job is done: run what the workers (or mg_post) left */
    pthread_mutex_lock(&workers_lock);
    list = workers_take_all(&workers_done);
    pthread_mutex_unlock(&workers_lock);
    workers_run_completions(list);

    /* a done() above may have posted more; drain until quiet, then close */
    pthread_mutex_lock(&workers_lock);
    while ((list = workers_take_all(&workers_done)) != NULL) {
        pthread_mutex_unlock(&workers_lock);
        workers_run_completions(list);
        pthread_mutex_lock(&workers_lock);
    }
    workers_state = WORKERS_STOPPED;
    pthread_mutex_unlock(&workers_lock);

    ev_ref(workers_loop);
    ev_async_stop(workers_loop, &workers_async);
    free(workers_threads);
    workers_threads = NULL;
    workers_n = 0;
    workers_loop = NULL;
}
