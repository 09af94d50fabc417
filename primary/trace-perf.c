/* Change capture from the block layer's tracepoints (internal.h): one perf
 * event per CPU on block:block_rq_complete, filtered to the traced disk,
 * each with its own mmap'd ring; the rings are drained when the kernel
 * signals a quarter full and every poll interval.  tracefs (found, and
 * mounted if needed, by libtracefs) gives the event's id and format.
 *
 * Records come out of a CPU's ring in completion order for that CPU; the
 * order between CPUs does not matter, since a record only says that a range
 * changed and the data is read back from the device afterwards.  A lost
 * record (ring overrun, a record that does not decode) means some change is
 * unknown: the owner compares the whole volume. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <linux/perf_event.h>
#include <tracefs/tracefs.h>

#include "internal.h"
#include "log.h"

#define TRACE_SCRATCH 4096

struct trace_ring {
  struct trace_capture *tc;
  int fd;
  int cpu;
  struct perf_event_mmap_page *mp;
  size_t map_len;
  uint8_t *data;
  uint64_t size;
  struct event *ev;
};

struct trace_capture {
  struct trace_capture_config cfg;
  struct trace_capture_events events;
  struct trace_layout layout;
  uint32_t kdev;
  struct trace_ring *rings;
  unsigned n_rings;
  struct event *poll;
  struct trace_capture_counters ctr;
  /* The cross-check with the device's statistics (trace_stat_sectors):
   * the stat file and its sectors when the rings were attached. */
  int stat_fd;
  uint64_t stat_base;
  /* Fault injection for the tests (DUPLEX_TEST_TRACE_DROP=N): every Nth
   * change record is dropped, as the kernel sometimes does. */
  uint64_t drop_every, drop_n;
  uint8_t scratch[TRACE_SCRATCH];
};

static int
read_sysfs_u64(const char *path, uint64_t *v)
{
  char buf[64];
  ssize_t n;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return -1;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  *v = strtoull(buf, NULL, 10);
  return 0;
}

int
trace_device_resolve(const char *path, struct trace_device *d, char *err,
                     size_t errlen)
{
  struct stat st;
  char sys[PATH_MAX], buf[64];
  uint64_t start = 0, sectors = 0;
  unsigned pmaj, pmin;
  ssize_t n;
  int fd;

  memset(d, 0, sizeof *d);
  if (stat(path, &st) == -1) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISBLK(st.st_mode)) {
    snprintf(err, errlen, "%s is not a block device: tail capture traces a "
             "block device's requests (use a loop device for an image file, "
             "or --capture nbd)", path);
    return -1;
  }
  d->major = major(st.st_rdev);
  d->minor = minor(st.st_rdev);
  d->disk_major = d->major;
  d->disk_minor = d->minor;
  snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/partition", d->major,
           d->minor);
  if (access(sys, F_OK) == 0) {
    /* A partition: requests are traced on its disk, in disk sectors. */
    snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/start", d->major,
             d->minor);
    if (read_sysfs_u64(sys, &start) == -1) {
      snprintf(err, errlen, "%s: cannot read %s: %s", path, sys,
               strerror(errno));
      return -1;
    }
    snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/../dev", d->major,
             d->minor);
    fd = open(sys, O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
      close(fd);
    if (n <= 0 || (buf[n] = '\0', sscanf(buf, "%u:%u", &pmaj, &pmin)) != 2) {
      snprintf(err, errlen, "%s: cannot find the disk of this partition "
               "(%s)", path, sys);
      return -1;
    }
    d->disk_major = pmaj;
    d->disk_minor = pmin;
    d->start = start * 512;
  }
  snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/size", d->major, d->minor);
  if (read_sysfs_u64(sys, &sectors) == -1) {
    snprintf(err, errlen, "%s: cannot read its size from %s", path, sys);
    return -1;
  }
  d->size = sectors * 512;
  /* Only request-based (blk-mq) disks complete requests through
   * block_rq_complete; a bio-based one (device mapper, md) would be
   * silent. */
  snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/mq", d->disk_major,
           d->disk_minor);
  if (access(sys, F_OK) != 0) {
    snprintf(err, errlen, "%s is not a request-based (blk-mq) device: its "
             "writes do not reach the block_rq_complete tracepoint, so they "
             "cannot be tailed (use --capture nbd)", path);
    return -1;
  }
  return 0;
}

