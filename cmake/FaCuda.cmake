# FaCuda.cmake - nvcc flags for the FA_CUDA_ARCHS list.
#
# The -gencode flags are written here rather than through CUDA_ARCHITECTURES, because CMake 3.25 does
# not know arch-specific targets such as "90a" while CMake 4.x does; writing them ourselves behaves the
# same on both.

# fa_cuda_gencode_flags(<out_var> <archs>): sets <out_var> to a list of "SHELL:-gencode ..." flags.
function(fa_cuda_gencode_flags out_var archs)
  set(flags "")
  set(lowest_plain "")
  foreach(arch IN LISTS archs)
    if(NOT arch MATCHES "^([0-9][0-9]+)(a?)$")
      message(FATAL_ERROR "FA_CUDA_ARCHS: '${arch}' is not an architecture; use numbers such as 80 or 90a")
    endif()
    set(number "${CMAKE_MATCH_1}")
    if(CMAKE_MATCH_2 STREQUAL "a" AND CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.3)
      message(FATAL_ERROR "FA_CUDA_ARCHS: '${arch}' needs nvcc >= 12.3, this nvcc is "
                          "${CMAKE_CUDA_COMPILER_VERSION}; configure with -DFA_CUDA_ARCHS=80")
    endif()
    if(number LESS 80)
      message(FATAL_ERROR "FA_CUDA_ARCHS: '${arch}' is below 80; the kernels need sm_80 or newer")
    endif()
    list(APPEND flags "SHELL:-gencode arch=compute_${arch},code=sm_${arch}")
    if(CMAKE_MATCH_2 STREQUAL "" AND (lowest_plain STREQUAL "" OR number LESS lowest_plain))
      set(lowest_plain "${number}")
    endif()
  endforeach()
  if(flags STREQUAL "")
    message(FATAL_ERROR "FA_CUDA_ARCHS is empty")
  endif()
  if(NOT lowest_plain STREQUAL "")
    list(APPEND flags "SHELL:-gencode arch=compute_${lowest_plain},code=compute_${lowest_plain}")
  endif()
  set(${out_var} "${flags}" PARENT_SCOPE)
endfunction()
