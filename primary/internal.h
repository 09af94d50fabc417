/* duplex-primary: private interfaces, one section per .c file. */
#ifndef DUPLEX_PRIMARY_INTERNAL_H
#define DUPLEX_PRIMARY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "aio.h"
#include "bitmap.h"
#include "blockdev.h"
#include "frame.h"
#include "gen.h"
#include "lock.h"
#include "meta.h"
#include "tls.h"
#include "util.h"

#define NBD_MAX_ENDPOINTS 4
#define DEFAULT_ASYNC_BUFFER (64ull * 1024 * 1024)
#define RESYNC_CHUNK (1024u * 1024)

enum repl_mode { REPL_SYNC = 1, REPL_ASYNC = 2 };
enum capture_mode { CAPTURE_NBD = 0, CAPTURE_TAIL = 1 };

/* ---- config.c: command line, no I/O ---- */
struct config {
  const char *volume;
  const char *meta;
  struct endpoint nbd[NBD_MAX_ENDPOINTS];
  int n_nbd;
  struct endpoint peer;         /* --peer (dial), or --listen */
  bool listen;                  /* --listen: the secondary dials us */
  enum repl_mode mode;
  uint64_t async_buffer;
  unsigned peer_timeout_ms;
  unsigned connect_interval_ms; /* longest wait between connect attempts */
  bool pull_ahead;              /* --on-congestion pull-ahead */
  bool resync_checksums;        /* --resync-checksums */
  enum capture_mode capture;    /* --capture */
  unsigned trace_buffer_pages;  /* --trace-buffer, per CPU */
  const char *freeze;           /* --freeze MOUNTPOINT (--snapshot-every) */
  unsigned freeze_timeout_ms;   /* --freeze-timeout */
  unsigned snapshot_every_ms;   /* --snapshot-every, 0: none */
  const char *pre_hook, *post_hook; /* around each consistency point */
  uint32_t bitmap_grain;
  struct tls_config tls;
  const char *control;
  const char *pidfile;
  bool foreground;
  bool verbose;
};
/* 0: ok; 1: --help/--version printed to out; -1: error, one line in err. */
int config_parse(int argc, char **argv, struct config *cfg, char *err,
                 size_t errlen);
void config_usage(FILE *out);

/* ---- main.c: the agent ---- */
struct nbd_server;
struct repl;
struct resync;
struct verify;
struct lockset;
struct tail;

struct stats {
  uint64_t writes_acked;        /* client writes/zeroes/trims answered ok */
  uint64_t bytes_written;       /* by clients */
  uint64_t bytes_read;
  uint64_t requests;
  uint64_t pull_ahead_events;
};

struct primary {
  struct event_base *base;
  struct config cfg;
  struct bdev vol;
  struct meta *meta;
  struct aio_ctx *aio;
  struct bitmap *oos;           /* blocks the secondary does not have */
  struct lockset *locks;
  struct al *al;
  struct gen_ids gen;           /* this side's generation identifiers */
  bool need_new_gen;            /* next unreplicated write starts one */
  bool ahead;                   /* pulled ahead: writes go to the bitmap */
  bool crash_recovery;          /* unclean stop: next resync compares
                                   checksums (logged regions are only
                                   possibly different) */
  struct repl *repl;
  struct resync *resync;
  struct verify *verify;
  struct nbd_server *nbd[NBD_MAX_ENDPOINTS];
  int n_nbd;
  struct stats stats;
  TAILQ_HEAD(, req) waiting;    /* writes waiting for async buffer space */
  uint64_t reqs_active;         /* submitted to vol.c, not yet answered */
  struct demote *demote;        /* `duplexctl demote` in progress, or NULL */
  struct restore *restore;      /* `duplexctl restore` (running or the
                                   last one), or NULL */
  struct control *control;      /* duplexctl's socket, or NULL */
  struct tail *tail;            /* --capture tail, or NULL */
  bool stopping;
  char meta_error[512];         /* why the last superblock write failed;
                                   "" once one succeeds again */
  uint64_t meta_write_errors;   /* failed superblock writes since start */
};

/* Stop the agent as SIGTERM does (clean stop, exit 0). */
void primary_stop(struct primary *p);

/* ---- generation.c: the data generation on disk ---- */
/* A random non-zero identifier (a volume's first generation). */
uint64_t primary_random_id(void);
/* The secondary adopted our generation (an in-sync SYNC_STATE was
 * acknowledged): the bitmap no longer tracks a divergence. */
