/* What every duplex program prints for --version: the release and the
 * commit it was built from (DUPLEX_GIT, generated at build time by
 * common/git-version.cmake; "-dirty" when the tree had uncommitted
 * changes), so that a figure or a bug report names the binaries, not
 * whatever the source tree holds now. */
#ifndef DUPLEX_COMMON_VERSION_H
#define DUPLEX_COMMON_VERSION_H

#include "duplex-git.h"

/* DUPLEX_VERSION: the project's version, a compile definition from the
 * top-level CMakeLists.txt. */
#define DUPLEX_VERSION_TEXT DUPLEX_VERSION " (git " DUPLEX_GIT ")"

#endif
