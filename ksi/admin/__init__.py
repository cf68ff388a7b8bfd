"""Commands for clusters a run left behind and for the node itself: inventory, cleanup, doctor."""
