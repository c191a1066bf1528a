"""The datasets, each self-contained: the embedded benchmark (with its generators), GenImage's
archives and ImagiNet's annotation files. They build on :mod:`synthdet.data` and nothing above it."""
