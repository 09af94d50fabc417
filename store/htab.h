/* A hash table from block hashes (SHA-256: already uniform, so the first
 * 8 bytes are the bucket key) to a 32-bit value, open addressing with
 * linear probing, no deletion (tables are rebuilt instead). */
#ifndef DUPLEX_STORE_HTAB_H
#define DUPLEX_STORE_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

struct htab_slot {
  struct store_hash key;
  uint32_t value;
  bool used;
};

struct htab {
  struct htab_slot *slots;
  size_t cap;                   /* a power of two */
  size_t n;
};

void htab_init(struct htab *t);
void htab_free(struct htab *t);
/* The value for key, or -1. */
int64_t htab_get(const struct htab *t, const struct store_hash *key);
/* Insert or replace. */
void htab_put(struct htab *t, const struct store_hash *key, uint32_t value);
/* Insert unless present; true if it was inserted. */
bool htab_add(struct htab *t, const struct store_hash *key, uint32_t value);

#endif
