/* The snapshot store in a local directory (docs/STORE.md):
 *
 *   DIR/config  DIR/catalog  DIR/catalog.prev  DIR/lock
 *   DIR/objects/{pack,index,snap}/ab/abcdef...
 *
 * An object is written to a temporary name beside its final one, synced,
 * renamed, and its directory synced: once put returns, the object is
 * durable and complete under its name, or absent.  The catalog is replaced
 * the same way (the old one kept as catalog.prev).  Temporary names start
 * with ".tmp-"; leftovers from a crash are removed when a writer opens the
 * store. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "util.h"

/* Objects kept open for range reads (blobs of a snapshot come from a
 * few packs, one small read each). */
#define DIR_FD_CACHE 16

struct backend_dir {
  struct backend b;             /* first: the generic part */
  char *dir;
  int dirfd;
  int lockfd;
  bool writer;
  struct {
    enum store_kind k;
    struct store_hash name;
    int fd;                     /* -1: free */
    uint64_t used;
  } fds[DIR_FD_CACHE];
  uint64_t fd_clock;
};

static const char *const kind_dirs[KIND_COUNT] = { "pack", "index", "snap" };

const char *
backend_kind_name(enum store_kind k)
{
  return k < KIND_COUNT ? kind_dirs[k] : "?";
}

/* "objects/pack/ab/abcdef..." relative to the store. */
static void
dir_obj_path(enum store_kind k, const struct store_hash *name, char *out,
             size_t outlen)
{
  char hex[65];

  format_hash_hex(name, hex);
  snprintf(out, outlen, "objects/%s/%.2s/%s", kind_dirs[k], hex, hex);
}

static int
dir_sync_parent(struct backend_dir *d, const char *rel)
{
  char parent[600];
  char *slash;
  int fd, rc = 0;

  snprintf(parent, sizeof parent, "%s", rel);
  slash = strrchr(parent, '/');
  if (slash)
    *slash = '\0';
  else
    strcpy(parent, ".");
  fd = openat(d->dirfd, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  if (fsync(fd) == -1)
    rc = -errno;
  close(fd);
  return rc;
}

/* Write buf under rel atomically and durably. */
static int
dir_write_atomic(struct backend_dir *d, const char *rel, const void *buf,
                 size_t len, char *err, size_t errlen)
{
  char tmp[700];
  const char *slash = strrchr(rel, '/');
  size_t off = 0;
  int fd, rc;

  snprintf(tmp, sizeof tmp, "%.*s.tmp-%d-%s", slash ? (int)(slash - rel + 1)
           : 0, rel, (int)getpid(), slash ? slash + 1 : rel);
  fd = openat(d->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/%s: cannot create: %s", d->dir, tmp,
             strerror(-rc));
    return rc;
  }
  while (off < len) {
    ssize_t n = write(fd, (const char *)buf + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : -EIO;
      snprintf(err, errlen, "%s/%s: write: %s", d->dir, tmp, strerror(-rc));
      goto fail;
    }
    off += (size_t)n;
  }
  if (fsync(fd) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/%s: fsync: %s", d->dir, tmp, strerror(-rc));
    goto fail;
  }
  close(fd);
  if (renameat(d->dirfd, tmp, d->dirfd, rel) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/%s: rename: %s", d->dir, rel, strerror(-rc));
    unlinkat(d->dirfd, tmp, 0);
    return rc;
  }
  if ((rc = dir_sync_parent(d, rel)) < 0) {
    snprintf(err, errlen, "%s/%s: syncing its directory: %s", d->dir, rel,
             strerror(-rc));
    return rc;
  }
  return 0;

fail:
  close(fd);
  unlinkat(d->dirfd, tmp, 0);
  return rc;
}

static int
dir_read_all(struct backend_dir *d, const char *rel, void **buf, size_t *len,
             char *err, size_t errlen)
{
  struct stat st;
  char *p;
  size_t off = 0;
  int fd, rc;

  *buf = NULL;
  *len = 0;
  fd = openat(d->dirfd, rel, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/%s: %s", d->dir, rel, strerror(-rc));
    return rc;
  }
  if (fstat(fd, &st) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/%s: stat: %s", d->dir, rel, strerror(-rc));
    close(fd);
    return rc;
  }
  if ((uint64_t)st.st_size > STORE_MAX_OBJECT) {
    snprintf(err, errlen, "%s/%s: %lld bytes, larger than any valid object",
             d->dir, rel, (long long)st.st_size);
    close(fd);
    return -EFBIG;
  }
  p = malloc(st.st_size ? (size_t)st.st_size : 1);
  if (!p)
    abort();
  while (off < (size_t)st.st_size) {
    ssize_t n = pread(fd, p + off, (size_t)st.st_size - off, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : -EIO;
      snprintf(err, errlen, "%s/%s: read: %s", d->dir, rel,
               n < 0 ? strerror(-rc) : "shorter than its size");
      free(p);
      close(fd);
      return rc;
    }
    off += (size_t)n;
  }
  close(fd);
  *buf = p;
  *len = off;
  return 0;
}

