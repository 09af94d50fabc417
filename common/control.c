/* Control socket: a Unix stream listener, mode 0600, answering one command
 * per connection.  A client sends one line; the line is split into words
 * and handed to the agent's control_fn; the reply is "OK\n" or "ERR\n" and
 * a body, then the connection is closed once the reply is flushed.  A reply
 * may be deferred (control_defer / control_finish): the client then waits,
 * at most CONTROL_TIMEOUT_SEC, like for any reply, or as long as the
 * command said (control_defer_for). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "control.h"
#include "log.h"
#include "util.h"

#define CONTROL_MAX_LINE 4096
#define CONTROL_MAX_WORDS 32
#define CONTROL_MAX_CLIENTS 32
#define CONTROL_TIMEOUT_SEC 10

struct control_client {
  struct control *c;
  struct bufferevent *bev;
  struct control_pending *pending; /* a deferred reply is owed */
  struct event *late;           /* gives up on a deferred reply */
  LIST_ENTRY(control_client) link;
};

struct control_pending {
  struct control_client *cl;    /* NULL once the client is gone */
};

struct control {
  struct event_base *base;
  struct evconnlistener *lst;
  control_fn fn;
  void *opaque;
  char *path;
  unsigned nclients;
  LIST_HEAD(, control_client) clients;
  struct control_client *running; /* whose command control_fn runs */
};

static void
control_client_free(struct control_client *cl)
{
  if (cl->pending)
    cl->pending->cl = NULL;
  if (cl->late)
    event_free(cl->late);
  LIST_REMOVE(cl, link);
  cl->c->nclients--;
  bufferevent_free(cl->bev);
  free(cl);
}

static void
control_reply(struct control_client *cl, bool ok, struct evbuffer *body)
{
  struct evbuffer *out = bufferevent_get_output(cl->bev);

  evbuffer_add_printf(out, "%s\n", ok ? "OK" : "ERR");
  evbuffer_add_buffer(out, body);
  /* No more input; the write callback closes once the reply is out. */
  bufferevent_disable(cl->bev, EV_READ);
  bufferevent_enable(cl->bev, EV_WRITE);
}

static void
control_error(struct control_client *cl, const char *msg)
{
  struct evbuffer *body = evbuffer_new();

  if (!body) {
    control_client_free(cl);
    return;
  }
  evbuffer_add_printf(body, "%s\n", msg);
  control_reply(cl, false, body);
  evbuffer_free(body);
}

/* Split line in place into at most CONTROL_MAX_WORDS words. */
static int
control_split(char *line, char **argv)
{
  int argc = 0;
  char *save, *w;

  for (w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
    if (argc == CONTROL_MAX_WORDS)
      return -1;
    argv[argc++] = w;
  }
  argv[argc] = NULL;
  return argc;
}

static void
control_run(struct control_client *cl, char *line)
{
  char *argv[CONTROL_MAX_WORDS + 1];
  struct evbuffer *body;
  int argc, r;

  argc = control_split(line, argv);
  if (argc < 0) {
    control_error(cl, "too many words in command");
    return;
  }
  if (argc == 0) {
    control_error(cl, "empty command");
    return;
  }
  body = evbuffer_new();
  if (!body) {
    control_client_free(cl);
    return;
  }
  cl->c->running = cl;
  r = cl->c->fn(cl->c->opaque, argc, argv, body);
  cl->c->running = NULL;
  if (r == CONTROL_LATER && cl->pending) {
    /* No more commands on this connection; the reply comes later. */
    bufferevent_disable(cl->bev, EV_READ);
  } else {
    control_reply(cl, r == 0, body);
  }
  evbuffer_free(body);
}

static void control_error(struct control_client *cl, const char *msg);

/* A deferred reply did not come in time: say so (the owner's later
 * control_finish then finds no client). */
static void
control_late_cb(evutil_socket_t fd, short what, void *arg)
{
  struct control_client *cl = arg;

  (void)fd;
  (void)what;
  if (!cl->pending)
    return;
  cl->pending->cl = NULL;
  cl->pending = NULL;
  control_error(cl, "no answer in time; the agent is busy or its peer did "
                "not respond");
}

bool
control_flushing(const struct control *c)
{
  const struct control_client *cl;

  LIST_FOREACH(cl, &c->clients, link)
    if (evbuffer_get_length(bufferevent_get_output(cl->bev)) > 0)
      return true;
  return false;
}

struct control_pending *
control_defer(struct control *c)
{
  return control_defer_for(c, CONTROL_TIMEOUT_SEC);
}

struct control_pending *
control_defer_for(struct control *c, unsigned seconds)
{
  struct control_pending *p = calloc(1, sizeof *p);
  struct control_client *cl = c->running;
  struct timeval tv = { (time_t)seconds, 0 };

  if (!p || !cl)
    abort();                    /* only inside control_fn */
  p->cl = cl;
  cl->pending = p;
  if (!cl->late)
    cl->late = evtimer_new(c->base, control_late_cb, cl);
  if (cl->late)
    evtimer_add(cl->late, &tv);
  return p;
}

