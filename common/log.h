/* Logging: stderr in the foreground, syslog as a service.  Every format
 * accepts %m (errno is preserved across the call). */
#ifndef DUPLEX_LOG_H
#define DUPLEX_LOG_H

#include <stdbool.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* ident: "duplex-primary" etc.  foreground: stderr, otherwise syslog. */
void log_init(const char *ident, bool foreground);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)                                                         \
  do {                                                                         \
    if (log_enabled(LOG_LVL_DEBUG))                                            \
      log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                     \
  } while (0)

#endif
