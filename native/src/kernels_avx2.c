/* AVX2 + FMA + F16C kernels (x86-64 only; an empty unit elsewhere). Selected at
 * run time; the target attribute applies per function, never -march=native. */
#include "dsn_common.h"
#ifdef DSN_X86
#define DSN_SFX avx2
#define DSN_ISA 1
#define DSN_ISA_NAME "avx2"
#define DSN_TARGET __attribute__((target("avx2,fma,f16c")))
#include "dsn_body.h"
#else
typedef int dsn_avx2_unused;
#endif
