"""Each patch of a library's internals is applied only to the version it was written against.

A patch replaces code inside a library (a private method, a module function). On another version
that code may have changed, been fixed, or moved: overriding it silently could break the server in
ways no test of ours sees. So every patch asks ``written_for(...)`` first; on any other installed
version it logs one warning naming the patch and the versions, and leaves the library alone.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("t2i.patches")
_warned: set[str] = set()


def matches(installed: str, tested: str) -> bool:
    """``tested`` is a version or a prefix of one: "1.4.39" matches 1.4.39 only, "0.42" any 0.42.x."""
    return installed == tested or installed.startswith(tested + ".")


def written_for(package: str, tested: str, patch: str) -> bool:
    """True when the installed ``package`` is the version ``patch`` was written against."""
    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "not installed"
    if matches(installed, tested):
        return True
    if patch not in _warned:
        _warned.add(patch)
        log.warning("patch %s was written for %s %s; %s %s is installed, so it is not applied "
                    "(check whether the upstream code still needs it: t2i_core/patches/)",
                    patch, package, tested, package, installed)
    return False
