/* duplex-primary, tail capture (--capture tail): replicate a block device
 * that applications write directly, learning which blocks change from the
 * block layer's tracepoints (DESIGN.md "Tail capture").  One section per .c
 * file. */
#ifndef DUPLEX_PRIMARY_TAIL_H
#define DUPLEX_PRIMARY_TAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- trace-decode.c: tracepoint records to changed ranges, no I/O ----
 *
 * The layout of block:block_rq_complete differs between kernels (fields
 * were added), so it is read from the event's format text (tracefs
 * events/block/block_rq_complete/format) with libtraceevent; a raw record
 * (perf's PERF_SAMPLE_RAW, the same bytes as the ftrace ring's) is then
 * decoded with the offsets found there. */
struct trace_field {
  unsigned off, size;
};
struct trace_layout {
  struct trace_field dev, sector, nr_sector, error, rwbs;
  unsigned min_len;             /* a record shorter than this is malformed */
};

/* 0, or -1 with the reason in err (not the block_rq_complete format, a
 * field missing or of an unexpected size). */
int trace_layout_parse(const char *format, size_t len,
                       struct trace_layout *l, char *err, size_t errlen);

enum trace_kind {
  TRACE_NONE,                   /* a read, or nothing that changes data */
  TRACE_WRITE,                  /* a write: [off, off+len) changed */
  TRACE_DISCARD,                /* discard or secure erase */
  TRACE_OTHER,                  /* another data-changing op with a range
                                   (write-zeroes shows as 'N') */
  TRACE_FLUSH,                  /* a flush without data */
};

struct trace_change {
  enum trace_kind kind;
  uint32_t dev;                 /* the kernel's encoding: major << 20 | minor */
  uint64_t off, len;            /* bytes */
  int error;                    /* the request's error (0: success) */
  bool preflush;                /* the write was preceded by a flush */
  bool fua;
};

/* Decode one raw record.  0, or -1 if it is malformed (too short, a range
 * past 2^64 bytes).  A failed request still reports its range: the data may
 * have changed partly. */
int trace_decode(const struct trace_layout *l, const void *raw, size_t len,
                 struct trace_change *out);

/* The kernel's dev_t of a tracepoint record for a device number. */
uint32_t trace_kdev(unsigned major, unsigned minor);

/* perf ring buffers (perf_event_open's mmap, sample_type PERF_SAMPLE_RAW):
 * positions are free-running byte counts like data_head and data_tail.
 * Takes the record at *tail (one that wraps is copied into scratch) and
 * advances *tail past it: 1 with *rec, *rec_len (header included), 0 when
 * *tail == head, -1 when the ring is inconsistent (a record shorter than
 * its header, past head, or larger than scratch): the reader must drop the
 * whole ring and count it as lost. */
int trace_ring_next(const uint8_t *data, uint64_t size, uint64_t head,
                    uint64_t *tail, uint8_t *scratch, size_t scratch_len,
                    const uint8_t **rec, size_t *rec_len);

enum trace_rec {
  TRACE_REC_CHANGE,             /* a sample: *c is set */
  TRACE_REC_LOST,               /* records were lost: *lost of them */
  TRACE_REC_OTHER,              /* nothing for us */
  TRACE_REC_BAD,                /* a sample that does not decode */
};
/* One record of a perf ring. */
enum trace_rec trace_perf_record(const struct trace_layout *l,
                                 const uint8_t *rec, size_t len,
                                 struct trace_change *c, uint64_t *lost);

#endif
