/* A read-only NBD export of a block source (store/nbd-export.c), and the
 * source that serves a snapshot of a store (store/snap-source.c).
 *
 * duplex-store serve runs one on its own event loop; the secondary will
 * run one on its loop for duplexctl snapshot export.  The export knows
 * nothing of stores: it asks a struct nbd_export_source for bytes and for
 * which stretches read as zeros (base:allocation). */
#ifndef DUPLEX_STORE_NBD_EXPORT_H
#define DUPLEX_STORE_NBD_EXPORT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "util.h"

struct store;

/* ---- nbd-export.c: the NBD server ---- */

/* Called by a source for each stretch it describes; nonzero stops it. */
typedef int (*nbd_export_extent_fn)(uint64_t off, uint64_t len, bool zero,
                                    void *fnarg);

/* Where an export's bytes come from.  Both calls are made on the event
 * loop's thread and may block (disk reads). */
struct nbd_export_source {
  uint64_t size;
  /* Fill buf with len bytes at off (inside size).  0, or -errno with a
   * message in err. */
  int (*read)(void *arg, uint64_t off, uint32_t len, void *buf, char *err,
              size_t errlen);
  /* Describe [off, off + len) (inside size) as consecutive stretches, in
   * order, the first one holding off (it may begin before it): fn(off,
   * len, zero) where zero means the stretch reads as zeros.  Stops when
   * fn returns nonzero and returns that value; else 0 once the range is
   * covered, or -errno with a message in err. */
  int (*extents)(void *arg, uint64_t off, uint64_t len,
                 nbd_export_extent_fn fn, void *fnarg, char *err,
                 size_t errlen);
  void *arg;
};

/* The largest READ (advertised in NBD_INFO_BLOCK_SIZE; larger ones get
 * EINVAL), and what one client may hold in replies not yet sent: a READ
 * waits, unread, while it would not fit. */
#define NBD_EXPORT_BLOCK_MAX (32u * 1024 * 1024)
#define NBD_EXPORT_MAX_HELD (2u * NBD_EXPORT_BLOCK_MAX)

struct nbd_export_server;

/* Listen on ep with the caller's event loop and serve src read-only to
 * any number of clients, under any export name (name is the canonical
 * one, listed and sent as NBD_INFO_NAME; description may be NULL).  src
 * must outlive the server.  0, or -1 with a message in err. */
int nbd_export_new(struct event_base *base, const struct endpoint *ep,
                   const struct nbd_export_source *src, const char *name,
                   const char *description, struct nbd_export_server **out,
                   char *err, size_t errlen);
/* Close every client and the listener; a unix socket is removed. */
void nbd_export_free(struct nbd_export_server *srv);
/* "unix:/run/x.sock", "127.0.0.1:10809" (the real port when ep asked for
 * port 0). */
const char *nbd_export_where(const struct nbd_export_server *srv);
/* The TCP port listened on, or -1 for a unix socket. */
int nbd_export_port(const struct nbd_export_server *srv);
unsigned nbd_export_clients(const struct nbd_export_server *srv);

/* ---- snap-source.c: a snapshot of a store as a source ---- */

/* The snapshot's block map is resolved once, at open; reads fetch blobs
 * from the store (one range read per block), gaps read as zeros, and only
 * zero blocks are reported as zero stretches (4 KiB exact).
 *
 * struct store is not thread-safe: every store call the source makes
 * (resolving the map at open, each blob read) holds *lock, which a caller
 * using the same store from another thread shares with its own store
 * calls; NULL gives the source a lock of its own (single-threaded use).
 * The map points into manifests the store keeps loaded: while the source
 * is open the store must not be reloaded (store_reload, store_gc,
 * store_delete). */
struct snap_source;
int snap_source_open(struct store *s, uint64_t id, pthread_mutex_t *lock,
                     struct snap_source **out, char *err, size_t errlen);
void snap_source_close(struct snap_source *ss);
/* The nbd_export_source reading this snapshot (valid until close). */
const struct nbd_export_source *snap_source_get(const struct snap_source *ss);

#endif
