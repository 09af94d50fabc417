/* The secondary's data identity, kept in the metadata: generation
 * identifiers, the verdict on a primary's HELLO, the persistent bitmap left
 * by a primary that ran on this volume, and the operator's split-brain
 * resolution.
 *
 * Roles belong to the process, identity to the metadata: during an outage a
 * duplex-primary may run on the secondary's volume and metadata.  It leaves
 * a newer generation and a bitmap of the blocks it changed.  When the
 * original primary returns the generations tell (common/gen.c) whether that
 * is a split brain or this side is simply newer; either way nothing is
 * overwritten until the operator runs `resolve --discard-local` here, after
 * which this side's bitmap is handed to the primary so the resync covers the
 * blocks changed on either side.  The bitmap stays on disk untouched until a
 * resync to this side has completed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "log.h"

enum identity_verdict
identity_verdict(enum gen_decision d, bool discard_local)
{
  switch (d) {
  case GEN_BOTH_FRESH:
  case GEN_NO_SYNC:
  case GEN_TARGET_BITMAP:
  case GEN_TARGET_FULL:
    return IDENTITY_ACCEPT;
  case GEN_SPLIT_BRAIN:
    return discard_local ? IDENTITY_ACCEPT : IDENTITY_SPLIT_BRAIN;
  case GEN_SOURCE_BITMAP:
  case GEN_SOURCE_FULL:
    return discard_local ? IDENTITY_ACCEPT : IDENTITY_NEWER;
  case GEN_UNRELATED:
    return discard_local ? IDENTITY_ACCEPT : IDENTITY_UNRELATED;
  }
  return IDENTITY_UNRELATED;
}

size_t
identity_image_len(uint64_t bits)
{
  return (size_t)((bits + 63) / 64 * 8);
}

/* Does the metadata's bitmap have any bit set? */
static int
identity_scan_bitmap(struct secondary *s, bool *dirty)
{
  size_t len = meta_bitmap_image_len(s->meta), i;
  uint8_t *img;
  int r;

  *dirty = false;
  if (len == 0)
    return 0;
  img = malloc(len);
  if (img == NULL)
    return -ENOMEM;
  r = meta_bitmap_read(s->meta, img, len);
  for (i = 0; r == 0 && i < len; i++)
    if (img[i] != 0) {
      *dirty = true;
      break;
    }
  free(img);
  return r;
}

/* Metadata left by a primary that did not stop cleanly: the regions in
 * its activity log may hold writes its bitmap does not show (the bitmap
 * is written lazily; the log is what covers writes in flight).  Mark them
 * in the bitmap, as the primary's own recovery does, so that a later
 * resolve --discard-local resyncs them too, comparing hashes (the log is
 * kept until then: s->al_uncertain).  Returns the
 * number of regions marked, or -errno. */
static int
identity_fold_activity_log(struct secondary *s)
{
  const struct meta_sb *sb = meta_get(s->meta);
  struct meta_al al;
  uint64_t bits = sb->bitmap_bits, grain = sb->bitmap_grain, size;
  size_t len;
  uint8_t *img;
  unsigned i;
  int r;

  r = meta_al_read(s->meta, &al);
  if (r < 0 || al.n == 0)
    return r;
  if (bits == 0 || grain == 0)
    return -EINVAL;
  size = sb->size_bytes != 0 ? sb->size_bytes : bits * grain;
  len = meta_bitmap_image_len(s->meta);
  img = calloc(1, len > 0 ? len : 1);
  if (img == NULL)
    return -ENOMEM;
  r = meta_bitmap_read(s->meta, img, len);
  for (i = 0; r == 0 && i < al.n; i++) {
    uint64_t start = al.extents[i] << al.extent_shift, end, b;
    if (start >= size)
      continue;
    end = MIN(size, start + ((uint64_t)1 << al.extent_shift));
    for (b = start / grain; b < (end + grain - 1) / grain && b < bits; b++)
      img[b / 8] |= (uint8_t)(1u << (b % 8));
  }
  if (r == 0)
    r = meta_bitmap_write(s->meta, img, 0, meta_bitmap_pages(s->meta));
  if (r == 0)
    r = meta_sync(s->meta);
  free(img);
  /* The log stays until a resync to this side completes: it says that
   * those bits are only possibly changed (the primary compares hashes). */
  if (r == 0)
    s->al_uncertain = true;
  return r < 0 ? r : (int)i;
}

