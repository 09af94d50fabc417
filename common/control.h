/* Control socket (Unix stream) used by duplexctl.  Protocol: the client
 * sends one line, words separated by spaces ("status --json"); the agent
 * answers "OK\n" or "ERR\n" followed by a body and closes. */
#ifndef DUPLEX_CONTROL_H
#define DUPLEX_CONTROL_H

#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>

/* Write the reply body to out; return 0 (OK) or -1 (ERR, body = message). */
typedef int (*control_fn)(void *opaque, int argc, char **argv,
                          struct evbuffer *out);

struct control;

struct control *control_new(struct event_base *base, const char *path,
                            control_fn fn, void *opaque, char *err,
                            size_t errlen);
void control_free(struct control *c); /* closes clients, unlinks path */

#endif