void primary_in_sync(struct primary *p);
/* Start a new data generation (first change the peer does not get) and
 * persist it (written and synced) before that change is made.  0, or -1
 * (logged, in meta_error; need_new_gen and p->gen unchanged): the change
 * must not be made. */
int primary_new_generation(struct primary *p);
/* Persist p->gen (a resync finished); a failure is logged and shown in
 * status, p->gen is kept for the next superblock write. */
void primary_save_generation(struct primary *p);

/* ---- vol.c: the request engine (local I/O + replication) ---- */
enum req_type { REQ_READ, REQ_WRITE, REQ_FLUSH, REQ_TRIM, REQ_ZERO };

struct req;
/* err: 0 or a positive errno for the client's reply.  Called exactly once,
 * never from inside vol_submit. */
typedef void (*req_done_fn)(struct req *r, int err);

struct req {
  /* filled by the caller */
  enum req_type type;
  uint64_t offset;
  uint32_t length;
  bool fua;
  bool no_hole;                 /* WRITE_ZEROES: do not deallocate */
  char *buf;                    /* READ: destination; WRITE: data.  From
                                   util_alloc_aligned, freed by vol_req_free */
  req_done_fn done;
  void *opaque;
  uint64_t cookie;              /* caller's (NBD handle) */
  /* engine private */
  struct primary *p;
  int err;
  int pending;                  /* completions still outstanding */
  int edges;                    /* read-modify-write reads outstanding */
  uint64_t lock_start, lock_end;
  char *bounce;                 /* aligned buffer for unaligned requests */
  uint64_t epoch;
  bool sent;                    /* handed to the replication link */
  bool locked;
  bool al_held;                 /* holds activity-log references */
  bool restore_persist;         /* took restore grains over (--instant) */
  struct aio_op aio;
  struct aio_op aio2;
  void *lock;                   /* struct range_lock * */
  void *rop;                    /* struct repl_op * */
  struct event *defer;
  unsigned out_refs;            /* the link still references buf/bounce */
  bool freed;                   /* vol_req_free waits for out_refs */
  TAILQ_ENTRY(req) wq;
};

struct req *vol_req_new(struct primary *p);
/* Frees r->buf too; later if the link still holds a reference to it. */
void vol_req_free(struct req *r);
/* The caller validated offset/length against the volume size. */
void vol_submit(struct req *r);
/* Buffer space or a lock became free: retry waiting requests. */
void vol_kick(struct primary *p);


/* ---- al.c: activity log (write intent of hot extents) ---- */
#define AL_EXTENT_SHIFT 22      /* 4 MiB */
struct al;
struct al *al_new(struct primary *p, unsigned shift);
void al_free(struct al *al);
/* Startup: mark the extents of the on-disk log out of sync, persist the
 * bitmap, start an empty log.  0 or -errno. */
int al_recover(struct al *al);
/* Cover [off, off+len) by the on-disk log before writing it (synchronous
 * log write when an extent is new).  0 or -errno; pair with al_end. */
int al_begin(struct al *al, uint64_t off, uint64_t len);
void al_end(struct al *al, uint64_t off, uint64_t len);
void al_tick(struct al *al);             /* retire idle extents */
int al_flush_bitmap(struct al *al);      /* dirty bitmap pages to disk */
/* The same without the sync: in the file (an agent crash keeps them), on
 * disk at the next al_flush_bitmap (the once-a-second tick). */
int al_write_bitmap(struct al *al);
void al_shutdown(struct al *al);         /* clean stop: empty log */
unsigned al_active(const struct al *al);

/* ---- epoch.c: epoch bookkeeping of the replication stream, no I/O ---- */
#define EPOCH_MAX_OPS 1024
struct epoch_range {
  uint64_t start, end;
};
struct epochs {
  uint64_t current;
  struct epoch_range *ranges;   /* ops in the current epoch */
  size_t n, cap;
};
void epoch_init(struct epochs *e);
void epoch_fini(struct epochs *e);
/* The epoch an op on [off, off+len) goes into (a new one if it overlaps). */
uint64_t epoch_admit(struct epochs *e, uint64_t off, uint64_t len);
/* An op of `epoch` was answered to a client. */
void epoch_close(struct epochs *e, uint64_t epoch);
/* Unconditionally start a new epoch (flush, reconnect). */
void epoch_advance(struct epochs *e);