int
identity_start(struct secondary *s, char *err, size_t errlen)
{
  struct meta_sb sb = *meta_get(s->meta);
  bool dirty;
  int r;

  if (sb.role == META_ROLE_PRIMARY) {
    log_info("secondary: metadata %s was last used by a primary; taking "
             "the secondary role (its generation and bitmap are kept until "
             "a resync to this side completes)", s->cfg.meta);
    r = identity_fold_activity_log(s);
    if (r < 0) {
      snprintf(err, errlen, "recovering the activity log the primary left: "
               "%s", strerror(-r));
      return -1;
    }
    if (r > 0)
      log_warn("secondary: metadata %s: the primary did not stop cleanly; "
               "the %d regions it was writing are marked as changed here "
               "(a resolve --discard-local resyncs them)", s->cfg.meta, r);
    sb.role = META_ROLE_SECONDARY;
    /* A primary's volume always holds a state of its own writes (a
     * primary is never a resync target): it is a consistent replica, worth
     * a before-resync snapshot when a resync is about to overwrite it. */
    sb.consistent = true;
    r = meta_write(s->meta, &sb);
    if (r < 0) {
      snprintf(err, errlen, "write failed: %s", strerror(-r));
      return -1;
    }
  }
  r = identity_scan_bitmap(s, &dirty);
  if (r < 0) {
    /* Only an optimisation rides on it: assume bits are set. */
    log_warn("secondary: metadata %s: cannot read the bitmap: %s; it is "
             "cleared after the next completed resync", s->cfg.meta,
             strerror(-r));
    dirty = true;
  }
  s->bitmap_dirty = dirty;
  if (dirty)
    log_info("secondary: metadata %s: the bitmap records blocks changed "
             "here by a primary; they are kept until a resync to this side "
             "completes", s->cfg.meta);
  return 0;
}

void
identity_from_wire(const Duplex__GenIds *w, struct gen_ids *g)
{
  size_t i;

  memset(g, 0, sizeof *g);
  if (w == NULL)
    return;
  g->current = w->current;
  g->bitmap = w->bitmap;
  for (i = 0; i < w->n_history && i < GEN_HISTORY; i++)
    g->history[i] = w->history[i];
}

void
identity_to_wire(const struct gen_ids *g, Duplex__GenIds *w, uint64_t *hist)
{
  size_t n = 0, i;

  duplex__gen_ids__init(w);
  w->current = g->current;
  w->bitmap = g->bitmap;
  for (i = 0; i < GEN_HISTORY; i++) {
    hist[i] = g->history[i];
    if (g->history[i] != 0)
      n = i + 1;
  }
  w->n_history = n;
  w->history = hist;
}

static bool
identity_in(const struct gen_ids *g, uint64_t id)
{
  int i;

  if (id == 0)
    return false;
  if (g->bitmap == id)
    return true;
  for (i = 0; i < GEN_HISTORY; i++)
    if (g->history[i] == id)
      return true;
  return false;
}

uint64_t
identity_common_gen(const struct gen_ids *local, const struct gen_ids *peer)
{
  int i;

  if (identity_in(peer, local->bitmap))
    return local->bitmap;
  for (i = 0; i < GEN_HISTORY; i++)
    if (identity_in(peer, local->history[i]))
      return local->history[i];
  return 0;
}

void
identity_refusal_message(const struct secondary *s, enum identity_verdict v,
                         const char *peer, const struct gen_ids *peer_gen,
                         char *out, size_t outlen)
{
  const struct gen_ids *ours = &meta_get(s->meta)->gen;
  const char *sock = s->cfg.control != NULL ? s->cfg.control : "SOCKET";
  char common[17], mine[17], theirs[17];
  uint64_t c = identity_common_gen(ours, peer_gen);

  if (c != 0)
    gen_format(c, common);
  else
    snprintf(common, sizeof common, "(unknown)");
  gen_format(ours->current, mine);
  gen_format(peer_gen->current, theirs);
  switch (v) {
  case IDENTITY_SPLIT_BRAIN:
    snprintf(out, outlen, "secondary: split brain with primary %s: both "
             "sides wrote since generation %s (ours now %s, theirs %s); "
             "nothing is overwritten. Run `duplexctl --control %s resolve "
             "--discard-local` on the side whose changes are to be thrown "
             "away.", peer, common, mine, theirs, sock);
    break;
  case IDENTITY_NEWER:
    snprintf(out, outlen, "secondary holds newer data than primary %s "
             "(generation %s vs %s); refusing to be overwritten. Resolve "
             "with `duplexctl --control %s resolve --discard-local` on the "
             "side whose data is to be discarded", peer, mine, theirs, sock);
    break;
  case IDENTITY_UNRELATED:
    snprintf(out, outlen, "secondary: the replica %s holds data unrelated "
             "to primary %s's (generation %s vs %s, no common history); "
             "refusing to be overwritten. Resolve with `duplexctl --control "
             "%s resolve --discard-local` on the side whose data is to be "
             "discarded",
             replica_path(s->replica), peer, mine, theirs, sock);
    break;
  case IDENTITY_ACCEPT:
    snprintf(out, outlen, "accepted");
    break;
  }
}

