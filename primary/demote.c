/* Planned switchover, `duplexctl demote` on the primary: nothing is lost
 * and nothing moves afterwards.
 *
 * States (enum demote_state), polled every DEMOTE_POLL_MS:
 *   DRAINING  NBD takes no new clients or requests; each client's requests
 *             in flight are answered, then its connection is closed.
 *   SYNCING   waits until the secondary has everything: connected, no
 *             resync running, nothing unacknowledged, the bitmap empty and
 *             the secondary holding this side's generation.
 *   HANDOVER  a SYNC_STATE with handover set went out (after every write,
 *             so the secondary flushes first); its acknowledgement means
 *             the secondary recorded that it may be promoted.  A lost link
 *             goes back to SYNCING.
 *   DONE      this side's metadata says it handed over (role secondary,
 *             consistent), the command is answered and the agent stops
 *             (exit 0).
 * NBD stays closed from DRAINING on, whatever happens: a write now would
 * exist on this side only.  Past --timeout the command is answered with
 * what it still waits for; the demotion goes on (SIGTERM stops the agent
 * without handing over). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "internal.h"
#include "json.h"
#include "log.h"

#define DEMOTE_POLL_MS 20
#define DEMOTE_DEFAULT_TIMEOUT_MS 60000

enum demote_state { DEMOTE_DRAINING, DEMOTE_SYNCING, DEMOTE_HANDOVER,
                    DEMOTE_DONE };

struct demote {
  struct primary *p;
  enum demote_state state;
  struct control_pending *reply;  /* NULL once answered */
  struct event *poll;
  struct repl_op *op;             /* HANDOVER: the handover in flight */
  uint64_t started_ms, deadline_ms;
  char waiting[256];              /* what SYNCING waits for */
};

static const char *
demote_state_name(enum demote_state s)
{
  switch (s) {
  case DEMOTE_DRAINING: return "draining";
  case DEMOTE_SYNCING: return "waiting-for-secondary";
  case DEMOTE_HANDOVER: return "handing-over";
  case DEMOTE_DONE: return "done";
  }
  return "?";
}

