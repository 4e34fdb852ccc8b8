"""VIMCAN Studio application: the desktop window (Qt lives only in this package) and the
``vimcan`` command line."""
