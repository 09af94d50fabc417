/* Minimal JSON object writer for status output: one compact object per
 * call of json_begin/json_end, strings escaped per RFC 8259. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "json.h"

#define JSON_MAX_DEPTH ((int)(sizeof(((struct json *)0)->first) - 1))

static void
json_string(struct evbuffer *out, const char *s)
{
  static const char hex[] = "0123456789abcdef";
  const char *run = s;

  evbuffer_add(out, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    const char *esc = NULL;
    char u[7];

    switch (ch) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    default:
      if (ch < 0x20 || ch == 0x7f) {
        u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
        u[4] = hex[ch >> 4]; u[5] = hex[ch & 15]; u[6] = '\0';
        esc = u;
      }
    }
    if (esc) {
      evbuffer_add(out, run, (size_t)(s - run));
      evbuffer_add(out, esc, strlen(esc));
      run = s + 1;
    }
  }
  evbuffer_add(out, run, (size_t)(s - run));
  evbuffer_add(out, "\"", 1);
}

/* Separator and key for the next member of the current object. */
static void
json_key(struct json *j, const char *key)
{
  int d = j->depth < JSON_MAX_DEPTH ? j->depth : JSON_MAX_DEPTH;

  if (!j->first[d])
    evbuffer_add(j->out, ",", 1);
  j->first[d] = false;
  json_string(j->out, key);
  evbuffer_add(j->out, ":", 1);
}

void
json_begin(struct json *j, struct evbuffer *out)
{
  j->out = out;
  j->depth = 0;
  j->first[0] = true;
  evbuffer_add(out, "{", 1);
}

void
json_end(struct json *j)
{
  evbuffer_add(j->out, "}\n", 2);
}

void
json_obj_begin(struct json *j, const char *key)
{
  json_key(j, key);
  evbuffer_add(j->out, "{", 1);
  j->depth++;
  if (j->depth <= JSON_MAX_DEPTH)
    j->first[j->depth] = true;
}

void
json_obj_end(struct json *j)
{
  evbuffer_add(j->out, "}", 1);
  if (j->depth > 0)
    j->depth--;
}

void
json_str(struct json *j, const char *key, const char *val)
{
  if (!val) {
    json_null(j, key);
    return;
  }
  json_key(j, key);
  json_string(j->out, val);
}

void
json_u64(struct json *j, const char *key, uint64_t v)
{
  json_key(j, key);
  evbuffer_add_printf(j->out, "%" PRIu64, v);
}

void
json_i64(struct json *j, const char *key, int64_t v)
{
  json_key(j, key);
  evbuffer_add_printf(j->out, "%" PRId64, v);
}

void
json_double(struct json *j, const char *key, double v)
{
  if (!isfinite(v)) {
    json_null(j, key);
    return;
  }
  json_key(j, key);
  evbuffer_add_printf(j->out, "%.3f", v);
}

void
json_bool(struct json *j, const char *key, bool v)
{
  json_key(j, key);
  evbuffer_add_printf(j->out, "%s", v ? "true" : "false");
}

void
json_null(struct json *j, const char *key)
{
  json_key(j, key);
  evbuffer_add(j->out, "null", 4);
}
