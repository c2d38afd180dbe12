"""Packages the op library for pip. The library is built by CMake from the one source list in
CMakeLists.txt, against the torch of the interpreter running pip (`pip install --no-build-isolation .`), in
the same build directory `make build` uses for that torch (build/torch-<version>), then copied into the
package under lib/torch-<version>/, where the loader looks for it."""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _torch_tag():
    """The loader's name for the running torch's libraries (torch_rnn_ext/_library.py, run as a script)."""
    return subprocess.check_output([sys.executable, os.path.join(ROOT, "torch_rnn_ext", "_library.py"), "--tag"],
                                   text=True).strip()


class CMakeLibrary(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch  # the build needs the torch it will run with (pip --no-build-isolation)

        tag = _torch_tag()
        build_dir = os.environ.get("TORCH_RNN_EXT_BUILD_DIR", os.path.join(ROOT, "build", tag))
        configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
        if shutil.which("ninja") and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            configure += ["-G", "Ninja"]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "torch_rnn_ext", "-j",
                               str(os.cpu_count() or 1)])
        dest = os.path.join(self.build_lib, "torch_rnn_ext", "lib", tag)
        os.makedirs(dest, exist_ok=True)
        shutil.copy2(os.path.join(build_dir, "libtorch_rnn_ext.so"), dest)


setup(
    name="torch_rnn_ext",
    version="0.1.0",
    description="Recurrent networks (LSTM, GRU, RNN, selective scan, WKV) as fused C++ PyTorch operators",
    packages=find_packages(include=["torch_rnn_ext", "torch_rnn_ext.*"]),
    ext_modules=[CMakeLibrary("torch_rnn_ext.lib.libtorch_rnn_ext")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.8",
    zip_safe=False,
)
