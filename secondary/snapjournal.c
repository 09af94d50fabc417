/* What a snapshot still being copied needs to survive a crash or restart
 * of the secondary, beside the metadata file:
 *
 *   META.snapjobs     the snapshots being copied: id, metadata and the set
 *                     of blocks each holds, as runs of set bits or as raw
 *                     bitmap words, whichever is smaller (a full snapshot
 *                     of 64 GiB is one run, not 2 MiB); rewritten
 *                     atomically: temp, fsync, rename, fsync of the
 *                     directory
 *   META.snapjournal  old contents of blocks in such a set that the apply
 *                     path overwrote, appended and fdatasync'ed before the
 *                     overwriting write is started
 *
 * After a restart a snapshot in snapjobs but not in the store is copied
 * again: blocks in the journal from there, every other block of its set
 * from the replica, which still holds them as they were (any overwrite was
 * journaled first).  Records are checksummed; a torn tail (a crash during
 * an append, before its write was started) is ignored. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#include "crc32c.h"

#define JOBS_MAGIC "DXSJOBS2"
#define JOBS_MAGIC_V1 "DXSJOBS1"       /* raw words only: still read */
#define SET_RAW 0
#define SET_RUNS 1
#define REC_MAGIC 0x5344584au       /* "JXDS" */
#define REC_HDR 24u                 /* magic, crc, id, block */

struct snapjournal {
  char jobs_path[PATH_MAX];
  char journal_path[PATH_MAX];
  int fd;                           /* the journal, O_APPEND */
};

int
snapjournal_open(const char *meta, struct snapjournal **out, char *err,
                 size_t errlen)
{
  struct snapjournal *j = calloc(1, sizeof *j);

  if (!j)
    abort();
  snprintf(j->jobs_path, sizeof j->jobs_path, "%s.snapjobs", meta);
  snprintf(j->journal_path, sizeof j->journal_path, "%s.snapjournal", meta);
  j->fd = open(j->journal_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC,
               0600);
  if (j->fd < 0) {
    snprintf(err, errlen, "%s: %s", j->journal_path, strerror(errno));
    free(j);
    return -1;
  }
  *out = j;
  return 0;
}

void
snapjournal_close(struct snapjournal *j)
{
  if (!j)
    return;
  close(j->fd);
  free(j);
}

/* ---- the job list ---- */

/* The runs of set bits of a bitmap image: with out NULL only counted. */
static size_t
set_runs(const uint64_t *w, size_t n_words, uint8_t *out)
{
  size_t runs = 0;
  uint64_t bit = 0, nbits = (uint64_t)n_words * 64, start = 0;
  bool in = false;

  while (bit < nbits) {
    uint64_t word = w[bit / 64];
    if (bit % 64 == 0 && (word == 0 || word == ~0ull)) {
      bool one = word != 0;
      if (one && !in) {
        in = true;
        start = bit;
      } else if (!one && in) {
        if (out) {
          util_put_le64(out + runs * 16, start);
          util_put_le64(out + runs * 16 + 8, bit - start);
        }
        runs++;
        in = false;
      }
      bit += 64;
      continue;
    }
    bool one = (word >> (bit % 64)) & 1;
    if (one && !in) {
      in = true;
      start = bit;
    } else if (!one && in) {
      if (out) {
        util_put_le64(out + runs * 16, start);
        util_put_le64(out + runs * 16 + 8, bit - start);
      }
      runs++;
      in = false;
    }
    bit++;
  }
  if (in) {
    if (out) {
      util_put_le64(out + runs * 16, start);
      util_put_le64(out + runs * 16 + 8, bit - start);
    }
    runs++;
  }
  return runs;
}

