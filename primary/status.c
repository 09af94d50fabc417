/* duplex-primary control commands: status (human and JSON). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "json.h"

struct status_view {
  const char *connection;
  const char *sync;
  uint64_t oos_bytes;
  double done_percent;
  struct repl_counters rc;
  struct resync_counters rs;
  uint64_t lag;
};

static void
status_collect(struct primary *p, struct status_view *v)
{
  bool connected = repl_connected(p->repl);
  uint64_t dirty = bitmap_dirty_bytes(p->oos);

  repl_get_counters(p->repl, &v->rc);
  resync_get_counters(p->resync, &v->rs);
  v->connection = connected ? "connected" : "connecting";
  v->lag = repl_inflight_bytes(p->repl);
  if (restore_running(p)) {
    /* in-sync only once the volume equals the source and the replica
     * the volume */
    v->sync = "restoring";
    restore_status(p, &v->oos_bytes, &v->done_percent);
  } else if (p->tail && connected) {
    /* in-sync: every change captured so far is on the secondary */
    bool drained = dirty == 0 && !resync_active(p->resync);
    v->sync = drained ? "in-sync"
              : strncmp(tail_capture_state(p), "scanning", 8) == 0
                  ? "scanning" : "catching-up";
    v->oos_bytes = dirty;
    v->done_percent = drained ? 100.0
                      : v->rs.total_bytes
                          ? 100.0 * v->rs.done_bytes / v->rs.total_bytes
                          : 0.0;
  } else if (resync_active(p->resync)) {
    v->sync = v->rs.full ? "initial-sync" : "resyncing";
    v->oos_bytes = v->rs.total_bytes > v->rs.done_bytes
                       ? v->rs.total_bytes - v->rs.done_bytes : 0;
    v->done_percent = v->rs.total_bytes
                          ? 100.0 * v->rs.done_bytes / v->rs.total_bytes
                          : 100.0;
  } else if (connected && dirty == 0) {
    v->sync = "in-sync";
    v->oos_bytes = 0;
    v->done_percent = 100.0;
  } else {
    /* Not connected: we cannot know what the secondary holds. */
    v->sync = connected ? "resyncing" : "unknown";
    v->oos_bytes = dirty;
    v->done_percent = v->rs.ever_completed && dirty == 0 ? 100.0 : 0.0;
  }
}

