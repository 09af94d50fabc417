/* duplex-secondary: private interfaces, one section per .c file. */
#ifndef DUPLEX_SECONDARY_INTERNAL_H
#define DUPLEX_SECONDARY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "aio.h"
#include "apply.h"
#include "blockdev.h"
#include "duplex.pb-c.h"
#include "frame.h"
#include "gen.h"
#include "meta.h"
#include "tls-stream.h"
#include "retention.h"
#include "store.h"
#include "tls.h"
#include "util.h"

#define SEC_MAX_INFLIGHT 64u             /* replica I/Os submitted at once */
#define SEC_AIO_DEPTH 128u
/* Memory held by received, not yet applied ops (payload plus buffer
 * overhead, which is as large as the payload for 4 KiB writes). */
#define SEC_MAX_QUEUED (64ull << 20)
#define SEC_RESUME_QUEUED (48ull << 20)  /* read again once below this */
#define SEC_PEER_TIMEOUT_MS 10000u       /* until the hello names the
                                            primary's --peer-timeout */
#define SEC_HEARTBEAT_MAX_MS 2000u       /* or a quarter of the timeout */
#define SEC_TICK_MS 200u                 /* timeouts and heartbeats */
#define SEC_CLOSE_TIMEOUT_MS 2000u       /* flushing a last ERROR frame */
#define SEC_REFUSED_RETRY_MS 5000u       /* --peer: dialling again after
                                            the generations refused */
#define SEC_ACK_BATCH 1024u
#define SEC_STOP_TIMEOUT_MS 4000u        /* in-flight I/O at SIGTERM */

/* ---- config.c: command line, no I/O ---- */
struct config {
  const char *volume;
  const char *meta;
  const char *listen_arg;       /* --listen or --peer as given */
  struct endpoint listen;       /* --listen, or --peer (dial) */
  bool dial;                    /* --peer: this side dials the primary */
  unsigned connect_interval_ms; /* --peer: longest wait between attempts */
  struct tls_config tls;
  const char *control;
  const char *pidfile;
  bool foreground;
  bool verbose;
  const char *snapshot_store;   /* NULL: no snapshots */
  uint64_t snapshot_every_ms;   /* 0: none on schedule */
  struct keep_policy keep;      /* all zero: keep everything */
  bool keep_manual;
  uint64_t snapshot_copy_rate;  /* bytes/s of background copy, 0: any */
};
/* 0: ok; 1: --help/--version printed to out; -1: error, one line in err
 * ("--flag VALUE: reason", without the program name). */
int config_parse(int argc, char **argv, struct config *cfg, FILE *out,
                 char *err, size_t errlen);
void config_usage(FILE *out);

/* ---- main.c: the agent ---- */
struct apply;
struct replica;
struct link;
struct connector;
struct control;

enum sec_sync { SEC_SYNC_UNKNOWN, SEC_SYNC_INITIAL, SEC_SYNC_RESYNC,
                SEC_SYNC_RESTORING, SEC_SYNC_IN_SYNC };

/* What status shows; updated by link.c and replica.c. */
struct sec_status {
  int mode;                     /* Duplex__Mode from the last HELLO */
  bool consistency_points;      /* tail capture: consistent only at points
                                   (from the last HELLO) */
  enum sec_sync sync;
  uint64_t size_bytes;          /* the primary's volume size, from HELLO */
  uint64_t total_bytes, done_bytes, out_of_sync_bytes; /* last SYNC_STATE */
  uint64_t bytes_sent, bytes_received;                 /* all links */
  uint64_t writes_acked;        /* ops acknowledged to the primary */
  uint64_t connects;            /* primaries that completed HELLO */
  char last_error[1024];        /* "" = none */
  char pause_reason[512];       /* why applying is paused: "write at 4096:
                                   No space left on device" */
  /* generation identifiers, from the last HELLO */
  bool have_decision;
  enum gen_decision decision;   /* gen_compare(ours, the primary's) */
  struct gen_ids peer_gen;
  bool split_brain;             /* both sides wrote; waiting for resolve */
  bool refused;                 /* the primary's data is refused (split
                                   brain, newer or unrelated data here)
                                   until resolved or a HELLO agrees */
  bool refusal_error;           /* last_error says why it was refused */
};