/* ---- repl.c: the link to the secondary ---- */
enum repl_state {
  REPL_IDLE,        /* no link: the connector dials or listens */
  REPL_HELLO,       /* Hello sent, waiting for HelloReply */
  REPL_BITMAP,      /* receiving the secondary's bitmap (split brain
                       resolved by discarding its changes) */
  REPL_CONNECTED,   /* replicating */
};

struct repl_op;
/* ok=false: the link dropped before the secondary acknowledged it. */
typedef void (*repl_acked_fn)(struct repl_op *op, bool ok);

struct repl_op {
  uint64_t seq;
  uint64_t epoch;
  uint64_t bytes;               /* counted against the async buffer */
  repl_acked_fn acked;
  void *opaque;
  /* VERIFY ops: the answer, valid only during the acked callback */
  const Duplex__VerifyResult *verify_result;
  /* SNAPSHOT ops: the answer, valid only during the acked callback */
  bool snapshot_wanted;
  const Duplex__SnapshotDone *snapshot_done;
  /* FETCH ops: the answer and its bytes, valid only during the acked
   * callback */
  bool fetch_wanted;
  const Duplex__FetchData *fetch_data;
  const uint8_t *fetch_payload;
  /* RESTORE_PLAN ops: each piece of the answer (the op is acked after the
   * last one, or with ok=false if the link drops first) */
  void (*plan_part)(struct repl_op *op, const Duplex__RestorePlanPart *m,
                    const uint8_t *payload);
};

/* What the agent does when the link changes; repl.c knows nothing of the
 * modules that send on it (resync, verify, the request engine, restore). */
struct repl_events {
  /* Connected and agreed: resync what differs (full: everything). */
  void (*connected)(void *arg, bool full);
  /* A connected link dropped (before its pending ops fail). */
  void (*lost)(void *arg);
  /* Acknowledgements arrived or ops failed: room to send more. */
  void (*progress)(void *arg);
  void *arg;
};
struct repl *repl_new(struct primary *p, const struct repl_events *ev,
                      char *err, size_t errlen);
void repl_free(struct repl *r);
void repl_start(struct repl *r);
/* Close the link (the agent is stopping): pending ops fail. */
void repl_shutdown(struct repl *r);
bool repl_connected(const struct repl *r);
/* Ops are sent in call order.  Each returns 0, or -1 if not connected (then
 * acked and ref_done are never called).  A large write's data is not
 * copied: ref_done(data, len, ref_arg) runs once the bytes are encrypted or
 * dropped, and data must stay valid until then; a small one is copied and
 * ref_done runs before repl_send_write_ref returns (take the reference
 * before calling). */
typedef void (*repl_ref_done_fn)(const void *data, size_t len, void *arg);
int repl_send_write_ref(struct repl *r, struct repl_op *op, uint64_t off,
                        uint32_t len, const void *data, uint32_t flags,
                        repl_ref_done_fn ref_done, void *ref_arg);
int repl_send_zero(struct repl *r, struct repl_op *op, uint64_t off,
                   uint64_t len, uint32_t flags);
int repl_send_flush(struct repl *r, struct repl_op *op);
void repl_send_sync_state(struct repl *r, bool in_sync, uint64_t total,
                          uint64_t done, uint64_t oos);
/* A write sent in epoch e was answered to a client: close e. */
void repl_close_epoch(struct repl *r, uint64_t epoch);
uint64_t repl_inflight_bytes(const struct repl *r);
const char *repl_state_name(enum repl_state s);
/* For status and messages: the state, or while IDLE the connector's
 * ("dialing", "waiting", "tls-handshake", "listening"). */
const char *repl_link_state(const struct repl *r);
/* --listen: the port the secondary dials (useful with port 0), else -1. */
int repl_listen_port(const struct repl *r);
/* Ask the secondary for block hashes of [off, off+len); op->acked runs
 * with op->verify_result set when they arrive.  0 or -1 (not connected). */
int repl_send_verify(struct repl *r, struct repl_op *op, uint64_t off,
                     uint32_t len);
/* Ask the secondary for a snapshot at this point of the stream; op->acked
 * runs with op->snapshot_done set when it answers.  0 or -1 (not
 * connected). */
int repl_send_snapshot(struct repl *r, struct repl_op *op, const char *name,
                       unsigned reason);