static int
dir_put(struct backend *b, enum store_kind k, const struct store_hash *name,
        const void *buf, size_t len, char *err, size_t errlen)
{
  struct backend_dir *d = (struct backend_dir *)b;
  char rel[600], sub[600];
  struct stat st;

  dir_obj_path(k, name, rel, sizeof rel);
  if (fstatat(d->dirfd, rel, &st, 0) == 0 && (size_t)st.st_size == len)
    return 0;                   /* content-named: the same bytes */
  snprintf(sub, sizeof sub, "%s", rel);
  *strrchr(sub, '/') = '\0';
  if (mkdirat(d->dirfd, sub, 0755) == -1 && errno != EEXIST) {
    int rc = -errno;
    snprintf(err, errlen, "%s/%s: mkdir: %s", d->dir, sub, strerror(-rc));
    return rc;
  }
  return dir_write_atomic(d, rel, buf, len, err, errlen);
}

static int
dir_get(struct backend *b, enum store_kind k, const struct store_hash *name,
        void **buf, size_t *len, char *err, size_t errlen)
{
  char rel[600];

  dir_obj_path(k, name, rel, sizeof rel);
  return dir_read_all((struct backend_dir *)b, rel, buf, len, err, errlen);
}

/* An open descriptor of object (k, name), from the cache or opened (the
 * least recently used one closed to make room); -errno if it cannot be
 * opened. */
static int
dir_open_cached(struct backend_dir *d, enum store_kind k,
                const struct store_hash *name, const char *rel)
{
  unsigned victim = 0;
  int fd;

  for (unsigned i = 0; i < DIR_FD_CACHE; i++) {
    if (d->fds[i].fd >= 0 && d->fds[i].k == k &&
        memcmp(d->fds[i].name.b, name->b, STORE_HASH_LEN) == 0) {
      d->fds[i].used = ++d->fd_clock;
      return d->fds[i].fd;
    }
    if (d->fds[victim].fd >= 0 &&
        (d->fds[i].fd < 0 || d->fds[i].used < d->fds[victim].used))
      victim = i;
  }
  fd = openat(d->dirfd, rel, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  if (d->fds[victim].fd >= 0)
    close(d->fds[victim].fd);
  d->fds[victim].k = k;
  d->fds[victim].name = *name;
  d->fds[victim].fd = fd;
  d->fds[victim].used = ++d->fd_clock;
  return fd;
}

/* Forget (close) a cached descriptor of (k, name). */
static void
dir_close_cached(struct backend_dir *d, enum store_kind k,
                 const struct store_hash *name)
{
  for (unsigned i = 0; i < DIR_FD_CACHE; i++)
    if (d->fds[i].fd >= 0 && d->fds[i].k == k &&
        memcmp(d->fds[i].name.b, name->b, STORE_HASH_LEN) == 0) {
      close(d->fds[i].fd);
      d->fds[i].fd = -1;
    }
}

static int
dir_get_range(struct backend *b, enum store_kind k,
              const struct store_hash *name, uint64_t off, void *buf,
              size_t len, char *err, size_t errlen)
{
  struct backend_dir *d = (struct backend_dir *)b;
  char rel[600];
  size_t got = 0;
  int fd, rc;

  dir_obj_path(k, name, rel, sizeof rel);
  fd = dir_open_cached(d, k, name, rel);
  if (fd < 0) {
    rc = fd;
    snprintf(err, errlen, "%s/%s: %s", d->dir, rel, strerror(-rc));
    return rc;
  }
  while (got < len) {
    ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : -EIO;
      snprintf(err, errlen, "%s/%s: read of %zu bytes at %llu: %s", d->dir,
               rel, len, (unsigned long long)off,
               n < 0 ? strerror(-rc) : "past the end of the object");
      dir_close_cached(d, k, name);
      return rc;
    }
    got += (size_t)n;
  }
  return 0;
}

