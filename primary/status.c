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
  if (resync_active(p->resync)) {
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
  json_str(&j, "connection", v.connection);
  json_str(&j, "link_state", repl_state_name(repl_state(p->repl)));
  json_str(&j, "peer_name", p->cfg.tls.peer_name);
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
  json_u64(&j, "resync_total_bytes", v.rs.total_bytes);
  json_u64(&j, "resync_done_bytes", v.rs.done_bytes);
  json_u64(&j, "resync_data_bytes_sent", v.rs.data_bytes_sent);
  json_u64(&j, "resync_zero_bytes_sent", v.rs.zero_bytes_sent);
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
  json_end(&j);
}

static void
status_human(struct primary *p, struct evbuffer *out)
{
  struct status_view v;
  char size[32], oos[32], lag[32], sent[32], recv[32];
  const char *err = repl_last_error(p->repl);

  status_collect(p, &v);
  util_format_bytes(p->vol.size, size, sizeof size);
  util_format_bytes(v.oos_bytes, oos, sizeof oos);
  util_format_bytes(v.lag, lag, sizeof lag);
  util_format_bytes(v.rc.bytes_sent, sent, sizeof sent);
  util_format_bytes(v.rc.bytes_received, recv, sizeof recv);
  evbuffer_add_printf(out,
                      "role:         primary (%s mode)\n"
                      "volume:       %s (%s)\n"
                      "connection:   %s to %s:%s (%s)\n"
                      "sync:         %s, %.1f%% done, %s out of sync\n"
                      "lag:          %s unacknowledged by the secondary\n"
                      "traffic:      %s sent, %s received\n"
                      "writes:       %" PRIu64 " acknowledged\n",
                      p->cfg.mode == REPL_SYNC ? "sync" : "async",
                      p->vol.path, size, v.connection, p->cfg.peer.host,
                      p->cfg.peer.port, p->cfg.tls.peer_name, v.sync,
                      v.done_percent, oos, lag, sent, recv,
                      p->stats.writes_acked);
  if (err)
    evbuffer_add_printf(out, "last error:   %s\n", err);
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
  evbuffer_add_printf(out, "unknown command '%s'; try: status [--json]\n",
                      argc ? argv[0] : "");
  return -1;
}
