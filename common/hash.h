/* Block hashes for online verify and checksum resync: XXH3-64 (libxxhash),
 * fast enough to hash at memory speed; not a cryptographic digest (the
 * link is authenticated by TLS, the hash only finds differences). */
#ifndef DUPLEX_HASH_H
#define DUPLEX_HASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t hash_block(const void *buf, size_t len);

#endif