static int
dir_list(struct backend *b, enum store_kind k, backend_list_fn fn, void *arg,
         char *err, size_t errlen)
{
  struct backend_dir *d = (struct backend_dir *)b;
  char top[64];
  DIR *dt;
  struct dirent *e;
  int rc = 0;

  snprintf(top, sizeof top, "objects/%s", kind_dirs[k]);
  {
    int fd = openat(d->dirfd, top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1) {
      rc = -errno;
      snprintf(err, errlen, "%s/%s: %s", d->dir, top, strerror(-rc));
      return rc;
    }
    dt = fdopendir(fd);
    if (!dt) {
      rc = -errno;
      close(fd);
      snprintf(err, errlen, "%s/%s: %s", d->dir, top, strerror(-rc));
      return rc;
    }
  }
  while (rc == 0 && (e = readdir(dt)) != NULL) {
    char sub[64 + sizeof e->d_name];
    DIR *ds;
    struct dirent *f;
    int fd;

    if (strlen(e->d_name) != 2)
      continue;
    snprintf(sub, sizeof sub, "%s/%.2s", top, e->d_name);
    fd = openat(d->dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1)
      continue;
    ds = fdopendir(fd);
    if (!ds) {
      close(fd);
      continue;
    }
    while (rc == 0 && (f = readdir(ds)) != NULL) {
      struct store_hash h;
      struct stat st;

      if (format_hash_parse_hex(f->d_name, &h) == -1)
        continue;               /* temporary or foreign file */
      if (fstatat(dirfd(ds), f->d_name, &st, 0) == -1)
        continue;
      rc = fn(&h, (uint64_t)st.st_size, arg);
    }
    closedir(ds);
  }
  closedir(dt);
  if (rc < 0 && err[0] == '\0')
    snprintf(err, errlen, "listing %s/%s stopped: %s", d->dir, top,
             strerror(-rc));
  return rc;
}

static int
dir_del(struct backend *b, enum store_kind k, const struct store_hash *name,
        char *err, size_t errlen)
{
  struct backend_dir *d = (struct backend_dir *)b;
  char rel[600];

  dir_obj_path(k, name, rel, sizeof rel);
  dir_close_cached(d, k, name);         /* or its space stays in use */
  if (unlinkat(d->dirfd, rel, 0) == -1 && errno != ENOENT) {
    int rc = -errno;
    snprintf(err, errlen, "%s/%s: delete: %s", d->dir, rel, strerror(-rc));
    return rc;
  }
  return 0;
}

static int
dir_ref_get(struct backend *b, void **buf, size_t *len, char *err,
            size_t errlen)
{
  return dir_read_all((struct backend_dir *)b, "catalog", buf, len, err,
                      errlen);
}

static int
dir_ref_put(struct backend *b, const void *buf, size_t len, char *err,
            size_t errlen)
{
  struct backend_dir *d = (struct backend_dir *)b;

  /* The previous catalog stays as catalog.prev (a hard link: the rename
   * below replaces "catalog" atomically either way). */
  unlinkat(d->dirfd, "catalog.prev", 0);
  if (linkat(d->dirfd, "catalog", d->dirfd, "catalog.prev", 0) == -1 &&
      errno != ENOENT) {
    int rc = -errno;
    snprintf(err, errlen, "%s/catalog.prev: %s", d->dir, strerror(-rc));
    return rc;
  }
  return dir_write_atomic(d, "catalog", buf, len, err, errlen);
}

static int
dir_config_get(struct backend *b, void **buf, size_t *len, char *err,
               size_t errlen)
{
  return dir_read_all((struct backend_dir *)b, "config", buf, len, err,
                      errlen);
}

static int
dir_config_put(struct backend *b, const void *buf, size_t len, char *err,
               size_t errlen)
{
  return dir_write_atomic((struct backend_dir *)b, "config", buf, len, err,
                          errlen);
}

static int
dir_usage_one(const struct store_hash *name, uint64_t size, void *arg)
{
  (void)name;
  *(uint64_t *)arg += size;
  return 0;
}

static int
dir_usage(struct backend *b, uint64_t *bytes, char *err, size_t errlen)
{
  int rc;

  *bytes = 0;
  for (int k = 0; k < KIND_COUNT; k++)
    if ((rc = dir_list(b, (enum store_kind)k, dir_usage_one, bytes, err,
                       errlen)) < 0)
      return rc;
  return 0;
}

