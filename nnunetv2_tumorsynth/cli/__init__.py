"""One module per ``tumorsynth_*`` command; each is a thin layer over the library."""