struct secondary {
  struct event_base *base;
  struct config cfg;
  struct meta *meta;
  struct replica *replica;
  struct apply *apply;
  struct snapmgr *snap;
  struct connector *conn;       /* dials the primary or accepts it */
  struct control *control;
  struct link *link;            /* the verified primary, or NULL */
  TAILQ_HEAD(, link) links;     /* the active link and closing ones */
  struct event *tick;           /* SEC_TICK_MS: timeouts, heartbeats */
  struct sec_status st;
  char node_name[256];
  int listen_port;              /* --listen; -1 when dialling */
  bool bitmap_dirty;            /* the metadata's bitmap has bits set (a
                                   primary ran on this volume) */
  bool al_uncertain;            /* some of those bits are regions a crashed
                                   primary was writing: only possibly
                                   changed (its activity log is kept) */
  bool stopping;
};

/* ---- conn.c: the connection, in either direction ---- */
/* s->conn for --listen (listen_fd from util_listen, owned from here) or
 * --peer (listen_fd -1).  0, or -1 with a message in err. */
int conn_new(struct secondary *s, int listen_fd, char *err, size_t errlen);
/* link.c: a link is gone; accepted: the primary got past the hello with
 * it.  When dialling, the primary is dialled again. */
void conn_link_freed(struct secondary *s, bool accepted);

/* ---- apply.c (common/apply.h): ordered application, either agent ---- */

/* ---- replica.c: the replica volume and the real apply backend ---- */
struct replica *replica_new(struct event_base *base, struct aio_ctx *aio,
                            const char *path);
void replica_free(struct replica *r);      /* closes the volume */
/* Open an existing volume at startup (read-write, O_DIRECT if possible).
 * 0, or -1 with the reason in err. */
int replica_open_existing(struct replica *r, char *err, size_t errlen);
/* For a HELLO announcing size_bytes: open or create (sparse) the volume and
 * check it holds size_bytes.  0, or with an operator-ready message in err
 * -ENOSPC (too small) or -EIO (cannot open or create). */
int replica_prepare(struct replica *r, uint64_t size_bytes, char *err,
                    size_t errlen);
bool replica_is_open(const struct replica *r);
int replica_fd(const struct replica *r);
uint64_t replica_size(const struct replica *r);
const char *replica_path(const struct replica *r);
/* fdatasync, for a clean shutdown.  0 or -errno. */
int replica_sync(struct replica *r);
/* The apply backend (opaque = the replica). */
void replica_start(void *opaque, struct apply *a, struct apply_op *op);

/* ---- identity.c: generation identifiers, the local bitmap, resolution ----
 *
 * The data identity lives in the metadata, not in the process: a volume a
 * duplex-primary ran on (during an outage) carries that run's generation and
 * bitmap, which decide what happens when the original primary comes back. */

/* What a HELLO leads to, from the decision and meta.discard_local. */
enum identity_verdict {
  IDENTITY_ACCEPT,         /* the primary drives the resync as usual */
  IDENTITY_SPLIT_BRAIN,    /* both sides wrote: refuse, wait for resolve */
  IDENTITY_NEWER,          /* this side is newer: refuse to be overwritten */
  IDENTITY_UNRELATED,      /* unrelated data here: refuse */
};
enum identity_verdict identity_verdict(enum gen_decision d,
                                       bool discard_local);

/* Start-up: take the secondary role in the metadata (logging it if a
 * primary used it last) and note whether its bitmap holds changes.  0, or
 * -1 with the reason in err. */
int identity_start(struct secondary *s, char *err, size_t errlen);

void identity_from_wire(const Duplex__GenIds *w, struct gen_ids *g);
/* w points into g and hist (GEN_HISTORY entries); valid as long as they. */
void identity_to_wire(const struct gen_ids *g, Duplex__GenIds *w,
                      uint64_t *hist);
/* The last generation both sides shared, 0 if none is known. */
uint64_t identity_common_gen(const struct gen_ids *local,
                             const struct gen_ids *peer);
/* The operator-ready log / last_error text for a refused HELLO. */
void identity_refusal_message(const struct secondary *s,
                              enum identity_verdict v, const char *peer,
                              const struct gen_ids *peer_gen, char *out,
                              size_t outlen);

/* After a HELLO_REPLY with discard_local: the image of the blocks this side
 * changed, in the primary's bitmap (size_bytes, grain bytes per bit; bit i
 * is bit i%8 of byte i/8, length a multiple of 8 bytes).  The decision says
 * whether this side's bitmap covers its changes; if not, or if it has none,
 * every bit is set (a full resync).  *out is malloc'ed.  0, or -1 with the
 * reason in err. */
int identity_bitmap_image(struct secondary *s, enum gen_decision d,
                          const struct gen_ids *peer, uint64_t size_bytes,
                          uint32_t grain, uint8_t **out, size_t *outlen,
                          char *err, size_t errlen);
