/* A block device or image file as a source of the block sender
 * (sender.h). */
#ifndef DUPLEX_SENDER_BDEV_H
#define DUPLEX_SENDER_BDEV_H

#include "aio.h"
#include "blockdev.h"
#include "sender.h"

struct sender_bdev {
  struct aio_ctx *aio;
  struct bdev *vol;
};

/* The source reads sb (which must outlive the sender). */
struct sender_source sender_bdev_source(struct sender_bdev *sb);

#endif
