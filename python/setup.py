"""Only what pyproject.toml cannot say: the wheel carries a native library (libflash_attention.so, copied into the
package by ./build.sh wheel), so it is tagged for the platform (linux_x86_64) but for any Python 3 (py3-none): the
package itself is pure Python and calls the library through ctypes, so no interpreter ABI is involved."""
from setuptools import setup
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package's command
    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel


class BinaryDistribution(Distribution):
    """Installs the package into platlib (the wheel's root), as a package with a native library must be."""

    def has_ext_modules(self):
        return True


class bdist_wheel(_bdist_wheel):
    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": bdist_wheel})
