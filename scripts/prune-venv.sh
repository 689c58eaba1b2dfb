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
#   byte code of torch._inductor, torch._dynamo, torch.onnx, torchgen: torch.compile and export machinery the
#                              service never imports (if something did, Python would compile it in memory)
#   symbol tables of torch/lib/*.so (strip --strip-unneeded: ~90 MB of libtorch_cpu.so); the dynamic
#                              symbols the loader needs stay
# The image's test (scripts/image-test.sh) runs the live test suite inside the pruned image.
set -eu
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
# shellcheck disable=SC2046
removed "__pycache__ of torch._inductor, torch._dynamo, torch.onnx, torchgen" \
    $(find torch/_inductor torch/_dynamo torch/onnx torchgen -type d -name __pycache__ 2>/dev/null)
size=$(du -smc torch/lib/*.so* | tail -n 1 | cut -f1)
strip --strip-unneeded torch/lib/*.so*
saved=$(( size - $(du -smc torch/lib/*.so* | tail -n 1 | cut -f1) ))
echo "  $saved MB  symbol tables of torch/lib/*.so (strip --strip-unneeded)"
echo "prune-venv: $before MB -> $(du -sm "$VENV" | cut -f1) MB"
