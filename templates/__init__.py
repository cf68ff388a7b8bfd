"""Templates ksi renders, shipped inside the package as ``ksi.templates``: the kind cluster config."""
