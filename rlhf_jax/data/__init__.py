"""Data: text corpora, the TFDS corpus builder, and the language-model input pipeline."""
