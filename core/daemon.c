/* core/daemon.c -- pid file lock, privilege drop, process hardening */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mg.h"

#define DAEMON_PIDFILE "mailgated.pid"

/* held open (and locked) for the life of the process */
static int daemon_pid_fd = -1;

static char *
daemon_pidfile_path(const char *data_dir)
{
    return mg_xasprintf("%s/%s", data_dir, DAEMON_PIDFILE);
}

/* The pid written in the file, 0 if none can be read. */
static long
daemon_read_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    char *end;
    long pid;

    if (n <= 0)
        return 0;
    buf[n] = '\0';
    errno = 0;
    pid = strtol(buf, &end, 10);
    if (errno != 0 || end == buf || (*end != '\n' && *end != '\0') || pid <= 0)
        return 0;
    return pid;
}

/* The holder writes its pid just after taking the lock: retry briefly. */
static long
daemon_read_pid_retry(int fd)
{
    for (int i = 0; i < 20; i++) {
        long pid = daemon_read_pid(fd);

        if (pid > 0)
            return pid;
        usleep(10000);
    }
    return 0;
}

int
mg_pidfile_lock(const char *data_dir, long *pid_r, const char **error_r)
{
    char *path = daemon_pidfile_path(data_dir);
    char line[32];
    int fd, len;

    *pid_r = 0;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        *error_r = mg_error("cannot open %s: %s", path, strerror(errno));
        free(path);
        return MG_ERROR;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;

        if (e == EWOULDBLOCK) {
            long pid = daemon_read_pid_retry(fd);

            *pid_r = pid > 0 ? pid : -1;
            *error_r = mg_error("%s is locked by another mailgated "
                                "(pid %ld)",
                                path, *pid_r);
            close(fd);
            free(path);
            return MG_DECLINED;
        }
        *error_r = mg_error("cannot lock %s: %s", path, strerror(e));
        close(fd);
        free(path);
        return MG_ERROR;
    }
    len = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len ||
        fsync(fd) != 0) {
        *error_r = mg_error("cannot write %s: %s", path, strerror(errno));
        close(fd);
        free(path);
        return MG_ERROR;
    }
    free(path);
    if (daemon_pid_fd >= 0)
        close(daemon_pid_fd);
    daemon_pid_fd = fd;
    *pid_r = (long)getpid();
    return MG_OK;
}

long
mg_pidfile_running(const char *data_dir)
{
    char *path = daemon_pidfile_path(data_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    long pid;

    free(path);
    if (fd < 0)
        return 0;
    /* a shared lock is only refused while the daemon holds its own */
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        flock(fd, LOCK_UN);
        close(fd);
        return 0;
    }
    pid = daemon_read_pid_retry(fd);
    close(fd);
    return pid > 0 ? pid : -1;
}

int
mg_privdrop(const char *user, const char *group, const char *data_dir,
            const char **error_r)
{
    struct passwd pw, *pwr = NULL;
    struct group gr, *grr = NULL;
    char buf[16384];
    uid_t uid;
    gid_t gid;
    char *name;

    if (user == NULL)
        return MG_OK;
    if (getpwnam_r(user, &pw, buf, sizeof(buf), &pwr) != 0 || pwr == NULL) {
        *error_r = mg_error("unknown user '%s'", user);
        return MG_ERROR;
    }
    uid = pw.pw_uid;
    gid = pw.pw_gid;
    name = mg_xstrdup(pw.pw_name); /* buf is reused for the group */
    if (group != NULL) {
        if (getgrnam_r(group, &gr, buf, sizeof(buf), &grr) != 0 ||
            grr == NULL) {
            *error_r = mg_error("unknown group '%s'", group);
            free(name);
            return MG_ERROR;
        }
        gid = gr.gr_gid;
    }
    if (getuid() == uid && geteuid() == uid && getgid() == gid &&
        getegid() == gid) {
        free(name);
        return MG_OK; /* already that user (started by systemd's User=) */
    }
    if (geteuid() != 0) {
        *error_r = mg_error("cannot switch to user '%s': not started as "
                            "root",
                            user);
        free(name);
        return MG_ERROR;
    }

    /* the daemon keeps writing here after the drop */
    if (chown(data_dir, uid, gid) != 0) {
        *error_r = mg_error("cannot chown %s to %s: %s", data_dir, user,
                            strerror(errno));
        free(name);
        return MG_ERROR;
    }
    if (daemon_pid_fd >= 0 && fchown(daemon_pid_fd, uid, gid) != 0) {
        *error_r = mg_error("cannot chown the pid file to %s: %s", user,
                            strerror(errno));
        free(name);
        return MG_ERROR;
    }

    if ((group != NULL ? setgroups(1, &gid) : initgroups(name, gid)) != 0) {
        *error_r =
            mg_error("cannot set the groups of %s: %s", user, strerror(errno));
        free(name);
        return MG_ERROR;
    }
    free(name);
    if (setgid(gid) != 0) {
        *error_r = mg_error("setgid(%ld): %s", (long)gid, strerror(errno));
        return MG_ERROR;
    }
    if (setuid(uid) != 0) {
        *error_r = mg_error("setuid(%ld): %s", (long)uid, strerror(errno));
        return MG_ERROR;
    }
    /* paranoia: a drop that can be undone is no drop */
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        *error_r = "privileges could be regained after setuid()";
        return MG_ERROR;
    }
    if (getuid() != uid || geteuid() != uid || getgid() != gid ||
        getegid() != gid) {
        *error_r = "the user and group ids did not change as asked";
        return MG_ERROR;
    }
    return MG_OK;
}

void
mg_harden_process(void)
{
    struct rlimit rl = {0, 0};

    /* cores and ptrace would expose keys and mail in memory */
    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        mg_log(MG_LOG_WARNING, "cannot disable core dumps: %s",
               strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        mg_log(MG_LOG_WARNING, "cannot clear the dumpable flag: %s",
               strerror(errno));
}
