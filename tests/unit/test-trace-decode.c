/* Unit tests for primary/trace-decode.c: the format of block_rq_complete
 * as two kernel generations print it (6.x with ioprio, 5.x without), and
 * records built the way the kernel lays them out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <linux/perf_event.h>

#include "internal.h"
#include "trace-formats.h"

static const char fmt_other[] =
    "name: block_rq_issue\n"
    "ID: 2108\n"
    "format:\n"
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\n"
    "print fmt: \"%d\", REC->dev\n";

/* A record as the kernel writes it, for either layout. */
static size_t
build(const struct trace_layout *l, unsigned char *buf, uint32_t dev,
      uint64_t sector, uint32_t nr, int32_t error, const char *rwbs)
{
  memset(buf, 0, 64);
  memcpy(buf + l->dev.off, &dev, 4);
  memcpy(buf + l->sector.off, &sector, 8);
  memcpy(buf + l->nr_sector.off, &nr, 4);
  memcpy(buf + l->error.off, &error, 4);
  strncpy((char *)buf + l->rwbs.off, rwbs, l->rwbs.size);
  return 48;
}

static void
test_layouts(void **state)
{
  struct trace_layout n, o;
  char err[256];
  (void)state;
  assert_int_equal(trace_layout_parse(fmt_new, sizeof fmt_new - 1, &n, err,
                                      sizeof err), 0);
  assert_int_equal(n.dev.off, 8);
  assert_int_equal(n.sector.off, 16);
  assert_int_equal(n.nr_sector.off, 24);
  assert_int_equal(n.error.off, 28);
  assert_int_equal(n.rwbs.off, 34);
  assert_int_equal(n.rwbs.size, 10);
  assert_int_equal(n.min_len, 44);
  assert_int_equal(trace_layout_parse(fmt_old, sizeof fmt_old - 1, &o, err,
                                      sizeof err), 0);
  assert_int_equal(o.rwbs.off, 32);
  assert_int_equal(o.rwbs.size, 8);
  assert_int_equal(o.min_len, 40);
}

static void
test_wrong_format_refused(void **state)
{
  struct trace_layout l;
  char err[256];
  (void)state;
  assert_int_equal(trace_layout_parse(fmt_other, sizeof fmt_other - 1, &l,
                                      err, sizeof err), -1);
  assert_non_null(strstr(err, "block_rq_issue"));
  assert_int_equal(trace_layout_parse("garbage", 7, &l, err, sizeof err), -1);
  assert_true(strlen(err) > 0);
}

struct want {
  const char *rwbs;
  uint32_t nr;
  enum trace_kind kind;
  bool preflush, fua;
};

static void
test_rwbs(void **state)
{
  static const struct want w[] = {
    { "W", 8, TRACE_WRITE, false, false },
    { "WS", 8, TRACE_WRITE, false, false },
    { "FWS", 8, TRACE_WRITE, true, false },
    { "FWFS", 8, TRACE_WRITE, true, true },
    { "WFS", 8, TRACE_WRITE, false, true },
    { "WM", 8, TRACE_WRITE, false, false },
    { "R", 8, TRACE_NONE, false, false },
    { "RA", 8, TRACE_NONE, false, false },
    { "RM", 8, TRACE_NONE, false, false },
    { "D", 2048, TRACE_DISCARD, false, false },
    { "DE", 2048, TRACE_DISCARD, false, false },
    { "N", 64, TRACE_OTHER, false, false },
    { "F", 0, TRACE_FLUSH, false, false },
    { "FF", 0, TRACE_FLUSH, true, false },
    { "FS", 0, TRACE_FLUSH, false, false },
    { "FWS", 0, TRACE_FLUSH, true, false }, /* preflush of an empty write */
    { "W", 0, TRACE_NONE, false, false },
    { "?", 8, TRACE_OTHER, false, false },   /* unknown: assume changed */
    { "", 8, TRACE_OTHER, false, false },
  };
  struct trace_layout l;
  unsigned char buf[64];
  char err[256];
  unsigned i;
  (void)state;

  assert_int_equal(trace_layout_parse(fmt_new, sizeof fmt_new - 1, &l, err,
                                      sizeof err), 0);
  for (i = 0; i < sizeof w / sizeof w[0]; i++) {
    struct trace_change c;
    size_t n = build(&l, buf, trace_kdev(7, 3), 100, w[i].nr, 0, w[i].rwbs);
    assert_int_equal(trace_decode(&l, buf, n, &c), 0);
    if (c.kind != w[i].kind || c.preflush != w[i].preflush ||
        c.fua != w[i].fua)
      fail_msg("rwbs \"%s\" nr %u: kind %d preflush %d fua %d", w[i].rwbs,
               w[i].nr, c.kind, c.preflush, c.fua);
    assert_int_equal(c.dev, (7u << 20) | 3);
    assert_int_equal(c.off, w[i].nr ? 100 * 512 : 0); /* no range */
    assert_int_equal(c.len, (uint64_t)w[i].nr * 512);
  }
}