/* Restore: ask for [off, off+len) of snapshot `snapshot` (0: of the
 * replica); op->acked runs with op->fetch_data (and its payload) set.  A
 * snapshot's blocks are written to the replica at this point of the
 * stream too, so the range must not be written meanwhile (hold its range
 * lock until the answer).  0 or -1 (not connected). */
int repl_send_fetch(struct repl *r, struct repl_op *op, uint64_t off,
                    uint32_t len, uint64_t snapshot);
/* Restore: the regions where snapshots from and to differ (op->plan_part
 * gets the pieces).  0 or -1 (not connected). */
int repl_send_restore_plan(struct repl *r, struct repl_op *op, uint64_t from,
                           uint64_t to);
/* A restore runs: the secondary shows `restoring` and its progress (and
 * is inconsistent until the next in-sync SYNC_STATE). */
void repl_send_restore_state(struct repl *r, uint64_t source, uint64_t total,
                             uint64_t done);
/* Resync finished: tell the secondary it holds our generation; `op` is
 * acknowledged once it has adopted it durably.  handover (demote): the
 * secondary also records that it may be promoted. */
int repl_send_sync_done(struct repl *r, struct repl_op *op, bool handover);
bool repl_split_brain(const struct repl *r);
const char *repl_decision(const struct repl *r); /* NULL before a handshake */
/* Why the link last failed, or NULL. */
const char *repl_last_error(const struct repl *r);
struct repl_counters {
  uint64_t bytes_sent, bytes_received;
  uint64_t ops_sent, ops_acked;
  uint64_t connects;
};
void repl_get_counters(const struct repl *r, struct repl_counters *c);

/* ---- resync.c: initial sync / resync of out-of-sync blocks ----
 *
 * The primary's shell around the block sender (common/sender.h): the
 * blocks marked in a bitmap, read from the volume under range locks and
 * sent over the link; what it needs is given here, not taken from the
 * agent. */
struct resync_env {
  struct aio_ctx *aio;
  struct bdev *vol;             /* read from */
  struct bitmap *oos;           /* what to send (cleared as it goes) */
  struct lockset *locks;        /* against concurrent writes to a range */
  struct repl *repl;            /* the link */
  bool checksums;               /* --resync-checksums: compare first */
  bool quiet;                   /* tail capture: a run per burst of
                                   changes, logged at debug level */
  uint64_t window;              /* bytes in flight at most (0: default) */
  /* The last stop was unclean: compare hashes of the marked regions. */
  bool (*crash_recovery)(void *arg);
  /* The secondary adopted our generation (an in-sync SYNC_STATE was
   * acknowledged): the agent finalises it. */
  void (*in_sync)(void *arg);
  /* Something else reports in-sync (a restore runs): do not. */
  bool (*hold_in_sync)(void *arg);
  /* Or NULL: compare [off, off+len) with the secondary's hashes first? */
  bool (*compare_range)(void *arg, uint64_t off, uint64_t len);
  void *arg;
};
struct resync *resync_new(const struct resync_env *env);
void resync_free(struct resync *rs);
/* The link is up: sync everything marked in p->oos (full=true marks all). */
void resync_begin(struct resync *rs, bool full);
/* The link dropped: forget in-flight chunks (their bits stay set). */
void resync_abort(struct resync *rs);
void resync_kick(struct resync *rs);
/* Bits were added while connected: resync them (start one if idle). */
void resync_ensure(struct resync *rs);
bool resync_active(const struct resync *rs);
/* A restore starts: the secondary no longer holds this side's data. */
void resync_unconfirm(struct resync *rs);
/* The secondary acknowledged an in-sync SYNC_STATE carrying our
 * generation (sent by the resync, or by a restore that finished). */
void resync_in_sync_acked(struct resync *rs);
/* Nothing is marked and no run is active: tell the secondary now that it
 * holds our generation (a consistency point of tail capture; the resync
 * itself does so when a run completes unless held).  0, or -1 if not
 * connected. */
int resync_send_in_sync(struct resync *rs);
struct resync_counters {
  uint64_t total_bytes, done_bytes;
  uint64_t data_bytes_sent, zero_bytes_sent;
  uint64_t started_ms, finished_ms;
  bool full;
  bool ever_completed;
  bool in_sync_confirmed;       /* the secondary adopted our generation */
  bool crash_recovery;          /* started after an unclean stop */
  uint64_t checksum_same_bytes; /* --resync-checksums: equal, not sent */
  uint64_t compared_sent_bytes; /* sent after a comparison */
};
void resync_get_counters(const struct resync *rs, struct resync_counters *c);

