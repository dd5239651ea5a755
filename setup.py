"""Package discovery for st2chip; every other setting lives in pyproject.toml.

converters/ and targets/ are top-level folders of the repository that install as
``st2chip.converters`` and ``st2chip.targets``, so nothing generic named
``converters`` or ``targets`` lands in site-packages. pyproject.toml's ``find``
cannot put a prefix before the packages it discovers, so this file does: every
folder under each root is found, none is listed by hand (a hand-kept list once
left ``targets/lava_host`` out of the wheel). Folders that hold only data
(``chip/resources``) are packages too, so their files travel as package data.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"st2chip": "st2chip", "st2chip.converters": "converters", "st2chip.targets": "targets"}


def discovered_packages() -> list[str]:
    """Each root and every folder below it (caches excluded), named as installed."""
    return [name for root, folder in ROOTS.items()
            for name in [root] + [f"{root}.{sub}" for sub in
                                  find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])]]


setup(packages=discovered_packages(), package_dir=ROOTS)
