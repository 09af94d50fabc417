/* The snapshot store (docs/STORE.md): opening a store, its snapshots,
 * reading their blocks, and the operations on whole snapshots.  One
 * writer at a time (the backend's lock); readers see the catalog as it
 * was when they opened the store.
 *
 * Every function returning int gives 0 or a negative errno, with a
 * message in err naming the store, the object or snapshot and what is
 * wrong. */
#ifndef DUPLEX_STORE_STORE_H
#define DUPLEX_STORE_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "diffstream.h"
#include "format.h"

#define STORE_CHAIN_MAX 64u          /* deltas before a full map again */
#define STORE_PACK_TARGET (16u << 20) /* pack size */

struct store;

/* ---- store.c: open, catalog, blobs ---- */
#define STORE_CREATE 1               /* a new store if DIR has none */
#define STORE_WRITE 2                /* the one writer */
int store_open(const char *dir, int flags, struct store **out, char *err,
               size_t errlen);
void store_close(struct store *s);
const char *store_desc(const struct store *s);
struct backend *store_backend(struct store *s);
const struct store_config *store_config(const struct store *s);
const struct catalog *store_catalog(const struct store *s);
/* The manifest of snapshot id (cached while the store is open). */
int store_manifest(struct store *s, uint64_t id, const struct manifest **m,
                   char *err, size_t errlen);
/* Block contents by hash: STORE_BLOCK bytes, checked against the hash. */
int store_read_blob(struct store *s, const struct store_hash *h, void *out,
                    char *err, size_t errlen);
/* Where a blob is stored, or NULL. */
const struct index_entry *store_find_blob(const struct store *s,
                                          const struct store_hash *h,
                                          const struct store_hash **pack);
/* Replace the catalog (generation + 1); the new one is also the store's
 * from now on.  Takes ownership of c's arrays. */
int store_replace_catalog(struct store *s, struct catalog *c, char *err,
                          size_t errlen);
/* For a caller that shares the store between threads under one mutex,
 * held around every call into the store: a snapshot being written lets
 * go of `lock` while it writes and syncs its packs, index, manifest and
 * the catalog, and takes it again before the snapshot becomes visible.
 * Nothing a reader uses changes meanwhile, so readers of other snapshots
 * wait for memory work, never for a disk.  Every write to the store must
 * come from one thread.  NULL (the default): no lock. */
void store_set_io_lock(struct store *s, pthread_mutex_t *lock);
/* Add a parsed index object (a writer committed it). */
void store_add_index(struct store *s, const struct store_hash *name,
                     const struct index_obj *ix);
/* Forget every loaded index and manifest, and load the index objects the
 * catalog names again (after garbage collection rewrote them). */
int store_reload(struct store *s, char *err, size_t errlen);
/* Bytes held by the store's objects. */
int store_usage(struct store *s, uint64_t *bytes, char *err, size_t errlen);

/* ---- map.c: a snapshot's resolved block map ---- */
/* Every data run of the snapshot (gaps read as zeros), hashes pointing
 * into manifests the store keeps loaded. */
struct store_map {
  uint64_t blocks;
  struct snap_run *runs;
  uint32_t n_runs;
};
int store_map_resolve(struct store *s, uint64_t id, struct store_map *out,
                      char *err, size_t errlen);
void store_map_free(struct store_map *m);
/* The hash of a block, or NULL when it reads as zeros. */
const struct store_hash *store_map_lookup(const struct store_map *m,
                                          uint64_t block);
/* Overlay `top` (entries win, zero runs clear) onto `base`; result has
 * data runs only when keep_zero is false, else zero runs of top are kept
 * (a merged delta).  Result runs sorted; hashes point where the inputs'
 * did. */
int map_overlay(const struct snap_run *base, uint32_t nb,
                const struct snap_run *top, uint32_t nt, bool keep_zero,
                struct snap_run **out, uint32_t *nout);
/* Ranges (in blocks) where two maps differ: fn(start, count, arg). */
typedef int (*map_diff_fn)(uint64_t start, uint64_t count, void *arg);
int map_diff(const struct store_map *a, const struct store_map *b,
             map_diff_fn fn, void *arg);

/* ---- diff.c: changed ranges as text ---- */
/* "OFFSET LENGTH" lines, or the JSON object of duplex-store diff --json;
 * *out malloc'd (NUL-terminated). */
int store_diff_text(struct store *s, uint64_t a, uint64_t b, bool json,
                    char **out, size_t *outlen, char *err, size_t errlen);
/* The regions of `grain` bytes (a multiple of STORE_BLOCK) of a volume of
 * `size` bytes where snapshots a and b differ, as a bitmap image: bit i is
 * bit i % 8 of byte i / 8, the length whole 64-bit words.  *out malloc'd. */
int store_diff_image(struct store *s, uint64_t a, uint64_t b, uint64_t size,
                     uint32_t grain, uint8_t **out, size_t *outlen, char *err,
                     size_t errlen);
/* The diff stream (docs/STORE.md, "Diff streams") from snapshot a (0: an
 * empty volume; the stream then describes every block) to snapshot b,
 * handed to fn in pieces: fn returns 0 or a negative errno, which stops
 * the stream (then without its END record). */
