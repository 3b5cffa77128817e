/* Portable kernels: baseline instruction set of the compiler (SSE2 on x86-64,
 * NEON/ASIMD on aarch64 through auto-vectorisation), no intrinsics. */
#define DSN_SFX scalar
#define DSN_ISA 0
#define DSN_ISA_NAME "scalar"
#define DSN_TARGET
#include "dsn_body.h"
