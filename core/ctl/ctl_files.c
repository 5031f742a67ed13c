/* core/ctl/ctl_files.c -- durable file copies for backup and restore */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"

int
ctl_copy_fd(int src_fd, const char *dst, mode_t mode, bool replace,
            const char **error_r)
{
    char buf[65536];
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW;
    int fd;
    ssize_t n;

    flags |= replace ? O_TRUNC : O_EXCL;
    fd = open(dst, flags, mode);
    if (fd < 0) {
        *error_r = mg_error("cannot create %s: %s", dst, strerror(errno));
        return MG_ERROR;
    }
    /* an existing file keeps its mode otherwise: keys stay private */
    if (fchmod(fd, mode) != 0)
        goto fail;
    while ((n = read(src_fd, buf, sizeof(buf))) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));

            if (w < 0) {
                if (errno == EINTR)
                    continue;
                goto fail;
            }
            off += w;
        }
    }
    if (fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        *error_r = mg_error("cannot write %s: %s", dst, strerror(errno));
        return MG_ERROR;
    }
    return MG_OK;

fail:
    *error_r = mg_error("cannot write %s: %s", dst, strerror(errno));
    close(fd);
    return MG_ERROR;
}

int
ctl_copy_file(const char *src, const char *dst, mode_t mode, bool replace,
              const char **error_r)
{
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    int rc;

    if (fd < 0) {
        *error_r = mg_error("cannot open %s: %s", src, strerror(errno));
        return MG_ERROR;
    }
    rc = ctl_copy_fd(fd, dst, mode, replace, error_r);
    close(fd);
    return rc;
}

int
ctl_fsync_dir(const char *dir, const char **error_r)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0 || fsync(fd) != 0) {
        *error_r = mg_error("cannot sync %s: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return MG_ERROR;
    }
    close(fd);
    return MG_OK;
}

static int
files_not_dots(const struct dirent *e)
{
    return strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
}

int
ctl_dir_usable(const char *dir, bool *exists_r, const char **error_r)
{
    struct dirent **list = NULL;
    int n = scandir(dir, &list, files_not_dots, alphasort);

    *exists_r = false;
    if (n < 0) {
        if (errno == ENOENT)
            return MG_OK;
        *error_r = mg_error("%s: %s", dir, strerror(errno));
        return MG_ERROR;
    }
    *exists_r = true;
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
    if (n > 0) {
        *error_r = mg_error("%s is not empty", dir);
        return MG_ERROR;
    }
    return MG_OK;
}

bool
ctl_path_inside(const char *path, const char *dir)
{
    size_t n = strlen(dir);

    while (n > 1 && dir[n - 1] == '/')
        n--;
    return strncmp(path, dir, n) == 0 && path[n] == '/' &&
           strstr(path + n, "/../") == NULL;
}