/* The volume's part of a completed request, to the owner. */
static void
trace_deliver(struct trace_capture *tc, const struct trace_change *c)
{
  uint64_t s, e, vs = tc->cfg.dev.start, ve = vs + tc->cfg.dev.size;

  tc->ctr.records++;
  if (c->dev != tc->kdev)
    return; /* the kernel's filter was not set */
  if (c->kind == TRACE_FLUSH) {
    tc->ctr.flushes++;
    return;
  }
  if (c->kind == TRACE_NONE)
    return;
  s = MAX(c->off, vs);
  e = MIN(c->off + c->len, ve);
  if (s >= e)
    return;
  if (tc->drop_every && ++tc->drop_n % tc->drop_every == 0)
    return;
  tc->ctr.changes++;
  tc->ctr.bytes_changed += e - s;
  tc->events.changed(tc->events.arg, s - vs, e - s);
}

static void
trace_lost(struct trace_capture *tc, uint64_t n, const char *why)
{
  tc->ctr.lost += n;
  log_warn("primary: tail capture of %s: %" PRIu64 " trace records lost "
           "(%s); the volume is compared with the secondary",
           tc->cfg.path, n, why);
  tc->events.lost(tc->events.arg, false);
}

/* The device's completed write and discard sectors (trace_stat_sectors);
 * -1 if they cannot be read. */
