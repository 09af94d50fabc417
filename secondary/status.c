/* Control socket commands of the secondary: `status [--json]`, and the
 * operator's answers to what status reports: `resolve --discard-local`
 * (split brain, or newer / unrelated data here) and `resume` (after an I/O
 * error on the replica). */
#include <stdarg.h>
#include <string.h>

#include "internal.h"
#include "connector.h"

#include "duplex.pb-c.h"
#include "json.h"
#include "log.h"

#define STATUS_USAGE "status [--json], resolve --discard-local, resume, " \
                     "snapshot create|list|delete"

struct status_view {
  const char *mode;
  const char *connection;
  const char *sync;
  uint64_t size_bytes;
  double done_percent;
  struct apply_stats ap;
  const char *peer;             /* NULL if none */
  const char *peer_addr;
};

const char *
status_sync_name(enum sec_sync s)
{
  switch (s) {
  case SEC_SYNC_INITIAL: return "initial-sync";
  case SEC_SYNC_RESYNC: return "resyncing";
  case SEC_SYNC_RESTORING: return "restoring";
  case SEC_SYNC_IN_SYNC: return "in-sync";
  case SEC_SYNC_UNKNOWN: break;
  }
  return "unknown";
}

void
status_error(struct secondary *s, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(s->st.last_error, sizeof s->st.last_error, fmt, ap);
  va_end(ap);
  log_error("%s", s->st.last_error);
}

static void
status_collect(const struct secondary *s, struct status_view *v)
{
  const struct sec_status *st = &s->st;

  memset(v, 0, sizeof *v);
  switch (st->mode) {
  case DUPLEX__MODE__MODE_SYNC: v->mode = "sync"; break;
  case DUPLEX__MODE__MODE_ASYNC: v->mode = "async"; break;
  default: v->mode = "unknown"; break;
  }
  if (apply_failed(s->apply) || st->refused)
    v->connection = "standalone";
  else if (s->link != NULL && link_state(s->link) == LINK_REPLICATING)
    v->connection = "connected";
  else
    v->connection = "connecting";
  v->sync = status_sync_name(st->sync);
  v->size_bytes = st->size_bytes;
  if (v->size_bytes == 0)
    v->size_bytes = meta_get(s->meta)->size_bytes;
  if (v->size_bytes == 0)
    v->size_bytes = replica_size(s->replica);
  if (st->sync == SEC_SYNC_IN_SYNC)
    v->done_percent = 100.0;
  else if (st->total_bytes > 0)
    v->done_percent = 100.0 * (double)st->done_bytes /
                      (double)st->total_bytes;
  apply_get_stats(s->apply, &v->ap);
  if (s->link != NULL) {
    v->peer = link_peer_cn(s->link);
    v->peer_addr = link_peer_addr(s->link);
  }
}

/* "key":["hex16",...] — common/json.h has no arrays; this follows its
 * separator rule (struct json's first[depth]). */
static void
status_json_gen_list(struct json *j, const char *key, const uint64_t *ids,
                     size_t n)
{
  char hex[17];
  size_t i;

  if (!j->first[j->depth])
    evbuffer_add(j->out, ",", 1);
  j->first[j->depth] = false;
  evbuffer_add_printf(j->out, "\"%s\":[", key);
  for (i = 0; i < n; i++) {
    gen_format(ids[i], hex);
    evbuffer_add_printf(j->out, "%s\"%s\"", i > 0 ? "," : "", hex);
  }
  evbuffer_add(j->out, "]", 1);
}

static void
status_json_gen(struct json *j, const char *key, const struct gen_ids *g)
{
  char hex[17];
  size_t n = 0, i;

  for (i = 0; i < GEN_HISTORY; i++)
    if (g->history[i] != 0)
      n = i + 1;
  json_obj_begin(j, key);
  gen_format(g->current, hex);
  json_str(j, "current", hex);
  gen_format(g->bitmap, hex);
  json_str(j, "bitmap", hex);
  status_json_gen_list(j, "history", g->history, n);
  json_obj_end(j);
}

/* Whether this node may be promoted (started as duplex-primary on its
 * volume and metadata), and what it would mean: "handover" (the primary
 * demoted with everything here: nothing to resync), "demote-first" (a
 * primary is connected), "unsafe" (the replica is not consistent) or
 * "failover" (the primary is away: its unreplicated writes are resolved
 * when it rejoins as a secondary). */