/* Pure: OR into dst (dst_bits bits of dst_grain bytes) every region that
 * overlaps a set bit of src (src_bits bits of src_grain bytes). */
void identity_image_convert(const uint8_t *src, uint64_t src_bits,
                            uint32_t src_grain, uint8_t *dst,
                            uint64_t dst_bits, uint32_t dst_grain);
/* Bytes of an image of `bits` bits: whole 64-bit words. */
size_t identity_image_len(uint64_t bits);

/* A resync to this side completed and everything before it is durable:
 * mark the replica consistent (unless a newer resync has started
 * meanwhile) and, given the source's generation, adopt it, clear
 * discard_local and the local bitmap.  handover (the primary demotes):
 * also record that this side may be promoted with nothing to resync.  0,
 * or -1 with status's last_error set. */
int identity_sync_done(struct secondary *s, const struct gen_ids *source,
                       bool consistent, bool handover);
/* `resolve --discard-local`: persist the choice.  0, or -1 with the reason
 * in err. */
int identity_discard_local(struct secondary *s, char *err, size_t errlen);

/* ---- snap.c: snapshots of the replica into the store ---- */
#define SNAP_MARK_TAG 0x534e4150ull  /* apply_op.tag of a snapshot MARK */
struct snapmgr;
struct json;
struct snap_info {
  uint64_t id;
  char name[256];
  uint64_t created_ns;
  uint64_t epoch;
  unsigned reason;              /* enum snap_reason */
  uint64_t size_bytes, stored_bytes;
  bool complete;
  bool deleting;                /* a delete is queued (not expired again) */
  uint64_t copied_blocks, total_blocks; /* while copying */
};
/* id: the snapshot's id, or 0 with err saying why it was not taken. */
typedef void (*snap_done_fn)(void *arg, uint64_t id, const char *err);
/* Opens --snapshot-store (if given) and starts the store thread; without
 * it the manager only passes apply I/O through.  0 or -errno with err. */
int snap_new(struct secondary *s, struct aio_ctx *aio, struct snapmgr **out,
             char *err, size_t errlen);
void snap_free(struct snapmgr *m);  /* copying snapshots are not kept */
/* The apply backend (opaque = the manager): copy-before-write in front of
 * replica_start. */
void snap_backend_start(void *opaque, struct apply *a, struct apply_op *op);
/* Take a snapshot at the next apply barrier; done runs when it is taken
 * (its copy goes on in the background).  0, or -1 with err. */
int snap_request(struct snapmgr *m, unsigned reason, const char *name,
                 uint64_t epoch, snap_done_fn done, void *arg, char *err,
                 size_t errlen);
int snap_delete(struct snapmgr *m, uint64_t id, char *err, size_t errlen);
void snap_replica_ready(struct snapmgr *m);  /* the replica was opened */
void snap_tick(struct snapmgr *m);           /* schedule, retries */
bool snap_enabled(const struct snapmgr *m);
bool snap_busy(const struct snapmgr *m);
/* Replica reads in flight (the copier's, copy-before-write's). */
bool snap_reading(const struct snapmgr *m);
void snap_status_text(const struct snapmgr *m, struct evbuffer *out);
void snap_status_json(const struct snapmgr *m, struct json *j);
/* Complete snapshots, then copying ones; *out malloc'd. */
size_t snap_list(const struct snapmgr *m, struct snap_info **out);
/* Serve a complete snapshot read-only over NBD on nbd ("unix:PATH" or
 * "HOST:PORT"); where gets the address (the real port for port 0). */
int snap_export(struct snapmgr *m, uint64_t id, const char *nbd, char *where,
                size_t wlen, char *err, size_t errlen);
int snap_unexport(struct snapmgr *m, uint64_t id, char *err, size_t errlen);
/* The changed ranges between two complete snapshots, computed by the store
 * thread: done(arg, text, err) with text NULL on failure. */
typedef void (*snap_diff_fn)(void *arg, const char *text, const char *err);
int snap_diff(struct snapmgr *m, uint64_t a, uint64_t b, bool json,
              snap_diff_fn done, void *arg, char *err, size_t errlen);

/* Restoring the primary.  The regions of `grain` bytes where snapshots
 * from and to differ (a bitmap image, identity_image_len bytes), computed
 * by the store thread once `to` is complete: done(arg, image, len, err)
 * with image NULL on failure (the image belongs to the caller only during
 * the call).  0, or -1 with err. */
typedef void (*snap_plan_fn)(void *arg, const uint8_t *image, size_t len,
                             const char *err);
int snap_plan(struct snapmgr *m, uint64_t from, uint64_t to, uint64_t size,
              uint32_t grain, snap_plan_fn done, void *arg, char *err,
              size_t errlen);
