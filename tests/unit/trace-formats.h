/* block:block_rq_complete formats as two kernel generations print them
 * (tracefs events/block/block_rq_complete/format), for the tail capture's
 * unit tests and fuzz target. */
#ifndef DUPLEX_TEST_TRACE_FORMATS_H
#define DUPLEX_TEST_TRACE_FORMATS_H

/* Linux 6.18 (this machine's tracefs). */
static const char fmt_new[] __attribute__((unused)) =
    "name: block_rq_complete\n"
    "ID: 2107\n"
    "format:\n"
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
    "\n"
    "\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;\n"
    "\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;\n"
    "\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;\n"
    "\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;\n"
    "\tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:0;\n"
    "\n"
    "print fmt: \"%d,%d %s (%s) %llu + %u [%d]\", ((unsigned int) ((REC->dev) "
    ">> 20)), ((unsigned int) ((REC->dev) & ((1U << 20) - 1))), REC->rwbs, "
    "__get_str(cmd), (unsigned long long)REC->sector, REC->nr_sector, "
    "REC->error\n";

/* Linux 5.10: no ioprio, rwbs of 8 bytes. */
static const char fmt_old[] __attribute__((unused)) =
    "name: block_rq_complete\n"
    "ID: 1234\n"
    "format:\n"
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
    "\n"
    "\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;\n"
    "\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;\n"
    "\tfield:char rwbs[8];\toffset:32;\tsize:8;\tsigned:1;\n"
    "\tfield:__data_loc char[] cmd;\toffset:40;\tsize:4;\tsigned:1;\n"
    "\n"
    "print fmt: \"%d,%d %s (%s) %llu + %u [%d]\", ((unsigned int) ((REC->dev) "
    ">> 20)), ((unsigned int) ((REC->dev) & ((1U << 20) - 1))), REC->rwbs, "
    "__get_str(cmd), (unsigned long long)REC->sector, REC->nr_sector, "
    "REC->error\n";

#endif
