"""A toy editing method, to show (and test) that a method needs one package and one registration: its
config, its editor and its `Method`, registered as `METHODS["toy"] = TOY` (tests/test_methods.py)."""
