/* Control socket commands of the secondary: `status` and `status --json`. */
#include <stdarg.h>
#include <string.h>

#include "internal.h"

#include "duplex.pb-c.h"
#include "json.h"
#include "log.h"

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
  if (apply_failed(s->apply))
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
  if (s->link != NULL && link_state(s->link) != LINK_TLS_HANDSHAKE) {
    v->peer = link_peer_cn(s->link);
    v->peer_addr = link_peer_addr(s->link);
  }
}

static void
status_json(const struct secondary *s, const struct status_view *v,
            struct evbuffer *out)
{
  const struct sec_status *st = &s->st;
  const struct meta_sb *sb = meta_get(s->meta);
  char uuid[37];
  struct json j;

  util_uuid_format(sb->volume_uuid, uuid);
  json_begin(&j, out);
  json_str(&j, "role", "secondary");
  json_str(&j, "volume", replica_path(s->replica));
  json_u64(&j, "size_bytes", v->size_bytes);
  json_str(&j, "mode", v->mode);
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
  json_u64(&j, "listen_port", (uint64_t)s->listen_port);
  json_str(&j, "volume_uuid", uuid);
  json_bool(&j, "consistent", sb->consistent);
  json_u64(&j, "connects", st->connects);
  json_str(&j, "node_name", s->node_name);
  json_end(&j);
}

static void
status_human(const struct secondary *s, const struct status_view *v,
             struct evbuffer *out)
{
  const struct sec_status *st = &s->st;
  char size[32], oos[32], lag[32], applied[32], zeroed[32], sent[32],
      recv[32];

  util_format_bytes(v->size_bytes, size, sizeof size);
  util_format_bytes(st->sync == SEC_SYNC_IN_SYNC ? 0 : st->out_of_sync_bytes,
                    oos, sizeof oos);
  util_format_bytes(v->ap.queued_bytes, lag, sizeof lag);
  util_format_bytes(v->ap.applied_bytes, applied, sizeof applied);
  util_format_bytes(v->ap.zeroed_bytes, zeroed, sizeof zeroed);
  util_format_bytes(st->bytes_sent, sent, sizeof sent);
  util_format_bytes(st->bytes_received, recv, sizeof recv);

  evbuffer_add_printf(out, "role:        secondary\n");
  evbuffer_add_printf(out, "volume:      %s (%s)%s\n",
                      replica_path(s->replica), size,
                      meta_get(s->meta)->consistent ? ", consistent" : "");
  if (v->peer != NULL)
    evbuffer_add_printf(out, "connection:  %s to primary %s (%s), %s mode\n",
                        v->connection, v->peer, v->peer_addr, v->mode);
  else
    evbuffer_add_printf(out, "connection:  %s, listening on port %d\n",
                        v->connection, s->listen_port);
  evbuffer_add_printf(out, "sync:        %s, %.1f%% done, %s out of sync\n",
                      v->sync, v->done_percent, oos);
  evbuffer_add_printf(out, "applied:     %s written, %s zeroed, %llu ops "
                      "acked, epoch %llu\n", applied, zeroed,
                      (unsigned long long)st->writes_acked,
                      (unsigned long long)v->ap.epoch);
  evbuffer_add_printf(out, "lag:         %s (%u ops queued, %u in flight)\n",
                      lag, v->ap.queued, v->ap.inflight);
  evbuffer_add_printf(out, "traffic:     %s sent, %s received\n", sent,
                      recv);
  evbuffer_add_printf(out, "last error:  %s\n",
                      st->last_error[0] != '\0' ? st->last_error : "none");
}

int
status_control(void *opaque, int argc, char **argv, struct evbuffer *out)
{
  const struct secondary *s = opaque;
  struct status_view v;
  bool json = false;
  int i;

  if (argc < 1) {
    evbuffer_add_printf(out, "empty command; try: status [--json]\n");
    return -1;
  }
  if (strcmp(argv[0], "status") != 0) {
    evbuffer_add_printf(out, "unknown command %s; try: status [--json]\n",
                        argv[0]);
    return -1;
  }
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
