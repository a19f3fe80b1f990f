"""
Packaging of smtpmx; the metadata is in C{setup.cfg}.

C{twisted.plugins} is listed as a package although it has no
C{__init__.py} (it must never have one: that would shadow Twisted's own),
so that the dropin C{twisted/plugins/smtpmx_plugin.py} is installed into
C{site-packages/twisted/plugins/}, where C{twistd} looks.

C{package_dir={"": "."}} makes a plain C{pip install -e .} work with
twistd: given a root package directory, setuptools' editable install puts
that directory (the checkout) on C{sys.path} with a static C{.pth} file
instead of an import hook that only knows C{smtpmx}, and twistd finds the
dropin through C{twisted.plugins}' search of every C{twisted/plugins}
directory on C{sys.path}.  A normal install is unaffected.
"""

from setuptools import find_packages, setup

setup(
    package_dir={"": "."},
    packages=find_packages(include=["smtpmx", "smtpmx.*"]) + ["twisted.plugins"],
)
