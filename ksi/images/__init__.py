"""Images from shared storage: ``ksi images save`` where there is internet, loading them on every node.

manifest (the cache's model and its JSON file), verify (sizes and sha256, with per-node stamps), chart
(Liqo's Helm chart: download, and the images its values name), save (``ksi images save``), plan (what a
run needs from the cache, checked before anything is created), load (loading it into a node's image
store and its cluster while the run goes on), report (``ksi images list``).
"""