/* ---- verify.c: online verify ---- */
enum verify_state { VERIFY_IDLE, VERIFY_RUNNING, VERIFY_DONE, VERIFY_ABORTED };
struct verify;
struct json;
struct verify *verify_new(struct primary *p);
void verify_free(struct verify *v);
int verify_start(struct verify *v, bool repair, char *err, size_t errlen);
void verify_link_lost(struct verify *v);
enum verify_state verify_state(const struct verify *v);
const char *verify_state_name(enum verify_state s);
void verify_status_json(const struct verify *v, struct json *j);

/* (The NBD wire format, no I/O, is common/nbd-proto.h.) */

/* ---- nbd-server.c: listeners and client connections ---- */
int nbd_server_new(struct primary *p, const struct endpoint *ep,
                   struct nbd_server **out, char *err, size_t errlen);
void nbd_server_free(struct nbd_server *s);  /* closes clients */
unsigned nbd_server_clients(const struct nbd_server *s);
/* Planned switchover: stop accepting; each client's requests in flight
 * are answered, then its connection is closed (nbd_server_clients drops
 * to 0). */
void nbd_server_quiesce(struct nbd_server *s);

/* ---- snapctl.c: `snapshot create` (the secondary takes it) ---- */
int snapctl_command(struct primary *p, int argc, char **argv,
                    struct evbuffer *out);

/* ---- demote.c: planned switchover (`duplexctl demote`) ---- */
struct demote;
/* The control command: CONTROL_LATER (answered once handed over or at
 * its --timeout), or -1 with the reason in out. */
int demote_command(struct primary *p, int argc, char **argv,
                   struct evbuffer *out);
void demote_status_json(const struct primary *p, struct json *j);
void demote_status_text(const struct primary *p, struct evbuffer *out);
void demote_free(struct demote *d);

/* ---- restore-state.c: the record of a restore in progress ---- */
#define RESTORE_HDR_LEN 4096u
#define RESTORE_F_REPLICA 1u    /* from the replica (else a snapshot) */
#define RESTORE_F_PLANNED 2u    /* the bitmap holds the plan (else: all) */
#define RESTORE_F_INSTANT 4u    /* NBD serves during it (--instant) */
struct restore_hdr {
  uint64_t source;              /* snapshot id (0: the replica) */
  uint64_t safety;              /* the before-restore snapshot, 0: none */
  uint64_t size;                /* volume bytes */
  uint32_t grain;               /* bytes per bit */
  uint32_t flags;               /* RESTORE_F_* */
  uint64_t started_wall_ms;
  uint64_t rate;                /* --restore-rate bytes/s, 0: no cap */
};
/* No I/O: the 4 KiB header. */
void restore_hdr_encode(const struct restore_hdr *h,
                        uint8_t out[RESTORE_HDR_LEN]);
int restore_hdr_decode(const uint8_t in[RESTORE_HDR_LEN],
                       struct restore_hdr *h, char *err, size_t errlen);
/* The file: created whole and durably (0 or -errno, *fd open), opened (0,
 * 1 if there is none, -1 with err), bitmap pages written in place (the
 * caller syncs), removed durably. */
int restore_file_create(const char *path, const struct restore_hdr *h,
                        const uint64_t *words, size_t nwords, int *fd);
int restore_file_open(const char *path, struct restore_hdr *h, int *fd,
                      char *err, size_t errlen);
int restore_file_read_words(int fd, uint64_t *words, size_t nwords);
int restore_file_write_header(int fd, const struct restore_hdr *h);
int restore_file_write_pages(int fd, const uint64_t *words, size_t nwords,
                             uint64_t first, uint64_t n);
int restore_file_remove(const char *path, int fd);

/* ---- restore.c (+ restore-plan.c, restore-fetch.c, restore-internal.h):
 * `duplexctl restore` (from a snapshot or the replica) ---- */
struct restore;
/* The control command: CONTROL_LATER (answered once the restore started,
 * or why not), or -1 with the reason in out. */
int restore_command(struct primary *p, int argc, char **argv,
                    struct evbuffer *out);
/* Start-up: a restore recorded beside the metadata goes on.  0 (none, or
 * resumed), or -1 with err. */
