"""YouTube-VIS video AP evaluation and results files."""
