/* The handshake of a replication link: HELLO checks, the verdict of the
 * generation identifiers (identity.c), HELLO_REPLY and, when the operator
 * chose to discard this side's changes, the BITMAP frames that tell the
 * primary which blocks this side changed.
 *
 * Nothing is touched before the verdict: a primary whose data is refused
 * (split brain, newer or unrelated data here) gets its HELLO_REPLY, so it
 * reaches the same verdict from its side, but no metadata change and no
 * write. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "frame.h"
#include "log.h"

#define HELLO_BITMAP_CHUNK (1u << 20)   /* BITMAP frame payload */

static const char *
hello_mode_name(int mode)
{
  switch (mode) {
  case DUPLEX__MODE__MODE_SYNC: return "sync";
  case DUPLEX__MODE__MODE_ASYNC: return "async";
  default: return "unknown";
  }
}

static bool
hello_uuid_is_zero(const uint8_t uuid[16])
{
  static const uint8_t zero[16];

  return memcmp(uuid, zero, 16) == 0;
}

/* Adopt the primary's volume identity in the metadata. */
static int
hello_meta_adopt(struct secondary *s, const Duplex__Hello *h,
                 char *err, size_t errlen)
{
  const struct meta_sb *old = meta_get(s->meta);
  struct meta_sb sb = *old;
  int r;

  if (memcmp(sb.volume_uuid, h->volume_uuid.data, 16) != 0) {
    memcpy(sb.volume_uuid, h->volume_uuid.data, 16);
    sb.consistent = false;
  }
  sb.size_bytes = h->size_bytes;
  sb.block_size = BDEV_ALIGN;
  sb.role = META_ROLE_SECONDARY;
  /* A primary follows again: what this side held at a handover is no
   * longer the whole story (its status stops offering a promotion). */
  sb.handover = false;
  /* The primary's bitmap grain, so that a duplex-primary started on this
   * metadata (failover) tracks changes the same way; not while the bitmap
   * still holds bits counted in the old grain. */
  if (h->bitmap_grain != 0 && !s->bitmap_dirty)
    sb.bitmap_grain = h->bitmap_grain;
  if (memcmp(sb.volume_uuid, old->volume_uuid, 16) == 0 &&
      sb.consistent == old->consistent && sb.size_bytes == old->size_bytes &&
      sb.block_size == old->block_size && sb.role == old->role &&
      sb.bitmap_grain == old->bitmap_grain && sb.handover == old->handover)
    return 0;
  r = meta_write(s->meta, &sb);
  if (r < 0) {
    snprintf(err, errlen, "secondary: metadata %s: write failed: %s; check "
             "the disk holding it", s->cfg.meta, strerror(-r));
    return -1;
  }
  return 0;
}

/* The HELLO_REPLY fields every verdict shares. */
static void
hello_reply_init(struct secondary *s, const struct meta_sb *sb,
                 Duplex__HelloReply *rep, Duplex__GenIds *gen,
                 uint64_t *hist)
{
  duplex__hello_reply__init(rep);
  rep->proto_version = DUPLEX_PROTO_VERSION;
  rep->replica_size_bytes = replica_size(s->replica);
  if (!hello_uuid_is_zero(sb->volume_uuid)) {
    rep->replica_volume_uuid.data = (uint8_t *)sb->volume_uuid;
    rep->replica_volume_uuid.len = 16;
    rep->consistent = sb->consistent;
  }
  rep->node_name = s->node_name;
  identity_to_wire(&sb->gen, gen, hist);
  rep->gen = gen;
  rep->discard_local = sb->discard_local;
  rep->bitmap_needs_checksums = s->al_uncertain;
}

/* The generations say this primary's data must not land here: answer the
 * HELLO (the primary sees the same decision and closes), keep the link
 * open but refuse every data frame, and wait for the operator. */
static int
hello_refused(struct secondary *s, struct link *l, const Duplex__Hello *h,
              enum identity_verdict v, const struct gen_ids *peer)
{
  Duplex__HelloReply rep;
  Duplex__GenIds gen;
  uint64_t hist[GEN_HISTORY];
  char msg[1024];

  identity_refusal_message(s, v, link_peer_cn(l), peer, msg, sizeof msg);
  status_error(s, "%s", msg);   /* logged once per connection */
  s->st.refusal_error = true;
  s->st.refused = true;
  s->st.split_brain = v == IDENTITY_SPLIT_BRAIN;
  s->st.mode = h->mode;
  s->st.sync = SEC_SYNC_UNKNOWN;
  hello_reply_init(s, meta_get(s->meta), &rep, &gen, hist);
  rep.discard_local = false;    /* or it would not be refused */
  link_send_frame(l, FRAME_HELLO_REPLY, &rep.base, NULL, 0);
  link_hello_done(l, h->size_bytes, meta_get(s->meta)->consistent, true);
  return 0;
}

/* After a HELLO_REPLY with discard_local: this side's changed blocks, in
 * BITMAP frames of at most HELLO_BITMAP_CHUNK bytes. */
