"""Training of the models the server loads but does not train itself: the scope model
(`editserve train-scope`, scope.py with its data in scope_data.py) and SERAC's counterfactual adapter
(`editserve train-serac`, serac.py). Train files only; seeded, so a re-run writes the same bytes."""