void
control_finish(struct control_pending *p, bool ok, struct evbuffer *body)
{
  struct control_client *cl = p->cl;
  struct evbuffer *empty = NULL;

  free(p);
  if (!cl)
    return;
  cl->pending = NULL;
  if (cl->late)
    evtimer_del(cl->late);
  if (!body)
    body = empty = evbuffer_new();
  if (body)
    control_reply(cl, ok, body);
  if (empty)
    evbuffer_free(empty);
}

void
control_finish_vprintf(struct control_pending *p, bool ok, const char *fmt,
                       va_list ap)
{
  struct evbuffer *body = evbuffer_new();

  if (body == NULL)
    abort();
  evbuffer_add_vprintf(body, fmt, ap);
  evbuffer_add(body, "\n", 1);
  control_finish(p, ok, body);
  evbuffer_free(body);
}

static void
control_read_cb(struct bufferevent *bev, void *arg)
{
  struct control_client *cl = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t n;
  char *line;

  line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
  if (!line) {
    if (evbuffer_get_length(in) > CONTROL_MAX_LINE)
      control_error(cl, "command line too long");
    return;
  }
  if (n > CONTROL_MAX_LINE || strlen(line) != n)
    control_error(cl, n > CONTROL_MAX_LINE ? "command line too long"
                                           : "command contains a NUL byte");
  else
    control_run(cl, line);
  free(line);
}

static void
control_write_cb(struct bufferevent *bev, void *arg)
{
  struct control_client *cl = arg;

  /* Called when the output drained; before a reply there is none. */
  if (!(bufferevent_get_enabled(bev) & EV_READ))
    control_client_free(cl);
}

static void
control_event_cb(struct bufferevent *bev, short what, void *arg)
{
  struct control_client *cl = arg;

  (void)bev;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
    control_client_free(cl);
}

static void
control_accept_cb(struct evconnlistener *lst, evutil_socket_t fd,
                  struct sockaddr *sa, int salen, void *arg)
{
  struct control *c = arg;
  struct control_client *cl;
  struct timeval tv = { CONTROL_TIMEOUT_SEC, 0 };

  (void)lst;
  (void)sa;
  (void)salen;
  if (c->nclients >= CONTROL_MAX_CLIENTS) {
    log_warn("control %s: too many clients, refusing one", c->path);
    close(fd);
    return;
  }
  cl = calloc(1, sizeof *cl);
  if (!cl) {
    close(fd);
    return;
  }
  cl->c = c;
  cl->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!cl->bev) {
    close(fd);
    free(cl);
    return;
  }
  LIST_INSERT_HEAD(&c->clients, cl, link);
  c->nclients++;
  bufferevent_setcb(cl->bev, control_read_cb, control_write_cb,
                    control_event_cb, cl);
  bufferevent_set_timeouts(cl->bev, &tv, &tv);
  bufferevent_enable(cl->bev, EV_READ);
}

struct control *
control_new(struct event_base *base, const char *path, control_fn fn,
            void *opaque, char *err, size_t errlen)
{
  struct endpoint ep = { .is_unix = true };
  struct control *c;
  mode_t old;
  int fd;

  if (strlen(path) >= sizeof ep.path) {
    snprintf(err, errlen, "--control %s: path too long", path);
    return NULL;
  }
  strcpy(ep.path, path);
  c = calloc(1, sizeof *c);
  if (!c || !(c->path = strdup(path))) {
    free(c);
    snprintf(err, errlen, "--control %s: out of memory", path);
    return NULL;
  }
  c->base = base;
  c->fn = fn;
  c->opaque = opaque;
  LIST_INIT(&c->clients);

  /* Only root (the owner) may control the agent: create the socket without
   * group/other permissions rather than fixing them up afterwards. */
  old = umask(0077);
  fd = util_listen(&ep, err, errlen);
  umask(old);
  if (fd == -1)
    goto err;
  if (chmod(path, 0600) == -1) {
    snprintf(err, errlen, "--control %s: chmod: %m", path);
    close(fd);
    unlink(path);
    goto err;
  }
  c->lst = evconnlistener_new(base, control_accept_cb, c,
                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                              0, fd);
  if (!c->lst) {
    snprintf(err, errlen, "--control %s: cannot register the listener", path);
    close(fd);
    unlink(path);
    goto err;
  }
  return c;

err:
  free(c->path);
  free(c);
  return NULL;
}

void
control_free(struct control *c)
{
  struct control_client *cl;

  if (!c)
    return;
  while ((cl = LIST_FIRST(&c->clients)))
    control_client_free(cl);
  evconnlistener_free(c->lst);
  unlink(c->path);
  free(c->path);
  free(c);
}
