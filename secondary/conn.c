/* The secondary's replication connection: the connector (common/
 * connector.c) accepts the primary (--listen) or dials it (--peer); each
 * verified stream becomes the active link (link.c).  When dialling, a
 * lost link is dialled again: at once and then backing off, or after
 * SEC_REFUSED_RETRY_MS when the generations refused the primary's data. */
#include "internal.h"

#include "connector.h"
#include "log.h"

static void
conn_stream_cb(struct tls_stream *ts, const char *addr, const char *cn,
               void *arg)
{
  struct secondary *s = arg;

  if (s->stopping) {
    tls_stream_free(ts);
    return;
  }
  if (link_new(s, ts, addr, cn) == NULL) {
    log_warn("secondary: connection with %s: out of memory; dropped", addr);
    tls_stream_free(ts);
    conn_link_freed(s, false);
  }
}

void
conn_link_freed(struct secondary *s, bool accepted)
{
  if (s->conn == NULL || s->stopping || !TAILQ_EMPTY(&s->links))
    return;
  if (accepted && !s->st.refused)
    connector_reset_backoff(s->conn);
  /* A primary that refused our data will not change its mind at once. */
  connector_redial(s->conn, s->st.refused ? SEC_REFUSED_RETRY_MS : 0);
}

int
conn_new(struct secondary *s, int listen_fd, char *err, size_t errlen)
{
  struct connector_config cc = {
    .listen = !s->cfg.dial,
    .peer = s->cfg.listen,
    .listen_fd = listen_fd,
    .tls = &s->cfg.tls,
    .who = "secondary",
    .handshake_timeout_ms = SEC_PEER_TIMEOUT_MS,
    .retry_max_ms = s->cfg.connect_interval_ms,
  };

  return connector_new(s->base, &cc, conn_stream_cb, s, &s->conn, err,
                       errlen);
}