static int
trace_stat_read(const struct trace_capture *tc, uint64_t *sectors)
{
  char buf[512];
  ssize_t n;

  if (tc->stat_fd < 0)
    return -1;
  n = pread(tc->stat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  return trace_stat_sectors(buf, (size_t)n, sectors);
}

/* After the rings were drained: every sector the statistics counted when
 * they were read (before the drain) must have come with a record, since
 * the kernel fires the tracepoint before it counts.  More records than
 * sectors is normal (writes completing during the drain). */
static void
trace_check_accounting(struct trace_capture *tc, uint64_t stat)
{
  /* What records reported, plus shortfalls already found (each is found
   * once). */
  uint64_t reported = tc->ctr.bytes_changed / 512 + tc->ctr.untraced_sectors;
  uint64_t missing;

  if (stat < tc->stat_base || stat - tc->stat_base <= reported)
    return;
  missing = stat - tc->stat_base - reported;
  tc->ctr.untraced_sectors += missing;
  tc->ctr.untraced_events++;
  log_warn("primary: tail capture of %s: the kernel counted %" PRIu64
           " sectors written that no trace record reported (it dropped "
           "records without saying so); the volume is compared with the "
           "secondary", tc->cfg.path, missing);
  tc->events.lost(tc->events.arg, true);
}

static void
ring_drain(struct trace_ring *r)
{
  struct trace_capture *tc = r->tc;
  uint64_t head = __atomic_load_n(&r->mp->data_head, __ATOMIC_ACQUIRE);
  uint64_t tail = r->mp->data_tail;
  const uint8_t *rec;
  size_t len;
  int rc;

  while ((rc = trace_ring_next(r->data, r->size, head, &tail, tc->scratch,
                               sizeof tc->scratch, &rec, &len)) == 1) {
    struct trace_change c;
    uint64_t lost = 0;
    switch (trace_perf_record(&tc->layout, rec, len, &c, &lost)) {
    case TRACE_REC_CHANGE:
      trace_deliver(tc, &c);
      break;
    case TRACE_REC_LOST:
      trace_lost(tc, lost, "the trace buffer overran");
      break;
    case TRACE_REC_BAD:
      log_debug("primary: tail capture: undecodable record of %zu bytes "
                "(the layout needs %u raw bytes)", len, tc->layout.min_len);
      tc->ctr.bad++;
      trace_lost(tc, 1, "a record that does not decode");
      break;
    case TRACE_REC_OTHER:
      break;
    }
  }
  if (rc == -1) {
    tc->ctr.bad++;
    trace_lost(tc, 1, "an inconsistent trace ring");
    tail = head;
  }
  __atomic_store_n(&r->mp->data_tail, tail, __ATOMIC_RELEASE);
}

void
trace_capture_drain(struct trace_capture *tc)
{
  uint64_t stat = 0;
  bool have_stat = tc->ctr.accounting && trace_stat_read(tc, &stat) == 0;
  unsigned i;

  tc->ctr.drains++;
  for (i = 0; i < tc->n_rings; i++)
    ring_drain(&tc->rings[i]);
  if (have_stat)
    trace_check_accounting(tc, stat);
  tc->events.batch_done(tc->events.arg);
}

static void
ring_readable(evutil_socket_t fd, short what, void *arg)
{
  struct trace_ring *r = arg;
  (void)fd;
  (void)what;
  ring_drain(r);
  r->tc->events.batch_done(r->tc->events.arg);
}

static void
poll_tick(evutil_socket_t fd, short what, void *arg)
{
  (void)fd;
  (void)what;
  trace_capture_drain(arg);
}

/* The tracepoint's id and layout from tracefs. */
static int
trace_event_info(struct trace_capture *tc, uint64_t *id, char *err,
                 size_t errlen)
{
  const char *dir = tracefs_tracing_dir();
  char *text;
  int size = 0, rc;

  if (!dir) {
    snprintf(err, errlen, "tracefs is not mounted and could not be mounted "
             "(mount -t tracefs nodev /sys/kernel/tracing): tail capture "
             "needs the block tracepoints");
    return -1;
  }
  text = tracefs_event_file_read(NULL, "block", "block_rq_complete", "id",
                                 &size);
  if (!text) {
    snprintf(err, errlen, "no tracepoint block:block_rq_complete under %s "
             "(a kernel without CONFIG_BLK_DEV_IO_TRACE / tracepoints?): "
             "tail capture needs it", dir);
    return -1;
  }
  *id = strtoull(text, NULL, 10);
  free(text);
  text = tracefs_event_file_read(NULL, "block", "block_rq_complete",
                                 "format", &size);
  if (!text) {
    snprintf(err, errlen, "cannot read the format of block_rq_complete "
             "under %s", dir);
    return -1;
  }
  rc = trace_layout_parse(text, (size_t)size, &tc->layout, err, errlen);
  free(text);
  return rc;
}

static int
ring_open(struct trace_capture *tc, struct trace_ring *r, int cpu,
          uint64_t id, char *err, size_t errlen)
{
  struct perf_event_attr attr;
  long page = sysconf(_SC_PAGESIZE);
  char filter[64];

  memset(&attr, 0, sizeof attr);
  attr.type = PERF_TYPE_TRACEPOINT;
  attr.size = sizeof attr;
  attr.config = id;
  attr.sample_period = 1;
  attr.sample_type = PERF_SAMPLE_RAW;
  attr.watermark = 1;
  r->size = (uint64_t)tc->cfg.ring_pages * (uint64_t)page;
  attr.wakeup_watermark = (uint32_t)(r->size / 4);
  r->tc = tc;
  r->cpu = cpu;
  r->fd = (int)syscall(SYS_perf_event_open, &attr, -1, cpu, -1,
                       PERF_FLAG_FD_CLOEXEC);
  if (r->fd < 0) {
    if (errno == ENODEV || errno == EINVAL)
      return 1; /* an offline CPU */
    snprintf(err, errlen, "perf_event_open(block:block_rq_complete, cpu "
             "%d): %s%s", cpu, strerror(errno),
             errno == EACCES || errno == EPERM
                 ? " (tail capture needs root or CAP_PERFMON)" : "");
    return -1;
  }
  snprintf(filter, sizeof filter, "dev == %" PRIu32, tc->kdev);
  if (ioctl(r->fd, PERF_EVENT_IOC_SET_FILTER, filter) == -1)
    log_warn("primary: tail capture: the kernel refused the trace filter "
             "\"%s\" (%s): records of other devices are dropped here",
             filter, strerror(errno));
  r->map_len = (size_t)(r->size + (uint64_t)page);
  r->mp = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd,
               0);
  if (r->mp == MAP_FAILED) {
    snprintf(err, errlen, "mmap of the trace ring of cpu %d (%zu bytes): %s",
             cpu, r->map_len, strerror(errno));
    close(r->fd);
    r->fd = -1;
    r->mp = NULL;
    return -1;
  }
  r->data = (uint8_t *)r->mp + r->mp->data_offset;
  if (r->mp->data_size)
    r->size = r->mp->data_size;
  return 0;
}

/* The statistics the records are checked against, baseline taken after
 * the rings are attached (so nothing counted from here on is missing a
 * record); without them lost records go unnoticed unless perf says so. */