static void
status_json(struct primary *p, struct evbuffer *out)
{
  struct status_view v;
  struct json j;
  char uuid[37];
  const char *err = repl_last_error(p->repl);

  status_collect(p, &v);
  util_uuid_format(meta_get(p->meta)->volume_uuid, uuid);
  json_begin(&j, out);
  json_str(&j, "role", "primary");
  json_str(&j, "volume", p->vol.path);
  json_str(&j, "volume_uuid", uuid);
  json_u64(&j, "size_bytes", p->vol.size);
  json_str(&j, "mode", p->cfg.mode == REPL_SYNC ? "sync" : "async");
  if (p->tail)
    tail_status_json(p, &j);
  else {
    json_str(&j, "capture_mode", "nbd");
    json_str(&j, "consistency", "write-order");
  }
  json_str(&j, "connection", v.connection);
  json_str(&j, "link_state", repl_link_state(p->repl));
  json_str(&j, "peer_name", p->cfg.tls.peer_name);
  /* Who dials whom: a deployment choice, not a role. */
  json_str(&j, "direction", p->cfg.listen ? "listen" : "dial");
  if (p->cfg.listen)
    json_u64(&j, "listen_port", (uint64_t)repl_listen_port(p->repl));
  json_str(&j, "sync", v.sync);
  json_u64(&j, "out_of_sync_bytes", v.oos_bytes);
  json_double(&j, "sync_done_percent", v.done_percent);
  json_u64(&j, "replication_lag_bytes", v.lag);
  json_u64(&j, "async_buffer_bytes", p->cfg.async_buffer);
  json_u64(&j, "bytes_sent", v.rc.bytes_sent);
  json_u64(&j, "bytes_received", v.rc.bytes_received);
  json_u64(&j, "writes_acked", p->stats.writes_acked);
  json_u64(&j, "bytes_written", p->stats.bytes_written);
  json_u64(&j, "bytes_read", p->stats.bytes_read);
  json_u64(&j, "requests", p->stats.requests);
  json_u64(&j, "ops_sent", v.rc.ops_sent);
  json_u64(&j, "ops_acked", v.rc.ops_acked);
  json_u64(&j, "connects", v.rc.connects);
  {
    char id[17];
    int i;
    uint64_t now = util_now_ms();
    double secs = (now - v.rs.started_ms) / 1000.0;
    double rate = v.rs.total_bytes && secs > 0
                      ? (v.rs.data_bytes_sent + v.rs.zero_bytes_sent) / secs
                      : 0.0;
    json_u64(&j, "resync_bytes_total", v.rs.total_bytes);
    json_double(&j, "resync_seconds",
                v.rs.started_ms == 0 ? 0.0
                : ((resync_active(p->resync) ? now : v.rs.finished_ms) -
                   v.rs.started_ms) / 1000.0);
    json_u64(&j, "resync_bytes_sent",
             v.rs.data_bytes_sent + v.rs.zero_bytes_sent);
    json_double(&j, "resync_rate_bytes_per_sec",
                resync_active(p->resync) ? rate : 0.0);
    if (resync_active(p->resync) && rate > 0)
      json_double(&j, "resync_eta_seconds", v.oos_bytes / rate);
    else if (resync_active(p->resync))
      json_null(&j, "resync_eta_seconds");
    else
      json_double(&j, "resync_eta_seconds", 0.0);
    json_obj_begin(&j, "generation");
    gen_format(p->gen.current, id);
    json_str(&j, "current", id);
    gen_format(p->gen.bitmap, id);
    json_str(&j, "bitmap", id);
    for (i = 0; i < GEN_HISTORY; i++) {
      char key[16];
      snprintf(key, sizeof key, "history%d", i);
      gen_format(p->gen.history[i], id);
      json_str(&j, key, id);
    }
    json_obj_end(&j);
    json_bool(&j, "split_brain", repl_split_brain(p->repl));
    /* Why the current or last resync ran; "crash-recovery" also after a
     * no-sync decision, when the activity log had regions to compare. */
    json_str(&j, "resync_kind",
             v.rs.started_ms == 0 ? "none"
             : v.rs.full ? "full"
             : v.rs.crash_recovery ? "crash-recovery"
             : p->cfg.resync_checksums ? "bitmap-checksums" : "bitmap");
    json_str(&j, "congestion", p->ahead ? "ahead"
                               : !TAILQ_EMPTY(&p->waiting) ? "blocked"
                                                           : "none");
    json_str(&j, "on_congestion", p->cfg.pull_ahead ? "pull-ahead" : "block");
    json_u64(&j, "pull_ahead_events", p->stats.pull_ahead_events);
    if (repl_decision(p->repl))
      json_str(&j, "sync_decision", repl_decision(p->repl));
    else
      json_null(&j, "sync_decision");
    json_u64(&j, "activity_log_extents", al_active(p->al));
    verify_status_json(p->verify, &j);
    json_u64(&j, "bitmap_grain", bitmap_grain(p->oos));
  }
  json_u64(&j, "resync_total_bytes", v.rs.total_bytes);
  json_u64(&j, "resync_done_bytes", v.rs.done_bytes);
  json_u64(&j, "resync_data_bytes_sent", v.rs.data_bytes_sent);
  json_u64(&j, "resync_zero_bytes_sent", v.rs.zero_bytes_sent);
  json_u64(&j, "resync_checksum_same_bytes", v.rs.checksum_same_bytes);
  json_bool(&j, "resync_checksums", p->cfg.resync_checksums);
  {
    uint64_t clients = 0;
    int i;
    for (i = 0; i < p->n_nbd; i++)
      clients += nbd_server_clients(p->nbd[i]);
    json_u64(&j, "nbd_clients", clients);
  }
  if (err)
    json_str(&j, "last_error", err);
  else
    json_null(&j, "last_error");
  /* A failed superblock write (e.g. a new generation that could not be
   * recorded, so writes without the secondary fail with EIO). */
  if (p->meta_error[0])
    json_str(&j, "metadata_error", p->meta_error);
  else
    json_null(&j, "metadata_error");
  json_u64(&j, "metadata_write_errors", p->meta_write_errors);
  demote_status_json(p, &j);
  restore_status_json(p, &j);
  json_end(&j);
}

