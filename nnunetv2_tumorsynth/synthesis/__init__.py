"""One synthetic tumour, arrays in, arrays out (no nnU-Net imports): shape, placement, vessels, mass effect,
texture, the entry file format, and ``synthesise`` (plan and fill one case's tumours)."""
