/* The primary's data generation on disk (DESIGN.md "Metadata"): a new one
 * before the first change the secondary does not get, the one the
 * secondary adopted after a resync or restore, and what a failed
 * superblock write means for both. */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "log.h"

#define META_LOG_INTERVAL_MS 10000

/* Rate limit of gen_meta_failed's log lines. */
static uint64_t meta_logged_ms;
static uint64_t meta_unlogged;

uint64_t
primary_random_id(void)
{
  uint8_t b[16];
  uint64_t v = 0;
  int i;
  do {
    util_uuid_generate(b);
    for (i = 0; i < 8; i++)
      v = v << 8 | b[i];
  } while (v == 0);
  return v;
}

/* A superblock write failed: log it (the first time, then at most every
 * META_LOG_INTERVAL_MS while the failures go on) and keep the reason for
 * status until a superblock write succeeds again. */
static void
gen_meta_failed(struct primary *p, const char *what, int err,
                 const char *consequence)
{
  uint64_t now = util_now_ms();

  p->meta_write_errors++;
  snprintf(p->meta_error, sizeof p->meta_error, "metadata %s: %s: %s; %s",
           p->cfg.meta, what, strerror(err), consequence);
  if (meta_logged_ms && now - meta_logged_ms < META_LOG_INTERVAL_MS) {
    meta_unlogged++;
    return;
  }
  if (meta_unlogged)
    log_error("primary: %s (%llu more failures since the last report)",
              p->meta_error, (unsigned long long)meta_unlogged);
  else
    log_error("primary: %s", p->meta_error);
  meta_logged_ms = now;
  meta_unlogged = 0;
}

static void
gen_meta_ok(struct primary *p)
{
  if (p->meta_error[0])
    log_info("primary: metadata %s: written again", p->cfg.meta);
  p->meta_error[0] = '\0';
  meta_logged_ms = 0;
  meta_unlogged = 0;
}

/* Generations are what tells, after a crash, which side holds changes the
 * other lacks: a change made before its generation is on disk could hide a
 * split brain.  So the new generation is written and synced here, and only
 * on success may the caller start the change; on failure p->gen and
 * need_new_gen stay as they were, the caller fails the change and the next
 * one tries again. */
int
primary_new_generation(struct primary *p)
{
  struct meta_sb sb = *meta_get(p->meta);
  struct gen_ids next = p->gen;
  char id[17];
  int rc;

  gen_new_current(&next, primary_random_id());
  sb.gen = next;
  if ((rc = meta_write(p->meta, &sb)) < 0) {
    gen_meta_failed(p, "cannot record a new data generation", -rc,
                     "writes while the secondary is away fail (EIO) until "
                     "it is recorded, each one tries again; check the disk "
                     "or file system holding the metadata");
    return -1;
  }
  p->gen = next;
  p->need_new_gen = false;
  gen_meta_ok(p);
  gen_format(p->gen.current, id);
  log_info("primary: new data generation %s (writes continue without the "
           "secondary)", id);
  return 0;
}

/* Persist the generation identifiers (after a resync finished).  On failure
 * p->gen keeps the new identifiers; the next superblock write (a new
 * generation, the shutdown) carries them.  Until then the file holds the
 * old ones, which are safe: at worst a later connect resyncs more. */
void
primary_save_generation(struct primary *p)
{
  struct meta_sb sb = *meta_get(p->meta);
  int rc;

  sb.gen = p->gen;
  if ((rc = meta_write(p->meta, &sb)) < 0) {
    gen_meta_failed(p, "cannot record the generation the secondary "
                     "adopted", -rc, "it is written with the next "
                     "superblock update; after a crash before that, the "
                     "next connect may resync more than needed (up to the "
                     "whole volume); check the disk or file system holding "
                     "the metadata");
    return;
  }
  gen_meta_ok(p);
}

void
primary_in_sync(struct primary *p)
{
  if (p->gen.bitmap) {
    gen_sync_done_source(&p->gen);
    primary_save_generation(p);
  }
  p->crash_recovery = false;
}
