"""Measure: the batched statistics of a step, their one host transfer, and clipping with them."""
