"""The embedded benchmark: real images from pinned Debian and PyPI packages (``sources``), fakes
made here by small generators of several families (``generators``, assembled by ``build``)."""
