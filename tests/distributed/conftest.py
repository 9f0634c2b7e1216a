from dist_helpers import image_lists, single_thread  # noqa: F401  (fixtures)