static const char *
status_promotion(const struct secondary *s, char *hint, size_t hintlen)
{
  const struct meta_sb *sb = meta_get(s->meta);
  char when[32];

  if (sb->handover) {
    util_rfc3339(sb->handover_ms * 1000000, when, sizeof when);
    snprintf(hint, hintlen, "safe: the primary handed over at %s with "
             "everything here; start duplex-primary on this volume and "
             "metadata (nothing is resynced), then the old primary as "
             "duplex-secondary", when);
    return "handover";
  }
  if (s->link != NULL && link_state(s->link) == LINK_REPLICATING) {
    snprintf(hint, hintlen, "not now: a primary is connected; for a "
             "planned switchover run `duplexctl demote` on it first");
    return "demote-first";
  }
  if (!sb->consistent) {
    snprintf(hint, hintlen, "unsafe: the replica is not consistent (a sync "
             "to it did not finish); it does not hold any one state of the "
             "primary's volume");
    return "unsafe";
  }
  snprintf(hint, hintlen, "failover: the primary is not connected; "
           "promoting this node makes it the primary, and the old one must "
           "rejoin as duplex-secondary (`resolve --discard-local` there "
           "drops what it wrote that never arrived here)");
  return "failover";
}

static void
status_json(const struct secondary *s, const struct status_view *v,
            struct evbuffer *out)
{
  const struct sec_status *st = &s->st;
  const struct meta_sb *sb = meta_get(s->meta);
  char uuid[37], hint[512], when[32];
  const char *promotion;
  struct json j;

  util_uuid_format(sb->volume_uuid, uuid);
  json_begin(&j, out);
  json_str(&j, "role", "secondary");
  json_str(&j, "volume", replica_path(s->replica));
  json_u64(&j, "size_bytes", v->size_bytes);
  json_str(&j, "mode", v->mode);
  /* write-order: every state of the replica is one the primary's volume
   * had; points (tail capture): only at in-sync and snapshots. */
  json_str(&j, "consistency", s->st.consistency_points ? "points"
                                                       : "write-order");
  json_str(&j, "connection", v->connection);
  json_str(&j, "sync", v->sync);
  json_u64(&j, "out_of_sync_bytes",
           st->sync == SEC_SYNC_IN_SYNC ? 0 : st->out_of_sync_bytes);
  json_double(&j, "sync_done_percent", v->done_percent);
  json_u64(&j, "replication_lag_bytes", v->ap.queued_bytes);
  json_u64(&j, "bytes_sent", st->bytes_sent);
  json_u64(&j, "bytes_received", st->bytes_received);
  json_u64(&j, "writes_acked", st->writes_acked);
  json_u64(&j, "applied_bytes", v->ap.applied_bytes);
  json_u64(&j, "zeroed_bytes", v->ap.zeroed_bytes);
  json_u64(&j, "epoch", v->ap.epoch);
  json_u64(&j, "inflight_ops", v->ap.inflight);
  json_u64(&j, "queued_ops", v->ap.queued);
  if (v->peer != NULL) {
    json_str(&j, "peer", v->peer);
    json_str(&j, "peer_address", v->peer_addr);
  } else {
    json_null(&j, "peer");
    json_null(&j, "peer_address");
  }
  if (st->last_error[0] != '\0')
    json_str(&j, "last_error", st->last_error);
  else
    json_null(&j, "last_error");
  promotion = status_promotion(s, hint, sizeof hint);
  json_str(&j, "promotion", promotion);
  json_str(&j, "promotion_hint", hint);
  if (sb->handover_ms != 0) {
    util_rfc3339(sb->handover_ms * 1000000, when, sizeof when);
    json_str(&j, "last_handover", when);
  } else {
    json_null(&j, "last_handover");
  }
  /* Who dials whom: a deployment choice, not a role. */
  json_str(&j, "direction", s->cfg.dial ? "dial" : "listen");
  if (s->cfg.dial) {
    json_null(&j, "listen_port");
    json_str(&j, "primary_address", s->cfg.listen_arg);
  } else {
    json_u64(&j, "listen_port", (uint64_t)s->listen_port);
  }
  if (s->conn != NULL)
    json_str(&j, "link_state", s->link != NULL
                                   ? link_state_name(link_state(s->link))
                                   : connector_state(s->conn));
  json_str(&j, "volume_uuid", uuid);
  json_bool(&j, "consistent", sb->consistent);
  json_u64(&j, "connects", st->connects);
  json_str(&j, "node_name", s->node_name);
  status_json_gen(&j, "generation", &sb->gen);
  if (st->have_decision) {
    json_str(&j, "sync_decision", gen_decision_name(st->decision));
    status_json_gen(&j, "peer_generation", &st->peer_gen);
  } else {
    json_null(&j, "sync_decision");
    json_null(&j, "peer_generation");
  }
  json_bool(&j, "split_brain", st->split_brain);
  json_bool(&j, "discard_local", sb->discard_local);
  json_bool(&j, "replication_paused", apply_failed(s->apply));
  snap_status_json(s->snap, &j);
  json_end(&j);
}