static void
demote_answer(struct demote *d, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
demote_answer(struct demote *d, bool ok, const char *fmt, ...)
{
  va_list ap;

  if (d->reply == NULL)
    return;
  va_start(ap, fmt);
  control_finish_vprintf(d->reply, ok, fmt, ap);
  va_end(ap);
  d->reply = NULL;
}

/* Requests of clients that are gone may still be in the engine. */
static bool
demote_drained(const struct primary *p)
{
  int i;

  for (i = 0; i < p->n_nbd; i++)
    if (nbd_server_clients(p->nbd[i]) > 0)
      return false;
  return p->reqs_active == 0 && TAILQ_EMPTY(&p->waiting);
}

/* The secondary holds everything: false with what is missing in
 * d->waiting. */
static bool
demote_secondary_has_all(struct demote *d)
{
  struct primary *p = d->p;
  struct resync_counters rs;
  uint64_t dirty = bitmap_dirty_bytes(p->oos);

  resync_get_counters(p->resync, &rs);
  if (!repl_connected(p->repl))
    snprintf(d->waiting, sizeof d->waiting, "the secondary to connect "
             "(link %s)", repl_link_state(p->repl));
  else if (resync_active(p->resync) || dirty > 0)
    snprintf(d->waiting, sizeof d->waiting, "the resync to finish (%" PRIu64
             " bytes out of sync)", dirty);
  else if (repl_inflight_bytes(p->repl) > 0)
    snprintf(d->waiting, sizeof d->waiting, "the secondary to acknowledge "
             "%" PRIu64 " bytes", repl_inflight_bytes(p->repl));
  else if (!rs.in_sync_confirmed)
    snprintf(d->waiting, sizeof d->waiting, "the secondary to adopt this "
             "side's generation");
  else
    return true;
  return false;
}

/* This side handed over: a secondary from now on, holding exactly what the
 * secondary holds.  0 or -errno. */
static int
demote_record(struct demote *d)
{
  struct primary *p = d->p;
  struct meta_sb sb = *meta_get(p->meta);
  int r;

  sb.gen = p->gen;
  sb.role = META_ROLE_SECONDARY;
  sb.consistent = true;
  sb.handover = true;
  sb.handover_ms = util_wall_ns() / 1000000;
  r = meta_write(p->meta, &sb);
  if (r < 0)
    snprintf(p->meta_error, sizeof p->meta_error, "recording the handover: "
             "%s", strerror(-r));
  return r;
}

static void
demote_acked(struct repl_op *op, bool ok)
{
  struct demote *d = op->opaque;
  struct primary *p = d->p;
  char gen[17];
  int r;

  d->op = NULL;
  free(op);
  if (!ok) {
    log_warn("primary: demote: the link dropped during the handover; "
             "waiting for the secondary again");
    d->state = DEMOTE_SYNCING;
    return;
  }
  r = demote_record(d);
  if (r < 0) {
    /* The secondary may be promoted; this side must not serve again as
     * if nothing happened, and it cannot say so on disk.  It stops. */
    log_error("primary: demote: the secondary holds everything and may be "
              "promoted, but metadata %s could not record the handover: "
              "%s; start this node as duplex-secondary anyway",
              p->cfg.meta, strerror(-r));
    demote_answer(d, false, "the secondary holds everything and may be "
                  "promoted, but this node's metadata %s could not record "
                  "the handover (%s); the agent stops: start this node as "
                  "duplex-secondary", p->cfg.meta, strerror(-r));
  } else {
    gen_format(p->gen.current, gen);
    log_info("primary: demoted: the secondary holds everything (generation "
             "%s) and may be promoted; stopping. Start this node as "
             "duplex-secondary on %s and %s", gen, p->vol.path, p->cfg.meta);
    demote_answer(d, true, "demoted in %.1f s: the secondary holds "
                  "everything (generation %s) and may be promoted; this "
                  "agent stops now. Next: start duplex-primary on the "
                  "secondary's volume and metadata, and duplex-secondary "
                  "here on %s and %s; nothing is resynced",
                  (util_now_ms() - d->started_ms) / 1000.0, gen,
                  p->vol.path, p->cfg.meta);
  }
  d->state = DEMOTE_DONE;
  primary_stop(p);
}

static void
demote_poll_cb(evutil_socket_t fd, short what, void *arg)
{
  struct demote *d = arg;
  struct primary *p = d->p;

  (void)fd;
  (void)what;
  if (p->stopping)
    return;
  if (d->reply != NULL && util_now_ms() >= d->deadline_ms)
    demote_answer(d, false, "not done in %.0f s: still %s, waiting for %s. "
                  "NBD stays closed and the demotion goes on: this agent "
                  "stops once the secondary has everything (`duplexctl "
                  "status` shows it); SIGTERM stops it without handing over",
                  (d->deadline_ms - d->started_ms) / 1000.0,
                  demote_state_name(d->state),
                  d->state == DEMOTE_DRAINING
                      ? "NBD clients to be answered and disconnect"
                      : d->waiting);
  switch (d->state) {
  case DEMOTE_DRAINING:
    if (!demote_drained(p))
      return;
    log_info("primary: demote: NBD clients answered and disconnected; "
             "waiting for the secondary to have everything");
    d->state = DEMOTE_SYNCING;
    /* fall through */
  case DEMOTE_SYNCING:
    if (!demote_secondary_has_all(d))
      return;
    d->op = calloc(1, sizeof *d->op);
    if (d->op == NULL)
      abort();
    d->op->acked = demote_acked;
    d->op->opaque = d;
    if (repl_send_sync_done(p->repl, d->op, true) == -1) {
      free(d->op);
      d->op = NULL;
      return;
    }
    d->state = DEMOTE_HANDOVER;
    return;
  case DEMOTE_HANDOVER:
  case DEMOTE_DONE:
    return;
  }
}

/* `demote [--timeout DURATION]`. */
int
demote_command(struct primary *p, int argc, char **argv, struct evbuffer *out)
{
  struct timeval tv = { 0, DEMOTE_POLL_MS * 1000 };
  uint64_t timeout = DEMOTE_DEFAULT_TIMEOUT_MS;
  struct demote *d;
  char err[128];
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
      if (util_parse_duration_ms(argv[++i], &timeout, err, sizeof err) ==
              -1 || timeout < 1000 || timeout > 24ull * 3600 * 1000) {
        evbuffer_add_printf(out, "demote --timeout %s: %s\n", argv[i],
                            timeout < 1000 ? "at least 1s" : err);
        return -1;
      }
      continue;
    }
    evbuffer_add_printf(out, "demote: unknown argument %s (usage: demote "
                        "[--timeout DURATION])\n", argv[i]);
    return -1;
  }
  if (p->demote != NULL) {
    evbuffer_add_printf(out, "demote: already in progress (%s)\n",
                        demote_state_name(p->demote->state));
    return -1;
  }
  if (!repl_connected(p->repl)) {
    evbuffer_add_printf(out, "demote: the secondary is not connected "
                        "(link %s); a planned switchover needs it to get "
                        "everything first. Wait for `connection: connected`, "
                        "or, if this site is lost, promote the secondary "
                        "(unplanned failover); nothing was changed\n",
                        repl_link_state(p->repl));
    return -1;
  }
  d = calloc(1, sizeof *d);
  if (d == NULL)
    abort();
  d->p = p;
  d->started_ms = util_now_ms();
  d->deadline_ms = d->started_ms + timeout;
  d->poll = event_new(p->base, -1, EV_PERSIST, demote_poll_cb, d);
  if (d->poll == NULL || event_add(d->poll, &tv) == -1)
    abort();
  p->demote = d;
  log_info("primary: demote requested: closing NBD to new requests, then "
           "handing over to the secondary");
  for (i = 0; i < p->n_nbd; i++)
    nbd_server_quiesce(p->nbd[i]);
  d->reply = control_defer_for(p->control, (unsigned)(timeout / 1000) + 5);
  return CONTROL_LATER;
}

void
demote_status_json(const struct primary *p, struct json *j)
{
  const struct demote *d = p->demote;

  if (d == NULL) {
    json_null(j, "demote");
    return;
  }
  json_obj_begin(j, "demote");
  json_str(j, "state", demote_state_name(d->state));
  if (d->state == DEMOTE_SYNCING)
    json_str(j, "waiting_for", d->waiting);
  json_u64(j, "seconds", (util_now_ms() - d->started_ms) / 1000);
  json_obj_end(j);
}

void
demote_status_text(const struct primary *p, struct evbuffer *out)
{
  const struct demote *d = p->demote;

  if (d == NULL)
    return;
  evbuffer_add_printf(out, "demote:       %s%s%s (NBD closed; %.1f s)\n",
                      demote_state_name(d->state),
                      d->state == DEMOTE_SYNCING ? ", waiting for " : "",
                      d->state == DEMOTE_SYNCING ? d->waiting : "",
                      (util_now_ms() - d->started_ms) / 1000.0);
}

void
demote_free(struct demote *d)
{
  if (d == NULL)
    return;
  if (d->reply != NULL)
    demote_answer(d, false, "the agent stopped before the handover; "
                  "nothing was handed over");
  event_free(d->poll);
  free(d);
}
