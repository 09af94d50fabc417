/* Generation identifiers (DRBD's data-generation UUIDs), no I/O.
 *
 * Each side keeps:
 *   current    the generation of the data it holds now (0: none yet)
 *   bitmap     the last generation both sides shared, set when this side
 *              started a new generation while apart from its peer; the
 *              write-intent bitmap records every block changed since then
 *              (0: the bitmap is not tracking a divergence)
 *   history[]  older generations, newest first
 *
 * Comparing two sides' identifiers tells whether they hold the same data,
 * which one is newer and whether its bitmap covers the difference, or that
 * both changed independently (split brain) or are unrelated. */
#ifndef DUPLEX_GEN_H
#define DUPLEX_GEN_H

#include <stdint.h>

#define GEN_HISTORY 2

struct gen_ids {
  uint64_t current;
  uint64_t bitmap;
  uint64_t history[GEN_HISTORY];
};

enum gen_decision {
  GEN_BOTH_FRESH,      /* neither side has data of any generation */
  GEN_NO_SYNC,         /* same generation: only bitmap bits (a crashed
                          primary's in-flight regions) need a resync */
  GEN_SOURCE_BITMAP,   /* local is newer; local bitmap covers the change */
  GEN_TARGET_BITMAP,   /* peer is newer; its bitmap covers the change */
  GEN_SOURCE_FULL,     /* local is newer; the whole volume must go */
  GEN_TARGET_FULL,     /* peer is newer; the whole volume must come */
  GEN_SPLIT_BRAIN,     /* both changed since their last common generation */
  GEN_UNRELATED,       /* no common generation: different data sets */
};

/* The decision, seen from `local`.  gen_compare(a, b) and gen_compare(b, a)
 * always mirror each other (SOURCE <-> TARGET, the rest unchanged). */
enum gen_decision gen_compare(const struct gen_ids *local,
                              const struct gen_ids *peer);
const char *gen_decision_name(enum gen_decision d);

/* This side starts writing without its peer: a new generation `fresh`
 * (non-zero, random).  The first divergence moves current into bitmap;
 * later ones push current into history. */
void gen_new_current(struct gen_ids *g, uint64_t fresh);
/* A resync from this side finished: the peer now holds `current`. */
void gen_sync_done_source(struct gen_ids *g);
/* A resync to this side finished: adopt the source's current. */
void gen_sync_done_target(struct gen_ids *g, const struct gen_ids *source);

/* "0123456789abcdef" (16 hex digits) into out[17]. */
void gen_format(uint64_t id, char out[17]);

#endif