static void
dir_close(struct backend *b)
{
  struct backend_dir *d = (struct backend_dir *)b;

  if (!d)
    return;
  for (unsigned i = 0; i < DIR_FD_CACHE; i++)
    if (d->fds[i].fd >= 0)
      close(d->fds[i].fd);
  if (d->lockfd >= 0)
    close(d->lockfd);           /* releases the flock */
  if (d->dirfd >= 0)
    close(d->dirfd);
  free(d->dir);
  free(d);
}

static const struct backend_ops dir_ops = {
  .put = dir_put,
  .get = dir_get,
  .get_range = dir_get_range,
  .list = dir_list,
  .del = dir_del,
  .ref_get = dir_ref_get,
  .ref_put = dir_ref_put,
  .config_get = dir_config_get,
  .config_put = dir_config_put,
  .usage = dir_usage,
  .close = dir_close,
};

/* Leftover temporary files of a writer that crashed. */
static void
dir_remove_tmp(struct backend_dir *d)
{
  static const char *const tops[] = { ".", "objects/pack", "objects/index",
                                      "objects/snap" };

  for (size_t i = 0; i < ARRAY_SIZE(tops); i++) {
    int fd = openat(d->dirfd, tops[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dt;
    struct dirent *e;

    if (fd == -1)
      continue;
    dt = fdopendir(fd);
    if (!dt) {
      close(fd);
      continue;
    }
    while ((e = readdir(dt)) != NULL) {
      if (strncmp(e->d_name, ".tmp-", 5) == 0) {
        unlinkat(dirfd(dt), e->d_name, 0);
      } else if (i > 0 && strlen(e->d_name) == 2) {
        int sfd = openat(dirfd(dt), e->d_name,
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *ds = sfd >= 0 ? fdopendir(sfd) : NULL;
        struct dirent *f;
        if (!ds) {
          if (sfd >= 0)
            close(sfd);
          continue;
        }
        while ((f = readdir(ds)) != NULL)
          if (strncmp(f->d_name, ".tmp-", 5) == 0)
            unlinkat(dirfd(ds), f->d_name, 0);
        closedir(ds);
      }
    }
    closedir(dt);
  }
}

int
backend_dir_open(const char *dir, int flags, struct backend **out,
                 char *err, size_t errlen)
{
  struct backend_dir *d;
  int rc;

  *out = NULL;
  if ((flags & BACKEND_CREATE) && mkdir(dir, 0755) == -1 && errno != EEXIST) {
    rc = -errno;
    snprintf(err, errlen, "%s: cannot create the store directory: %s", dir,
             strerror(-rc));
    return rc;
  }
  d = calloc(1, sizeof *d);
  if (!d)
    abort();
  d->b.ops = &dir_ops;
  d->lockfd = -1;
  for (unsigned i = 0; i < DIR_FD_CACHE; i++)
    d->fds[i].fd = -1;
  d->dir = strdup(dir);
  if (!d->dir)
    abort();
  snprintf(d->b.desc, sizeof d->b.desc, "%s", dir);
  d->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d->dirfd == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s: %s", dir, rc == -ENOENT
             ? "no such store directory" : strerror(-rc));
    goto fail;
  }
  if (flags & BACKEND_CREATE) {
    static const char *const subdirs[] = { "objects", "objects/pack",
                                           "objects/index", "objects/snap" };
    for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++)
      if (mkdirat(d->dirfd, subdirs[i], 0755) == -1 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "%s/%s: mkdir: %s", dir, subdirs[i],
                 strerror(-rc));
        goto fail;
      }
  }
  d->lockfd = openat(d->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (d->lockfd == -1)
    d->lockfd = openat(d->dirfd, "lock", O_RDONLY | O_CLOEXEC);
  if (d->lockfd == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s/lock: %s", dir, strerror(-rc));
    goto fail;
  }
  d->writer = flags & BACKEND_WRITE;
  if (flock(d->lockfd, (d->writer ? LOCK_EX : LOCK_SH) | LOCK_NB) == -1) {
    rc = -errno;
    if (rc == -EWOULDBLOCK)
      snprintf(err, errlen, "%s: the store is in use by %s (it holds "
               "%s/lock); %s", dir, d->writer ? "another process"
               : "a writer, such as a running duplex-secondary", dir,
               d->writer ? "stop it first" : "use duplexctl --control "
               "SOCKET snapshot ... on that agent, or stop it first");
    else
      snprintf(err, errlen, "%s/lock: flock: %s", dir, strerror(-rc));
    goto fail;
  }
  if (d->writer)
    dir_remove_tmp(d);
  *out = &d->b;
  return 0;

fail:
  dir_close(&d->b);
  return rc;
}