int restore_resume(struct primary *p, char *err, size_t errlen);
void restore_free(struct primary *p);
/* The volume is being restored (until the replica took its generation). */
bool restore_running(const struct primary *p);
/* NBD refuses new clients. */
bool restore_blocks_clients(const struct primary *p);
/* --instant: clients are served during the restore (vol.c asks below). */
bool restore_instant(const struct primary *p);
/* A write-like request's range lock covers whole restore grains. */
void restore_lock_range(const struct primary *p, uint64_t *start,
                        uint64_t *end);
/* A read of regions not restored yet waits for them to be fetched, then
 * goes on with cont(r): true if it waits. */
bool restore_hold_read(struct primary *p, struct req *r,
                       void (*cont)(struct req *r));
/* Under r's range lock: the grains it covers whole become the client's
 * (r->restore_persist), the ones it covers partly are fetched first (and
 * before the safety snapshot is taken it waits).  True: r continues
 * with cont(r) later. */
bool restore_hold_write(struct primary *p, struct req *r,
                        void (*cont)(struct req *r));
/* Before answering a request with restore_persist: what it took over is
 * on disk.  0 or -errno. */
int restore_persist(struct primary *p);
/* restore_running: bytes still to restore and percent done. */
void restore_status(const struct primary *p, uint64_t *remaining,
                    double *percent);
void restore_status_json(const struct primary *p, struct json *j);
void restore_status_text(const struct primary *p, struct evbuffer *out);

/* ---- status.c: control socket commands ---- */
int status_control(void *opaque, int argc, char **argv, struct evbuffer *out);

/* ---- tail capture (--capture tail; DESIGN.md "Tail capture"): replicate
 * a block device that applications write directly, learning which blocks
 * change from the block layer's tracepoints ---- */

/* ---- trace-decode.c: tracepoint records to changed ranges, no I/O ----
 *
 * The layout of block:block_rq_complete differs between kernels (fields
 * were added), so it is read from the event's format text (tracefs
 * events/block/block_rq_complete/format) with libtraceevent; a raw record
 * (perf's PERF_SAMPLE_RAW, the same bytes as the ftrace ring's) is then
 * decoded with the offsets found there. */
struct trace_field {
  unsigned off, size;
};
struct trace_layout {
  struct trace_field dev, sector, nr_sector, error, rwbs;
  unsigned min_len;             /* a record shorter than this is malformed */
};

/* 0, or -1 with the reason in err (not the block_rq_complete format, a
 * field missing or of an unexpected size). */
int trace_layout_parse(const char *format, size_t len,
                       struct trace_layout *l, char *err, size_t errlen);

enum trace_kind {
  TRACE_NONE,                   /* a read, or nothing that changes data */
  TRACE_WRITE,                  /* a write: [off, off+len) changed */
  TRACE_DISCARD,                /* discard or secure erase */
  TRACE_OTHER,                  /* another data-changing op with a range
                                   (write-zeroes shows as 'N') */
  TRACE_FLUSH,                  /* a flush without data */
};

struct trace_change {
  enum trace_kind kind;
  uint32_t dev;                 /* the kernel's encoding: major << 20 | minor */
  uint64_t off, len;            /* bytes */
  int error;                    /* the request's error (0: success) */
  bool preflush;                /* the write was preceded by a flush */
  bool fua;
};

/* Decode one raw record.  0, or -1 if it is malformed (too short, a range
 * past 2^64 bytes).  A failed request still reports its range: the data may
 * have changed partly. */
int trace_decode(const struct trace_layout *l, const void *raw, size_t len,
                 struct trace_change *out);

/* The kernel's dev_t of a tracepoint record for a device number. */
uint32_t trace_kdev(unsigned major, unsigned minor);

/* The sectors a device has completed writing, write-zeroes and discards
 * included, from the text of its sysfs stat file (Documentation/block/
 * stat.rst: field 7 write sectors, field 14 discard sectors where the
 * kernel has it): the block layer adds them right after the
 * block_rq_complete tracepoint fired for the same bytes, so they check
 * that no record went missing.  -1 if the text has fewer than 7 numbers. */
int trace_stat_sectors(const char *text, size_t len, uint64_t *sectors);

/* perf ring buffers (perf_event_open's mmap, sample_type PERF_SAMPLE_RAW):
 * positions are free-running byte counts like data_head and data_tail.
 * Takes the record at *tail (one that wraps is copied into scratch) and
 * advances *tail past it: 1 with *rec, *rec_len (header included), 0 when
 * *tail == head, -1 when the ring is inconsistent (a record shorter than
 * its header, past head, or larger than scratch): the reader must drop the
 * whole ring and count it as lost. */