void
identity_image_convert(const uint8_t *src, uint64_t src_bits,
                       uint32_t src_grain, uint8_t *dst, uint64_t dst_bits,
                       uint32_t dst_grain)
{
  uint64_t byte, nbytes = (src_bits + 7) / 8, i, first, last, j;
  uint64_t zero = 0;
  unsigned b;

  if (dst_bits == 0)
    return;
  for (byte = 0; byte < nbytes; byte++) {
    /* Bitmaps are mostly clear: skip whole zero words. */
    if (byte % 8 == 0 && byte + 8 <= nbytes &&
        memcmp(src + byte, &zero, 8) == 0) {
      byte += 7;
      continue;
    }
    if (src[byte] == 0)
      continue;
    for (b = 0; b < 8; b++) {
      if (!(src[byte] & (1u << b)))
        continue;
      i = byte * 8 + b;
      if (i >= src_bits)
        break;
      first = i * src_grain / dst_grain;
      last = ((i + 1) * src_grain - 1) / dst_grain;
      if (first >= dst_bits)
        return;                 /* past the peer's volume */
      if (last >= dst_bits)
        last = dst_bits - 1;
      for (j = first; j <= last; j++)
        dst[j / 8] |= (uint8_t)(1u << (j % 8));
    }
  }
}

static bool
identity_grain_ok(uint32_t grain)
{
  return grain >= 512 && (grain & (grain - 1)) == 0;
}

int
identity_bitmap_image(struct secondary *s, enum gen_decision d,
                      const struct gen_ids *peer, uint64_t size_bytes,
                      uint32_t grain, uint8_t **out, size_t *outlen,
                      char *err, size_t errlen)
{
  const struct meta_sb *sb = meta_get(s->meta);
  uint64_t bits, our_bits = sb->bitmap_bits;
  uint8_t *img, *ours = NULL;
  size_t len, our_len;
  bool full;
  int r;

  if (!identity_grain_ok(grain)) {
    snprintf(err, errlen, "bitmap grain %u announced by the primary is not "
             "a power of two of at least 512 bytes", grain);
    return -1;
  }
  bits = size_bytes / grain + (size_bytes % grain != 0);
  len = identity_image_len(bits);
  img = calloc(1, len > 0 ? len : 1);
  if (img == NULL) {
    snprintf(err, errlen, "out of memory for a bitmap of %zu bytes", len);
    return -1;
  }
  /* Our bitmap covers our changes only if it started at the generation the
   * two sides last shared (for source-bitmap: the primary's current one). */
  switch (d) {
  case GEN_SPLIT_BRAIN:
    full = sb->gen.bitmap == 0 ||
           identity_common_gen(&sb->gen, peer) != sb->gen.bitmap;
    break;
  case GEN_SOURCE_FULL:
  case GEN_UNRELATED:
    full = true;
    break;
  default:
    full = false;
    break;
  }
  if (!full && (our_bits == 0 || !identity_grain_ok(sb->bitmap_grain))) {
    /* Nothing recorded: only a split brain or newer data needs one. */
    full = d == GEN_SPLIT_BRAIN || d == GEN_SOURCE_BITMAP;
    our_bits = 0;
  }
  if (full) {
    memset(img, 0xff, bits / 8);
    if (bits % 8 != 0)
      img[bits / 8] = (uint8_t)((1u << (bits % 8)) - 1);
    log_info("secondary: metadata %s: this side's bitmap does not cover "
             "its changes (%s); the primary resyncs the whole volume",
             s->cfg.meta, gen_decision_name(d));
  } else if (our_bits > 0) {
    our_len = meta_bitmap_image_len(s->meta);
    ours = malloc(our_len > 0 ? our_len : 1);
    if (ours == NULL) {
      free(img);
      snprintf(err, errlen, "out of memory for a bitmap of %zu bytes",
               our_len);
      return -1;
    }
    r = meta_bitmap_read(s->meta, ours, our_len);
    if (r < 0) {
      free(ours);
      free(img);
      snprintf(err, errlen, "metadata %s: reading the bitmap: %s",
               s->cfg.meta, strerror(-r));
      return -1;
    }
    identity_image_convert(ours, our_bits, sb->bitmap_grain, img, bits,
                           grain);
    free(ours);
  }
  *out = img;
  *outlen = len;
  return 0;
}