typedef int (*store_stream_fn)(const void *buf, size_t len, void *arg);
struct store_diff_stream_stats {
  uint64_t records, data_bytes, zero_bytes, stream_bytes;
};
int store_diff_stream(struct store *s, uint64_t a, uint64_t b,
                      store_stream_fn fn, void *arg,
                      struct store_diff_stream_stats *st, char *err,
                      size_t errlen);

/* ---- writer.c: taking a snapshot ---- */
struct snap_meta {
  char name[STORE_NAME_MAX + 1];
  uint64_t created_ns;
  uint64_t epoch;
  uint8_t reason;
  uint64_t size_bytes;
  uint8_t volume_uuid[16];
  /* 0: the catalog's next id.  Else this id (above every id in the store);
   * the parent of a delta is then the newest snapshot at commit time, so
   * snapshots can be begun before the one before them is committed. */
  uint64_t id;
  /* Leave out blocks given with the contents the parent has (a snapshot
   * after a rescan of the whole volume stores only what differs). */
  bool drop_same;
};
struct store_writer;
/* A snapshot on top of the newest one (a delta), or a full one when
 * full is set or the store has none: then every non-zero block must be
 * given.  Blocks not given keep the parent's contents. */
int store_writer_begin(struct store *s, const struct snap_meta *meta,
                       bool full, struct store_writer **out, char *err,
                       size_t errlen);
/* The contents of one block at the snapshot's instant (any order, each
 * block at most once). */
int store_writer_block(struct store_writer *w, uint64_t block,
                       const void *data, char *err, size_t errlen);
int store_writer_zero(struct store_writer *w, uint64_t start, uint64_t count,
                      char *err, size_t errlen);
/* Packs, index, manifest, catalog; then the snapshot exists and w is
 * freed (on failure call store_writer_abort).  st (may be NULL) gets the
 * final figures. */
struct store_writer_stats;
int store_writer_commit(struct store_writer *w, uint64_t *id,
                        struct store_writer_stats *st, char *err,
                        size_t errlen);
/* Nothing committed: what was written is garbage for the next GC. */
void store_writer_abort(struct store_writer *w);
struct store_writer_stats {
  uint64_t blocks, zero_blocks, new_blobs, dedup_blobs, stored_bytes;
};
void store_writer_stats(const struct store_writer *w,
                        struct store_writer_stats *st);

/* ---- gc.c: deleting snapshots, garbage collection ---- */
struct gc_stats {
  uint64_t packs_deleted, packs_rewritten, objects_deleted;
  uint64_t bytes_before, bytes_after;
};
/* -EBUSY: id is the newest snapshot and a writer open on this store builds
 * a delta on it (try again after its commit). */
int store_delete(struct store *s, uint64_t id, struct gc_stats *st,
                 char *err, size_t errlen);
/* Mark and sweep: repack packs holding dead blobs, delete objects the
 * catalog does not reach (nor a writer open on this store has put or
 * names).  full=false only sweeps unreferenced objects
 * (finishing an interrupted delete) without repacking. */
int store_gc(struct store *s, bool full, struct gc_stats *st, char *err,
             size_t errlen);

/* ---- check.c: verify ---- */
/* fn is called for every problem found, with the snapshot id (0 when the
 * problem is not tied to one) and the byte offset in it (or UINT64_MAX). */
typedef void (*check_report_fn)(uint64_t snap, uint64_t offset,
                                const char *what, void *arg);
/* Re-reads and re-hashes every stored block of snapshot id (0: all).
 * Returns the number of problems (0: all good), or a negative errno when
 * the store itself cannot be read. */
long store_check(struct store *s, uint64_t id, check_report_fn fn, void *arg,
                 char *err, size_t errlen);

/* ---- restore.c: a snapshot onto a file or device ---- */
struct restore_stats {
  uint64_t blocks, written_blocks, zeroed_blocks, same_blocks;
};
/* Write snapshot id to path (created if missing, a regular file is sized
 * to the volume).  Blocks that already hold the right contents are not
 * written. */
int store_restore(struct store *s, uint64_t id, const char *path,
                  struct restore_stats *st, char *err, size_t errlen);

/* ---- apply-diff.c: a diff stream onto a file or device, no store ---- */
struct apply_diff_stats {
  struct diffstream_header hdr;
  uint64_t target_size;         /* before */
  uint64_t records, data_bytes, zero_bytes, stream_bytes;
};
/* Called once the stream's header is known good and the target open. */
typedef void (*apply_diff_header_fn)(const struct diffstream_header *h,
                                     void *arg);
/* Read the stream from in_fd (named in_name in messages) to its end and
 * apply it to path (created when the stream is from an empty volume);
 * synced before 0 is returned.  Else a negative errno and a message
 * saying what was wrong, where, and whether the target was changed. */
int apply_diff(int in_fd, const char *in_name, const char *path,
               apply_diff_header_fn on_header, void *arg,
               struct apply_diff_stats *st, char *err, size_t errlen);

#endif
