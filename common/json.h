/* Minimal JSON object writer for status output. */
#ifndef DUPLEX_JSON_H
#define DUPLEX_JSON_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>

struct json {
  struct evbuffer *out;
  int depth;
  bool first[16];
};

void json_begin(struct json *j, struct evbuffer *out); /* "{" */
void json_end(struct json *j);                          /* "}\n" */
void json_obj_begin(struct json *j, const char *key);
void json_obj_end(struct json *j);
void json_str(struct json *j, const char *key, const char *val); /* escaped */
void json_u64(struct json *j, const char *key, uint64_t v);
void json_i64(struct json *j, const char *key, int64_t v);
void json_double(struct json *j, const char *key, double v);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);

#endif