static void
test_ranges_and_errors(void **state)
{
  struct trace_layout l;
  unsigned char buf[64];
  char err[256];
  struct trace_change c;
  size_t n;
  (void)state;

  assert_int_equal(trace_layout_parse(fmt_old, sizeof fmt_old - 1, &l, err,
                                      sizeof err), 0);
  /* A failed write still reports its range. */
  n = build(&l, buf, trace_kdev(259, 1048575), 1ull << 40, 4096, -5, "WS");
  assert_int_equal(trace_decode(&l, buf, n, &c), 0);
  assert_int_equal(c.kind, TRACE_WRITE);
  assert_int_equal(c.error, -5);
  assert_int_equal(c.off, (1ull << 40) * 512);
  assert_int_equal(c.len, 4096 * 512);
  assert_int_equal(c.dev, trace_kdev(259, 1048575));
  /* A flush carries sector (sector_t)-1 and no length. */
  n = build(&l, buf, 1, UINT64_MAX, 0, 0, "FF");
  assert_int_equal(trace_decode(&l, buf, n, &c), 0);
  assert_int_equal(c.kind, TRACE_FLUSH);
  assert_int_equal(c.len, 0);
  /* Too short, a range past 2^64. */
  assert_int_equal(trace_decode(&l, buf, l.min_len - 1, &c), -1);
  n = build(&l, buf, 1, UINT64_MAX / 512, 1, 0, "W");
  assert_int_equal(trace_decode(&l, buf, n, &c), -1);
  n = build(&l, buf, 1, UINT64_MAX / 512 - 1, 1, 0, "W");
  assert_int_equal(trace_decode(&l, buf, n, &c), 0);
  /* An unparsed layout decodes nothing. */
  {
    struct trace_layout zero = { 0 };
    assert_int_equal(trace_decode(&zero, buf, n, &c), -1);
  }
}

/* A perf sample record carrying a raw block_rq_complete record. */
static size_t
sample(const struct trace_layout *l, uint8_t *out, uint32_t dev,
       uint64_t sector, uint32_t nr, const char *rwbs)
{
  unsigned char raw[64];
  uint32_t raw_size = 44; /* the kernel pads size + raw to 8 bytes */
  struct perf_event_header h = { PERF_RECORD_SAMPLE, 0, 0 };

  build(l, raw, dev, sector, nr, 0, rwbs);
  h.size = (uint16_t)(sizeof h + 4 + raw_size);
  memcpy(out, &h, sizeof h);
  memcpy(out + sizeof h, &raw_size, 4);
  memcpy(out + sizeof h + 4, raw, raw_size);
  return h.size;
}

/* Records written into a 256-byte ring at free-running positions, so they
 * wrap (one across the end of its header): every one comes out whole, in
 * order, then the ring is empty. */
static void
test_ring_wraps(void **state)
{
  struct trace_layout l;
  uint8_t ring[256], rec[64], scratch[64];
  const uint8_t *r;
  size_t n, rl;
  uint64_t head, tail, start;
  char err[256];
  struct trace_change c;
  uint64_t lost;
  unsigned i, k;
  (void)state;

  assert_int_equal(trace_layout_parse(fmt_new, sizeof fmt_new - 1, &l, err,
                                      sizeof err), 0);
  for (start = 0; start < 512; start += 4) {
    head = tail = start;
    /* Two samples (56 bytes each) and a LOST record (24 bytes). */
    for (i = 0; i < 3; i++) {
      if (i < 2) {
        n = sample(&l, rec, trace_kdev(7, 0), 8 * (i + 1), 8, "WS");
      } else {
        struct perf_event_header h = { PERF_RECORD_LOST, 0, 24 };
        uint64_t id = 1, cnt = 42;
        memcpy(rec, &h, 8);
        memcpy(rec + 8, &id, 8);
        memcpy(rec + 16, &cnt, 8);
        n = 24;
      }
      for (k = 0; k < n; k++)
        ring[(head + k) % sizeof ring] = rec[k];
      head += n;
    }
    for (i = 0; i < 3; i++) {
      assert_int_equal(trace_ring_next(ring, sizeof ring, head, &tail, scratch,
                                       sizeof scratch, &r, &rl), 1);
      if (i < 2) {
        assert_int_equal(rl, 56);
        assert_int_equal(trace_perf_record(&l, r, rl, &c, &lost),
                         TRACE_REC_CHANGE);
        assert_int_equal(c.kind, TRACE_WRITE);
        assert_int_equal(c.off, 8 * (i + 1) * 512);
        assert_int_equal(c.len, 4096);
      } else {
        assert_int_equal(trace_perf_record(&l, r, rl, &c, &lost),
                         TRACE_REC_LOST);
        assert_int_equal(lost, 42);
      }
    }
    assert_int_equal(tail, head);
    assert_int_equal(trace_ring_next(ring, sizeof ring, head, &tail, scratch,
                                     sizeof scratch, &r, &rl), 0);
  }
}

