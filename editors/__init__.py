"""Editing methods (one package each, registered by name in registry.py, sharing the `Editor` verbs),
the scope model that decides which edit a query is about (scope/), and `EditedModel` (edited.py),
the one place that applies changes and answers queries."""