int
snapjournal_save_jobs(struct snapjournal *j, const struct snapjournal_job *v,
                      size_t n, char *err, size_t errlen)
{
  char tmp[PATH_MAX + 8], dir[PATH_MAX];
  size_t len = 8 + 8, off = 0;
  uint8_t *buf, *p;
  uint32_t crc;
  int fd, dfd, rc = 0;

  size_t *runs = calloc(n ? n : 1, sizeof *runs);

  if (!runs)
    abort();
  for (size_t i = 0; i < n; i++) {
    runs[i] = set_runs(v[i].set_words, v[i].n_words, NULL);
    len += 8 + 8 + 8 + 8 + 8 + 1 + 1 + 1 + STORE_NAME_MAX + 1 + 16 + 8 + 1 +
           MIN(8 + runs[i] * 16, v[i].n_words * 8);
  }
  len += 4;
  buf = calloc(1, len);
  if (!buf)
    abort();
  p = buf;
  memcpy(p, JOBS_MAGIC, 8);
  util_put_le64(p + 8, n);
  off = 16;
  for (size_t i = 0; i < n; i++) {
    const struct snapjournal_job *x = &v[i];
    util_put_le64(buf + off, x->id);
    util_put_le64(buf + off + 8, x->meta.created_ns);
    util_put_le64(buf + off + 16, x->meta.epoch);
    util_put_le64(buf + off + 24, x->meta.size_bytes);
    util_put_le64(buf + off + 32, x->size);
    buf[off + 40] = x->meta.reason;
    buf[off + 41] = x->full;
    buf[off + 42] = x->rescan;
    off += 43;
    memcpy(buf + off, x->meta.name, STORE_NAME_MAX + 1);
    off += STORE_NAME_MAX + 1;
    memcpy(buf + off, x->meta.volume_uuid, 16);
    off += 16;
    util_put_le64(buf + off, x->n_words);
    off += 8;
    if (8 + runs[i] * 16 < x->n_words * 8) {
      buf[off++] = SET_RUNS;
      util_put_le64(buf + off, runs[i]);
      off += 8;
      set_runs(x->set_words, x->n_words, buf + off);
      off += runs[i] * 16;
    } else {
      buf[off++] = SET_RAW;
      for (size_t w = 0; w < x->n_words; w++, off += 8)
        util_put_le64(buf + off, x->set_words[w]);
    }
  }
  free(runs);
  crc = crc32c(0, buf, off);
  memcpy(buf + off, &crc, 4);
  off += 4;

  snprintf(tmp, sizeof tmp, "%s.tmp", j->jobs_path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || util_pwrite_all(fd, buf, off, 0) < 0 || fsync(fd) < 0) {
    rc = -errno;
    snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
    if (fd >= 0)
      close(fd);
    free(buf);
    return rc;
  }
  close(fd);
  free(buf);
  if (rename(tmp, j->jobs_path) < 0) {
    rc = -errno;
    snprintf(err, errlen, "%s: rename: %s", j->jobs_path, strerror(errno));
    return rc;
  }
  snprintf(dir, sizeof dir, "%s", j->jobs_path);
  dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

int
snapjournal_load_jobs(struct snapjournal *j, struct snapjournal_job **out,
                      size_t *nout, char *err, size_t errlen)
{
  struct stat st;
  uint8_t *buf;
  size_t off, n;
  uint32_t crc;
  struct snapjournal_job *v;
  bool v1;
  int fd = open(j->jobs_path, O_RDONLY | O_CLOEXEC);

  *out = NULL;
  *nout = 0;
  if (fd < 0)
    return errno == ENOENT ? 0 : -errno;
  if (fstat(fd, &st) < 0 || st.st_size < 20 || st.st_size > (1 << 30)) {
    close(fd);
    snprintf(err, errlen, "%s: not a list of snapshots being copied",
             j->jobs_path);
    return -EINVAL;
  }
  buf = malloc((size_t)st.st_size);
  if (!buf)
    abort();
  if (pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) {
    close(fd);
    free(buf);
    snprintf(err, errlen, "%s: short read", j->jobs_path);
    return -EIO;
  }
  close(fd);
  memcpy(&crc, buf + st.st_size - 4, 4);
  v1 = memcmp(buf, JOBS_MAGIC_V1, 8) == 0;
  if ((!v1 && memcmp(buf, JOBS_MAGIC, 8) != 0) ||
      crc32c(0, buf, (size_t)st.st_size - 4) != crc) {
    free(buf);
    snprintf(err, errlen, "%s: damaged (bad magic or checksum)",
             j->jobs_path);
    return -EILSEQ;
  }
  n = util_get_le64(buf + 8);
  v = calloc(n ? n : 1, sizeof *v);
  if (!v)
    abort();
  off = 16;
  for (size_t i = 0; i < n; i++) {
    struct snapjournal_job *x = &v[i];
    uint8_t enc;
    if (off + 43 + STORE_NAME_MAX + 1 + 16 + 8 + 1 > (size_t)st.st_size - 4)
      goto bad;
    x->id = util_get_le64(buf + off);
    x->meta.created_ns = util_get_le64(buf + off + 8);
    x->meta.epoch = util_get_le64(buf + off + 16);
    x->meta.size_bytes = util_get_le64(buf + off + 24);
    x->size = util_get_le64(buf + off + 32);
    x->meta.reason = buf[off + 40];
    x->full = buf[off + 41];
    x->rescan = buf[off + 42];
    off += 43;
    memcpy(x->meta.name, buf + off, STORE_NAME_MAX + 1);
    x->meta.name[STORE_NAME_MAX] = '\0';
    off += STORE_NAME_MAX + 1;
    memcpy(x->meta.volume_uuid, buf + off, 16);
    off += 16;
    x->n_words = util_get_le64(buf + off);
    off += 8;
    enc = v1 ? SET_RAW : buf[off++];
    if (enc == SET_RUNS) {
      uint64_t nruns, prev_end = 0;
      /* the words: as many as the volume's size needs */
      if (x->n_words != ((x->size + STORE_BLOCK - 1) / STORE_BLOCK + 63) / 64 ||
          off + 8 > (size_t)st.st_size - 4)
        goto bad;
      nruns = util_get_le64(buf + off);
      off += 8;
      if (nruns > ((size_t)st.st_size - 4 - off) / 16)
        goto bad;
      x->set_words = calloc(x->n_words ? x->n_words : 1, 8);
      if (!x->set_words)
        abort();
      for (uint64_t r = 0; r < nruns; r++, off += 16) {
        uint64_t start = util_get_le64(buf + off), count = util_get_le64(buf + off + 8);
        if (start < prev_end || count == 0 ||
            count > (uint64_t)x->n_words * 64 - start)
          goto bad;
        for (uint64_t b = start; b < start + count; b++)
          x->set_words[b / 64] |= 1ull << (b % 64);
        prev_end = start + count;
      }
    } else if (enc == SET_RAW) {
      if (x->n_words > ((size_t)st.st_size - 4 - off) / 8)
        goto bad;
      x->set_words = malloc((x->n_words ? x->n_words : 1) * 8);
      if (!x->set_words)
        abort();
      for (size_t w = 0; w < x->n_words; w++, off += 8)
        x->set_words[w] = util_get_le64(buf + off);
    } else {
      goto bad;
    }
    x->meta.id = x->id;
  }
  free(buf);
  *out = v;
  *nout = n;
  return 0;

bad:
  snapjournal_free_jobs(v, n);
  free(buf);
  snprintf(err, errlen, "%s: damaged (lengths do not add up)", j->jobs_path);
  return -EILSEQ;
}

void
snapjournal_free_jobs(struct snapjournal_job *v, size_t n)
{
  for (size_t i = 0; v && i < n; i++)
    free(v[i].set_words);
  free(v);
}

/* ---- preserved blocks ---- */

int
snapjournal_append(struct snapjournal *j, const uint64_t *ids,
                   const uint64_t *blocks, const uint8_t *data, size_t n,
                   char *err, size_t errlen)
{
  size_t reclen = REC_HDR + STORE_BLOCK, len = n * reclen;
  uint8_t *buf = malloc(len ? len : 1);
  ssize_t w;

  if (!buf)
    abort();
  for (size_t i = 0; i < n; i++) {
    uint8_t *r = buf + i * reclen;
    uint32_t magic = REC_MAGIC, crc;
    memcpy(r, &magic, 4);
    util_put_le64(r + 8, ids[i]);
    util_put_le64(r + 16, blocks[i]);
    memcpy(r + REC_HDR, data + i * STORE_BLOCK, STORE_BLOCK);
    crc = crc32c(0, r + 8, reclen - 8);
    memcpy(r + 4, &crc, 4);
  }
  w = write(j->fd, buf, len);
  free(buf);
  if (w != (ssize_t)len || fdatasync(j->fd) < 0) {
    int e = w < 0 ? errno : EIO;
    snprintf(err, errlen, "%s: append: %s", j->journal_path, strerror(e));
    return -e;
  }
  return 0;
}

int
snapjournal_replay(struct snapjournal *j, snapjournal_fn fn, void *arg)
{
  size_t reclen = REC_HDR + STORE_BLOCK;
  uint8_t *r = malloc(reclen);
  uint64_t off = 0;
  unsigned n = 0;

  if (!r)
    abort();
  for (;; off += reclen) {
    uint32_t magic, crc;
    if (pread(j->fd, r, reclen, (off_t)off) != (ssize_t)reclen)
      break;                    /* the end, or a torn tail */
    memcpy(&magic, r, 4);
    memcpy(&crc, r + 4, 4);
    if (magic != REC_MAGIC || crc32c(0, r + 8, reclen - 8) != crc)
      break;
    fn(arg, util_get_le64(r + 8), util_get_le64(r + 16), r + REC_HDR);
    n++;
  }
  free(r);
  return (int)n;
}

int
snapjournal_reset(struct snapjournal *j)
{
  if (ftruncate(j->fd, 0) < 0 || fdatasync(j->fd) < 0)
    return -errno;
  return 0;
}
