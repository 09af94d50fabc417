/* Applying a diff stream (docs/STORE.md, "Diff streams") to a file or
 * block device: needs no store, only the stream and the target.  The
 * target is opened once the stream's header is known good; each record is
 * written as soon as its own checksum matched (a damaged record is never
 * written), and the target is synced and success reported only after the
 * END record's checksum over the whole stream matched.  A stream refused
 * half way leaves the target partially updated, and the message says so. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffstream.h"
#include "store-internal.h"
#include "util.h"

#define APPLY_READ (1u << 20)       /* bytes per read of the stream */

struct apply_diff_target {
  const char *path;
  int fd;
  bool blockdev;
  bool touched;                 /* changed: resized or written */
  struct apply_diff_stats *st;
};

/* Open the target and give it the stream's volume size: a regular file
 * is grown (or, when it has the from snapshot's size, shrunk); a device
 * must hold the volume. */
static int
apply_diff_open(struct apply_diff_target *a,
                const struct diffstream_header *h, char *err, size_t errlen)
{
  int flags = O_RDWR | O_CLOEXEC | (h->from_id == 0 ? O_CREAT : 0);
  struct stat sb;
  uint64_t size;
  int rc;

  a->fd = open(a->path, flags, 0644);
  if (a->fd == -1) {
    rc = -errno;
    if (rc == -ENOENT)
      snprintf(err, errlen, "%s does not exist: a diff from snapshot %"
               PRIu64 " applies to a copy of that snapshot (restore it "
               "there first, or send a stream from 0 to seed a new copy)",
               a->path, h->from_id);
    else
      snprintf(err, errlen, "%s: %s", a->path, strerror(-rc));
    return rc;
  }
  if (fstat(a->fd, &sb) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s: %s", a->path, strerror(-rc));
    return rc;
  }
  a->blockdev = S_ISBLK(sb.st_mode);
  if (a->blockdev) {
    if (ioctl(a->fd, BLKGETSIZE64, &size) == -1) {
      rc = -errno;
      snprintf(err, errlen, "%s: size: %s", a->path, strerror(-rc));
      return rc;
    }
    a->st->target_size = size;
    if (size < h->volume_size) {
      snprintf(err, errlen, "%s: the device holds %" PRIu64 " bytes, the "
               "stream's volume is %" PRIu64 " bytes: use a device at least "
               "that big", a->path, size, h->volume_size);
      return -ENOSPC;
    }
    return 0;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(err, errlen, "%s: not a regular file or a block device",
             a->path);
    return -EINVAL;
  }
  size = (uint64_t)sb.st_size;
  a->st->target_size = size;
  if (size > h->volume_size && h->from_id != 0 && size != h->from_size) {
    snprintf(err, errlen, "%s is %" PRIu64 " bytes: more than the stream's "
             "volume (%" PRIu64 " bytes) and not the size of snapshot %"
             PRIu64 " (%" PRIu64 " bytes), so not a copy of it",
             a->path, size, h->volume_size, h->from_id, h->from_size);
    return -EINVAL;
  }
  if (size != h->volume_size) {
    a->touched = true;
    if (ftruncate(a->fd, (off_t)h->volume_size) == -1) {
      rc = -errno;
      snprintf(err, errlen, "%s: cannot size it to %" PRIu64 " bytes: %s",
               a->path, h->volume_size, strerror(-rc));
      return rc;
    }
  }
  return 0;
}

static int
apply_diff_record(struct apply_diff_target *a,
                  const struct diffstream_rec *r, char *err, size_t errlen)
{
  int rc;

  a->touched = true;
  if (r->kind == DIFFSTREAM_DATA) {
    rc = restore_io(a->fd, true, (void *)r->data, (size_t)r->length,
                    r->offset, a->path, err, errlen);
    a->st->data_bytes += r->length;
  } else {
    rc = restore_zero(a->fd, a->blockdev, r->offset, r->length, a->path,
                      err, errlen);
    a->st->zero_bytes += r->length;
  }
  a->st->records++;
  return rc;
}

int
apply_diff(int in_fd, const char *in_name, const char *path,
           apply_diff_header_fn on_header, void *arg,
           struct apply_diff_stats *st, char *err, size_t errlen)
{
  struct apply_diff_target a = { .path = path, .fd = -1, .st = st };
  struct diffstream_dec *d = diffstream_dec_new();
  const struct diffstream_header *h = NULL;
  uint8_t *buf = malloc(APPLY_READ);
  char what[160] = "", sub[800];
  bool done = false;
  int rc = 0;

  if (!buf)
    abort();
  memset(st, 0, sizeof *st);
  while (rc == 0) {
    ssize_t n = read(in_fd, buf, APPLY_READ);
    size_t off = 0;

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      snprintf(sub, sizeof sub, "%s: read: %s", in_name, strerror(-rc));
      break;
    }
    if (n == 0) {
      if (diffstream_dec_finish(d, sub, sizeof sub) < 0)
        rc = -EPIPE;
      break;
    }
    while (rc == 0 && off < (size_t)n) {
      struct diffstream_rec rec;
      size_t used;
      enum diffstream_event ev =
          diffstream_dec_feed(d, buf + off, (size_t)n - off, &used, &rec,
                              sub, sizeof sub);
      off += used;
      if (ev == DIFFSTREAM_NEED)
        break;
      switch (ev) {
      case DIFFSTREAM_HEADER:
        h = diffstream_dec_header(d);
        st->hdr = *h;
        if (h->from_id)
          snprintf(what, sizeof what, "stream from snapshot %" PRIu64
                   " to %" PRIu64, h->from_id, h->to_id);
        else
          snprintf(what, sizeof what, "stream of snapshot %" PRIu64
                   " (from an empty volume)", h->to_id);
        if ((rc = apply_diff_open(&a, h, sub, sizeof sub)) < 0)
          break;
        if (on_header)
          on_header(h, arg);
        break;
      case DIFFSTREAM_RECORD:
        rc = apply_diff_record(&a, &rec, sub, sizeof sub);
        break;
      case DIFFSTREAM_DONE:
        done = true;
        break;
      default:
        rc = -EILSEQ;
        break;
      }
    }
    st->stream_bytes = diffstream_dec_bytes(d);
  }
  if (done && fdatasync(a.fd) == -1) {
    rc = -errno;
    snprintf(sub, sizeof sub, "%s: fdatasync: %s", path, strerror(-rc));
    done = false;
  }
  if (rc == 0)
    goto out;
  if (done)         /* something followed the END record */
    snprintf(err, errlen, "%s: %s: %s; %s holds snapshot %" PRIu64 " in "
             "full now (synced), but the input goes on after the stream's "
             "end (two streams in one input?): the rest was not applied",
             in_name, what, sub, path, h->to_id);
  else if (a.touched)
    snprintf(err, errlen, "%s%s%s: %s; %s is now partially updated: apply "
             "the whole stream again, or restore snapshot %" PRIu64
             " onto it", in_name, what[0] ? ": " : "", what, sub, path,
             h->to_id);
  else
    snprintf(err, errlen, "%s%s%s: %s; %s was not changed", in_name,
             what[0] ? ": " : "", what, sub, path);

out:
  if (a.fd >= 0)
    close(a.fd);
  diffstream_dec_free(d);
  free(buf);
  return rc;
}
