/* libFuzzer target for the replication frame decoder: arbitrary bytes from
 * a peer must parse or be refused, never crash or leak.  Parsed frames are
 * re-packed and must parse again to the same length, unless they carried
 * unknown fields: protobuf-c keeps those verbatim, including ones it would
 * refuse in minimal encoding (field number 0 written as 0x80 0x00). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  size_t off = 0;

  /* Walk the input as a stream, like a receive loop does. */
  while (off < size) {
    struct frame f, g;
    char err[256];
    ssize_t n = frame_parse(data + off, size - off, &f, err, sizeof err);
    size_t used = (size_t)n, len;
    uint8_t *buf;

    if (n <= 0)
      break;
    if (f.payload_len) {
      /* The payload lies inside the input (ASan checks this read). */
      volatile uint8_t last = f.payload[f.payload_len - 1];
      (void)last;
    }

    len = frame_packed_len(f.m.any);
    buf = malloc(len + f.payload_len);
    if (buf) {
      size_t m = frame_pack(f.type, f.m.any, f.payload_len, buf);
      if (f.payload_len)
        memcpy(buf + m, f.payload, f.payload_len);
      /* Every frame we accept re-encodes to one we accept again. */
      n = frame_parse(buf, m + f.payload_len, &g, err, sizeof err);
      if (n != (ssize_t)(m + f.payload_len) && f.m.any->n_unknown_fields == 0)
        abort();
      if (n > 0)
        frame_release(&g);
      free(buf);
    }
    frame_release(&f);
    off += used;
  }
  /* The header parser alone, on whatever the first 16 bytes are. */
  if (size >= FRAME_HDR_LEN) {
    struct frame h;
    char err[64];
    (void)frame_parse_header(data, &h, err, sizeof err);
  }
  return 0;
}
