/* Backgrounding that still reports startup errors: the parent waits until
 * the child says it is ready (exit 0) or why it failed (message on stderr,
 * exit code from the child), so `duplex-primary ...` without --foreground
 * fails with the same one-line error and exit code as in the foreground. */
#ifndef DUPLEX_DAEMON_H
#define DUPLEX_DAEMON_H

/* Fork; only the child returns (in a new session).  Call before creating
 * the event base.  No-op when foreground is true. */
void daemon_start(int foreground);
/* The agent is serving: let the parent exit 0, detach stdio. */
void daemon_ready(void);
/* Startup failed: message (one line) goes to the parent's stderr, which
 * exits with code.  In the foreground: print and exit. */
void daemon_fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

#endif
