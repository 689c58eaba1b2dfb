#!/bin/sh
# Remove from a venv what the gradient service never loads, and print what went and how much it weighed.
# Run by the Dockerfile's build stage (needs strip(1) from binutils).  What goes, and why it is safe:
#   torch/test, torch/bin/*    C++ test binaries and protoc (torch_shm_manager stays: import torch checks for it)
#   torch/include, torch/share C/C++ headers and CMake files for building extensions     (never built)
#   torch/lib/*test*.so, libaoti_custom_ops.so, libbackend_with_compiler.so  test-only libraries
#   */tests                    test suites of sympy, numpy, networkx, mpmath, ...        (never imported)
#   networkx                   used by torch.compile's partitioner only (the service runs eager mode)
#   pip, setuptools, wheel     installers: nothing is installed at run time
#   *.pyi                      type stubs
#   sympy/polys/benchmarks     a benchmark suite
#   (torch/testing/_internal stays: torch.utils.checkpoint and torch._refs import parts of it)
#   byte code of subpackages that neither `import torch` nor the service imports (UNIMPORTED below: listed from
#                              sys.modules in the image after the warm-up, which runs every request path; if
#                              one were imported, Python would compile it in memory): torch.compile and export
#                              machinery (torch._inductor, torch._dynamo, torch.onnx), torch.distributed's
#                              parallel training, sympy's physics/statistics/..., numpy's build tools
#                              (torchgen stays: `import torch` imports torchgen.model)
#   symbol tables of torch/lib/*.so (strip --strip-unneeded: ~90 MB of libtorch_cpu.so); the dynamic
#                              symbols the loader needs stay
# The image's test (scripts/image-test.sh) runs the live test suite inside the pruned image.
set -eu
UNIMPORTED="torch/_inductor torch/_dynamo torch/onnx torch/distributed/tensor torch/distributed/fsdp
  torch/distributed/checkpoint torch/distributed/elastic torch/distributed/pipelining torch/distributed/_shard
  torch/distributed/_tools torch/distributed/_symmetric_memory torch/distributed/optim torch/distributed/_local_tensor
  torch/distributed/algorithms/ddp_comm_hooks torch/distributed/flight_recorder torch/_vendor/quack
  torch/ao/quantization/fx torch/ao/quantization/backend_config torch/ao/ns torch/ao/pruning torch/_numpy
  torch/_export/serde torch/_export/passes torch/utils/benchmark torch/utils/hipify torch/utils/tensorboard
  torch/fx/experimental/migrate_gradual_types torch/backends/_nnapi torch/testing/_internal/distributed
  torch/testing/_internal/opinfo torch/testing/_internal/generated torch/testing/_internal/optests
  sympy/physics sympy/combinatorics sympy/stats sympy/parsing/autolev sympy/parsing/latex sympy/tensor/array/expressions
  sympy/vector sympy/codegen sympy/holonomic sympy/testing sympy/assumptions/handlers sympy/categories sympy/diffgeom
  sympy/crypto sympy/logic/algorithms
  numpy/distutils numpy/f2py numpy/polynomial numpy/ma numpy/testing"
VENV=${1:?usage: prune-venv.sh VENV}
SITE=$(echo "$VENV"/lib/python3*/site-packages)
before=$(du -sm "$VENV" | cut -f1)

# removed LABEL PATH...: print the paths' total size and the label, then delete them
removed() {
    label=$1
    shift
    [ $# -gt 0 ] || return 0
    printf '  %6s MB  %s\n' "$(du -smc "$@" 2>/dev/null | tail -n 1 | cut -f1)" "$label"
    rm -rf "$@"
}
echo "prune-venv: removing from $VENV"
cd "$SITE"
# shellcheck disable=SC2046
removed "torch/test torch/bin torch/include torch/share" torch/test torch/include torch/share \
    $(find torch/bin -mindepth 1 -maxdepth 1 -not -name torch_shm_manager)
removed "torch/lib test libraries" torch/lib/libtorchbind_test.so torch/lib/libjitbackend_test.so \
    torch/lib/libaoti_custom_ops.so torch/lib/libbackend_with_compiler.so torch/lib/libshm_windows
# shellcheck disable=SC2046
removed "*/tests of $(find . -type d -name tests -not -path './torch/*' | cut -d/ -f2 | sort -u | tr '\n' ' ')" \
    $(find . -type d -name tests -not -path './torch/*' -prune)
removed "networkx" networkx networkx-*.dist-info
removed "pip setuptools wheel" pip pip-*.dist-info setuptools setuptools-*.dist-info wheel wheel-*.dist-info \
    _distutils_hack distutils-precedence.pth
# shellcheck disable=SC2046
removed "torch/**/*.pyi" $(find torch -name '*.pyi')
removed "sympy/polys/benchmarks" sympy/polys/benchmarks
# shellcheck disable=SC2046
removed "torch/**/py312_*.py (Python 3.12 syntax: 3.11 cannot compile them)" $(find torch -name 'py312_*.py')
# Byte code that never checks its source (PEP 552 unchecked-hash), instead of pip's timestamp-checked .pyc: the
# image's layer copies shift the files' mtimes by up to a second, which made every .pyc stale, so each container
# start compiled torch, sympy and the app from source in memory (read-only root): ~0.6 s of a 3 s start.
"$VENV/bin/python" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash .
echo "  byte code recompiled: unchecked-hash"
# shellcheck disable=SC2046,SC2086
removed "byte code of $(echo $UNIMPORTED | wc -w) never-imported subpackages (torch._inductor, sympy.physics, ...)" \
    $(find $UNIMPORTED -type d -name __pycache__ 2>/dev/null)
size=$(du -smc torch/lib/*.so* | tail -n 1 | cut -f1)
strip --strip-unneeded torch/lib/*.so*
saved=$(( size - $(du -smc torch/lib/*.so* | tail -n 1 | cut -f1) ))
echo "  $saved MB  symbol tables of torch/lib/*.so (strip --strip-unneeded)"
echo "prune-venv: $before MB -> $(du -sm "$VENV" | cut -f1) MB"
