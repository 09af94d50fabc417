/* Hash table from block hashes to values (see htab.h). */
#include <stdlib.h>
#include <string.h>

#include "htab.h"

void
htab_init(struct htab *t)
{
  memset(t, 0, sizeof *t);
}

void
htab_free(struct htab *t)
{
  free(t->slots);
  memset(t, 0, sizeof *t);
}

static size_t
htab_bucket(const struct store_hash *key, size_t cap)
{
  uint64_t v;

  memcpy(&v, key->b, sizeof v);
  return (size_t)(v & (cap - 1));
}

static struct htab_slot *
htab_slot(const struct htab *t, const struct store_hash *key)
{
  size_t i;

  if (t->cap == 0)
    return NULL;
  for (i = htab_bucket(key, t->cap);; i = (i + 1) & (t->cap - 1)) {
    struct htab_slot *s = &t->slots[i];
    if (!s->used || memcmp(s->key.b, key->b, STORE_HASH_LEN) == 0)
      return s;
  }
}

static void
htab_grow(struct htab *t)
{
  struct htab old = *t;

  t->cap = old.cap ? old.cap * 2 : 1024;
  t->slots = calloc(t->cap, sizeof *t->slots);
  if (!t->slots)
    abort();
  t->n = 0;
  for (size_t i = 0; i < old.cap; i++)
    if (old.slots[i].used)
      htab_put(t, &old.slots[i].key, old.slots[i].value);
  free(old.slots);
}

int64_t
htab_get(const struct htab *t, const struct store_hash *key)
{
  const struct htab_slot *s = htab_slot(t, key);

  return s && s->used ? (int64_t)s->value : -1;
}

void
htab_put(struct htab *t, const struct store_hash *key, uint32_t value)
{
  struct htab_slot *s;

  if ((t->n + 1) * 2 > t->cap)
    htab_grow(t);
  s = htab_slot(t, key);
  if (!s->used) {
    s->used = true;
    s->key = *key;
    t->n++;
  }
  s->value = value;
}

bool
htab_add(struct htab *t, const struct store_hash *key, uint32_t value)
{
  if (htab_get(t, key) >= 0)
    return false;
  htab_put(t, key, value);
  return true;
}
