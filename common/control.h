/* Control socket (Unix stream) used by duplexctl.  Protocol: the client
 * sends one line, words separated by spaces ("status --json"); the agent
 * answers "OK\n" or "ERR\n" followed by a body and closes. */
#ifndef DUPLEX_CONTROL_H
#define DUPLEX_CONTROL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>

/* Write the reply body to out; return 0 (OK) or -1 (ERR, body = message),
 * or CONTROL_LATER after control_defer: the reply follows later through
 * control_finish (e.g. once the peer answered). */
typedef int (*control_fn)(void *opaque, int argc, char **argv,
                          struct evbuffer *out);
#define CONTROL_LATER 1

struct control;
struct control_pending;

/* Inside control_fn only: the reply to the command being run will be given
 * by control_finish.  Never NULL. */
struct control_pending *control_defer(struct control *c);
/* The same, for a command that may take up to `seconds` (the client must
 * wait as long: e.g. duplexctl demote --timeout). */
struct control_pending *control_defer_for(struct control *c,
                                          unsigned seconds);
/* Send the deferred reply (ok: "OK", else "ERR") with body (may be NULL)
 * and free p.  A client that went away meanwhile is not an error. */
void control_finish(struct control_pending *p, bool ok,
                    struct evbuffer *body);
/* control_finish with a one-line body (a newline is added). */
void control_finish_vprintf(struct control_pending *p, bool ok,
                            const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

struct control *control_new(struct event_base *base, const char *path,
                            control_fn fn, void *opaque, char *err,
                            size_t errlen);
void control_free(struct control *c); /* closes clients, unlinks path */
/* A reply is still being written to some client (an agent about to exit
 * lets it go out first). */
bool control_flushing(const struct control *c);

#endif