/* An inconsistent ring is refused, never read past. */
static void
test_ring_inconsistent(void **state)
{
  uint8_t ring[64] = { 0 }, scratch[16];
  const uint8_t *r;
  size_t rl;
  uint64_t tail = 0;
  struct perf_event_header h = { PERF_RECORD_SAMPLE, 0, 4 };
  (void)state;

  memcpy(ring, &h, sizeof h);                  /* shorter than a header */
  assert_int_equal(trace_ring_next(ring, 64, 32, &tail, scratch,
                                   sizeof scratch, &r, &rl), -1);
  h.size = 40;                                 /* past head */
  memcpy(ring, &h, sizeof h);
  assert_int_equal(trace_ring_next(ring, 64, 32, &tail, scratch,
                                   sizeof scratch, &r, &rl), -1);
  assert_int_equal(trace_ring_next(ring, 64, 200, &tail, scratch,
                                   sizeof scratch, &r, &rl), -1); /* > size */
  tail = 48;                                   /* wraps, scratch too small */
  h.size = 32;
  memcpy(ring + 48, &h, sizeof h);
  assert_int_equal(trace_ring_next(ring, 64, 80, &tail, scratch,
                                   sizeof scratch, &r, &rl), -1);
  assert_int_equal(tail, 48);
  assert_int_equal(trace_ring_next(ring, 48, 80, &tail, scratch,
                                   sizeof scratch, &r, &rl), -1); /* not 2^n */
}

/* A sample whose raw size runs past the record, or too short a LOST. */
static void
test_perf_record_bad(void **state)
{
  struct trace_layout l;
  uint8_t rec[64];
  struct trace_change c;
  uint64_t lost;
  uint32_t big = 1000;
  char err[256];
  size_t n;
  struct perf_event_header h = { PERF_RECORD_LOST, 0, 16 };
  (void)state;

  assert_int_equal(trace_layout_parse(fmt_new, sizeof fmt_new - 1, &l, err,
                                      sizeof err), 0);
  n = sample(&l, rec, 1, 0, 8, "W");
  memcpy(rec + 8, &big, 4);
  assert_int_equal(trace_perf_record(&l, rec, n, &c, &lost), TRACE_REC_BAD);
  memcpy(rec, &h, 8);
  assert_int_equal(trace_perf_record(&l, rec, 16, &c, &lost), TRACE_REC_BAD);
  h.type = PERF_RECORD_MMAP;
  memcpy(rec, &h, 8);
  assert_int_equal(trace_perf_record(&l, rec, 16, &c, &lost), TRACE_REC_OTHER);
}

/* The device statistics the records are checked against: write plus
 * discard sectors, from the 17 fields of today's kernels and the 11 of
 * older ones (no discard fields). */
static void
test_stat_sectors(void **state)
{
  static const char now[] =
      "    5410        0   431018     3042   128977    31337  3201840"
      "   290361        0   115064   293403      12        0   262144"
      "        5     1024      101\n";
  static const char old[] = "1 2 3 4 5 6 7000 8 9 10 11\n";
  uint64_t s = 0;
  (void)state;

  assert_int_equal(trace_stat_sectors(now, strlen(now), &s), 0);
  assert_int_equal(s, 3201840 + 262144);
  assert_int_equal(trace_stat_sectors(old, strlen(old), &s), 0);
  assert_int_equal(s, 7000);
  /* Only the bytes given are read (no terminator needed). */
  assert_int_equal(trace_stat_sectors(now, 40, &s), -1);
  assert_int_equal(trace_stat_sectors("", 0, &s), -1);
  assert_int_equal(trace_stat_sectors("1 2 3 4 5 6\n", 12, &s), -1);
  assert_int_equal(trace_stat_sectors("1 2 3 x 5 6 7", 13, &s), -1);
  /* A number too large for 64 bits. */
  assert_int_equal(trace_stat_sectors("1 2 3 4 5 6 99999999999999999999999",
                                      35, &s), -1);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_layouts),
    cmocka_unit_test(test_wrong_format_refused),
    cmocka_unit_test(test_rwbs),
    cmocka_unit_test(test_ranges_and_errors),
    cmocka_unit_test(test_ring_wraps),
    cmocka_unit_test(test_ring_inconsistent),
    cmocka_unit_test(test_perf_record_bad),
    cmocka_unit_test(test_stat_sectors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
