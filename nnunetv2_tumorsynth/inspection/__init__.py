"""Looking at synthetic tumours: readers of tumours (raw, generated, bank), previews, the visual Turing kit and
realism statistics."""