static void
status_human_gen(const struct secondary *s, struct evbuffer *out)
{
  const struct sec_status *st = &s->st;
  const struct meta_sb *sb = meta_get(s->meta);
  char cur[17], bm[17];
  int i;

  gen_format(sb->gen.current, cur);
  gen_format(sb->gen.bitmap, bm);
  evbuffer_add_printf(out, "generation:  %s, bitmap %s, history", cur, bm);
  for (i = 0; i < GEN_HISTORY; i++) {
    gen_format(sb->gen.history[i], cur);
    evbuffer_add_printf(out, " %s", cur);
  }
  evbuffer_add_printf(out, "\n");
  if (st->have_decision || sb->discard_local)
    evbuffer_add_printf(out, "decision:    %s%s%s\n",
                        st->have_decision ? gen_decision_name(st->decision)
                                          : "none yet",
                        st->split_brain ? ", SPLIT BRAIN (nothing is "
                                          "overwritten; see last error)" : "",
                        sb->discard_local ? ", discard-local set (the next "
                                            "connection resyncs this side)"
                                          : "");
  if (apply_failed(s->apply))
    evbuffer_add_printf(out, "paused:      after a replica I/O error; fix "
                        "the disk, then `resume`\n");
}

static void
status_human(const struct secondary *s, const struct status_view *v,
             struct evbuffer *out)
{
  const struct sec_status *st = &s->st;
  char size[32], oos[32], lag[32], applied[32], zeroed[32], sent[32],
      recv[32], hint[512];

  util_format_bytes(v->size_bytes, size, sizeof size);
  util_format_bytes(st->sync == SEC_SYNC_IN_SYNC ? 0 : st->out_of_sync_bytes,
                    oos, sizeof oos);
  util_format_bytes(v->ap.queued_bytes, lag, sizeof lag);
  util_format_bytes(v->ap.applied_bytes, applied, sizeof applied);
  util_format_bytes(v->ap.zeroed_bytes, zeroed, sizeof zeroed);
  util_format_bytes(st->bytes_sent, sent, sizeof sent);
  util_format_bytes(st->bytes_received, recv, sizeof recv);

  evbuffer_add_printf(out, "role:        secondary\n");
  (void)status_promotion(s, hint, sizeof hint);
  evbuffer_add_printf(out, "promote:     %s\n", hint);
  evbuffer_add_printf(out, "volume:      %s (%s)%s\n",
                      replica_path(s->replica), size,
                      meta_get(s->meta)->consistent ? ", consistent" : "");
  if (v->peer != NULL)
    evbuffer_add_printf(out, "connection:  %s to primary %s (%s), %s mode\n",
                        v->connection, v->peer, v->peer_addr, v->mode);
  else if (s->cfg.dial)
    evbuffer_add_printf(out, "connection:  %s, dialling the primary at %s "
                        "(%s)\n", v->connection, s->cfg.listen_arg,
                        s->conn != NULL ? connector_state(s->conn) : "-");
  else
    evbuffer_add_printf(out, "connection:  %s, listening on port %d\n",
                        v->connection, s->listen_port);
  evbuffer_add_printf(out, "sync:        %s, %.1f%% done, %s out of sync\n",
                      v->sync, v->done_percent, oos);
  if (st->consistency_points)
    evbuffer_add_printf(out, "consistency: points (the primary tails its "
                        "device: between snapshots of consistency points "
                        "the replica is as fresh as possible, not "
                        "write-ordered)\n");
  evbuffer_add_printf(out, "applied:     %s written, %s zeroed, %llu ops "
                      "acked, epoch %llu\n", applied, zeroed,
                      (unsigned long long)st->writes_acked,
                      (unsigned long long)v->ap.epoch);
  evbuffer_add_printf(out, "lag:         %s (%u ops queued, %u in flight)\n",
                      lag, v->ap.queued, v->ap.inflight);
  evbuffer_add_printf(out, "traffic:     %s sent, %s received\n", sent,
                      recv);
  status_human_gen(s, out);
  snap_status_text(s->snap, out);
  evbuffer_add_printf(out, "last error:  %s\n",
                      st->last_error[0] != '\0' ? st->last_error : "none");
}