static int
hello_send_bitmap(struct link *l, const uint8_t *img, size_t len)
{
  Duplex__Bitmap b = DUPLEX__BITMAP__INIT;
  size_t off, n;

  for (off = 0; off < len; off += n) {
    n = len - off < HELLO_BITMAP_CHUNK ? len - off : HELLO_BITMAP_CHUNK;
    b.offset = off;
    b.length = (uint32_t)n;
    b.last = off + n == len;
    if (link_send_frame(l, FRAME_BITMAP, &b.base, img + off,
                        (uint32_t)n) == -1) {
      link_close(l, true, "cannot queue the bitmap (%zu bytes)", len);
      return -1;
    }
  }
  return 0;
}

int
hello_handle(struct secondary *s, struct link *l, const Duplex__Hello *h)
{
  Duplex__HelloReply rep;
  Duplex__GenIds gen;
  uint64_t hist[GEN_HISTORY];
  struct meta_sb before;
  struct gen_ids peer;
  enum gen_decision d;
  enum identity_verdict v;
  uint8_t *img = NULL;
  size_t img_len = 0;
  char err[1024], uuid[37];
  bool consistent;
  int r;

  if (h->proto_version != DUPLEX_PROTO_VERSION) {
    link_refuse(l, EPROTONOSUPPORT, "protocol version %u is not supported; "
                "this secondary speaks version %u; run the same duplex "
                "version on both sides", h->proto_version,
                DUPLEX_PROTO_VERSION);
    return -1;
  }
  if (h->block_size != BDEV_ALIGN) {
    link_refuse(l, EINVAL, "block size %u is not supported; this secondary "
                "applies %u-byte blocks", h->block_size, BDEV_ALIGN);
    return -1;
  }
  if (h->size_bytes == 0 || h->size_bytes % BDEV_ALIGN != 0) {
    link_refuse(l, EINVAL, "volume size %llu is not a positive multiple of "
                "%u", (unsigned long long)h->size_bytes, BDEV_ALIGN);
    return -1;
  }
  if (apply_failed(s->apply)) {
    link_refuse(l, EIO, "replication is paused after an I/O error on the "
                "replica %s (%s); fix the disk, then run `duplexctl "
                "--control %s resume` or restart duplex-secondary",
                replica_path(s->replica), s->st.pause_reason,
                s->cfg.control != NULL ? s->cfg.control : "SOCKET");
    return -1;
  }

  /* Which way the data may flow, before anything is touched. */
  identity_from_wire(h->gen, &peer);
  d = gen_compare(&meta_get(s->meta)->gen, &peer);
  v = identity_verdict(d, meta_get(s->meta)->discard_local);
  s->st.have_decision = true;
  s->st.decision = d;
  s->st.peer_gen = peer;
  if (v != IDENTITY_ACCEPT)
    return hello_refused(s, l, h, v, &peer);

  r = replica_prepare(s->replica, h->size_bytes, err, sizeof err);
  if (r == -ENOSPC) {
    status_error(s, "%s", err);
    link_refuse(l, ENOSPC, "replica too small: %s is %llu bytes, the "
                "primary's volume %llu bytes", replica_path(s->replica),
                (unsigned long long)replica_size(s->replica),
                (unsigned long long)h->size_bytes);
    return -1;
  }
  if (r < 0) {
    status_error(s, "%s", err);
    link_refuse(l, -r, "%s", err);
    return -1;
  }
  snap_replica_ready(s->snap);
  before = *meta_get(s->meta);
  if (before.discard_local &&
      identity_bitmap_image(s, d, &peer, h->size_bytes, h->bitmap_grain,
                            &img, &img_len, err, sizeof err) == -1) {
    link_refuse(l, EINVAL, "cannot send this side's bitmap: %s", err);
    return -1;
  }
  if (hello_meta_adopt(s, h, err, sizeof err) == -1) {
    free(img);
    status_error(s, "%s", err);
    link_refuse(l, EIO, "%s", err);
    return -1;
  }

  consistent = meta_get(s->meta)->consistent;
  s->st.mode = h->mode;
  s->st.size_bytes = h->size_bytes;
  s->st.sync = SEC_SYNC_UNKNOWN;
  s->st.connects++;
  s->st.split_brain = false;
  s->st.refused = false;
  if (s->st.refusal_error) {
    s->st.last_error[0] = '\0';
    s->st.refusal_error = false;
  }

  /* The reply describes the replica as it was before this HELLO. */
  hello_reply_init(s, &before, &rep, &gen, hist);
  rep.bitmap_bytes = img_len;
  link_send_frame(l, FRAME_HELLO_REPLY, &rep.base, NULL, 0);
  link_hello_done(l, h->size_bytes, consistent, false);
  if (img != NULL) {
    r = hello_send_bitmap(l, img, img_len);
    free(img);
    if (r == -1)
      return -1;
  }

  util_uuid_format(h->volume_uuid.data, uuid);
  log_info("secondary: primary %s (%s, node %s) connected: volume %s, %llu "
           "bytes, %s mode; replica %s %s; generations: %s%s",
           link_peer_cn(l), link_peer_addr(l),
           h->node_name != NULL && h->node_name[0] != '\0' ? h->node_name
                                                           : "?",
           uuid, (unsigned long long)h->size_bytes, hello_mode_name(h->mode),
           replica_path(s->replica),
           consistent ? "consistent" : "needs a full sync",
           gen_decision_name(d),
           before.discard_local ? " (discard-local: this side's changes "
                                  "are overwritten)" : "");
  return 0;
}
