/* Tracepoint records of block:block_rq_complete to changed ranges (internal.h).
 * No I/O: the format text and the records are given. */
#include <stdio.h>
#include <string.h>

#include <linux/perf_event.h>
#include <traceevent/event-parse.h>

#include "util.h"

#include "internal.h"

#define SECTOR 512u

uint32_t
trace_kdev(unsigned major, unsigned minor)
{
  return (uint32_t)major << 20 | (minor & 0xfffffu);
}

/* Find a field of one of the allowed sizes (0 ends the list). */
static int
layout_field(struct tep_event *ev, const char *name, const unsigned *sizes,
             struct trace_field *f, unsigned *min_len, char *err,
             size_t errlen)
{
  struct tep_format_field *tf = tep_find_field(ev, name);
  unsigned i;

  if (!tf) {
    snprintf(err, errlen, "tracepoint block_rq_complete has no field %s",
             name);
    return -1;
  }
  for (i = 0; sizes[i]; i++)
    if ((unsigned)tf->size == sizes[i])
      break;
  if (!sizes[i] || tf->offset < 0 || (tf->flags & TEP_FIELD_IS_DYNAMIC)) {
    snprintf(err, errlen, "tracepoint block_rq_complete: field %s has an "
             "unexpected layout (offset %d, size %d)", name, tf->offset,
             tf->size);
    return -1;
  }
  f->off = (unsigned)tf->offset;
  f->size = (unsigned)tf->size;
  if (f->off + f->size > *min_len)
    *min_len = f->off + f->size;
  return 0;
}

int
trace_layout_parse(const char *format, size_t len, struct trace_layout *l,
                   char *err, size_t errlen)
{
  static const unsigned dev_sizes[] = { 4, 0 };
  static const unsigned sector_sizes[] = { 8, 0 };
  static const unsigned nr_sizes[] = { 4, 0 };
  static const unsigned error_sizes[] = { 4, 0 };
  static const unsigned rwbs_sizes[] = { 6, 8, 10, 16, 0 };
  struct tep_handle *tep = tep_alloc();
  struct tep_event *ev = NULL;
  enum tep_errno rc;
  int ret = -1;

  memset(l, 0, sizeof *l);
  if (!tep) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  rc = tep_parse_event(tep, format, len, "block");
  if (rc == 0 && tep_get_events_count(tep) == 1)
    ev = tep_get_event(tep, 0);
  if (rc != 0 || !ev) {
    char why[128];
    tep_strerror(tep, rc, why, sizeof why);
    snprintf(err, errlen, "cannot parse the tracepoint's format: %s", why);
    goto out;
  }
  if (!ev->name || strcmp(ev->name, "block_rq_complete") != 0) {
    snprintf(err, errlen, "format of tracepoint %s, not block_rq_complete",
             ev->name ? ev->name : "(unnamed)");
    goto out;
  }
  if (layout_field(ev, "dev", dev_sizes, &l->dev, &l->min_len, err,
                   errlen) == -1 ||
      layout_field(ev, "sector", sector_sizes, &l->sector, &l->min_len, err,
                   errlen) == -1 ||
      layout_field(ev, "nr_sector", nr_sizes, &l->nr_sector, &l->min_len,
                   err, errlen) == -1 ||
      layout_field(ev, "error", error_sizes, &l->error, &l->min_len, err,
                   errlen) == -1 ||
      layout_field(ev, "rwbs", rwbs_sizes, &l->rwbs, &l->min_len, err,
                   errlen) == -1)
    goto out;
  ret = 0;
out:
  tep_free(tep); /* and the event parsed into it */
  return ret;
}

static uint64_t
read_num(const unsigned char *p, unsigned size)
{
  uint64_t v = 0;
  /* Records are in the host's byte order (the tracing kernel's). */
  switch (size) {
  case 4: {
    uint32_t x;
    memcpy(&x, p, 4);
    v = x;
    break;
  }
  case 8:
    memcpy(&v, p, 8);
    break;
  default:
    break;
  }
  return v;
}

/* rwbs (blk_fill_rwbs): an optional 'F' for a preflush, the operation
 * ('W' write, 'R' read, 'D' discard, "DE" secure erase, 'F' flush, 'N'
 * anything else, write-zeroes among them), then flags ('F' FUA, 'A'
 * read-ahead, 'S' sync, 'M' meta). */
static void
decode_rwbs(const char *s, size_t n, struct trace_change *c)
{
  size_t i = 0;
  char op;

  if (n >= 2 && s[0] == 'F' && s[1] && strchr("WRDNF", s[1])) {
    c->preflush = true;
    i = 1;
  }
  op = i < n ? s[i] : '\0';
  if (op)
    i++;
  for (; i < n && s[i]; i++)
    if (s[i] == 'F')
      c->fua = true;
  switch (op) {
  case 'W': c->kind = TRACE_WRITE; break;
  case 'D': c->kind = TRACE_DISCARD; break;
  case 'F': c->kind = TRACE_FLUSH; break;
  case 'R': c->kind = TRACE_NONE; break;
  case 'N': c->kind = TRACE_OTHER; break;
  default:
    /* Unknown: changes data unless it has no range (conservative). */
    c->kind = TRACE_OTHER;
    break;
  }
}