/* Zero the whole bitmap area on disk. */
static int
identity_clear_bitmap(struct secondary *s)
{
  size_t len = meta_bitmap_image_len(s->meta);
  uint8_t *zero;
  int r;

  if (len == 0)
    return 0;
  zero = calloc(1, len);
  if (zero == NULL)
    return -ENOMEM;
  r = meta_bitmap_write(s->meta, zero, 0, meta_bitmap_pages(s->meta));
  free(zero);
  if (r == 0)
    r = meta_sync(s->meta);
  return r;
}

int
identity_sync_done(struct secondary *s, const struct gen_ids *source,
                   bool consistent, bool handover)
{
  const struct meta_sb *old = meta_get(s->meta);
  struct meta_sb sb = *old;
  char cur[17];
  int r;

  if (consistent)
    sb.consistent = true;
  /* Without the source's generation (a progress report saying in_sync)
   * this is no proof the resync that a split brain needs has happened. */
  if (source == NULL)
    goto write;
  gen_sync_done_target(&sb.gen, source);
  sb.discard_local = false;
  if (s->bitmap_dirty) {
    r = identity_clear_bitmap(s);
    if (r < 0) {
      status_error(s, "secondary: metadata %s: clearing the bitmap: %s; "
                   "check the disk holding it", s->cfg.meta, strerror(-r));
      return -1;
    }
    s->bitmap_dirty = false;
    if (s->al_uncertain) {
      struct meta_al empty = { .extent_shift = 22, .n = 0 };
      r = meta_al_write(s->meta, &empty);
      if (r < 0) {
        status_error(s, "secondary: metadata %s: clearing the activity "
                     "log: %s; check the disk holding it", s->cfg.meta,
                     strerror(-r));
        return -1;
      }
      s->al_uncertain = false;
    }
    log_info("secondary: metadata %s: bitmap cleared (the resync covered "
             "the blocks changed here)", s->cfg.meta);
  }
  if (handover && sb.consistent) {
    sb.handover = true;
    sb.handover_ms = util_wall_ns() / 1000000;
  }
write:
  if (memcmp(&sb.gen, &old->gen, sizeof sb.gen) == 0 &&
      sb.consistent == old->consistent &&
      sb.discard_local == old->discard_local &&
      sb.handover == old->handover)
    return 0;
  gen_format(sb.gen.current, cur);
  if (old->discard_local)
    log_info("secondary: split brain resolved: this side's changes were "
             "discarded; now generation %s", cur);
  if (sb.consistent != old->consistent)
    log_info("secondary: replica %s is now consistent (in sync with the "
             "primary), generation %s", replica_path(s->replica), cur);
  else if (memcmp(&sb.gen, &old->gen, sizeof sb.gen) != 0)
    log_info("secondary: replica %s: now generation %s",
             replica_path(s->replica), cur);
  r = meta_write(s->meta, &sb);
  if (r < 0) {
    status_error(s, "secondary: metadata %s: write failed: %s; check the "
                 "disk holding it", s->cfg.meta, strerror(-r));
    return -1;
  }
  if (sb.handover && !old->handover)
    log_info("secondary: the primary handed over (planned switchover) with "
             "everything on replica %s, generation %s: this node may be "
             "promoted now (start duplex-primary on this volume and "
             "metadata; nothing will be resynced)", replica_path(s->replica),
             cur);
  return 0;
}

int
identity_discard_local(struct secondary *s, char *err, size_t errlen)
{
  struct meta_sb sb = *meta_get(s->meta);
  int r;

  if (!sb.discard_local) {
    sb.discard_local = true;
    r = meta_write(s->meta, &sb);
    if (r < 0) {
      snprintf(err, errlen, "metadata %s: write failed: %s", s->cfg.meta,
               strerror(-r));
      return -1;
    }
  }
  return 0;
}
