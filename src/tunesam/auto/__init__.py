"""``tunesam auto`` (issue 20, in progress): the dataset fingerprint, the Table 4 scenario, budgets."""
