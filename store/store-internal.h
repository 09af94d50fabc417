/* The snapshot store's private parts, one section per .c file. */
#ifndef DUPLEX_STORE_INTERNAL_H
#define DUPLEX_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zstd.h>

#include "backend.h"
#include "format.h"
#include "htab.h"
#include "store.h"

/* ---- store.c ---- */
struct store_man {
  uint64_t id;
  struct manifest *m;
};

struct store {
  struct backend *b;
  struct store_config cfg;
  struct catalog cat;
  bool writer;
  /* every blob the catalog's index objects name; entry.pack is an
   * ordinal in packs[] */
  struct index_entry *blobs;
  size_t n_blobs, cap_blobs;
  struct store_hash *packs;
  size_t n_packs, cap_packs;
  struct htab blob_ix;          /* blob hash -> blobs[] */
  struct htab pack_ix;          /* pack name -> packs[] */
  struct store_man *mans;       /* manifests loaded so far */
  size_t n_mans;
  ZSTD_DCtx *zctx;
  struct store_writer *writers; /* begun, not yet committed or aborted */
  pthread_mutex_t *io_lock;     /* store_set_io_lock */
};

/* Tests: called each time a writer has let go of the lock. */
extern void (*store_io_released_hook)(void);

/* Around a writer's durable writes: let go of the caller's lock, take it
 * again (store_set_io_lock). */
static inline void
store_io_release(struct store *s)
{
  if (s->io_lock) {
    pthread_mutex_unlock(s->io_lock);
    if (store_io_released_hook)
      store_io_released_hook();
  }
}

static inline void
store_io_retake(struct store *s)
{
  if (s->io_lock)
    pthread_mutex_lock(s->io_lock);
}

/* store_replace_catalog in two steps: write (and sync) c as the next
 * generation; then make it the store's (taking c's arrays). */
int store_write_catalog(struct store *s, struct catalog *c, char *err,
                        size_t errlen);
void store_install_catalog(struct store *s, struct catalog *c);

/* Get an object and check that it hashes to its name. */
int store_get_object(struct store *s, enum store_kind k,
                     const struct store_hash *name, void **buf, size_t *len,
                     char *err, size_t errlen);
/* Decompress if flagged, check the hash; out holds STORE_BLOCK bytes. */
int store_decode_blob(struct store *s, const struct store_hash *h,
                      const void *stored, size_t stored_len, uint32_t flags,
                      void *out, char *err, size_t errlen);
const struct catalog_snap *store_catalog_find(const struct store *s,
                                              uint64_t id);
/* Index objects hold at most this many entries: a bigger one could pass
 * STORE_MAX_OBJECT, which readers refuse, and the store would no longer
 * open (tests lower it). */
extern uint32_t store_index_max_entries;
/* Write ix as one or more index objects, the entries split between them,
 * each listing the packs its own entries are in.  *names (malloc'd) gets
 * their names, *bytes their total size. */
int store_put_index(struct store *s, const struct index_obj *ix,
                    struct store_hash **names, uint32_t *n_names,
                    uint64_t *bytes, char *err, size_t errlen);

/* ---- writer.c: what open writers need kept ---- */
/* Put into live every blob an open writer names (stored by it or found in
 * the store), and into packs every pack it has written: not in the
 * catalog yet, but its commit will name them.  Either may be NULL. */
void store_writers_live(const struct store *s, struct htab *live,
                        struct htab *packs);
/* An open writer will build a delta on the newest snapshot. */
bool store_writers_delta_open(const struct store *s);

/* ---- pack.c: building packs ---- */
struct pack_builder;
/* Blobs are added until the pack reaches STORE_PACK_TARGET bytes; then
 * (or on finish) it is written to the backend. */
struct pack_builder *pack_builder_new(void);
void pack_builder_free(struct pack_builder *pb);
/* 0 added; 1 full (finish it first, then add again). */
int pack_builder_add(struct pack_builder *pb, const struct store_hash *h,
                     const void *data, size_t len, uint32_t flags);
uint32_t pack_builder_count(const struct pack_builder *pb);
/* Write the pack (named by its hash) and append its entries to ix (with
 * the pack's ordinal in ix->packs); the builder is empty again.  *bytes
 * is the object's size. */
int pack_builder_finish(struct pack_builder *pb, struct backend *b,
                        struct index_obj *ix, uint64_t *bytes, char *err,
                        size_t errlen);
/* Compress one block if that saves at least an eighth: returns the bytes
 * to store in out (room for STORE_BLOCK) and sets *flags. */
size_t pack_compress(ZSTD_CCtx *z, const void *block, void *out,
                     uint32_t *flags);

/* ---- restore.c: writing to the target (also apply-diff.c) ---- */
/* len bytes at off of a file or device: all of them, or a negative errno
 * with a message naming path and offset.  A read past the end gives
 * zeros. */
int restore_io(int fd, bool write_, void *buf, size_t len, uint64_t off,
               const char *path, char *err, size_t errlen);
/* Make [off, off+len) read as zeros: punch a file, zero-out a device,
 * write zeros where neither works. */
int restore_zero(int fd, bool blockdev, uint64_t off, uint64_t len,
                 const char *path, char *err, size_t errlen);

#endif
