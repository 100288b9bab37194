"""Measuring what a run or a prior produced against the procedural world's ground truth.

- geometry.py: a generated field's shape against its caption's exact geometry;
- classifier.py: a small CNN that names the kind and colour of a single-object render, the judge of the
  built-in prior's samples.
"""