int trace_ring_next(const uint8_t *data, uint64_t size, uint64_t head,
                    uint64_t *tail, uint8_t *scratch, size_t scratch_len,
                    const uint8_t **rec, size_t *rec_len);

enum trace_rec {
  TRACE_REC_CHANGE,             /* a sample: *c is set */
  TRACE_REC_LOST,               /* records were lost: *lost of them */
  TRACE_REC_OTHER,              /* nothing for us */
  TRACE_REC_BAD,                /* a sample that does not decode */
};
/* One record of a perf ring. */
enum trace_rec trace_perf_record(const struct trace_layout *l,
                                 const uint8_t *rec, size_t len,
                                 struct trace_change *c, uint64_t *lost);

/* ---- trace-perf.c: change capture from the block tracepoints ---- */
struct trace_device {
  unsigned major, minor;        /* the device tailed */
  unsigned disk_major, disk_minor; /* its disk (itself, or a partition's) */
  uint64_t start;               /* bytes: where it starts on the disk */
  uint64_t size;                /* bytes */
};
/* The device behind path: a block device, request-based; 0 or -1 with a
 * message saying what to do instead. */
int trace_device_resolve(const char *path, struct trace_device *d,
                         char *err, size_t errlen);

struct trace_capture_config {
  const char *path;             /* for messages */
  struct trace_device dev;
  unsigned ring_pages;          /* per CPU, a power of two */
  unsigned poll_ms;             /* drain at least this often */
};
struct trace_capture_events {
  /* A write, discard or write-zeroes completed on [off, off+len) of the
   * device (bytes from its start). */
  void (*changed)(void *arg, uint64_t off, uint64_t len);
  /* Some change is unknown: records were lost (overrun: the ring was full,
   * or a record did not decode), or the kernel's I/O statistics count
   * sectors written that no record reported (untraced: the kernel can drop
   * a tracepoint's perf record without saying so). */
  void (*lost)(void *arg, bool untraced);
  /* The records read so far were delivered. */
  void (*batch_done)(void *arg);
  void *arg;
};
struct trace_capture_counters {
  uint64_t records;             /* decoded, any device */
  uint64_t changes, bytes_changed; /* of this device's volume */
  uint64_t flushes;
  uint64_t lost;                /* records lost (overruns, bad records) */
  uint64_t bad;
  uint64_t drains;
  /* Sectors the device's statistics counted that no record reported,
   * and how often that was found; accounting false when they cannot be
   * read (no stat file, queue/iostats 0). */
  uint64_t untraced_sectors, untraced_events;
  bool accounting;
};
struct trace_capture;
/* Attach to the tracepoint on every CPU (the rings are drained on the
 * loop).  NULL with the reason in err. */
struct trace_capture *trace_capture_open(struct event_base *base,
                                         const struct trace_capture_config *cfg,
                                         const struct trace_capture_events *ev,
                                         char *err, size_t errlen);
/* Deliver every record in the rings now (a consistency point: after
 * FIFREEZE returned, every write before it is in the rings). */
void trace_capture_drain(struct trace_capture *tc);
void trace_capture_close(struct trace_capture *tc);
void trace_capture_get_counters(const struct trace_capture *tc,
                                struct trace_capture_counters *c);

/* ---- point.c: consistency points, the state machine (no I/O) ----
 *
 * The driver (tail.c) performs each action and reports its outcome with
 * point_event, which returns the next action. */