static void
status_human(struct primary *p, struct evbuffer *out)
{
  struct status_view v;
  char size[32], oos[32], lag[32], sent[32], recv[32], link[400];
  const char *err = repl_last_error(p->repl);

  status_collect(p, &v);
  util_format_bytes(p->vol.size, size, sizeof size);
  util_format_bytes(v.oos_bytes, oos, sizeof oos);
  util_format_bytes(v.lag, lag, sizeof lag);
  util_format_bytes(v.rc.bytes_sent, sent, sizeof sent);
  util_format_bytes(v.rc.bytes_received, recv, sizeof recv);
  if (p->cfg.listen)
    snprintf(link, sizeof link, "%s, listening on port %d for the "
             "secondary (%s)", v.connection, repl_listen_port(p->repl),
             p->cfg.tls.peer_name);
  else
    snprintf(link, sizeof link, "%s to %s:%s (%s)", v.connection,
             p->cfg.peer.host, p->cfg.peer.port, p->cfg.tls.peer_name);
  evbuffer_add_printf(out,
                      "role:         primary (%s mode)\n"
                      "volume:       %s (%s)\n"
                      "connection:   %s\n"
                      "sync:         %s, %.1f%% done, %s out of sync\n"
                      "lag:          %s unacknowledged by the secondary\n"
                      "traffic:      %s sent, %s received\n"
                      "writes:       %" PRIu64 " acknowledged\n",
                      p->cfg.mode == REPL_SYNC ? "sync" : "async",
                      p->vol.path, size, link, v.sync,
                      v.done_percent, oos, lag, sent, recv,
                      p->stats.writes_acked);
  if (p->tail)
    tail_status_text(p, out);
  demote_status_text(p, out);
  restore_status_text(p, out);
  if (verify_state(p->verify) != VERIFY_IDLE)
    evbuffer_add_printf(out, "verify:       %s\n",
                        verify_state_name(verify_state(p->verify)));
  if (p->ahead)
    evbuffer_add_printf(out, "congestion:   ahead (writes recorded in the "
                        "bitmap, resynced when the link catches up)\n");
  if (repl_split_brain(p->repl))
    evbuffer_add_printf(out, "SPLIT BRAIN:  both sides wrote while apart; "
                        "nothing is overwritten until `resolve "
                        "--discard-local` on one side\n");
  if (err)
    evbuffer_add_printf(out, "last error:   %s\n", err);
  if (p->meta_error[0])
    evbuffer_add_printf(out, "metadata:     %s\n", p->meta_error);
}

int
status_control(void *opaque, int argc, char **argv, struct evbuffer *out)
{
  struct primary *p = opaque;

  if (argc >= 1 && strcmp(argv[0], "status") == 0) {
    if (argc == 1) {
      status_human(p, out);
      return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--json") == 0) {
      status_json(p, out);
      return 0;
    }
    evbuffer_add_printf(out, "usage: status [--json]\n");
    return -1;
  }
  if (argc >= 1 && strcmp(argv[0], "snapshot") == 0)
    return snapctl_command(p, argc, argv, out);
  if (argc >= 1 && p->tail &&
      (strcmp(argv[0], "demote") == 0 || strcmp(argv[0], "restore") == 0)) {
    evbuffer_add_printf(out, "%s: not in tail capture mode: the "
                        "applications write the device directly, so the "
                        "agent can neither stop them (demote) nor write "
                        "under them (restore); stop them, stop this agent "
                        "and use --capture nbd for that\n", argv[0]);
    return -1;
  }
  if (argc >= 1 && strcmp(argv[0], "demote") == 0) {
    if (restore_running(p)) {
      evbuffer_add_printf(out, "demote: a restore is in progress; demote "
                          "once status shows sync: in-sync\n");
      return -1;
    }
    return demote_command(p, argc, argv, out);
  }
  if (argc >= 1 && strcmp(argv[0], "restore") == 0)
    return restore_command(p, argc, argv, out);
  if (argc >= 1 && strcmp(argv[0], "verify") == 0) {
    char err[256];
    bool repair = argc == 2 && strcmp(argv[1], "--repair") == 0;
    if (argc > 2 || (argc == 2 && !repair)) {
      evbuffer_add_printf(out, "usage: verify [--repair]\n");
      return -1;
    }
    if (restore_running(p)) {
      evbuffer_add_printf(out, "verify: a restore is in progress; verify "
                          "once status shows sync: in-sync\n");
      return -1;
    }
    if (verify_start(p->verify, repair, err, sizeof err) == -1) {
      evbuffer_add_printf(out, "verify: %s\n", err);
      return -1;
    }
    evbuffer_add_printf(out, "verify%s started over %llu bytes; progress "
                        "and results in `status`\n", repair ? " --repair" : "",
                        (unsigned long long)p->vol.size);
    return 0;
  }
  if (argc >= 1 && strcmp(argv[0], "resolve") == 0) {
    /* As in DRBD, the node whose data is discarded must not be serving it:
     * it becomes the resync target as a secondary. */
    evbuffer_add_printf(out, "resolve --discard-local runs on a secondary: "
                        "to throw away this side's changes, stop "
                        "duplex-primary, start duplex-secondary on this "
                        "volume and metadata, run resolve --discard-local "
                        "there and let the other side's primary resync it "
                        "(a discarding node cannot serve clients)\n");
    return -1;
  }
  evbuffer_add_printf(out, "unknown command '%s'; try: status [--json], "
                      "verify [--repair], snapshot ..., demote "
                      "[--timeout DURATION], restore --snapshot ID | "
                      "--replica\n", argc ? argv[0] : "");
  return -1;
}
