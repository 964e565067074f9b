"""Bulk-indexes image folders and text corpora into FAISS with a durable, incremental catalog."""
