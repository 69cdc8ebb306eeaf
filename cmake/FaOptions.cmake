# FaOptions.cmake - the FA_* build options of libflash_attention, each documented where it is declared.
# Included after project(), so the CUDA compiler version is known for the defaults.

# FA_CUDA_ARCHS: the GPU architectures to compile kernels for, as a semicolon list of compute
# capabilities without the dot. Plain numbers ("80") build SASS for that architecture; a trailing "a"
# ("90a") builds the architecture-specific target that Hopper's wgmma/TMA/setmaxnreg need (nvcc >= 12.3).
# PTX of the lowest plain architecture is embedded too, so GPUs newer than every listed one still run
# (JIT-compiled by the driver on first use).
# Default: "80" with nvcc < 12.3 (CUDA 11.8 cannot assemble sm_90a), "80;90a" with nvcc >= 12.3.
if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.3)
  set(_fa_default_archs "80")
else()
  set(_fa_default_archs "80;90a")
endif()
set(FA_CUDA_ARCHS "${_fa_default_archs}" CACHE STRING
    "GPU architectures to build, e.g. \"80\" or \"80;90a\" (default: 80, plus 90a when nvcc >= 12.3)")

# FA_HEAD_DIMS: the head dims to compile forward kernels for. For each d, the sources
# native/kernels/sm80/fwd_hdim<d>_*.cu are built and FA_HAS_HDIM<d>=1 is defined; a head dim left out
# is reported as FA_STATUS_UNSUPPORTED at run time. Fewer head dims build faster.
set(FA_HEAD_DIMS "32;64;96;128;192;256" CACHE STRING "Head dims to compile forward kernels for, e.g. \"64;128\"")

# FA_BUILD_TESTS: build the C ABI test (native/tests/c_abi_test.c) and register it, together with the
# ABI-boundary check (tools/check_abi_boundary.py), with ctest.
option(FA_BUILD_TESTS "Build the C ABI test and register the ctest tests" ON)

# FA_PTXAS_VERBOSE: pass -Xptxas -v to nvcc, which prints registers, shared memory and spills of every
# kernel (useful when tuning tiles; off by default so that normal builds stay quiet).
option(FA_PTXAS_VERBOSE "Print ptxas resource usage (registers, smem, spills) per kernel" OFF)

# FA_SM90_FWD_TRACE: a measuring build of the sm90 forward: clock64 stamps of each tile's phases, read back by
# fa_debug_fwd_trace (head-dim-128 bf16 kernels; native/kernels/sm90/fwd_trace.cuh, bench/fwd_trace.py). Never for
# a release: the stamps cost a little and the library exports two more functions.
option(FA_SM90_FWD_TRACE "Trace the sm90 forward's tile phases (a measuring build)" OFF)

# FA_SM90_BWD_TRACE: a measuring build of the sm90 backward: the cycles of each phase of each iteration, summed per CTA
# and role, read back by fa_debug_bwd_trace (the bf16 kernels of head dim FA_SM90_BWD_TRACE_HDIM: 64, 128, 192 or 256;
# native/kernels/sm90/bwd_trace.cuh, bench/bwd_trace.py). Never for a release, as the forward's.
option(FA_SM90_BWD_TRACE "Trace the sm90 backward's iteration phases (a measuring build)" OFF)
set(FA_SM90_BWD_TRACE_HDIM "64" CACHE STRING "Head dim whose bf16 sm90 backward kernels the trace reads back")

# FA_WARNINGS_AS_ERRORS: turn compiler warnings of the library's own sources into errors (CI uses it).
option(FA_WARNINGS_AS_ERRORS "Treat compiler warnings as errors" OFF)
