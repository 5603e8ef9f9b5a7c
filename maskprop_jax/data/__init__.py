"""YouTube-VIS-format data: reading, validation, synthetic videos, TFDS records and the clip pipeline."""