int
trace_stat_sectors(const char *text, size_t len, uint64_t *sectors)
{
  uint64_t f[17];
  size_t i = 0, n = 0;

  while (n < 17) {
    uint64_t v = 0;
    bool digits = false;
    while (i < len && (text[i] == ' ' || text[i] == '\t'))
      i++;
    while (i < len && text[i] >= '0' && text[i] <= '9') {
      if (v > (UINT64_MAX - 9) / 10)
        return -1;
      v = v * 10 + (uint64_t)(text[i] - '0');
      digits = true;
      i++;
    }
    if (!digits)
      break;
    f[n++] = v;
  }
  if (n < 7)
    return -1;
  *sectors = f[6] + (n >= 14 ? f[13] : 0);
  return 0;
}

int
trace_decode(const struct trace_layout *l, const void *raw, size_t len,
             struct trace_change *out)
{
  const unsigned char *p = raw;
  uint64_t sector, nr;

  memset(out, 0, sizeof *out);
  if (!raw || l->min_len == 0 || len < l->min_len)
    return -1;
  out->dev = (uint32_t)read_num(p + l->dev.off, l->dev.size);
  sector = read_num(p + l->sector.off, l->sector.size);
  nr = read_num(p + l->nr_sector.off, l->nr_sector.size);
  out->error = (int)(int32_t)read_num(p + l->error.off, l->error.size);
  /* A request without data (a flush) carries sector (sector_t)-1. */
  if (nr > 0) {
    if (sector > UINT64_MAX / SECTOR - nr)
      return -1;
    out->off = sector * SECTOR;
    out->len = nr * SECTOR;
  }
  decode_rwbs((const char *)p + l->rwbs.off, l->rwbs.size, out);
  if (out->kind == TRACE_FLUSH && out->len > 0)
    out->kind = TRACE_OTHER;  /* a flush with data is not a plain flush */
  if (out->kind != TRACE_FLUSH && out->kind != TRACE_NONE && out->len == 0)
    out->kind = out->preflush ? TRACE_FLUSH : TRACE_NONE;
  return 0;
}

int
trace_ring_next(const uint8_t *data, uint64_t size, uint64_t head,
                uint64_t *tail, uint8_t *scratch, size_t scratch_len,
                const uint8_t **rec, size_t *rec_len)
{
  uint64_t pos = *tail, avail = head - pos, at;
  struct perf_event_header h;
  size_t first;

  if (pos == head)
    return 0;
  if (size == 0 || (size & (size - 1)) || avail > size ||
      avail < sizeof h)
    return -1;
  /* The header may wrap too. */
  at = pos & (size - 1);
  first = (size_t)MIN(sizeof h, size - at);
  memcpy(&h, data + at, first);
  if (first < sizeof h)
    memcpy((uint8_t *)&h + first, data, sizeof h - first);
  if (h.size < sizeof h || h.size > avail)
    return -1;
  if (at + h.size <= size) {
    *rec = data + at;
  } else {
    if (h.size > scratch_len)
      return -1;
    first = (size_t)(size - at);
    memcpy(scratch, data + at, first);
    memcpy(scratch + first, data, h.size - first);
    *rec = scratch;
  }
  *rec_len = h.size;
  *tail = pos + h.size;
  return 1;
}

enum trace_rec
trace_perf_record(const struct trace_layout *l, const uint8_t *rec,
                  size_t len, struct trace_change *c, uint64_t *lost)
{
  struct perf_event_header h;
  uint32_t raw_size;
  uint64_t n;

  if (len < sizeof h)
    return TRACE_REC_BAD;
  memcpy(&h, rec, sizeof h);
  switch (h.type) {
  case PERF_RECORD_SAMPLE:
    /* sample_type PERF_SAMPLE_RAW only: u32 size, then the raw record. */
    if (len < sizeof h + 4)
      return TRACE_REC_BAD;
    memcpy(&raw_size, rec + sizeof h, 4);
    if (raw_size > len - sizeof h - 4)
      return TRACE_REC_BAD;
    if (trace_decode(l, rec + sizeof h + 4, raw_size, c) == -1)
      return TRACE_REC_BAD;
    return TRACE_REC_CHANGE;
  case PERF_RECORD_LOST: /* u64 id, u64 lost */
    if (len < sizeof h + 16)
      return TRACE_REC_BAD;
    memcpy(&n, rec + sizeof h + 8, 8);
    *lost = n ? n : 1;
    return TRACE_REC_LOST;
  case PERF_RECORD_LOST_SAMPLES: /* u64 lost */
    if (len < sizeof h + 8)
      return TRACE_REC_BAD;
    memcpy(&n, rec + sizeof h, 8);
    *lost = n ? n : 1;
    return TRACE_REC_LOST;
  default:
    return TRACE_REC_OTHER;
  }
}