static void
trace_accounting_open(struct trace_capture *tc)
{
  const struct trace_device *d = &tc->cfg.dev;
  char path[PATH_MAX];
  uint64_t iostats = 1;

  snprintf(path, sizeof path, "/sys/dev/block/%u:%u/queue/iostats",
           d->disk_major, d->disk_minor);
  if (read_sysfs_u64(path, &iostats) == 0 && iostats == 0) {
    log_warn("primary: tail capture of %s: %s is 0: records the kernel "
             "drops without saying so cannot be noticed (echo 1 > %s)",
             tc->cfg.path, path, path);
    return;
  }
  snprintf(path, sizeof path, "/sys/dev/block/%u:%u/stat", d->major,
           d->minor);
  tc->stat_fd = open(path, O_RDONLY | O_CLOEXEC);
  if (tc->stat_fd < 0 || trace_stat_read(tc, &tc->stat_base) == -1) {
    log_warn("primary: tail capture of %s: cannot read %s (%s): records "
             "the kernel drops without saying so cannot be noticed",
             tc->cfg.path, path, tc->stat_fd < 0 ? strerror(errno)
                                                 : "unexpected contents");
    return;
  }
  tc->ctr.accounting = true;
}

struct trace_capture *
trace_capture_open(struct event_base *base,
                   const struct trace_capture_config *cfg,
                   const struct trace_capture_events *events, char *err,
                   size_t errlen)
{
  struct trace_capture *tc = calloc(1, sizeof *tc);
  long ncpu = sysconf(_SC_NPROCESSORS_CONF);
  uint64_t id = 0;
  int cpu;

  if (!tc)
    abort();
  tc->cfg = *cfg;
  tc->events = *events;
  tc->stat_fd = -1;
  if (getenv("DUPLEX_TEST_TRACE_DROP")) {
    tc->drop_every = strtoull(getenv("DUPLEX_TEST_TRACE_DROP"), NULL, 10);
    log_warn("primary: fault injection: every %" PRIu64 "th trace record "
             "is dropped (DUPLEX_TEST_TRACE_DROP)", tc->drop_every);
  }
  tc->kdev = trace_kdev(cfg->dev.disk_major, cfg->dev.disk_minor);
  if ((cfg->ring_pages & (cfg->ring_pages - 1)) || cfg->ring_pages == 0) {
    snprintf(err, errlen, "trace buffer of %u pages: must be a power of two",
             cfg->ring_pages);
    free(tc);
    return NULL;
  }
  if (trace_event_info(tc, &id, err, errlen) == -1) {
    free(tc);
    return NULL;
  }
  if (ncpu < 1)
    ncpu = 1;
  tc->rings = calloc((size_t)ncpu, sizeof *tc->rings);
  if (!tc->rings)
    abort();
  for (cpu = 0; cpu < ncpu; cpu++) {
    struct trace_ring *r = &tc->rings[tc->n_rings];
    int rc = ring_open(tc, r, cpu, id, err, errlen);
    if (rc == -1) {
      trace_capture_close(tc);
      return NULL;
    }
    if (rc == 1)
      continue;
    r->ev = event_new(base, r->fd, EV_READ | EV_PERSIST, ring_readable, r);
    if (!r->ev || event_add(r->ev, NULL) == -1)
      abort();
    tc->n_rings++;
  }
  if (tc->n_rings == 0) {
    snprintf(err, errlen, "no CPU accepted a perf event on "
             "block:block_rq_complete");
    trace_capture_close(tc);
    return NULL;
  }
  trace_accounting_open(tc);
  {
    struct timeval tv = { 0, (suseconds_t)cfg->poll_ms * 1000 };
    tc->poll = event_new(base, -1, EV_PERSIST, poll_tick, tc);
    if (!tc->poll || event_add(tc->poll, &tv) == -1)
      abort();
  }
  log_info("primary: tailing %s (%u:%u%s) through block:block_rq_complete "
           "on %u CPUs, %u KiB of trace buffer each", cfg->path,
           cfg->dev.major, cfg->dev.minor,
           cfg->dev.start ? ", a partition" : "", tc->n_rings,
           (unsigned)(tc->rings[0].size / 1024));
  return tc;
}

void
trace_capture_close(struct trace_capture *tc)
{
  unsigned i;

  if (!tc)
    return;
  if (tc->poll)
    event_free(tc->poll);
  for (i = 0; i < tc->n_rings; i++) {
    struct trace_ring *r = &tc->rings[i];
    if (r->ev)
      event_free(r->ev);
    munmap(r->mp, r->map_len);
    close(r->fd);
  }
  free(tc->rings);
  if (tc->stat_fd >= 0)
    close(tc->stat_fd);
  free(tc);
}

void
trace_capture_get_counters(const struct trace_capture *tc,
                           struct trace_capture_counters *c)
{
  *c = tc->ctr;
}