static int
status_cmd_status(struct secondary *s, int argc, char **argv,
                  struct evbuffer *out)
{
  struct status_view v;
  bool json = false;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
    } else {
      evbuffer_add_printf(out, "status: unknown option %s; try: status "
                          "[--json]\n", argv[i]);
      return -1;
    }
  }
  status_collect(s, &v);
  if (json)
    status_json(s, &v, out);
  else
    status_human(s, &v, out);
  return 0;
}

/* The operator chose this side's changes to be thrown away.  The choice is
 * persisted and takes effect at the next HELLO, so the current link (if
 * any) is dropped: the primary reconnects. */
static int
status_cmd_resolve(struct secondary *s, int argc, char **argv,
                   struct evbuffer *out)
{
  char err[512];

  if (argc != 2 || strcmp(argv[1], "--discard-local") != 0) {
    evbuffer_add_printf(out, "resolve: expected `resolve --discard-local` "
                        "(run it on the side whose changes are to be thrown "
                        "away)\n");
    return -1;
  }
  if (identity_discard_local(s, err, sizeof err) == -1) {
    status_error(s, "secondary: resolve --discard-local: %s", err);
    evbuffer_add_printf(out, "resolve: %s\n", err);
    return -1;
  }
  log_info("secondary: resolve --discard-local by the operator%s: the next "
           "connection resyncs this side from the primary (blocks changed "
           "on either side)", s->st.split_brain ? " (split brain)" : "");
  s->st.split_brain = false;
  s->st.refused = false;
  if (s->st.refusal_error) {
    s->st.last_error[0] = '\0';
    s->st.refusal_error = false;
  }
  if (s->link != NULL)
    link_close(s->link, false, "resolve --discard-local: dropping the link "
               "so that the primary reconnects");
  else if (s->conn != NULL)
    connector_redial_now(s->conn);
  evbuffer_add_printf(out, "discard-local set: the next connection resyncs "
                      "this side from the primary (blocks changed on either "
                      "side)\n");
  return 0;
}

/* Lift the pause after a replica I/O error; the primary tracked what this
 * side missed and resyncs it at its next connection. */
static int
status_cmd_resume(struct secondary *s, int argc, char **argv,
                  struct evbuffer *out)
{
  (void)argv;
  if (argc != 1) {
    evbuffer_add_printf(out, "resume: takes no arguments\n");
    return -1;
  }
  if (!apply_failed(s->apply)) {
    evbuffer_add_printf(out, "not paused\n");
    return 0;
  }
  if (apply_resume(s->apply) == -1) {
    evbuffer_add_printf(out, "resume: replica I/O from before the error is "
                        "still in flight; try again in a moment\n");
    return -1;
  }
  log_info("secondary: replica %s: resumed by the operator (paused after: "
           "%s); the primary's next connection resyncs what this side "
           "missed", replica_path(s->replica), s->st.pause_reason);
  evbuffer_add_printf(out, "resumed: applying replicated writes to %s again "
                      "(paused after: %s); the primary's next connection "
                      "resyncs what this side missed\n",
                      replica_path(s->replica), s->st.pause_reason);
  s->st.pause_reason[0] = '\0';
  s->st.last_error[0] = '\0';
  s->st.refusal_error = false;
  return 0;
}

int
status_control(void *opaque, int argc, char **argv, struct evbuffer *out)
{
  struct secondary *s = opaque;

  if (argc < 1) {
    evbuffer_add_printf(out, "empty command; try: " STATUS_USAGE "\n");
    return -1;
  }
  if (strcmp(argv[0], "status") == 0)
    return status_cmd_status(s, argc, argv, out);
  if (strcmp(argv[0], "resolve") == 0)
    return status_cmd_resolve(s, argc, argv, out);
  if (strcmp(argv[0], "resume") == 0)
    return status_cmd_resume(s, argc, argv, out);
  if (strcmp(argv[0], "snapshot") == 0)
    return snapctl_command(s, argc, argv, out);
  evbuffer_add_printf(out, "unknown command %s; try: " STATUS_USAGE "\n",
                      argv[0]);
  return -1;
}
