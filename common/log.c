/* Logging: one line per message, to stderr with a UTC timestamp when the
 * agent runs in the foreground, to syslog (LOG_DAEMON) as a service.
 * errno is saved on entry and restored before every formatting call so
 * that %m (a glibc printf extension) prints the caller's errno. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char *log_ident = "duplex";
static bool log_foreground = true;
static enum log_level log_level = LOG_LVL_INFO;

static const char *const log_level_names[] = {
  [LOG_LVL_ERROR] = "error",
  [LOG_LVL_WARN] = "warning",
  [LOG_LVL_INFO] = "info",
  [LOG_LVL_DEBUG] = "debug",
};

static const int log_syslog_prio[] = {
  [LOG_LVL_ERROR] = LOG_ERR,
  [LOG_LVL_WARN] = LOG_WARNING,
  [LOG_LVL_INFO] = LOG_INFO,
  [LOG_LVL_DEBUG] = LOG_DEBUG,
};

void
log_init(const char *ident, bool foreground)
{
  int saved = errno;

  log_ident = ident;
  log_foreground = foreground;
  if (!foreground)
    openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
  errno = saved;
}

void
log_set_level(enum log_level level)
{
  log_level = level;
}

bool
log_enabled(enum log_level level)
{
  return level <= log_level;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
  int saved = errno;
  char msg[2048];
  va_list ap;

  if (!log_enabled(level))
    return;
  if ((unsigned)level > LOG_LVL_DEBUG)
    level = LOG_LVL_ERROR;

  va_start(ap, fmt);
  errno = saved;
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  if (log_foreground) {
    struct timespec ts;
    struct tm tm;
    char when[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    /* One fprintf per line: stderr is unbuffered, so a single call keeps
     * lines from concurrent processes (tests) from interleaving. */
    fprintf(stderr, "%s.%03ldZ %s[%ld]: %s: %s\n", when,
            ts.tv_nsec / 1000000, log_ident, (long)getpid(),
            log_level_names[level], msg);
  } else {
    syslog(log_syslog_prio[level], "%s: %s", log_level_names[level], msg);
  }
  errno = saved;
}
