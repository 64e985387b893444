"""Inputs: finding what to embed (``sources``), image-caption pairs (``pairs``), WebDataset shards
(``tarshards``), decoding (``decode``), the worker pipeline (``pipeline``), file names as text
(``filenames``), the stat cache, packed strings for forked workers, and generated data
(``synthetic``)."""
