/* Where a snapshot store keeps its bytes: immutable objects named by their
 * hash, put/get/list/delete, plus one reference (the catalog) replaced
 * atomically and one write-once config.  The embedded default is a local
 * directory (backend-dir.c); an S3-compatible backend implements the same
 * operations (no rename there: a PUT is atomic, listing may lag, so
 * nothing but garbage collection lists).
 *
 * Every operation returns 0 or a negative errno; -ENOENT means "no such
 * object".  err gets a message naming the object and what failed. */
#ifndef DUPLEX_STORE_BACKEND_H
#define DUPLEX_STORE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"

enum store_kind { KIND_PACK, KIND_INDEX, KIND_SNAP, KIND_COUNT };

struct backend;
typedef int (*backend_list_fn)(const struct store_hash *name, uint64_t size,
                               void *arg);

struct backend_ops {
  /* Durable when it returns; putting an existing name again is a no-op. */
  int (*put)(struct backend *b, enum store_kind k,
             const struct store_hash *name, const void *buf, size_t len,
             char *err, size_t errlen);
  /* *buf is malloc'd. */
  int (*get)(struct backend *b, enum store_kind k,
             const struct store_hash *name, void **buf, size_t *len,
             char *err, size_t errlen);
  int (*get_range)(struct backend *b, enum store_kind k,
                   const struct store_hash *name, uint64_t off, void *buf,
                   size_t len, char *err, size_t errlen);
  int (*list)(struct backend *b, enum store_kind k, backend_list_fn fn,
              void *arg, char *err, size_t errlen);
  int (*del)(struct backend *b, enum store_kind k,
             const struct store_hash *name, char *err, size_t errlen);
  /* The catalog: -ENOENT before the first ref_put. */
  int (*ref_get)(struct backend *b, void **buf, size_t *len, char *err,
                 size_t errlen);
  int (*ref_put)(struct backend *b, const void *buf, size_t len, char *err,
                 size_t errlen);
  /* The config: written once when the store is created. */
  int (*config_get)(struct backend *b, void **buf, size_t *len, char *err,
                    size_t errlen);
  int (*config_put)(struct backend *b, const void *buf, size_t len,
                    char *err, size_t errlen);
  /* Bytes held by objects of every kind (for status). */
  int (*usage)(struct backend *b, uint64_t *bytes, char *err, size_t errlen);
  void (*close)(struct backend *b);
};

struct backend {
  const struct backend_ops *ops;
  char desc[300];               /* for messages: the directory or URL */
};

const char *backend_kind_name(enum store_kind k);

/* ---- backend-dir.c ---- */
#define BACKEND_CREATE 1        /* make the directory layout if missing */
#define BACKEND_WRITE 2         /* exclusive writer (flock on DIR/lock) */
/* A reader takes a shared lock: it fails while a writer holds the store,
 * with a message saying so. */
int backend_dir_open(const char *dir, int flags, struct backend **out,
                     char *err, size_t errlen);

#endif
