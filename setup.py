"""Build the Cython + OpenMP CPU kernels (csrc/cpu) into transformer._cpu.

SIMD: the row kernels in csrc/cpu/kernels.c carry GCC target_clones, so one build holds an
AVX-512, an AVX2+FMA and a baseline x86-64 version of each and the loader picks the best at run
time; matmuls go through the BLAS behind SciPy, which dispatches on the CPU itself. Set
TRANSFORMER_NATIVE=1 to add -march=native (a build for this machine only); TRANSFORMER_NO_OPENMP=1
builds without OpenMP (the loops then run on one thread).
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
                "-fno-signed-zeros", "-Wno-unused-function"]
link_args = ["-lm"]
if sys.platform == "win32":
    compile_args, link_args = ["/O2", "/openmp"], []
elif os.environ.get("TRANSFORMER_NO_OPENMP") != "1":
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
if os.environ.get("TRANSFORMER_NATIVE") == "1":
    compile_args.append("-march=native")

extensions = [
    Extension(
        "transformer._cpu",
        sources=["csrc/cpu/_cpu.pyx", "csrc/cpu/kernels.c", "csrc/cpu/gemm.c"],
        include_dirs=["csrc/cpu"],
        extra_compile_args=compile_args,
        define_macros=[("TRANSFORMER_BUILD_FLAGS", '"%s"' % " ".join(compile_args))],
        extra_link_args=link_args,
    )
]

setup(
    ext_modules=cythonize(extensions, include_path=["csrc/cpu"],
                          compiler_directives={"language_level": 3}),
)