enum point_state {
  POINT_IDLE, POINT_PRE_HOOK, POINT_FREEZING, POINT_DRAINING, POINT_MARKING,
  POINT_THAWING, POINT_POST_HOOK, POINT_DONE, POINT_FAILED,
};
enum point_action {
  POINT_ACT_NONE,               /* wait for the outcome of the last one */
  POINT_ACT_PRE_HOOK,           /* run --pre-hook */
  POINT_ACT_FREEZE,             /* FIFREEZE the mount point */
  POINT_ACT_DRAIN,              /* drain the trace, wait until every
                                   captured change is on the secondary */
  POINT_ACT_MARK,               /* place the snapshot marker */
  POINT_ACT_THAW,               /* FITHAW */
  POINT_ACT_POST_HOOK,          /* run --post-hook */
  POINT_ACT_FINISH,             /* report the result (state DONE/FAILED) */
};
enum point_event {
  POINT_EV_PRE_HOOK_DONE, POINT_EV_FROZEN, POINT_EV_DRAINED,
  POINT_EV_MARKED, POINT_EV_THAWED, POINT_EV_POST_HOOK_DONE,
  POINT_EV_ABORT,               /* time limit, link lost, agent stopping */
};
struct point_config {
  bool freeze;                  /* a mount point to freeze */
  const char *pre_hook, *post_hook; /* or NULL */
};
struct point {
  struct point_config cfg;
  enum point_state state;
  enum point_action action;     /* the last one returned */
  bool pre_hook_ran;            /* succeeded: its post-hook must run */
  bool frozen;                  /* frozen and not thawed */
  bool thaw_sent, thaw_failed, post_hook_sent;
  bool marked;                  /* the snapshot was taken */
  bool failed;
  char error[256];              /* the first failure */
};
/* Begin a point: pt->action is the first action. */
void point_start(struct point *pt, const struct point_config *cfg);
/* An outcome (ok, or !ok with why) of the current step, or an abort;
 * events that do not belong to the current state are ignored.  Returns
 * the next action. */
enum point_action point_event(struct point *pt, enum point_event ev, bool ok,
                              const char *why);
bool point_finished(const struct point *pt);
const char *point_state_name(enum point_state s);

/* ---- freeze.c: FIFREEZE held by a watchdog process ---- */
struct freezer;
/* what: 'F' frozen, 'T' thawed as asked (or here, the watchdog having
 * died), 'X' thawed by the watchdog at its time limit; err: 0 or errno. */
typedef void (*freezer_fn)(void *arg, char what, int err);
/* Fork the watchdog, which freezes path and reports 'F' (err EXDEV: path
 * is not on the device `expect`, nothing frozen).  NULL with err if it
 * could not be started. */
struct freezer *freezer_start(struct event_base *base, const char *path,
                              dev_t expect, unsigned timeout_ms,
                              freezer_fn fn, void *arg, char *err,
                              size_t errlen);
/* Ask for the thaw ('T' follows; nothing if thawed already). */
void freezer_thaw(struct freezer *f);
bool freezer_thawed(const struct freezer *f);
/* Close the watchdog's socket (it thaws if still frozen) and reap it. */
void freezer_free(struct freezer *f);

/* ---- hook.c: --pre-hook / --post-hook ---- */
#define HOOK_TIMED_OUT (-1000)
struct hook;
/* status: the exit code, -SIGNAL if killed, HOOK_TIMED_OUT; output: what
 * it printed (the first 1 KiB). */
typedef void (*hook_fn)(void *arg, int status, const char *output);
/* The environment gets DUPLEX_POINT=point (the snapshot's name). */
struct hook *hook_run(struct event_base *base, const char *cmd,
                      const char *point, unsigned timeout_ms, hook_fn fn,
                      void *arg, char *err, size_t errlen);
/* Kill it (its process group) if it still runs, and free it. */
void hook_free(struct hook *h);

/* ---- tail.c: tail capture in the agent ---- */
struct json;
/* --capture tail: attach the trace, mark the whole device for comparison.
 * 0 or -1 with the reason. */
int tail_start(struct primary *p, char *err, size_t errlen);
/* Detach (the agent stops); a point in progress is abandoned, thawed. */
void tail_stop(struct primary *p);
void tail_free(struct primary *p);
/* The resync's questions in tail mode: a run begins (its accounting);
 * compare this range first (what the trace missed)?  (The in-sync report
 * is always held back: only consistency points send it.) */
void tail_run_begins(struct primary *p);
bool tail_compare_range(struct primary *p, uint64_t off, uint64_t len);
/* The secondary acknowledged an in-sync report. */
void tail_in_sync(struct primary *p);
/* Acknowledgements arrived: a draining point may go on. */
void tail_progress(struct primary *p);
void tail_link_lost(struct primary *p);
/* duplexctl snapshot create [--freeze MOUNTPOINT] in tail mode. */
int tail_snapshot_command(struct primary *p, const char *mountpoint,
                          const char *name, bool json, struct evbuffer *out);
const char *tail_capture_state(const struct primary *p);
void tail_status_json(struct primary *p, struct json *j);
void tail_status_text(struct primary *p, struct evbuffer *out);

#endif
