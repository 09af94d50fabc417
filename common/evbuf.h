/* Appending a few bytes (a frame or reply header) behind a referenced
 * block.  evbuffer_add sizes a new chain after the last one, and the last
 * one of a reference is the referenced block's length: a 16-byte header
 * behind a 1 MiB reference would allocate 2 MiB.  Reserved space is sized
 * to what is asked for. */
#ifndef DUPLEX_EVBUF_H
#define DUPLEX_EVBUF_H

#include <string.h>

#include <event2/buffer.h>

static inline int
evbuf_add_small(struct evbuffer *out, const void *data, size_t len)
{
  struct evbuffer_iovec v;

  if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) < 1)
    return -1;
  memcpy(v.iov_base, data, len);
  v.iov_len = len;
  return evbuffer_commit_space(out, &v, 1);
}

#endif
