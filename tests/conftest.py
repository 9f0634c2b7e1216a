"""Puts tests/ on sys.path (pytest's default import mode adds a conftest's folder), so that test
modules anywhere below can import the shared helpers here, e.g. ``from image_lists import ...``."""