/* Read [off, off+len) of complete snapshot id (blocking, on the loop); the
 * snapshot stays open and retention and deletes wait until
 * snap_fetch_end.  0, or -1 with err. */
int snap_fetch(struct snapmgr *m, uint64_t id, uint64_t off, uint32_t len,
               void *buf, char *err, size_t errlen);
void snap_fetch_end(struct snapmgr *m);

/* ---- snapjournal.c: snapshots being copied, across a crash ---- */
struct snapjournal;
struct snapjournal_job {
  uint64_t id;
  struct snap_meta meta;
  bool full, rescan;
  uint64_t size;                /* the replica's, at the snapshot */
  uint64_t *set_words;          /* the blocks it holds (bitmap words) */
  size_t n_words;
};
int snapjournal_open(const char *meta, struct snapjournal **out, char *err,
                     size_t errlen);
void snapjournal_close(struct snapjournal *j);
/* Replace the list (atomically, durably). */
int snapjournal_save_jobs(struct snapjournal *j,
                          const struct snapjournal_job *v, size_t n,
                          char *err, size_t errlen);
/* The saved list (none: 0 jobs); *out for snapjournal_free_jobs. */
int snapjournal_load_jobs(struct snapjournal *j, struct snapjournal_job **out,
                          size_t *n, char *err, size_t errlen);
void snapjournal_free_jobs(struct snapjournal_job *v, size_t n);
/* Old contents of n blocks (data: n * 4096 bytes), durable on return. */
int snapjournal_append(struct snapjournal *j, const uint64_t *ids,
                       const uint64_t *blocks, const uint8_t *data, size_t n,
                       char *err, size_t errlen);
typedef void (*snapjournal_fn)(void *arg, uint64_t id, uint64_t block,
                               const uint8_t *data);
/* Every intact record in order; returns how many. */
int snapjournal_replay(struct snapjournal *j, snapjournal_fn fn, void *arg);
int snapjournal_reset(struct snapjournal *j);  /* nothing is copying */

/* ---- snapctl.c: `snapshot ...` control commands ---- */
int snapctl_command(struct secondary *s, int argc, char **argv,
                    struct evbuffer *out);

/* ---- link.c: one connection from a primary ---- */
enum link_state {
  LINK_WAIT_HELLO,      /* verified; the first frame must be HELLO */
  LINK_REPLICATING,     /* applying WRITE/ZERO/FLUSH, sending ACKs */
  LINK_CLOSING,         /* flushing a last frame, then freed */
};

/* Takes ownership of ts (verified by the connector; cn: the primary's
 * name) and makes it the active link, replacing the old one. */
struct link *link_new(struct secondary *s, struct tls_stream *ts,
                      const char *peer_addr, const char *cn);
/* Log reason (warn if error, else info), send nothing more, free soon. */
void link_close(struct link *l, bool error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void link_free(struct link *l);
/* Send an ERROR frame (after the ACKs due), then close. */
void link_refuse(struct link *l, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queue a frame; payload (plen bytes) follows the message.  -1 if it could
 * not be queued (logged). */
int link_send_frame(struct link *l, enum frame_type type,
                    const ProtobufCMessage *msg, const void *payload,
                    uint32_t plen);
/* HELLO answered: replicate (refused: close on any data frame). */
void link_hello_done(struct link *l, uint64_t size_bytes, bool consistent,
                     bool refused);
enum link_state link_state(const struct link *l);
const char *link_state_name(enum link_state st);
const char *link_peer_cn(const struct link *l);
const char *link_peer_addr(const struct link *l);
/* Periodic, for every link: peer timeouts, closing links that do not
 * drain. */
void link_tick_all(struct secondary *s);
/* Shutdown: drop every connection at once. */
void link_free_all(struct secondary *s);
/* Apply events, forwarded by the agent to the active link. */
void link_apply_done(struct link *l, const struct apply_op *op);
void link_apply_failed(struct link *l, int err, const char *msg);
/* Apply became idle (old I/O finished): frames may be read again. */
void link_kick(struct link *l);

/* ---- hello.c: the handshake of a link ---- */
/* HELLO from the verified primary on l: check it, decide from the
 * generations, answer.  0, or -1 once the link is closing. */
int hello_handle(struct secondary *s, struct link *l, const Duplex__Hello *h);

/* ---- status.c: control socket commands ---- */
int status_control(void *opaque, int argc, char **argv, struct evbuffer *out);
const char *status_sync_name(enum sec_sync s);
/* Log an error and keep it as status's last_error. */
void status_error(struct secondary *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
