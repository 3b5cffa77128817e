/* AVX-512F kernels (x86-64 only; an empty unit elsewhere). */
#include "dsn_common.h"
#ifdef DSN_X86
#define DSN_SFX avx512
#define DSN_ISA 2
#define DSN_ISA_NAME "avx512"
#define DSN_TARGET __attribute__((target("avx512f,avx2,fma,f16c,prefer-vector-width=512")))
#include "dsn_body.h"
#else
typedef int dsn_avx512_unused;
#endif
