"""Data: records in a fixed order, image headers and decoding, splits and classes, the class
order, augmentation and the per-epoch streams (`docs/data.md`)."""
